"""AdaLoRA's training-time machinery (Zhang et al., 2023, https://arxiv.org/abs/2303.10512, sections 3.2-3.3): the
importance-based rank allocator and the orthogonality regulariser, as the Trainer's callback for one adapter's
AdaLoRA modules (adalora.py).

Equal to HF PEFT 0.21.2's ``RankAllocator`` (``peft/tuners/adalora/layer.py``) driven by
``AdaLoraModel.update_and_allocate(global_step)`` after each optimizer step, and to the regulariser
``AdaLoraModel.forward`` adds to the loss: the same scores, budgets, thresholds and masks on the same gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from peftcore.methods.base import TrainingCallback

TRIPLET = ("lora_A", "lora_E", "lora_B")


class RankAllocator(TrainingCallback):
    """Shares ``target_r`` triplets per module out among ``modules`` (each with ``lora_A`` (r, in), ``lora_E``
    (r, 1), ``lora_B`` (out, r), ``rank_mask`` (r,), ``apply_mask()``) over ``total_step`` optimizer steps.

    After step t (0 for the first), before ``total_step - tfinal``: the importance of every entry, I = |p · ∂L/∂p|,
    is smoothed, Ī ← β1 Ī + (1 - β1) I, and its uncertainty, Ū ← β2 Ū + (1 - β2) |I - Ī|; past ``tinit``, every
    ``deltaT`` steps, the triplets whose score Ī·Ū (E's, plus the row mean of A's and the column mean of B's) is not
    above the k-th smallest, k = initial budget - budget(t), get E = 0. The budget falls as a cubic from ``init_r`` to
    ``target_r`` per module. At step ``total_step - tfinal`` the final allocation is made (the scores not updated, as
    PEFT's) and kept: every later step re-applies it.
    """

    def __init__(self, config: Any, modules: Sequence[Any], total_step: int) -> None:
        self.config, self.modules, self.total_step = config, list(modules), total_step
        self.initial_budget = sum(module.lora_A.shape[0] for module in self.modules)
        self.target_budget = config.target_r * len(self.modules)
        self.averages: list[dict[str, Tensor]] = []  # Ī per module and tensor name (empty until the first update)
        self.uncertainties: list[dict[str, Tensor]] = []

    def regularisation(self) -> Tensor | float:
        """``orth_reg_weight`` times the mean over every A and B of ‖A Aᵀ - I‖_F and ‖Bᵀ B - I‖_F."""
        if not self.config.orth_reg_weight or not self.modules:
            return 0.0
        total = 0.0
        for module in self.modules:
            for product in (module.lora_A @ module.lora_A.T, module.lora_B.T @ module.lora_B):  # (R, R)
                total = total + torch.norm(product - torch.eye(*product.shape, out=torch.empty_like(product)), p="fro")
        return self.config.orth_reg_weight * (total / (2 * len(self.modules)))

    def budget(self, step: int) -> tuple[int, bool]:
        """The budget after ``step`` and whether to allocate it then (PEFT's ``budget_schedule``)."""
        config, final = self.config, self.total_step - self.config.tfinal
        if step <= config.tinit:
            return self.initial_budget, False
        if step > final:
            return self.target_budget, True
        remaining = 1 - (step - config.tinit) / (final - config.tinit)
        budget = int((self.initial_budget - self.target_budget) * remaining ** 3 + self.target_budget)
        return budget, step % config.deltaT == 0

    def update_importance(self) -> None:
        with torch.no_grad():
            for index, module in enumerate(self.modules):
                if index == len(self.averages):
                    self.averages.append({name: torch.zeros_like(getattr(module, name)) for name in TRIPLET})
                    self.uncertainties.append({name: torch.zeros_like(getattr(module, name)) for name in TRIPLET})
                for name in TRIPLET:
                    parameter = getattr(module, name)
                    importance = (parameter * parameter.grad).abs()
                    average = self.config.beta1 * self.averages[index][name] + (1 - self.config.beta1) * importance
                    self.averages[index][name] = average
                    self.uncertainties[index][name] = (self.config.beta2 * self.uncertainties[index][name]
                                                       + (1 - self.config.beta2) * (importance - average).abs())

    def scores(self) -> list[Tensor]:
        """Each module's triplet scores (r,)."""
        scores = []
        for average, uncertainty in zip(self.averages, self.uncertainties, strict=True):
            entry = {name: average[name] * uncertainty[name] for name in TRIPLET}
            rows = entry["lora_A"].mean(dim=1) + entry["lora_B"].mean(dim=0)  # (R,)
            scores.append(entry["lora_E"].view(-1) + rows)
        return scores

    def allocate(self, budget: int) -> None:
        """Keep the ``budget`` best-scored triplets (ties at the threshold all go, as PEFT's ``<=``)."""
        scores, dropped = self.scores(), self.initial_budget - budget
        # nothing to drop (target_r = init_r at the final allocation): PEFT's kthvalue(k=0) fails there
        threshold = torch.kthvalue(torch.cat(scores), k=dropped).values if dropped > 0 else None
        with torch.no_grad():
            for module, score in zip(self.modules, scores, strict=True):
                module.rank_mask.copy_(~(score <= threshold) if threshold is not None else torch.ones_like(score) > 0)
                module.apply_mask()

    def after_step(self, step: int) -> None:
        """PEFT's ``update_and_allocate(step)``."""
        final = self.total_step - self.config.tfinal
        if step < final:
            self.update_importance()
            budget, now = self.budget(step)
            if now:
                self.allocate(budget)
        elif step == final:
            self.allocate(self.budget(step)[0])
            self.averages, self.uncertainties = [], []
        else:
            for module in self.modules:
                module.apply_mask()

    def state_dict(self) -> dict[str, Any]:
        return {"averages": self.averages, "uncertainties": self.uncertainties}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.averages, self.uncertainties = list(state["averages"]), list(state["uncertainties"])
