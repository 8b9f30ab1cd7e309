"""Work already rewritten as jobtable Jobs (step 3 of the migration)."""

from __future__ import annotations

from jobtable import Job, register_job
from jobtable.scheduling import Schedule


@register_job
class ShipOrderJob(Job):
    """Was ``@app.task def ship_order(order_id)``.  One shipment per order at a
    time: the concurrency key replaces the Redis lock the task used to take."""

    def __init__(self, order_id: int) -> None:
        self.order_id = order_id

    def default_concurrency_key(self) -> str:
        return f"ship-{self.order_id}"

    def run(self) -> str:
        return f"shipped order {self.order_id}"


@register_job
class NightlyReportJob(Job):
    """Was the beat entry ``"nightly-report": {"task": "proj.tasks.nightly_report",
    "schedule": crontab(hour=2, minute=0)}``."""

    schedule = Schedule.from_cron("0 2 * * *")

    def run(self) -> str:
        return "nightly report built"


@register_job
class CleanupJob(Job):
    """Was the beat entry ``{"schedule": timedelta(minutes=15)}``."""

    schedule = Schedule.from_cron("*/15 * * * *")

    def run(self) -> str:
        return "old carts removed"
