"""Settings of the seeds under their old names, read with a deprecation warning.

plain.worker's ``WORKER_JOB_HISTORY_DAYS`` (days of job history kept) is
jobtable's ``results_retention`` (seconds).  It is accepted wherever a
setting is (``JOBTABLE_WORKER_JOB_HISTORY_DAYS``, ``configure(
worker_job_history_days=30)``, ``worker_job_history_days = 30`` in
``[tool.jobtable]``), converted, and then checked like the new name; naming
both in one place is refused.  ``settings`` calls ``translate`` on each
source before reading it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigurationError
from .setting_rules import ENV_PREFIX, Rule, Source, check

logger = logging.getLogger("jobtable.settings")


@dataclass(frozen=True)
class Legacy:
    #: The setting it stands for.
    setting: str
    #: How many of the new setting's units one old unit is.
    factor: int
    rule: Rule


LEGACY: dict[str, Legacy] = {
    "worker_job_history_days": Legacy(
        "results_retention",
        86400,
        Rule("int", "plain.worker's days of job history kept (now results_retention, in seconds)", 1, 36600,
             unit="days"),
    ),
}

_warned: set[str] = set()


def env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in LEGACY}


def translate(
    values: Mapping[str, Any], source: Source, environ: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """``values`` (one source's, by setting name) with old names replaced by
    the new ones, and ``{new name: the old key written}`` for the sources.
    ``environ``: ``values`` is the environment, whose keys are variable
    names; only the settings it sets under old names are returned."""
    out: dict[str, Any] = {} if environ else dict(values)
    renamed: dict[str, str] = {}
    for old, legacy in LEGACY.items():
        key = ENV_PREFIX + old.upper() if environ else old
        if key not in values:
            continue
        where = Source(source.kind, key, source.path)
        new_key = ENV_PREFIX + legacy.setting.upper() if environ else legacy.setting
        if new_key in values:
            raise ConfigurationError(
                f"Both {key} and {new_key} are set ({where.origin}): {key} is the old name of {new_key}. "
                f"Keep {new_key} only (it is in seconds)."
            )
        # 7: plain.worker's default, as results_retention's (604800 s).
        days = check(old, legacy.rule, values[key], where, 7)
        out.pop(old, None)
        out[legacy.setting] = days * legacy.factor
        renamed[legacy.setting] = key
        _warn(key, new_key, f"{days * legacy.factor}")
    return out, renamed


def _warn(old: str, new: str, value: str) -> None:
    message = f"{old} is deprecated (plain.worker's name): set {new} = {value} instead."
    # A DeprecationWarning for code and test runs, and a log line once per
    # process, since Python hides DeprecationWarning outside __main__.
    warnings.warn(message, DeprecationWarning, stacklevel=4)
    if old not in _warned:
        _warned.add(old)
        logger.warning(message)
