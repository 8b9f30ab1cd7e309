"""Tasks not migrated yet: plain Celery code, untouched by the migration."""

from __future__ import annotations

from pathlib import Path

from proj.celery import app

STATE = Path(__file__).resolve().parent.parent / "state"


@app.task
def price_order(order_id: int, items: int) -> int:
    return items * 250 + order_id  # cents


@app.task(bind=True, max_retries=3)
def charge_card(self, order_id: int, cents: int) -> str:
    # The payment provider times out on the first try of every order.
    marker = STATE / f"charge-{order_id}.tried"
    if not marker.exists():
        marker.touch()
        raise self.retry(countdown=0.5, exc=TimeoutError("payment provider timed out"))
    return f"charged {cents} cents for order {order_id} (retries={self.request.retries})"


@app.task
def notify(message: str) -> str:
    return f"notified: {message}"
