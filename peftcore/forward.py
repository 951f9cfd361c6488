"""Running a model's forward under its adapter setup: the installed plan, a Parallel setup's copies of the batch,
a mixed batch's per-row adapters, and what heads read.

A plain forward only reads the installed plan (setup.py). A forward that needs another plan or records values runs
alone: a mixed batch installs the plan of its grouping (compiled once per grouping and kept with the active plan)
for its span, a recording collects into the model's recorder (recording.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from peftcore import placement
from peftcore.composition import BASE, BatchSplit, Block, Parallel, spans, task_order, with_task_sizes
from peftcore.context import AdapterSetup, current_setup, head_names
from peftcore.head_types import AdapterHead, BiaffineParsingHead
from peftcore.heads import INPUT_ARGS
from peftcore.host import AdapterHost
from peftcore.methods.base import Method
from peftcore.setup import Plan, compile_plan, guard
from peftcore.sites import CURRENT_PADDING, MaskedLMHead

SPAN_ARGS = ("start_positions", "end_positions")  # question answering's targets, stacked to (B, 2)
PARSE_ARGS = BiaffineParsingHead.target_names  # a parser's targets, stacked to (B, T, 2)
LABEL_ARGS = ("labels", *SPAN_ARGS, *PARSE_ARGS)  # a forward's targets: they go to the loss, not encode
MIXED_PLANS_KEPT = 32  # groupings whose plans a model keeps (serving sees a few shapes again and again)


def run(host: AdapterHost, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any], gates: bool = False,
        fusions: bool = False, adapter_names: Sequence[str | None] | None = None,
        task_ids: Tensor | Sequence[int | str] | None = None) -> Any:
    """``encode`` under the active setup, or with one adapter per example (``adapter_names``); with gate values
    (``gates``) and fusion attentions (``fusions``) attached to each output when asked. ``task_ids`` give each
    example's task for the setup's MultiTask blocks.

    Returns one output (a ``Parallel`` setup's copies of the batch in it one after the other), or one per branch for
    a ``Parallel`` or ``BatchSplit`` whose branches have heads.
    ``labels`` (or ``start_positions`` and ``end_positions``, or ``labels_arcs`` and ``labels_rels``) among
    ``kwargs`` give each output the ``loss`` of the head that produced its logits (``add_losses``); they, and the
    heads' own inputs (``word_starts``), do not reach ``encode``.
    """
    kwargs, labels = split_labels(kwargs)
    kwargs, inputs = split_head_inputs(kwargs)
    context = None if torch.compiler.is_compiling() or adapter_names is not None else current_setup()
    if context is None:
        outputs = at_input_positions(run_setup(host, encode, args, kwargs, gates, fusions, adapter_names, task_ids,
                                                     inputs))
        return with_losses(host, outputs, labels, kwargs, adapter_names)
    with guard(host).changing():
        plan, head = context_plan(host, context)
        with swapped(host, plan, head):
            outputs = at_input_positions(run_setup(host, encode, args, kwargs, gates, fusions, None, task_ids, inputs))
            return with_losses(host, outputs, labels, kwargs, None)


def run_checkpointed(host: AdapterHost, layer: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
    """``layer(*args, **kwargs)`` keeping only its inputs: ``torch.utils.checkpoint`` (non-reentrant, the RNG state
    kept for dropout) recomputes it in the backward pass. A mixed batch, a MultiTask batch and an ``AdapterSetup``
    install their plan for the span of the forward only, so the recomputation installs the plan the forward ran
    (holding the model as a writer, as they do) when another is in force by then, and publishes the forward's
    padding (sites.py ``CURRENT_PADDING``) again. Each method of the layer runs
    ``checkpointed``, which keeps it from carrying values across layers."""
    plan, padding = host.plan, CURRENT_PADDING.padding
    methods = [module for module in layer.modules() if isinstance(module, Method)]

    def recompute(*args: Any) -> Any:
        with ExitStack() as stack:
            stack.callback(setattr, CURRENT_PADDING, "padding", CURRENT_PADDING.padding)
            CURRENT_PADDING.padding = padding  # the forward's batch, for gates over real tokens
            for method in methods:
                stack.enter_context(method.checkpointed())
            if host.plan is not plan:
                stack.enter_context(guard(host).changing())
                stack.callback(host.plan.install)
                plan.install()
            return layer(*args, **kwargs)

    return checkpoint(recompute, *args, use_reentrant=False, preserve_rng_state=True)


def at_input_positions(outputs: Any) -> Any:
    """Outputs whose per-token tensors are longer than the input (a prompt site inserted positions: the layers, the
    pooler and the heads ran on the longer sequence) cut back to the input's tokens, so they align with its labels:
    the last hidden state, the hidden states, span logits and per-token logits. Attentions keep every position."""
    if isinstance(outputs, list):
        outputs[:] = [at_input_positions(out) for out in outputs]
        return outputs
    positions = outputs.token_positions
    if positions is None:
        return outputs
    length = outputs.last_hidden_state.shape[1]

    def gather(t: Tensor) -> Tensor:
        index = positions.to(t.device).reshape(*positions.shape, *(1,) * (t.dim() - 2))
        return t.gather(1, index.expand(*positions.shape, *t.shape[2:]))

    per_token = {name: gather(getattr(outputs, name)) for name in ("last_hidden_state", "start_logits", "end_logits")
                 if getattr(outputs, name) is not None}
    if outputs.hidden_states is not None:
        per_token["hidden_states"] = tuple(gather(h) for h in outputs.hidden_states)
    logits = outputs.logits
    if logits is not None and logits.dim() == 3 and logits.shape[1] == length:
        per_token["logits"] = gather(logits)
    return dataclasses.replace(outputs, token_positions=None, **per_token)


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
              task_ids: Tensor | Sequence[int | str] | None, inputs: dict[str, Tensor]) -> Any:
    order = task_order(host.plan.setup, task_ids, adapter_names, lambda: batch_rows_of(args, kwargs))
    if adapter_names is None and order is None and not (gates or fusions):
        with nullcontext() if torch.compiler.is_compiling() else guard(host).running():
            return run_plan(host, host.plan, encode, args, kwargs, inputs)
    if inputs and (adapter_names is not None or order is not None):
        rows = "adapter_names" if adapter_names is not None else "task_ids"
        raise ValueError(f"{sorted(inputs)} with {rows}: a batch regrouped by rows runs heads that read only the "
                         "encoder's output; run a parsing head's adapter with AdapterSetup instead.")
    with guard(host).changing(), host.recorder.collecting(gates, fusions) as (scores, attentions):
        if adapter_names is not None:
            outputs = mixed_batch(host, encode, args, kwargs, adapter_names)
        elif order is not None:
            outputs = run_in_order(host, task_plan(host, order.counts), encode, args, kwargs, order.rows)
        else:
            with guard(host).running():
                outputs = run_plan(host, host.plan, encode, args, kwargs, inputs)
    for out in outputs if isinstance(outputs, list) else (outputs,):
        out.adapter_gating_scores, out.adapter_fusion_attentions = scores, attentions
    return outputs


def run_plan(host: AdapterHost, plan: Plan, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any],
             inputs: dict[str, Tensor]) -> Any:
    running = running_heads(host, plan)
    args, kwargs, learned = encoder_inputs(running, args, kwargs)
    shared = {name: kwargs[name] for head in running for name in getattr(head, "encoder_input_names", ())
              if kwargs.get(name) is not None}
    inputs = {**inputs, **learned, **shared}
    channels = 1 if plan.setup is None else plan.setup.parallel_channels
    if channels > 1:
        if plan.branch_heads is None and host.active_head is not None:
            raise ValueError(f"{plan.setup!r} runs {channels} copies of the batch, but one head is active "
                             f"({host.active_head!r}); give each branch a head named after its last adapter and "
                             "activate the setup again, or set active_head = None (AdapterHub refuses this too).")
        args, kwargs = replicate_batch(args, kwargs, channels)
    out = encode(*args, **kwargs)
    if plan.branch_heads is None:  # AdapterHub's: a Parallel setup's copies of the batch as one output, branch-major
        if running and reads_inputs(running[0]):  # a head that reads inputs of its own runs here, not in encode
            apply_head(host, out, running[0], inputs)
        return out
    rows = out.last_hidden_state.shape[0]
    slices = spans(plan.branch_heads, rows)
    outputs = BranchOutputs(slice_output(out, span) for span in slices)
    split = isinstance(plan.branch_heads, BatchSplit)  # each slice has its own rows; a Parallel branch has them all
    for output, head, span in zip(outputs, plan.branch_heads, slices, strict=True):
        apply_head(host, output, host.heads[head], {k: v[span] for k, v in inputs.items()} if split else inputs)
    return outputs


def running_heads(host: AdapterHost, plan: Plan) -> list[nn.Module]:
    """The heads this forward runs: each branch's, else the active adapter head or the model's own (if any)."""
    if plan.branch_heads is not None:
        return [host.heads[name] for name in plan.branch_heads]
    head = host.heads[host._active_head] if host._active_head is not None else host.head
    return [] if head is None else [head]


def reads_inputs(head: nn.Module) -> bool:
    """Whether ``head`` reads forward inputs of its own (a parser's ``word_starts``) or the encoder's (a pooling head's
    ``attention_mask``), so it runs after ``encode``."""
    return bool(getattr(head, "input_names", ()) or getattr(head, "encoder_input_names", ()))


def encoder_inputs(running: list[nn.Module], args: tuple, kwargs: dict[str, Any]
                   ) -> tuple[tuple, dict[str, Any], dict[str, Any]]:
    """The forward's inputs as the running heads have the encoder take them (multiple choice flattens its choices),
    and what the heads learn from them; heads that want them differently cannot run together."""
    layouts = {getattr(head, "input_layout", None) for head in running}
    if len(layouts) > 1:
        raise ValueError(f"the heads of this setup take their inputs in different layouts {sorted(map(str, layouts))} "
                         "(e.g. multiple choice's (batch, choices, tokens) beside (batch, tokens)); run them "
                         "separately.")
    return running[0].encoder_inputs(args, kwargs) if layouts - {None} else (args, kwargs, {})


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
    candidates = {repr(name): host.heads[name] for name in {host._active_head, *names} & set(host.heads)}
    if host.head is not None:
        candidates["of the model"] = host.head
    for name, head in candidates.items():
        if getattr(head, "input_layout", None) is not None or reads_inputs(head):
            raise ValueError(f"head {name} takes other inputs than (batch, tokens) or inputs of its own (multiple "
                             "choice, parsing), which a mixed batch does not give it; run its adapter with "
                             "AdapterSetup instead.")
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
    labels, start, end, arcs, rels = (kwargs.get(key) for key in LABEL_ARGS)
    kwargs = {key: value for key, value in kwargs.items() if key not in LABEL_ARGS}
    if sum(any(value is not None for value in group) for group in ((labels,), (start, end), (arcs, rels))) > 1:
        raise ValueError("pass the targets of one head: labels, or start_positions and end_positions (question "
                         "answering), or labels_arcs and labels_rels (dependency parsing).")
    if (start is None) != (end is None):
        raise ValueError("question answering takes start_positions and end_positions together.")
    if (arcs is None) != (rels is None):
        raise ValueError("dependency parsing takes labels_arcs and labels_rels together.")
    if start is not None:
        return kwargs, torch.stack((start.reshape(-1), end.reshape(-1)), dim=-1)
    if arcs is not None:
        if arcs.shape != rels.shape:
            raise ValueError(f"labels_arcs has shape {tuple(arcs.shape)}, labels_rels {tuple(rels.shape)}; give one "
                             "head and one relation per word slot: (batch, tokens) each.")
        return kwargs, torch.stack((arcs, rels), dim=-1)
    return kwargs, labels


def split_head_inputs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A forward's ``kwargs`` without the inputs heads read themselves (``word_starts``), and those inputs."""
    if not any(key in kwargs for key in INPUT_ARGS):
        return kwargs, {}
    inputs = {key: kwargs[key] for key in INPUT_ARGS if kwargs.get(key) is not None}
    return {key: value for key, value in kwargs.items() if key not in INPUT_ARGS}, inputs


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
        attention_mask = None if attention_mask is None else attention_mask.repeat(
            copies, *(1,) * (attention_mask.dim() - 1))
    heads = [current_head(host, host.head)] * len(outputs) if branches is None else [host.heads[b] for b in branches]
    for out, head in zip(outputs, heads, strict=True):
        if head is None:
            raise ValueError("labels given, but the model has no head to compute a loss with; add a head (and "
                             "activate it), or build the model with a task head.")
        out.loss = (host.head_loss(out.logits, labels) if head is host.head
                    else head.output_loss(out, labels, attention_mask))


def apply_head(host: AdapterHost, out: Any, head: nn.Module, inputs: dict[str, Tensor] | None = None) -> Any:
    """Predictions of ``head`` on an output's last hidden state (span logits split for question answering), an
    adapter head given the forward's ``inputs`` for heads; a language-model head decodes through the embedding site's
    inverse, where invertible adapters undo themselves."""
    x = out.last_hidden_state
    if isinstance(head, MaskedLMHead):
        out.logits = head.decoder(placement.embedding_site(host).inverse(head.transform(x)))
    elif isinstance(head, AdapterHead):
        head.predict(out, inputs or {})
    else:  # the model's own head, given the inputs it names (a multiple-choice head: num_choices)
        out.logits = head(x, out.pooler_output, **{name: inputs[name] for name in getattr(head, "input_names", ())})
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
