"""Compiled packed execution: each encoder layer under torch.compile on a batch's real tokens (1, N, C), N dynamic.

``torch.compile(model)`` keeps the padded layout (models/layers.py ``Padding.of``): packing needs the positions of
the real tokens (``nonzero``, data-dependent) and the unpadded attention loops over each row's length (Python ints:
a recompile per set of lengths). Here the packing stays outside the compiled region, in eager code; what is compiled
is one layer on the packed tokens, their flat positions in the padded batch and its padding mask, with N, B and T
marked dynamic; attention scatters q, k, v to the padded layout for one masked SDPA call and gathers the result back
(models/attention.py ``attend_scattered``). One graph then serves every batch, whatever its lengths, and inductor
fuses the norms, GELU, dropout, residuals and per-token adapters around the matmuls. Opt in with
``model.compile_packed = True`` (docs/performance.md has the figures on CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from torch import Tensor, nn

from peftcore.models.layers import EncoderLayer, Padding, SelfAttention


def run_layer(layer: nn.Module, h: Tensor, index: Tensor, mask: Tensor) -> Tensor:
    """One layer on the packed tokens h (1, N, C), at the flat positions ``index`` (N,) of the padding ``mask``
    (B, 1, 1, T)."""
    return layer(h, Padding(mask, index, compiled=True))[0]


@cache
def compiled_layer() -> Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]:
    """``run_layer`` compiled, made on first use (importing torch's compiler costs seconds)."""
    return torch.compile(run_layer)


def compiles(layer: nn.Module, padding: Padding, output_attentions: bool) -> bool:
    """Whether ``layer`` runs compiled on the packed batch ``padding``: a packed batch without returned attention
    probabilities, BERT's post-LN layer of plain ``SelfAttention`` (whose attention reads ``Padding.compiled``),
    and no prefix or output site plugged (they read each row's length)."""
    return (padding.index is not None and not output_attentions and type(layer) is EncoderLayer
            and type(layer.attn) is SelfAttention and layer.attn.prefix.plug is None and layer.output.plug is None)


def run_compiled(layer: nn.Module, h: Tensor, padding: Padding, output_attentions: bool = False) -> tuple[Tensor, None]:
    """``layer(h, padding)`` on the packed tokens h (1, N, C), through the compiled graph of any N, B and T."""
    for tensor, dim in ((h, 1), (padding.index, 0), (padding.mask, 0), (padding.mask, 3)):
        if tensor.shape[dim] > 1:  # torch.compile specialises sizes 0 and 1
            torch._dynamo.mark_dynamic(tensor, dim)
    return compiled_layer()(layer, h, padding.index, padding.mask), None
