"""plain.worker's WORKER_JOB_HISTORY_DAYS is read as results_retention, with
a deprecation warning, from every source a setting comes from."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobtable
from jobtable import settings
from jobtable.exceptions import ConfigurationError

DAY = 86400


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith("JOBTABLE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    settings.reset()
    yield tmp_path
    settings.reset()


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBTABLE_WORKER_JOB_HISTORY_DAYS", "30")
    with pytest.warns(DeprecationWarning, match="set JOBTABLE_RESULTS_RETENTION = 2592000 instead"):
        assert jobtable.get_settings().results_retention == 30 * DAY
    assert settings.setting_source("results_retention").key == "JOBTABLE_WORKER_JOB_HISTORY_DAYS"
    # A known variable: no "unknown environment variable" warning.
    assert settings.unknown_environment() == []


def test_from_configure_and_pyproject(clean: Path) -> None:
    (clean / "pyproject.toml").write_text("[tool.jobtable]\nworker-job-history-days = 3\n")
    with pytest.warns(DeprecationWarning, match="worker_job_history_days is deprecated"):
        assert jobtable.get_settings().results_retention == 3 * DAY
    with pytest.warns(DeprecationWarning, match="set results_retention = 172800 instead"):
        jobtable.configure(worker_job_history_days=2)
    assert jobtable.get_settings().results_retention == 2 * DAY  # configure() over the file
    assert settings.setting_source("results_retention").key == "worker_job_history_days"


def test_new_name_wins_across_sources_and_both_in_one_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBTABLE_RESULTS_RETENTION", "60")
    with pytest.warns(DeprecationWarning):
        jobtable.configure(worker_job_history_days=2)
    assert jobtable.get_settings().results_retention == 60  # the environment over configure()
    with pytest.raises(ConfigurationError, match="Both worker_job_history_days and results_retention are set"):
        jobtable.configure(worker_job_history_days=2, results_retention=60)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "a week", "36601"])
def test_bad_values_name_the_old_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("JOBTABLE_WORKER_JOB_HISTORY_DAYS", value)
    with pytest.raises(ConfigurationError, match="JOBTABLE_WORKER_JOB_HISTORY_DAYS.*days"):
        jobtable.get_settings()
