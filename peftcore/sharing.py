"""Parameter sharing between the adapters of a multi-task method (AdapterHub's ``share_parameters`` and
``unshare_parameters``): one adapter per task, whose ``Method.shareable`` tensors (MTL-LoRA's A and B) are one set.

At every linear site where each of the adapters has a module, the reference adapter's shareable tensors are copied
once into the site's ``shared_parameters[group]`` and registered in every member in place of its own, as
AdapterHub's ``LoRALayer.share_parameters`` does: each adapter still holds (and saves) all of its tensors, and
training any member trains the one set. Which adapters share a group is who holds its tensors, nothing else, so
nothing can disagree with it. Unsharing gives each member its own copy of the values it had (AdapterHub only drops
the group and leaves the members holding one set of tensors).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import nn

from peftcore import placement
from peftcore.changes import mutation
from peftcore.composition import MultiTask
from peftcore.host import AdapterHost
from peftcore.methods.base import Method, MultiTaskConfig
from peftcore.sites import SiteLinear


def as_names(adapter_names: MultiTask | Sequence[str] | str) -> list[str]:
    """``MultiTask("a", "b")``, ``["a", "b"]`` and ``"a,b"`` all name adapters a and b (AdapterHub's forms)."""
    if isinstance(adapter_names, MultiTask):
        if not all(isinstance(child, str) for child in adapter_names):
            raise ValueError(f"{adapter_names!r}: parameters are shared between adapters; name each one.")
        return list(adapter_names)
    return adapter_names.split(",") if isinstance(adapter_names, str) else list(adapter_names)


def members(site: SiteLinear, shared: nn.ParameterDict) -> list[Method]:
    """The modules at ``site`` that hold the group ``shared``'s tensors."""
    return [module for module in site.adapters.values()
            if any(getattr(module, key, None) is tensor for key, tensor in shared.items())]


def groups_of(host: AdapterHost, name: str) -> set[str]:
    """The sharing groups adapter ``name`` belongs to."""
    return {group for site in linear_sites(host) for group, shared in site.shared_parameters.items()
            if name in site.adapters and site.adapters[name] in members(site, shared)}


def linear_sites(host: AdapterHost) -> Iterator[SiteLinear]:
    return (site.module for site in host.sites_found if isinstance(site.module, SiteLinear))


def check_unshared(host: AdapterHost, name: str) -> None:
    """Refuse to replace or remove adapter ``name`` while it shares parameters."""
    groups = sorted(groups_of(host, name))
    if groups:
        raise ValueError(f"adapter {name!r} shares parameters (group {groups[0]!r}); unshare_parameters first.")


def share(host: AdapterHost, names: list[str], group: str, reference: str | None) -> None:
    """Tie the shareable tensors of adapters ``names`` to copies of ``reference``'s, as group ``group``."""
    if not names:
        raise ValueError("share_parameters needs at least one adapter name.")
    if len(set(names)) != len(names):
        raise ValueError(f"share_parameters names an adapter twice: {names}.")
    for name in names:
        if name not in host.adapter_configs:
            raise ValueError(f"No configuration found for adapter {name!r}; this model has "
                             f"{sorted(host.adapter_configs) or 'none'}.")
        config = host.adapter_configs[name]
        if not isinstance(config, MultiTaskConfig):
            raise TypeError(f"adapter {name!r} is a {type(config).__name__}; only adapters of a multi-task config "
                            "(MultiTaskConfig, e.g. MTLLoRAConfig) share parameters.")
    kinds = {type(host.adapter_configs[name]).__name__ for name in names}
    if len(kinds) > 1:
        raise TypeError(f"adapters that share parameters must have one config type, got {sorted(kinds)}.")
    if reference not in names:
        raise ValueError(f"reference adapter {reference!r} is not among the adapters to share: {names}.")
    if not isinstance(group, str) or not group or "." in group:
        raise ValueError(f"a sharing group's name is a non-empty string without '.', got {group!r}.")
    if any(group in site.shared_parameters for site in linear_sites(host)):
        raise ValueError(f"a sharing group named {group!r} exists; unshare_parameters it first or pick another "
                         "name.")
    for name in names:
        check_unshared(host, name)
    merged = sorted(set(names) & placement.merged(host))
    if merged:
        raise ValueError(f"adapters {merged} are merged into the weights; reset_adapter() before sharing.")
    places = [site for site in linear_sites(host) if all(name in site.adapters for name in names)]
    if not places:
        raise ValueError(f"adapters {names} have no site in common, so they have nothing to share.")
    for site in places:
        source = site.adapters[reference]
        shared = nn.ParameterDict({key: nn.Parameter(getattr(source, key).detach().clone(),
                                                     requires_grad=getattr(source, key).requires_grad)
                                   for key in source.shareable})
        site.shared_parameters[group] = shared
        for name in names:
            for key, tensor in shared.items():
                setattr(site.adapters[name], key, tensor)


def unshare(host: AdapterHost, group: str) -> None:
    """Give every member of group ``group`` its own copy of the tensors it shares, and drop the group."""
    places = [site for site in linear_sites(host) if group in site.shared_parameters]
    if not places:
        raise ValueError(f"no sharing group named {group!r}; share_parameters names a group by its name= or by "
                         "its adapters joined with ','.")
    for site in places:
        shared = site.shared_parameters[group]
        for module in members(site, shared):
            for key, tensor in shared.items():
                setattr(module, key, nn.Parameter(tensor.detach().clone(), requires_grad=tensor.requires_grad))
        del site.shared_parameters[group]


class SharingMixin:
    """AdapterHub's ``share_parameters`` and ``unshare_parameters`` on the model."""

    @mutation
    def share_parameters(self, adapter_names: MultiTask | Sequence[str] | str, name: str | None = None,
                         reference_adapter_name: str | None = None) -> None:
        """Make the multi-task adapters ``adapter_names`` (a ``MultiTask``, a list or ``"a,b"``) share their shared
        tensors (MTL-LoRA: A and B), starting from those of ``reference_adapter_name`` (default: the first), as the
        group ``name`` (default: the names joined by commas)."""
        names = as_names(adapter_names)
        reference = reference_adapter_name or next(iter(names), None)
        share(self, names, ",".join(names) if name is None else name, reference)

    @mutation
    def unshare_parameters(self, adapter_names: MultiTask | Sequence[str] | str, name: str | None = None) -> None:
        """Undo ``share_parameters`` for group ``name`` (default: ``adapter_names`` joined by commas): each adapter
        keeps its own copy of the values it shared."""
        unshare(self, ",".join(as_names(adapter_names)) if name is None else name)
