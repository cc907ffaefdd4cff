"""mteb-midlayer: evaluate and use the intermediate layers of text encoders and LLMs on MTEB."""

import os

# OpenMP threads that spin while waiting make LAPACK's eigensolvers collapse when the cores are
# shared (a 1000 x 1000 eigvalsh: 0.17 s passive vs 15.9 s spinning on a busy 2-core machine).
# Only effective if set before torch starts its thread pool; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from .encoder import LayerEncoder
from .metrics.run import layer_metrics
from .model import LayerModel
from .spec import ModelSpec
from .sweep import sweep
from .tables import layer_results, layer_table
from .tasks.benchmark import get_benchmark

__all__ = [
    "LayerEncoder",
    "LayerModel",
    "ModelSpec",
    "get_benchmark",
    "layer_metrics",
    "layer_results",
    "layer_table",
    "sweep",
]
