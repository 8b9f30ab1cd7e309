"""Run a bench script with jobtable imported from another tree (a "before").

    BASE_TREE=/path/to/detached/worktree bench/.venv/bin/python bench/with_tree.py bench/run.py ...

PYTHONPATH alone does not switch trees: the editable install's import
finder wins over it.  This drops that finder and puts BASE_TREE first on
sys.path (run.py's header still names the cwd's tree).
"""

import os
import runpy
import sys

base = os.environ["BASE_TREE"]
sys.meta_path[:] = [
    f for f in sys.meta_path
    if "editable" not in repr(f).lower() and "editable" not in getattr(f, "__module__", "").lower()
]
sys.path.insert(0, base)
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
import jobtable  # noqa: E402

if not jobtable.__file__ or not jobtable.__file__.startswith(base):
    raise SystemExit(f"jobtable came from {jobtable.__file__}, not {base}")
print(f"(jobtable from {os.path.dirname(jobtable.__file__)})", file=sys.stderr)
runpy.run_path(script, run_name="__main__")
