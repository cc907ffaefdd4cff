"""The package's public API: lazy, small, and free of side effects for exported models."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import mteb_midlayer

from .conftest import REPO


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_loading_an_export_imports_no_mteb_no_sweep_and_sets_no_variable():
    # torch and sentence-transformers set variables of their own when imported; an exported
    # model loads them anyway, so the baseline is taken after them.
    done = _run(
        """
        import os, sys
        import sentence_transformers, torch
        before = dict(os.environ)
        import mteb_midlayer.st_modules
        assert "mteb" not in sys.modules, "mteb imported"
        assert "mteb_midlayer.sweep" not in sys.modules, "sweep imported"
        assert "mteb_midlayer.metrics.run" not in sys.modules, "metrics imported"
        changed = {k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k)}
        assert not changed, changed
        print("clean")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


def test_public_names_load_on_first_use_and_set_openmp_passive():
    done = _run(
        """
        import os, sys
        import mteb_midlayer
        assert "torch" not in sys.modules and "mteb" not in sys.modules
        assert "OMP_WAIT_POLICY" not in os.environ
        from mteb_midlayer import ModelSpec
        print(os.environ["OMP_WAIT_POLICY"], ModelSpec.__module__, ModelSpec.__name__)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["PASSIVE", "mteb_midlayer.spec", "ModelSpec"]


def test_every_public_name_resolves():
    import mteb_midlayer.export
    import mteb_midlayer.select.links
    import mteb_midlayer.sweep  # a submodule imported first must not hide the function

    expected = {
        "LayerEncoder": "mteb_midlayer.encoder",
        "LayerModel": "mteb_midlayer.model",
        "ModelSpec": "mteb_midlayer.spec",
        "export": "mteb_midlayer.export",
        "get_benchmark": "mteb_midlayer.tasks.benchmark",
        "layer_metrics": "mteb_midlayer.metrics.run",
        "layer_results": "mteb_midlayer.frames",
        "metrics_frame": "mteb_midlayer.frames",
        "publish": "mteb_midlayer.leaderboard.publish",
        "scores_frame": "mteb_midlayer.frames",
        "sweep": "mteb_midlayer.sweep",
    }
    assert sorted(mteb_midlayer.__all__) == sorted([*expected, "select"])
    for name, module in expected.items():
        value = getattr(mteb_midlayer, name)
        assert callable(value) and value.__module__ == module and value.__name__ == name
    assert mteb_midlayer.select is sys.modules["mteb_midlayer.select"]  # select.link, select.select
    assert mteb_midlayer.select.link is sys.modules["mteb_midlayer.select.links"].link
    assert set(mteb_midlayer.__all__) <= set(dir(mteb_midlayer))


def test_documented_imports_work():
    from mteb_midlayer import LayerEncoder, frames, layer_metrics, sweep

    assert LayerEncoder.__name__ == "LayerEncoder" and frames.__name__ == "mteb_midlayer.frames"
    assert callable(layer_metrics) and callable(sweep)


def test_an_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = mteb_midlayer.nope
