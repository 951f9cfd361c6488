"""API misuse: each call either works correctly or fails with a message that says what to do, and a refused call
changes nothing. (Unknown names, deleting an active or merged adapter and training a merged one are specified in
test_model.py and methods/test_lora.py.)"""

from __future__ import annotations

import pytest
import torch

from peftcore.composition import Stack
from tests.archs import tiny_model
from tests.parity import assert_parity
from tests.peftcore.test_io import assert_unchanged, fingerprint, randomize, same_tensors
from tests.peftcore.test_model import hidden, inputs

# ---- merging -------------------------------------------------------------------------------------------------


def test_a_second_lora_merged_onto_the_same_weight_is_refused_and_resetting_the_first_restores_it():
    model = tiny_model()
    model.add_adapter("a", "lora[attn_matrices=['q', 'v']]")
    model.add_adapter("b", "lora[attn_matrices=['v', 'k']]")
    base = {key: t.clone() for key, t in model.base_state_dict().items()}
    for name in ("a", "b"):
        randomize(model, name, scale=0.1)
    model.merge_adapter("a")
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"'a' is merged into layers\.0\.attn\.v already; one merged adapter per "
                                         r"weight: reset_adapter\('a'\) first"):
        model.merge_adapter("b")
    assert_unchanged(model, before)
    model.reset_adapter("a")
    assert same_tensors(model.base_state_dict(), base)


def test_resetting_one_of_two_merged_adapters_keeps_the_other_merged():
    model = tiny_model()
    model.add_adapter("a", "lora[attn_matrices=['q']]")
    model.add_adapter("b", "ia3")  # k, v and the intermediate: no weight in common with "a"
    for name in ("a", "b"):
        randomize(model, name, scale=0.1)
    batch = inputs(model)
    base = {key: t.clone() for key, t in model.base_state_dict().items()}
    model.set_active_adapters("b")
    only_b = hidden(model, batch)
    model.set_active_adapters(None)
    model.merge_adapter("a")
    model.merge_adapter("b")
    model.reset_adapter("a")
    assert model.merged_adapters() == {"b"}
    torch.testing.assert_close(hidden(model, batch), only_b, rtol=0, atol=1e-5)
    model.reset_adapter("b")
    assert same_tensors(model.base_state_dict(), base)


def test_a_merged_adapter_is_not_applied_twice_when_active():
    model = tiny_model()
    model.add_adapter("a", "lora[intermediate_lora=True]", set_active=True)
    randomize(model, "a", scale=0.1)
    batch = inputs(model)
    unmerged = hidden(model, batch)
    model.merge_adapter("a")
    assert model.active_adapters == Stack("a")
    torch.testing.assert_close(hidden(model, batch), unmerged, rtol=0, atol=1e-5)


def test_training_another_adapter_while_one_is_merged_leaves_the_merged_weights_frozen():
    model = tiny_model()
    model.add_adapter("merged", "lora")
    model.add_adapter("new", "seq_bn")
    randomize(model, "merged", scale=0.1)
    model.merge_adapter("merged")
    merged = {key: t.clone() for key, t in model.base_state_dict().items()}
    model.train_adapter("new")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**inputs(model)).last_hidden_state.pow(2).mean().backward()
    optimizer.step()
    assert same_tensors(model.base_state_dict(), merged)


# ---- dtype and device ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    lambda model: model.double(), lambda model: model.half(), lambda model: model.to(torch.bfloat16),
    lambda model: model.to("cpu", torch.float64),
], ids=["double", "half", "to_bfloat16", "to_cpu_float64"])
def test_adapters_heads_and_loads_follow_a_dtype_change(change, tmp_path):
    source = tiny_model()
    source.add_adapter("saved", "seq_bn_inv")
    source.add_classification_head("saved")
    source.save_adapter(tmp_path / "saved", "saved")
    model = tiny_model()
    model.add_adapter("before", "prefix_tuning[prefix_length=2]")
    change(model)
    dtype = model.layers[0].attn.q.weight.dtype
    model.add_adapter("after", "lora")
    model.load_adapter(tmp_path / "saved", set_active=True)
    assert {p.dtype for p in model.parameters()} == {dtype}
    out = model(**inputs(model))
    assert out.last_hidden_state.dtype == out.logits.dtype == dtype
    assert torch.isfinite(out.logits).all()


def test_reset_after_a_dtype_change_restores_the_original_weights_in_the_new_dtype():
    model = tiny_model()
    model.add_adapter("a", "lora")
    randomize(model, "a", scale=0.1)
    base = {key: t.double() for key, t in model.base_state_dict().items()}
    model.merge_adapter("a")
    model.double()
    model.reset_adapter("a")
    assert same_tensors(model.base_state_dict(), base)


def test_an_ejected_prefix_keeps_the_models_dtype():
    model = tiny_model().to(torch.bfloat16)
    model.add_adapter("a", "prefix_tuning[prefix_length=2]")
    model.eject_prefix_tuning("a")
    assert {p.dtype for p in model.adapter_parameters("a")} == {torch.bfloat16}


# ---- torch.compile ---------------------------------------------------------------------------------------------


def test_a_compiled_model_runs_adapters_added_and_activated_after_compilation():
    """Activation changes a site's plug; dynamo guards on it and recompiles. The guard is dynamo's whatever backend
    compiles the graph, so the cheap "eager" backend shows it."""
    model = tiny_model()
    compiled = torch.compile(model, backend="eager")
    batch = inputs(model)
    plain = hidden(compiled, batch)
    compiled.add_adapter("a", "seq_bn", set_active=True)
    assert_parity(hidden(compiled, batch), hidden(model, batch))  # compiled keeps the padding, eager packs
    assert not torch.equal(hidden(compiled, batch), plain)
    compiled.add_adapter("b", "lora[init_weights='bert']", set_active=True)
    assert_parity(hidden(compiled, batch), hidden(model, batch))
    compiled.set_active_adapters(None)
    assert torch.equal(hidden(compiled, batch), plain)
