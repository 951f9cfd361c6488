"""Composition (peftcore/composition.py, peftcore/fusion.py): what each block means, mixed-adapter batches, fusion
files, and the clear errors for compositions that cannot run. Parity with AdapterHub is in
tests/peftcore/interop/test_adapterhub_composition.py."""

from __future__ import annotations

import itertools
import json
import threading

import pytest
import torch
from torch import nn

from peftcore.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack, parse_setup
from tests.archs import ARCHS, tiny_model
from tests.parity import assert_parity, real_tokens
from tests.peftcore.test_model import assert_same_state, hidden, inputs, snapshot

MIXED = {  # method -> the two configs a mixed batch runs side by side
    "lora": ("lora", "lora[r=4, intermediate_lora=True]"),
    "ia3": ("ia3", "ia3[output_lora=True]"),
    "dora": ("dora", "dora[r=4, output_lora=True, dora_variant='peft']"),
    "vera": ("vera", "dvora[r=4]"),
    "seq_bn": ("seq_bn", "seq_bn[reduction_factor=4]"),
    "par_bn": ("par_bn", "par_bn[reduction_factor=4]"),
    "prefix": ("prefix_tuning[prefix_length=3]", "prefix_tuning[prefix_length=5]"),  # keys padded per row
    "compacter": ("compacter[reduction_factor=2]", "compacter++[reduction_factor=4]"),
    "unipelt": ("unipelt", "unipelt"),
    "seq_bn_inv": ("seq_bn_inv", "double_seq_bn_inv"),
    "prompt": ("prompt_tuning[prompt_length=2]", "prompt_tuning[prompt_length=4, combine='prefix_after_bos']"),
}


def with_adapters(model_type: str, configs: dict[str, str]) -> nn.Module:
    """A tiny model with the named adapters, every adapter tensor moved off its (often identity) initialisation."""
    model = tiny_model(model_type)
    generator = torch.Generator().manual_seed(1)
    for name, config in configs.items():
        model.add_adapter(name, config)
        with torch.no_grad():
            for parameter in model.adapter_parameters(name):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def run(model: nn.Module, setup, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.set_active_adapters(setup)
    return hidden(model, batch)


def rows(batch: dict[str, torch.Tensor], span: slice) -> dict[str, torch.Tensor]:
    return {key: value[span] for key, value in batch.items()}


# ---- parsing and nesting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setup", "block"), [
    ("a", Stack("a")),
    ("a,b", Stack("a", "b")),
    (["a", "b"], Stack("a", "b")),
    ([["a", "b"], "c"], Stack(Fuse("a", "b"), "c")),
    (None, None),
    ([], None),
])
def test_shorthands_read_as_adapterhub_reads_them(setup, block):
    assert parse_setup(setup) == block


@pytest.mark.parametrize(("setup", "message"), [
    (lambda: Fuse("a", Split("b", "c", splits=2)), "Split cannot be nested in Fuse"),
    (lambda: BatchSplit("a", Parallel("b", "c"), batch_sizes=1), "Parallel cannot be nested in BatchSplit"),
    (lambda: Stack("a", BatchSplit("b", Stack("c", Split("d", "e", splits=1)), batch_sizes=1)), "nested too deeply"),
    (lambda: Stack("a", BatchSplit("b", Average("c", "d"), batch_sizes=1)), "nested too deeply"),
    (lambda: Stack("a", Stack("b", "c")), "Stack cannot be nested in Stack"),
    (lambda: Split("a", "b", splits=[3]), r"one int >= 0 in splits per child"),
    (lambda: BatchSplit("a", "b", batch_sizes=[2, -1]), r"one int >= 0 in batch_sizes per child"),
    (lambda: BatchSplit("a", "b", batch_sizes=[2, 1.0]), r"one int >= 0 in batch_sizes per child"),
])
def test_unsupported_nesting_and_sizes_are_refused(setup, message):
    """Built and parsed inside the test: a block checks its own sizes, parse_setup the nesting."""
    with pytest.raises(ValueError, match=message):
        parse_setup(setup())


def test_average_weights_are_normalised_unless_asked_not_to():
    assert Average("a", "b", weights=[1, 3]).weights == (0.25, 0.75)
    assert Average("a", "b", weights=[1, 3], normalize_weights=False).weights == (1.0, 3.0)
    assert Average("a", "b", "c").weights == pytest.approx((1 / 3,) * 3)
    with pytest.raises(ValueError, match="sum to 0"):
        Average("a", "b", weights=[1, -1])


# ---- what each block computes -------------------------------------------------------------------------------------


def test_stacked_lora_updates_add_up():
    model = with_adapters("bert", {"a": "lora", "b": "lora[r=4, intermediate_lora=True]"})
    batch = inputs(model)
    stacked = run(model, Stack("a", "b"), batch)
    model.merge_adapter("a")  # W + s_a B_a A_a, then b on top: the sum of the two updates
    assert_parity(stacked, run(model, "b", batch))


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_split_runs_each_slice_as_if_alone(arch):
    configs = {"a": "seq_bn", "b": "par_bn", "l": "lora", "p": "prefix_tuning[prefix_length=2]"}
    model = with_adapters(arch, configs)
    batch = inputs(model)
    setup = BatchSplit(Stack("a", "l"), "p", "b", batch_sizes=[1, 1, 1])
    expected = torch.cat([run(model, child, batch)[i:i + 1] for i, child in enumerate(setup)])
    assert_parity(run(model, setup, batch), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_split_slices_of_size_zero_run_their_adapters_on_no_rows(arch):
    """AdapterHub accepts a slice of size 0 (tests/peftcore/interop/test_adapterhub_composition.py): its child runs
    on no rows, and the other slices are what they are alone."""
    configs = {"a": "seq_bn", "b": "par_bn", "l": "lora", "p": "prefix_tuning[prefix_length=2]"}
    model = with_adapters(arch, configs)
    batch = inputs(model)
    for setup in (BatchSplit(Stack("a", "l"), "p", "b", batch_sizes=[0, 1, 2]),
                  BatchSplit("p", "l", batch_sizes=[3, 0])):
        rows = itertools.pairwise(itertools.accumulate(setup.batch_sizes, initial=0))
        expected = torch.cat([run(model, child, batch)[start:end]
                              for child, (start, end) in zip(setup, rows, strict=True)])
        assert_parity(run(model, setup, batch), expected)


def test_batch_split_slice_of_size_zero_gives_an_empty_output_through_its_head():
    model = with_adapters("bert", {"a": "seq_bn", "b": "seq_bn"})
    model.add_classification_head("a", num_labels=2)
    model.add_classification_head("b", num_labels=3)
    batch = inputs(model)
    model.set_active_adapters("b")
    alone = model(**batch).logits
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[0, 3]))
    empty, full = model(**batch)
    assert empty.logits.shape == (0, 2)
    assert_parity(full.logits, alone)


def test_split_parts_of_length_zero_run_their_adapters_on_no_positions():
    model = with_adapters("bert", {"a": "seq_bn", "b": "lora"})
    batch = inputs(model)
    alone = run(model, "b", batch)
    assert_parity(run(model, Split("a", "b", splits=[0, alone.shape[1]]), batch), alone)


def test_split_runs_each_part_of_the_sequence_with_its_adapter():
    model = with_adapters("bert", {"a": "seq_bn", "b": "par_bn"})
    model.set_active_adapters(Split("a", "b", splits=[2, 4]))
    site = model.layers[0].ffn.residual
    h, x = torch.randn(3, 6, 32), torch.randn(3, 6, 32)
    a, b = site.adapters["a"], site.adapters["b"]
    with torch.no_grad():
        expected = torch.cat([a(h[:, :2], x[:, :2], site.norm), b(h[:, 2:], x[:, 2:], site.norm)], dim=1)
        assert_parity(site(h, x), expected)
    with pytest.raises(ValueError, match=r"the sizes sum to 6, but the sequence has 7"):
        site(torch.randn(3, 7, 32), torch.randn(3, 7, 32))


@pytest.mark.parametrize("configs", [{"a": "lora", "b": "lora[r=4]"}, {"a": "seq_bn", "b": "seq_bn"},
                                     {"a": "ia3", "b": "ia3"}])
def test_average_of_one_adapter_with_itself_is_that_adapter(configs):
    """AdapterHub's Average("a", "a") is not "a": it divides by N twice (see its parity test)."""
    model = with_adapters("bert", configs)
    batch = inputs(model)
    assert_parity(run(model, Average("a", "a", weights=[0.3, 0.7]), batch), run(model, "a", batch))


def test_average_of_lora_adapters_averages_their_updates():
    model = with_adapters("bert", {"a": "lora", "b": "lora"})
    batch = inputs(model)
    averaged = run(model, Average("a", "b", weights=[1, 3]), batch)
    # the weighted sum of two rank-8 updates has rank 16: an SVD of rank 16 keeps it whole
    model.average_adapter("ab", ["a", "b"], weights=[1, 3], combine_strategy="lora_delta_w_svd", svd_rank=16)
    assert_parity(averaged, run(model, "ab", batch))


def test_parallel_returns_one_output_per_branch_with_its_head():
    model = with_adapters("roberta", {"a": "seq_bn", "b": "lora"})
    model.add_classification_head("a", num_labels=2)
    model.add_classification_head("b", num_labels=3)
    batch = inputs(model)
    model.set_active_adapters(Parallel("a", "b"))
    with torch.no_grad():
        branches = model(**batch)
    assert [out.logits.shape for out in branches] == [(3, 2), (3, 3)]
    for name, out in zip("ab", branches, strict=True):
        model.set_active_adapters(name)
        with torch.no_grad():
            alone = model(**batch)
        assert_parity(out.last_hidden_state, alone.last_hidden_state, mask=batch["attention_mask"])
        assert_parity(out.logits, alone.logits)


def test_stacked_invertible_adapters_invert_in_reverse_order():
    model = with_adapters("bert", {"a": "seq_bn_inv", "b": "double_seq_bn_inv"})
    model.set_active_adapters(Stack("a", "b"))
    site = model.embedding_site()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert_parity(site.inverse(site(x)), x)
        assert (site(x) - x).abs().max() > 1e-2


# ---- mixed-adapter batches ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", MIXED)
def test_mixed_batch_equals_running_each_example_alone(arch, method):
    if method == "seq_bn_inv" and not ARCHS[arch].is_text:
        pytest.skip("invertible adapters need token embeddings")
    model = with_adapters(arch, dict(zip("ab", MIXED[method], strict=True)))
    batch = {key: value.repeat(2, *(1,) * (value.dim() - 1))[:4] for key, value in inputs(model).items()}
    names = ["b", None, "a", "b"]
    with torch.no_grad():
        mixed = real_tokens(model(**batch, adapter_names=names).last_hidden_state, batch.get("attention_mask"))
    for i, name in enumerate(names):
        assert_parity(mixed[i:i + 1], run(model, name, rows(batch, slice(i, i + 1))))


def test_mixed_batch_runs_each_adapters_head():
    model = with_adapters("bert", {"a": "lora", "b": "seq_bn"})
    for name in "ab":
        model.add_classification_head(name, num_labels=3)
    batch = inputs(model)
    names = ["b", "a", "b"]
    with torch.no_grad():
        logits = model(**batch, adapter_names=names).logits
        for i, name in enumerate(names):
            model.set_active_adapters(name)
            assert_parity(logits[i:i + 1], model(**rows(batch, slice(i, i + 1))).logits)


def test_mixed_batch_leaves_the_active_setup_as_it_was():
    model = with_adapters("bert", {"a": "lora", "b": "seq_bn"})
    batch = inputs(model)
    before = run(model, "a", batch)
    with torch.no_grad():
        model(**batch, adapter_names=["b", "b", None])
    assert model.active_adapters == Stack("a")
    assert torch.equal(hidden(model, batch), before)


@pytest.mark.parametrize(("names", "error", "message"), [
    (["a", "b"], ValueError, "adapter_names has 2 entries, the batch has 3 rows"),
    (["a", "zzz", None], KeyError, "no adapter named 'zzz'"),
])
def test_bad_mixed_batches_fail_clearly(names, error, message):
    model = with_adapters("bert", {"a": "lora", "b": "seq_bn"})
    with pytest.raises(error, match=message), torch.no_grad():
        model(**inputs(model), adapter_names=names)


def test_mixed_batches_refuse_merged_adapters():
    model = with_adapters("bert", {"a": "lora", "b": "lora"})
    model.merge_adapter("a")
    with pytest.raises(ValueError, match=r"merged into the weights and would act on every row"), torch.no_grad():
        model(**inputs(model), adapter_names=["a", "b", None])


def test_forwards_in_two_threads_each_see_one_whole_setup():
    """Mixed batches in one thread while another switches the active setup: every output is one setup's."""
    model = with_adapters("bert", {"a": "lora", "b": "seq_bn"})
    batch = inputs(model)
    expected = {name: run(model, name, batch) for name in ("a", "b")}
    mixed_expected = torch.cat([expected["b"][:1], expected["a"][1:2], hidden_plain(model, batch)[2:]])
    failures: list[str] = []

    def switch() -> None:
        for step in range(20):
            name = "ab"[step % 2]
            model.set_active_adapters(name)

    def mix() -> None:
        for _ in range(10):
            with torch.no_grad():
                out = model(**batch, adapter_names=["b", "a", None]).last_hidden_state
            out = real_tokens(out, batch["attention_mask"])
            if (out - mixed_expected).abs().max() > 1e-5:
                failures.append("mixed batch saw another setup")

    threads = [threading.Thread(target=switch), threading.Thread(target=mix)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_forwards_never_see_a_half_merged_model():
    """Merging rewrites weights and drops the adapter's plugs in one step, which running forwards wait for: a forward
    that saw merged weights with the plugs still in place would apply the adapter twice."""
    model = with_adapters("bert", {"a": "lora[intermediate_lora=True, output_lora=True]"})
    batch = inputs(model)
    expected = run(model, "a", batch)
    failures: list[float] = []

    def merge_and_reset() -> None:
        for _ in range(15):
            model.merge_adapter("a")
            model.reset_adapter("a")

    def forward() -> None:
        for _ in range(15):
            with torch.no_grad():
                out = real_tokens(model(**batch).last_hidden_state, batch["attention_mask"])
            if (out - expected).abs().max() > 1e-5:
                failures.append((out - expected).abs().max().item())

    threads = [threading.Thread(target=merge_and_reset), threading.Thread(target=forward)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def hidden_plain(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return run(model, None, batch)


def test_the_setup_cannot_change_inside_a_forward():
    model = with_adapters("bert", {"a": "lora"})
    model.set_active_adapters("a")
    site = next(site.module for site in model.sites_found if site.name == "attn.q")
    plug = site.plug

    def switching_plug(x, y):
        model.set_active_adapters(None)
        return plug(x, y)

    site.plug = switching_plug
    with pytest.raises(RuntimeError, match="cannot change inside a forward"):
        hidden(model, inputs(model))


# ---- compositions that cannot run ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("setup", "error", "message"), [
    (Stack("a", "zzz"), KeyError, "no adapter named 'zzz'"),
    (Fuse("l", "m"), ValueError, r"Fuse cannot compose LoRA/\(IA\)\^3 adapters"),
    (Split("p", "q", splits=[3, 3]), ValueError, "Split cannot compose prefix-tuning adapters"),
    (Average("p", "q"), ValueError, "Average cannot compose prefix-tuning adapters"),
    (Average("inv", "inv2"), ValueError, "Average cannot compose invertible adapters"),
    (Average("a", "l"), ValueError, r"\['l'\] have no module there while the other children have"),
    (Fuse("a", "b"), ValueError, "has no fusion layer"),
    (Stack("t", "t2"), ValueError, "Stack cannot compose prompt-tuning adapters"),
    (Split("t", "t2", splits=[3, 3]), ValueError, "Split cannot compose prompt-tuning adapters"),
    (Average("t", "t2"), ValueError, "Average cannot compose prompt-tuning adapters"),
])
def test_a_composition_that_cannot_run_is_refused_and_nothing_changes(setup, error, message):
    model = with_adapters("bert", {"a": "seq_bn", "b": "seq_bn", "l": "lora", "m": "lora",
                                   "p": "prefix_tuning", "q": "prefix_tuning", "inv": "seq_bn_inv",
                                   "inv2": "seq_bn_inv", "t": "prompt_tuning[prompt_length=2]",
                                   "t2": "prompt_tuning[prompt_length=3]"})
    batch = inputs(model)
    out = run(model, "a", batch)
    with pytest.raises(error, match=message):
        model.set_active_adapters(setup)
    assert model.active_adapters == Stack("a")
    assert torch.equal(hidden(model, batch), out)


@pytest.mark.parametrize(("setup", "message"), [
    (BatchSplit("a", "b", batch_sizes=[1, 1]), r"the sizes sum to 2, but the batch has 3"),
    (Split("a", "b", splits=[4, 4]), r"the sizes sum to 8, but the sequence has 6"),
])
def test_sizes_that_do_not_fit_the_batch_fail_at_the_forward(setup, message):
    """A ValueError, and the IndexError AdapterHub raises."""
    model = with_adapters("bert", {"a": "seq_bn", "b": "seq_bn"})
    model.set_active_adapters(setup)
    with pytest.raises(ValueError, match=message) as raised:
        hidden(model, inputs(model))
    assert isinstance(raised.value, IndexError)


def test_merged_adapters_compose_only_in_stacks():
    model = with_adapters("bert", {"a": "lora", "b": "lora"})
    model.merge_adapter("a")
    model.set_active_adapters(Stack("a", "b"))
    with pytest.raises(ValueError, match=r"merged into the weights and act on every row alike"):
        model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))


# ---- AdapterFusion ------------------------------------------------------------------------------------------------


def fused_model() -> nn.Module:
    model = with_adapters("bert", {"a": "seq_bn", "b": "seq_bn", "c": "par_bn"})
    model.add_adapter_fusion(Fuse("a", "b"), "dynamic", set_active=True)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, fusion in model.fusion_layers("a,b"):
            for parameter in fusion.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def test_fusion_layers_save_and_load_bit_exactly(tmp_path):
    model = fused_model()
    batch = inputs(model)
    out = hidden(model, batch)
    model.save_adapter_fusion(tmp_path / "fusion", "a,b")
    fresh = tiny_model()
    for name in "ab":
        model.save_adapter(tmp_path / name, name)
        fresh.load_adapter(tmp_path / name)
    assert fresh.load_adapter_fusion(tmp_path / "fusion", set_active=True) == "a,b"
    assert torch.equal(hidden(fresh, batch), out)
    assert all(torch.equal(fresh.fusion_state("a,b")[key], tensor) for key, tensor in model.fusion_state("a,b").items())


def test_a_fusion_saved_with_its_head_loads_both_and_activates_both(tmp_path):
    model = fused_model()
    model.add_classification_head("task", num_labels=3, id2label={0: "x", 1: "y", 2: "z"})
    model.save_adapter_fusion(tmp_path / "fusion", "a,b", with_head="task")
    assert {"head_config.json", "head_model.safetensors"} <= {p.name for p in (tmp_path / "fusion").iterdir()}
    logits = model(**inputs(model)).logits
    fresh = tiny_model()
    for name in "ab":
        model.save_adapter(tmp_path / name, name, with_head=False)
        fresh.load_adapter(tmp_path / name)
    assert fresh.load_adapter_fusion(tmp_path / "fusion", set_active=True) == "a,b"
    assert fresh.active_head == "task" and fresh.get_labels() == ["x", "y", "z"]
    assert torch.equal(fresh(**inputs(model)).logits, logits)
    model.save_adapter_fusion(tmp_path / "fusion", "a,b")  # saved again without it: the head is gone
    assert "head_config.json" not in {p.name for p in (tmp_path / "fusion").iterdir()}


def test_a_fusion_of_adapters_placed_at_different_sub_layers_is_refused_and_nothing_changes():
    model = with_adapters("bert", {"a": "seq_bn", "b": "double_seq_bn", "l": "lora"})
    before = snapshot(model)
    for fused in (["a", "b"], ["a", "l"]):
        with pytest.raises(ValueError, match=r"placed at different sub-layers \(a: ffn.residual; [bl]: "):
            model.add_adapter_fusion(fused)
    assert_same_state(model, before)
    assert model.fusion_configs == {}


def test_a_fusion_over_adapters_that_are_not_loaded_is_refused_and_nothing_changes(tmp_path):
    model = fused_model()
    model.save_adapter_fusion(tmp_path / "fusion", "a,b")
    fresh = with_adapters("bert", {"a": "seq_bn"})
    before = snapshot(fresh)
    with pytest.raises(ValueError, match="load adapter 'b' first"):
        fresh.load_adapter_fusion(tmp_path / "fusion")
    assert_same_state(fresh, before)
    assert fresh.fusion_configs == {}


def test_a_fusion_file_that_does_not_fit_is_refused_and_nothing_changes(tmp_path):
    model = with_adapters("bert", {"a": "seq_bn", "b": "seq_bn"})
    model.add_adapter_fusion("a,b", "static")  # no value projection
    model.save_adapter_fusion(tmp_path / "fusion", "a,b")
    config = json.loads((tmp_path / "fusion" / "fusion_config.json").read_text())
    config["config"]["value"] = True  # the file now claims a value projection it does not hold
    (tmp_path / "fusion" / "fusion_config.json").write_text(json.dumps(config))
    model.delete_adapter_fusion("a,b")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"fusion 'a,b' does not fit this model:\n .* missing: .*fusions.value.weight"):
        model.load_adapter_fusion(tmp_path / "fusion")
    assert_same_state(model, before)
    assert model.fusion_configs == {}


def test_train_adapter_fusion_trains_only_the_fusion_layers():
    model = fused_model()
    model.train_adapter_fusion(Fuse("a", "b"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".fusions.a,b." in name for name in trainable)
    assert model.fusion_regularization_loss() is not None


def test_fusion_attentions_are_returned_per_layer_and_site():
    model = fused_model()
    batch = inputs(model)
    with torch.no_grad():
        out = model(**batch, output_adapter_fusion_attentions=True)
    attentions = out.adapter_fusion_attentions["a,b"]
    assert set(attentions) == {0, 1} and set(attentions[0]) == {"output_adapter"}  # seq_bn: after the FFN only
    probs = attentions[0]["output_adapter"]
    assert probs.shape == (3, 6, 2) and abs(probs.sum(-1) - 1).max() < 1e-5


def test_summary_lists_fusion_layers_and_the_active_setup():
    model = fused_model()
    summary = model.adapter_summary()
    assert "Fuse[a,b]" in summary and "Active setup: Fuse[a, b]" in summary
    rows = {row["name"]: row for row in model.adapter_summary(as_dict=True)}
    assert rows["Fuse[a,b]"]["active"] and rows["a"]["active"] and not rows["c"]["active"]
    assert rows["Fuse[a,b]"]["#param"] == sum(p.numel() for _, f in model.fusion_layers("a,b") for p in f.parameters())


def test_a_fused_adapter_cannot_be_deleted_before_its_fusion():
    model = fused_model()
    model.set_active_adapters(None)
    with pytest.raises(ValueError, match=r"adapter 'a' is fused in \['a,b'\]; delete_adapter_fusion"):
        model.delete_adapter("a")
    model.delete_adapter_fusion("a,b")
    model.delete_adapter("a")
    assert "a" not in model.adapter_configs and model.fusion_configs == {}


def test_a_compiled_model_runs_compositions_and_mixed_batches_as_eager():
    model = with_adapters("bert", {"a": "seq_bn", "l": "lora", "p": "prefix_tuning[prefix_length=2]"})
    batch = inputs(model)
    compiled = torch.compile(model, backend="eager")  # graph capture is what is tested; eager keeps it fast
    mask = batch["attention_mask"]  # compiled forwards keep the padding, eager ones leave zeros there
    for setup in (Stack("a", "l"), BatchSplit("a", "p", "l", batch_sizes=1)):
        model.set_active_adapters(setup)
        with torch.no_grad():
            assert_parity(compiled(**batch).last_hidden_state, model(**batch).last_hidden_state, mask=mask)
    with torch.no_grad():
        names = ["a", None, "p"]
        assert_parity(compiled(**batch, adapter_names=names).last_hidden_state,
                      model(**batch, adapter_names=names).last_hidden_state, mask=mask)


def test_the_nesting_rules_are_adapterhubs_every_block_included():
    import adapters.composition

    from peftcore.composition import ALLOWED_NESTINGS

    def by_name(rules: dict) -> dict[str, set[str]]:
        return {block.__name__: {allowed.__name__ for allowed in children} for block, children in rules.items()}

    assert by_name(ALLOWED_NESTINGS) == by_name(adapters.composition.ALLOWED_NESTINGS)
