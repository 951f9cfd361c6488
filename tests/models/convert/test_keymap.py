"""The conversion engine on hand-made tables: indices, splits, aliases, and one error with every problem."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from peftcore.models.convert.keymap import (
    ConversionError,
    KeyMap,
    LayerNumbering,
    Split,
    hf_to_ours,
    ours_to_hf,
    to_template,
)

NO_HEAD = SimpleNamespace(head=None)


def halves(tensor, config):
    return tuple(tensor.chunk(2))


def join(tensors, config):
    return torch.cat(tensors)


TABLE = KeyMap(
    prefix="enc.",
    keys={
        "layer.{i}.w": "layers.{i}.w",
        "layer.{i}.fused": Split(("layers.{i}.a", "layers.{i}.b"), halves, join),
        "ln.weight": "norm.weight",
        "buffer": None,
    },
)
EXPECTED = {"layers.0.w": (2,), "layers.1.w": (2,), "layers.0.a": (1,), "layers.0.b": (1,), "layers.1.a": (1,),
            "layers.1.b": (1,), "norm.weight": (3,)}


def hf_state():
    return {"enc.layer.0.w": torch.zeros(2), "enc.layer.1.w": torch.ones(2),
            "enc.layer.0.fused": torch.tensor([1., 2.]), "enc.layer.1.fused": torch.tensor([3., 4.]),
            "enc.ln.gamma": torch.ones(3), "enc.buffer": torch.ones(1)}


def test_template_replaces_layer_indices():
    assert to_template("encoder.layer.11.attention.self.query.weight") == (
        "encoder.layer.{i}.attention.self.query.weight", ("11",))


def test_keys_are_renamed_split_aliased_and_dropped():
    state = hf_to_ours(TABLE, hf_state(), EXPECTED, set(), NO_HEAD, "Toy").state
    assert sorted(state) == sorted(EXPECTED)
    assert state["layers.1.a"].item() == 3 and state["layers.1.b"].item() == 4
    assert torch.equal(state["norm.weight"], torch.ones(3))  # 'gamma' read as 'weight'


def test_export_inverts_the_table_and_joins_splits():
    state = hf_to_ours(TABLE, hf_state(), EXPECTED, set(), NO_HEAD, "Toy").state
    exported = ours_to_hf(TABLE, state, NO_HEAD)
    assert torch.equal(exported["layer.1.fused"], torch.tensor([3., 4.]))
    assert set(exported) == {"layer.0.w", "layer.1.w", "layer.0.fused", "layer.1.fused", "ln.weight"}


def test_one_error_lists_every_unexpected_missing_and_mismatched_key():
    state = hf_state()
    state["enc.stray"] = torch.ones(1)
    del state["enc.layer.1.w"]
    state["enc.ln.gamma"] = torch.ones(4)
    with pytest.raises(ConversionError) as error:
        hf_to_ours(TABLE, state, EXPECTED, set(), NO_HEAD, "Toy")
    message = str(error.value)
    assert "Toy" in message and "stray" in message and "layers.1.w" in message and "(4,)" in message


def test_a_table_mapping_two_keys_to_one_fails_when_built():
    with pytest.raises(ValueError, match="maps both"):
        KeyMap(prefix="", keys={"a": "x", "b": "x"})


def test_keys_of_another_head_are_dropped_and_missing_head_keys_reported_fresh():
    table = KeyMap(prefix="", keys={"w": "w"}, heads={"one": {"h1": "head.h"}, "two": {"h2": "head.h"}})
    converted = hf_to_ours(table, {"w": torch.ones(1), "h1": torch.ones(1)}, {"w": (1,), "head.h": (1,)}, set(),
                           SimpleNamespace(head="two"), "Toy")
    assert converted.dropped == ["h1"] and converted.newly_initialized == ["head.h"]


def test_a_layer_numbered_by_group_and_position_maps_to_one_index_both_ways():
    """ALBERT's way: HF's group.{i}.layer.{j} is our layers.{i * per_group + j}."""
    numbering = LayerNumbering(lambda layer, config: divmod(layer, config.per_group),
                               lambda indices, config: indices[0] * config.per_group + indices[1])
    table = KeyMap(prefix="", keys={"group.{i}.layer.{j}.w": "layers.{i}.w", "ln.weight": "norm.weight"},
                   numbering=numbering)
    config = SimpleNamespace(head=None, per_group=2)
    hf = {f"group.{g}.layer.{j}.w": torch.tensor([2. * g + j]) for g in range(2) for j in range(2)}
    hf["ln.weight"] = torch.ones(1)
    expected = {**{f"layers.{i}.w": (1,) for i in range(4)}, "norm.weight": (1,)}
    state = hf_to_ours(table, hf, expected, set(), config, "Toy").state
    assert {key: t.item() for key, t in state.items() if key.startswith("layers")} == {
        "layers.0.w": 0, "layers.1.w": 1, "layers.2.w": 2, "layers.3.w": 3}
    assert ours_to_hf(table, state, config).keys() == hf.keys()
    assert table.hf_fields(3, config) == {"i": 1, "j": 1} and table.hf_fields(None, config) == {"i": None}
