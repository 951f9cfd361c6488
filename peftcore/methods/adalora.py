"""AdaLoRA (Zhang et al., 2023, https://arxiv.org/abs/2303.10512): LoRA in SVD form, ΔW = P Λ Q, on LoRA's linear
sites (lowrank.py), whose rank budget is shared out over training by importance (adalora_allocator.py).

Numerically equal to HF PEFT 0.21.2's ``peft.tuners.adalora.layer.SVDLinear`` and its ``RankAllocator``: the same
forward, orthogonality regulariser, importance scores, budget schedule and masks, driven from our Trainer
(peftcore/training.py) by the method's training callback. Its files read and write both ways: PEFT prunes the masked
triplets and states the ranks left in ``rank_pattern``; ours keeps every triplet and the mask (``rank_mask``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from peftcore.configs import check_in, check_positive_number, check_probability, check_type
from peftcore.methods.adalora_allocator import RankAllocator
from peftcore.methods.base import Method, PeftFile, TrainingCallback, init_generator, register_method
from peftcore.methods.lora_peft import LORA_DEFAULTS, check_peft_options, config_for_sites
from peftcore.methods.lowrank import LinearSitesConfig, LinearSitesMethod, check_rank
from peftcore.sites import SiteLinear


@dataclass(frozen=True, kw_only=True)
class AdaLoraConfig(LinearSitesConfig):
    """HF PEFT's AdaLoraConfig, on LoRA's placement and field names (PEFT's ``lora_alpha`` is ``alpha``, its
    ``lora_dropout`` ``dropout``, its ``init_lora_weights`` ``init_weights``).

    Each site starts with ``init_r`` triplets; the budget, ``init_r`` per site for the first ``tinit`` steps, falls
    as a cubic to ``target_r`` per site at step ``total_step - tfinal``, and is re-allocated every ``deltaT`` steps
    to the triplets of highest importance (sensitivity |p · ∂L/∂p| smoothed by ``beta1``, times its uncertainty
    smoothed by ``beta2``), the others' singular values set to zero; the last ``tfinal`` steps train with the final
    ranks. ``orth_reg_weight`` weighs the orthogonality regulariser added to the loss. ``total_step`` None: the
    Trainer's number of steps (PEFT requires it; saving for PEFT needs it set).
    """

    architecture: ClassVar[str | None] = "adalora"
    init_r: int = 12
    target_r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None
    init_weights: bool = True
    init_weights_seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_rank(name, "init_r", self.init_r)
        check_rank(name, "target_r", self.target_r)
        if self.target_r > self.init_r:
            raise ValueError(f"{name}.target_r={self.target_r} exceeds init_r={self.init_r}; the budget only falls.")
        check_positive_number(name, "alpha", self.alpha)  # PEFT scales by the rank instead at alpha <= 0
        check_probability(name, "dropout", self.dropout)
        for field in ("tinit", "tfinal"):
            check_type(name, field, getattr(self, field), int, "a non-negative int")
            if getattr(self, field) < 0:
                raise ValueError(f"{name}.{field} must be a non-negative int, got {getattr(self, field)}.")
        check_rank(name, "deltaT", self.deltaT)
        for field in ("beta1", "beta2"):
            check_probability(name, field, getattr(self, field))
            if getattr(self, field) == 0:
                raise ValueError(f"{name}.{field} must lie in (0, 1), got 0.")
        check_type(name, "orth_reg_weight", self.orth_reg_weight, (int, float), "a non-negative number")
        if self.orth_reg_weight < 0:
            raise ValueError(f"{name}.orth_reg_weight must be >= 0, got {self.orth_reg_weight}.")
        if self.total_step is not None:
            check_rank(name, "total_step", self.total_step)
            self.check_schedule(self.total_step)
        check_in(name, "init_weights", self.init_weights, (True, False))
        check_type(name, "init_weights", self.init_weights, bool, "True or False")

    def check_schedule(self, total_step: int) -> None:
        """PEFT's condition: a budgeting phase between the first ``tinit`` and the last ``tfinal`` of
        ``total_step`` steps."""
        if self.tinit >= total_step - self.tfinal:
            raise ValueError(f"AdaLoRA over {total_step} steps with tinit={self.tinit} and tfinal={self.tfinal} leaves "
                             "no step to allocate ranks in; lower tinit or tfinal, or train longer.")


class AdaLoRA(LinearSitesMethod):
    """y = W x + b + (dropout(x) (A ⊙ E)ᵀ Bᵀ) · alpha / (init_r + 1e-5): A (r, in) and B (out, r) the singular
    vectors, E (r, 1) the singular values, r = ``init_r``. PEFT's init: E zero, A and B N(0, 0.02) (``init_weights``
    False: all N(0, 1)). ``rank_mask`` (r,) says which triplets the last allocation kept."""

    title = "AdaLoRA"
    config_class = AdaLoraConfig
    peft_type = "ADALORA"
    peft_suffixes = (".lora_A", ".lora_E", ".lora_B")

    def __init__(self, config: AdaLoraConfig, in_features: int, out_features: int) -> None:
        super().__init__(config, in_features)
        r = config.init_r
        self.dropout = nn.Dropout(config.dropout)
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_E = nn.Parameter(torch.empty(r, 1))
        self.lora_B = nn.Parameter(torch.empty(out_features, r))
        self.register_buffer("rank_mask", torch.ones(r, dtype=torch.bool))
        self.scaling = config.alpha
        self.register_buffer("ranknum", torch.tensor([float(r)]), persistent=False)  # PEFT's: it divides by it + 1e-5
        generator = init_generator(config.init_weights_seed)
        with torch.no_grad():
            for factor in (self.lora_A, self.lora_E, self.lora_B):
                factor.normal_(generator=generator)
            if config.init_weights:
                self.lora_E.zero_()
                self.lora_A.normal_(0.0, 0.02, generator=generator)
                self.lora_B.normal_(0.0, 0.02, generator=generator)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        delta = self.dropout(x) @ (self.lora_A * self.lora_E).T @ self.lora_B.T  # (B, T, R) -> (B, T, out)
        return y + delta * self.scaling / (self.ranknum + 1e-5)

    def fold(self, linear: SiteLinear) -> None:
        linear.weight += self.lora_B @ (self.lora_A * self.lora_E) * self.scaling / (self.ranknum + 1e-5)

    def apply_mask(self) -> None:
        """Zero the singular values of the triplets ``rank_mask`` drops."""
        with torch.no_grad():
            self.lora_E.masked_fill_(~self.rank_mask[:, None], 0.0)

    @classmethod
    def training_callback(cls, config: AdaLoraConfig, modules: Sequence[Method], total_steps: int
                          ) -> TrainingCallback | None:
        total = config.total_step or total_steps
        config.check_schedule(total)
        return RankAllocator(config, modules, total)

    # ---- averaging: PEFT's add_weighted_adapter refuses AdaLoRA too ----------------------------------------------

    @classmethod
    def averaged_config(cls, config: AdaLoraConfig, strategy: str, svd_rank: int | None) -> AdaLoraConfig:
        raise ValueError("AdaLoRA adapters are not averaged: their triplets are ranked per adapter, and a sum would "
                         "mix singular vectors of different bases (PEFT's add_weighted_adapter refuses them too).")

    # ---- HuggingFace PEFT's files ----------------------------------------------------------------------------------

    @classmethod
    def from_peft(cls, file: PeftFile) -> tuple[AdaLoraConfig, dict[str, Tensor]]:
        """PEFT's (pruned) triplets back in their places among ``init_r``, the pruned ones zero and masked."""
        check_peft_options(file)
        raw = file.raw
        fused = sorted(path for path, module in file.targeted.items() if module.split)
        if fused:
            raise ValueError(f"{file.where}: AdaLoRA on DeBERTa's fused {fused[0]}: its triplets cover q, k and v "
                             "together, which peftcore's per-site modules cannot hold exactly.")
        fields = {key: raw[peft_key] for key, peft_key in PEFT_NAMES.items() if raw.get(peft_key) is not None}
        config = config_for_sites(file, AdaLoraConfig, **fields)
        r, pattern = config.init_r, raw.get("rank_pattern") or {}
        state = {}
        for path, module in file.targeted.items():
            kept = pattern.get(f"{path}.lora_E", [True] * r)
            A, E, B = (file.tensors.get(f"{path}.{name}") for name in ("lora_A", "lora_E", "lora_B"))
            k = sum(bool(keep) for keep in kept)
            if (len(kept) != r or A is None or E is None or B is None or A.dim() != 2 or A.shape[0] != k
                    or E.shape != (k, 1) or B.dim() != 2 or B.shape[1] != k):
                raise ValueError(f"{file.where}: {path} needs lora_A (k, in), lora_E (k, 1) and lora_B (out, k) with "
                                 f"k = {k} of init_r = {r} kept by rank_pattern ({len(kept)} entries), got "
                                 f"{[None if t is None else tuple(t.shape) for t in (A, E, B)]}.")
            mask = torch.tensor([bool(keep) for keep in kept])
            full = {"lora_A": A.new_zeros(r, A.shape[1]), "lora_E": E.new_zeros(r, 1),
                    "lora_B": B.new_zeros(B.shape[0], r)}
            full["lora_A"][mask], full["lora_E"][mask], full["lora_B"][:, mask] = A, E, B
            for name, tensor in {**full, "rank_mask": mask}.items():
                state[file.key(module.layer, module.sites[0], name)] = tensor
        return config, state

    @classmethod
    def to_peft(cls, config: AdaLoraConfig, placed: Mapping[str, Mapping[str, Method]], modules: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Each site's kept triplets, and their places in ``rank_pattern`` (none while every triplet is kept)."""
        if config.total_step is None:
            raise ValueError("its total_step is None (the Trainer's step count), and PEFT's AdaLoraConfig requires "
                             "one; add the adapter with total_step set to the number of training steps.")
        state, pattern = {}, {}
        for path, ours in placed.items():
            if modules[path].split:
                raise ValueError(f"AdaLoRA on DeBERTa's fused {path}: PEFT would adapt the fused q/k/v projection with "
                                 "one set of triplets, ours adapts each site on its own.")
            (module,) = ours.values()
            mask = module.rank_mask
            state[f"{path}.lora_A"] = module.lora_A.detach()[mask]
            state[f"{path}.lora_E"] = module.lora_E.detach()[mask]
            state[f"{path}.lora_B"] = module.lora_B.detach()[:, mask]
            pattern[f"{path}.lora_E"] = mask.tolist()
        everything = all(all(kept) for kept in pattern.values())
        fields = {**LORA_DEFAULTS, "peft_type": "ADALORA", "r": 8, "lora_alpha": config.alpha,
                  "lora_dropout": config.dropout, "init_lora_weights": config.init_weights,
                  **{peft_key: getattr(config, key) for key, peft_key in PEFT_NAMES.items()},
                  "rank_pattern": None if everything else pattern}
        return fields, state


# our AdaLoraConfig field -> PEFT's
PEFT_NAMES = {"init_r": "init_r", "target_r": "target_r", "alpha": "lora_alpha", "dropout": "lora_dropout",
              "tinit": "tinit", "tfinal": "tfinal", "deltaT": "deltaT", "beta1": "beta1", "beta2": "beta2",
              "orth_reg_weight": "orth_reg_weight", "total_step": "total_step", "init_weights": "init_lora_weights"}

register_method(AdaLoRA, {"adalora": AdaLoraConfig()})
