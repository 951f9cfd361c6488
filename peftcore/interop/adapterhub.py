"""AdapterHub (``adapters`` 1.3.0) adapter directories, both ways.

AdapterHub writes ``adapter_config.json`` (``{"config", "name", "model_type", "hidden_size", "version", ...}``) and
``pytorch_adapter.bin`` (or ``adapter.safetensors``), with keys named by HF module paths:
``[roberta.]encoder.layer.{i}.output.adapters.{name}.adapter_down.0.weight`` for a bottleneck,
``[roberta.]invertible_adapters.{name}.F.0.weight`` for an invertible adapter; heads beside them as
``head_config.json`` + ``pytorch_model_head.bin`` (``heads.{name}.1.weight``). The model names where each site sits
in HF's layout (``model.keymap.site_paths``); this module renames the method-level keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from peftcore.configs import AdapterConfigBase, BnConfig, LoRAConfig, PrefixTuningConfig, members
from peftcore.io import (
    CONFIG_FILE,
    SavedAdapter,
    atomic_directory_write,
    read_json,
    read_pickle,
    read_safetensors,
    write_json,
    write_safetensors,
)
from peftcore.sites import Site

if TYPE_CHECKING:
    from peftcore.model import AdapterModelMixin

WEIGHTS = ("adapter.safetensors", "pytorch_adapter.bin")
HEAD_CONFIG, HEAD_WEIGHTS = "head_config.json", ("model_head.safetensors", "pytorch_model_head.bin")
VERSION = "adapters.1.3.0"
INVERTIBLE_PATH = "invertible_adapters"
CONTAINERS = {"lora": "loras", "prefix_tuning": "prefix_gates"}  # AdapterHub's per-site ModuleDict, by method
# our shared_key -> their path; Compacter's shared rule and W sit in the base model's shared_parameters
SHARED_PATHS = {"prefix": "prefix_tuning.prefix_tunings.{name}.self_prefix.", "phm": "shared_parameters.{name}."}


def is_adapterhub(directory: Path, raw: Mapping[str, Any]) -> bool:
    return "config" in raw and any((directory / name).is_file() for name in WEIGHTS)


def read_tensors(directory: Path, names: tuple[str, str]) -> dict[str, Tensor] | None:
    """The first of (safetensors, pickle) that exists, read safely; None when neither does."""
    safetensors, pickle = (directory / name for name in names)
    if safetensors.is_file():
        return read_safetensors(safetensors)
    return read_pickle(pickle) if pickle.is_file() else None


def bottleneck_names(config: BnConfig) -> dict[str, str]:
    """Our bottleneck module names -> AdapterHub's (``adapter_down`` is a Sequential: [LayerNorm,] Linear, act)."""
    names = {"down": "adapter_down.1" if config.ln_before else "adapter_down.0", "up": "adapter_up",
             "norm_after": "adapter_norm_after", "gate": "gate", "scaling": "scaling"}
    if config.ln_before:
        names["norm_before"] = "adapter_down.0"
    return names


def their_local(config: AdapterConfigBase, site: Site, key: str) -> str:
    """Our key inside a method module -> AdapterHub's."""
    if site.layer is None or isinstance(config, LoRAConfig):
        return key  # couplings (F, G, s1, s2) and LoRA/(IA)^3 (lora_A, lora_B, gate) use AdapterHub's names
    if isinstance(config, PrefixTuningConfig):
        return key.removeprefix("gate.")  # the gate is the whole module in AdapterHub's prefix_gates
    module, _, leaf = key.partition(".")
    renamed = bottleneck_names(config)[module]
    return f"{renamed}.{leaf}" if leaf else renamed


def site_prefix(model: AdapterModelMixin, config: AdapterConfigBase, site: Site, name: str) -> str:
    """Where AdapterHub keeps the adapter ``name`` of ``site``, without the base-model prefix."""
    if site.layer is None:
        return f"{INVERTIBLE_PATH}.{name}."
    paths = model.keymap.site_paths
    if site.name not in paths:
        raise ValueError(f"{type(model).__name__} does not say where AdapterHub keeps {site.name} adapters "
                         "(keymap.site_paths).")
    container = CONTAINERS.get(type(config).architecture, "adapters")
    return f"{paths[site.name].format(i=site.layer)}.{container}.{name}."


def key_pairs(model: AdapterModelMixin, config: AdapterConfigBase, name: str) -> dict[str, str]:
    """AdapterHub key (no base-model prefix) -> our key (adapter name left out), for every tensor of ``config``."""
    pairs = {}
    for member in members(config):
        built = model.build_adapter(member)
        for site, module in built.placed:
            for key in module.state_dict():
                their = site_prefix(model, member, site, name) + their_local(member, site, key)
                pairs[their] = f"{site.path}.adapters.{key}"
                if key.startswith("norm_before."):  # AdapterHub stores the input LayerNorm under a second name too
                    pairs[their.replace(".adapter_down.0.", ".adapter_norm_before.")] = f"{site.path}.adapters.{key}"
        for shared_key, module in built.shared.items():
            for key in module.state_dict():
                pairs[SHARED_PATHS[shared_key].format(name=name) + key] = f"shared_parameters.{shared_key}.{key}"
    return pairs


def read(directory: Path, raw: Mapping[str, Any], with_head: bool, model: AdapterModelMixin) -> SavedAdapter:
    """An AdapterHub directory as a SavedAdapter in our key names (unknown keys are kept, so install reports them)."""
    config = AdapterConfigBase.from_dict(raw["config"])
    name = raw.get("name")
    if not isinstance(name, str):
        raise ValueError(f"{directory / CONFIG_FILE} has no adapter name.")
    theirs = read_tensors(directory, WEIGHTS)
    prefix = model.keymap.prefix
    theirs = {key.removeprefix(prefix): tensor for key, tensor in theirs.items()}
    # AdapterHub saves the prefix pool once more in every layer; its base-model copy is the one we read
    theirs = {key: t for key, t in theirs.items() if ".prefix_tuning.pool." not in key}
    pairs = key_pairs(model, config, name)
    state = {pairs.get(key, key): tensor for key, tensor in theirs.items()}
    saved = SavedAdapter(name, config, state, raw.get("model_type"), raw.get("hidden_size"))
    if with_head and (directory / HEAD_CONFIG).is_file():
        head_raw = read_json(directory / HEAD_CONFIG)
        head_state = read_tensors(directory, HEAD_WEIGHTS) or {}
        if head_raw.get("config") is None:  # a transformers head (BertForMaskedLM's cls.*): the model's own head
            saved.model_head_state = model.head_state_from_hf(head_state)
            return saved
        head_prefix = f"heads.{head_raw.get('name', name)}."
        saved.head_config = dict(head_raw["config"])
        saved.head_state = {key.removeprefix(head_prefix): t for key, t in head_state.items()}
        if saved.head_config["head_type"] == "masked_lm":  # the decoder is tied to the word embeddings
            saved.head_state.pop("3.weight", None)
    return saved


def save(model: AdapterModelMixin, directory: str | os.PathLike, name: str, with_head: bool = True,
         safetensors: bool = False) -> None:
    """Write adapter ``name`` in AdapterHub's layout, so ``adapters``' ``load_adapter`` reads it."""
    model.check_known(name)
    config = model.adapter_configs[name]
    ours = model.adapter_state(name)
    state = {their: ours[our] for their, our in key_pairs(model, config, name).items()}
    common = {"hidden_size": model.config.hidden_size, "model_class": f"{type(model).__name__}",
              "model_name": None, "model_type": model.config.model_type, "name": name, "version": VERSION}
    with atomic_directory_write(directory) as scratch:
        write_json(scratch / CONFIG_FILE, {"config": config.to_dict(), **common})
        write_tensors(scratch, WEIGHTS, state, safetensors)
        if with_head and name in model.heads:
            head = model.heads[name]  # written whole, tied LM decoder included, as AdapterHub writes heads
            # AdapterHub loads a flex head only into the class named here: its XAdapterModel (loading.py:984)
            flex_class = f"{type(model).__name__.removesuffix('Model')}AdapterModel"
            write_json(scratch / HEAD_CONFIG, {"config": head.config, **common, "model_class": flex_class})
            write_tensors(scratch, HEAD_WEIGHTS, {f"heads.{name}.{k}": t for k, t in head.state_dict().items()},
                          safetensors)


def write_tensors(directory: Path, names: tuple[str, str], state: Mapping[str, Tensor], safetensors: bool) -> None:
    if safetensors:  # copies: safetensors refuses tensors that share memory (ln_before's two names for one LN)
        write_safetensors(directory / names[0], {key: t.detach().clone() for key, t in state.items()})
    else:
        torch.save({key: t.detach().clone() for key, t in state.items()}, directory / names[1])


# ---- AdapterFusion layers ------------------------------------------------------------------------------------------

FUSION_CONFIG = "adapter_fusion_config.json"
FUSION_WEIGHTS = ("model_adapter_fusion.safetensors", "pytorch_model_adapter_fusion.bin")


def fusion_pairs(model: AdapterModelMixin, name: str) -> dict[str, str]:
    """AdapterHub key (no base-model prefix) -> our key (fusion name left out), for every tensor of a fusion."""
    return {f"{model.keymap.site_paths[site.name].format(i=site.layer)}.adapter_fusion_layer.{name}.{key}":
            f"{site.path}.fusions.{key}" for site, fusion in model.fusion_layers(name) for key in fusion.state_dict()}


def save_fusion(model: AdapterModelMixin, directory: str | os.PathLike, name: str, safetensors: bool = False) -> None:
    """Write fusion ``name`` in AdapterHub's layout, so ``adapters``' ``load_adapter_fusion`` reads it."""
    ours = model.fusion_state(name)
    state = {their: ours[our] for their, our in fusion_pairs(model, name).items()}
    with atomic_directory_write(directory) as scratch:
        write_json(scratch / FUSION_CONFIG, {
            "config": model.fusion_configs[name].to_dict(), "hidden_size": model.config.hidden_size,
            "model_class": type(model).__name__, "model_name": None, "model_type": model.config.model_type,
            "name": name, "version": VERSION})
        write_tensors(scratch, FUSION_WEIGHTS, state, safetensors)


def read_fusion(model: AdapterModelMixin, directory: Path) -> tuple[Any, Any, dict[str, Tensor], Any, Any]:
    """An AdapterHub fusion directory: (name, config dict, state in our key names, model_type, hidden_size).

    Keys are renamed by position (``encoder.layer.{i}.output.adapter_fusion_layer.{name}.*``); a layer's tensors
    that fit no site stay under their own names, so the install reports them.
    """
    if not (directory / FUSION_CONFIG).is_file():
        present = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(f"{directory} is neither a peftcore fusion (fusion_config.json) nor an AdapterHub "
                                f"one ({FUSION_CONFIG}); it holds {present}.")
    raw = read_json(directory / FUSION_CONFIG)
    name = raw.get("name")
    theirs = read_tensors(directory, FUSION_WEIGHTS)
    if theirs is None:
        raise FileNotFoundError(f"{directory} has no {' or '.join(FUSION_WEIGHTS)}.")
    theirs = {key.removeprefix(model.keymap.prefix): tensor for key, tensor in theirs.items()}
    by_path = {}
    for site in model.sites_found:
        if site.name in model.keymap.site_paths and site.layer is not None:
            by_path[f"{model.keymap.site_paths[site.name].format(i=site.layer)}.adapter_fusion_layer.{name}."] = site
    state = {}
    for key, tensor in theirs.items():
        site_path = next((path for path in by_path if key.startswith(path)), None)
        local = key.removeprefix(site_path) if site_path else None
        if site_path and local.startswith("dense."):
            continue  # AdapterHub builds an unused `dense` layer when query, key and value are all off
        state[f"{by_path[site_path].path}.fusions.{local}" if site_path else key] = tensor
    return name, raw.get("config"), state, raw.get("model_type"), raw.get("hidden_size")
