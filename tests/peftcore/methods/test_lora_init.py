"""PEFT's LoRA options (peftcore/methods/lora_init.py): rank/alpha patterns and rsLoRA per site, and the gaussian,
PiSSA and OLoRA initialisations against PEFT's own on the same weights; PiSSA/OLoRA keep the base weights, so merging
is exact and reset, deactivation and deletion give the original model bit for bit."""

from __future__ import annotations

import math
import warnings

import peft
import pytest
import torch

from peftcore import IA3Config, LoRAConfig
from peftcore.methods.lora_init import initial_factors
from tests import archs
from tests.archs import ARCHS
from tests.parity import assert_parity

TARGETS = dict(query="attn.q", value="attn.v", dense="attn.out")  # PEFT's module leaf -> our site (attention only)


def peft_initial_factors(hf_checkpoint, init: str) -> dict:
    """{(layer, site): (A, B)} as PEFT initialises them on BERT's query, value and attention output."""
    directory, cached = archs.reference(hf_checkpoint, "bert")
    model = type(cached).from_pretrained(directory)  # a copy: PEFT's PiSSA/OLoRA rewrite the base weights in place
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = peft.LoraConfig(r=2, lora_alpha=3, init_lora_weights=init,
                                 target_modules=["query", "value", "attention.output.dense"])
        wrapped = peft.get_peft_model(model, config)
    factors = {}
    for name, module in wrapped.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            layer, site = int(name.split("layer.")[1].split(".")[0]), TARGETS[name.rsplit(".", 1)[-1]]
            factors[layer, site] = (module.lora_A["default"].weight.detach(), module.lora_B["default"].weight.detach())
    return factors


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_start_where_peft_starts_and_keep_the_base_weights(hf_checkpoint, init):
    factors = peft_initial_factors(hf_checkpoint, init)
    directory, _ = archs.reference(hf_checkpoint, "bert")
    ours = ARCHS["bert"].model.from_pretrained(directory).eval()
    base = {key: t.clone() for key, t in ours.state_dict().items()}
    batch = archs.inputs(ours.config)
    with torch.no_grad():
        plain = ours(**batch).last_hidden_state
    ours.add_adapter("a", LoRAConfig(r=2, alpha=3, attn_matrices=("q", "v", "o"), init_weights=init),
                     set_active=True)
    for (layer, site), (A, B) in factors.items():
        module = ours.layers[layer].get_submodule(site).adapters["a"]
        for ours_tensor, theirs in ((module.lora_A, A), (module.lora_B, B), (module.lora_A0, A), (module.lora_B0, B)):
            assert_parity(ours_tensor, theirs, atol=1e-6)
    with torch.no_grad():  # untrained, the adapter is the identity: ΔW = B A - B0 A0 = 0
        assert_parity(ours(**batch).last_hidden_state, plain)
    assert all(torch.equal(ours.state_dict()[key], t) for key, t in base.items())


def test_pissa_fast_svd_approximates_the_top_singular_subspace_from_its_own_seed():
    generator = torch.Generator().manual_seed(0)  # rank 4 plus noise: a top-4 subspace the fast SVD finds
    weight = torch.randn(48, 4, generator=generator) @ torch.randn(4, 32, generator=generator)
    weight += 1e-3 * torch.randn(48, 32, generator=generator)
    exact = initial_factors("pissa", weight, 4, 0.5, None)
    fast = initial_factors("pissa_niter_8", weight, 4, 0.5, 1)
    again = initial_factors("pissa_niter_8", weight, 4, 0.5, 1)
    assert all(torch.equal(a, b) for a, b in zip(fast, again, strict=True))
    state = torch.random.get_rng_state()
    initial_factors("pissa_niter_2", weight, 4, 0.5, 7)
    assert torch.equal(torch.random.get_rng_state(), state)  # a seed never touches the global RNG
    assert_parity(fast[1] @ fast[0], exact[1] @ exact[0], atol=1e-3)  # PEFT's torch.svd_lowrank, same product


def test_gaussian_draws_a_with_std_one_over_r_and_zero_b():
    config = LoRAConfig(r=4, init_weights="gaussian", init_weights_seed=0, target="all-linear")
    model = archs.tiny_model("bert")
    model.add_adapter("a", config)
    module = model.layers[0].attn.out.adapters["a"]
    A = torch.cat([site.adapters["a"].lora_A.flatten() for layer in model.layers for site in
                   (layer.attn.q, layer.attn.k, layer.attn.v, layer.attn.out, layer.ffn.intermediate)])
    assert abs(A.std().item() - 1 / 4) < 0.02 and abs(A.mean().item()) < 0.02
    assert not module.lora_B.any()


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_merge_exactly_and_reset_deactivate_and_delete_restore_the_original(init):
    model = archs.tiny_model("bert")
    base = {key: t.clone() for key, t in model.state_dict().items()}
    batch = archs.inputs(model.config)
    with torch.no_grad():
        plain = model(**batch).last_hidden_state
    model.add_adapter("a", LoRAConfig(r=2, alpha=4, target="all-linear", init_weights=init), set_active=True)
    with torch.no_grad():
        for parameter in model.adapter_parameters("a"):
            parameter.add_(torch.randn_like(parameter) * 0.1)
        adapted = model(**batch).last_hidden_state
        model.merge_adapter("a")
        assert_parity(model(**batch).last_hidden_state, adapted)
        model.reset_adapter("a")
        assert all(torch.equal(model.state_dict()[key], t) for key, t in base.items())
        model.set_active_adapters(None)
        assert torch.equal(model(**batch).last_hidden_state, plain)
    model.delete_adapter("a")
    assert model.state_dict().keys() == base.keys()


def test_pissa_adapter_saves_and_loads_in_our_format_with_its_initial_factors(tmp_path):
    model = archs.tiny_model("bert")
    model.add_adapter("a", LoRAConfig(r=2, attn_matrices=("q", "o"), init_weights="pissa"), set_active=True)
    with torch.no_grad():
        for parameter in model.adapter_parameters("a"):
            parameter.add_(torch.randn_like(parameter) * 0.1)
        expected = model(**archs.inputs(model.config)).last_hidden_state
    model.save_adapter(tmp_path / "a", "a")
    again = archs.tiny_model("bert")
    again.load_adapter(tmp_path / "a", set_active=True)
    assert set(again.adapter_state("a")) == set(model.adapter_state("a"))
    with torch.no_grad():
        assert_parity(again(**archs.inputs(model.config)).last_hidden_state, expected)


def test_patterns_give_each_site_its_rank_and_alpha_as_peft_matches_them():
    config = LoRAConfig(r=4, alpha=8, target="all-linear", use_rslora=True,
                        rank_pattern={r"layers\.1\.attn\.q": 2, "out": 6}, alpha_pattern={"ffn.output": 3})
    model = archs.tiny_model("bert")
    model.add_adapter("a", config)
    ranks = {(i, name): site.adapters["a"].r for i, layer in enumerate(model.layers)
             for name, site in (("q", layer.attn.q), ("out", layer.attn.out), ("output", layer.ffn.output))}
    assert ranks == {(0, "q"): 4, (1, "q"): 2, (0, "out"): 6, (1, "out"): 6, (0, "output"): 4, (1, "output"): 4}
    assert model.layers[0].ffn.output.adapters["a"].scaling == 3 / math.sqrt(4)
    assert model.layers[1].attn.q.adapters["a"].scaling == 8 / math.sqrt(2)


@pytest.mark.parametrize("fields, message", [
    (dict(target="all-linears"), "target='all-linears' is not known"),
    (dict(rank_pattern={"attn.q": 0}), "positive ints"),
    (dict(rank_pattern={"(": 2}), "not a valid regex"),
    (dict(init_weights="pissa_niter_"), "pissa_niter_K"),
    (dict(composition_mode="scale", r=1, use_rslora=True), "applies to LoRA"),
    (dict(use_dora=True, init_weights="olora"), "DoRA starts"),
    (dict(input_scaled=("ffn.output",)), "applies to .IA.\\^3"),
    (dict(composition_mode="scale", r=1, input_scaled=("ffn.output",)), "does not place"),
])
def test_bad_options_are_refused_saying_what_to_pass(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        LoRAConfig(**fields)


def test_adapterhub_export_of_what_adapterhub_lacks_is_refused(tmp_path):
    model = archs.tiny_model("bert")
    model.add_adapter("a", LoRAConfig(attn_matrices=("q", "o")))
    with pytest.raises(ValueError, match="AdapterHub's LoRA has no.*'o': the attention output"):
        model.save_adapter(tmp_path / "a", "a", format="adapterhub")
    assert not (tmp_path / "a").exists()


def test_ia3_on_inputs_merges_into_the_weight_columns_exactly():
    model = archs.tiny_model("bert")
    base = {key: t.clone() for key, t in model.state_dict().items()}
    model.add_adapter("a", IA3Config(attn_matrices=("k", "v", "o"), intermediate_lora=False, output_lora=True,
                                     input_scaled=("attn.out", "ffn.output"), alpha=2), set_active=True)
    assert model.layers[0].ffn.output.adapters["a"].lora_B.shape == (model.config.intermediate_size, 1)
    batch = archs.inputs(model.config)
    with torch.no_grad():
        for parameter in model.adapter_parameters("a"):
            parameter.add_(torch.randn_like(parameter) * 0.1)
        adapted = model(**batch).last_hidden_state
        model.merge_adapter("a")
        assert_parity(model(**batch).last_hidden_state, adapted)
        model.reset_adapter("a")
    assert all(torch.equal(model.state_dict()[key], t) for key, t in base.items() if key in model.state_dict())
