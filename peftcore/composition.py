"""Adapter composition: the blocks (Stack, Fuse, Split, BatchSplit, Parallel, Average, MultiTask) and their nesting
rules.

A setup is a tree of blocks over adapter names. ``set_active_adapters`` parses it once and compiles it (plugs.py),
for every site, into one closure that runs the adapters present there in the tree's order; nothing is looked up
during forward.

    Stack(a, b)                     a, then b on a's output (MAD-X: Stack("lang_en", "task"))
    Fuse(a, b)                      AdapterFusion attends over the adapters' outputs (peftcore.fusion)
    Split(a, b, splits=[s, t])      the sequence is cut at the given lengths; each part runs its own adapter
    BatchSplit(a, b, batch_sizes=[m, n])   each adapter takes a slice of the batch
    Parallel(a, b)                  the batch is replicated; branch i runs adapter i and its head
    Average(a, b, weights=[u, w])   the weighted average of the adapters' outputs
    MultiTask(a, b)                 row i runs the adapter of its task: forward(..., task_ids=[0, 1, 1] or names)

Semantics and nesting rules are AdapterHub's (``adapters.composition`` 1.3.0), with its defects fixed; a test shows
each difference: Stack adds LoRA updates (AdapterHub multiplies the low-rank maps); Average weighs once (AdapterHub
divides the weighted sum by N again); BatchSplit, Parallel and Split treat each slice exactly as if it ran alone
(AdapterHub applies the first child's pre-processing and the last child's post-processing to every slice, and fails
when a child has no module where the others have); unsupported combinations raise (AdapterHub silently runs only the
first invertible adapter of a setup).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

BASE = "__base__"  # the name mixed batches give rows that run the model without any adapter


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
    """An int is one size per child (AdapterHub's); every size must be an int >= 0 (a child given 0 runs on nothing,
    as in AdapterHub)."""
    sizes = (sizes,) * len(block) if isinstance(sizes, int) else tuple(sizes)
    if len(sizes) != len(block) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise ValueError(f"{type(block).__name__} needs one int >= 0 in {field} per child ({len(block)}), got "
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


class MultiTask(Block):
    """Each row of the batch runs the child of its task, given per forward as ``task_ids`` (child indices or adapter
    names): the rows are grouped by task and run as a BatchSplit, then put back in order (AdapterHub's)."""


def with_task_sizes(block: str | Block, counts: Sequence[int]) -> str | Block:
    """``block`` with each MultiTask replaced by the BatchSplit of its children over ``counts`` rows per task: what
    it runs on a batch whose rows are sorted by task. Every task id is below each MultiTask's width (forward.py
    checks), so the counts past it are zeros."""
    if isinstance(block, str):
        return block
    children = tuple(with_task_sizes(child, counts) for child in block)
    if isinstance(block, MultiTask):
        return BatchSplit(*children, batch_sizes=list(counts[:len(children)]))
    rebuilt = copy.copy(block)
    rebuilt.children = children
    return rebuilt


class Average(Block):
    """The weighted average of the children's outputs; weights default to equal and are normalised to sum 1."""

    def __init__(self, *children: str | Block | Sequence, weights: Sequence[float] | None = None,
                 normalize_weights: bool = True) -> None:
        super().__init__(*children)
        weights = [1.0 / len(self)] * len(self) if weights is None else list(weights)
        if len(weights) != len(self):
            raise ValueError(f"Average has {len(self)} children but {len(weights)} weights; give one per child.")
        self.weights = normalized(weights, normalize_weights)

    def options(self) -> dict[str, object]:
        return {"weights": list(self.weights)}


def normalized(weights: Sequence[float], normalize: bool = True) -> tuple[float, ...]:
    """The weights as floats, divided by their sum when ``normalize`` (AdapterHub's ``normalize_weights``)."""
    weights = [float(w) for w in weights]
    total = sum(weights) if normalize else 1.0
    if total == 0:
        raise ValueError(f"weights {weights} sum to 0 and cannot be normalised; pass normalize_weights=False to use "
                         "them as they are.")
    return tuple(w / total for w in weights)


# which blocks each block may hold (AdapterHub's ALLOWED_NESTINGS)
ALLOWED_NESTINGS: dict[type[Block], tuple[type, ...]] = {
    Stack: (str, Fuse, Split, Parallel, BatchSplit, Average, MultiTask),
    Fuse: (str, Stack),
    Split: (str, Split, Stack, BatchSplit, Average),
    Parallel: (str, Stack, BatchSplit, Average),
    BatchSplit: (str, Stack, Split, BatchSplit, Average),
    Average: (str, Stack, Split, BatchSplit),
    MultiTask: (str, Stack, Average, Fuse),
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


# ---- cutting tensors along the batch or the sequence ---------------------------------------------------------------

class SizesError(ValueError, IndexError):
    """A BatchSplit's or Split's sizes that do not add up to the rows or tokens they cut: a wrong argument, and the
    IndexError AdapterHub raises for it."""


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
            raise SizesError(f"{block!r}: the sizes sum to {sum(sizes)}, but the {what} has {size}; give sizes that "
                             f"add up to the {what} length.")
    bounds = list(itertools.accumulate(sizes, initial=0))
    return [slice(start, end) for start, end in itertools.pairwise(bounds)]


BLOCKS: dict[str, type[Block]] = {cls.__name__: cls for cls in (Stack, Fuse, Split, BatchSplit, Parallel, Average,
                                                                  MultiTask)}


def to_json(block: Block | str) -> dict[str, Any] | str:
    """A setup as JSON: an adapter name, or ``{"block": "Stack", "children": [...], "options": {...}}``."""
    if isinstance(block, str):
        return block
    return {"block": type(block).__name__, "children": [to_json(child) for child in block],
            "options": block.options()}


def from_json(data: Any) -> Block | str:
    """The setup ``to_json`` wrote; anything else is a ValueError saying what it found."""
    if isinstance(data, str):
        return data
    if not isinstance(data, dict) or data.get("block") not in BLOCKS or not isinstance(data.get("children"), list):
        raise ValueError(f"an adapter setup in JSON is a name or {{'block': one of {sorted(BLOCKS)}, 'children': "
                         f"[...], 'options': {{...}}}}, got {data!r}.")
    options = dict(data.get("options") or {})
    if data["block"] == "Average":
        options["normalize_weights"] = False  # the weights were normalised when the block was made
    return BLOCKS[data["block"]](*(from_json(child) for child in data["children"]), **options)


def walk(block: Block | str | None) -> Iterator[Block]:
    """Every block of a setup tree, the root first."""
    if isinstance(block, Block):
        yield block
        for child in block:
            yield from walk(child)


def fusion_names(block: Block | None) -> list[str]:
    """The fusion layers a setup runs: the name of every Fuse in it."""
    return [b.name for b in walk(block) if isinstance(b, Fuse)]


def as_fuse(adapter_names: Fuse | Sequence[str] | str, name: str | None = None) -> Fuse:
    """``Fuse("a", "b")``, ``["a", "b"]`` and ``"a,b"`` all name the fusion of a and b."""
    if isinstance(adapter_names, Fuse):
        return adapter_names if name is None else Fuse(*adapter_names, name=name)
    names = adapter_names.split(",") if isinstance(adapter_names, str) else list(adapter_names)
    return Fuse(*names, name=name)


def head_setup(block: Block) -> str | Block | None:
    """The heads a setup activates (AdapterHub's parse_heads_from_composition): the last adapter of the final Stack
    element, one head per branch of a Parallel, one per slice of a BatchSplit."""
    final = block[-1] if isinstance(block, Stack) else block
    if isinstance(final, str):
        return final
    lasts = [child if isinstance(child, str) else child.last() for child in final]
    if isinstance(final, Parallel):
        return Parallel(*lasts)
    if isinstance(final, BatchSplit):
        return BatchSplit(*lasts, batch_sizes=final.batch_sizes)
    return None


class TaskOrder(NamedTuple):
    """A MultiTask forward's rows: the batch's row indices sorted by task (stable), and the rows of each task."""

    rows: Tensor
    counts: tuple[int, ...]


def task_order(setup: Block | None, task_ids: Tensor | Sequence[int | str] | None,
               adapter_names: Sequence[str | None] | None, rows: Callable[[], int]) -> TaskOrder | None:
    """Where the setup's MultiTask blocks send each of a batch's rows (``rows()`` counts them, asked only where there
    is a MultiTask), from ``task_ids`` (one per example: an index into each MultiTask's children, or a child's
    adapter name, as AdapterHub takes them); None without MultiTask, where ``task_ids`` are ignored, as in
    AdapterHub (a trainer's batches carry them whatever setup is active). Checked before anything runs."""
    blocks = [block for block in walk(setup) if isinstance(block, MultiTask)]
    if not blocks:
        return None
    if task_ids is None:
        raise ValueError(f"the active setup {setup!r} holds a MultiTask block, which needs each example's task: "
                         "pass task_ids= to the forward (one adapter index or name per example).")
    if adapter_names is not None:
        raise ValueError("task_ids and adapter_names both choose each example's adapters; pass only one of them.")
    if setup.parallel_channels > 1:
        raise ValueError(f"{setup!r} replicates the batch, so task_ids cannot name one task per example; run the "
                         "MultiTask setup without Parallel.")
    ids = task_indices(blocks, task_ids, rows())
    counts = torch.bincount(ids, minlength=max(len(block) for block in blocks))
    return TaskOrder(torch.argsort(ids, stable=True), tuple(counts.tolist()))


def task_indices(blocks: list[MultiTask], task_ids: Tensor | Sequence[int | str], rows: int) -> Tensor:
    """``task_ids`` as a (rows,) tensor of child indices valid in every MultiTask block; a clear error otherwise."""
    if isinstance(task_ids, Tensor):
        if task_ids.is_floating_point() or task_ids.is_complex() or task_ids.dtype == torch.bool:
            raise ValueError(f"task_ids are {task_ids.dtype}; pass integer task indices (torch.long) or adapter "
                             "names.")
        ids = task_ids.detach().to("cpu", torch.long)
    elif isinstance(task_ids, Sequence) and not isinstance(task_ids, str) and all(
            isinstance(task, str) for task in task_ids) and len(task_ids):
        ids = torch.tensor(named_tasks(blocks, task_ids))
    elif isinstance(task_ids, Sequence) and not isinstance(task_ids, str) and all(
            isinstance(task, int) and not isinstance(task, bool) for task in task_ids):
        ids = torch.tensor(list(task_ids), dtype=torch.long)
    else:
        raise TypeError(f"task_ids must be a tensor of task indices or a list of indices or of adapter names, got "
                        f"{task_ids!r}.")
    if ids.shape != (rows,):
        raise ValueError(f"task_ids has shape {tuple(ids.shape)}, the batch has {rows} rows; give one task per "
                         "example.")
    width = min(len(block) for block in blocks)
    if rows and (ids.min() < 0 or ids.max() >= width):
        raise ValueError(f"task_ids {ids.tolist()} are out of range: the MultiTask block has {width} tasks, "
                         f"indices 0..{width - 1}.")
    return ids


def named_tasks(blocks: list[MultiTask], names: Sequence[str]) -> list[int]:
    """Adapter names as indices of the MultiTask children they name; every MultiTask must order them alike."""
    indices = None
    for block in blocks:
        unknown = sorted({name for name in names if name not in block.children})
        if unknown:
            raise ValueError(f"task_ids name {unknown}, which {block!r} does not hold; name its children.")
        these = [block.children.index(name) for name in names]
        if indices is not None and these != indices:
            raise ValueError(f"the setup's MultiTask blocks order the tasks {names} differently; pass task "
                             "indices instead of names.")
        indices = these
    return indices
