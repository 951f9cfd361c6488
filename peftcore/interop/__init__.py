"""Adapter, fusion and head files in every format we read and write: ours (``ours.py``), AdapterHub's
(``adapterhub.py``) and HuggingFace PEFT's (``peft.py``). This is the one place that tells the formats apart:
``load_adapter`` recognises a directory's format by its files, and every reader turns a directory into a
``SavedAdapter``, ``SavedFusion`` or ``SavedHead`` (``saved.py``) that one install step checks against the model
before attaching it.
"""

from __future__ import annotations

import os
from pathlib import Path

from peftcore import heads, io, placement
from peftcore.composition import Fuse
from peftcore.host import AdapterHost
from peftcore.interop import adapterhub, ours, peft
from peftcore.interop.saved import SavedAdapter, built_head, checked_head, install, install_fusion

ADAPTER_FORMATS = ("peftcore", "adapterhub", "peft")
FUSION_FORMATS = HEAD_FORMATS = ("peftcore", "adapterhub")


def check_hf_layout(host: AdapterHost, what: str) -> None:
    """AdapterHub's and PEFT's files name tensors by HF module paths, which a model states in its ``HFLayout``."""
    if not callable(getattr(host, "hf_site_path", None)):
        raise TypeError(f"{what} name tensors by the HuggingFace modules of a model, and {type(host).__name__} has no "
                        "HF layout (peftcore.host.HFLayout); save and load in peftcore's own format.")


def read_adapter(host: AdapterHost, directory: str | os.PathLike, with_head: bool = True) -> SavedAdapter:
    """Read an adapter directory in whichever format it is: ours, AdapterHub's or HF PEFT's."""
    directory = existing(directory, "adapter")
    raw = io.read_json(io.require(directory / ours.CONFIG_FILE))
    if ours.is_ours(raw):
        return ours.read(directory, raw, with_head)
    if adapterhub.is_adapterhub(directory, raw):
        check_hf_layout(host, "AdapterHub's files")
        return adapterhub.read(directory, raw, with_head, host)
    if peft.is_peft(raw):
        check_hf_layout(host, "HuggingFace PEFT's files")
        return peft.read(directory, raw, with_head, host)
    raise ValueError(f"{directory / ours.CONFIG_FILE} is neither a peftcore adapter (format={ours.FORMAT!r}), an "
                     "AdapterHub one (config, with adapter.safetensors or pytorch_adapter.bin beside it) nor a "
                     "HuggingFace PEFT one (peft_type).")


def report_exact(loading_info: dict | None) -> None:
    """Fill AdapterHub's ``loading_info`` after a strict load that succeeded: it was exact (one that is not raises,
    having changed nothing), so no key is missing or unexpected."""
    if loading_info is not None:
        loading_info.update(missing_keys=[], unexpected_keys=[])


def load_adapter(host: AdapterHost, directory: str | os.PathLike, load_as: str | None, with_head: bool,
                 strict: bool = True, loading_info: dict | None = None) -> str:
    """Read, check and attach an adapter directory; returns the adapter's name. Without ``strict``, AdapterHub's
    loading: tensors the file lacks keep their fresh values, tensors the adapter lacks are ignored, and both are
    listed in ``loading_info`` (``missing_keys``, ``unexpected_keys``, our key names)."""
    saved = read_adapter(host, directory, with_head)
    report = {"missing_keys": [], "unexpected_keys": []}  # a strict load leaves both empty, or raises
    name = install(host, saved, load_as or saved.name, str(directory), strict, report)
    if loading_info is not None:
        loading_info.update(report)
    return name


def save_adapter(host: AdapterHost, directory: str | os.PathLike, name: str, with_head: bool, format: str,
                 safetensors: bool = False) -> None:
    """Adapter ``name`` in ``format``; ``safetensors`` picks AdapterHub's safetensors files over its pickles (ours
    and PEFT's are safetensors always)."""
    if format not in ADAPTER_FORMATS:
        raise ValueError(f"format={format!r} is not known; use 'peftcore', 'adapterhub' or 'peft'.")
    if format == "adapterhub":
        check_hf_layout(host, "format='adapterhub' files")
        adapterhub.save(host, directory, name, with_head, safetensors)
        return
    if format != "peftcore":
        check_hf_layout(host, f"format={format!r} files")
    {"peftcore": ours.save, "peft": peft.save}[format](host, directory, name, with_head)


def load_fusion(host: AdapterHost, directory: str | os.PathLike, load_as: str | None, with_head: bool = False,
                set_active: bool = False) -> Fuse:
    """Read a fusion directory (ours or AdapterHub's), with the head saved beside it when ``with_head`` (the active
    head with ``set_active``), check it against the model off the model, then attach it; returns the fusion."""
    directory = existing(directory, "fusion")
    if ours.is_our_fusion(directory):
        saved = ours.read_fusion(directory, with_head)
    else:
        check_hf_layout(host, "AdapterHub's fusion files")
        saved = adapterhub.read_fusion(host, directory, with_head)
    fuse, head = install_fusion(host, saved, load_as, str(directory))
    if set_active and head is not None:
        host.active_head = head
    return fuse


def save_fusion(host: AdapterHost, directory: str | os.PathLike, name: str, with_head: bool | str, format: str,
                safetensors: bool = False) -> None:
    """Fusion ``name`` in ``format``, with the head named after it (``with_head`` True) or named ``with_head``;
    ``safetensors`` as in ``save_adapter``."""
    if format not in FUSION_FORMATS:
        raise ValueError(f"format={format!r} is not known; use 'peftcore' or 'adapterhub'.")
    head = (name if with_head is True else with_head) or None
    if head is not None:
        heads.check_known(host, head)
    if format == "peftcore":
        ours.save_fusion(host, directory, name, head)
    else:
        check_hf_layout(host, "AdapterHub's fusion files")
        adapterhub.save_fusion(host, directory, name, head, safetensors)


def save_head(host: AdapterHost, directory: str | os.PathLike, name: str | None, format: str,
              safetensors: bool) -> None:
    """Head ``name`` (None: the model's only head) alone in ``format`` (``"peftcore"`` or ``"adapterhub"``);
    ``safetensors`` as in ``save_adapter``."""
    if format not in HEAD_FORMATS:
        raise ValueError(f"format={format!r} is not known; use 'peftcore' or 'adapterhub'.")
    if name is None and len(host.heads) != 1:
        raise ValueError(f"no head name given, and the model has {len(host.heads)} heads "
                         f"({sorted(host.heads)}), not one; pass head_name.")
    name = next(iter(host.heads)) if name is None else name
    heads.check_known(host, name)
    if format == "peftcore":
        ours.save_head(host, directory, name)
    else:
        adapterhub.save_head(host, directory, name, safetensors)


def load_head(host: AdapterHost, directory: str | os.PathLike, load_as: str | None,
              id2label: dict[int, str] | None, set_active: bool, overwrite_ok: bool = False) -> str:
    """Read a head directory (ours or AdapterHub's), its labels replaced by ``id2label`` if given, check it off the
    model and attach it as ``load_as`` (default: its saved name; a head of that name is replaced with
    ``overwrite_ok``), the active head when ``set_active``; returns the head's name."""
    directory = existing(directory, "head")
    raw = io.read_json(io.require(directory / ours.HEAD_CONFIG_FILE))  # one name in both formats
    saved = ours.read_head(directory, raw) if ours.is_our_head(raw) else adapterhub.read_head(directory, raw)
    if id2label is not None:
        saved.config = {**saved.config, "label2id": heads.label2id(id2label, saved.config.get("num_labels"))}
    name, head = checked_head(host, saved, load_as, str(directory), overwrite_ok)
    heads.attach(host, name, head)
    if set_active:
        host.active_head = name
    return name


def existing(directory: str | os.PathLike, what: str) -> Path:
    """``directory`` as a Path once a save killed midway there is undone, or the local snapshot of the Hub repo it
    names (``io.resolve_directory``); it must exist."""
    directory = io.resolve_directory(directory, what)
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} directory {str(directory)!r} does not exist.")
    return directory


def write_setup(host: AdapterHost, directory: Path, merged: set[str]) -> None:
    """Every adapter, head and fusion attached, which adapters are ``merged`` and the active setup, into
    ``directory``, which a full-model save in our format is writing."""
    ours.write_setup(host, directory, merged)


def restore_setup(host: AdapterHost, directory: Path) -> None:
    """Attach what ``write_setup`` wrote into ``directory``, merge what was merged, activate what was active."""
    setup = ours.read_setup(directory)
    for name in setup["adapters"]:
        source = directory / "adapters" / name
        install(host, ours.read(source, io.read_json(io.require(source / ours.CONFIG_FILE)), False), name, str(source))
    for name in setup["heads"]:
        source = directory / "heads" / name
        placement.check_name(name)
        head = ours.read_head(source)
        heads.attach(host, name, built_head(host, head.config, head.state, f"{source}: head {name!r}"))
    for index, _ in enumerate(setup["fusions"]):
        source = directory / "fusions" / str(index)
        install_fusion(host, ours.read_fusion(source), None, str(source))
    for name in setup["merged"]:
        host.merge_adapter(name)
    host.set_active_adapters(setup["active"])
    host.active_head = setup["active_head"]
