"""The UniPELT gate (Mao et al., 2022, https://arxiv.org/abs/2110.07577), shared by every gated method.

A gate turns a method on per example: ``g = mean_T(sigmoid(W_g x + b_g))``, one value (or one per output) for each
row of the batch, which scales the method's contribution. Numerically equal to the ``gate`` layers of AdapterHub's
``Adapter``, ``LoRA`` and ``PrefixTuningLayer``; because it averages over the padded sequence, as AdapterHub's does,
a gated setup keeps the padded layout.

With ``gate_over_real_tokens`` (a field of every config with ``use_gating``) the mean runs over each row's real
tokens only, read from the padding the model publishes (sites.py ``CURRENT_PADDING``): a row's gate no longer
depends on how much padding the batch adds, and the setup may run unpadded. AdapterHub has no such gate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from peftcore.sites import CURRENT_PADDING


class Gate(nn.Linear):
    """g = mean_T(sigmoid(W x + b)): (B, T, C) -> (B, 1, outputs). Parameter names are nn.Linear's (``gate.weight``,
    ``gate.bias``), as AdapterHub's.

    With ``real_tokens`` the mean is over each row's real tokens; on a packed batch (1, N, C) it is taken per row and
    given back per token, (1, N, outputs). ``record`` is set when the adapter is attached to a model: it receives
    every gate value, one per row, and keeps it while the model records gating scores
    (``output_adapter_gating_scores=True``).
    """

    record: Callable[[Tensor], None] | None = None

    def __init__(self, in_features: int, outputs: int = 1, real_tokens: bool = False) -> None:
        super().__init__(in_features, outputs)
        self.real_tokens = real_tokens

    def reset_parameters_from(self, generator: torch.Generator | None, zero_bias: bool) -> None:
        """AdapterHub's gate init: N(0, 0.02) weights; zero biases where it zeroes them, PyTorch's default elsewhere."""
        with torch.no_grad():
            nn.init.normal_(self.weight, std=0.02, generator=generator)
            if zero_bias:
                nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, per_row: bool = False) -> Tensor:
        """(B, 1, outputs); on a packed batch each token's row's gate (1, N, outputs), or with ``per_row`` each
        row's (B, 1, outputs), by which a prefix scales that row's keys and values."""
        gate = self.row_gates(x)
        padding = CURRENT_PADDING.padding
        if per_row or not self.real_tokens or padding is None or padding.lengths is None:
            return gate
        return gate[:, 0].repeat_interleave(lengths_of(padding, x), dim=0).unsqueeze(0)  # (1, N, outputs)

    def row_gates(self, x: Tensor) -> Tensor:
        """Each row's gate (B, 1, outputs), recorded when asked."""
        scores = torch.sigmoid(super().forward(x))  # (B, T, outputs)
        padding = CURRENT_PADDING.padding
        if not self.real_tokens or padding is None or padding.attention_mask is None:
            gate = scores.mean(dim=1, keepdim=True)
        elif padding.lengths is not None:  # packed (1, N, C): each row's run of tokens
            lengths = lengths_of(padding, x)
            rows = torch.arange(len(padding.lengths), device=x.device).repeat_interleave(lengths)
            sums = scores.new_zeros(len(padding.lengths), scores.shape[-1]).index_add_(0, rows, scores[0])
            gate = (sums / lengths[:, None].to(scores.dtype)).unsqueeze(1)
        else:
            real = padding.attention_mask
            if real.shape != scores.shape[:2]:
                raise ValueError(f"a gate over real tokens read {tuple(scores.shape[:2])} tokens, but the batch's "
                                 f"attention mask is {tuple(real.shape)}.")
            real = real.to(scores.dtype)[..., None]  # (B, T, 1)
            gate = ((scores * real).sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True).clamp(min=1))
        if self.record is not None:
            self.record(gate)
        return gate

    def extra_repr(self) -> str:
        return super().extra_repr() + (", real_tokens=True" if self.real_tokens else "")


def lengths_of(padding: Any, x: Tensor) -> Tensor:
    """The packed batch's row lengths as a tensor on ``x``'s device."""
    return torch.tensor(padding.lengths, device=x.device)


def check_gate_option(name: str, config: Any) -> None:
    """Refuse ``gate_over_real_tokens`` on ``config`` (a config with ``use_gating``) unless it is a bool and the
    config is gated."""
    if not isinstance(config.gate_over_real_tokens, bool):
        raise TypeError(f"{name}.gate_over_real_tokens must be True or False, got {config.gate_over_real_tokens!r}.")
    if config.gate_over_real_tokens and not config.use_gating:
        raise ValueError(f"{name}.gate_over_real_tokens=True chooses how a gate averages, but use_gating is False; "
                         "set use_gating=True or leave gate_over_real_tokens off.")


def without_default_gate_option(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict without ``gate_over_real_tokens`` where it is off: AdapterHub has no such field, so a config it
    can express saves exactly its dict."""
    return {key: value for key, value in data.items() if key != "gate_over_real_tokens" or value}
