"""MySQL/MariaDB: the result-stats triggers upsert with one INSERT ... VALUES
per row (the bucket, wait and wait class in local variables) instead of an
INSERT ... SELECT from nested derived tables, which the server built again
for every result row.  The same counters, the same buckets; the
stats rows are not touched.  PostgreSQL and SQLite: nothing.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

History, not live code: the SQL below is frozen as db/dialects/mysql.py
generated it on 2026-12-06 (and 0002's, for the downgrade).  Never edit it;
a change to the triggers is a new migration.

MySQL's DDL is not transactional.  On MariaDB each trigger is replaced in
one statement (CREATE OR REPLACE TRIGGER): no result written meanwhile goes
uncounted, and running the migration again replaces them again.  MySQL 8
has no CREATE OR REPLACE TRIGGER: each is dropped (IF EXISTS) and created,
so a result written in that instant by another session is not counted
(the dashboard's overview; the results themselves are untouched); stop the
workers first there.  Re-runnable either way.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _replace(_MYSQL_DDL)


def downgrade() -> None:
    _replace(_MYSQL_DDL_0002)


def _replace(statements: tuple[str, ...]) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "mysql":
        return
    mariadb = bool(getattr(bind.dialect, "is_mariadb", False))
    for statement in statements:
        if mariadb:
            op.execute(statement.replace("CREATE TRIGGER", "CREATE OR REPLACE TRIGGER", 1))
        else:
            name = statement.split()[2]
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
            op.execute(statement)


_MYSQL_DDL = (
"""\
CREATE TRIGGER jobtable_result_stats_insert AFTER INSERT ON jobtable_result FOR EACH ROW
BEGIN
DECLARE n_t BIGINT; DECLARE n_w DECIMAL(30, 4); DECLARE n_k INT;
SET n_t = TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', NEW.ended_at);
SET n_w = CASE WHEN NEW.status = 'SUCCESSFUL' AND NEW.started_at IS NOT NULL AND NEW.requested_at IS NOT NULL THEN \
GREATEST(0.0, TIMESTAMPDIFF(MICROSECOND, NEW.requested_at, NEW.started_at) / 1000000.0) END;
SET n_k = CASE WHEN n_w IS NULL THEN NULL WHEN n_w < 0.01 THEN 0 WHEN n_w < 0.1 THEN 1 WHEN n_w < 1.0 THEN 2 WHEN \
n_w < 10.0 THEN 3 WHEN n_w < 100.0 THEN 4 WHEN n_w < 1000.0 THEN 5 ELSE 6 END;
INSERT INTO jobtable_result_stats (span, bucket_start, queue, status, shard, results, retried, wait_count_0, \
wait_count_1, wait_count_2, wait_count_3, wait_count_4, wait_count_5, wait_count_6, wait_sum_0, wait_sum_1, \
wait_sum_2, wait_sum_3, wait_sum_4, wait_sum_5, wait_sum_6)
VALUES (30, n_t - n_t % 30, NEW.queue, NEW.status, CONNECTION_ID() % 8, 1, CASE WHEN NEW.retried THEN 1 ELSE 0 END, \
CASE WHEN n_k = 0 THEN 1 ELSE 0 END, CASE WHEN n_k = 1 THEN 1 ELSE 0 END, CASE WHEN n_k = 2 THEN 1 ELSE 0 END, CASE \
WHEN n_k = 3 THEN 1 ELSE 0 END, CASE WHEN n_k = 4 THEN 1 ELSE 0 END, CASE WHEN n_k = 5 THEN 1 ELSE 0 END, CASE WHEN \
n_k = 6 THEN 1 ELSE 0 END, CASE WHEN n_k = 0 THEN n_w ELSE 0.0 END, CASE WHEN n_k = 1 THEN n_w ELSE 0.0 END, CASE \
WHEN n_k = 2 THEN n_w ELSE 0.0 END, CASE WHEN n_k = 3 THEN n_w ELSE 0.0 END, CASE WHEN n_k = 4 THEN n_w ELSE 0.0 \
END, CASE WHEN n_k = 5 THEN n_w ELSE 0.0 END, CASE WHEN n_k = 6 THEN n_w ELSE 0.0 END)
ON DUPLICATE KEY UPDATE results = jobtable_result_stats.results + VALUES(results), retried = \
jobtable_result_stats.retried + VALUES(retried), wait_count_0 = jobtable_result_stats.wait_count_0 + \
VALUES(wait_count_0), wait_count_1 = jobtable_result_stats.wait_count_1 + VALUES(wait_count_1), wait_count_2 = \
jobtable_result_stats.wait_count_2 + VALUES(wait_count_2), wait_count_3 = jobtable_result_stats.wait_count_3 + \
VALUES(wait_count_3), wait_count_4 = jobtable_result_stats.wait_count_4 + VALUES(wait_count_4), wait_count_5 = \
jobtable_result_stats.wait_count_5 + VALUES(wait_count_5), wait_count_6 = jobtable_result_stats.wait_count_6 + \
VALUES(wait_count_6), wait_sum_0 = jobtable_result_stats.wait_sum_0 + VALUES(wait_sum_0), wait_sum_1 = \
jobtable_result_stats.wait_sum_1 + VALUES(wait_sum_1), wait_sum_2 = jobtable_result_stats.wait_sum_2 + \
VALUES(wait_sum_2), wait_sum_3 = jobtable_result_stats.wait_sum_3 + VALUES(wait_sum_3), wait_sum_4 = \
jobtable_result_stats.wait_sum_4 + VALUES(wait_sum_4), wait_sum_5 = jobtable_result_stats.wait_sum_5 + \
VALUES(wait_sum_5), wait_sum_6 = jobtable_result_stats.wait_sum_6 + VALUES(wait_sum_6);
END""",
"""\
CREATE TRIGGER jobtable_result_stats_update AFTER UPDATE ON jobtable_result FOR EACH ROW
BEGIN
DECLARE o_t BIGINT; DECLARE o_w DECIMAL(30, 4); DECLARE o_k INT;
DECLARE n_t BIGINT; DECLARE n_w DECIMAL(30, 4); DECLARE n_k INT;
IF NOT (OLD.queue <=> NEW.queue) OR NOT (OLD.status <=> NEW.status) OR NOT (OLD.ended_at <=> NEW.ended_at) OR NOT \
(OLD.retried <=> NEW.retried) OR NOT (OLD.requested_at <=> NEW.requested_at) OR NOT (OLD.started_at <=> \
NEW.started_at) THEN
SET o_t = TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', OLD.ended_at);
SET o_w = CASE WHEN OLD.status = 'SUCCESSFUL' AND OLD.started_at IS NOT NULL AND OLD.requested_at IS NOT NULL THEN \
GREATEST(0.0, TIMESTAMPDIFF(MICROSECOND, OLD.requested_at, OLD.started_at) / 1000000.0) END;
SET o_k = CASE WHEN o_w IS NULL THEN NULL WHEN o_w < 0.01 THEN 0 WHEN o_w < 0.1 THEN 1 WHEN o_w < 1.0 THEN 2 WHEN \
o_w < 10.0 THEN 3 WHEN o_w < 100.0 THEN 4 WHEN o_w < 1000.0 THEN 5 ELSE 6 END;
INSERT INTO jobtable_result_stats (span, bucket_start, queue, status, shard, results, retried, wait_count_0, \
wait_count_1, wait_count_2, wait_count_3, wait_count_4, wait_count_5, wait_count_6, wait_sum_0, wait_sum_1, \
wait_sum_2, wait_sum_3, wait_sum_4, wait_sum_5, wait_sum_6)
VALUES (30, o_t - o_t % 30, OLD.queue, OLD.status, CONNECTION_ID() % 8, -1, CASE WHEN OLD.retried THEN -1 ELSE 0 \
END, CASE WHEN o_k = 0 THEN -1 ELSE 0 END, CASE WHEN o_k = 1 THEN -1 ELSE 0 END, CASE WHEN o_k = 2 THEN -1 ELSE 0 \
END, CASE WHEN o_k = 3 THEN -1 ELSE 0 END, CASE WHEN o_k = 4 THEN -1 ELSE 0 END, CASE WHEN o_k = 5 THEN -1 ELSE 0 \
END, CASE WHEN o_k = 6 THEN -1 ELSE 0 END, CASE WHEN o_k = 0 THEN -o_w ELSE 0.0 END, CASE WHEN o_k = 1 THEN -o_w \
ELSE 0.0 END, CASE WHEN o_k = 2 THEN -o_w ELSE 0.0 END, CASE WHEN o_k = 3 THEN -o_w ELSE 0.0 END, CASE WHEN o_k = 4 \
THEN -o_w ELSE 0.0 END, CASE WHEN o_k = 5 THEN -o_w ELSE 0.0 END, CASE WHEN o_k = 6 THEN -o_w ELSE 0.0 END)
ON DUPLICATE KEY UPDATE results = jobtable_result_stats.results + VALUES(results), retried = \
jobtable_result_stats.retried + VALUES(retried), wait_count_0 = jobtable_result_stats.wait_count_0 + \
VALUES(wait_count_0), wait_count_1 = jobtable_result_stats.wait_count_1 + VALUES(wait_count_1), wait_count_2 = \
jobtable_result_stats.wait_count_2 + VALUES(wait_count_2), wait_count_3 = jobtable_result_stats.wait_count_3 + \
VALUES(wait_count_3), wait_count_4 = jobtable_result_stats.wait_count_4 + VALUES(wait_count_4), wait_count_5 = \
jobtable_result_stats.wait_count_5 + VALUES(wait_count_5), wait_count_6 = jobtable_result_stats.wait_count_6 + \
VALUES(wait_count_6), wait_sum_0 = jobtable_result_stats.wait_sum_0 + VALUES(wait_sum_0), wait_sum_1 = \
jobtable_result_stats.wait_sum_1 + VALUES(wait_sum_1), wait_sum_2 = jobtable_result_stats.wait_sum_2 + \
VALUES(wait_sum_2), wait_sum_3 = jobtable_result_stats.wait_sum_3 + VALUES(wait_sum_3), wait_sum_4 = \
jobtable_result_stats.wait_sum_4 + VALUES(wait_sum_4), wait_sum_5 = jobtable_result_stats.wait_sum_5 + \
VALUES(wait_sum_5), wait_sum_6 = jobtable_result_stats.wait_sum_6 + VALUES(wait_sum_6);
SET n_t = TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', NEW.ended_at);
SET n_w = CASE WHEN NEW.status = 'SUCCESSFUL' AND NEW.started_at IS NOT NULL AND NEW.requested_at IS NOT NULL THEN \
GREATEST(0.0, TIMESTAMPDIFF(MICROSECOND, NEW.requested_at, NEW.started_at) / 1000000.0) END;
SET n_k = CASE WHEN n_w IS NULL THEN NULL WHEN n_w < 0.01 THEN 0 WHEN n_w < 0.1 THEN 1 WHEN n_w < 1.0 THEN 2 WHEN \
n_w < 10.0 THEN 3 WHEN n_w < 100.0 THEN 4 WHEN n_w < 1000.0 THEN 5 ELSE 6 END;
INSERT INTO jobtable_result_stats (span, bucket_start, queue, status, shard, results, retried, wait_count_0, \
wait_count_1, wait_count_2, wait_count_3, wait_count_4, wait_count_5, wait_count_6, wait_sum_0, wait_sum_1, \
wait_sum_2, wait_sum_3, wait_sum_4, wait_sum_5, wait_sum_6)
VALUES (30, n_t - n_t % 30, NEW.queue, NEW.status, CONNECTION_ID() % 8, 1, CASE WHEN NEW.retried THEN 1 ELSE 0 END, \
CASE WHEN n_k = 0 THEN 1 ELSE 0 END, CASE WHEN n_k = 1 THEN 1 ELSE 0 END, CASE WHEN n_k = 2 THEN 1 ELSE 0 END, CASE \
WHEN n_k = 3 THEN 1 ELSE 0 END, CASE WHEN n_k = 4 THEN 1 ELSE 0 END, CASE WHEN n_k = 5 THEN 1 ELSE 0 END, CASE WHEN \
n_k = 6 THEN 1 ELSE 0 END, CASE WHEN n_k = 0 THEN n_w ELSE 0.0 END, CASE WHEN n_k = 1 THEN n_w ELSE 0.0 END, CASE \
WHEN n_k = 2 THEN n_w ELSE 0.0 END, CASE WHEN n_k = 3 THEN n_w ELSE 0.0 END, CASE WHEN n_k = 4 THEN n_w ELSE 0.0 \
END, CASE WHEN n_k = 5 THEN n_w ELSE 0.0 END, CASE WHEN n_k = 6 THEN n_w ELSE 0.0 END)
ON DUPLICATE KEY UPDATE results = jobtable_result_stats.results + VALUES(results), retried = \
jobtable_result_stats.retried + VALUES(retried), wait_count_0 = jobtable_result_stats.wait_count_0 + \
VALUES(wait_count_0), wait_count_1 = jobtable_result_stats.wait_count_1 + VALUES(wait_count_1), wait_count_2 = \
jobtable_result_stats.wait_count_2 + VALUES(wait_count_2), wait_count_3 = jobtable_result_stats.wait_count_3 + \
VALUES(wait_count_3), wait_count_4 = jobtable_result_stats.wait_count_4 + VALUES(wait_count_4), wait_count_5 = \
jobtable_result_stats.wait_count_5 + VALUES(wait_count_5), wait_count_6 = jobtable_result_stats.wait_count_6 + \
VALUES(wait_count_6), wait_sum_0 = jobtable_result_stats.wait_sum_0 + VALUES(wait_sum_0), wait_sum_1 = \
jobtable_result_stats.wait_sum_1 + VALUES(wait_sum_1), wait_sum_2 = jobtable_result_stats.wait_sum_2 + \
VALUES(wait_sum_2), wait_sum_3 = jobtable_result_stats.wait_sum_3 + VALUES(wait_sum_3), wait_sum_4 = \
jobtable_result_stats.wait_sum_4 + VALUES(wait_sum_4), wait_sum_5 = jobtable_result_stats.wait_sum_5 + \
VALUES(wait_sum_5), wait_sum_6 = jobtable_result_stats.wait_sum_6 + VALUES(wait_sum_6);
END IF;
END""",
"""\
CREATE TRIGGER jobtable_result_stats_delete AFTER DELETE ON jobtable_result FOR EACH ROW
BEGIN
DECLARE o_t BIGINT; DECLARE o_w DECIMAL(30, 4); DECLARE o_k INT;
SET o_t = TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', OLD.ended_at);
SET o_w = CASE WHEN OLD.status = 'SUCCESSFUL' AND OLD.started_at IS NOT NULL AND OLD.requested_at IS NOT NULL THEN \
GREATEST(0.0, TIMESTAMPDIFF(MICROSECOND, OLD.requested_at, OLD.started_at) / 1000000.0) END;
SET o_k = CASE WHEN o_w IS NULL THEN NULL WHEN o_w < 0.01 THEN 0 WHEN o_w < 0.1 THEN 1 WHEN o_w < 1.0 THEN 2 WHEN \
o_w < 10.0 THEN 3 WHEN o_w < 100.0 THEN 4 WHEN o_w < 1000.0 THEN 5 ELSE 6 END;
INSERT INTO jobtable_result_stats (span, bucket_start, queue, status, shard, results, retried, wait_count_0, \
wait_count_1, wait_count_2, wait_count_3, wait_count_4, wait_count_5, wait_count_6, wait_sum_0, wait_sum_1, \
wait_sum_2, wait_sum_3, wait_sum_4, wait_sum_5, wait_sum_6)
VALUES (30, o_t - o_t % 30, OLD.queue, OLD.status, CONNECTION_ID() % 8, -1, CASE WHEN OLD.retried THEN -1 ELSE 0 \
END, CASE WHEN o_k = 0 THEN -1 ELSE 0 END, CASE WHEN o_k = 1 THEN -1 ELSE 0 END, CASE WHEN o_k = 2 THEN -1 ELSE 0 \
END, CASE WHEN o_k = 3 THEN -1 ELSE 0 END, CASE WHEN o_k = 4 THEN -1 ELSE 0 END, CASE WHEN o_k = 5 THEN -1 ELSE 0 \
END, CASE WHEN o_k = 6 THEN -1 ELSE 0 END, CASE WHEN o_k = 0 THEN -o_w ELSE 0.0 END, CASE WHEN o_k = 1 THEN -o_w \
ELSE 0.0 END, CASE WHEN o_k = 2 THEN -o_w ELSE 0.0 END, CASE WHEN o_k = 3 THEN -o_w ELSE 0.0 END, CASE WHEN o_k = 4 \
THEN -o_w ELSE 0.0 END, CASE WHEN o_k = 5 THEN -o_w ELSE 0.0 END, CASE WHEN o_k = 6 THEN -o_w ELSE 0.0 END)
ON DUPLICATE KEY UPDATE results = jobtable_result_stats.results + VALUES(results), retried = \
jobtable_result_stats.retried + VALUES(retried), wait_count_0 = jobtable_result_stats.wait_count_0 + \
VALUES(wait_count_0), wait_count_1 = jobtable_result_stats.wait_count_1 + VALUES(wait_count_1), wait_count_2 = \
jobtable_result_stats.wait_count_2 + VALUES(wait_count_2), wait_count_3 = jobtable_result_stats.wait_count_3 + \
VALUES(wait_count_3), wait_count_4 = jobtable_result_stats.wait_count_4 + VALUES(wait_count_4), wait_count_5 = \
jobtable_result_stats.wait_count_5 + VALUES(wait_count_5), wait_count_6 = jobtable_result_stats.wait_count_6 + \
VALUES(wait_count_6), wait_sum_0 = jobtable_result_stats.wait_sum_0 + VALUES(wait_sum_0), wait_sum_1 = \
jobtable_result_stats.wait_sum_1 + VALUES(wait_sum_1), wait_sum_2 = jobtable_result_stats.wait_sum_2 + \
VALUES(wait_sum_2), wait_sum_3 = jobtable_result_stats.wait_sum_3 + VALUES(wait_sum_3), wait_sum_4 = \
jobtable_result_stats.wait_sum_4 + VALUES(wait_sum_4), wait_sum_5 = jobtable_result_stats.wait_sum_5 + \
VALUES(wait_sum_5), wait_sum_6 = jobtable_result_stats.wait_sum_6 + VALUES(wait_sum_6);
END""",
)

_MYSQL_DDL_0002 = (
"""\
CREATE TRIGGER jobtable_result_stats_insert AFTER INSERT ON jobtable_result FOR EACH ROW
INSERT INTO jobtable_result_stats (span, bucket_start, queue, status, shard, results, retried, wait_count_0, \
wait_count_1, wait_count_2, wait_count_3, wait_count_4, wait_count_5, wait_count_6, wait_sum_0, wait_sum_1, \
wait_sum_2, wait_sum_3, wait_sum_4, wait_sum_5, wait_sum_6)
SELECT 30, v.t - v.t % 30, v.queue, v.status, CONNECTION_ID() % 8, 1, CASE WHEN v.retried THEN 1 ELSE 0 END, CASE \
WHEN v.k = 0 THEN 1 ELSE 0 END, CASE WHEN v.k = 1 THEN 1 ELSE 0 END, CASE WHEN v.k = 2 THEN 1 ELSE 0 END, CASE WHEN \
v.k = 3 THEN 1 ELSE 0 END, CASE WHEN v.k = 4 THEN 1 ELSE 0 END, CASE WHEN v.k = 5 THEN 1 ELSE 0 END, CASE WHEN v.k \
= 6 THEN 1 ELSE 0 END, CASE WHEN v.k = 0 THEN v.w ELSE 0.0 END, CASE WHEN v.k = 1 THEN v.w ELSE 0.0 END, CASE WHEN \
v.k = 2 THEN v.w ELSE 0.0 END, CASE WHEN v.k = 3 THEN v.w ELSE 0.0 END, CASE WHEN v.k = 4 THEN v.w ELSE 0.0 END, \
CASE WHEN v.k = 5 THEN v.w ELSE 0.0 END, CASE WHEN v.k = 6 THEN v.w ELSE 0.0 END
FROM (SELECT r.*, CASE WHEN r.w IS NULL THEN NULL WHEN r.w < 0.01 THEN 0 WHEN r.w < 0.1 THEN 1 WHEN r.w < 1.0 THEN \
2 WHEN r.w < 10.0 THEN 3 WHEN r.w < 100.0 THEN 4 WHEN r.w < 1000.0 THEN 5 ELSE 6 END AS k FROM (SELECT NEW.queue AS \
queue, NEW.status AS status, NEW.retried AS retried, TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', NEW.ended_at) AS \
t, CASE WHEN NEW.status = 'SUCCESSFUL' AND NEW.started_at IS NOT NULL AND NEW.requested_at IS NOT NULL THEN \
GREATEST(0.0, TIMESTAMPDIFF(MICROSECOND, NEW.requested_at, NEW.started_at) / 1000000.0) END AS w ) AS r) AS v
ON DUPLICATE KEY UPDATE results = jobtable_result_stats.results + VALUES(results), retried = \
jobtable_result_stats.retried + VALUES(retried), wait_count_0 = jobtable_result_stats.wait_count_0 + \
VALUES(wait_count_0), wait_count_1 = jobtable_result_stats.wait_count_1 + VALUES(wait_count_1), wait_count_2 = \
jobtable_result_stats.wait_count_2 + VALUES(wait_count_2), wait_count_3 = jobtable_result_stats.wait_count_3 + \
VALUES(wait_count_3), wait_count_4 = jobtable_result_stats.wait_count_4 + VALUES(wait_count_4), wait_count_5 = \
jobtable_result_stats.wait_count_5 + VALUES(wait_count_5), wait_count_6 = jobtable_result_stats.wait_count_6 + \
VALUES(wait_count_6), wait_sum_0 = jobtable_result_stats.wait_sum_0 + VALUES(wait_sum_0), wait_sum_1 = \
jobtable_result_stats.wait_sum_1 + VALUES(wait_sum_1), wait_sum_2 = jobtable_result_stats.wait_sum_2 + \
VALUES(wait_sum_2), wait_sum_3 = jobtable_result_stats.wait_sum_3 + VALUES(wait_sum_3), wait_sum_4 = \
jobtable_result_stats.wait_sum_4 + VALUES(wait_sum_4), wait_sum_5 = jobtable_result_stats.wait_sum_5 + \
VALUES(wait_sum_5), wait_sum_6 = jobtable_result_stats.wait_sum_6 + VALUES(wait_sum_6)""",
"""\
CREATE TRIGGER jobtable_result_stats_update AFTER UPDATE ON jobtable_result FOR EACH ROW
BEGIN
IF NOT (OLD.queue <=> NEW.queue) OR NOT (OLD.status <=> NEW.status) OR NOT (OLD.ended_at <=> NEW.ended_at) OR NOT \
(OLD.retried <=> NEW.retried) OR NOT (OLD.requested_at <=> NEW.requested_at) OR NOT (OLD.started_at <=> \
NEW.started_at) THEN
INSERT INTO jobtable_result_stats (span, bucket_start, queue, status, shard, results, retried, wait_count_0, \
wait_count_1, wait_count_2, wait_count_3, wait_count_4, wait_count_5, wait_count_6, wait_sum_0, wait_sum_1, \
wait_sum_2, wait_sum_3, wait_sum_4, wait_sum_5, wait_sum_6)
SELECT 30, v.t - v.t % 30, v.queue, v.status, CONNECTION_ID() % 8, -1, CASE WHEN v.retried THEN -1 ELSE 0 END, CASE \
WHEN v.k = 0 THEN -1 ELSE 0 END, CASE WHEN v.k = 1 THEN -1 ELSE 0 END, CASE WHEN v.k = 2 THEN -1 ELSE 0 END, CASE \
WHEN v.k = 3 THEN -1 ELSE 0 END, CASE WHEN v.k = 4 THEN -1 ELSE 0 END, CASE WHEN v.k = 5 THEN -1 ELSE 0 END, CASE \
WHEN v.k = 6 THEN -1 ELSE 0 END, CASE WHEN v.k = 0 THEN -v.w ELSE 0.0 END, CASE WHEN v.k = 1 THEN -v.w ELSE 0.0 \
END, CASE WHEN v.k = 2 THEN -v.w ELSE 0.0 END, CASE WHEN v.k = 3 THEN -v.w ELSE 0.0 END, CASE WHEN v.k = 4 THEN \
-v.w ELSE 0.0 END, CASE WHEN v.k = 5 THEN -v.w ELSE 0.0 END, CASE WHEN v.k = 6 THEN -v.w ELSE 0.0 END
FROM (SELECT r.*, CASE WHEN r.w IS NULL THEN NULL WHEN r.w < 0.01 THEN 0 WHEN r.w < 0.1 THEN 1 WHEN r.w < 1.0 THEN \
2 WHEN r.w < 10.0 THEN 3 WHEN r.w < 100.0 THEN 4 WHEN r.w < 1000.0 THEN 5 ELSE 6 END AS k FROM (SELECT OLD.queue AS \
queue, OLD.status AS status, OLD.retried AS retried, TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', OLD.ended_at) AS \
t, CASE WHEN OLD.status = 'SUCCESSFUL' AND OLD.started_at IS NOT NULL AND OLD.requested_at IS NOT NULL THEN \
GREATEST(0.0, TIMESTAMPDIFF(MICROSECOND, OLD.requested_at, OLD.started_at) / 1000000.0) END AS w ) AS r) AS v
ON DUPLICATE KEY UPDATE results = jobtable_result_stats.results + VALUES(results), retried = \
jobtable_result_stats.retried + VALUES(retried), wait_count_0 = jobtable_result_stats.wait_count_0 + \
VALUES(wait_count_0), wait_count_1 = jobtable_result_stats.wait_count_1 + VALUES(wait_count_1), wait_count_2 = \
jobtable_result_stats.wait_count_2 + VALUES(wait_count_2), wait_count_3 = jobtable_result_stats.wait_count_3 + \
VALUES(wait_count_3), wait_count_4 = jobtable_result_stats.wait_count_4 + VALUES(wait_count_4), wait_count_5 = \
jobtable_result_stats.wait_count_5 + VALUES(wait_count_5), wait_count_6 = jobtable_result_stats.wait_count_6 + \
VALUES(wait_count_6), wait_sum_0 = jobtable_result_stats.wait_sum_0 + VALUES(wait_sum_0), wait_sum_1 = \
jobtable_result_stats.wait_sum_1 + VALUES(wait_sum_1), wait_sum_2 = jobtable_result_stats.wait_sum_2 + \
VALUES(wait_sum_2), wait_sum_3 = jobtable_result_stats.wait_sum_3 + VALUES(wait_sum_3), wait_sum_4 = \
jobtable_result_stats.wait_sum_4 + VALUES(wait_sum_4), wait_sum_5 = jobtable_result_stats.wait_sum_5 + \
VALUES(wait_sum_5), wait_sum_6 = jobtable_result_stats.wait_sum_6 + VALUES(wait_sum_6);
INSERT INTO jobtable_result_stats (span, bucket_start, queue, status, shard, results, retried, wait_count_0, \
wait_count_1, wait_count_2, wait_count_3, wait_count_4, wait_count_5, wait_count_6, wait_sum_0, wait_sum_1, \
wait_sum_2, wait_sum_3, wait_sum_4, wait_sum_5, wait_sum_6)
SELECT 30, v.t - v.t % 30, v.queue, v.status, CONNECTION_ID() % 8, 1, CASE WHEN v.retried THEN 1 ELSE 0 END, CASE \
WHEN v.k = 0 THEN 1 ELSE 0 END, CASE WHEN v.k = 1 THEN 1 ELSE 0 END, CASE WHEN v.k = 2 THEN 1 ELSE 0 END, CASE WHEN \
v.k = 3 THEN 1 ELSE 0 END, CASE WHEN v.k = 4 THEN 1 ELSE 0 END, CASE WHEN v.k = 5 THEN 1 ELSE 0 END, CASE WHEN v.k \
= 6 THEN 1 ELSE 0 END, CASE WHEN v.k = 0 THEN v.w ELSE 0.0 END, CASE WHEN v.k = 1 THEN v.w ELSE 0.0 END, CASE WHEN \
v.k = 2 THEN v.w ELSE 0.0 END, CASE WHEN v.k = 3 THEN v.w ELSE 0.0 END, CASE WHEN v.k = 4 THEN v.w ELSE 0.0 END, \
CASE WHEN v.k = 5 THEN v.w ELSE 0.0 END, CASE WHEN v.k = 6 THEN v.w ELSE 0.0 END
FROM (SELECT r.*, CASE WHEN r.w IS NULL THEN NULL WHEN r.w < 0.01 THEN 0 WHEN r.w < 0.1 THEN 1 WHEN r.w < 1.0 THEN \
2 WHEN r.w < 10.0 THEN 3 WHEN r.w < 100.0 THEN 4 WHEN r.w < 1000.0 THEN 5 ELSE 6 END AS k FROM (SELECT NEW.queue AS \
queue, NEW.status AS status, NEW.retried AS retried, TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', NEW.ended_at) AS \
t, CASE WHEN NEW.status = 'SUCCESSFUL' AND NEW.started_at IS NOT NULL AND NEW.requested_at IS NOT NULL THEN \
GREATEST(0.0, TIMESTAMPDIFF(MICROSECOND, NEW.requested_at, NEW.started_at) / 1000000.0) END AS w ) AS r) AS v
ON DUPLICATE KEY UPDATE results = jobtable_result_stats.results + VALUES(results), retried = \
jobtable_result_stats.retried + VALUES(retried), wait_count_0 = jobtable_result_stats.wait_count_0 + \
VALUES(wait_count_0), wait_count_1 = jobtable_result_stats.wait_count_1 + VALUES(wait_count_1), wait_count_2 = \
jobtable_result_stats.wait_count_2 + VALUES(wait_count_2), wait_count_3 = jobtable_result_stats.wait_count_3 + \
VALUES(wait_count_3), wait_count_4 = jobtable_result_stats.wait_count_4 + VALUES(wait_count_4), wait_count_5 = \
jobtable_result_stats.wait_count_5 + VALUES(wait_count_5), wait_count_6 = jobtable_result_stats.wait_count_6 + \
VALUES(wait_count_6), wait_sum_0 = jobtable_result_stats.wait_sum_0 + VALUES(wait_sum_0), wait_sum_1 = \
jobtable_result_stats.wait_sum_1 + VALUES(wait_sum_1), wait_sum_2 = jobtable_result_stats.wait_sum_2 + \
VALUES(wait_sum_2), wait_sum_3 = jobtable_result_stats.wait_sum_3 + VALUES(wait_sum_3), wait_sum_4 = \
jobtable_result_stats.wait_sum_4 + VALUES(wait_sum_4), wait_sum_5 = jobtable_result_stats.wait_sum_5 + \
VALUES(wait_sum_5), wait_sum_6 = jobtable_result_stats.wait_sum_6 + VALUES(wait_sum_6);
END IF;
END""",
"""\
CREATE TRIGGER jobtable_result_stats_delete AFTER DELETE ON jobtable_result FOR EACH ROW
INSERT INTO jobtable_result_stats (span, bucket_start, queue, status, shard, results, retried, wait_count_0, \
wait_count_1, wait_count_2, wait_count_3, wait_count_4, wait_count_5, wait_count_6, wait_sum_0, wait_sum_1, \
wait_sum_2, wait_sum_3, wait_sum_4, wait_sum_5, wait_sum_6)
SELECT 30, v.t - v.t % 30, v.queue, v.status, CONNECTION_ID() % 8, -1, CASE WHEN v.retried THEN -1 ELSE 0 END, CASE \
WHEN v.k = 0 THEN -1 ELSE 0 END, CASE WHEN v.k = 1 THEN -1 ELSE 0 END, CASE WHEN v.k = 2 THEN -1 ELSE 0 END, CASE \
WHEN v.k = 3 THEN -1 ELSE 0 END, CASE WHEN v.k = 4 THEN -1 ELSE 0 END, CASE WHEN v.k = 5 THEN -1 ELSE 0 END, CASE \
WHEN v.k = 6 THEN -1 ELSE 0 END, CASE WHEN v.k = 0 THEN -v.w ELSE 0.0 END, CASE WHEN v.k = 1 THEN -v.w ELSE 0.0 \
END, CASE WHEN v.k = 2 THEN -v.w ELSE 0.0 END, CASE WHEN v.k = 3 THEN -v.w ELSE 0.0 END, CASE WHEN v.k = 4 THEN \
-v.w ELSE 0.0 END, CASE WHEN v.k = 5 THEN -v.w ELSE 0.0 END, CASE WHEN v.k = 6 THEN -v.w ELSE 0.0 END
FROM (SELECT r.*, CASE WHEN r.w IS NULL THEN NULL WHEN r.w < 0.01 THEN 0 WHEN r.w < 0.1 THEN 1 WHEN r.w < 1.0 THEN \
2 WHEN r.w < 10.0 THEN 3 WHEN r.w < 100.0 THEN 4 WHEN r.w < 1000.0 THEN 5 ELSE 6 END AS k FROM (SELECT OLD.queue AS \
queue, OLD.status AS status, OLD.retried AS retried, TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', OLD.ended_at) AS \
t, CASE WHEN OLD.status = 'SUCCESSFUL' AND OLD.started_at IS NOT NULL AND OLD.requested_at IS NOT NULL THEN \
GREATEST(0.0, TIMESTAMPDIFF(MICROSECOND, OLD.requested_at, OLD.started_at) / 1000000.0) END AS w ) AS r) AS v
ON DUPLICATE KEY UPDATE results = jobtable_result_stats.results + VALUES(results), retried = \
jobtable_result_stats.retried + VALUES(retried), wait_count_0 = jobtable_result_stats.wait_count_0 + \
VALUES(wait_count_0), wait_count_1 = jobtable_result_stats.wait_count_1 + VALUES(wait_count_1), wait_count_2 = \
jobtable_result_stats.wait_count_2 + VALUES(wait_count_2), wait_count_3 = jobtable_result_stats.wait_count_3 + \
VALUES(wait_count_3), wait_count_4 = jobtable_result_stats.wait_count_4 + VALUES(wait_count_4), wait_count_5 = \
jobtable_result_stats.wait_count_5 + VALUES(wait_count_5), wait_count_6 = jobtable_result_stats.wait_count_6 + \
VALUES(wait_count_6), wait_sum_0 = jobtable_result_stats.wait_sum_0 + VALUES(wait_sum_0), wait_sum_1 = \
jobtable_result_stats.wait_sum_1 + VALUES(wait_sum_1), wait_sum_2 = jobtable_result_stats.wait_sum_2 + \
VALUES(wait_sum_2), wait_sum_3 = jobtable_result_stats.wait_sum_3 + VALUES(wait_sum_3), wait_sum_4 = \
jobtable_result_stats.wait_sum_4 + VALUES(wait_sum_4), wait_sum_5 = jobtable_result_stats.wait_sum_5 + \
VALUES(wait_sum_5), wait_sum_6 = jobtable_result_stats.wait_sum_6 + VALUES(wait_sum_6)""",
)
