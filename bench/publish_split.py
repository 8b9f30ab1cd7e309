"""Where one Celery ``apply_async`` over the jobtable transport spends its
CPU (issue 13): the whole call against the transport's own functions.

    bench/.venv/bin/python bench/publish_split.py      # needs database bench_enqcost, migrated

Each listed function is wrapped to add up its ``time.process_time``; the
figure is the best of 10 rounds of 300 publishes (nested functions are
included in their callers' figures).
"""
import sys, time
sys.path.insert(0, "bench")
import harness
from benchapps.celery_app import make_app
from jobtable.transport import channel as ch, transport as tr
from jobtable.db import single_insert
from jobtable import message_checks
url = "postgresql+psycopg://postgres@127.0.0.1:5432/bench_enqcost"
acc = {}
def wrap(obj, name, key):
    real = getattr(obj, name)
    def w(*a, **k):
        t = time.process_time()
        try: return real(*a, **k)
        finally: acc[key] = acc.get(key, 0) + time.process_time() - t
    setattr(obj, name, w)
wrap(ch.Channel, "_put", "channel._put")
wrap(ch.Channel, "_insert", "channel._insert")
wrap(tr.Transport, "insert_published", "transport.insert_published")
wrap(single_insert, "insert", "single_insert.insert")
wrap(message_checks, "checked_row", "checked_row")
app = make_app("jobtable+" + url)
noop = app.tasks["bench.noop"]
for _ in range(300): noop.apply_async()
best = None
for r in range(10):
    acc.clear(); t = time.process_time()
    for _ in range(300): noop.apply_async()
    total = time.process_time() - t
    if best is None or total < best[0]: best = (total, dict(acc))
total, parts = best
print(f"apply_async total {total/300*1e6:.0f} us")
for k, v in parts.items(): print(f"  {k}: {v/300*1e6:.0f} us")
