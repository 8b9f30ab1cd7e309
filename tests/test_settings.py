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


def test_each_value_knows_its_source(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean / "pyproject.toml").write_text("[tool.jobtable]\ntimeout = 5\nresults-retention = 9\nworker_pool = 'threads'\n")
    monkeypatch.setenv("JOBTABLE_TIMEOUT", "7")
    jobtable.configure(results_retention=11)
    where = {name: settings.setting_source(name) for name in ("timeout", "results_retention", "worker_pool", "app")}
    assert where["timeout"].kind == "env" and where["timeout"].key == "JOBTABLE_TIMEOUT"
    assert where["results_retention"].kind == "configure"
    assert where["worker_pool"].kind == "pyproject" and where["worker_pool"].path == str(clean / "pyproject.toml")
    assert where["app"].kind == "default"
    assert settings.settings_file() == clean / "pyproject.toml"


def test_a_pyproject_without_the_section_is_not_a_settings_file(clean: Path) -> None:
    (clean / "pyproject.toml").write_text("[project]\nname = 'app'\n")
    assert settings.settings_file() is None
    (clean / "pyproject.toml").write_text("[tool]\njobtable = 3\n")
    settings.reset()
    with pytest.raises(ConfigurationError, match=r"\[tool.jobtable\] of .* must be a table"):
        jobtable.get_settings()


def test_a_refused_configure_value_is_not_kept(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobtable.configure(timeout=60)
    with pytest.raises(ConfigurationError, match=r"configure\(timeout=-1\)"):
        jobtable.configure(timeout=-1)
    assert jobtable.get_settings().timeout == 60
    # A bad value is refused even where the environment would override it.
    monkeypatch.setenv("JOBTABLE_TIMEOUT", "30")
    settings.reset()
    with pytest.raises(ConfigurationError, match=r"configure\(timeout='x'\)"):
        jobtable.configure(timeout="x")
    assert jobtable.get_settings().timeout == 30
