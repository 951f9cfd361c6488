"""AdapterHub's read-only views of a model's adapter state (peftcore/views.py): adapters_config, get_adapter's
locations (tested in test_model.py), invertible_adapters, supports_adapter, iter_layers and base_model."""

from __future__ import annotations

import pytest
from torch import nn

from peftcore.fusion import AdapterFusionConfig
from peftcore.methods import LoRAConfig, SeqBnConfig
from tests.archs import tiny_model


def test_adapters_config_answers_as_adapterhubs_and_follows_the_model():
    model = tiny_model()
    view = model.adapters_config
    model.add_adapter("a", "seq_bn")
    model.add_adapter("b", LoRAConfig(r=4))
    model.add_adapter_fusion(["a"], name="f")
    assert "a" in view and "missing" not in view and list(view) == ["a", "b"] and len(view) == 2
    assert view.get("b") == LoRAConfig(r=4) and view.get("missing") is None
    assert view.config_map == {"a": SeqBnConfig(), "b": LoRAConfig(r=4)}
    assert view.config_map[view.adapters["a"]]["reduction_factor"] == 16  # configs read as dicts too
    assert view.fusion_config_map == {"f": AdapterFusionConfig()} and view.fusion_name_map == {"f": ["a"]}
    assert list(view.fusions) == ["f"]
    assert view.get_fusion("f") == (AdapterFusionConfig(), ["a"]) and view.get_fusion("g") == (None, None)
    model.delete_adapter_fusion("f")
    model.delete_adapter("a")
    assert "a" not in view and view.fusions == {}


def test_invertible_adapters_by_name_and_the_active_ones():
    model = tiny_model()
    model.add_adapter("inv", "seq_bn_inv")
    model.add_adapter("plain", "seq_bn")
    assert list(model.invertible_adapters) == ["inv"]
    assert model.get_invertible_adapter() is None
    model.set_active_adapters("inv")
    assert model.get_invertible_adapter() is model.invertible_adapters["inv"]
    assert model.get_invertible_adapter() is model.get_adapter("inv")[-1]["invertible"]
    model.set_active_adapters("plain")
    assert model.get_invertible_adapter() is None


@pytest.mark.parametrize(("kind", "supported"), [
    ("bottleneck", True), ("invertible", True), ("lora", True), ("ia3", True), ("prefix_tuning", True),
    ("prompt_tuning", True), ("reft", True), (SeqBnConfig(), True), (LoRAConfig(leave_out=[0]), True),
    (LoRAConfig(leave_out=[0, 1]), False)])  # a config that places nothing on this model cannot be added
def test_supports_adapter_names_the_methods_this_model_takes(kind, supported):
    model = tiny_model()
    assert model.supports_adapter(kind) is supported
    assert model.adapter_configs == {} and list(model.iter_adapters()) == []  # asking builds nothing on the model


def test_iter_layers_and_base_model():
    model = tiny_model()
    layers = list(model.iter_layers())
    assert [index for index, _ in layers] == list(range(len(model.layers)))
    assert all(layer is model.layers[index] for index, layer in layers)
    assert model.base_model is model and isinstance(model.base_model, nn.Module)
