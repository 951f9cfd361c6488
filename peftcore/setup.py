"""The active setup: compiled once into a ``Plan`` (every site's plugs, the heads per slice of the batch, whether a
padded batch may run unpadded), installed into the sites, and guarded so that each forward runs under one whole
plan.

Forwards read the installed plan; installing another (``set_active_adapters``, and for the span of one forward a
mixed batch's plan or a recording) waits until running forwards end and holds new ones off, so a forward never sees
half of one setup and half of another, and several threads may run forwards on one model. Changing the plan from
inside a forward of the same model raises.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from peftcore import placement
from peftcore.composition import BASE, BatchSplit, Block, Parallel, Split, Stack, walk, with_task_sizes
from peftcore.host import AdapterHost
from peftcore.plugs import site_plugs

Plugs = tuple[tuple[nn.Module, str, Callable | bool | None], ...]  # (site module, plug attribute, plug)


@dataclass(frozen=True)
class Plan:
    """A setup ready to run: what every site runs, which heads read which rows, and the layout."""

    setup: Block | None
    plugs: Plugs
    branch_heads: Block | None = None  # Parallel/BatchSplit of head names: one head per slice of the batch
    token_wise: bool = True  # every module acts on each token alone: a padded batch may run unpadded
    skip_layers: frozenset[int] = frozenset()  # AdapterDrop: layers whose sites run no adapter
    mixed: dict[tuple, Plan] = field(default_factory=dict, compare=False, repr=False)  # mixed batches' plans, made
    # under this one; a model's every change compiles a new active plan, so they never outlive what they ran

    def install(self) -> None:
        for module, attribute, plug in self.plugs:
            setattr(module, attribute, plug)


def compile_plan(host: AdapterHost, setup: Block | None, branch_heads: Block | None = None,
                 token_wise: bool | None = None, merged: set[str] | None = None,
                 skip_layers: frozenset[int] | None = None) -> Plan:
    """Every site's plugs for a setup, leaving out the adapters merged into the weights (``merged``: those the
    model will have merged when the plan is installed; default: those merged now) and every adapter in the layers
    ``skip_layers`` (AdapterDrop; default: those the active plan skips); raises, before anything changes, when the
    setup cannot run."""
    merged = placement.merged(host) if merged is None else merged
    skip_layers = host.plan.skip_layers if skip_layers is None else skip_layers
    if setup is not None:
        for name in setup.flatten():
            if name != BASE:
                placement.check_known(host, name)
        composed = sorted(set(setup.flatten()) & merged)
        if composed and not all(isinstance(b, Stack) for b in walk(setup)):
            raise ValueError(f"adapters {composed} are merged into the weights and act on every row alike; "
                             f"reset_adapter() before composing them with {setup!r}.")
        if composed and skip_layers:
            raise ValueError(f"adapters {composed} are merged into the weights of every layer, so no layer can skip "
                             "them; reset_adapter() before skip_layers.")
    runs = as_batch_splits(setup)
    plugs = tuple((site.module, attribute, plug) for site in host.sites_found
                  for attribute, plug in site_plugs(site.module, None if site.layer in skip_layers else runs, merged,
                                                    site.path).items())
    return Plan(setup, plugs, branch_heads, is_token_wise(host, runs) if token_wise is None else token_wise,
                skip_layers=skip_layers)


def as_batch_splits(setup: Block | None) -> Block | None:
    """``setup`` as its sites run it: each MultiTask a BatchSplit over the rows of its tasks. The forward runs it on
    each batch's task counts (forward.task_plan); the active plan holds one row per task, so that activating checks
    what every site will run."""
    return None if setup is None else with_task_sizes(setup, [1] * len(setup.flatten()))


def is_token_wise(host: AdapterHost, setup: Block | None) -> bool:
    """Whether a setup acts on each token alone, so that padded batches may run unpadded: every module is
    token-wise (``Method.token_wise``) and no block splits by position or batch row."""
    if setup is None:
        return True
    if any(isinstance(b, (Split, BatchSplit, Parallel)) for b in walk(setup)):
        return False
    return all(module.token_wise for name in setup.flatten() if name != BASE
               for *_, module in placement.iter_adapters(host, name))


class SetupGuard:
    """Forwards hold the installed plan as readers; installing another needs it alone (a writer)."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.readers: Counter[int] = Counter()  # running forwards, by thread
        self.writer: int | None = None  # the thread installing a plan

    @contextmanager
    def running(self) -> Iterator[None]:
        me = threading.get_ident()
        with self.condition:
            while self.writer is not None and self.writer != me:
                self.condition.wait()
            self.readers[me] += 1
        try:
            yield
        finally:
            with self.condition:
                self.readers[me] -= 1
                if not self.readers[me]:
                    del self.readers[me]
                self.condition.notify_all()

    @contextmanager
    def changing(self) -> Iterator[bool]:
        """Hold the plan alone; yields whether this is the outermost change of this thread (not nested in one)."""
        me = threading.get_ident()
        with self.condition:
            if me in self.readers:
                raise RuntimeError("the active setup cannot change inside a forward of the same model; change it "
                                   "before or after the forward.")
            nested = self.writer == me
            while not nested and (self.writer is not None or self.readers):
                self.condition.wait()
            self.writer = me
        try:
            yield not nested
        finally:
            if not nested:
                with self.condition:
                    self.writer = None
                    self.condition.notify_all()


GUARDS: weakref.WeakKeyDictionary[nn.Module, SetupGuard] = weakref.WeakKeyDictionary()
GUARDS_LOCK = threading.Lock()


def guard(model: nn.Module) -> SetupGuard:
    """The model's guard, made on first use; kept outside the model so copies and pickles of it need none."""
    with GUARDS_LOCK:
        if model not in GUARDS:
            GUARDS[model] = SetupGuard()
        return GUARDS[model]
