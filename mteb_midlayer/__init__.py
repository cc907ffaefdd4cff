"""mteb-midlayer: evaluate and use the intermediate layers of text encoders and LLMs on MTEB.

The public API is the handful of names in `__all__`, loaded on first use (module `__getattr__`).
So `import mteb_midlayer` alone loads neither torch nor mteb, and `import
mteb_midlayer.st_modules` (what an exported model loads) loads neither mteb nor the sweep;
neither changes an environment variable. The first use of a public name asks OpenMP to wait
passively (`devices.passive_omp_wait`), before torch loads.

`sweep` and `export` are functions here; their modules are reached with
`from mteb_midlayer.sweep import ...` / `from mteb_midlayer.export import ...` (a submodule
imported later never hides the function). `select` is the `mteb_midlayer.select` package
(`select.select`, `select.link`, ...).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> (module, attribute; None for the module itself).
_API: dict[str, tuple[str, str | None]] = {
    "LayerEncoder": (".encoder", "LayerEncoder"),
    "LayerModel": (".model", "LayerModel"),
    "ModelSpec": (".spec", "ModelSpec"),
    "export": (".export", "export"),
    "get_benchmark": (".tasks.benchmark", "get_benchmark"),
    "layer_metrics": (".metrics.run", "layer_metrics"),
    "layer_results": (".frames", "layer_results"),
    "metrics_frame": (".frames", "metrics_frame"),
    "publish": (".leaderboard.publish", "publish"),
    "scores_frame": (".frames", "scores_frame"),
    "select": (".select", None),
    "sweep": (".sweep", "sweep"),
}

__all__ = [
    "LayerEncoder",
    "LayerModel",
    "ModelSpec",
    "export",
    "get_benchmark",
    "layer_metrics",
    "layer_results",
    "metrics_frame",
    "publish",
    "scores_frame",
    "select",
    "sweep",
]

if TYPE_CHECKING:
    from . import select
    from .encoder import LayerEncoder
    from .export import export
    from .frames import layer_results, metrics_frame, scores_frame
    from .leaderboard.publish import publish
    from .metrics.run import layer_metrics
    from .model import LayerModel
    from .spec import ModelSpec
    from .sweep import sweep
    from .tasks.benchmark import get_benchmark


def __getattr__(name: str) -> Any:
    """A public name, imported on first use (then kept in the module)."""
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .devices import passive_omp_wait

    passive_omp_wait()  # before the pipeline loads torch (see devices.py)
    module_name, attribute = _API[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Keeps a public function from being hidden by its same-named submodule: importing
    `mteb_midlayer.sweep` would otherwise rebind `mteb_midlayer.sweep` to the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _API.get(name, ("", None))[1] is not None:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
