"""Dropout with a cheaper mask on CPU: the same Bernoulli(1 - p) keep mask and 1/(1-p) scaling as ``F.dropout``,
drawn as raw random bits compared with an integer threshold, a byte at a time.

``F.dropout`` on CPU fills a float tensor with ``bernoulli_``, then divides and multiplies: the random numbers
alone were about 10% of a train step (docs/performance.md). Here each element is dropped where a uniform 32-bit
number U falls below ``round(p · 2³²)``: probability p to within 2⁻³³, finer than float32 resolves p,
independently of every other element. U's top byte alone decides unless it equals the threshold's top byte (one
element in 256): each element gets 8 fresh random bits, and only those ties draw U's other 24 bits. CUDA keeps
torch's fused dropout kernel. Under torch.compile on CPU the mask is one opaque op of the graph
(``compiled_keep_mask``): inductor's own random numbers made dropout cost more than the rest of the compiled step
gained (docs/performance.md), while around our mask it still fuses the multiplies into the neighbouring passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BITS = 32  # bits of U: p is exact to 2^-(BITS + 1)
LOW_BITS = BITS - 8  # the bits of U below its top byte, drawn for ties only


def drop_threshold(p: float) -> tuple[int, int]:
    """``round(p · 2³²)`` split as (top byte, low 24 bits): U = 2²⁴ · byte + rest is below it, which happens with
    probability p to within 2⁻³³, iff byte < top or (byte == top and rest < low)."""
    return divmod(round(p * 2**BITS), 2**LOW_BITS)


def random_bytes(count: int, device: torch.device) -> Tensor:
    """``count`` uniform uint8 (padded to a multiple of 8): full-range 64-bit draws of the default generator, each
    read as 8 bytes."""
    return torch.empty((count + 7) // 8, dtype=torch.int64, device=device).random_(-2**63, None).view(torch.uint8)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """A uint8 mask of ``shape``: 0 with probability p (to within 2⁻³³), else 1, independently per element."""
    top, low = drop_threshold(p)
    if top == 2**8:  # p within 2^-33 of 1: every U is below the threshold (which a byte cannot hold)
        return torch.zeros(shape, dtype=torch.uint8, device=device)
    keep = random_bytes(shape.numel(), device)
    # uint8 results: a comparison into a bool tensor runs about 10x slower than into the input's own dtype
    tied = torch.eq(keep, top, out=torch.empty_like(keep))
    torch.gt(keep, top, out=keep)
    tie_words = tied.view(torch.int64).nonzero().squeeze(1)  # the few 8-byte words holding a tie
    ties = (tie_words[:, None] * 8 + torch.arange(8, device=device)).flatten()
    ties = ties[tied[ties].bool()]
    keep[ties] = (torch.empty(ties.shape, dtype=torch.int64, device=device).random_(0, 2**LOW_BITS) >= low).byte()
    return keep[:shape.numel()].view(shape)


def draw_keep_mask(numel: int, p: float, device: torch.device) -> Tensor:
    """``keep_mask`` of ``numel`` elements; in a torch.compile graph, through the opaque op below."""
    if not torch.compiler.is_compiling():
        return keep_mask(torch.Size((numel,)), p, device)
    # A random token makes each call a node of its own: compilers never merge two random draws, but they would merge
    # two calls of an op with equal arguments (two dropouts of one size) into one mask.
    return compiled_keep_mask(numel, p, torch.randint(2**62, (), device=device))


@torch.library.custom_op("peftcore::keep_mask", mutates_args=(), tags=torch.Tag.nondeterministic_seeded)
def compiled_keep_mask(numel: int, p: float, token: Tensor) -> Tensor:
    """``keep_mask`` as one op of a compiled graph, which inductor does not look into. The tag tells the compiler
    that it draws random numbers: like torch's own random ops, it is saved for the backward pass rather than
    recomputed there (a recomputed mask would differ from the forward's), and a checkpointed region replays it with
    the random state it had."""
    return keep_mask(torch.Size((numel,)), p, token.device)


@compiled_keep_mask.register_fake
def _(numel: int, p: float, token: Tensor) -> Tensor:
    return token.new_empty(numel, dtype=torch.uint8)


def uses_bit_mask(x: Tensor) -> bool:
    """Whether ``dropout`` draws its mask as bits (CPU, eager or compiled) rather than calling ``F.dropout`` (CUDA
    and other devices have a fused kernel)."""
    return x.device.type == "cpu"


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``: each element zeroed with probability p, the rest scaled by 1/(1-p); the
    identity outside training or at p = 0."""
    if not training or p == 0.0:
        return x
    if not uses_bit_mask(x):
        return F.dropout(x, p, training)
    return dropout_all([x], p)[0]


def dropout_all(tensors: Sequence[Tensor], p: float) -> list[Tensor]:
    """The bit-mask ``dropout`` (training, CPU) of each of ``tensors`` (one device and dtype), from one mask drawn
    for all of them: per tensor, a mask costs a dozen small ops."""
    if p == 1.0:
        return [t * 0.0 for t in tensors]
    sizes = [t.numel() for t in tensors]
    keep = draw_keep_mask(sum(sizes), p, tensors[0].device).split(sizes)
    return [ScaleByMask.apply(t, part.view(t.shape), 1.0 / (1.0 - p)) for t, part in zip(tensors, keep, strict=True)]


class ScaleByMask(torch.autograd.Function):
    """x · keep · scale for a uint8 ``keep``, which the backward pass keeps instead of a float mask: 1 byte per
    element saved, not 4 (attention's dropped probabilities are B·H·T² of them)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return scale_by_mask(x, keep, scale)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return scale_by_mask(grad, keep, ctx.scale), None, None


def scale_by_mask(x: Tensor, keep: Tensor, scale: float) -> Tensor:
    """x · keep · scale in two passes: the uint8 -> float cast (cheap; bool -> float is not) and one ``addcmul``
    that multiplies and scales (to a zero that only broadcasts), where ``x * keep * scale`` takes three."""
    return torch.addcmul(x.new_zeros(()), x, keep.to(x.dtype), value=scale)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, repr and state) running ``dropout`` above."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
