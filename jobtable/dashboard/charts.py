"""Small inline SVG charts rendered on the server (no JavaScript library)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from .queries import Bucket

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 720, 160, 48, 22, 10


def _label_time(bucket: Bucket, span_seconds: float) -> str:
    return bucket.start.strftime("%H:%M" if span_seconds <= 2 * 86400 else "%m-%d")


def _frame(title: str, y_max: float, unit: str, body: list[str], buckets: Sequence[Bucket]) -> Markup:
    span = (buckets[-1].end - buckets[0].start).total_seconds() if buckets else 0
    plot_w = WIDTH - PAD_LEFT - 8
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH - 8}" y2="{PAD_TOP + plot_h}" class="axis"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" class="tick" text-anchor="end">{escape(_fmt(y_max))}{escape(unit)}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + plot_h}" class="tick" text-anchor="end">0</text>',
    ]
    parts += body
    n = len(buckets)
    for i in (0, n // 2, n - 1) if n else ():
        x = PAD_LEFT + plot_w * (i + 0.5) / n
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" class="tick" text-anchor="middle">'
            f"{escape(_label_time(buckets[i], span))}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _fmt(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2g}"


def throughput(buckets: Sequence[Bucket]) -> Markup:
    """Stacked bars: successful (bottom) and failed (top) per bucket."""
    y_max = max([b.successful + b.failed for b in buckets] + [1])
    plot_w = WIDTH - PAD_LEFT - 8
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    bar_w = plot_w / max(len(buckets), 1)
    body = []
    for i, b in enumerate(buckets):
        x = PAD_LEFT + i * bar_w + 1
        h_ok = plot_h * b.successful / y_max
        h_bad = plot_h * b.failed / y_max
        base = PAD_TOP + plot_h
        tip = f"{b.start:%Y-%m-%d %H:%M} UTC: {b.successful} successful, {b.failed} failed"
        body.append(
            f'<g><title>{escape(tip)}</title>'
            f'<rect class="ok" x="{x:.1f}" y="{base - h_ok:.1f}" width="{bar_w - 2:.1f}" height="{h_ok:.1f}"/>'
            f'<rect class="bad" x="{x:.1f}" y="{base - h_ok - h_bad:.1f}" width="{bar_w - 2:.1f}" height="{h_bad:.1f}"/></g>'
        )
    return _frame("Jobs finished per interval", y_max, "", body, buckets)


def queue_wait(buckets: Sequence[Bucket]) -> Markup:
    """Median wait between enqueue and start (estimated from the wait
    classes of ``jobtable_result_stats``, see queries.median_wait), as a line
    with dots."""
    waits = [b.wait for b in buckets]
    y_max = max([w for w in waits if w is not None] + [0.001])
    plot_w = WIDTH - PAD_LEFT - 8
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    n = max(len(buckets), 1)
    points = []
    body = []
    for i, b in enumerate(buckets):
        if b.wait is None:
            continue
        x = PAD_LEFT + plot_w * (i + 0.5) / n
        y = PAD_TOP + plot_h - plot_h * b.wait / y_max
        points.append(f"{x:.1f},{y:.1f}")
        tip = f"{b.start:%Y-%m-%d %H:%M} UTC: median wait ≈ {b.wait:.3f} s"
        body.append(f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3"><title>{escape(tip)}</title></circle>')
    if len(points) > 1:
        body.insert(0, f'<polyline class="line" points="{" ".join(points)}"/>')
    return _frame("Median queue wait", y_max, " s", body, buckets)
