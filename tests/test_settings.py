"""Settings precedence: environment > configure() > [tool.jobtable] > defaults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import jobtable
from jobtable import settings
from jobtable.exceptions import ConfigurationError


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    for name in list(__import__("os").environ):
        if name.startswith("JOBTABLE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    settings.reset()
    yield tmp_path
    settings.reset()


def test_defaults_follow_the_seeds() -> None:
    s = jobtable.get_settings()
    assert s.database_url == "sqlite:///jobtable.sqlite3"
    assert s.results_retention == 604800
    assert s.timeout == 86400
    assert s.schedule == []


def test_precedence(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean / "pyproject.toml").write_text(
        '[tool.jobtable]\ndatabase_url = "sqlite:///from-pyproject.db"\ntimeout = 5\nresults-retention = 9\n'
    )
    s = jobtable.get_settings()
    assert (s.database_url, s.timeout, s.results_retention) == ("sqlite:///from-pyproject.db", 5, 9)

    jobtable.configure(database_url="sqlite:///from-configure.db", timeout=6)
    s = jobtable.get_settings()
    assert (s.database_url, s.timeout, s.results_retention) == ("sqlite:///from-configure.db", 6, 9)

    monkeypatch.setenv("JOBTABLE_DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("JOBTABLE_TIMEOUT", "7")
    settings.reset()
    jobtable.configure(database_url="sqlite:///from-configure.db", timeout=6)
    s = jobtable.get_settings()
    assert (s.database_url, s.timeout, s.results_retention) == ("sqlite:///from-env.db", 7, 9)


def test_pyproject_found_from_a_subdirectory(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean / "pyproject.toml").write_text('[tool.jobtable]\npackages = ["app"]\n')
    sub = clean / "src" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert jobtable.get_settings().packages == ["app"]


def test_env_lists_as_json_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBTABLE_MIDDLEWARE", "a.B, c.D")
    monkeypatch.setenv("JOBTABLE_SCHEDULE", '[["app.jobs.Report", "0 9 * * *"]]')
    s = jobtable.get_settings()
    assert s.middleware == ["a.B", "c.D"]
    assert s.schedule == [["app.jobs.Report", "0 9 * * *"]]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("JOBTABLE_TIMEOUT", "soon", "JOBTABLE_TIMEOUT='soon' .*not a whole number"),
        ("JOBTABLE_SCHEDULE", "[oops", "JOBTABLE_SCHEDULE='\\[oops' .*not valid JSON"),
    ],
)
def test_bad_environment_values_are_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=message):
        jobtable.get_settings()


def test_unknown_settings_are_refused(clean: Path) -> None:
    with pytest.raises(ConfigurationError, match="Unknown jobtable setting.*databse_url"):
        jobtable.configure(databse_url="x")
    (clean / "pyproject.toml").write_text("[tool.jobtable]\nretention = 1\n")
    settings.reset()
    with pytest.raises(ConfigurationError, match=r"Unknown key\(s\) in \[tool.jobtable\].*retention"):
        jobtable.get_settings()
