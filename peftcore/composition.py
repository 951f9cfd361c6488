"""Adapter composition: the blocks (Stack, Fuse, Split, BatchSplit, Parallel, Average), their nesting rules, and the
plugs that run a composition at each kind of site.

A setup is a tree of blocks over adapter names. ``set_active_adapters`` parses it once and builds, for every site,
one closure that runs the adapters present there in the tree's order; nothing is looked up during forward.

    Stack(a, b)                     a, then b on a's output (MAD-X: Stack("lang_en", "task"))
    Fuse(a, b)                      AdapterFusion attends over the adapters' outputs (peftcore.fusion)
    Split(a, b, splits=[s, t])      the sequence is cut at the given lengths; each part runs its own adapter
    BatchSplit(a, b, batch_sizes=[m, n])   each adapter takes a slice of the batch
    Parallel(a, b)                  the batch is replicated; branch i runs adapter i and its head
    Average(a, b, weights=[u, w])   the weighted average of the adapters' outputs

Semantics and nesting rules are AdapterHub's (``adapters.composition`` 1.3.0), with its defects fixed; a test shows
each difference: Stack adds LoRA updates (AdapterHub multiplies the low-rank maps); Average weighs once (AdapterHub
divides the weighted sum by N again); BatchSplit, Parallel and Split treat each slice exactly as if it ran alone
(AdapterHub applies the first child's pre-processing and the last child's post-processing to every slice, and fails
when a child has no module where the others have); unsupported combinations raise (AdapterHub silently runs only the
first invertible adapter of a setup).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial, reduce
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.sites import EmbeddingSite, PrefixSite, ResidualSite, SiteLinear

BASE = "__base__"  # the name mixed batches give rows that run the model without any adapter
Modules = dict[str, nn.Module]  # the adapters attached at one site (merged ones left out), by name


class Block(Sequence):
    """A composition block over adapter names and nested blocks; a nested list is shorthand for a Stack."""

    def __init__(self, *children: str | Block | Sequence) -> None:
        if not children:
            raise ValueError(f"{type(self).__name__} needs at least one adapter.")
        self.children = tuple(child if isinstance(child, str | Block) else as_stack(child) for child in children)

    def __getitem__(self, index: int) -> str | Block:
        return self.children[index]

    def __len__(self) -> int:
        return len(self.children)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.children == self.children and other.options() == self.options()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.children, repr(self.options())))

    def __repr__(self) -> str:
        options = "".join(f", {key}={value}" for key, value in self.options().items())
        return f"{type(self).__name__}[{', '.join(map(str, self.children))}{options}]"

    def options(self) -> dict[str, object]:
        """The block's arguments besides its children."""
        return {}

    def flatten(self) -> tuple[str, ...]:
        """Every adapter name in the tree, once each, in order of appearance."""
        names = itertools.chain.from_iterable((c,) if isinstance(c, str) else c.flatten() for c in self.children)
        return tuple(dict.fromkeys(names))

    def first(self) -> str:
        child = self.children[0]
        return child if isinstance(child, str) else child.first()

    def last(self) -> str:
        child = self.children[-1]
        return child if isinstance(child, str) else child.last()

    @property
    def parallel_channels(self) -> int:
        """How many copies of the batch the model runs: the width of the Parallel block in the tree, else 1."""
        return max(1 if isinstance(c, str) else c.parallel_channels for c in self.children)


class Stack(Block):
    """Adapters applied one after another; each reads the previous one's output."""


class Fuse(Block):
    """AdapterFusion over the children's outputs; needs a fusion layer from ``add_adapter_fusion``."""

    def __init__(self, *children: str | Block | Sequence, name: str | None = None) -> None:
        super().__init__(*children)
        self.custom_name = name

    @property
    def name(self) -> str:
        """The fusion layer's name: given, or the children's (last) adapter names joined by commas (AdapterHub's)."""
        return self.custom_name or ",".join(c if isinstance(c, str) else c.last() for c in self.children)

    def options(self) -> dict[str, object]:
        return {"name": self.custom_name} if self.custom_name else {}


def sizes_for(block: Block, sizes: int | Sequence[int], field: str) -> tuple[int, ...]:
    """An int is one size per child (AdapterHub's); every size must be a positive int."""
    sizes = (sizes,) * len(block) if isinstance(sizes, int) else tuple(sizes)
    if len(sizes) != len(block) or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ValueError(f"{type(block).__name__} needs one positive int in {field} per child ({len(block)}), got "
                         f"{list(sizes)}.")
    return sizes


class Split(Block):
    """The sequence is cut into consecutive parts of the given lengths; part i runs child i."""

    def __init__(self, *children: str | Block | Sequence, splits: int | Sequence[int]) -> None:
        super().__init__(*children)
        self.splits = sizes_for(self, splits, "splits")

    def options(self) -> dict[str, object]:
        return {"splits": list(self.splits)}


class BatchSplit(Block):
    """The batch is cut into consecutive slices of the given sizes; slice i runs child i."""

    def __init__(self, *children: str | Block | Sequence, batch_sizes: int | Sequence[int]) -> None:
        super().__init__(*children)
        self.batch_sizes = sizes_for(self, batch_sizes, "batch_sizes")

    def options(self) -> dict[str, object]:
        return {"batch_sizes": list(self.batch_sizes)}


class Parallel(Block):
    """The batch is replicated once per child; copy i runs child i and the head named after it."""

    @property
    def parallel_channels(self) -> int:
        return len(self.children)


class Average(Block):
    """The weighted average of the children's outputs; weights default to equal and are normalised to sum 1."""

    def __init__(self, *children: str | Block | Sequence, weights: Sequence[float] | None = None,
                 normalize_weights: bool = True) -> None:
        super().__init__(*children)
        weights = [1.0 / len(self)] * len(self) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self):
            raise ValueError(f"Average has {len(self)} children but {len(weights)} weights; give one per child.")
        total = sum(weights) if normalize_weights else 1.0
        if total == 0:
            raise ValueError(f"Average weights {weights} sum to 0 and cannot be normalised; pass "
                             "normalize_weights=False to use them as they are.")
        self.weights = tuple(w / total for w in weights)

    def options(self) -> dict[str, object]:
        return {"weights": list(self.weights)}


# which blocks each block may hold (AdapterHub's ALLOWED_NESTINGS, without MultiTask)
ALLOWED_NESTINGS: dict[type[Block], tuple[type, ...]] = {
    Stack: (str, Fuse, Split, Parallel, BatchSplit, Average),
    Fuse: (str, Stack),
    Split: (str, Split, Stack, BatchSplit, Average),
    Parallel: (str, Stack, BatchSplit, Average),
    BatchSplit: (str, Stack, Split, BatchSplit, Average),
    Average: (str, Stack, Split, BatchSplit),
}


def as_stack(children: Sequence) -> Stack:
    if isinstance(children, str | bytes) or not isinstance(children, Sequence):
        raise TypeError(f"a composition takes adapter names, blocks and lists of them, got {children!r}.")
    return Stack(*children)


def parse_setup(setup: str | Block | Sequence | None) -> Block | None:
    """A setup as a validated block: None or empty is no adapter, ``"a"`` is ``Stack("a")``, ``"a,b"`` and ``["a",
    "b"]`` are ``Stack("a", "b")``, and a list inside a list is a Fuse (``[["a", "b"]]``), as AdapterHub reads them."""
    if setup is None or (not isinstance(setup, Block) and not setup):
        return None
    if isinstance(setup, str):
        block = Stack(*setup.split(","))
    elif isinstance(setup, Block):
        block = setup
    elif isinstance(setup, Sequence):
        block = Stack(*(Fuse(*child) if isinstance(child, list | tuple) else child for child in setup))
    else:
        raise TypeError(f"an adapter setup is a name, a composition block or a list of names, got {setup!r}.")
    validate(block)
    return block


def validate(block: Block, level: int = 0) -> None:
    """AdapterHub's nesting rules: only the pairs in ALLOWED_NESTINGS, and below the second level only names and
    Stacks; a Stack below the top holds only names."""
    for child in block:
        if isinstance(child, str):
            if not child:
                raise ValueError(f"{block!r} holds an empty adapter name.")
            continue
        if not isinstance(child, ALLOWED_NESTINGS[type(block)]):
            allowed = ", ".join(t.__name__ for t in ALLOWED_NESTINGS[type(block)])
            raise ValueError(f"{type(child).__name__} cannot be nested in {type(block).__name__} ({block!r}); "
                             f"{type(block).__name__} holds only {allowed}.")
        if level >= 1 and (isinstance(block, Stack) or not isinstance(child, Stack)):
            raise ValueError(f"{block!r} is nested too deeply: below the second level a setup holds only adapter "
                             "names and Stacks of names.")
        validate(child, level + 1)


def unsupported(block: Block, site: str, kind: str, why: str = "") -> ValueError:
    return ValueError(f"{type(block).__name__} cannot compose {kind} adapters (at {site}){why}; see the "
                      "composition table in docs/methods.md.")


def only_stacks(block: str | Block) -> bool:
    return isinstance(block, str) or (isinstance(block, Stack) and all(only_stacks(child) for child in block))


# ---- cutting tensors along the batch or the sequence ---------------------------------------------------------------

def spans(block: Block, size: int) -> list[slice]:
    """The consecutive slices a BatchSplit, Parallel or Split cuts a dimension of ``size`` into."""
    if isinstance(block, Parallel):
        if size % len(block):
            raise ValueError(f"{block!r} runs {len(block)} copies of the batch, but {size} rows are not a multiple "
                             f"of {len(block)}.")
        sizes = (size // len(block),) * len(block)
    else:
        sizes, what = (block.batch_sizes, "batch") if isinstance(block, BatchSplit) else (block.splits, "sequence")
        if sum(sizes) != size:
            raise ValueError(f"{block!r}: the sizes sum to {sum(sizes)}, but the {what} has {size}; give sizes that "
                             f"add up to the {what} length.")
    bounds = list(itertools.accumulate(sizes, initial=0))
    return [slice(start, end) for start, end in itertools.pairwise(bounds)]


def dim_of(block: Block) -> int:
    return 1 if isinstance(block, Split) else 0


def cut(tensor: Tensor, dim: int, span: slice) -> Tensor:
    return tensor[span] if dim == 0 else tensor[:, span]


def identity_last(*tensors: Tensor) -> Tensor:
    return tensors[-1]


def slicewise(block: Block, functions: list[Callable | None], *tensors: Tensor) -> Tensor:
    """Run function i on slice i of every tensor (the last tensor passes through where there is no function) and
    join the results where they were cut."""
    dim = dim_of(block)
    parts = spans(block, tensors[0].shape[dim])
    return torch.cat([(fn or identity_last)(*(cut(t, dim, span) for t in tensors))
                      for fn, span in zip(functions, parts, strict=True)], dim=dim)


def all_or_none(block: Block, compiled: list, site: str, kind: str) -> None:
    """A combining block (Average, Fuse) needs every child at a site where any child is."""
    missing = [child for child, fn in zip(block, compiled, strict=True) if fn is None]
    if missing and len(missing) < len(block):
        raise unsupported(block, site, kind, f": {missing} have no module there while the other children have")


# ---- linear sites (LoRA, IA3): y = plug(x, y) ------------------------------------------------------------------

def linear(block: str | Block, modules: Modules, site: str) -> Callable | None:
    if isinstance(block, str):
        return modules[block].forward if block in modules else None
    compiled = [linear(child, modules, site) for child in block]
    present = [fn for fn in compiled if fn is not None]
    if not present:
        return None
    if isinstance(block, Stack):
        return present[0] if len(present) == 1 else partial(linear_stack, present)
    if isinstance(block, Average):
        return partial(linear_average, [(w, fn) for w, fn in zip(block.weights, compiled, strict=True) if fn])
    if isinstance(block, Fuse):
        raise unsupported(block, site, "LoRA/(IA)^3", ": AdapterFusion fuses bottleneck adapters")
    return partial(slicewise, block, compiled)


def linear_stack(functions: list[Callable], x: Tensor, y: Tensor) -> Tensor:
    """Each adapter updates the output in turn: LoRA updates add up, (IA)^3 scales multiply."""
    return reduce(lambda out, fn: fn(x, out), functions, y)


def linear_average(weighted: list[tuple[float, Callable]], x: Tensor, y: Tensor) -> Tensor:
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
        return modules[names[0]].forward  # one adapter here: its own complete step
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
        states.append(piece if step is None else step(piece, norm))
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
        return modules[block].forward if block in modules else None
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
        outs.append((k[span], v[span], rows) if fn is None else fn(k[span], v[span], rows, x[span]))
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


# ---- the embedding site (invertible adapters): x = plug(x), and inverse_plug before an LM head --------------------

def embedding(block: str | Block, modules: Modules, site: str) -> tuple[Callable, Callable] | None:
    if isinstance(block, str):
        return (modules[block].forward, modules[block].inverse) if block in modules else None
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


# ---- every site ----------------------------------------------------------------------------------------------------

def site_plugs(module: nn.Module, setup: Block | None, skip: set[str], path: str) -> dict[str, Callable | None]:
    """The plugs a site runs for ``setup``; adapters in ``skip`` (merged into the weights) are left out."""
    modules = {name: m for name, m in module.adapters.items() if name not in skip}
    plugs: dict[str, Callable | None] = {"plug": None}
    if isinstance(module, EmbeddingSite):
        plugs["inverse_plug"] = None
    if setup is None or not modules:
        return plugs
    if isinstance(module, SiteLinear):
        plugs["plug"] = linear(setup, modules, path)
    elif isinstance(module, ResidualSite):
        plugs["plug"] = residual(setup, modules, module.fusions, path)
    elif isinstance(module, PrefixSite):
        plugs["plug"] = prefix(setup, modules, path)
    elif isinstance(module, EmbeddingSite):
        pair = embedding(setup, modules, path)
        if pair is not None:
            plugs["plug"], plugs["inverse_plug"] = pair
    return plugs
