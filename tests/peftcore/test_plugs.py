"""Plugs call adapter modules through ``nn.Module.__call__``, so hooks registered on them run, as in AdapterHub."""

from __future__ import annotations

import pytest
import torch

from peftcore import Stack
from tests.archs import inputs, tiny_model

CONFIGS = ["lora[intermediate_lora=True]", "ia3", "seq_bn", "par_bn", "prefix_tuning", "seq_bn_inv"]


@pytest.mark.parametrize("config", CONFIGS)
def test_forward_hooks_on_an_active_adapters_modules_run_once_per_forward(config):
    model = tiny_model("bert").eval()
    model.add_adapter("a", config, set_active=True)
    calls = []
    modules = [module for _, _, _, module in model.iter_adapters("a")]
    for module in modules:
        module.register_forward_hook(lambda module, args, output: calls.append(module))
    with torch.no_grad():
        model(**inputs(model.config))
    assert sorted(map(id, calls)) == sorted(map(id, modules))


def test_hooks_run_for_each_adapter_of_a_stack_on_linear_sites():
    model = tiny_model("bert").eval()
    for name in ("a", "b"):
        model.add_adapter(name, "lora")
    model.set_active_adapters(Stack("a", "b"))
    seen = []
    for name in ("a", "b"):
        for _, _, _, module in model.iter_adapters(name):
            module.register_forward_hook(lambda module, args, output, name=name: seen.append(name))
    with torch.no_grad():
        model(**inputs(model.config))
    assert seen.count("a") == seen.count("b") == len(list(model.iter_adapters("a")))


def test_a_forward_hook_may_replace_an_adapters_output():
    model = tiny_model("bert").eval()
    model.add_adapter("a", "lora", set_active=True)
    batch = inputs(model.config)
    with torch.no_grad():
        plain = model(**batch).last_hidden_state
        for _, _, _, module in model.iter_adapters("a"):
            module.register_forward_hook(lambda module, args, output: output * 2)
        doubled = model(**batch).last_hidden_state
    assert (doubled - plain).abs().max() > 1e-3


def test_plugging_adds_no_module_or_tensor_to_the_model():
    model = tiny_model("bert")
    keys = set(model.state_dict())
    model.add_adapter("a", "seq_bn_inv", set_active=True)
    added = set(model.state_dict()) - keys
    assert added and all(".adapters.a." in key or key.startswith("embeddings.site.adapters.a.") for key in added)
