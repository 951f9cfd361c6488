"""Gates over real tokens only (``gate_over_real_tokens``): a row's output no longer depends on the batch's padding,
so gated setups run unpadded, equal to their padded run; AdapterHub's gate stays the default (test_gating.py)."""

from __future__ import annotations

import pytest
import torch

from peftcore.configs import parse
from tests.archs import tiny_model
from tests.parity import assert_parity
from tests.peftcore.test_checkpointing import assert_same_gradients, training
from tests.peftcore.test_io import randomize
from tests.peftcore.test_model import hidden, inputs

GATED = ["unipelt", "seq_bn[use_gating=True]", "lora[use_gating=True]",
         "prefix_tuning[prefix_length=3, bottleneck_size=8, use_gating=True]"]


def real_token_gated(arch: str, method: str, real_tokens: bool = True, names: str = "a") -> torch.nn.Module:
    """A tiny model with gated adapters ``names`` (weights drawn away from their init: LoRA's B is zero), the first
    active."""
    model = tiny_model(arch)
    for name in names:
        model.add_adapter(name, parse(method).replace(gate_over_real_tokens=real_tokens))
        randomize(model, name, scale=0.3)
    model.set_active_adapters(names[0])
    return model


@pytest.mark.parametrize("arch", ["bert", "distilbert", "deberta", "modernbert"])
@pytest.mark.parametrize("method", GATED)
def test_unpadded_equals_padded_and_padding_changes_no_row(arch, method):
    model = real_token_gated(arch, method)
    batch = inputs(model)  # lengths 6, 4, 2
    assert model.unpadded()
    packed = hidden(model, batch)
    model.unpad = False
    padded = hidden(model, batch)
    assert_parity(packed, padded)
    longer = {key: torch.nn.functional.pad(value, (0, 3)) for key, value in batch.items()}  # 3 more pad tokens
    assert_parity(hidden(model, longer)[:, :padded.shape[1]], padded)


def test_adapterhubs_gate_depends_on_padding_and_keeps_the_padded_layout():
    model = real_token_gated("bert", "unipelt", real_tokens=False)
    assert not model.unpadded()
    batch = inputs(model)
    longer = {key: torch.nn.functional.pad(value, (0, 3)) for key, value in batch.items()}
    padded = hidden(model, batch)
    assert (hidden(model, longer)[:, :padded.shape[1]] - padded).abs().max() > 1e-4


def test_mixed_batches_gate_each_row_over_its_own_tokens():
    model = real_token_gated("bert", "unipelt", names="ab")
    batch = inputs(model)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    with torch.no_grad():
        mixed = model(**batch, adapter_names=["b", "a", "b"]).last_hidden_state
        for row, name in enumerate("bab"):
            model.set_active_adapters(name)
            alone = model(input_ids=batch["input_ids"][row:row + 1, :lengths[row]]).last_hidden_state
            assert_parity(mixed[row:row + 1, :lengths[row]], alone)


def test_checkpointing_recomputes_with_the_forwards_padding():
    model = training("roberta", "unipelt[gate_over_real_tokens=True]")
    assert model.unpadded()
    assert_same_gradients(model, inputs(model))


def test_our_format_keeps_the_option_and_adapterhubs_refuses_it(tmp_path):
    model = real_token_gated("bert", "unipelt")
    with pytest.raises(ValueError, match="gate_over_real_tokens=True.*format='peftcore'"):
        model.save_adapter(tmp_path / "hub", "a", format="adapterhub")
    assert not (tmp_path / "hub").exists()
    model.save_adapter(tmp_path / "ours", "a")
    loaded = tiny_model("bert")
    loaded.load_adapter(tmp_path / "ours", set_active=True)
    assert loaded.adapter_configs["a"] == model.adapter_configs["a"]
    batch = inputs(model)
    assert_parity(hidden(loaded, batch), hidden(model, batch))


def test_the_option_needs_a_gate_and_is_left_out_of_adapterhubs_dict():
    with pytest.raises(ValueError, match="use_gating is False"):
        parse("seq_bn[gate_over_real_tokens=True]")
    assert all("gate_over_real_tokens" not in member for member in parse("unipelt").to_dict()["configs"])


def test_a_compiled_model_gates_over_real_tokens_in_one_graph():
    model = real_token_gated("bert", "unipelt")
    batch = inputs(model)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # the padded layout: the mask-based mean
    with torch.no_grad():
        got = compiled(**batch).last_hidden_state
    assert_parity(got, hidden(model, batch), mask=batch["attention_mask"])
