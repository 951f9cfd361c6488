"""peftcore's own adapter and fusion directories.

An adapter directory holds ``adapter_config.json`` (format tag, adapter name, method config, the model type and
sizes it was trained for, library version) and ``adapter_model.safetensors`` (the adapter's tensors, named by their
path in the model with the adapter name left out: ``layers.0.ffn.residual.adapters.down.weight``). A head of the
same name is saved beside it as ``head_config.json`` + ``head_model.safetensors``. A fusion directory holds
``fusion_config.json`` (with the names of the adapters it fuses) + ``fusion_model.safetensors``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peftcore import fusion, heads, io, placement
from peftcore.configs import AdapterConfigBase
from peftcore.host import AdapterHost
from peftcore.interop.saved import SavedAdapter, SavedFusion

FORMAT, HEAD_FORMAT, FUSION_FORMAT, FORMAT_VERSION = "peftcore-adapter", "peftcore-head", "peftcore-fusion", 1
LIBRARY_VERSION = "peftcore 0.1.0"
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE = "head_config.json", "head_model.safetensors"
FUSION_CONFIG_FILE, FUSION_WEIGHTS_FILE = "fusion_config.json", "fusion_model.safetensors"


def described(host: AdapterHost) -> dict[str, Any]:
    """What every file of ours says about the model it was saved from."""
    return {"hidden_size": host.config.hidden_size, "model_type": host.config.model_type,
            "library": LIBRARY_VERSION}


def is_ours(raw: Mapping[str, Any]) -> bool:
    return raw.get("format") == FORMAT


def save(host: AdapterHost, directory: str | os.PathLike, name: str, with_head: bool) -> None:
    state = placement.state(host, name)
    about = {**described(host), "name": name}
    with io.atomic_directory_write(directory, replaces=(HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE)) as scratch:
        io.write_json(scratch / CONFIG_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                              "config": host.adapter_configs[name].to_dict(),
                                              "num_hidden_layers": len(host.layers), **about})
        io.write_safetensors(scratch / WEIGHTS_FILE, state)
        if with_head and name in host.heads:
            io.write_json(scratch / HEAD_CONFIG_FILE, {"format": HEAD_FORMAT, "format_version": FORMAT_VERSION,
                                                       "config": host.heads[name].config, **about})
            io.write_safetensors(scratch / HEAD_WEIGHTS_FILE, heads.own_state(host, host.heads[name]))


def read(directory: Path, raw: Mapping[str, Any], with_head: bool) -> SavedAdapter:
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / CONFIG_FILE} has format_version {raw.get('format_version')!r}; this "
                         f"peftcore reads version {FORMAT_VERSION}.")
    missing = [key for key in ("name", "config", "model_type", "hidden_size") if key not in raw]
    if missing:
        raise ValueError(f"{directory / CONFIG_FILE} lacks {missing}.")
    saved = SavedAdapter(raw["name"], AdapterConfigBase.from_dict(raw["config"]),
                         io.read_safetensors(io.require(directory / WEIGHTS_FILE)), raw["model_type"],
                         raw["hidden_size"])
    if with_head and (directory / HEAD_CONFIG_FILE).is_file():
        saved.head_config = io.read_json(directory / HEAD_CONFIG_FILE).get("config")
        saved.head_state = io.read_safetensors(io.require(directory / HEAD_WEIGHTS_FILE))
    return saved


def save_fusion(host: AdapterHost, directory: str | os.PathLike, name: str) -> None:
    with io.atomic_directory_write(directory) as scratch:
        io.write_json(scratch / FUSION_CONFIG_FILE, {
            "format": FUSION_FORMAT, "format_version": FORMAT_VERSION, "name": name,
            "adapters": list(host.fused_adapters[name]), "config": host.fusion_configs[name].to_dict(),
            **described(host)})
        io.write_safetensors(scratch / FUSION_WEIGHTS_FILE, fusion.state(host, name))


def is_our_fusion(directory: Path) -> bool:
    return (directory / FUSION_CONFIG_FILE).is_file()


def read_fusion(directory: Path) -> SavedFusion:
    raw = io.read_json(directory / FUSION_CONFIG_FILE)
    if raw.get("format") != FUSION_FORMAT or raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / FUSION_CONFIG_FILE} is not a peftcore fusion of format version "
                         f"{FORMAT_VERSION}.")
    return SavedFusion(raw.get("name"), raw.get("config"), raw.get("adapters"),
                       io.read_safetensors(io.require(directory / FUSION_WEIGHTS_FILE)), raw.get("model_type"),
                       raw.get("hidden_size"))
