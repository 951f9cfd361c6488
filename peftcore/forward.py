"""Running a model's forward under its adapter setup: the installed plan, a Parallel setup's copies of the batch,
a mixed batch's per-row adapters, and what heads read.

A plain forward only reads the installed plan (setup.py). A forward that needs another plan or records values runs
alone: a mixed batch installs the plan of its grouping (compiled once per grouping and kept with the active plan)
for its span, a recording collects into the model's recorder (recording.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from peftcore import placement
from peftcore.composition import BASE, BatchSplit, Block, MultiTask, Parallel, spans, walk, with_task_sizes
from peftcore.context import AdapterSetup, current_setup, head_names
from peftcore.host import AdapterHost
from peftcore.setup import Plan, compile_plan, guard
from peftcore.sites import MaskedLMHead

LABEL_ARGS = ("labels", "start_positions", "end_positions")  # a forward's targets: they go to the loss, not encode
MIXED_PLANS_KEPT = 32  # groupings whose plans a model keeps (serving sees a few shapes again and again)


def run(host: AdapterHost, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any], gates: bool = False,
        fusions: bool = False, adapter_names: Sequence[str | None] | None = None,
        task_ids: Tensor | Sequence[int | str] | None = None) -> Any:
    """``encode`` under the active setup, or with one adapter per example (``adapter_names``); with gate values
    (``gates``) and fusion attentions (``fusions``) attached to each output when asked. ``task_ids`` give each
    example's task for the setup's MultiTask blocks.

    Returns one output (a ``Parallel`` setup's copies of the batch in it one after the other), or one per branch for
    a ``Parallel`` or ``BatchSplit`` whose branches have heads.
    ``labels`` (or ``start_positions`` and ``end_positions``) among ``kwargs`` give each output the ``loss`` of the
    head that produced its logits (``add_losses``); they do not reach ``encode``.
    """
    kwargs, labels = split_labels(kwargs)
    context = None if torch.compiler.is_compiling() or adapter_names is not None else current_setup()
    if context is None:
        return with_losses(host, run_setup(host, encode, args, kwargs, gates, fusions, adapter_names, task_ids),
                           labels, kwargs, adapter_names)
    with guard(host).changing():
        plan, head = context_plan(host, context)
        with swapped(host, plan, head):
            return with_losses(host, run_setup(host, encode, args, kwargs, gates, fusions, None, task_ids), labels,
                               kwargs, None)


def with_losses(host: AdapterHost, outputs: Any, labels: Tensor | None, kwargs: dict[str, Any],
                adapter_names: Sequence[str | None] | None) -> Any:
    if labels is not None:
        if adapter_names is not None:
            raise ValueError("labels with adapter_names: the rows of a mixed batch have different heads; compute "
                             "each adapter's loss from its rows' logits.")
        add_losses(host, outputs, labels, kwargs.get("attention_mask"))
    return outputs


def run_setup(host: AdapterHost, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any], gates: bool,
              fusions: bool, adapter_names: Sequence[str | None] | None,
              task_ids: Tensor | Sequence[int | str] | None) -> Any:
    order = task_order(host.plan.setup, task_ids, adapter_names, args, kwargs)
    if adapter_names is None and order is None and not (gates or fusions):
        with nullcontext() if torch.compiler.is_compiling() else guard(host).running():
            return run_plan(host, host.plan, encode, args, kwargs)
    with guard(host).changing(), host.recorder.collecting(gates, fusions) as (scores, attentions):
        if adapter_names is not None:
            outputs = mixed_batch(host, encode, args, kwargs, adapter_names)
        elif order is not None:
            outputs = run_in_order(host, task_plan(host, order.counts), encode, args, kwargs, order.rows)
        else:
            with guard(host).running():
                outputs = run_plan(host, host.plan, encode, args, kwargs)
    for out in outputs if isinstance(outputs, list) else (outputs,):
        out.adapter_gating_scores, out.adapter_fusion_attentions = scores, attentions
    return outputs


def run_plan(host: AdapterHost, plan: Plan, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    channels = 1 if plan.setup is None else plan.setup.parallel_channels
    if channels > 1:
        if plan.branch_heads is None and host.active_head is not None:
            raise ValueError(f"{plan.setup!r} runs {channels} copies of the batch, but one head is active "
                             f"({host.active_head!r}); give each branch a head named after its last adapter and "
                             "activate the setup again, or set active_head = None (AdapterHub refuses this too).")
        args, kwargs = replicate_batch(args, kwargs, channels)
    out = encode(*args, **kwargs)
    if plan.branch_heads is None:  # AdapterHub's: a Parallel setup's copies of the batch as one output, branch-major
        return out
    rows = out.last_hidden_state.shape[0]
    outputs = BranchOutputs(slice_output(out, span) for span in spans(plan.branch_heads, rows))
    for output, head in zip(outputs, plan.branch_heads, strict=True):
        apply_head(host, output, host.heads[head])
    return outputs


class BranchOutputs(list):
    """One output per branch (or slice) with a head of its own, in order; ``loss`` (also ``outputs["loss"]``) is
    the sum of their losses when the forward had labels, as AdapterHub's ``MultiHeadOutput`` gives it."""

    @property
    def loss(self) -> Tensor | None:
        losses = [out.loss for out in self]
        return None if any(loss is None for loss in losses) else sum(losses)

    @property
    def head_outputs(self) -> list:
        return list(self)

    def __getitem__(self, key: Any) -> Any:
        return getattr(self, key) if isinstance(key, str) else super().__getitem__(key)


def mixed_batch(host: AdapterHost, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any],
                adapter_names: Sequence[str | None]) -> Any:
    """One forward in which example i runs adapter ``adapter_names[i]`` (None or ``"__base__"``: no adapter).

    The batch is grouped by adapter, each site runs every adapter on its rows only (a BatchSplit), and the output
    comes back in the caller's order; each row gets its adapter's head when every named adapter has one.
    """
    names = [BASE if name is None else name for name in adapter_names]
    rows = batch_rows_of(args, kwargs)
    if rows == 0:
        raise ValueError("the batch is empty; a mixed batch needs at least one example (and one adapter name each).")
    if len(names) != rows:
        raise ValueError(f"adapter_names has {len(names)} entries, the batch has {rows} rows; name one adapter "
                         "(or None) per example.")
    groups = list(dict.fromkeys(names))
    index = torch.tensor([groups.index(name) for name in names])
    plan = mixed_plan(host, tuple(groups), tuple(torch.bincount(index, minlength=len(groups)).tolist()))
    return run_in_order(host, plan, encode, args, kwargs, torch.argsort(index, stable=True))


def run_in_order(host: AdapterHost, plan: Plan, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any],
                 order: Tensor) -> Any:
    """``encode`` under ``plan`` (a BatchSplit over groups of rows) on the batch's rows taken in ``order``, each
    slice through its own head where the plan has heads per slice; the output comes back in the caller's order."""
    permuted = bool((order != torch.arange(len(order))).any())
    if permuted:
        args, kwargs = reorder_batch(args, kwargs, order)
    with swapped(host, plan, host._active_head), guard(host).running():
        out = encode(*args, **kwargs)
    if plan.branch_heads is not None:
        mixed_heads(host, out, plan.branch_heads)
    return slice_output(out, torch.argsort(order)) if permuted else out


@contextmanager
def swapped(host: AdapterHost, plan: Plan, head: str | None) -> Iterator[None]:
    """``plan`` and the single active ``head`` in force for the span of one forward; the caller holds the model's
    guard as a writer, so no other forward sees them."""
    active, active_head = host.plan, host._active_head
    host.plan, host._active_head = plan, head
    plan.install()
    try:
        yield
    finally:
        host.plan, host._active_head = active, active_head
        active.install()


def context_plan(host: AdapterHost, context: AdapterSetup) -> tuple[Plan, str | None]:
    """The plan and single head of an ``AdapterSetup``, compiled once per setup and kept with the active plan. Its
    heads take over where the model has adapter heads (as in AdapterHub; unknown ones are refused), else the active
    head stays."""
    heads = context.head_setup if len(host.heads) else None
    for head in head_names(heads):
        if head not in host.heads:
            raise ValueError(f"{context!r} names head {head!r}, which this model does not have (it has "
                             f"{sorted(host.heads)}); pass head_setup= to AdapterSetup.")
    branch_heads = heads if isinstance(heads, Block) else None
    plan = kept_plan(host, ("context", context.adapter_setup, heads),
                     lambda: compile_plan(host, context.adapter_setup, branch_heads))
    single = host._active_head if heads is None else heads if isinstance(heads, str) else None
    return plan, single


def kept_plan(host: AdapterHost, key: tuple, compile: Callable[[], Plan]) -> Plan:
    """The plan kept under ``key`` with the active plan (the oldest of ``MIXED_PLANS_KEPT`` makes room), compiled
    by ``compile`` the first time."""
    cache = host.plan.mixed
    if key not in cache:
        plan = compile()
        if len(cache) >= MIXED_PLANS_KEPT:
            del cache[next(iter(cache))]
        cache[key] = plan
    return cache[key]


def mixed_plan(host: AdapterHost, groups: tuple[str, ...], sizes: tuple[int, ...]) -> Plan:
    """The plan of a mixed batch's grouping: a BatchSplit over the groups, run padded (the groups are batch rows,
    which packing would merge), the heads left to ``mixed_heads``; compiled once per grouping."""
    def compile_grouping() -> Plan:
        merged = sorted(placement.merged(host))
        if merged:
            raise ValueError(f"adapters {merged} are merged into the weights and would act on every row; "
                             "reset_adapter() before running mixed batches.")
        setup = BatchSplit(*groups, batch_sizes=list(sizes))
        named = [name for name in groups if name != BASE]
        heads = setup if named and all(name in host.heads for name in named) else None
        return compile_plan(host, setup, branch_heads=heads, token_wise=False)

    return kept_plan(host, (groups, sizes), compile_grouping)


class TaskOrder(NamedTuple):
    """A MultiTask forward's rows: the batch's row indices sorted by task (stable), and the rows of each task."""

    rows: Tensor
    counts: tuple[int, ...]


def task_order(setup: Block | None, task_ids: Tensor | Sequence[int | str] | None,
               adapter_names: Sequence[str | None] | None, args: tuple, kwargs: dict[str, Any]) -> TaskOrder | None:
    """Where the setup's MultiTask blocks send each row, from ``task_ids`` (one per example: an index into each
    MultiTask's children, or a child's adapter name, as AdapterHub takes them); None without MultiTask, where
    ``task_ids`` are ignored, as in AdapterHub (a trainer's batches carry them whatever setup is active). Checked
    before anything runs."""
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
    ids = task_indices(blocks, task_ids, batch_rows_of(args, kwargs))
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


def task_plan(host: AdapterHost, counts: tuple[int, ...]) -> Plan:
    """The plan of the active setup on a batch sorted by task: each MultiTask a BatchSplit over ``counts``, run
    padded (the tasks are batch rows, which packing would merge); compiled once per ``counts``."""
    return kept_plan(host, ("tasks", counts), lambda: compile_plan(
        host, with_task_sizes(host.plan.setup, counts), host.plan.branch_heads, token_wise=False))


def mixed_heads(host: AdapterHost, out: Any, setup: BatchSplit) -> None:
    """Each group's rows through its adapter's head (the model's own head for rows without adapter)."""
    pieces = []
    for name, span in zip(setup, spans(setup, out.last_hidden_state.shape[0]), strict=True):
        head = host.heads[name] if name != BASE else host.head
        if head is None:
            raise ValueError("rows without adapter need the model's own head, and this model has none; name an "
                             "adapter for every row, or run those rows separately.")
        pieces.append(apply_head(host, slice_output(out, span), head))
    shapes = {tuple(piece.logits.shape[1:]) for piece in pieces}
    if len(shapes) > 1:
        raise ValueError(f"the adapters' heads give outputs of different shapes {sorted(shapes)}; run "
                         "adapters whose heads differ in separate batches.")
    for field in ("logits", "start_logits", "end_logits"):
        values = [getattr(piece, field) for piece in pieces]
        setattr(out, field, None if values[0] is None else torch.cat(values))


def current_head(host: AdapterHost, model_head: nn.Module | None) -> nn.Module | None:
    """The active adapter head if one is active, else the model's own head (or None); None too while each slice of
    the batch has its own head (they run after the encoder)."""
    if host.plan.branch_heads is not None:
        return None
    return host.heads[host.active_head] if host.active_head is not None else model_head


def split_labels(kwargs: dict[str, Any]) -> tuple[dict[str, Any], Tensor | None]:
    """A forward's ``kwargs`` without its targets, and the targets: ``labels``, or for question answering
    ``start_positions`` and ``end_positions`` stacked to (B, 2), as a span head's loss reads them (None: no
    targets)."""
    if not any(key in kwargs for key in LABEL_ARGS):  # most forwards: nothing to take out, no copy (torch.compile
        # traces this; it cannot trace dict_keys.isdisjoint)
        return kwargs, None
    labels, start, end = (kwargs.get(key) for key in LABEL_ARGS)
    kwargs = {key: value for key, value in kwargs.items() if key not in LABEL_ARGS}
    if start is None and end is None:
        return kwargs, labels
    if start is None or end is None or labels is not None:
        raise ValueError("question answering takes start_positions and end_positions together, without labels.")
    return kwargs, torch.stack((start.reshape(-1), end.reshape(-1)), dim=-1)


def add_losses(host: AdapterHost, outputs: Any, labels: Tensor, attention_mask: Tensor | None) -> None:
    """Set each output's ``loss``: its head's loss (an adapter head's own ``loss``, the model's ``head_loss`` for its
    own head) of its logits against ``labels``; a Parallel setup's branches each against all of ``labels`` (one
    output holding every branch's copy of the batch: against ``labels`` once per copy)."""
    outputs = outputs if isinstance(outputs, list) else [outputs]
    branches = host.plan.branch_heads
    if branches is not None and not isinstance(branches, Parallel):
        raise ValueError("labels with a BatchSplit: each slice has its own head and rows; compute each slice's loss "
                         "from its logits.")
    copies = 1 if branches is not None or host.plan.setup is None else host.plan.setup.parallel_channels
    if copies > 1:
        labels = labels.repeat(copies, *(1,) * (labels.dim() - 1))
        attention_mask = None if attention_mask is None else attention_mask.repeat(copies, 1)
    heads = [current_head(host, host.head)] * len(outputs) if branches is None else [host.heads[b] for b in branches]
    for out, head in zip(outputs, heads, strict=True):
        if head is None:
            raise ValueError("labels given, but the model has no head to compute a loss with; add a head (and "
                             "activate it), or build the model with a task head.")
        out.loss = (host.head_loss(out.logits, labels) if head is host.head
                    else head.loss(out.logits, labels, attention_mask))


def apply_head(host: AdapterHost, out: Any, head: nn.Module) -> Any:
    """Logits of ``head`` on an output's last hidden state (span logits split for question answering); a
    language-model head decodes through the embedding site's inverse, where invertible adapters undo themselves."""
    x = out.last_hidden_state
    if isinstance(head, MaskedLMHead):
        out.logits = head.decoder(placement.embedding_site(host).inverse(head.transform(x)))
    else:
        out.logits = head(x, out.pooler_output)
    if getattr(head, "predicts_spans", False):
        out.start_logits, out.end_logits = (t.squeeze(-1).contiguous() for t in out.logits.split(1, dim=-1))
    return out


# ---- the batch dimension of a forward's inputs and outputs --------------------------------------------------------

def batch_rows_of(args: tuple, kwargs: dict[str, Any]) -> int:
    """The batch size of a forward's inputs: the first dimension of its first tensor."""
    tensor = next((value for value in (*args, *kwargs.values()) if isinstance(value, Tensor)), None)
    if tensor is None:
        raise ValueError("the forward has no tensor input to take a batch from.")
    return tensor.shape[0]


def map_batch(args: tuple, kwargs: dict[str, Any], fn: Callable[[Tensor], Tensor]) -> tuple[tuple, dict[str, Any]]:
    """Apply ``fn`` to every input tensor whose first dimension is the batch (broadcast ones stay as they are)."""
    rows = batch_rows_of(args, kwargs)

    def apply(value: Any) -> Any:
        return fn(value) if isinstance(value, Tensor) and value.dim() and value.shape[0] == rows else value

    return tuple(apply(value) for value in args), {key: apply(value) for key, value in kwargs.items()}


def replicate_batch(args: tuple, kwargs: dict[str, Any], copies: int) -> tuple[tuple, dict[str, Any]]:
    return map_batch(args, kwargs, lambda t: t.repeat(copies, *(1,) * (t.dim() - 1)))


def reorder_batch(args: tuple, kwargs: dict[str, Any], order: Tensor) -> tuple[tuple, dict[str, Any]]:
    return map_batch(args, kwargs, lambda t: t[order.to(t.device)])


def slice_output(out: Any, rows: slice | Tensor) -> Any:
    """An output dataclass with every per-example tensor cut to ``rows`` (a slice or an index tensor)."""
    def cut(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value[rows if isinstance(rows, slice) else rows.to(value.device)]
        if isinstance(value, tuple):
            return tuple(cut(item) for item in value)
        return value

    return dataclasses.replace(out, **{field.name: cut(getattr(out, field.name)) for field in dataclasses.fields(out)})
