"""Where an adapter's modules live: built from a config for the model's sites (off the model), attached to the sites
in one step, removed, and read back as tensors.

An adapter named ``a`` is one module in ``site.adapters["a"]`` at every site its config places it (``Method.sites``
decides), plus what its modules share across sites in ``model.shared_parameters["a"]`` (``Method.build_shared``).
Its file keys are the modules' paths with the adapter name left out (``layers.0.ffn.residual.adapters.down.weight``,
``shared_parameters.phm.phm_rule``), so the same keys serve every adapter name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from peftcore.configs import AdapterConfigBase, members
from peftcore.host import AdapterHost
from peftcore.methods import methods_for
from peftcore.methods.base import Method, ModelShape, shared_state_key, state_key
from peftcore.sites import EmbeddingSite, Site

FORBIDDEN_IN_NAMES = set(".,/\\") | {chr(code) for code in (*range(32), 127)}  # see check_name
LOCATIONS = {  # our site -> AdapterHub's location key for the modules there (its get_adapter's inner keys)
    "embeddings": "invertible", "prompt": "prompt", "attn.q": "selfattn", "attn.k": "selfattn", "attn.v": "selfattn",
    "attn.out": "selfattn", "attn.prefix": "self", "attn.residual": "mh_adapter", "ffn.intermediate": "intermediate",
    "ffn.output": "output", "ffn.residual": "output_adapter", "output": "output_reft",
}


class BuiltAdapter(NamedTuple):
    """An adapter's modules before they are attached: one per site, plus what its sites share."""

    placed: list[tuple[Site, Method]]
    shared: nn.ModuleDict  # shared_key -> module

    def slots(self) -> dict[str, tuple[nn.Module, str]]:
        """Our file key -> (module, key inside it), for every tensor of the adapter."""
        slots = {state_key(site.path, key): (module, key) for site, module in self.placed
                 for key in module.state_dict()}
        slots.update({shared_state_key(*key.split(".", 1)): (self.shared, key) for key in self.shared.state_dict()})
        return slots


def check_name(name: Any, what: str = "adapter and head names") -> None:
    """Names become state-dict keys, where a dot would nest them, setups, where a comma reads as a Stack, and
    directory names (``save_all_adapters``), where a separator or control character would leave the directory."""
    if not isinstance(name, str) or not name.strip() or set(name) & FORBIDDEN_IN_NAMES:
        raise ValueError(f"{what} are non-empty strings without '.' or ',' (nor '/', '\\' or control "
                         f"characters), got {name!r}.")


def model_shape(host: AdapterHost) -> ModelShape:
    return ModelShape(host.config.hidden_size, len(host.layers), getattr(host.config, "num_attention_heads", None))


def like_model(host: AdapterHost, module: nn.Module, meta: bool = False) -> nn.Module:
    """``module`` in the model's floating dtype, on the model's device (or left on the meta device)."""
    reference = next(p for p in host.parameters() if p.is_floating_point())
    return module.to(dtype=reference.dtype) if meta else module.to(device=reference.device, dtype=reference.dtype)


def methods_placed(host: AdapterHost, member: AdapterConfigBase) -> list[type[Method]]:
    """The method classes whose modules a (member) config places on this model."""
    layers = (None, *range(len(host.layers)))
    return [method for method in methods_for(member) if any(method.sites(member, layer) for layer in layers)]


def build(host: AdapterHost, config: AdapterConfigBase, meta: bool = False) -> BuiltAdapter:
    """The method modules ``config`` (or each member of a union) places, on the model's device and dtype; attaches
    nothing. ``meta`` builds them on the meta device, to learn their shapes without allocating."""
    with torch.device("meta") if meta else nullcontext():
        return build_modules(host, config, meta)


def initialise(built: BuiltAdapter) -> None:
    """Each module's ``Method.initialise``: for a new adapter, whose tensors no file or average fills."""
    for site, module in built.placed:
        module.initialise(site)


def build_modules(host: AdapterHost, config: AdapterConfigBase, meta: bool) -> BuiltAdapter:
    shape = model_shape(host)
    shared: dict[str, nn.Module] = {}
    placed: dict[str, tuple[Site, Method]] = {}
    for member in members(config):
        member.check_layers(shape.num_layers)
        methods = methods_for(member)
        for method in methods:
            module = method.build_shared(member, shape)
            if module is not None:
                shared[method.shared_key] = like_model(host, module, meta)
        for site in host.sites_found:
            for method in methods:
                if site.name in method.sites(member, site.layer):
                    if site.path in placed:
                        raise ValueError(f"{type(config).__name__} places two modules at {site.path}; a union must "
                                         "combine methods that sit at different sites.")
                    module = method.build(member, site, shape, shared.get(method.shared_key))
                    placed[site.path] = (site, like_model(host, module, meta))
    if not placed:
        wanted = {name for member in members(config) for method in methods_for(member)
                  for layer in (None, *range(shape.num_layers)) for name in method.sites(member, layer)}
        lacking = sorted(wanted - {site.name for site in host.sites_found})
        why = f"it has no {lacking} site" if lacking else "all layers left out?"
        raise ValueError(f"{type(config).__name__} places no module on this model ({why}).")
    return BuiltAdapter(list(placed.values()), nn.ModuleDict(shared))


def attach(host: AdapterHost, name: str, config: AdapterConfigBase, built: BuiltAdapter) -> None:
    """Put built modules into their sites, their gates' sinks into the recorder; the last step of adding, loading or
    averaging an adapter."""
    for site, module in built.placed:
        site.module.adapters[name] = module.train(host.training)
        gate = getattr(module, "gate", None)
        if gate is not None:
            gate.record = host.recorder.gate_sink(name, site.layer, site.name)
    if len(built.shared):
        host.shared_parameters[name] = built.shared.train(host.training)
    host.adapter_configs[name] = config


def reshare(host: AdapterHost) -> None:
    """Point every attached module at its adapter's shared module, as ``shared_parameters`` holds it now."""
    for site in host.sites_found:
        for name, module in site.module.adapters.items():
            if name in host.shared_parameters and module.shared_key in host.shared_parameters[name]:
                module.share(host.shared_parameters[name][module.shared_key])


def remove(host: AdapterHost, name: str) -> None:
    for site in host.sites_found:
        if name in site.module.adapters:
            del site.module.adapters[name]
    if name in host.shared_parameters:
        del host.shared_parameters[name]
    del host.adapter_configs[name]


def check_known(host: AdapterHost, name: str) -> None:
    if name not in host.adapter_configs:
        raise KeyError(f"no adapter named {name!r}; this model has {sorted(host.adapter_configs) or 'none'}.")


def iter_adapters(host: AdapterHost, name: str | None = None) -> Iterator[tuple[str, int, str, Method]]:
    """(adapter, layer, site, module) for every attached module; layer -1 is the embeddings (AdapterHub's)."""
    for site in host.sites_found:
        for adapter, module in site.module.adapters.items():
            if name is None or adapter == name:
                yield adapter, -1 if site.layer is None else site.layer, site.name, module


def by_location(host: AdapterHost, name: str) -> dict[int, dict[str, nn.Module]]:
    """AdapterHub's ``get_adapter``: ``{layer: {location: module}}`` of adapter ``name``, where layer -1 holds what
    sits outside the layers (``"invertible"``, and ``"shared"``: what its modules share), several modules at one
    location (LoRA's q and v, both ``"selfattn"``) come as an ``nn.ModuleList``, and an adapter the model does not
    have gives ``{}``. As in AdapterHub, only modules with weights are listed: prefix tuning's per-layer modules
    without gates hold none (its prefixes are in the shared module)."""
    layers: dict[int, dict[str, nn.Module]] = {}
    if name in host.shared_parameters:
        layers[-1] = {"shared": host.shared_parameters[name]}
    for _, layer, site, module in iter_adapters(host, name):
        if next(module.parameters(), None) is None:
            continue
        at, location = layers.setdefault(layer, {}), LOCATIONS[site]
        if location not in at:
            at[location] = module
        elif isinstance(at[location], nn.ModuleList):
            at[location].append(module)
        else:
            at[location] = nn.ModuleList([at[location], module])
    return layers


def placed(host: AdapterHost, name: str) -> list[tuple[Site, Method]]:
    """Every (site, module) of one adapter."""
    return [(site, site.module.adapters[name]) for site in host.sites_found if name in site.module.adapters]


def state(host: AdapterHost, name: str) -> dict[str, Tensor]:
    """An adapter's tensors under its file keys."""
    check_known(host, name)
    tensors = {state_key(site.path, key): tensor for site, module in placed(host, name)
               for key, tensor in module.state_dict().items()}
    if name in host.shared_parameters:
        tensors.update({shared_state_key(*key.split(".", 1)): tensor
                        for key, tensor in host.shared_parameters[name].state_dict().items()})
    return tensors


def parameters(host: AdapterHost, name: str) -> Iterator[nn.Parameter]:
    for _, module in placed(host, name):
        yield from module.parameters()
    if name in host.shared_parameters:
        yield from host.shared_parameters[name].parameters()


def trainable(host: AdapterHost, name: str) -> Iterator[nn.Parameter]:
    """Adapter ``name``'s parameters that train: all but those of shared modules its methods keep fixed
    (``Method.trains_shared``)."""
    fixed = {method.shared_key for member in members(host.adapter_configs[name]) for method in methods_for(member)
             if not method.trains_shared}
    shared = host.shared_parameters[name].items() if name in host.shared_parameters else ()
    skipped = {id(p) for key, module in shared if key in fixed for p in module.parameters()}
    return (p for p in parameters(host, name) if id(p) not in skipped)


def embedding_site(host: AdapterHost) -> nn.Module:
    """The site after the embeddings, where invertible adapters sit."""
    return next(site.module for site in host.sites_found if isinstance(site.module, EmbeddingSite))


def merged(host: AdapterHost) -> set[str]:
    """The adapters folded into the model's weights."""
    return {name for name, _, _, module in iter_adapters(host) if module.is_merged}
