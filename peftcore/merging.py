"""Operations that rewrite weights: merging an adapter into the model's weights and resetting it, averaging
adapters into a new one, and ejecting a training-time reparameterisation. Each checks everything first and changes
the model only when nothing can fail any more; what a method does is its hook (methods/base.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from peftcore import fusion, placement
from peftcore.changes import changing
from peftcore.composition import normalized
from peftcore.configs import AdapterConfigBase, ConfigUnion, members
from peftcore.host import AdapterHost
from peftcore.methods import methods_for
from peftcore.methods.base import Method, linear_average
from peftcore.sites import Site


def check_merge(host: AdapterHost, name: str) -> list[tuple[Site, Method]]:
    """Adapter ``name``'s (site, module) pairs, once every module can be folded into its site's weights."""
    placement.check_known(host, name)
    placed = placement.placed(host, name)
    for site, module in placed:
        refusal = module.merge_refusal()
        if refusal:
            raise ValueError(f"adapter {name!r} cannot be merged: {refusal}.")
        others = [other for other, mod in site.module.adapters.items() if mod.is_merged]
        if others:
            raise ValueError(f"adapter {others[0]!r} is merged into {site.path} already; one merged adapter per "
                             f"weight: reset_adapter({others[0]!r}) first.")
    return placed


def merge(placed: list[tuple[Site, Method]]) -> None:
    """Fold every checked module into the weights of its site (``Method.merge_into``)."""
    for site, module in placed:
        module.merge_into(site.module)


def check_reset(host: AdapterHost, name: str | None) -> set[str]:
    """The adapters ``reset_adapter(name)`` unmerges: ``name``, once it is known to be merged, or every merged one
    when ``name`` is None."""
    merged = placement.merged(host)
    if name is None:
        return merged
    placement.check_known(host, name)
    if name not in merged:
        raise ValueError(f"adapter {name!r} is not merged; there is nothing to reset.")
    return {name}


def reset(host: AdapterHost, names: set[str]) -> None:
    """Restore the weights that the merged adapters ``names`` changed (``Method.unmerge_from``)."""
    for site in host.sites_found:
        for adapter, module in site.module.adapters.items():
            if adapter in names:
                module.unmerge_from(site.module)


def average(host: AdapterHost, adapter_name: str, adapter_list: Sequence[str], weights: Sequence[float] | None,
            normalize_weights: bool, overwrite_ok: bool, combine_strategy: str, svd_rank: int | None) -> None:
    """Build adapter ``adapter_name`` as the weighted average of adapters of one config (``Method.average_from``
    per module; shared modules average linearly) and attach it, replacing an adapter of that name if allowed."""
    adapter_list = list(adapter_list)
    if not adapter_list:
        raise ValueError("average_adapter needs at least one adapter to average.")
    for name in adapter_list:
        placement.check_known(host, name)
    weights = [1.0] * len(adapter_list) if weights is None else list(weights)
    if len(weights) != len(adapter_list):
        raise ValueError(f"{len(adapter_list)} adapters but {len(weights)} weights; give one weight per adapter.")
    weights = normalized(weights, normalize_weights)
    source = host.adapter_configs[adapter_list[0]]
    if any(host.adapter_configs[name].essentials() != source.essentials() for name in adapter_list):
        raise ValueError(f"adapters {adapter_list} have different configs; only adapters of one config (up to "
                         "dropout and initialisation) can be averaged.")
    config = averaged_config(host, source, combine_strategy, svd_rank)
    built = build_new(host, adapter_name, config, overwrite_ok)
    for site, module in built.placed:
        module.average_from([site.module.adapters[name] for name in adapter_list], weights, combine_strategy)
    for key, module in built.shared.items():  # what the modules share averages tensor by tensor
        linear_average(module, [host.shared_parameters[name][key] for name in adapter_list], weights)
    install(host, adapter_name, config, built)


def build_new(host: AdapterHost, adapter_name: str, config: AdapterConfigBase,
              overwrite_ok: bool) -> placement.BuiltAdapter:
    """The (empty) modules of a new adapter ``adapter_name`` that an average or a weighted merge fills, once the name
    is free, or may be replaced (``overwrite_ok``; not while merged, nor by one lacking a site that a fusion needs)."""
    placement.check_name(adapter_name)
    if adapter_name in host.adapter_configs and not overwrite_ok:
        raise ValueError(f"an adapter named {adapter_name!r} exists; pass overwrite_ok=True to replace it.")
    if adapter_name in placement.merged(host):
        raise ValueError(f"adapter {adapter_name!r} is merged into the weights; reset_adapter({adapter_name!r}) before "
                         "replacing it.")
    built = placement.build(host, config)
    fusion.check_replacement(host, adapter_name, built.placed)
    return built


def install(host: AdapterHost, adapter_name: str, config: AdapterConfigBase, built: placement.BuiltAdapter) -> None:
    """Attach the filled modules of ``build_new`` as adapter ``adapter_name``, replacing one of that name."""
    if adapter_name in host.adapter_configs:
        placement.remove(host, adapter_name)
    placement.attach(host, adapter_name, config, built)


def averaged_config(host: AdapterHost, config: AdapterConfigBase, strategy: str,
                    svd_rank: int | None) -> AdapterConfigBase:
    """The averaged adapter's config: each method the config places must offer ``strategy``
    (``Method.average_strategies``) and may change its member for it (LoRA's SVD strategy sets r = svd_rank)."""
    placed = [(member, placement.methods_placed(host, member)) for member in members(config)]
    methods = [method for _, member_methods in placed for method in member_methods]
    offered = [s for s in methods[0].average_strategies if all(s in m.average_strategies for m in methods)]
    if strategy not in offered:
        titles = " and ".join(dict.fromkeys(method.title for method in methods))
        only = f"{titles} only supports {offered[0]} averaging: " if len(offered) == 1 else ""  # AdapterHub's words
        raise ValueError(f"{only}combine_strategy={strategy!r} is not available for {type(config).__name__}; use "
                         f"{'one of ' + str(tuple(offered)) if len(offered) > 1 else offered[0]}.")
    changed = []
    for member, member_methods in placed:
        for method in member_methods:
            member = method.averaged_config(member, strategy, svd_rank)
        changed.append(member)
    return ConfigUnion(*changed) if isinstance(config, ConfigUnion) else changed[0]


def eject(host: AdapterHost, name: str) -> None:
    """Replace every training-time reparameterisation of adapter ``name`` by what it computes (``Method.ejected``):
    prefix tuning's MLP by the prefixes."""
    placement.check_known(host, name)
    config = host.adapter_configs[name]
    pool = dict(host.shared_parameters[name].items()) if name in host.shared_parameters else {}
    changed, replaced = [], {}
    for member in members(config):
        for method in methods_for(member):
            ejected = method.ejected(member, pool.get(method.shared_key))
            if ejected is not None:
                member, replaced[method.shared_key] = ejected
        changed.append(member)
    if not replaced:
        raise ValueError(f"adapter {name!r} is {type(config).__name__}; only prefix tuning can be ejected.")
    host.shared_parameters[name] = nn.ModuleDict({**pool, **replaced})
    placement.reshare(host)
    host.adapter_configs[name] = ConfigUnion(*changed) if isinstance(config, ConfigUnion) else changed[0]


@contextmanager
def undone(host: AdapterHost) -> Iterator[None]:
    """Every merge undone for the span of the block, and redone after it — the same weights, bit for bit."""
    names = placement.merged(host)
    if not names:
        yield
        return
    with changing(host):
        reset(host, names)
        try:
            yield
        finally:
            for name in sorted(names):
                merge(check_merge(host, name))
