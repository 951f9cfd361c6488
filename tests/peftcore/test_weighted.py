"""merge_adapters against HF PEFT's add_weighted_adapter on the same LoRA weights (PEFT's files loaded into ours):
equal where PEFT is right, and where it is not, the difference pinned with why ours is right; merge_and_unload.

PEFT 0.21.2 is right for ``cat``, ``svd`` and the ``*_svd`` strategies (the strategy applied to the updates
ΔWᵢ = sᵢ·Bᵢ·Aᵢ, then cut by SVD), and for any strategy with one adapter. Its ``linear``, ``ties``, ``dare_*`` and
``magnitude_prune`` combine the A's and the B's separately (issue #3004): the product holds cross terms Bᵢ·Aⱼ.
Ours applies those strategies to the updates and keeps the result exact, which is what PEFT's ``*_svd`` form gives
when its rank is not cut (svd_rank = the hidden size). And PEFT's merged adapter inherits ``use_rslora`` with
alpha = r, so its update is √r too large (issue #3761; PR #3449 fixes it after 0.21.2).
"""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
import transformers as tf

from peftcore.models import BertModel
from tests.parity import assert_parity, padded_batch

SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=120)
TARGETS = ["query", "value", "intermediate.dense"]  # intermediate: 32 -> 37, so min(out, in) is the hidden size
ADAPTERS = {  # name -> (r, alpha, use_rslora)
    "a": (4, 8, False), "b": (4, 4, False), "c": (2, 6, False), "ra": (4, 8, True), "rb": (2, 2, True),
}
HIDDEN = SIZE["hidden_size"]


@pytest.fixture(scope="module")
def pair(hf_checkpoint, tmp_path_factory):
    """(ours, PEFT's model, batch): the same random LoRA adapters in both, PEFT's saved by PEFT and loaded by ours."""
    directory, _ = hf_checkpoint(tf.BertModel, tf.BertConfig(**SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = None
        for name, (r, alpha, rslora) in ADAPTERS.items():
            config = peft.LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=TARGETS)
            if theirs is None:
                theirs = peft.get_peft_model(tf.BertModel.from_pretrained(directory), config, adapter_name=name)
            else:
                theirs.add_adapter(name, config)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for key, parameter in theirs.named_parameters():
                if "lora_" in key:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        saved = tmp_path_factory.mktemp("peft")
        theirs.save_pretrained(saved, selected_adapters=list(ADAPTERS))
        ours = BertModel.from_pretrained(directory).eval()
        for name in ADAPTERS:
            ours.load_adapter(saved / name, load_as=name)
    ids, mask = padded_batch(SIZE["vocab_size"], 0)
    return ours, theirs.eval(), dict(input_ids=ids, attention_mask=mask)


def run_ours(ours, name: str, batch) -> torch.Tensor:
    ours.set_active_adapters(name)
    with torch.no_grad():
        return ours(**batch).last_hidden_state


def run_theirs(theirs, name: str, batch) -> torch.Tensor:
    theirs.set_adapter(name)
    with torch.no_grad():
        return theirs(**batch).last_hidden_state


@pytest.fixture
def same_draws(monkeypatch):
    """DARE's masks: ours and PEFT's both call torch.bernoulli, but PEFT draws its new adapter's initial values from
    the global RNG first (ours draws them too, in another order); patched, both draw from one generator that each
    merge reseeds (the returned function), so the same masks meet the same updates in the same order."""
    bernoulli, shared = torch.bernoulli, torch.Generator()
    monkeypatch.setattr(torch, "bernoulli", lambda p, generator=None: bernoulli(p, generator=shared))
    return lambda: shared.manual_seed(0)


def merge_both(pair, name, adapters, weights, method, reseed=None, ours_method=None, **options):
    """add_weighted_adapter(combination_type=``method``) and merge_adapters(method=``ours_method`` or the same; an
    SVD rank only for PEFT when they differ) on the same adapters; (our output, PEFT's output)."""
    ours, theirs, batch = pair
    for merge in ("theirs", "ours"):
        if reseed:
            reseed()
        if merge == "theirs":
            theirs.add_weighted_adapter(adapters, weights, name, combination_type=method, **options)
        else:
            kept = {key: value for key, value in options.items() if not (ours_method and key == "svd_rank")}
            ours.merge_adapters(name, adapters, weights, method=ours_method or method, **kept)
    return run_ours(ours, name, batch), run_theirs(theirs, name, batch)


EQUAL = [  # (adapters, weights, options): PEFT is right here
    (["a", "c"], [0.7, -0.4], dict(method="cat")),
    (["a", "c"], [0.7, -0.4], dict(method="svd")),
    (["a", "b", "c"], [0.5, 0.8, -0.3], dict(method="svd", svd_rank=3, svd_clamp=0.95, svd_full_matrices=False)),
    (["a", "c"], [1.0, 0.6], dict(method="ties_svd", density=0.5)),
    (["a", "b"], [1.0, -0.6], dict(method="ties_svd", density=0.4, majority_sign_method="frequency")),
    (["a", "c"], [0.9, 0.5], dict(method="magnitude_prune_svd", density=0.3)),
    (["a", "c"], [0.9, 0.5], dict(method="dare_linear_svd", density=0.6)),
    (["a", "b"], [0.9, 0.5], dict(method="dare_ties_svd", density=0.6, svd_rank=5)),
    (["b"], [-0.8], dict(method="linear")),  # one adapter: a negative weight, and PEFT is exact
    (["a"], [0.5], dict(method="ties", density=0.3)),  # one adapter: every strategy is linear (PEFT's rule)
]


@pytest.mark.parametrize("adapters, weights, options", EQUAL, ids=lambda v: v.get("method") if isinstance(v, dict)
                         else None)
def test_merge_equals_peft_where_peft_is_right(pair, adapters, weights, options, same_draws):
    ours, _, batch = pair
    name = f"m{EQUAL.index((adapters, weights, options))}"
    got, expected = merge_both(pair, name, adapters, weights, reseed=same_draws, **options)
    assert_parity(got, expected, mask=batch["attention_mask"])
    assert (got - run_ours(ours, None, batch)).abs().max() > 1e-2  # the merged adapter does something


def test_linear_is_the_exact_weighted_sum_where_peft_adds_cross_terms(pair):
    """Task arithmetic a - 0.6 b: ours equals PEFT's exact ``cat``; PEFT's ``linear`` mixes A's and B's
    (A = 0.7·√s_a·A_a - ..., B = ...), so its product holds B_a·A_b and B_b·A_a (issue #3004)."""
    ours, theirs, batch = pair
    got, peft_linear = merge_both(pair, "lin", ["a", "b"], [0.7, -0.6], method="linear")
    theirs.add_weighted_adapter(["a", "b"], [0.7, -0.6], "lin_cat", combination_type="cat")
    assert_parity(got, run_theirs(theirs, "lin_cat", batch), mask=batch["attention_mask"])
    assert (got - peft_linear).abs().max() > 1e-2
    assert ours.adapter_configs["lin"].r == 8  # the exact sum of two rank-4 updates: rank 8


PRUNED = [("ties", dict(density=0.5)), ("magnitude_prune", dict(density=0.4)), ("dare_linear", dict(density=0.6)),
          ("dare_ties", dict(density=0.6, majority_sign_method="frequency"))]


@pytest.mark.parametrize("method, options", PRUNED, ids=[m for m, _ in PRUNED])
def test_pruning_strategies_act_on_updates_exactly(pair, method, options, same_draws):
    """Ours prunes, elects signs and sums the updates ΔWᵢ themselves, as TIES and DARE define them, and keeps the
    result whole: PEFT's ``*_svd`` form at full rank. PEFT's plain form prunes A's and B's (cross terms)."""
    ours, theirs, batch = pair
    name = f"p_{method}"
    got, exact = merge_both(pair, name, ["a", "b"], [1.0, 0.5], reseed=same_draws, ours_method=method,
                            method=f"{method}_svd", svd_rank=HIDDEN, **options)
    assert_parity(got, exact, mask=batch["attention_mask"])
    same_draws()
    theirs.add_weighted_adapter(["a", "b"], [1.0, 0.5], f"{name}_peft", combination_type=method, **options)
    assert (got - run_theirs(theirs, f"{name}_peft", batch)).abs().max() > 1e-3
    assert ours.adapter_configs[name].r == HIDDEN


def test_a_merged_adapter_saves_for_peft_with_its_outputs(pair, hf_checkpoint, tmp_path):
    """The merged adapter is a plain LoRA (alpha = r): PEFT loads it with ours, the full-rank ``ties`` one too."""
    ours, _, batch = pair
    ours.merge_adapters("to_peft", ["a", "c"], [0.7, -0.4], method="ties", density=0.5)
    ours.save_adapter(tmp_path / "merged", "to_peft", format="peft")
    directory, _ = hf_checkpoint(tf.BertModel, tf.BertConfig(**SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(tf.BertModel.from_pretrained(directory), tmp_path / "merged").eval()
    with torch.no_grad():
        expected = theirs(**batch).last_hidden_state
    assert_parity(run_ours(ours, "to_peft", batch), expected, mask=batch["attention_mask"])


def test_dare_keeps_density_of_entries_rescaled_and_a_seed_repeats_it(pair):
    """DARE with one update beside a zero one: about ``density`` of the entries kept, each divided by density (the
    expectation kept); the same ``seed`` draws the same masks, another seed others."""
    ours, _, batch = pair
    ours.add_adapter("zero", "lora[r=4, alpha=8, intermediate_lora=True]")  # B = 0: no update
    for name, seed in (("d1", 6), ("d2", 6), ("d3", 7)):
        ours.merge_adapters(name, ["a", "zero"], [1.0, 1.0], method="dare_linear", density=0.25, seed=seed)
    site = next(site.module for site in ours.sites_found if "a" in site.module.adapters)
    a, merged = site.adapters["a"], site.adapters["d1"]
    update, kept = a.scaling * a.lora_B @ a.lora_A, merged.scaling * merged.lora_B @ merged.lora_A
    with torch.no_grad():
        dropped = kept.abs() < 1e-5
        assert abs(1 - dropped.float().mean().item() - 0.25) < 0.05  # 32 x 32 entries: 3.5 standard deviations
        torch.testing.assert_close(kept[~dropped], update[~dropped] / 0.25, atol=1e-4, rtol=1e-4)
    assert torch.equal(run_ours(ours, "d1", batch), run_ours(ours, "d2", batch))
    assert not torch.equal(run_ours(ours, "d1", batch), run_ours(ours, "d3", batch))


def test_rslora_sources_merge_to_their_exact_sum_where_peft_overscales(pair):
    """rsLoRA sources (s = alpha/√r): ours folds each scaling into the merged B. PEFT's merged adapter keeps
    use_rslora with alpha = r, so it scales its (right) factors by √r instead of 1: with that scaling set to 1 it
    equals ours."""
    _, theirs, batch = pair
    got, overscaled = merge_both(pair, "rs", ["ra", "rb"], [0.7, -0.4], method="cat")
    assert (got - overscaled).abs().max() > 1e-2
    layers = [module for module in theirs.modules() if isinstance(module, peft.tuners.lora.LoraLayer)]
    assert [layer.scaling["rs"] for layer in layers] == pytest.approx([6 / 6 ** 0.5] * len(layers))  # r = alpha = 6
    for layer in layers:
        layer.scaling["rs"] = 1.0
    assert_parity(got, run_theirs(theirs, "rs", batch), mask=batch["attention_mask"])


def test_ia3_linear_equals_peft(hf_checkpoint, tmp_path):
    """(IA)^3: the new vector is Σ wᵢ·lᵢ, unnormalised, as PEFT's IA3Model.add_weighted_adapter."""
    directory, _ = hf_checkpoint(tf.BertModel, tf.BertConfig(**SIZE))
    config = peft.IA3Config(target_modules=["key", "value"], feedforward_modules=[])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(tf.BertModel.from_pretrained(directory), config, adapter_name="a")
        theirs.add_adapter("b", config)
        with torch.no_grad():
            for key, parameter in theirs.named_parameters():
                if "ia3_l" in key:
                    parameter.uniform_(0.5, 1.5)
        theirs.save_pretrained(tmp_path, selected_adapters=["a", "b"])
        ours = BertModel.from_pretrained(directory).eval()
        for name in ("a", "b"):
            ours.load_adapter(tmp_path / name, load_as=name)
    ids, mask = padded_batch(SIZE["vocab_size"], 0)
    batch = dict(input_ids=ids, attention_mask=mask)
    theirs.add_weighted_adapter(["a", "b"], [0.8, 0.5], "m")
    ours.merge_adapters("m", ["a", "b"], [0.8, 0.5])
    assert_parity(run_ours(ours, "m", batch), run_theirs(theirs.eval(), "m", batch), mask=mask)
    with pytest.raises(ValueError, match=r"offer only \['linear'\]"):
        ours.merge_adapters("t", ["a", "b"], [0.8, 0.5], method="ties", density=0.5)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.merge_adapters("x", ["a", "nope"], [1, 1]), "no adapter named 'nope'"),
    (lambda m: m.merge_adapters("x", ["a", "c"], [1]), "2 adapters but 1 weights"),
    (lambda m: m.merge_adapters("x", ["a", "c"], [1, float("nan")]), "finite numbers"),
    (lambda m: m.merge_adapters("x", ["a", "c"], [1, 1], method="sum"), "method='sum' is not supported"),
    (lambda m: m.merge_adapters("x", ["a", "c"], [1, 1], method="ties"), "density"),
    (lambda m: m.merge_adapters("x", ["a", "c"], [1, 1], method="dare_linear", density=0.0), r"\(0, 1\]"),
    (lambda m: m.merge_adapters("x", ["a", "c"], [1, 1], method="cat", svd_rank=2), "svd_rank and svd_clamp"),
    (lambda m: m.merge_adapters("x", ["a", "c"], [1, 1], method="svd", svd_rank=HIDDEN + 1), "exceeds"),
    (lambda m: m.merge_adapters("a", ["a", "c"], [1, 1]), "overwrite_ok=True"),
    (lambda m: m.merge_adapters("x", ["a", "bottleneck"], [1, 1]), "different sites"),
    (lambda m: m.merge_adapters("x", ["bottleneck"], [1]), "Bottleneck adapters have no weighted merge"),
    (lambda m: m.merge_adapters("x", ["a", "k"], [1, 1]), "sit at different sites"),
    (lambda m: m.merge_adapters("x", ["a", "g"], [1, 1]), "is gated"),
])
def test_bad_merges_say_why_and_change_nothing(pair, call, message):
    ours = pair[0]
    if "bottleneck" not in ours.adapter_configs:
        ours.add_adapter("bottleneck", "seq_bn")
        ours.add_adapter("k", "lora[attn_matrices=['k'], intermediate_lora=True]")
        ours.add_adapter("g", "lora[intermediate_lora=True, use_gating=True]")
    state = {key: tensor.clone() for key, tensor in ours.state_dict().items()}
    names = set(ours.adapter_configs)
    with pytest.raises((ValueError, KeyError, TypeError), match=message):
        call(ours)
    assert set(ours.adapter_configs) == names
    assert all(torch.equal(state[key], tensor) for key, tensor in ours.state_dict().items())


def test_merge_and_unload_leaves_a_plain_model_with_the_adapters_outputs(pair):
    ours, _, batch = pair
    plain = copy.deepcopy(ours)
    plain.add_adapter("gated", "lora[use_gating=True]")
    plain.set_active_adapters("a")
    expected = run_ours(plain, "a", batch)
    plain.set_active_adapters("gated")
    with pytest.raises(ValueError, match="gated"):
        plain.merge_and_unload()
    plain.set_active_adapters(["a", "c"])
    with pytest.raises(ValueError, match="one active adapter"):
        plain.merge_and_unload()
    assert "a" in plain.adapter_configs and not plain.merged_adapters()
    plain.set_active_adapters("a")
    assert plain.merge_and_unload() is plain
    assert not plain.adapter_configs and plain.active_adapters is None
    assert all(not site.module.adapters and site.module.plug is None for site in plain.sites_found
               if hasattr(site.module, "adapters"))
    with torch.no_grad():
        assert_parity(plain(**batch).last_hidden_state, expected, mask=batch["attention_mask"])
    assert not any(".adapters." in key for key in plain.state_dict())


def test_pissa_and_patterned_rslora_sources_concatenate_to_their_exact_weighted_sum():
    """Sources whose updates are not plain B·A at one rank: PiSSA's B·A - B0·A0 (rank 2r) and rsLoRA with a rank and
    alpha pattern. ``cat`` holds them all exactly: at every site the new update is Σ wᵢ·sᵢ·ΔWᵢ."""
    from peftcore import LoRAConfig, placement

    torch.manual_seed(0)
    model = BertModel(BertModel.config_class(**SIZE)).eval()
    model.add_adapter("pissa", LoRAConfig(r=2, alpha=4, init_weights="pissa"))
    model.add_adapter("patterned", LoRAConfig(r=2, alpha=2, use_rslora=True, rank_pattern={"attn.v": 3},
                                              alpha_pattern={r"layers\.1\.attn\.q": 5}))
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if ".lora_" in key:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    model.merge_adapters("sum", ["pissa", "patterned"], [0.7, -0.4], method="cat")
    sources = {name: dict(placement.placed(model, name)) for name in ("pissa", "patterned")}
    for site, merged in placement.placed(model, "sum"):
        expected = sum(weight * sources[name][site].scaling * sources[name][site].delta_weight()
                       for name, weight in (("pissa", 0.7), ("patterned", -0.4)))
        torch.testing.assert_close(merged.scaling * merged.delta_weight(), expected, atol=1e-6, rtol=0)
