"""The package's import graph: one way down, no private names across modules (tools/import_graph.py)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location(
        "import_graph", ROOT / "tools" / "import_graph.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_tool_finds_a_cycle_inside_functions_and_a_private_import(tmp_path):
    pkg = tmp_path / "mteb_midlayer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n\ndef _g():\n    pass\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import x\n"
        "def f():\n    from .a import _g\n    return _g\n"
    )
    (pkg / "c.py").write_text("from .a import f\n")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "x.py").write_text("from mteb_midlayer.a import _g, f\n")
    report = _tool().analyse(tmp_path)
    assert report.cycles == [["mteb_midlayer.a", "mteb_midlayer.b"]]
    assert report.private == [
        "mteb_midlayer.b: from mteb_midlayer.a import _g",
        "benchmarks/x.py: from mteb_midlayer.a import _g",
    ]
    assert (
        "mteb_midlayer.c" not in report.edges["mteb_midlayer.b"]
    )  # TYPE_CHECKING imports do not run


def test_the_package_has_no_import_cycle_and_no_private_import():
    report = _tool().analyse(ROOT)
    assert report.cycles == []
    assert report.private == []
    assert report.upward == [] and report.unplaced == []  # data flows one way
    assert report.long_functions == []  # <= 80 lines, <= 12 parameters (constructors excepted)


def test_layers_place_modules_by_their_longest_prefix():
    tool = _tool()
    assert tool.layer_of("mteb_midlayer.metrics.compute") < tool.layer_of("mteb_midlayer.plan")
    assert tool.layer_of("mteb_midlayer.metrics.run") > tool.layer_of(
        "mteb_midlayer.executors.work"
    )
    assert tool.layer_of("mteb_midlayer.spec") == 0 and tool.layer_of("mteb_midlayer") is None
