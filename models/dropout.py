"""Dropout with a cheaper mask on CPU: the same Bernoulli(1 - p) keep mask and 1/(1-p) scaling as ``F.dropout``,
drawn as raw random bits compared with an integer threshold.

``F.dropout`` on CPU fills a float tensor with ``bernoulli_``, then divides and multiplies: the random numbers
alone were about 10% of a train step (docs/performance.md). Here every element gets 32 random bits (two per
64-bit draw of the generator) and is dropped where they fall below ``p · 2³²`` (rounded): each element is dropped
with probability p to within 2⁻³³, finer than float32 resolves p, independently of every other element. CUDA
keeps torch's fused dropout kernel, and so does torch.compile, which fuses dropout into its generated code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BITS = 32  # random bits per element: p is exact to 2^-(BITS + 1)


def drop_threshold(p: float) -> int:
    """The signed 32-bit threshold below which a uniform int32 falls with probability p (to within 2⁻³³)."""
    return round(p * 2**BITS) - 2 ** (BITS - 1)


def random_int32(shape: torch.Size, device: torch.device) -> Tensor:
    """Uniform int32 of ``shape``: full-range 64-bit draws of the default generator, each read as two int32."""
    count = shape.numel()
    words = torch.empty((count + 1) // 2, dtype=torch.int64, device=device).random_(-2**63, None)  # all 64 bits
    return words.view(torch.int32)[:count].view(shape)


def uses_bit_mask(x: Tensor) -> bool:
    """Whether ``dropout`` draws its mask as bits (CPU, eager) rather than calling ``F.dropout`` (CUDA and other
    devices have a fused kernel; torch.compile fuses ``F.dropout`` into its generated code)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``: each element zeroed with probability p, the rest scaled by 1/(1-p); the
    identity outside training or at p = 0."""
    if not training or p == 0.0:
        return x
    if not uses_bit_mask(x) or p == 1.0:
        return F.dropout(x, p, training)
    scale = torch.full((), 1.0 / (1.0 - p), dtype=x.dtype, device=x.device)
    return x * torch.where(random_int32(x.shape, x.device) >= drop_threshold(p), scale, 0.0)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, repr and state) running ``dropout`` above."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
