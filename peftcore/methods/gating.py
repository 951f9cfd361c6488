"""The UniPELT gate (Mao et al., 2022, https://arxiv.org/abs/2110.07577), shared by every gated method.

A gate turns a method on per example: ``g = mean_T(sigmoid(W_g x + b_g))``, one value (or one per output) for each
row of the batch, which scales the method's contribution. Numerically equal to the ``gate`` layers of AdapterHub's
``Adapter``, ``LoRA`` and ``PrefixTuningLayer``; because it averages over the padded sequence, as AdapterHub's does,
a gated setup keeps the padded layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class Gate(nn.Linear):
    """g = mean_T(sigmoid(W x + b)): (B, T, C) -> (B, 1, outputs). Parameter names are nn.Linear's (``gate.weight``,
    ``gate.bias``), as AdapterHub's.

    ``record`` is set when the adapter is attached to a model: it receives every gate value and keeps it while the
    model records gating scores (``output_adapter_gating_scores=True``).
    """

    record: Callable[[Tensor], None] | None = None

    def __init__(self, in_features: int, outputs: int = 1) -> None:
        super().__init__(in_features, outputs)

    def reset_parameters_from(self, generator: torch.Generator | None, zero_bias: bool) -> None:
        """AdapterHub's gate init: N(0, 0.02) weights; zero biases where it zeroes them, PyTorch's default elsewhere."""
        with torch.no_grad():
            nn.init.normal_(self.weight, std=0.02, generator=generator)
            if zero_bias:
                nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(super().forward(x)).mean(dim=1, keepdim=True)  # (B, 1, outputs)
        if self.record is not None:
            self.record(gate)
        return gate
