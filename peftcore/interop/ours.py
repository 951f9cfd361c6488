"""peftcore's own adapter and fusion directories.

An adapter directory holds ``adapter_config.json`` (format tag, adapter name, method config, the model type and
sizes it was trained for, library version) and ``adapter_model.safetensors`` (the adapter's tensors, named by their
path in the model with the adapter name left out: ``layers.0.ffn.residual.adapters.down.weight``). A head of the
same name is saved beside it (or alone: ``save_head``) as ``head_config.json`` + ``head_model.safetensors``. A fusion
directory holds ``fusion_config.json`` (with the names of the adapters it fuses) + ``fusion_model.safetensors``, and
the head saved with it, if any.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peftcore import fusion, heads, io, placement
from peftcore.composition import from_json, to_json
from peftcore.configs import AdapterConfigBase
from peftcore.host import AdapterHost
from peftcore.interop.saved import SavedAdapter, SavedFusion, SavedHead

FORMAT, HEAD_FORMAT, FUSION_FORMAT, FORMAT_VERSION = "peftcore-adapter", "peftcore-head", "peftcore-fusion", 1
LIBRARY_VERSION = "peftcore 0.1.0"
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE = "head_config.json", "head_model.safetensors"
FUSION_CONFIG_FILE, FUSION_WEIGHTS_FILE = "fusion_config.json", "fusion_model.safetensors"
SETUP_FILE, SETUP_FORMAT = "adapter_setup.json", "peftcore-adapter-setup"


def described(host: AdapterHost) -> dict[str, Any]:
    """What every file of ours says about the model it was saved from."""
    return {"hidden_size": host.config.hidden_size, "model_type": host.config.model_type,
            "library": LIBRARY_VERSION}


def is_ours(raw: Mapping[str, Any]) -> bool:
    return raw.get("format") == FORMAT


def save(host: AdapterHost, directory: str | os.PathLike, name: str, with_head: bool) -> None:
    with io.atomic_directory_write(directory, replaces=(HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE)) as scratch:
        write(host, scratch, name, with_head)


def write(host: AdapterHost, directory: Path, name: str, with_head: bool) -> None:
    """Adapter ``name`` (and the head of that name) into ``directory``, which a save is writing atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    io.write_json(directory / CONFIG_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
                                            "config": host.adapter_configs[name].to_dict(),
                                            "num_hidden_layers": len(host.layers), **described(host)})
    io.write_safetensors(directory / WEIGHTS_FILE, placement.state(host, name))
    if with_head and name in host.heads:
        write_head(host, directory, name)


def write_head(host: AdapterHost, directory: Path, name: str) -> None:
    io.write_json(directory / HEAD_CONFIG_FILE, {"format": HEAD_FORMAT, "format_version": FORMAT_VERSION,
                                                 "name": name, "config": host.heads[name].config,
                                                 **described(host)})
    io.write_safetensors(directory / HEAD_WEIGHTS_FILE, heads.own_state(host, host.heads[name]))


def read(directory: Path, raw: Mapping[str, Any], with_head: bool) -> SavedAdapter:
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / CONFIG_FILE} has format_version {raw.get('format_version')!r}; this "
                         f"peftcore reads version {FORMAT_VERSION}.")
    missing = [key for key in ("name", "config", "model_type", "hidden_size") if raw.get(key) is None]
    if missing:
        raise ValueError(f"{directory / CONFIG_FILE} lacks {missing}.")
    try:
        config = AdapterConfigBase.from_dict(raw["config"])
    except (TypeError, ValueError) as error:
        raise type(error)(f"{directory / CONFIG_FILE}: {error}") from error
    saved = SavedAdapter(raw["name"], config, io.read_safetensors(io.require(directory / WEIGHTS_FILE)),
                         raw["model_type"], raw["hidden_size"])
    if with_head and (directory / HEAD_CONFIG_FILE).is_file():
        head = read_head(directory)
        saved.head_config, saved.head_state = head.config, head.state
    return saved


def is_our_head(raw: Mapping[str, Any]) -> bool:
    return raw.get("format") == HEAD_FORMAT


def read_head(directory: Path, raw: Mapping[str, Any] | None = None) -> SavedHead:
    """A head from ``head_config.json`` (``raw`` where already read) + ``head_model.safetensors``."""
    head = io.read_json(directory / HEAD_CONFIG_FILE) if raw is None else raw
    if head.get("format") != HEAD_FORMAT or head.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / HEAD_CONFIG_FILE} is not a peftcore head of format version {FORMAT_VERSION} "
                         f"(format {head.get('format')!r}).")
    if not isinstance(head.get("config"), dict):
        raise ValueError(f"{directory / HEAD_CONFIG_FILE} holds no head config (config: {head.get('config')!r}).")
    return SavedHead(head.get("name"), head["config"], io.read_safetensors(io.require(directory / HEAD_WEIGHTS_FILE)),
                     head.get("model_type"), head.get("hidden_size"))


def save_head(host: AdapterHost, directory: str | os.PathLike, name: str) -> None:
    with io.atomic_directory_write(directory) as scratch:
        write_head(host, scratch, name)


def save_fusion(host: AdapterHost, directory: str | os.PathLike, name: str, head: str | None) -> None:
    """Fusion ``name``, and head ``head`` beside it unless None."""
    with io.atomic_directory_write(directory, replaces=(HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE)) as scratch:
        write_fusion(host, scratch, name)
        if head is not None:
            write_head(host, scratch, head)


def write_fusion(host: AdapterHost, directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    io.write_json(directory / FUSION_CONFIG_FILE, {
        "format": FUSION_FORMAT, "format_version": FORMAT_VERSION, "name": name,
        "adapters": list(host.fused_adapters[name]), "config": host.fusion_configs[name].to_dict(),
        **described(host)})
    io.write_safetensors(directory / FUSION_WEIGHTS_FILE, fusion.state(host, name))


def is_our_fusion(directory: Path) -> bool:
    return (directory / FUSION_CONFIG_FILE).is_file()


def read_fusion(directory: Path, with_head: bool = False) -> SavedFusion:
    """A fusion directory of ours, with the head saved beside it when ``with_head`` and there is one."""
    raw = io.read_json(directory / FUSION_CONFIG_FILE)
    if raw.get("format") != FUSION_FORMAT or raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / FUSION_CONFIG_FILE} is not a peftcore fusion of format version "
                         f"{FORMAT_VERSION}.")
    head = read_head(directory) if with_head and (directory / HEAD_CONFIG_FILE).is_file() else None
    return SavedFusion(raw.get("name"), raw.get("config"), raw.get("adapters"),
                       io.read_safetensors(io.require(directory / FUSION_WEIGHTS_FILE)), raw.get("model_type"),
                       raw.get("hidden_size"), head)


# ---- everything attached, beside a full-model checkpoint --------------------------------------------------------

def write_setup(host: AdapterHost, directory: Path, merged: set[str]) -> None:
    """Every adapter, head and fusion attached to ``host``, which of the adapters are ``merged``, and the active setup
    and head, into ``directory``: what a full-model checkpoint in our format holds beside the model's weights."""
    names = {"adapters": sorted(host.adapter_configs), "heads": sorted(host.heads),
             "fusions": sorted(host.fusion_configs)}
    for name in names["adapters"]:
        write(host, directory / "adapters" / name, name, with_head=False)
    for name in names["heads"]:
        (directory / "heads" / name).mkdir(parents=True)
        write_head(host, directory / "heads" / name, name)
    for index, name in enumerate(names["fusions"]):  # fusion names hold commas: directories are numbered
        write_fusion(host, directory / "fusions" / str(index), name)
    setup, head = host.active_adapters, host.plan.branch_heads or host.active_head
    io.write_json(directory / SETUP_FILE, {
        "format": SETUP_FORMAT, "format_version": FORMAT_VERSION, **names, "merged": sorted(merged),
        "active": None if setup is None else to_json(setup), "active_head": None if head is None else to_json(head)})


def read_setup(directory: Path) -> dict[str, Any]:
    """What ``write_setup`` wrote, its layout checked; the adapters, heads and fusions are read by the caller."""
    raw = io.read_json(directory / SETUP_FILE)
    if raw.get("format") != SETUP_FORMAT or raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / SETUP_FILE} is not a peftcore adapter setup of format version "
                         f"{FORMAT_VERSION}.")
    for field in ("adapters", "heads", "fusions", "merged"):
        if not isinstance(raw.get(field), list) or not all(isinstance(name, str) for name in raw[field]):
            raise ValueError(f"{directory / SETUP_FILE}: {field} must be a list of names, got {raw.get(field)!r}.")
    return {**raw, **{field: None if raw.get(field) is None else from_json(raw[field])
                      for field in ("active", "active_head")}}
