"""Invertible adapters (MAD-X, Pfeiffer et al., 2020, https://arxiv.org/abs/2005.00052): a coupling block on the
embedding output, run backwards before a masked-LM head's decoder so the output embeddings see the input space.

NICE (Dinh et al., 2014, https://arxiv.org/abs/1410.8516) equals AdapterHub's
``adapters.methods.modeling.NICECouplingBlock``. GLOW-style affine coupling (Kingma & Dhariwal, 2018,
https://arxiv.org/abs/1807.03039) is AdapterHub's ``GLOWCouplingBlock`` as designed: AdapterHub 1.3.0's forward
slices the sequence axis and crashes on any input, so ours is checked by its own invertibility instead.
Parameter names (F, G; s1, s2) are AdapterHub's, so its files load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from peftcore.configs import reduced_width
from peftcore.methods.activations import non_linearity
from peftcore.methods.base import Method, ModelShape, register_method
from peftcore.methods.bottleneck import BnConfig, DoubleSeqBnConfig, SeqBnConfig
from peftcore.sites import Site


@dataclass(frozen=True, kw_only=True)
class SeqBnInvConfig(SeqBnConfig):
    """SeqBn plus a NICE invertible adapter on the embeddings (MAD-X's language adapter)."""

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


@dataclass(frozen=True, kw_only=True)
class DoubleSeqBnInvConfig(DoubleSeqBnConfig):
    """DoubleSeqBn plus a NICE invertible adapter on the embeddings."""

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


PfeifferInvConfig, HoulsbyInvConfig = SeqBnInvConfig, DoubleSeqBnInvConfig


def subnet(width_in: int, width_out: int, config: BnConfig) -> nn.Sequential:
    """Linear(in, in // rf) -> act -> Linear(in // rf, out), with AdapterHub's BERT initialisation."""
    hidden = reduced_width(type(config).__name__, "inv_adapter_reduction_factor", width_in,
                           config.inv_adapter_reduction_factor)
    net = nn.Sequential(nn.Linear(width_in, hidden), non_linearity(config.non_linearity), nn.Linear(hidden, width_out))
    for linear in (net[0], net[2]):
        nn.init.normal_(linear.weight, std=0.02)
        nn.init.zeros_(linear.bias)
    return net


class Coupling(Method):
    """What both couplings share: their site and their halves of the hidden vector."""

    config_class = BnConfig
    kind: str
    adapterhub_container = None  # AdapterHub keeps them at invertible_adapters.{name}

    @classmethod
    def sites(cls, config: BnConfig, layer: int | None) -> tuple[str, ...]:
        return ("embeddings",) if layer is None and config.inv_adapter == cls.kind else ()

    @classmethod
    def build(cls, config: BnConfig, site: Site, shape: ModelShape, shared: nn.Module | None) -> Coupling:
        return cls(config, site.module.width or shape.hidden_size, site.layer)  # the width the site sees

    def __init__(self, config: BnConfig, width: int, layer: int | None = None) -> None:
        super().__init__()
        self.split = width // 2  # x1 = x[..., :split], x2 = x[..., split:]
        self.widths = (self.split, width - self.split)

    def forward(self, x: Tensor, rev: bool = False) -> Tensor:
        """The coupling, or with ``rev`` its inverse (AdapterHub's signature): the site calls both through
        ``__call__``, so hooks on the module see the inverse before a language-model head too."""
        return self.inverse(x) if rev else self.couple(x)


class NICECoupling(Coupling):
    """Additive coupling: y1 = x1 + F(x2); y2 = x2 + G(y1). Exactly invertible."""

    kind = "nice"

    def __init__(self, config: BnConfig, width: int, layer: int | None = None) -> None:
        super().__init__(config, width, layer)
        first, second = self.widths
        self.F = subnet(second, first, config)
        self.G = subnet(first, second, config)

    def couple(self, x: Tensor) -> Tensor:
        x1, x2 = x[..., :self.split], x[..., self.split:]
        y1 = x1 + self.F(x2)
        return torch.cat((y1, x2 + self.G(y1)), dim=-1)

    def inverse(self, y: Tensor) -> Tensor:
        y1, y2 = y[..., :self.split], y[..., self.split:]
        x2 = y2 - self.G(y1)
        return torch.cat((y1 - self.F(x2), x2), dim=-1)


class GLOWCoupling(Coupling):
    """Affine coupling: y1 = e(s2(x2)) ⊙ x1 + t2(x2); y2 = e(s1(y1)) ⊙ x2 + t1(y1), e(s) = exp(c · 0.636 · atan(s / c)).

    The soft clamp c = 5 bounds each scale to exp(±c), as in AdapterHub's (intended) block.
    """

    kind = "glow"
    clamp = 5.0

    def __init__(self, config: BnConfig, width: int, layer: int | None = None) -> None:
        super().__init__(config, width, layer)
        first, second = self.widths
        self.s1 = subnet(first, 2 * second, config)  # from y1: scale and shift of x2
        self.s2 = subnet(second, 2 * first, config)  # from x2: scale and shift of x1

    def scale(self, s: Tensor) -> Tensor:
        return torch.exp(self.clamp * 0.636 * torch.atan(s / self.clamp))

    def couple(self, x: Tensor) -> Tensor:
        first, second = self.widths
        x1, x2 = x[..., :first], x[..., first:]
        s2, t2 = self.s2(x2).split((first, first), dim=-1)
        y1 = self.scale(s2) * x1 + t2
        s1, t1 = self.s1(y1).split((second, second), dim=-1)
        return torch.cat((y1, self.scale(s1) * x2 + t1), dim=-1)

    def inverse(self, y: Tensor) -> Tensor:
        first, second = self.widths
        y1, y2 = y[..., :first], y[..., first:]
        s1, t1 = self.s1(y1).split((second, second), dim=-1)
        x2 = (y2 - t1) / self.scale(s1)
        s2, t2 = self.s2(x2).split((first, first), dim=-1)
        return torch.cat(((y1 - t2) / self.scale(s2), x2), dim=-1)


PRESETS = {"seq_bn_inv": SeqBnInvConfig(), "double_seq_bn_inv": DoubleSeqBnInvConfig()}
register_method(NICECoupling, {**PRESETS, "pfeiffer+inv": PRESETS["seq_bn_inv"],
                                "houlsby+inv": PRESETS["double_seq_bn_inv"]})
register_method(GLOWCoupling)
