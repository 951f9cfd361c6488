"""DoRA (Liu et al., 2024, https://arxiv.org/abs/2402.09353): a linear's weight split into a trainable magnitude m
(one per output row, starting at the row norms of W) and a direction W + s·ΔW whose update is LoRA's (``DoRA``) or
VeRA's (``DVoRA``, vera.py), so the adapted linear computes m ⊙ (W + s·ΔW) / ‖W + s·ΔW‖_row.

Two libraries define its forward differently, and each one's files must give its own outputs, so the config names
which (``dora_variant``):

- "adapterhub" (the default, AdapterHub 1.3.0): y = m / ‖W + ΔW‖_row ⊙ (W x + b + s·ΔW x). The norm takes the
  *unscaled* ΔW, gradients flow through it, and the bias is rescaled with the rest.
- "peft" (HuggingFace PEFT, what its ``use_dora=True`` LoRA files load as): y = m / ‖W + s·ΔW‖_row ⊙ (W x + s·ΔW x) + b,
  the norm detached from the graph as the paper's section 4.3 suggests, the bias left out of the rescaling.

The two agree when s = 1 and the linear has no bias. Merging folds the forward into the weight (and, for
"adapterhub", the bias) exactly; reset restores the copies kept at merge bit for bit. AdapterHub's own merge leaves
out s and the bias (merge ≠ forward when alpha ≠ r or b ≠ 0) and its reset never writes the weight back.
The module keeps a reference to its linear (``self.linear``, not a submodule): the norm needs the current W.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.methods.base import Method, ModelShape, PeftFile, linear_average, register_method
from peftcore.methods.lora import (
    LoRA,
    LoRAConfig,
    LowRankUpdate,
    check_peft_options,
    lora_from_peft,
    lora_to_peft,
    refuse_gated_peft,
)
from peftcore.methods.vera import Vera
from peftcore.sites import Site, SiteLinear


@dataclass(frozen=True, kw_only=True)
class DoRAConfig(LoRAConfig):
    """DoRA as AdapterHub 1.3.0 configures it: LoRA's defaults with ``use_dora=True``."""

    use_dora: bool = True


@dataclass(frozen=True, kw_only=True)
class DvoRAConfig(LoRAConfig):
    """DVoRA as AdapterHub 1.3.0 configures it: VeRA's defaults (vera.py) with ``use_dora=True``."""

    vera_d: float | None = 0.1
    vera_b: float | None = 0.0
    init_weights: str = "vera"
    use_dora: bool = True


class Decomposition(LowRankUpdate):
    """The magnitude and the rescaled forward, over the low-rank update of the class it is mixed before."""

    average_strategies = ("linear",)  # AdapterHub's other two strategies fail on the magnitude
    weighted_strategies = ()  # the magnitude renormalises W + ΔW: no weighted sum of updates holds it
    loraplus_b = ("lora_B", "m")  # PEFT's LoRA+ puts its 1-D magnitude with B

    def average_from(self, sources: Sequence[Method], weights: Sequence[float], strategy: str) -> None:
        """Every tensor, the magnitude included, by its weight (AdapterHub's linear averaging)."""
        linear_average(self, sources, weights)

    @classmethod
    def build(cls, config: LoRAConfig, site: Site, shape: ModelShape, shared: nn.Module | None) -> Decomposition:
        module = super().build(config, site, shape, shared)
        module.decompose(site.module)
        return module

    def decompose(self, linear: SiteLinear) -> None:
        """Start the magnitude at the row norms of ``linear``'s weight and keep a reference to it."""
        object.__setattr__(self, "linear", linear)
        self.m = nn.Parameter(torch.empty(linear.out_features, 1))  # (out, 1), AdapterHub's nn.Linear(1, out) weight
        with torch.no_grad():
            self.m.copy_(torch.linalg.norm(linear.weight, dim=1, keepdim=True))

    def ratio(self, weight: Tensor) -> Tensor:
        """m / ‖W + ΔW‖_row (out, 1) for the config's variant (see the module docstring)."""
        if self.config.dora_variant == "adapterhub":
            return self.m / torch.linalg.norm(weight + self.delta_weight(), dim=1, keepdim=True)
        with torch.no_grad():
            norm = torch.linalg.norm(weight + self.scaling * self.delta_weight(), dim=1, keepdim=True)
        return self.m / norm

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        ratio = self.ratio(weight).view(-1)  # (out,)
        dropped = self.dropout(x)
        delta = self.update(dropped)
        if self.config.dora_variant == "adapterhub":
            return ratio * (y + delta * (self.gate(x) if self.gate is not None else self.scaling))
        # PEFT: y + (ratio - 1) ⊙ W x + ratio ⊙ s·ΔW x; in training with dropout it takes W of the dropped x
        base = F.linear(dropped, weight) if self.training and self.dropout.p else y if bias is None else y - bias
        return y + (ratio - 1) * base + ratio * self.scaling * delta

    def fold(self, linear: SiteLinear) -> None:
        ratio = self.ratio(linear.weight)
        linear.weight.copy_(ratio * (linear.weight + self.scaling * self.delta_weight()))
        if self.config.dora_variant == "adapterhub" and linear.bias is not None:
            linear.bias.mul_(ratio.view(-1))

    @classmethod
    def adapterhub_names(cls, config: LoRAConfig, key: str) -> tuple[str, ...]:
        return ("m.weight",) if key == "m" else super().adapterhub_names(config, key)

    @classmethod
    def to_peft(cls, config: LoRAConfig, placed: Mapping[str, Mapping[str, Method]], modules: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        raise ValueError(f"{cls.title} adapters have no HuggingFace PEFT equivalent; save with format='peftcore' or "
                         "'adapterhub'.")


class DoRA(Decomposition, LoRA):
    """DoRA over LoRA's ΔW = B A."""

    peft_suffixes = (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector")

    @classmethod
    def serves(cls, config: LoRAConfig) -> bool:
        return config.use_dora and not config.is_vera

    @classmethod
    def reads_peft(cls, raw: Mapping[str, Any]) -> bool:
        return raw.get("peft_type") == "LORA" and bool(raw.get("use_dora"))

    @classmethod
    def from_peft(cls, file: PeftFile) -> tuple[LoRAConfig, dict[str, Tensor]]:
        """PEFT's LoRA A and B and its ``lora_magnitude_vector`` as our m, with ``dora_variant="peft"``."""
        check_peft_options(file, allowed=("use_dora",))
        refuse_fused(file.targeted)
        config, state = lora_from_peft(file, DoRAConfig, dora_variant="peft")
        for path, module in file.targeted.items():
            magnitude = file.tensors.get(f"{path}.lora_magnitude_vector")
            if magnitude is None or magnitude.dim() != 1:
                raise ValueError(f"{file.where}: {path} needs lora_magnitude_vector (out,), got "
                                 f"{None if magnitude is None else tuple(magnitude.shape)}.")
            state[file.key(module.layer, module.sites[0], "m")] = magnitude[:, None]
        return config, state

    @classmethod
    def to_peft(cls, config: LoRAConfig, placed: Mapping[str, Mapping[str, Method]], modules: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        refuse_gated_peft(config)
        if config.dora_variant != "peft":
            raise ValueError("it runs AdapterHub's DoRA (dora_variant='adapterhub': the norm of the unscaled update, "
                             "the bias rescaled), which PEFT's DoRA computes otherwise; add it with "
                             "dora_variant='peft' to save it for PEFT.")
        refuse_fused(modules, placed)
        raw, state = lora_to_peft(config, placed, modules)
        for path, ours in placed.items():
            (dora,) = ours.values()
            state[f"{path}.lora_magnitude_vector"] = dora.m.detach().view(-1)
        return {**raw, "use_dora": True}, state


def refuse_fused(modules: Mapping[str, Any], paths: Mapping[str, Any] | None = None) -> None:
    """DoRA on a fused q/k/v projection (DeBERTa's in_proj, ModernBERT's Wqkv): PEFT's decomposition is the fused
    module's, ours each site's; DeBERTa's differs (its q_bias and v_bias come after), ModernBERT's is not converted."""
    fused = sorted(path for path in (modules if paths is None else paths) if modules[path].split)
    if fused:
        raise ValueError(f"DoRA on the fused {fused[0]} is not converted: PEFT decomposes the fused projection as one "
                         "module, peftcore each of attn.q/k/v (on DeBERTa, PEFT rescales before q_bias and v_bias, so "
                         "the two differ); use LoRA there, or peftcore's own format.")


class DVoRA(Decomposition, Vera):
    """DoRA over VeRA's ΔW = diag(b) B diag(d) A (AdapterHub's DvoRAConfig); PEFT has no such method."""

    title = "DVoRA"
    peft_type = None

    @classmethod
    def serves(cls, config: LoRAConfig) -> bool:
        return config.use_dora and config.is_vera


register_method(DoRA, {"dora": DoRAConfig()})
register_method(DVoRA, {"dvora": DvoRAConfig()})
