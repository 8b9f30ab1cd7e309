"""Only what pyproject.toml cannot say: ship ``jobtable_kombu_hook.pth``.

The metadata is in pyproject.toml.  A ``.pth`` file must land in
site-packages itself, beside the packages, which setuptools has no
declarative option for:

* a wheel (``pip install .``, ``python -m build``): ``build_py`` copies it
  into the build directory's root, which is the wheel's purelib root;
* an editable install (``pip install -e .``): ``editable_wheel`` does not
  ship ``build_py``'s extra files (it maps packages to the source tree), so
  it is written into the editable wheel beside the ``.pth`` setuptools
  writes for the namespaces (``_install_namespaces``, called with the
  wheel's unpacked root; the same in setuptools 68 to 84).

``tests/test_broker_hook.py`` installs a built wheel in a fresh virtualenv.
See ``_jobtable_kombu_hook.py`` for what the hook does.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = Path(__file__).resolve().with_name("jobtable_kombu_hook.pth")


class build_py_with_pth(build_py):  # noqa: N801  (setuptools' naming)
    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH.name)]


class editable_wheel_with_pth(editable_wheel):  # noqa: N801
    def _install_namespaces(self, installation_dir: Any, pth_prefix: Any) -> None:
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copyfile(PTH, Path(installation_dir) / PTH.name)


setup(cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth})
