"""supervisord, started without importing pkg_resources.

supervisor 4.2 imports pkg_resources only to resolve the rpcinterface factory named in
supervisord.conf ("module:attribute"); that import alone takes 0.3-0.5 s of the
instance's start on a loaded 2-core host, and the start of supervisord is part of
every cutover's service gap. importlib resolves the same name. Any other use of
pkg_resources gets the real module.
"""

import importlib
import sys
import types


class EntryPoint:
    def __init__(self, spec: str) -> None:
        self.module, _, self.attrs = spec.partition(":")

    @classmethod
    def parse(cls, text: str) -> "EntryPoint":
        return cls(text.split("=", 1)[1].strip())

    def resolve(self):
        found = importlib.import_module(self.module.strip())
        for attr in filter(None, self.attrs.strip().split(".")):
            found = getattr(found, attr)
        return found


def _real(name: str):
    sys.modules.pop("pkg_resources", None)
    return getattr(importlib.import_module("pkg_resources"), name)


shim = types.ModuleType("pkg_resources")
shim.EntryPoint = EntryPoint
shim.__getattr__ = _real
sys.modules.setdefault("pkg_resources", shim)

from supervisor.supervisord import main  # noqa: E402

sys.exit(main())
