"""Optional executors: a missing extra is one clear line, not an ImportError deep in a run."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ValueError):
    """An executor's optional dependency is not installed; says which extra brings it."""

    def __init__(self, executor: str, extra: str, module: str) -> None:
        self.executor, self.extra, self.module = executor, extra, module
        super().__init__(
            f"--executor {executor} needs the {module} package: "
            f"pip install 'mteb-midlayer[{extra}]'"
        )


def require(module: str, executor: str, extra: str) -> ModuleType:
    """Import `module`, or raise `MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(executor, extra, module) from None
