"""The one conversion engine: a declarative key table per architecture, applied in either direction.

A table maps each HF key (with ``{i}`` standing for a layer index) to our key, to ``None`` (dropped on
purpose), or to a ``Split`` (one HF tensor that is several of ours). Conversion collects every problem —
keys nobody maps, keys the model lacks, shapes that differ — and raises once with all of them, before a
single tensor is written into the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from peftcore.io import problem_report


class ConversionError(ValueError):
    """A checkpoint does not fit the model it is being loaded into."""


@dataclass(frozen=True)
class Split:
    """One HF tensor that is several of ours, e.g. a fused q/k/v projection.

    ``split(tensor, config)`` returns one tensor per target; ``join(tensors, config)`` inverts it.
    """

    targets: tuple[str, ...]
    split: Callable[[Tensor, Any], tuple[Tensor, ...]]
    join: Callable[[tuple[Tensor, ...], Any], Tensor]


@dataclass(frozen=True)
class LayerNumbering:
    """How HF numbers layers where one layer of ours has several indices in HF's keys: ALBERT's
    ``albert_layer_groups.{i}.albert_layers.{j}`` is our ``layers.{i · inner_group_num + j}``.

    ``to_hf(layer, config)`` gives the HF indices (i, j, ...) of our layer; ``to_ours(indices, config)`` the reverse.
    """

    to_hf: Callable[[int, Any], tuple[int, ...]]
    to_ours: Callable[[tuple[int, ...], Any], int]


@dataclass(frozen=True, kw_only=True)
class KeyMap:
    """How one architecture's HF checkpoints name their tensors.

    Args:
        prefix: task checkpoints (``BertForMaskedLM``...) nest the base model under it (``"bert."``);
            head keys stay at the top level. It is stripped on load and added on export when there is a head.
        keys: the base model's table, HF key -> our key, ``Split`` or ``None`` (dropped: a buffer we recompute).
        heads: one table per task head (``"masked_lm"``...). A checkpoint's keys of another head than the
            model's are dropped, so a masked-LM checkpoint loads into a classifier with a fresh head.
        copies: HF keys that duplicate another HF key (weights tied by transformers); used only when the
            original is absent.
        leaf_aliases: old names of a key's last segment (TF-converted checkpoints' LayerNorm gamma/beta).
        init_if_missing: our key prefixes a checkpoint may lack; they keep their fresh initialisation (a new
            head, a pooler the checkpoint was saved without). Any other missing key is an error.
        numbering: how HF numbers the layers when its keys give one layer of ours several indices (ALBERT's groups);
            None: HF's ``{i}`` is our layer index.
    """

    prefix: str
    keys: Mapping[str, str | Split | None]
    heads: Mapping[str, Mapping[str, str | Split | None]] = field(default_factory=dict)
    copies: Mapping[str, str] = field(default_factory=dict)
    leaf_aliases: Mapping[str, str] = field(default_factory=lambda: {"gamma": "weight", "beta": "bias"})
    init_if_missing: tuple[str, ...] = ("pooler.", "head.")
    numbering: LayerNumbering | None = None

    def __post_init__(self) -> None:
        for head in (None, *self.heads):  # a table that maps two HF keys to one of ours fails at import
            self.inverse(head)

    def table(self, head: str | None) -> dict[str, str | Split | None]:
        """The base table plus the table of ``head``."""
        return {**self.keys, **(self.heads[head] if head else {})}

    def hf_fields(self, layer: int | None, config: Any) -> dict[str, int | None]:
        """The ``{i}`` (and ``{j}``) of HF templates for our ``layer`` (None: a template without indices)."""
        if layer is None or self.numbering is None:
            return {"i": layer}
        return dict(zip(("i", "j"), self.numbering.to_hf(layer, config), strict=False))

    def our_indices(self, indices: tuple[str, ...], config: Any) -> tuple[str, ...]:
        """The indices of our key for an HF key's ``indices``."""
        if not indices or self.numbering is None:
            return indices
        return (str(self.numbering.to_ours(tuple(map(int, indices)), config)),)

    def hf_indices(self, indices: tuple[str, ...], config: Any) -> tuple[str, ...]:
        """The indices of the HF key for our key's ``indices``."""
        if not indices or self.numbering is None:
            return indices
        return tuple(map(str, self.numbering.to_hf(int(indices[0]), config)))

    def inverse(self, head: str | None) -> dict[str, str]:
        """Our key template -> HF key template, for a model with ``head``."""
        ours: dict[str, str] = {}
        for hf_key, target in self.table(head).items():
            for our_key in target.targets if isinstance(target, Split) else (target,) if target else ():
                if our_key in ours:
                    raise ValueError(f"key table maps both {ours[our_key]!r} and {hf_key!r} to {our_key!r}.")
                ours[our_key] = hf_key
        return ours


@dataclass
class Converted:
    """Our state dict, plus what the checkpoint lacked (kept fresh) and what it had that the model does not use."""

    state: dict[str, Tensor]
    newly_initialized: list[str]
    dropped: list[str]


INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")


def to_template(key: str) -> tuple[str, tuple[str, ...]]:
    """'encoder.layer.3.attention' -> ('encoder.layer.{i}.attention', ('3',)); a second index becomes {j}."""
    indices = tuple(INDEX.findall(key))
    if len(indices) > 2:
        return key, ()
    names = iter(("{i}", "{j}"))
    return INDEX.sub(lambda _: next(names), key), indices


def fill(template: str, indices: tuple[str, ...]) -> str:
    return template.format(**dict(zip(("i", "j"), indices, strict=False)))


def hf_to_ours(keymap: KeyMap, hf_state: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]],
               aliases: set[str], config: Any, architecture: str) -> Converted:
    """Rename an HF state dict into ours, checking it against ``expected`` (our key -> shape).

    ``config.head`` picks the head table; keys of the other heads' tables are dropped. ``aliases`` are our
    keys that share a parameter with another key (tied weights): a checkpoint's copy of one is dropped.
    Raises ConversionError listing every unexpected key, missing key and shape mismatch.
    """
    renamed = {strip_prefix(key, keymap.prefix): tensor for key, tensor in hf_state.items()}
    for copy, original in keymap.copies.items():
        if copy in renamed and original not in renamed:
            renamed[original] = renamed.pop(copy)
        renamed.pop(copy, None)

    table = keymap.table(config.head)
    other_heads = {key for head, keys in keymap.heads.items() if head != config.head for key in keys}
    state: dict[str, Tensor] = {}
    unexpected, dropped = [], []
    for key, tensor in renamed.items():
        template, indices = to_template(apply_leaf_alias(key, keymap.leaf_aliases))
        if template not in table:
            (dropped if template in other_heads else unexpected).append(key)
            continue
        target = table[template]
        if target is None:
            continue
        indices = keymap.our_indices(indices, config)
        if isinstance(target, Split):
            pieces = dict(zip((fill(t, indices) for t in target.targets), target.split(tensor, config), strict=True))
        else:
            pieces = {fill(target, indices): tensor}
        for our_key, piece in pieces.items():
            if our_key in expected:
                state[our_key] = piece
            elif our_key in aliases or our_key.startswith(keymap.init_if_missing):
                dropped.append(key)
            else:
                unexpected.append(key)

    missing = [key for key in expected if key not in state]
    newly_initialized = [key for key in missing if key.startswith(keymap.init_if_missing)]
    check_fit(state, expected, architecture, unexpected,
              [key for key in missing if not key.startswith(keymap.init_if_missing)])
    return Converted(state, newly_initialized, sorted(set(dropped)))


def ours_to_hf(keymap: KeyMap, state: Mapping[str, Tensor], config: Any) -> dict[str, Tensor]:
    """Rename our state dict into HF's layout (the table read backwards); base keys are prefixed when there is
    a head, as transformers' task models nest them."""
    inverse, table = keymap.inverse(config.head), keymap.table(config.head)
    hf_state: dict[str, Tensor] = {}
    joined: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        template, indices = to_template(key)
        if template not in inverse:
            raise ConversionError(f"our key {key!r} has no HF name in the key table; the table is incomplete.")
        hf_key = fill(inverse[template], keymap.hf_indices(indices, config))
        target = table[inverse[template]]
        if config.head and inverse[template] in keymap.keys:
            hf_key = keymap.prefix + hf_key
        if isinstance(target, Split):
            joined.setdefault(hf_key, {})[template] = tensor
            if len(joined[hf_key]) == len(target.targets):
                parts = joined.pop(hf_key)
                hf_state[hf_key] = target.join(tuple(parts[t] for t in target.targets), config)
        else:
            hf_state[hf_key] = tensor
    if joined:
        raise ConversionError(f"fused HF tensors {sorted(joined)} are missing some of their parts.")
    return hf_state


def strip_prefix(key: str, prefix: str) -> str:
    return key[len(prefix):] if prefix and key.startswith(prefix) else key


def apply_leaf_alias(key: str, aliases: Mapping[str, str]) -> str:
    head, _, leaf = key.rpartition(".")
    return f"{head}.{aliases[leaf]}" if head and leaf in aliases else key


def check_fit(state: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], architecture: str,
              unexpected: Sequence[str], missing: Sequence[str]) -> None:
    """Raise one ConversionError listing every problem: the ``unexpected`` and ``missing`` keys, and the tensors of
    ``state`` whose shape differs from ``expected`` (our key -> shape) or that are not floating point."""
    common = sorted(set(state) & set(expected))
    mismatched = [f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(expected[key])}" for key in common
                  if tuple(state[key].shape) != tuple(expected[key])]
    wrong_dtype = [f"{key}: {state[key].dtype}" for key in common if not state[key].is_floating_point()]
    if unexpected or missing or mismatched or wrong_dtype:
        raise ConversionError(problem_report(
            f"the checkpoint does not fit a {architecture} model:",
            [("unexpected keys (no entry in the key table)", unexpected),
             ("missing keys (the model needs them)", missing),
             ("shape mismatches", mismatched),
             ("tensors that are not floating point (every weight is)", wrong_dtype)],
            "Check that config.json's model_type matches the weights, and that the file is complete."))
