"""miab-remote: a mail server in a box, deployed agentless over SSH from the operator's laptop."""

import importlib
import importlib.util
import sys
import types
from typing import Any

__version__ = "0.1.0"


class _Deferred(types.ModuleType):
    """Stands in for a module until one of its attributes is read; then the real import runs (once), and
    this object takes on the real module's contents, so a reference to it held by an importer works on."""

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def _defer_import(name: str) -> None:
    """paramiko.config imports invoke (Fabric's task runner, ~30 ms with its vendored yaml) only to run an
    ssh_config `Match exec`; a deploy never needs it unless it goes through a jump host, and then Fabric's
    own `from invoke import ...` loads it in full. (importlib's LazyLoader does not do: the import system
    reads `__spec__` of a module found in sys.modules, which makes it load at once.)"""
    if name not in sys.modules and importlib.util.find_spec(name) is not None:
        sys.modules[name] = _Deferred(name)


_defer_import("invoke")
