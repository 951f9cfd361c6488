"""ReFT: AdapterHub's numbers and files both ways (two of its defects pinned), positions on real tokens padded or
packed, and the compositions it supports or refuses."""

from __future__ import annotations

import warnings

import adapters
import pytest
import torch
import transformers

from peftcore import Average, BatchSplit, Fuse, LoReftConfig, Parallel, Split, Stack
from peftcore.methods.reft import householder_rows
from peftcore.models.layers import Padding
from tests.archs import ADAPTERHUB_ARCHS, ARCHS, BERT_FAMILY, inputs, reference, tiny_model
from tests.conftest import SMALL, train_three_steps
from tests.parity import assert_adapterhub_round_trip, assert_parity, padded_batch

TRAINED = [
    "loreft",
    "noreft[prefix_positions=2, suffix_positions=2]",
    "loreft[r=2, suffix_positions=1, tied_weights=True, non_linearity='gelu', layers=[1]]",
]


def hidden(model, batch):
    return model(**batch).last_hidden_state


def units(model, name="a"):
    """Every ReftUnit of adapter ``name`` in our model."""
    return [unit for layer in model.layers if name in layer.output.adapters
            for unit in layer.output.adapters[name].units]


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("config", TRAINED)
def test_reft_trained_by_adapterhub_gives_its_outputs_count_and_reloads_there(adapterhub_trained, arch, config,
                                                                              tmp_path):
    directory, theirs, ids, mask = adapterhub_trained(arch, config)
    assert_adapterhub_round_trip(directory, theirs, ids, mask, tmp_path)


@pytest.mark.parametrize("arch", ADAPTERHUB_ARCHS)
def test_an_orthogonal_projection_loads_from_adapterhub_and_back_on_every_architecture(hf_checkpoint, arch, tmp_path):
    """An untrained LoReFT (AdapterHub's training collapses its projection: below) exercises the (h, h) base that
    AdapterHub's file carries: ours folds it in, and writes an identity base that AdapterHub reads to our numbers."""
    directory, model = reference(hf_checkpoint, arch)
    theirs = type(model).from_pretrained(directory).eval()
    adapters.init(theirs)
    theirs.add_adapter("a", config="loreft[suffix_positions=2, r=2]")
    theirs.set_active_adapters("a")
    theirs.eval().save_adapter(str(tmp_path / "a"), "a")
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    batch = inputs(ours.config)
    mask = batch.get("attention_mask")
    with torch.no_grad():
        expected = hidden(ours, batch)
        assert_parity(expected, hidden(theirs, batch), mask=mask)
        ours.save_adapter(tmp_path / "back", "a", format="adapterhub")
        again = type(model).from_pretrained(directory).eval()
        adapters.init(again)
        again.load_adapter(str(tmp_path / "back"))
        again.set_active_adapters("a")
        again.eval()  # adapters.init builds its ReFT layers in training mode: see below
        assert_parity(hidden(again, batch), expected, mask=mask)
    for unit in units(ours):
        R = unit.projection.weight
        assert torch.allclose(R @ R.T, torch.eye(2), atol=1e-6)


@pytest.mark.parametrize("config", ["loreft[init_weights_seed=5]", "direft[init_weights_seed=5, tied_weights=True]"])
def test_a_seeded_adapter_starts_with_adapterhubs_weights(hf_checkpoint, config):
    directory, model = reference(hf_checkpoint, "bert")
    theirs = type(model).from_pretrained(directory)
    adapters.init(theirs)
    theirs.add_adapter("a", config=config)
    ours = ARCHS["bert"].model.from_pretrained(directory)
    ours.add_adapter("a", config)
    for layer, their_layer in zip(ours.layers, theirs.encoder.layer, strict=True):
        their_units = their_layer.reft_layer.refts["a"].units
        for unit, their_unit in zip(layer.output.adapters["a"].units, their_units, strict=True):
            assert_parity(unit.learned_source.weight, their_unit.learned_source.weight, atol=0)
            assert_parity(unit.learned_source.bias, their_unit.learned_source.bias, atol=0)
            assert_parity(unit.projection.weight, their_unit.projection.weight, atol=1e-6)


def test_adapterhub_runs_reft_dropout_in_an_eval_model_until_eval_is_called_again(hf_checkpoint):
    """adapters.init builds each layer's ReftLayer in training mode, and adapters added later follow it: on a model
    put in eval mode first, AdapterHub's ReFT drops out at inference. Ours follows the model's mode."""
    directory, model = reference(hf_checkpoint, "bert")
    theirs = type(model).from_pretrained(directory).eval()
    adapters.init(theirs)
    theirs.add_adapter("a", config="loreft")
    assert theirs.encoder.layer[0].reft_layer.refts["a"].training
    ours = ARCHS["bert"].model.from_pretrained(directory).eval()
    ours.add_adapter("a", "loreft")
    assert not ours.layers[0].output.adapters["a"].training


def test_adapterhub_loreft_collapses_under_weight_decay_ours_keeps_orthonormal_rows(adapterhub_trained):
    """torch's orthogonal parametrization truncates each reflector's diagonal entry to an int: AdamW's weight decay
    takes -1 to -0.9999 on the first step, and AdapterHub's projection becomes zero (its LoReFT the identity). Ours
    takes the entry's sign, and the same three steps leave orthonormal rows."""
    directory, theirs, ids, mask = adapterhub_trained("bert", "loreft")
    their_projection = theirs.encoder.layer[0].reft_layer.refts["a"].units[0].projection.weight
    assert their_projection.abs().max() == 0
    ours = ARCHS["bert"].model.from_pretrained(directory)
    ours.add_adapter("a", "loreft")
    ours.train_adapter("a")
    train_three_steps(ours, ids, mask)
    for unit in units(ours):
        R = unit.projection.weight
        assert torch.allclose(R @ R.T, torch.eye(1), atol=1e-6)


def test_adapterhub_reloads_its_own_direft_wrongly_ours_reads_it_as_it_does_and_keeps_ours_exact(
        adapterhub_trained, tmp_path):
    """AdapterHub's to_dict drops subtract_projection, and its loading drops it from any file, so every DiReFT
    reloads there subtracting the projection: other outputs than the adapter it trained. Ours reads its file as
    AdapterHub does (the file cannot say otherwise), saves the field in ours (our DiReFT reloads exactly) and, in
    AdapterHub's layout, writes the equal LoReFT-form adapter, source W + R, which AdapterHub computes right."""
    directory, theirs, ids, mask = adapterhub_trained("bert", "direft[suffix_positions=1]")
    batch = {"input_ids": ids, "attention_mask": mask}
    reloaded = transformers.AutoModel.from_pretrained(directory).eval()
    adapters.init(reloaded)
    reloaded.load_adapter(str(tmp_path / "a"))
    reloaded.set_active_adapters("a")
    reloaded.eval()
    ours = ARCHS["bert"].model.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        trained, their_reload, our_load = hidden(theirs, batch), hidden(reloaded, batch), hidden(ours, batch)
        assert (trained - their_reload)[mask.bool()].abs().max() > 1e-3  # AdapterHub's reload is another adapter
        assert_parity(our_load, their_reload, mask=mask)

        ours.delete_adapter("a")
        ours.add_adapter("d", "direft[suffix_positions=1]")
        ours.set_active_adapters("d")
        expected = hidden(ours, batch)
        ours.save_adapter(tmp_path / "ours", "d")
        ours.save_adapter(tmp_path / "theirs", "d", format="adapterhub")
        ours.delete_adapter("d")
        ours.load_adapter(tmp_path / "ours", set_active=True)
        assert torch.equal(hidden(ours, batch), expected)
        again = transformers.AutoModel.from_pretrained(directory).eval()
        adapters.init(again)
        again.load_adapter(str(tmp_path / "theirs"))
        again.set_active_adapters("d")
        again.eval()
        assert_parity(hidden(again, batch), expected, mask=mask)


def test_a_nonlinear_direft_is_refused_in_adapterhubs_layout_which_cannot_hold_it(tmp_path):
    model = tiny_model("bert")
    model.add_adapter("d", "direft[non_linearity='gelu']")
    with pytest.raises(ValueError, match="format='peftcore'"):
        model.save_adapter(tmp_path / "d", "d", format="adapterhub")
    assert not (tmp_path / "d").exists()


def test_positions_are_counted_on_real_tokens_with_left_padding_as_in_adapterhub(hf_checkpoint, tmp_path):
    """AdapterHub starts each row at its first unmasked token: with left padding the prefix sits after the padding
    and the suffix at the row's end."""
    directory, model = reference(hf_checkpoint, "bert")
    theirs = type(model).from_pretrained(directory).eval()
    adapters.init(theirs)
    theirs.add_adapter("a", config="loreft[prefix_positions=2, suffix_positions=2]")
    theirs.set_active_adapters("a")
    theirs.eval()
    theirs.save_adapter(str(tmp_path / "a"), "a")
    ours = ARCHS["bert"].model.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    ids, mask = padded_batch(SMALL["vocab_size"], 0, lengths=(9, 5, 4))
    ids, mask = ids.flip(1), mask.flip(1)  # left padding
    with torch.no_grad():
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state,
                      theirs(input_ids=ids, attention_mask=mask).last_hidden_state, mask=mask)


@pytest.mark.parametrize("config", ["loreft[suffix_positions=2]", "direft[prefix_positions=5, suffix_positions=4]"])
def test_unpadded_execution_gives_the_padded_numbers_even_for_rows_shorter_than_the_positions(config):
    """Packed rows lie next to each other: a row shorter than its prefix and suffix must not reach into the next."""
    model = tiny_model("bert")
    model.add_adapter("a", config)
    model.set_active_adapters("a")
    ids, mask = padded_batch(model.config.vocab_size, 0, lengths=(12, 3, 1))
    with torch.no_grad():
        packed = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.unpad = False
        padded = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert model.plan.token_wise
    assert_parity(packed, padded, mask=mask)


def test_only_the_chosen_positions_change():
    model = tiny_model("bert")
    ids, mask = padded_batch(model.config.vocab_size, 0, lengths=(8,))
    model.add_adapter("a", LoReftConfig(prefix_positions=2, suffix_positions=1, layers=(1,)))
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.set_active_adapters("a")
        changed = (model(input_ids=ids, attention_mask=mask).last_hidden_state - plain).abs().amax(-1)[0] > 0
    assert changed.tolist() == [True, True, False, False, False, False, False, True]  # the last layer: no mixing


def test_stacked_interventions_apply_in_turn_and_a_batch_split_gives_each_row_its_own():
    model = tiny_model("bert")
    model.unpad = False
    ids, mask = padded_batch(model.config.vocab_size, 0)
    for name in ("a", "b"):
        model.add_adapter(name, "noreft[suffix_positions=1, layers=[1]]")  # the last layer: its output is the model's
    a, b = model.layers[1].output.adapters["a"], model.layers[1].output.adapters["b"]
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.set_active_adapters(Stack("a", "b"))
        padding = Padding(attention_mask=mask)
        assert_parity(model(input_ids=ids, attention_mask=mask).last_hidden_state, b(a(plain, padding), padding))
        model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
        split = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_parity(split, torch.cat([a(plain, padding)[:1], b(plain, padding)[1:]]))
        model.set_active_adapters(None)
        mixed = model(input_ids=ids, attention_mask=mask, adapter_names=["b", "a", None]).last_hidden_state
        assert_parity(mixed, torch.cat([b(plain, padding)[:1], a(plain, padding)[1:2], plain[2:]]))


def test_parallel_runs_each_branch_as_if_alone():
    model = tiny_model("bert")
    for name in ("a", "b"):
        model.add_adapter(name, "loreft[suffix_positions=2]")
        model.add_classification_head(name, num_labels=2)
    ids, mask = padded_batch(model.config.vocab_size, 0)
    with torch.no_grad():
        model.set_active_adapters(Parallel("a", "b"))
        branches = model(input_ids=ids, attention_mask=mask)
        for name, out in zip("ab", branches, strict=True):
            model.set_active_adapters(name)
            alone = model(input_ids=ids, attention_mask=mask)
            assert_parity(out.last_hidden_state, alone.last_hidden_state, mask=mask)
            assert_parity(out.logits, alone.logits)


@pytest.mark.parametrize("setup", [Split("a", "b", splits=[6, 6]), Fuse("a", "b"), Average("a", "b")])
def test_blocks_that_cut_rows_or_fuse_are_refused_clearly(setup):
    model = tiny_model("bert")
    for name in ("a", "b"):
        model.add_adapter(name, "loreft")
    with pytest.raises(ValueError, match="cannot compose ReFT adapters"):
        model.set_active_adapters(setup)


def test_merge_is_refused_with_the_reason():
    model = tiny_model("bert")
    model.add_adapter("a", "loreft")
    with pytest.raises(ValueError, match="ReFT intervention edits chosen positions"):
        model.merge_adapter("a")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_interventions_follow_the_models_dtype(dtype):
    """AdapterHub's ``dtype`` field builds the units in a dtype of their own, which its forward then fails on unless
    the model has it; ours follow the model's (dtype=None, as LoRA's), an orthogonal projection computed in float32
    at least, as AdapterHub keeps it."""
    model = tiny_model("bert").to(dtype)
    model.add_adapter("a", "loreft[suffix_positions=2]", set_active=True)
    assert all(p.dtype == dtype for p in model.adapter_parameters("a"))
    ids, mask = padded_batch(model.config.vocab_size, 0)
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.dtype == dtype and out.isfinite().all()


def test_householder_rows_are_orthonormal_and_a_zero_diagonal_entry_zeroes_its_row():
    reflectors = torch.randn(3, 10)
    R = householder_rows(reflectors)
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6)
    reflectors[1, 1] = 0.0
    assert householder_rows(reflectors)[1].abs().max() == 0


@pytest.mark.parametrize(("fields", "message"), [
    (dict(prefix_positions=0), "intervenes nowhere"),
    (dict(layers=[0, 0]), "more than once"),
    (dict(r=0), "positive"),
    (dict(non_linearity="swishy"), "not supported"),
    (dict(dtype="float16"), "follow the model's dtype"),
])
def test_bad_configs_are_refused_naming_the_field(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        LoReftConfig(**fields)


@pytest.mark.parametrize(("config", "message"), [("loreft[r=33]", "exceeds the hidden size 32"),
                                                 ("loreft[layers=[0, 5]]", r"layer\(s\) \[5\]")])
def test_what_the_model_cannot_hold_is_refused_and_the_model_is_unchanged(config, message):
    model = tiny_model("bert")
    with pytest.raises(ValueError, match=message):
        model.add_adapter("a", config)
    assert not model.adapter_configs and not any(layer.output.adapters for layer in model.layers)


def test_configs_follow_adapterhub_field_for_field():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("loreft", "noreft", "direft"):
            theirs = adapters.AdapterConfig.load(name).to_dict()
            ours = adapters_config_of(name)
            assert {**theirs, **({"subtract_projection": False} if name == "direft" else {})} == ours


def adapters_config_of(name: str) -> dict:
    from peftcore.configs import AdapterConfigBase

    return AdapterConfigBase.load(name).to_dict()
