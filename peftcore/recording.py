"""Gate values and fusion attentions of a forward, in AdapterHub's layout: ``{name: {layer: {location: array}}}``.

When an adapter or fusion is attached, each of its gates (gating.py) and fusion layers gets a ``record`` sink bound
to its name, layer and AdapterHub location. A sink keeps values only while ``collecting`` (a forward called with
``output_adapter_gating_scores`` / ``output_adapter_fusion_attentions``, which runs alone: see setup.py); at any
other time it returns at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np
from torch import Tensor

# AdapterHub's location keys, by site
LOCATION_KEYS = {"attn.residual": "mh_adapter", "ffn.residual": "output_adapter", "attn.q": "selfattn_lora",
                 "attn.k": "selfattn_lora", "attn.v": "selfattn_lora", "attn.out": "selfattn_lora",
                 "ffn.intermediate": "intermediate_lora", "ffn.output": "output_lora", "attn.prefix": "self_prefix"}

Records = dict[str, dict[int, dict[str, np.ndarray]]]


class Recorder:
    """Collects a forward's gate values and fusion attentions through the sinks it hands out."""

    def __init__(self) -> None:
        self.scores: Records | None = None  # gate values, while collecting them
        self.attentions: Records | None = None  # fusion attentions, while collecting them

    def gate_sink(self, adapter: str, layer: int, site: str) -> Callable[[Tensor], None]:
        return partial(self.store_gate, adapter, layer, LOCATION_KEYS[site])

    def fusion_sink(self, fusion: str, layer: int, site: str) -> Callable[[Tensor], None]:
        return partial(self.store_attention, fusion, layer, LOCATION_KEYS[site])

    def store_gate(self, adapter: str, layer: int, location: str, gate: Tensor) -> None:
        """A gate's (B, 1, 1|2) values as a (B,) or (B, 2) array; two gates at one location stack as columns."""
        if self.scores is None:
            return
        value = np.atleast_1d(gate.detach().squeeze().float().cpu().numpy())
        scores = self.scores.setdefault(adapter, {}).setdefault(layer, {})
        scores[location] = value if location not in scores else np.column_stack((scores[location], value))

    def store_attention(self, fusion: str, layer: int, location: str, probs: Tensor) -> None:
        """A fusion layer's attention probabilities (B, T, N) as an array."""
        if self.attentions is not None:
            layers = self.attentions.setdefault(fusion, {})
            layers.setdefault(layer, {})[location] = probs.detach().float().cpu().numpy()

    @property
    def keeps_padding(self) -> bool:
        """Fusion attentions are recorded per position (B, T, N): a forward that records them runs padded."""
        return self.attentions is not None

    @contextmanager
    def collecting(self, gates: bool, fusions: bool) -> Iterator[tuple[Records | None, Records | None]]:
        """Collect what is asked for during the block; yields the (gate scores, fusion attentions) dicts."""
        self.scores, self.attentions = ({} if gates else None), ({} if fusions else None)
        try:
            yield self.scores, self.attentions
        finally:
            self.scores = self.attentions = None
