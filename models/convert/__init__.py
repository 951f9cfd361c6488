"""Reading and writing checkpoint directories: the only code that knows HF's file layouts.

An HF directory holds ``config.json`` and weights as ``model.safetensors``, sharded safetensors with
``model.safetensors.index.json``, or ``pytorch_model.bin`` (also sharded, with an index). Our own format
is ``config.json`` with a ``peftcore_format`` field and our config, plus ``model.safetensors`` in our key names.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import Tensor

from peftcore.io import (
    atomic_directory_write,
    read_json,
    read_pickle,
    read_safetensors,
    recover,
    write_json,
    write_safetensors,
)
from peftcore.models.convert.architecture import Architecture
from peftcore.models.convert.keymap import ConversionError, KeyMap
from peftcore.models.convert.tables import GENERIC_FIELDS

NATIVE_FORMAT = 1  # version written into our config.json as "peftcore_format"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
OUR_FIELDS = frozenset({"head", "add_pooling_layer", "num_labels"})  # ours only: derived from architectures/id2label


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint directory, with a clear error when the directory or file is missing or bad; what
    an interrupted save of the directory left is recovered first."""
    directory = Path(path)
    recover(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist.")
    config_file = directory / "config.json"
    if not config_file.is_file():
        present = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(f"{str(directory)!r} has no config.json (it holds {present}); pass the directory "
                                "that save_pretrained wrote.")
    config = read_json(config_file)
    if "model_type" not in config:
        raise ValueError(f"{config_file} has no model_type; it is not a transformers or peftcore config.")
    return config


def is_native(config: Mapping[str, Any]) -> bool:
    return "peftcore_format" in config


def read_weights(path: str | os.PathLike, on_file: Callable[[Path], None] | None = None) -> dict[str, Tensor]:
    """Every tensor of a checkpoint directory, whichever of the four HF layouts it uses.

    ``on_file`` is called with each weights file before it is read (the CLI prints a progress line).
    """
    directory = Path(path)
    on_file = on_file or (lambda file: None)
    for name, reader in ((SAFETENSORS, read_safetensors), (SAFETENSORS_INDEX, read_safetensors),
                         (PICKLE_INDEX, read_pickle), (PICKLE, read_pickle)):
        if (directory / name).is_file():
            if name.endswith(".index.json"):
                return read_sharded(directory / name, reader, on_file)
            on_file(directory / name)
            return reader(directory / name)
    present = sorted(p.name for p in directory.iterdir())
    raise FileNotFoundError(f"{str(directory)!r} has no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, "
                            f"{PICKLE} or {PICKLE_INDEX}, found {present}.")


def read_sharded(index_file: Path, reader: Callable[[Path], dict[str, Tensor]],
                 on_file: Callable[[Path], None]) -> dict[str, Tensor]:
    weight_map = read_json(index_file).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index_file} is not a valid shard index: it needs a weight_map object.")
    shards = sorted(set(weight_map.values()), key=str)
    outside = [shard for shard in shards if not isinstance(shard, str) or Path(shard).name != shard
               or shard in ("", ".", "..")]
    if outside:
        raise ValueError(f"{index_file.name} names shards {outside[:5]} that are not files of the checkpoint "
                         "directory; shards are plain file names beside the index.")
    state: dict[str, Tensor] = {}
    for shard in shards:
        if not (index_file.parent / shard).is_file():
            raise FileNotFoundError(f"{index_file.name} names shard {shard!r}, which is missing.")
        on_file(index_file.parent / shard)
        tensors = reader(index_file.parent / shard)
        twice = sorted(set(tensors) & set(state))
        if twice:
            raise ValueError(f"tensors {twice[:10]} are in more than one shard of {index_file.name}; each tensor "
                             "belongs to one shard.")
        state.update(tensors)
    absent = sorted(set(weight_map) - set(state))
    if absent:
        raise ValueError(f"shards lack tensors that {index_file.name} lists: {absent[:10]}.")
    return state


def config_kwargs_from_hf(hf: Mapping[str, Any], config_cls: type, architecture: Architecture) -> dict[str, Any]:
    """Translate an HF config.json into our config's keyword arguments.

    Fields we share keep their names, ``architecture.config_renames`` rename the others. The head and pooler follow
    ``architectures[0]``; num_labels follows id2label. A field whose value we do not implement is an error; a field
    we do not know is a warning.
    """
    name = config_cls.__name__
    for field_name, value in architecture.required_values.items():
        if field_name in hf and hf[field_name] != value:
            raise ValueError(f"config.json sets {field_name}={hf[field_name]!r}; {name} implements only {value!r}.")
    renames = architecture.config_renames
    doubled = sorted(theirs for theirs, ours in renames.items() if theirs in hf and ours in hf)
    if doubled:
        raise ValueError(f"config.json sets both {doubled} and their {name} names {[renames[f] for f in doubled]}; "
                         "keep one of each pair.")
    hf = {renames.get(key, key): value for key, value in hf.items()}
    ours = {f.name for f in fields(config_cls)} - OUR_FIELDS
    unknown = sorted(set(hf) - ours - GENERIC_FIELDS - set(architecture.required_values) - OUR_FIELDS
                     - architecture.ignored_config_fields)
    if unknown:
        warnings.warn(f"config.json fields {unknown} are not used by {name}; they are ignored.", stacklevel=3)
    kwargs = {key: value for key, value in hf.items() if key in ours}
    classes = architecture.hf_classes
    hf_class = (hf.get("architectures") or [next(iter(classes))])[0]
    if hf_class not in classes:
        raise ValueError(f"config.json names architecture {hf_class!r}, which {name} cannot load; "
                         f"supported: {sorted(classes)}.")
    kwargs["head"], kwargs["add_pooling_layer"] = classes[hf_class]
    if "id2label" in hf:
        kwargs["num_labels"] = len(hf["id2label"])
    elif "num_labels" in hf:
        kwargs["num_labels"] = hf["num_labels"]
    return kwargs


def config_to_hf(config: Any, model_type: str, architecture: Architecture) -> dict[str, Any]:
    """Our config as an HF config.json that transformers loads into the matching class."""
    classes = architecture.hf_classes
    candidates = [hf_class for hf_class, (head, _) in classes.items() if head == config.head]
    exact = [hf_class for hf_class in candidates if classes[hf_class][1] == config.add_pooling_layer]
    renames = architecture.config_renames_back
    hf = {renames.get(f.name, f.name): getattr(config, f.name) for f in fields(config) if f.name not in OUR_FIELDS}
    hf.update(model_type=model_type, architectures=[(exact or candidates)[0]])
    hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(config.num_labels)}
    hf["label2id"] = {f"LABEL_{i}": i for i in range(config.num_labels)}
    return hf


def native_config(config: Any, model_type: str) -> dict[str, Any]:
    return {"peftcore_format": NATIVE_FORMAT, "model_type": model_type,
            "config": config.to_dict()}


def check_model_type(config: Mapping[str, Any], model_type: str, class_name: str) -> None:
    if config["model_type"] != model_type:
        raise ConversionError(f"the checkpoint's config.json has model_type {config['model_type']!r}, but "
                              f"{class_name} loads {model_type!r} checkpoints; use the model class for "
                              f"{config['model_type']!r}.")


def write_checkpoint(path: str | os.PathLike, config: Mapping[str, Any], state: Mapping[str, Tensor],
                     beside: Callable[[Path], None] | None = None) -> None:
    """config.json + model.safetensors (and whatever ``beside`` writes into the same directory: our format's
    adapters), written atomically. Tensors are made contiguous, as safetensors needs."""
    with atomic_directory_write(path) as scratch:
        write_safetensors(scratch / SAFETENSORS, state)
        write_json(scratch / "config.json", config)
        if beside is not None:
            beside(scratch)


__all__ = ["Architecture", "ConversionError", "KeyMap", "check_model_type", "config_kwargs_from_hf", "config_to_hf",
           "is_native", "native_config", "read_config", "read_weights", "write_checkpoint"]
