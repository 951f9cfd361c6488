"""MTL-LoRA (Yang et al., 2024, https://arxiv.org/abs/2410.09437): LoRA for multi-task learning, on LoRA's linear
sites, gate and merge (lora.py). One adapter per task; the tasks share their down- and up-projections through
``share_parameters`` (peftcore/sharing.py) and each keeps its own task-specific matrix and up-projection weights; the
``MultiTask`` block with ``task_ids=`` runs each row of a batch through its task's adapter (peftcore/composition.py).

Numerically equal to AdapterHub's ``adapters.methods.lora.MTLLoRA`` (1.3.0), whose files it reads and writes under the
same tensor names: ``lora_A``, ``lora_B``, ``task_specific.values``, ``weights``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.configs import check_in, check_positive_number, check_type
from peftcore.methods.base import MultiTaskConfig, init_generator, register_method
from peftcore.methods.lora import LinearMethod, LoRAConfig
from peftcore.methods.lora_init import PEFT_INITS, is_base_changing
from peftcore.sites import SiteLinear


@dataclass(frozen=True, kw_only=True)
class MTLLoRAConfig(LoRAConfig, MultiTaskConfig):
    """AdapterHub's MTLLoRAConfig: LoRA's fields and ``n_up_projection`` up-projections B_1..B_n mixed by learned
    weights, ``task_specific_matrix_type`` for the task's r x r matrix between A and B ("singular_values": a
    diagonal, "linear": a full matrix), and ``weights_sharpness``, the temperature of the mixing softmax."""

    architecture: ClassVar[str | None] = "mtl_lora"
    n_up_projection: int = 1
    task_specific_matrix_type: str = "singular_values"
    weights_sharpness: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_type(name, "n_up_projection", self.n_up_projection, int, "a positive int")
        if self.n_up_projection < 1:
            raise ValueError(f"{name}.n_up_projection must be a positive int, got {self.n_up_projection}.")
        check_in(name, "task_specific_matrix_type", self.task_specific_matrix_type, ("singular_values", "linear"))
        check_positive_number(name, "weights_sharpness", self.weights_sharpness)
        if self.use_dora or self.is_vera:
            raise ValueError(f"{name} with use_dora={self.use_dora}, vera_d={self.vera_d}: MTL-LoRA has no DoRA or "
                             "VeRA form; leave use_dora False and vera_d, vera_b None.")
        if self.composition_mode != "add":
            raise ValueError(f"{name}.composition_mode={self.composition_mode!r}: MTL-LoRA adds its update; leave "
                             "composition_mode='add'.")
        used = [field for field, default in (("use_rslora", False), ("rank_pattern", {}), ("alpha_pattern", {}))
                if getattr(self, field) != default] + ["init_weights"] * (
            self.init_weights in PEFT_INITS or is_base_changing(self.init_weights))
        if used:
            raise ValueError(f"{name}: MTL-LoRA has one rank, alpha / r and AdapterHub's inits; leave {used} at "
                             "their defaults.")


class TaskSpecific(nn.Module):
    """The task's r x r matrix Λ between A and B: ``values`` is its diagonal (r,) or the whole matrix (r, r), ones
    at init (AdapterHub's TaskSpecificSingularValue / TaskSpecificLinear; its "linear" class never calls
    ``nn.Module.__init__`` and cannot be built, so AdapterHub has no "linear" adapters to read)."""

    def __init__(self, r: int, full: bool) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.ones((r, r) if full else (r,)))

    def forward(self, h: Tensor) -> Tensor:
        """h Λ for rows h (..., r)."""
        return h @ self.values if self.values.dim() == 2 else h * self.values

    def matrix(self) -> Tensor:
        return self.values if self.values.dim() == 2 else torch.diag(self.values)


class MTLLoRA(LinearMethod):
    """y = W x + b + s · Σ_i p_i (dropout(x) Aᵀ Λ B_iᵀ), with p = softmax(w / τ).

    A is (r, in), B is (n, out, r), Λ the task-specific matrix, w the (n,) mixing weights and τ
    ``weights_sharpness``; s = alpha / r, or the UniPELT gate when gated. The n up-projections enter linearly, so
    they are mixed before they are applied: one (out, r) matrix instead of AdapterHub's n products of the batch, the
    same sum. Merging folds s · B̄ Λᵀ A into the weight (one task's adapter: the update is linear in x).
    """

    title = "MTL-LoRA"
    config_class = MTLLoRAConfig
    composition_mode = "add"
    shareable = ("lora_A", "lora_B")  # AdapterHub's sharable_parameters: what share_parameters ties across tasks

    def __init__(self, config: MTLLoRAConfig, in_features: int, out_features: int) -> None:
        super().__init__(config, in_features)
        self.lora_A = nn.Parameter(torch.zeros(config.r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(config.n_up_projection, out_features, config.r))
        self.task_specific = TaskSpecific(config.r, full=config.task_specific_matrix_type == "linear")
        self.weights = nn.Parameter(torch.ones(config.n_up_projection))
        self.sharpness = config.weights_sharpness
        self.scaling = config.alpha / config.r
        self.dropout = nn.Dropout(config.dropout)
        generator = init_generator(config.init_weights_seed)
        with torch.no_grad():  # AdapterHub's: B starts at zero but for "bert"; "ia3" has A ones and B zero
            if config.init_weights in ("lora", "vera"):  # "vera": LoRA's kaiming A, and MTL-LoRA's zero B
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
            elif config.init_weights == "bert":
                nn.init.normal_(self.lora_A, std=0.02, generator=generator)
                nn.init.normal_(self.lora_B, std=0.02, generator=generator)
            else:
                nn.init.ones_(self.lora_A)

    def mixed_up_projection(self) -> Tensor:
        """Σ_i p_i B_i with p = softmax(w / τ): (out, r)."""
        p = torch.softmax(self.weights / self.sharpness, dim=0)
        return torch.einsum("n,nor->or", p, self.lora_B)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.task_specific(F.linear(self.dropout(x), self.lora_A))  # (B, T, R)
        delta = F.linear(h, self.mixed_up_projection())  # (B, T, out)
        if self.gate is not None:
            return y + delta * self.gate(x)
        return y.add(delta, alpha=self.scaling)

    def fold(self, linear: SiteLinear) -> None:
        linear.weight += self.scaling * (self.mixed_up_projection() @ self.task_specific.matrix().T @ self.lora_A)


register_method(MTLLoRA, {"mtl_lora": MTLLoRAConfig()})
