"""Adapter files: our format, format detection, strict validation before the model changes, atomic writes.

Our adapter directory holds ``adapter_config.json`` (format tag, adapter name, method config, the model type and
sizes it was trained for, library version) and ``adapter_model.safetensors`` (the adapter's tensors, named by
their path in the model with the adapter name left out: ``layers.0.ffn.residual.adapters.down.weight``).
A head of the same name is saved beside it as ``head_config.json`` + ``head_model.safetensors``.

``load_adapter`` recognises our directories, AdapterHub's and HF PEFT's (``interop/``) by their config files,
turns any into one ``SavedAdapter``, builds the modules off the model, checks every key and shape, and only
then attaches them: a failed load leaves the model as it was.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from peftcore.configs import AdapterConfigBase

if TYPE_CHECKING:
    from peftcore.model import AdapterModelMixin

FORMAT, HEAD_FORMAT, FORMAT_VERSION = "peftcore-adapter", "peftcore-head", 1
LIBRARY_VERSION = "peftcore 0.1.0"
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE = "head_config.json", "head_model.safetensors"


@dataclass
class SavedAdapter:
    """An adapter read from disk, in our key names, not yet attached to any model."""

    name: str
    config: AdapterConfigBase
    state: dict[str, Tensor]  # our keys, adapter name left out
    model_type: str | None
    hidden_size: int | None
    head_config: dict[str, Any] | None = None
    head_state: dict[str, Tensor] | None = None
    model_head_state: dict[str, Tensor] | None = None  # a transformers task head's weights, for the model's own head


# ---- files ----------------------------------------------------------------------------------------------------


@contextmanager
def atomic_directory_write(path: str | os.PathLike, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write files into a new sibling directory, then swap it in for ``path`` with two renames.

    The new directory first receives hard links to whatever else ``path`` holds (files this write neither produces
    nor names in ``replaces``: a head saved earlier beside the adapter is dropped, so it cannot load with the new
    files). Until the swap, ``path`` is untouched; an error in the swap puts it back. Only a power cut between the
    two renames can leave ``path`` missing, with its previous content in the hidden ``.NAME.tmp*/previous``.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} is a file; an adapter or checkpoint is saved as a directory.")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.tmp") as scratch:
        staged, previous = Path(scratch) / "new", Path(scratch) / "previous"
        staged.mkdir()
        yield staged
        if not target.exists():
            os.replace(staged, target)
            return
        kept = {file.name for file in staged.iterdir()} | set(replaces)
        for entry in target.iterdir():
            if entry.name not in kept:
                carry_over(entry, staged / entry.name)
        os.replace(target, previous)
        try:
            os.replace(staged, target)
        except BaseException:
            os.replace(previous, target)
            raise


def carry_over(source: Path, destination: Path) -> None:
    """Hard-link a file, link or directory tree into the new directory (copy where links are not supported)."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True, copy_function=link_or_copy)
    elif source.is_symlink():
        os.symlink(os.readlink(source), destination)
    else:
        link_or_copy(source, destination)


def link_or_copy(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_safetensors(path: Path, state: Mapping[str, Tensor]) -> None:
    save_file({key: t.detach().contiguous() for key, t in state.items()}, path, metadata={"format": "pt"})


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds {type(data).__name__}, expected a JSON object.")
    return data


def read_safetensors(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): {error}") from error


def read_pickle(file: Path) -> dict[str, Tensor]:
    """A PyTorch pickle, read with weights_only=True: a file carrying code is refused, never run."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{file} could not be read as a weights-only PyTorch file (corrupt, truncated, or it "
                         f"holds objects other than tensors): {error}") from error
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise ValueError(f"{file} does not hold a flat dict of tensors.")
    return state


# ---- our format ---------------------------------------------------------------------------------------------


def save_adapter(model: AdapterModelMixin, directory: str | os.PathLike, name: str, with_head: bool) -> None:
    state = model.adapter_state(name)
    described = {"hidden_size": model.config.hidden_size, "model_type": model.config.model_type,
                 "library": LIBRARY_VERSION, "name": name}
    with atomic_directory_write(directory, replaces=(HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE)) as scratch:
        write_json(scratch / CONFIG_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                           "config": model.adapter_configs[name].to_dict(),
                                           "num_hidden_layers": len(model.layers), **described})
        write_safetensors(scratch / WEIGHTS_FILE, state)
        if with_head and name in model.heads:
            write_json(scratch / HEAD_CONFIG_FILE, {"format": HEAD_FORMAT, "format_version": FORMAT_VERSION,
                                                    "config": model.heads[name].config, **described})
            write_safetensors(scratch / HEAD_WEIGHTS_FILE, own_head_state(model, model.heads[name]))


def own_head_state(model: nn.Module, head: nn.Module) -> dict[str, Tensor]:
    """A head's tensors (attached or not) without those it shares with the encoder (an LM decoder tied to the word
    embeddings)."""
    shared = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if not name.startswith("heads.")}
    return {key: t for key, t in head.state_dict(keep_vars=True).items() if id(t) not in shared}


def read_ours(directory: Path, raw: Mapping[str, Any], with_head: bool) -> SavedAdapter:
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / CONFIG_FILE} has format_version {raw.get('format_version')!r}; this "
                         f"peftcore reads version {FORMAT_VERSION}.")
    missing = [key for key in ("name", "config", "model_type", "hidden_size") if key not in raw]
    if missing:
        raise ValueError(f"{directory / CONFIG_FILE} lacks {missing}.")
    saved = SavedAdapter(raw["name"], AdapterConfigBase.from_dict(raw["config"]),
                         read_safetensors(require(directory / WEIGHTS_FILE)), raw["model_type"], raw["hidden_size"])
    if with_head and (directory / HEAD_CONFIG_FILE).is_file():
        saved.head_config = read_json(directory / HEAD_CONFIG_FILE).get("config")
        saved.head_state = read_safetensors(require(directory / HEAD_WEIGHTS_FILE))
    return saved


def require(file: Path) -> Path:
    if not file.is_file():
        present = sorted(p.name for p in file.parent.iterdir())
        raise FileNotFoundError(f"{file.parent} has no {file.name} (it holds {present}).")
    return file


# ---- loading any format -------------------------------------------------------------------------------------


def read_adapter(model: AdapterModelMixin, directory: str | os.PathLike, with_head: bool) -> SavedAdapter:
    """Read an adapter directory in whichever format it is: ours, AdapterHub's or HF PEFT's."""
    from peftcore.interop import adapterhub, peft

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory {str(directory)!r} does not exist.")
    raw = read_json(require(directory / CONFIG_FILE))
    if raw.get("format") == FORMAT:
        return read_ours(directory, raw, with_head)
    if adapterhub.is_adapterhub(directory, raw):
        return adapterhub.read(directory, raw, with_head, model)
    if peft.is_peft(raw):
        return peft.read(directory, raw, with_head, model)
    raise ValueError(f"{directory / CONFIG_FILE} is neither a peftcore adapter (format={FORMAT!r}), an AdapterHub "
                     "one (config + version 'adapters.*') nor a HuggingFace PEFT one (peft_type).")


def load_adapter(model: AdapterModelMixin, directory: str | os.PathLike, load_as: str | None,
                 with_head: bool) -> str:
    saved = read_adapter(model, directory, with_head)
    return install(model, saved, load_as or saved.name, str(directory))


def install(model: AdapterModelMixin, saved: SavedAdapter, name: str, source: str) -> str:
    """Build, fill and check every module of ``saved`` off the model, then attach them all."""
    from peftcore.model import check_name

    check_name(name)
    if name in model.adapter_configs:
        raise ValueError(f"the model already has an adapter {name!r}; pass load_as='another_name' or delete it.")
    if saved.model_type is not None and saved.model_type != model.config.model_type:
        raise ValueError(f"{source} holds an adapter for a {saved.model_type!r} model; this model is "
                         f"{model.config.model_type!r}.")
    if saved.hidden_size is not None and saved.hidden_size != model.config.hidden_size:
        raise ValueError(f"{source} holds an adapter for hidden size {saved.hidden_size}; this model's is "
                         f"{model.config.hidden_size}.")
    built = model.build_adapter(saved.config)
    fill(built.slots(), saved.state, f"{source}: adapter {saved.name!r}")
    head = None
    if saved.head_config is not None:
        head = model.build_head_module(saved.head_config)
        fill({key: (head, key) for key in own_head_state(model, head)}, saved.head_state or {},
             f"{source}: head {saved.name!r}")
    if saved.model_head_state is not None:
        tied = model.aliases()
        fill({f"head.{key}": (model.head, key) for key in model.head.state_dict() if f"head.{key}" not in tied},
             saved.model_head_state, f"{source}: model head")
    model.attach_adapter(name, saved.config, built)
    if head is not None:
        model.attach_head(name, head)
    return name


def fill(expected: Mapping[str, tuple[nn.Module, str]], state: Mapping[str, Tensor], what: str) -> None:
    """Copy ``state`` into the modules ``expected`` names, after checking keys and shapes all match."""
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    mismatched, wrong_dtype = [], []
    for key in sorted(set(state) & set(expected)):
        module, local = expected[key]
        target = module.state_dict()[local]
        if tuple(state[key].shape) != tuple(target.shape):
            mismatched.append(f"{key}: file {tuple(state[key].shape)}, model {tuple(target.shape)}")
        if state[key].is_floating_point() != target.is_floating_point():  # float dtypes convert to the model's
            wrong_dtype.append(f"{key}: file {state[key].dtype}, model {target.dtype}")
    if unexpected or missing or mismatched or wrong_dtype:
        lines = [f"{what} does not fit this model:"]
        for title, keys in (("unexpected", unexpected), ("missing", missing), ("shape mismatches", mismatched),
                            ("dtype mismatches", wrong_dtype)):
            if keys:
                lines.append(f"  {len(keys)} {title}: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}")
        raise ValueError("\n".join(lines))
    with torch.no_grad():
        for key, (module, local) in expected.items():
            module.state_dict(keep_vars=True)[local].copy_(state[key])
