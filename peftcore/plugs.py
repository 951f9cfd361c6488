"""Compiling a composition into plugs: for each kind of site, one closure that runs the adapters present there in
the setup tree's order (composition.py has the blocks and their semantics). The signatures a method's module
offers at each kind of site:

    linear sites (SiteLinear):     forward(x, y) -> y                 LoRA, (IA)^3
    residual sites (ResidualSite): forward(h, x, norm) -> out, and pre/body/post to interleave with others
                                   (bottleneck adapters; AdapterFusion reads their up-projections)
    prefix sites (PrefixSite):     forward(k, v, mask, x) -> (k, v, mask)   prefix tuning
    output sites (OutputSite):     forward(x, padding) -> x                  ReFT
    the embedding site:            forward(x) and inverse(x)                   invertible adapters
    the prompt site (PromptSite):  forward(x, attention_mask, project) -> (x, attention_mask, positions)
                                                                               prompt tuning

A plug calls an adapter's module (its bound ``__call__``: a module itself would become a submodule of the site), not
its ``forward``, so hooks registered on it run as in AdapterHub; where
residual adapters are composed, the plug runs their pre/body/post steps, which no hook sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial, reduce
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.composition import Average, BatchSplit, Block, Fuse, Parallel, Split, Stack, spans, walk
from peftcore.sites import CURRENT_PADDING, EmbeddingSite, OutputSite, PrefixSite, PromptSite, ResidualSite, SiteLinear

Modules = dict[str, nn.Module]  # the adapters attached at one site (merged ones left out), by name


def unsupported(block: Block, site: str, kind: str, why: str = "") -> ValueError:
    return ValueError(f"{type(block).__name__} cannot compose {kind} adapters (at {site}){why}; see the "
                      "composition table in docs/methods.md.")


def only_stacks(block: str | Block) -> bool:
    return isinstance(block, str) or (isinstance(block, Stack) and all(only_stacks(child) for child in block))


def dim_of(block: Block) -> int:
    return 1 if isinstance(block, Split) else 0


def cut(tensor: Tensor, dim: int, span: slice) -> Tensor:
    return tensor[span] if dim == 0 else tensor[:, span]


def identity_last(*tensors: Tensor) -> Tensor:
    return tensors[-1]


def on_cut(fn: Callable, dim: int, span: slice, *args: object) -> object:
    """``fn(*args)`` for one slice of the batch, the published padding cut as its tensors are (a gate over real
    tokens reads each row's attention mask there: gating.py)."""
    padding = CURRENT_PADDING.padding
    if padding is None or padding.attention_mask is None:
        return fn(*args)
    CURRENT_PADDING.padding = replace(padding, attention_mask=cut(padding.attention_mask, dim, span))
    try:
        return fn(*args)
    finally:
        CURRENT_PADDING.padding = padding


def slicewise(block: Block, functions: list[Callable | None], *tensors: Tensor) -> Tensor:
    """Run function i on slice i of every tensor (the last tensor passes through where there is no function) and
    join the results where they were cut."""
    dim = dim_of(block)
    parts = spans(block, tensors[0].shape[dim])
    return torch.cat([on_cut(fn or identity_last, dim, span, *(cut(t, dim, span) for t in tensors))
                      for fn, span in zip(functions, parts, strict=True)], dim=dim)


def all_or_none(block: Block, compiled: list, site: str, kind: str) -> None:
    """A combining block (Average, Fuse) needs every child at a site where any child is."""
    missing = [child for child, fn in zip(block, compiled, strict=True) if fn is None]
    if missing and len(missing) < len(block):
        raise unsupported(block, site, kind, f": {missing} have no module there while the other children have")


# ---- linear sites (LoRA, IA3): y = plug(x, y) ------------------------------------------------------------------

def linear(block: str | Block, modules: Modules, site: str) -> Callable | None:
    if isinstance(block, str):
        return modules[block].__call__ if block in modules else None
    compiled = [linear(child, modules, site) for child in block]
    present = [fn for fn in compiled if fn is not None]
    if not present:
        return None
    if isinstance(block, Stack):
        return present[0] if len(present) == 1 else partial(linear_stack, present)
    if isinstance(block, Average):
        return partial(average_linear_updates, [(w, fn) for w, fn in zip(block.weights, compiled, strict=True) if fn])
    if isinstance(block, Fuse):
        raise unsupported(block, site, "LoRA/(IA)^3", ": AdapterFusion fuses bottleneck adapters")
    return partial(slicewise, block, compiled)


def linear_stack(functions: list[Callable], x: Tensor, y: Tensor) -> Tensor:
    """Each adapter updates the output in turn: LoRA updates add up, (IA)^3 scales multiply."""
    return reduce(lambda out, fn: fn(x, out), functions, y)


def average_linear_updates(weighted: list[tuple[float, Callable]], x: Tensor, y: Tensor) -> Tensor:
    """y + sum_i w_i (f_i(x, y) - y): the weighted average of the adapters' updates to the output."""
    return y + sum(w * (fn(x, y) - y) for w, fn in weighted)


# ---- residual sites (bottleneck adapters, AdapterFusion): out = plug(h, x, norm) -----------------------------------

class BottleneckState(NamedTuple):
    """What flows between bottleneck adapters at a residual site (AdapterHub's BottleneckState).

    h: the current hidden state; x: the sub-layer's input (the layer's residual); residual: the adapter residual;
    up: the last adapter's scaled up-projection (what fusion attends over); finish: the step after the adapters,
    ``finish(h, sublayer_output, x, norm)``: the last adapter's ``post``, kept per slice where slices differ.
    """

    h: Tensor
    x: Tensor
    residual: Tensor
    up: Tensor | None
    finish: Callable


def plain_finish(h: Tensor, sublayer_output: Tensor, x: Tensor, norm: nn.Module) -> Tensor:
    return norm(h + x)


def residual(block: Block, modules: Modules, fusions: nn.ModuleDict, site: str) -> Callable | None:
    inner = residual_inner(block, modules, fusions, site)
    if inner is None:
        return None
    names = [name for name in block.flatten() if name in modules]
    if len(names) == 1 and only_stacks(block):
        return modules[names[0]].__call__  # one adapter here: its own complete step
    return partial(run_residual, inner)


def run_residual(inner: Callable, h: Tensor, x: Tensor, norm: nn.Module) -> Tensor:
    state = inner(BottleneckState(h, x, x, None, plain_finish), norm)
    return state.finish(state.h, h, x, norm)


def residual_inner(block: str | Block, modules: Modules, fusions: nn.ModuleDict, site: str) -> Callable | None:
    if isinstance(block, str):
        return partial(bottleneck_step, modules[block]) if block in modules else None
    if isinstance(block, Fuse):
        return fuse(block, modules, fusions, site)
    compiled = [residual_inner(child, modules, fusions, site) for child in block]
    present = [fn for fn in compiled if fn is not None]
    if not present:
        return None
    if isinstance(block, Stack):
        return partial(residual_stack, present)
    if isinstance(block, Average):
        all_or_none(block, compiled, site, "bottleneck")
        return partial(residual_average, block.weights, compiled)
    return partial(residual_slicewise, block, compiled)


def bottleneck_step(module: nn.Module, state: BottleneckState, norm: nn.Module) -> BottleneckState:
    """One adapter on the current state: its own pre-processing, then the adapter (AdapterHub's pre_block and
    compose_single)."""
    z, _, adapter_residual = module.pre(state.h, state.x, norm)
    out, up = module.body(z, adapter_residual)
    return BottleneckState(out, state.x, adapter_residual, up, module.post)


def residual_stack(steps: list[Callable], state: BottleneckState, norm: nn.Module) -> BottleneckState:
    return reduce(lambda s, step: step(s, norm), steps, state)


def residual_average(weights: tuple[float, ...], steps: list[Callable], state: BottleneckState,
                     norm: nn.Module) -> BottleneckState:
    states = [step(state, norm) for step in steps]
    h = sum(w * s.h for w, s in zip(weights, states, strict=True))
    return BottleneckState(h, state.x, states[0].residual, states[0].up, states[-1].finish)


def residual_slicewise(block: Block, steps: list[Callable | None], state: BottleneckState,
                       norm: nn.Module) -> BottleneckState:
    """Each slice runs its child as if alone; the finishing steps stay per slice."""
    dim = dim_of(block)
    parts = spans(block, state.h.shape[dim])
    states = []
    for step, span in zip(steps, parts, strict=True):
        piece = BottleneckState(*(cut(t, dim, span) for t in state[:3]),
                                None if state.up is None else cut(state.up, dim, span), state.finish)
        states.append(piece if step is None else on_cut(step, dim, span, piece, norm))
    h, x, adapter_residual = (torch.cat([s[i] for s in states], dim=dim) for i in range(3))
    ups = [s.up for s in states]
    up = torch.cat(ups, dim=dim) if all(u is not None for u in ups) else None
    finishes = [s.finish for s in states]
    same = all(f is finishes[0] for f in finishes)
    finish = finishes[0] if same else partial(finish_slicewise, dim, parts, finishes)
    return BottleneckState(h, x, adapter_residual, up, finish)


def finish_slicewise(dim: int, parts: list[slice], finishes: list[Callable], h: Tensor, sublayer_output: Tensor,
                     x: Tensor, norm: nn.Module) -> Tensor:
    return torch.cat([finish(cut(h, dim, span), cut(sublayer_output, dim, span), cut(x, dim, span), norm)
                      for finish, span in zip(finishes, parts, strict=True)], dim=dim)


def fuse(block: Fuse, modules: Modules, fusions: nn.ModuleDict, site: str) -> Callable | None:
    """AdapterFusion: the last adapter's pre-processing gives the query; the children's up-projections are keys and
    values; the last adapter's post-processing follows (AdapterHub's compose_fuse). A Stack child runs as it would
    alone and contributes its last adapter's up-projection."""
    compiled = [modules.get(child) if isinstance(child, str) else residual_inner(child, modules, fusions, site)
                for child in block]
    if all(fn is None for fn in compiled):
        return None
    all_or_none(block, compiled, site, "bottleneck")
    if block.name not in fusions:
        raise ValueError(f"{block!r} has no fusion layer at {site}; add one with add_adapter_fusion({block!r}) or "
                         "load_adapter_fusion(...).")
    return partial(run_fuse, fusions[block.name], modules[block.last()], compiled)


def run_fuse(fusion: nn.Module, last: nn.Module, children: list, state: BottleneckState,
             norm: nn.Module) -> BottleneckState:
    z, query, adapter_residual = last.pre(state.h, state.x, norm, fusion.config.query_before_ln)
    ups = [child.body(z, adapter_residual)[1] if isinstance(child, nn.Module) else child(state, norm).up
           for child in children]
    h = fusion(query, torch.stack(ups, dim=2), adapter_residual)  # values (B, T, N, C)
    return BottleneckState(h, state.x, adapter_residual, None, last.post)


# ---- prefix sites: k, v, mask = plug(k, v, mask, x) ---------------------------------------------------------------

def prefix(block: str | Block, modules: Modules, site: str) -> Callable | None:
    if isinstance(block, str):
        return modules[block].__call__ if block in modules else None
    compiled = [prefix(child, modules, site) for child in block]
    present = [fn for fn in compiled if fn is not None]
    if not present:
        return None
    if isinstance(block, Stack):  # each prefix is prepended in turn: [P_last, ..., P_first, K]
        return present[0] if len(present) == 1 else partial(prefix_stack, present)
    if isinstance(block, BatchSplit | Parallel):
        return partial(prefix_slicewise, block, compiled)
    raise unsupported(block, site, "prefix-tuning", ": every position attends to the same prefix keys")


def prefix_stack(functions: list[Callable], k: Tensor, v: Tensor, mask: Tensor | None,
                 x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    for fn in functions:
        k, v, mask = fn(k, v, mask, x)
    return k, v, mask


def prefix_slicewise(block: Block, functions: list[Callable | None], k: Tensor, v: Tensor, mask: Tensor | None,
                     x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Each slice of the batch prepends its own prefix; shorter key sequences are padded on the left with keys that
    the mask hides, so every row attends exactly as it would alone."""
    parts = spans(block, k.shape[0])
    outs = []
    for fn, span in zip(functions, parts, strict=True):
        rows = mask if mask is None or mask.shape[0] == 1 else mask[span]
        outs.append((k[span], v[span], rows) if fn is None else on_cut(fn, 0, span, k[span], v[span], rows, x[span]))
    width = max(key.shape[2] for key, _, _ in outs)
    if all(key.shape[2] == width for key, _, _ in outs) and (mask is None or mask.shape[0] != 1):
        joined = None if mask is None else torch.cat([m for _, _, m in outs])
        return torch.cat([key for key, _, _ in outs]), torch.cat([value for _, value, _ in outs]), joined
    keys, values, masks = [], [], []
    for (key, value, m), span in zip(outs, parts, strict=True):
        rows, missing = span.stop - span.start, width - key.shape[2]
        if m is None:
            m = key.new_zeros(rows, 1, 1, key.shape[2])
        masks.append(F.pad(m.expand(rows, *m.shape[1:]), (missing, 0), value=torch.finfo(m.dtype).min))
        keys.append(F.pad(key, (0, 0, missing, 0)))
        # a query row that masks every key (DeBERTa's padding rows) attends uniformly: padding with the row's mean
        # value keeps that mean what it would be alone; every other row gives the padding no weight at all
        values.append(torch.cat([value.mean(dim=2, keepdim=True).expand(-1, -1, missing, -1), value], dim=2))
    return torch.cat(keys), torch.cat(values), torch.cat(masks)


# ---- output sites (ReFT): x = plug(x, padding) ------------------------------------------------------------------

def output(block: str | Block, modules: Modules, site: str) -> Callable | None:
    if isinstance(block, str):
        return modules[block].__call__ if block in modules else None
    compiled = [output(child, modules, site) for child in block]
    present = [fn for fn in compiled if fn is not None]
    if not present:
        return None
    if isinstance(block, Stack):  # each intervention on the previous one's output
        return present[0] if len(present) == 1 else partial(output_stack, present)
    if isinstance(block, BatchSplit | Parallel):
        return partial(output_slicewise, block, compiled)
    raise unsupported(block, site, "ReFT", ": an intervention edits chosen positions of whole rows")


def output_stack(functions: list[Callable], x: Tensor, padding: object) -> Tensor:
    return reduce(lambda out, fn: fn(out, padding), functions, x)


def output_slicewise(block: Block, functions: list[Callable | None], x: Tensor, padding: object) -> Tensor:
    """Each slice of the batch's rows through its own intervention; these blocks run padded, (B, T, C)."""
    mask = padding.attention_mask
    return torch.cat([x[span] if fn is None else fn(x[span], replace(padding, attention_mask=None if mask is None
                                                                        else mask[span]))
                      for fn, span in zip(functions, spans(block, x.shape[0]), strict=True)])


# ---- the embedding site (invertible adapters): x = plug(x), and inverse_plug before an LM head --------------------

def embedding(block: str | Block, modules: Modules, site: str) -> tuple[Callable, Callable] | None:
    if isinstance(block, str):
        return (modules[block].__call__, partial(modules[block].__call__, rev=True)) if block in modules else None
    compiled = [embedding(child, modules, site) for child in block]
    present = [pair for pair in compiled if pair is not None]
    if not present:
        return None
    if isinstance(block, Stack):
        if len(present) == 1:
            return present[0]
        forwards, inverses = zip(*present, strict=True)
        return partial(chain, forwards), partial(chain, inverses[::-1])
    if isinstance(block, BatchSplit | Parallel | Split):
        return (partial(slicewise, block, [None if pair is None else pair[0] for pair in compiled]),
                partial(slicewise, block, [None if pair is None else pair[1] for pair in compiled]))
    raise unsupported(block, site, "invertible", ": an averaged or fused transform has no inverse for the LM head")


def chain(functions: Sequence[Callable], x: Tensor) -> Tensor:
    return reduce(lambda out, fn: fn(out), functions, x)


# ---- the prompt site (prompt tuning): x, attention_mask, positions = plug(x, attention_mask, project) ----------

def prompt(block: str | Block, modules: Modules, site: str) -> Callable | None:
    if isinstance(block, str):
        return modules[block].__call__ if block in modules else None
    compiled = [prompt(child, modules, site) for child in block]
    present = [fn for fn in compiled if fn is not None]
    if not present:
        return None
    if isinstance(block, Stack):
        if len(present) > 1:
            raise unsupported(block, site, "prompt-tuning", ": a sequence takes one prompt; stack one prompt-tuning "
                              "adapter with adapters of other methods")
        return present[0]
    if isinstance(block, BatchSplit | Parallel):
        return partial(prompt_slicewise, block, compiled)
    raise unsupported(block, site, "prompt-tuning", ": a prompt is inserted into the whole sequence of a row")


def prompt_slicewise(block: Block, functions: list[Callable | None], x: Tensor, attention_mask: Tensor | None,
                     project: Callable | None) -> tuple[Tensor, Tensor | None, Tensor]:
    """Each slice of the batch inserts its own prompt (or none); rows made shorter than the longest are padded on
    the right with masked positions, so every row attends exactly as it would alone."""
    outs = []
    for fn, span in zip(functions, spans(block, x.shape[0]), strict=True):
        rows, mask = x[span], None if attention_mask is None else attention_mask[span]
        if fn is None:
            positions = torch.arange(rows.shape[1], device=x.device).expand(rows.shape[:2])
            outs.append((rows, mask, positions))
        else:
            outs.append(fn(rows, mask, project))
    width = max(rows.shape[1] for rows, _, _ in outs)
    if all(rows.shape[1] == width for rows, _, _ in outs) and attention_mask is None:
        return torch.cat([rows for rows, _, _ in outs]), None, torch.cat([p for _, _, p in outs])
    xs, masks = [], []
    for rows, mask, _ in outs:
        mask = rows.new_ones(rows.shape[:2], dtype=torch.long) if mask is None else mask
        xs.append(F.pad(rows, (0, 0, 0, width - rows.shape[1])))
        masks.append(F.pad(mask, (0, width - rows.shape[1])))
    return torch.cat(xs), torch.cat(masks), torch.cat([p for _, _, p in outs])


# ---- every site ----------------------------------------------------------------------------------------------------

def site_plugs(module: nn.Module, setup: Block | None, skip: set[str], path: str) -> dict[str, Callable | bool | None]:
    """The plugs a site runs for ``setup`` (and, for a linear site, whether its plug splits the batch's rows);
    adapters in ``skip`` (merged into the weights) are left out."""
    modules = {name: m for name, m in module.adapters.items() if name not in skip}
    plugs: dict[str, Callable | bool | None] = {"plug": None}
    if isinstance(module, EmbeddingSite):
        plugs["inverse_plug"] = None
    if isinstance(module, SiteLinear):
        plugs["splits_rows"] = False
    if setup is None or not modules:
        return plugs
    if isinstance(module, SiteLinear):
        plugs["plug"] = linear(setup, modules, path)
        plugs["splits_rows"] = plugs["plug"] is not None and any(
            isinstance(block, BatchSplit | Parallel) for block in walk(setup))
    elif isinstance(module, ResidualSite):
        plugs["plug"] = residual(setup, modules, module.fusions, path)
    elif isinstance(module, PrefixSite):
        plugs["plug"] = prefix(setup, modules, path)
    elif isinstance(module, PromptSite):
        plugs["plug"] = prompt(setup, modules, path)
    elif isinstance(module, OutputSite):
        plugs["plug"] = output(setup, modules, path)
    elif isinstance(module, EmbeddingSite):
        pair = embedding(setup, modules, path)
        if pair is not None:
            plugs["plug"], plugs["inverse_plug"] = pair
    return plugs
