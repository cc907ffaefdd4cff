"""Options objects: every keyword goes to the one object with a field of that name."""

import pytest

from mteb_midlayer.metrics.run import layer_metrics
from mteb_midlayer.options import (
    MODEL_KEYWORDS,
    MetricOptions,
    PassOptions,
    RunOptions,
    option_names,
    route_options,
    with_options,
)
from mteb_midlayer.sweep import sweep


def test_each_keyword_goes_to_the_object_with_that_field():
    routed = route_options(
        "sweep",
        {"layers": [0, 6], "pooling": "mean,last", "jobs": 2, "n": 50, "dtype": "fp16"},
    )
    assert routed == {
        "passes": {"layers": [0, 6], "pooling": "mean,last"},  # the pass's, not the spec's
        "run": {"jobs": 2},
        "measure": {"n": 50},
        "model": {"dtype": "fp16"},
    }
    passes = with_options(PassOptions(batch_size=8, layers="all"), PassOptions, routed["passes"])
    assert passes == PassOptions(layers=[0, 6], pooling="mean,last", batch_size=8)
    assert with_options(None, RunOptions, {}) == RunOptions()


def test_no_option_is_in_two_objects_but_pooling():
    names = [option_names(c) for c in (PassOptions, RunOptions, MetricOptions)] + [MODEL_KEYWORDS]
    seen: dict[str, int] = {}
    for group in names:
        for name in group:
            seen[name] = seen.get(name, 0) + 1
    assert {n for n, count in seen.items() if count > 1} == set()
    assert "source" not in MODEL_KEYWORDS and "pooling" not in MODEL_KEYWORDS


def test_an_unknown_or_unread_keyword_is_a_type_error_naming_it(tmp_path):
    with pytest.raises(TypeError, match="sweep\\(\\) got an unexpected keyword argument 'layer'"):
        sweep("minilm", layer=3, output=tmp_path)
    with pytest.raises(TypeError, match="'n_views'"):  # a metric option: not the sweep's
        sweep("minilm", n_views=4, output=tmp_path)
    with pytest.raises(TypeError, match=r"layer_metrics\(\) got .* 'dims'"):
        layer_metrics("minilm", dims=[64], output=tmp_path)
    with pytest.raises(TypeError, match="'prompts'"):
        layer_metrics("minilm", prompts={"query": "q: "}, output=tmp_path)
