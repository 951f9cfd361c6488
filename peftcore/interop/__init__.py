"""Adapter and fusion files in every format we read and write: ours (``ours.py``), AdapterHub's
(``adapterhub.py``) and HuggingFace PEFT's (``peft.py``). This is the one place that tells the formats apart:
``load_adapter`` recognises a directory's format by its files, and every reader turns a directory into a
``SavedAdapter`` (``saved.py``) that one install step checks against the model before attaching it.
"""

from __future__ import annotations

import os
from pathlib import Path

from peftcore import heads, io, placement
from peftcore.composition import Fuse
from peftcore.host import AdapterHost
from peftcore.interop import adapterhub, ours, peft
from peftcore.interop.saved import SavedAdapter, built_head, install, install_fusion

ADAPTER_FORMATS = ("peftcore", "adapterhub", "peft")
FUSION_FORMATS = ("peftcore", "adapterhub")


def check_hf_layout(host: AdapterHost, what: str) -> None:
    """AdapterHub's and PEFT's files name tensors by HF module paths, which a model states in its ``HFLayout``."""
    if not callable(getattr(host, "hf_site_path", None)):
        raise TypeError(f"{what} name tensors by the HuggingFace modules of a model, and {type(host).__name__} has no "
                        "HF layout (peftcore.host.HFLayout); save and load in peftcore's own format.")


def read_adapter(host: AdapterHost, directory: str | os.PathLike, with_head: bool = True) -> SavedAdapter:
    """Read an adapter directory in whichever format it is: ours, AdapterHub's or HF PEFT's."""
    directory = Path(directory)
    io.recover(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory {str(directory)!r} does not exist.")
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


def load_adapter(host: AdapterHost, directory: str | os.PathLike, load_as: str | None, with_head: bool) -> str:
    """Read, check and attach an adapter directory; returns the adapter's name."""
    saved = read_adapter(host, directory, with_head)
    return install(host, saved, load_as or saved.name, str(directory))


def save_adapter(host: AdapterHost, directory: str | os.PathLike, name: str, with_head: bool, format: str) -> None:
    if format not in ADAPTER_FORMATS:
        raise ValueError(f"format={format!r} is not known; use 'peftcore', 'adapterhub' or 'peft'.")
    if format != "peftcore":
        check_hf_layout(host, f"format={format!r} files")
    {"peftcore": ours.save, "adapterhub": adapterhub.save, "peft": peft.save}[format](host, directory, name,
                                                                                        with_head)


def load_fusion(host: AdapterHost, directory: str | os.PathLike, load_as: str | None) -> Fuse:
    """Read a fusion directory (ours or AdapterHub's), check it against the model off the model, then attach it."""
    directory = Path(directory)
    io.recover(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"fusion directory {str(directory)!r} does not exist.")
    if ours.is_our_fusion(directory):
        saved = ours.read_fusion(directory)
    else:
        check_hf_layout(host, "AdapterHub's fusion files")
        saved = adapterhub.read_fusion(host, directory)
    return install_fusion(host, saved, load_as, str(directory))


def save_fusion(host: AdapterHost, directory: str | os.PathLike, name: str, format: str) -> None:
    if format not in FUSION_FORMATS:
        raise ValueError(f"format={format!r} is not known; use 'peftcore' or 'adapterhub'.")
    if format != "peftcore":
        check_hf_layout(host, "AdapterHub's fusion files")
    {"peftcore": ours.save_fusion, "adapterhub": adapterhub.save_fusion}[format](host, directory, name)


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
        heads.attach(host, name, built_head(host, *ours.read_head(source), f"{source}: head {name!r}"))
    for index, _ in enumerate(setup["fusions"]):
        source = directory / "fusions" / str(index)
        install_fusion(host, ours.read_fusion(source), None, str(source))
    for name in setup["merged"]:
        host.merge_adapter(name)
    host.set_active_adapters(setup["active"])
    if setup["active_head"] is not None:
        heads.check_known(host, setup["active_head"])
    host.active_head = setup["active_head"]
