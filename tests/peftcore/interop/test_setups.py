"""Adapter setup directories (peftcore/interop/setups.py): ``save_adapter_setup`` writes a setup's adapters,
fusions and heads and ``adapter_setup.json`` as AdapterHub does, and each of AdapterHub and ours loads the other's
with the same outputs; a load that fails midway leaves the model as it was."""

from __future__ import annotations

import json

import adapters as ah
import pytest
import torch

from peftcore.composition import BatchSplit, Fuse, Stack
from tests.archs import reference
from tests.parity import assert_parity
from tests.peftcore.interop.test_adapterhub import adapterhub_model, inputs_for, ours_from
from tests.peftcore.interop.test_adapterhub_heads import randomized


@pytest.fixture
def checkpoint(hf_checkpoint):
    return reference(hf_checkpoint, "bert", variant="wide")[0]


def with_setup(model, fuse, stack, head_block):
    base = {id(parameter) for parameter in model.parameters()}
    for name in ("a", "b", "c"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(["a", "b"])
    for name in ("head_a", "head_b"):
        model.add_classification_head(name, num_labels=2)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            if id(parameter) not in base:  # the adapters' and the fusion's (up-projections start at zero)
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    randomized(model, "head_a", "head_b")
    setup, heads = stack(fuse("a", "b"), "c"), head_block("head_a", "head_b", batch_sizes=[2, 1])
    model.set_active_adapters(setup)
    model.active_head = heads
    return setup, heads


def logits_of(model, inputs):
    with torch.no_grad():
        return torch.cat([out.logits for out in model(**inputs)])


def test_ours_saved_loads_in_adapterhub_and_adapterhubs_loads_in_ours(checkpoint, tmp_path):
    theirs, ours, inputs = adapterhub_model("bert", checkpoint, flex=True), ours_from("bert", checkpoint), inputs_for(
        "bert")
    our_setup, our_heads = with_setup(ours, Fuse, Stack, BatchSplit)
    ours.save_adapter_setup(tmp_path / "ours", our_setup, head_setup=our_heads, format="adapterhub")
    written = json.loads((tmp_path / "ours" / "adapter_setup.json").read_text())
    assert written["adapter_setup"]["type"] == "Stack" and written["head_setup"]["type"] == "BatchSplit"
    fresh_theirs = adapterhub_model("bert", checkpoint, flex=True)
    fresh_theirs.load_adapter_setup(str(tmp_path / "ours"), set_active=True)
    fresh_theirs.eval()
    assert_parity(logits_of(fresh_theirs, inputs), logits_of(ours, inputs))

    their_setup, their_heads = with_setup(theirs, ah.Fuse, ah.Stack, ah.BatchSplit)
    theirs.save_adapter_setup(str(tmp_path / "theirs"), their_setup, head_setup=their_heads)
    fresh = ours_from("bert", checkpoint)
    setup, heads = fresh.load_adapter_setup(tmp_path / "theirs", set_active=True)
    assert setup == Stack(Fuse("a", "b"), "c") and heads == BatchSplit("head_a", "head_b", batch_sizes=[2, 1])
    assert fresh.active_adapters == setup and fresh.active_head == heads
    theirs.eval()
    assert_parity(logits_of(fresh, inputs), logits_of(theirs, inputs))


def test_a_setup_directory_that_fails_midway_changes_nothing(checkpoint, tmp_path):
    ours = ours_from("bert", checkpoint)
    setup, heads = with_setup(ours, Fuse, Stack, BatchSplit)
    ours.save_adapter_setup(tmp_path, setup, head_setup=heads)
    (tmp_path / "a,b" / "fusion_config.json").unlink()
    fresh = ours_from("bert", checkpoint)
    before = {key: tensor.clone() for key, tensor in fresh.state_dict().items()}
    with pytest.raises(FileNotFoundError):
        fresh.load_adapter_setup(tmp_path)
    assert fresh.adapter_configs == {} and list(fresh.heads) == [] and fresh.state_dict().keys() == before.keys()
