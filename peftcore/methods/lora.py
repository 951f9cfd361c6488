"""LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685) and (IA)^3 (Liu et al., 2022,
https://arxiv.org/abs/2205.05638) on the linear sites: ``attn.{q,k,v}``, ``ffn.intermediate``, ``ffn.output``.

Numerically equal to AdapterHub's ``adapters.methods.lora.LoRA`` / ``IA3`` inside ``LoRALinear`` (and to HF
PEFT's LoRA). Both merge into the linear they adapt for zero-overhead inference and reset exactly: merging keeps
a copy of the original weight and bias, so reset restores them bit for bit after any number of cycles.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.configs import LoRAConfig
from peftcore.sites import Method, ModelShape, Site, SiteLinear, init_generator


def linear_sites(config: LoRAConfig, layer: int | None) -> tuple[str, ...]:
    """selfattn_lora + attn_matrices -> attn.{q,k,v}; intermediate_lora -> ffn.intermediate;
    output_lora -> ffn.output; leave_out skips layers."""
    if layer is None or layer in config.leave_out:
        return ()
    attention = tuple(f"attn.{matrix}" for matrix in config.attn_matrices) if config.selfattn_lora else ()
    return attention + ("ffn.intermediate",) * config.intermediate_lora + ("ffn.output",) * config.output_lora


class LinearMethod(Method):
    """What LoRA and (IA)^3 share: their sites, the optional UniPELT gate, and merge/reset on a SiteLinear."""

    config_class = LoRAConfig
    composition_mode: str

    @classmethod
    def sites(cls, config: LoRAConfig, layer: int | None) -> tuple[str, ...]:
        return linear_sites(config, layer) if config.composition_mode == cls.composition_mode else ()

    @classmethod
    def build(cls, config: LoRAConfig, site: Site, shape: ModelShape, shared: nn.Module | None) -> LinearMethod:
        return cls(config, site.module.in_features, site.module.out_features)

    def __init__(self, config: LoRAConfig, in_features: int) -> None:
        super().__init__()
        self.config = config
        self.gate = nn.Linear(in_features, 1) if config.use_gating else None
        self.original: tuple[Tensor, Tensor | None] | None = None  # the linear's weights while merged
        if self.gate is not None:  # AdapterHub: N(0, 0.02) weight, PyTorch's default bias
            nn.init.normal_(self.gate.weight, std=0.02, generator=init_generator(config.init_weights_seed))

    def gate_value(self, x: Tensor) -> Tensor:
        """UniPELT's gate mean_T(sigmoid(W_g x + b_g)), one value per example: (B, 1, 1)."""
        gate = torch.sigmoid(self.gate(x)).mean(dim=1, keepdim=True)
        if self.record is not None:
            self.record(gate)
        return gate

    @property
    def is_merged(self) -> bool:
        return self.original is not None

    def merge_into(self, linear: SiteLinear) -> None:
        """Fold this adapter into ``linear``'s weight (and bias), keeping the originals for ``unmerge_from``."""
        if self.gate is not None:
            raise ValueError("a gated adapter depends on its input and cannot be merged into a weight.")
        if self.is_merged:
            raise ValueError("this adapter is merged already; reset it before merging again.")
        with torch.no_grad():
            self.original = (linear.weight.detach().clone(),
                             None if linear.bias is None else linear.bias.detach().clone())
            self.fold(linear)

    def unmerge_from(self, linear: SiteLinear) -> None:
        """Restore ``linear``'s weights exactly as they were before ``merge_into``."""
        if not self.is_merged:
            raise ValueError("this adapter is not merged; there is nothing to reset.")
        weight, bias = self.original
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        self.original = None

    def fold(self, linear: SiteLinear) -> None:
        raise NotImplementedError


class LoRA(LinearMethod):
    """y = W x + b + s · B A dropout(x), with s = alpha / r, or s = gate(x) when gated (AdapterHub ignores alpha then).

    A is (r, in) and B is (out, r); the "lora" init (Kaiming-uniform A, zero B) starts as the identity.
    """

    composition_mode = "add"

    def __init__(self, config: LoRAConfig, in_features: int, out_features: int) -> None:
        super().__init__(config, in_features)
        self.lora_A = nn.Parameter(torch.zeros(config.r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, config.r))
        self.scaling = config.alpha / config.r
        self.dropout = nn.Dropout(config.dropout)
        generator = init_generator(config.init_weights_seed)
        with torch.no_grad():
            if config.init_weights == "lora":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
            elif config.init_weights == "bert":
                nn.init.normal_(self.lora_A, std=0.02, generator=generator)
                nn.init.normal_(self.lora_B, std=0.02, generator=generator)
            else:  # "ia3": ones, as AdapterHub allows
                nn.init.ones_(self.lora_A)
                nn.init.ones_(self.lora_B)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        delta = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (B, T, R) -> (B, T, out)
        if self.gate is not None:
            return y + delta * self.gate_value(x)
        return y.add(delta, alpha=self.scaling)  # one fused pass, no scaled copy of delta

    def fold(self, linear: SiteLinear) -> None:
        linear.weight += self.scaling * (self.lora_B @ self.lora_A)


class IA3(LinearMethod):
    """y = (W x + b) ⊙ (alpha · l), or ⊙ (gate(x) · l) when gated: a learned vector l rescales the output.

    Merging scales the weight's rows and the bias; AdapterHub 1.3.0 forgets the bias (its merge is wrong whenever
    b ≠ 0, as in every BERT linear) — ours equals the unmerged forward.
    """

    composition_mode = "scale"

    def __init__(self, config: LoRAConfig, in_features: int, out_features: int) -> None:
        super().__init__(config, in_features)
        self.lora_B = nn.Parameter(torch.ones(out_features, 1))  # AdapterHub's name for the vector l
        self.scaling = config.alpha
        with torch.no_grad():
            if config.init_weights == "lora":
                nn.init.zeros_(self.lora_B)
            elif config.init_weights == "bert":
                nn.init.normal_(self.lora_B, std=0.02, generator=init_generator(config.init_weights_seed))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        scale = self.lora_B.view(-1)  # (out,)
        return y * (scale * self.gate_value(x) if self.gate is not None else scale * self.scaling)

    def fold(self, linear: SiteLinear) -> None:
        factor = self.scaling * self.lora_B.view(-1)
        linear.weight *= factor[:, None]
        if linear.bias is not None:
            linear.bias *= factor
