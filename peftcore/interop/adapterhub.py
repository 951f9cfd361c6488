"""AdapterHub (``adapters`` 1.3.0) adapter, fusion and head directories, both ways.

AdapterHub writes ``adapter_config.json`` (``{"config", "name", "model_type", "hidden_size", "version", ...}``) and
``pytorch_adapter.bin`` (or ``adapter.safetensors``), with keys named by HF module paths:
``[roberta.]encoder.layer.{i}.output.adapters.{name}.adapter_down.0.weight`` for a bottleneck,
``[roberta.]invertible_adapters.{name}.F.0.weight`` for an invertible adapter; heads beside them (or alone:
``save_head``) as ``head_config.json`` + ``pytorch_model_head.bin`` or ``model_head.safetensors``
(``heads.{name}.1.weight``); fusions as ``adapter_fusion_config.json`` (with the fused ``adapter_names``) +
``pytorch_model_adapter_fusion.bin`` or ``model_adapter_fusion.safetensors``. The model names where each site sits
in HF's layout (``hf_site_path``); each method names its module's container and tensors there
(``Method.adapterhub_*``); this module puts the two together.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from peftcore import fusion, io, placement
from peftcore.configs import AdapterConfigBase, ConfigUnion, members
from peftcore.host import AdapterHost
from peftcore.interop.saved import SavedAdapter, SavedFusion, SavedHead
from peftcore.methods import methods_for
from peftcore.methods.base import shared_state_key, state_key

CONFIG_FILE = "adapter_config.json"
WEIGHTS = ("adapter.safetensors", "pytorch_adapter.bin")
HEAD_CONFIG, HEAD_WEIGHTS = "head_config.json", ("model_head.safetensors", "pytorch_model_head.bin")
FUSION_CONFIG = "adapter_fusion_config.json"
FUSION_WEIGHTS = ("model_adapter_fusion.safetensors", "pytorch_model_adapter_fusion.bin")
VERSION = "adapters.1.3.0"
# a save replaces both forms of its weights and any head saved beside them before: no stale file outlives it (old
# safetensors left beside a new pickle would be read instead of it)
HEAD_FILES = (HEAD_CONFIG, *HEAD_WEIGHTS)


def is_adapterhub(directory: Path, raw: Mapping[str, Any]) -> bool:
    return "config" in raw and any((directory / name).is_file() for name in WEIGHTS)


def site_path(host: AdapterHost, site_name: str, layer: int | None) -> str:
    """Where AdapterHub keeps the modules of our site ``site_name``, without the base-model prefix."""
    path = host.hf_site_path(site_name, layer)
    if path is None:
        raise ValueError(f"{type(host).__name__} has no place where AdapterHub keeps {site_name} modules; "
                         "AdapterHub cannot hold this adapter for this architecture.")
    return path


def key_pairs(host: AdapterHost, config: AdapterConfigBase, name: str) -> dict[str, str]:
    """AdapterHub key (no base-model prefix) -> our key, for every tensor of ``config``: the module's container at
    the site's HF path and the method's names for its tensors (``Method.adapterhub_*``)."""
    pairs = {}
    for member in members(config):
        built = placement.build(host, member)
        for site, module in built.placed:
            container = f"{module.adapterhub_container}." if module.adapterhub_container else ""
            where = f"{site_path(host, site.name, site.layer)}.{container}{name}."
            for key in module.state_dict():
                for their in module.adapterhub_names(member, key):
                    pairs[where + their] = state_key(site.path, key)
        shared_paths = {method.shared_key: host.hf_shared_path(method.shared_key) or method.adapterhub_shared_path
                        for method in methods_for(member)}
        for shared_key, module in built.shared.items():
            for key in module.state_dict():
                pairs[f"{shared_paths[shared_key].format(name=name)}.{key}"] = shared_state_key(shared_key, key)
    return pairs


OLD_ACTIVATIONS = {"gelu": "gelu_new", "gelu_orig": "gelu"}  # adapter-transformers 1.x/2.x names, by today's


def with_current_activation(raw: Mapping[str, Any]) -> Any:
    """``raw``'s adapter config, its ``non_linearity`` renamed as AdapterHub renames it in files without a
    ``"version"`` (adapter-transformers before 3.0 meant the tanh GELU by ``gelu``)."""
    config = raw["config"]
    if "version" in raw or not isinstance(config, Mapping) or config.get("non_linearity") not in OLD_ACTIVATIONS:
        return config
    return {**config, "non_linearity": OLD_ACTIVATIONS[config["non_linearity"]]}


def read(directory: Path, raw: Mapping[str, Any], with_head: bool, host: AdapterHost) -> SavedAdapter:
    """An AdapterHub directory as a SavedAdapter in our key names (unknown keys are kept, so install reports them)."""
    config = AdapterConfigBase.from_dict(with_current_activation(raw))
    name = raw.get("name")
    if not isinstance(name, str):
        raise ValueError(f"{directory / CONFIG_FILE} has no adapter name.")
    theirs = {key.removeprefix(host.hf_prefix): t for key, t in io.read_tensors(directory, WEIGHTS).items()}
    owners = [(member, method) for member in members(config) for method in methods_for(member)]
    theirs = {key: t for key, t in theirs.items() if not any(method.is_adapterhub_copy(key) for _, method in owners)}
    for member, method in owners:
        theirs = method.read_adapterhub_tensors(member, theirs)
    pairs = key_pairs(host, config, name)
    state = {pairs.get(key, key): t for key, t in theirs.items()}
    config = as_ours(config, state)
    saved = SavedAdapter(name, config, state, raw.get("model_type"), raw.get("hidden_size"))
    if with_head and (directory / HEAD_CONFIG).is_file():
        head_raw = io.read_json(directory / HEAD_CONFIG)
        if head_raw.get("config") is None:  # a transformers head (BertForMaskedLM's cls.*): the model's own head
            saved.model_head_state = host.head_state_from_hf(io.read_tensors(directory, HEAD_WEIGHTS) or {})
            return saved
        head = read_head(directory, head_raw, name)
        saved.head_config, saved.head_state = head.config, head.state
    return saved


def as_ours(config: AdapterConfigBase, state: dict[str, Tensor]) -> AdapterConfigBase:
    """The config that an AdapterHub file's tensors ``state`` (our keys) load into, ``state`` converted in place to
    our form (``Method.from_adapterhub``: VeRA's diagonal matrices become vectors)."""
    converted = []
    for member in members(config):
        for method in methods_for(member):
            member = method.from_adapterhub(member, state)
        converted.append(member)
    return ConfigUnion(*converted) if isinstance(config, ConfigUnion) else converted[0]


def read_head(directory: Path, raw: Mapping[str, Any] | None = None, name: str | None = None) -> SavedHead:
    """A flexible head from its ``head_config.json`` (``raw`` where already read) and tensors (``heads.{name}.`` left
    out; ``name`` where the config names none)."""
    raw = io.read_json(directory / HEAD_CONFIG) if raw is None else raw
    if not isinstance(raw.get("config"), dict):
        raise ValueError(f"{directory / HEAD_CONFIG} holds no flexible head config (config: {raw.get('config')!r}); "
                         "a transformers model's own head loads with its adapter (load_adapter).")
    name = raw.get("name") or name
    prefix = f"heads.{name}."
    state = {key.removeprefix(prefix): t for key, t in (io.read_tensors(directory, HEAD_WEIGHTS) or {}).items()}
    return SavedHead(name, dict(raw["config"]), state, raw.get("model_type"), raw.get("hidden_size"))


def described(host: AdapterHost, name: str) -> dict[str, Any]:
    """What every AdapterHub file says about the model it was saved from and the module's ``name``."""
    return {"hidden_size": host.config.hidden_size, "model_class": type(host).__name__, "model_name": None,
            "model_type": host.config.model_type, "name": name, "version": VERSION}


def save(host: AdapterHost, directory: str | os.PathLike, name: str, with_head: bool = True,
         safetensors: bool = False) -> None:
    """Write adapter ``name`` in AdapterHub's layout, so ``adapters``' ``load_adapter`` reads it."""
    placement.check_known(host, name)
    config = host.adapter_configs[name]
    if any(getattr(member, "gate_over_real_tokens", False) for member in members(config)):
        raise ValueError(f"adapter {name!r} gates over real tokens only (gate_over_real_tokens=True), which "
                         "AdapterHub's gates cannot: save with format='peftcore'.")
    ours = placement.state(host, name)
    for member in members(config):
        for method in methods_for(member):
            ours = method.to_adapterhub(member, ours)
    state = {their: ours[our] for their, our in key_pairs(host, config, name).items()}
    written = []
    for member in members(config):
        for method in methods_for(member):
            member, state = method.write_adapterhub_tensors(member, state)
        written.append(member)
    config = ConfigUnion(*written) if isinstance(config, ConfigUnion) else written[0]
    with io.atomic_directory_write(directory, replaces=(*WEIGHTS, *HEAD_FILES)) as scratch:
        io.write_json(scratch / CONFIG_FILE, {"config": config.to_dict(), **described(host, name)})
        write_tensors(scratch, WEIGHTS, state, safetensors)
        if with_head and name in host.heads:
            write_head(host, scratch, name, safetensors)


def write_head(host: AdapterHost, directory: Path, name: str, safetensors: bool) -> None:
    """Head ``name`` into ``directory``, which a save is writing atomically."""
    head = host.heads[name]  # written whole, tied LM decoder included, as AdapterHub writes heads
    # AdapterHub loads a flex head only into the class named here: its XAdapterModel (loading.py:984)
    flex_class = f"{host.hf_base_class.removesuffix('Model')}AdapterModel"
    io.write_json(directory / HEAD_CONFIG, {"config": head.config, **described(host, name), "model_class": flex_class})
    write_tensors(directory, HEAD_WEIGHTS, {f"heads.{name}.{k}": t for k, t in head.state_dict().items()},
                  safetensors)


def save_head(host: AdapterHost, directory: str | os.PathLike, name: str, safetensors: bool = False) -> None:
    """Write head ``name`` in AdapterHub's layout, so ``adapters``' ``load_head`` reads it."""
    with io.atomic_directory_write(directory, replaces=HEAD_FILES) as scratch:
        write_head(host, scratch, name, safetensors)


def write_tensors(directory: Path, names: tuple[str, str], state: Mapping[str, Tensor], safetensors: bool) -> None:
    if safetensors:  # copies: safetensors refuses tensors that share memory (ln_before's two names for one LN)
        io.write_safetensors(directory / names[0], {key: t.detach().clone() for key, t in state.items()})
    else:
        torch.save({key: t.detach().clone() for key, t in state.items()}, directory / names[1])


# ---- AdapterFusion layers ------------------------------------------------------------------------------------------

def fusion_prefix(host: AdapterHost, site_name: str, layer: int, name: str) -> str:
    return f"{site_path(host, site_name, layer)}.adapter_fusion_layer.{name}."


def save_fusion(host: AdapterHost, directory: str | os.PathLike, name: str, head: str | None = None,
                safetensors: bool = False) -> None:
    """Write fusion ``name`` (and head ``head`` unless None) in AdapterHub's layout, so ``adapters``'
    ``load_adapter_fusion`` reads it."""
    ours = fusion.state(host, name)
    # keys with the base-model prefix: AdapterHub's flex models silently load no fusion key without it (its
    # AdapterFusionLoader.load does not pass in_base_model), and its bare models read it as well
    state = {host.hf_prefix + fusion_prefix(host, site.name, site.layer, name) + key: ours[f"{site.path}.fusions.{key}"]
             for site, layer in fusion.layers(host, name) for key in layer.state_dict()}
    with io.atomic_directory_write(directory, replaces=(*FUSION_WEIGHTS, *HEAD_FILES)) as scratch:
        io.write_json(scratch / FUSION_CONFIG, {"config": host.fusion_configs[name].to_dict(),
                                                "adapter_names": list(host.fused_adapters[name]),
                                                **described(host, name)})
        write_tensors(scratch, FUSION_WEIGHTS, state, safetensors)
        if head is not None:
            write_head(host, scratch, head, safetensors)


def read_fusion(host: AdapterHost, directory: Path, with_head: bool = False) -> SavedFusion:
    """An AdapterHub fusion directory in our key names, with the head saved beside it when ``with_head``.

    Keys are renamed by position (``encoder.layer.{i}.output.adapter_fusion_layer.{name}.*``); a layer's tensors
    that fit no site stay under their own names, so the install reports them.
    """
    if not (directory / FUSION_CONFIG).is_file():
        present = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(f"{directory} is neither a peftcore fusion (fusion_config.json) nor an AdapterHub "
                                f"one ({FUSION_CONFIG}); it holds {present}.")
    raw = io.read_json(directory / FUSION_CONFIG)
    name = raw.get("name")
    theirs = io.read_tensors(directory, FUSION_WEIGHTS)
    if theirs is None:
        raise FileNotFoundError(f"{directory} has no {' or '.join(FUSION_WEIGHTS)}.")
    by_prefix = {fusion_prefix(host, site.name, site.layer, name): site for site in host.sites_found
                 if site.layer is not None and host.hf_site_path(site.name, site.layer) is not None}
    state = {}
    for key, tensor in ((key.removeprefix(host.hf_prefix), t) for key, t in theirs.items()):
        prefix = next((prefix for prefix in by_prefix if key.startswith(prefix)), None)
        local = key.removeprefix(prefix) if prefix else None
        if prefix and local.startswith("dense."):
            continue  # AdapterHub builds an unused `dense` layer when query, key and value are all off
        state[f"{by_prefix[prefix].path}.fusions.{local}" if prefix else key] = tensor
    head = read_head(directory) if with_head and (directory / HEAD_CONFIG).is_file() else None
    return SavedFusion(name, raw.get("config"), raw.get("adapter_names"), state, raw.get("model_type"),
                       raw.get("hidden_size"), head)
