"""LoKr (Edalati et al., 2022, KronA, https://arxiv.org/abs/2212.10650; LyCORIS): a Kronecker product as the weight
update of the linear sites, ΔW = W1 ⊗ W2, on LoRA's placement (lowrank.py).

Numerically equal to HF PEFT 0.21.2's ``peft.tuners.lokr.layer.Linear`` (its factorisation of the linear's sizes, its
choice of full or low-rank factors, forward, rank and module dropout, merge), whose files it reads and writes under
PEFT's tensor names (``lokr_w1``, ``lokr_w2_a`` ...); PEFT is the only reference: AdapterHub has no LoKr.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from peftcore.configs import check_type
from peftcore.methods.base import init_generator, register_method
from peftcore.methods.lowrank import Lycoris, LycorisConfig


@dataclass(frozen=True, kw_only=True)
class LoKrConfig(LycorisConfig):
    """HF PEFT's LoKrConfig for linears, field for field (lowrank.py's LycorisConfig), and: ``decompose_both`` (W1
    low-rank too where r is small enough), ``decompose_factor`` (the factor each size is split by; -1: near its
    square root), ``rank_dropout_scale`` (divide the rank-dropout mask by its mean) and ``init_weights="lycoris"``
    (LyCORIS's init: W2's factor starts at zero instead of W1's)."""

    architecture: ClassVar[str | None] = "lokr"
    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False

    inits: ClassVar[tuple[bool | str, ...]] = (True, False, "lycoris")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_type(name, "decompose_both", self.decompose_both, bool, "True or False")
        check_type(name, "rank_dropout_scale", self.rank_dropout_scale, bool, "True or False")
        check_type(name, "decompose_factor", self.decompose_factor, int, "-1 or a positive int")
        if self.decompose_factor == 0 or self.decompose_factor < -1:
            raise ValueError(f"{name}.decompose_factor must be -1 (near the square root) or a positive int, got "
                             f"{self.decompose_factor}.")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m · n = ``dimension`` and m ≤ n: m = ``factor`` where it divides the dimension, else the divisor
    pair with the smallest sum whose m stays at most ``factor`` (-1: no bound), as PEFT's ``lokr.layer.factorization``
    searches it."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    bound = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        candidate = next(d for d in range(m + 1, dimension + 1) if dimension % d == 0)
        if candidate + dimension // candidate > m + n or candidate > bound:
            break
        m, n = candidate, dimension // candidate
    return min(m, n), max(m, n)


class LoKr(Lycoris):
    """ΔW = W1 ⊗ W2 with out = a · b and in = c · d factorised (``factorization``): W1 (a, c), W2 (b, d). Each factor
    is low-rank, W = Wa Wb of rank r, where r is below half its larger side (W1 only with ``decompose_both``), else
    full. PEFT's init: W1 (or W1a) at zero, the rest Kaiming-uniform (a = √5); "lycoris": W2 (or W2b) at zero."""

    title = "LoKr"
    config_class = LoKrConfig
    peft_type = "LOKR"
    peft_names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
    peft_suffixes = tuple(f".{name}" for name in peft_names)

    def __init__(self, config: LoKrConfig, in_features: int, out_features: int) -> None:
        super().__init__(config, in_features)
        r = config.r
        a, b = factorization(out_features, config.decompose_factor)
        c, d = factorization(in_features, config.decompose_factor)
        generator = init_generator(config.init_weights_seed)
        if config.decompose_both and r < max(a, c) / 2:
            self.lokr_w1_a, self.lokr_w1_b = nn.Parameter(torch.empty(a, r)), nn.Parameter(torch.empty(r, c))
            w1: tuple[nn.Parameter, ...] = (self.lokr_w1_a, self.lokr_w1_b)
        else:
            self.lokr_w1 = nn.Parameter(torch.empty(a, c))
            w1 = (self.lokr_w1,)
        if r < max(b, d) / 2:
            self.lokr_w2_a, self.lokr_w2_b = nn.Parameter(torch.empty(b, r)), nn.Parameter(torch.empty(r, d))
            w2: tuple[nn.Parameter, ...] = (self.lokr_w2_a, self.lokr_w2_b)
        else:
            self.lokr_w2 = nn.Parameter(torch.empty(b, d))
            w2 = (self.lokr_w2,)
        with torch.no_grad():
            for factor in (*w1, *w2):
                nn.init.kaiming_uniform_(factor, a=math.sqrt(5), generator=generator)
            if config.init_weights == "lycoris":
                nn.init.zeros_(w2[-1])
            elif config.init_weights:
                nn.init.zeros_(w1[0])

    @property
    def rescales_rank_dropout(self) -> bool:
        return self.config.rank_dropout_scale

    def factors(self) -> tuple[Tensor, Tensor]:
        """W1 (a, c) and W2 (b, d)."""
        w1 = self.lokr_w1 if hasattr(self, "lokr_w1") else self.lokr_w1_a @ self.lokr_w1_b
        w2 = self.lokr_w2 if hasattr(self, "lokr_w2") else self.lokr_w2_a @ self.lokr_w2_b
        return w1, w2

    def delta_weight(self) -> Tensor:
        return torch.kron(*self.factors())  # (a b, c d) = (out, in)

    @classmethod
    def peft_fields(cls, config: LoKrConfig) -> dict[str, Any]:
        return {**super().peft_fields(config), "decompose_both": config.decompose_both,
                "decompose_factor": config.decompose_factor, "rank_dropout_scale": config.rank_dropout_scale}

    @classmethod
    def our_fields(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().our_fields(raw), "decompose_both": raw.get("decompose_both", False),
                "decompose_factor": raw.get("decompose_factor", -1),
                "rank_dropout_scale": raw.get("rank_dropout_scale", False)}

    @classmethod
    def features(cls, tensors: Mapping[str, Tensor]) -> tuple[int, int] | None:
        w1 = tensors.get("lokr_w1")
        if w1 is None and "lokr_w1_a" in tensors and "lokr_w1_b" in tensors:
            w1 = tensors["lokr_w1_a"] @ tensors["lokr_w1_b"]
        w2 = tensors.get("lokr_w2")
        if w2 is None and "lokr_w2_a" in tensors and "lokr_w2_b" in tensors:
            w2 = tensors["lokr_w2_a"] @ tensors["lokr_w2_b"]
        if w1 is None or w2 is None or w1.dim() != 2 or w2.dim() != 2:
            return None
        return w1.shape[1] * w2.shape[1], w1.shape[0] * w2.shape[0]

    @classmethod
    def scaled_factor(cls, tensors: Mapping[str, Tensor]) -> str:
        return "lokr_w1" if "lokr_w1" in tensors else "lokr_w1_a"


register_method(LoKr, {"lokr": LoKrConfig()})
