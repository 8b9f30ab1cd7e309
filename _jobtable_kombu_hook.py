"""Make ``jobtable+...`` broker URLs work without ``import jobtable``.

Kombu finds a transport by its alias in ``kombu.transport.TRANSPORT_ALIASES``
(kombu 5.7 refuses import paths in URL schemes), and ``import jobtable`` adds
the aliases.  A Celery app that only names ``broker_url =
"jobtable+sqlite:///..."`` never imports jobtable, and every Celery command
failed with ``KeyError: 'No such transport: jobtable'``.

The wheel ships ``jobtable_kombu_hook.pth``, which imports this module at
interpreter start.  It imports nothing but ``sys`` and puts a finder in front
of ``sys.meta_path`` that answers only for ``kombu.transport``: when that
module is imported, the normal finders load it and the aliases are added
right after it runs.  A program that never imports Kombu pays one function
call per import it makes, and nothing else; jobtable itself is imported only
when Kombu resolves the alias (``jobtable.transport:Transport``).

This file is a top-level module, not part of the ``jobtable`` package: the
package's ``__init__`` imports SQLAlchemy, which no interpreter start should.
Keep SCHEMES equal to ``jobtable.transport.SCHEMES`` (a test checks).
"""

import sys

# Nothing else at run time: typing, importlib.machinery and collections.abc
# would cost an interpreter start milliseconds (typing alone ~5 ms), and
# so would ``from __future__ import annotations`` a module import: the
# annotations are strings instead.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

TRANSPORT_PATH = "jobtable.transport:Transport"
SCHEMES = (
    "jobtable",
    "jobtable+postgresql",
    "jobtable+postgresql+psycopg",
    "jobtable+postgres",
    "jobtable+sqlite",
    "jobtable+mysql",
    "jobtable+mysql+mysqldb",
    "jobtable+mysql+pymysql",
    "jobtable+mariadb",
    "jobtable+mariadb+mysqldb",
    "jobtable+mariadb+pymysql",
)
TARGET = "kombu.transport"


def register(aliases: "dict[str, Any]") -> None:
    for scheme in SCHEMES:
        aliases.setdefault(scheme, TRANSPORT_PATH)


class _Loader:
    """The real loader of ``kombu.transport``, registering the aliases once
    the module has run.  Everything else is the real loader's."""

    def __init__(self, loader: "Any") -> None:
        self._loader = loader

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        module: "ModuleType | None" = self._loader.create_module(spec)
        return module

    def exec_module(self, module: "ModuleType") -> None:
        self._loader.exec_module(module)
        aliases = getattr(module, "TRANSPORT_ALIASES", None)
        if isinstance(aliases, dict):
            register(aliases)

    def __getattr__(self, name: str) -> "Any":
        # get_filename, get_resource_reader, is_package...  (Not _loader
        # itself, which a copy without __init__ lacks: no endless recursion.)
        if name == "_loader":
            raise AttributeError(name)
        return getattr(self._loader, name)


class KombuTransportFinder:
    """A meta-path finder that only wraps the loader of ``kombu.transport``."""

    def find_spec(
        self, fullname: str, path: "Sequence[str] | None" = None, target: "ModuleType | None" = None
    ) -> "ModuleSpec | None":
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, KombuTransportFinder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec: "ModuleSpec | None" = find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)  # type: ignore[assignment]
        return spec


def install() -> None:
    module = sys.modules.get(TARGET)
    if module is not None:
        aliases = getattr(module, "TRANSPORT_ALIASES", None)
        if isinstance(aliases, dict):
            register(aliases)
        return
    if not any(isinstance(finder, KombuTransportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, KombuTransportFinder())


install()
