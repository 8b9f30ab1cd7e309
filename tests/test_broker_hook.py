"""``broker_url = "jobtable+..."`` works with jobtable merely installed: the
wheel's ``jobtable_kombu_hook.pth`` registers Kombu's aliases when
``kombu.transport`` is imported (``_jobtable_kombu_hook.py``), so a Celery
app that never imports jobtable runs on the table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import _jobtable_kombu_hook
from jobtable import transport

ROOT = Path(__file__).resolve().parent.parent
#: What the wheel is built from (copied: building in the tree would race
#: with other test processes over build/ and the egg-info).
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "_jobtable_kombu_hook.py",
           "jobtable_kombu_hook.pth", "jobtable")


def test_hook_registers_the_transport_schemes() -> None:
    assert _jobtable_kombu_hook.SCHEMES == transport.SCHEMES
    assert _jobtable_kombu_hook.TRANSPORT_PATH == transport.TRANSPORT_PATH


def test_hook_adds_the_aliases_when_kombu_transport_is_imported() -> None:
    code = textwrap.dedent("""
        import sys
        import _jobtable_kombu_hook
        assert "kombu" not in sys.modules
        from kombu.transport import resolve_transport, TRANSPORT_ALIASES
        assert "jobtable" not in sys.modules, "the hook must not import jobtable"
        print(sorted(k for k in TRANSPORT_ALIASES if k.startswith("jobtable")))
        print(resolve_transport("jobtable+sqlite").__module__)
        print(type(sys.modules["kombu.transport"].__loader__).__name__, sys.modules["kombu.transport"].__file__ is not None)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == str(sorted(transport.SCHEMES))
    assert lines[1] == "jobtable.transport.transport"
    assert lines[2] == "_Loader True"


APP = """
import os
from celery import Celery

# No `import jobtable` anywhere: the broker alias comes from the installed hook.
URL = os.environ["JT_URL"]
app = Celery("hooked", broker="jobtable+" + URL, backend="jobtable+" + URL)
app.conf.update(task_default_queue="hooked", broker_connection_retry_on_startup=False,
                broker_transport_options={"fallback_polling_interval": 0.02})

@app.task
def add(x, y):
    return x + y
"""

SEND = """
import sys
from app import add
assert "jobtable" not in sys.modules
print(add.delay(2, 3).get(timeout=60))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worktree built as a wheel (pip's isolated build: setuptools from
    the package index)."""
    tree = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(tree)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "No matching distribution" in done.stderr + done.stdout:
        pytest.skip("the build backend cannot be fetched from the package index here")
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("jobtable-*.whl")
    return built


def test_celery_worker_consumes_with_jobtable_only_installed(wheel: Path, tmp_path: Path) -> None:
    """A fresh virtualenv with the wheel installed (its dependencies are this
    interpreter's, through a path file: nothing else is fetched), a Celery
    app that never imports jobtable, a real ``celery worker``."""
    # No PYTHONPATH: the worktree on it (its jobtable.egg-info) would pass
    # for an installed jobtable.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JOBTABLE_", "PYTHON"))}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120, env=clean)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300, env=clean, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True, env=clean).stdout.strip())
    assert (site / "jobtable_kombu_hook.pth").exists()
    # The dependencies: after the venv's own site-packages, so its jobtable wins.
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = dict(clean)
    env.update(JT_URL=f"sqlite:///{tmp_path / 'queue.sqlite3'}", PYTHONPATH=str(tmp_path / "app"), PYTHONUNBUFFERED="1")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text(APP)
    (tmp_path / "app" / "send.py").write_text(SEND)

    where = subprocess.run([str(python), "-c", "import jobtable, sys; print(jobtable.__file__); "
                            "print(sorted(m for m in ('kombu', 'sqlalchemy', 'jobtable') if m in sys.modules))"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert where.stdout.splitlines()[0].startswith(str(site)), where.stdout + where.stderr
    start = subprocess.run([str(python), "-c", "import sys; print(sorted(m for m in sys.modules if m.startswith(('kombu', 'jobtable', 'sqlalchemy', '_jobtable'))))"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert start.stdout.strip() == "['_jobtable_kombu_hook']", start.stdout + start.stderr
    migrate = subprocess.run([str(venv / "bin" / "jobtable"), "migrate"], env=dict(env, JOBTABLE_DATABASE_URL=env["JT_URL"]),
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    log = tmp_path / "worker.log"
    worker = subprocess.Popen([str(python), "-m", "celery", "-A", "app", "worker", "-l", "info", "-c", "1"],
                              env=env, cwd=tmp_path / "app", stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        sent = subprocess.run([str(python), "send.py"], env=env, cwd=tmp_path / "app", capture_output=True,
                              text=True, timeout=120)
        assert sent.stdout.strip() == "5", sent.stdout + sent.stderr + log.read_text()
    finally:
        from .polling import terminate

        terminate(worker, timeout=30)
    text = log.read_text()
    assert "No such transport" not in text and "succeeded in" in text, text
