"""Every call that changes a model is all-or-nothing, runs alone, and never from inside a forward of that model.

``@mutation`` marks such a call on the mixin. It is refused at once inside a forward of the same model (a hook, a
head or a plug calling back), before anything changes; it waits until running forwards end and holds new ones off
(setup.py's guard), so no forward sees half a change; and if it raises, everything it may have changed is put back:
the adapters, fusions and heads attached (the module objects themselves), the configs, the running plan and the
plugs, the active head, the merged state (a merge the call made is reset, a reset it made is merged again: the same
weights bit for bit), and which parameters train and which modules are in training mode. The calls still validate
everything first — restoring is the net under them, and it copies references and flags, never tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from torch import nn

from peftcore import placement
from peftcore.host import AdapterHost
from peftcore.setup import guard
from peftcore.sites import ResidualSite

Call = TypeVar("Call", bound=Callable[..., Any])


class Snapshot:
    """What a changing call may alter, by reference: restoring it undoes the call."""

    def __init__(self, host: AdapterHost) -> None:
        self.sites = [(site.module, dict(site.module.adapters),
                       dict(site.module.fusions) if isinstance(site.module, ResidualSite) else None)
                      for site in host.sites_found]
        self.dicts = [(registry, dict(registry)) for registry in
                      (host.adapter_configs, host.fusion_configs, host.fused_adapters)]
        self.module_dicts = [(registry, dict(registry)) for registry in (host.heads, host.shared_parameters)]
        self.attributes = {name: getattr(host, name) for name in ("plan", "_active_head", "model_frozen")}
        self.trains = [(parameter, parameter.requires_grad) for parameter in host.parameters()]
        self.modes = [(module, module.training) for module in host.modules()]
        self.merged = merged_modules(host)

    def restore(self, host: AdapterHost) -> None:
        now = merged_modules(host) | {(site, module) for site, adapters, _ in self.sites  # merged, then removed
                                      for module in adapters.values() if module.is_merged}
        for site, module in now - self.merged:  # merged by the call: its weights back as they were
            module.unmerge_from(site)
        for site, module in self.merged - now:  # reset by the call: merged again, the same weights bit for bit
            module.merge_into(site)
        for module, adapters, fusions in self.sites:
            replace(module.adapters, adapters)
            if fusions is not None:
                replace(module.fusions, fusions)
        for registry, before in self.dicts:
            registry.clear()
            registry.update(before)
        for registry, before in self.module_dicts:
            replace(registry, before)
        for name, value in self.attributes.items():
            setattr(host, name, value)
        placement.reshare(host)
        host.plan.install()
        for parameter, requires_grad in self.trains:
            parameter.requires_grad_(requires_grad)
        for module, training in self.modes:
            module.training = training


def merged_modules(host: AdapterHost) -> set[tuple[nn.Module, nn.Module]]:
    """(site, module) of every module merged into its site's weights."""
    return {(site.module, module) for site in host.sites_found for module in site.module.adapters.values()
            if module.is_merged}


def replace(registry: nn.ModuleDict, modules: dict[str, nn.Module]) -> None:
    registry.clear()
    registry.update(modules)


@contextmanager
def changing(host: AdapterHost) -> Iterator[None]:
    """The span of one changing call (see the module docstring); nested calls share the outer one's net."""
    with guard(host).changing() as outermost:
        if not outermost:
            yield
            return
        snapshot = Snapshot(host)
        try:
            yield
        except BaseException:
            snapshot.restore(host)
            raise


def mutation(call: Call) -> Call:
    """Mark a mixin method as a call that changes the model (see the module docstring)."""
    @functools.wraps(call)
    def wrapper(self: AdapterHost, *args: Any, **kwargs: Any) -> Any:
        with changing(self):
            return call(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
