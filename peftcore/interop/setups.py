"""Adapter setup directories, AdapterHub's ``save_adapter_setup``/``load_adapter_setup``: every adapter of a setup
in a subdirectory named after it (with its head), each fusion in one named after the fusion, the heads of the head
setup in theirs, and ``adapter_setup.json`` naming the setup and the head setup in AdapterHub's block layout
(``{"type": "Stack", "children": [{"type": "single", "children": ["a"]}, ...], "kwargs": {...}}``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftcore import heads, interop, io, placement
from peftcore.composition import BLOCKS, Block, Fuse, walk
from peftcore.context import head_names
from peftcore.host import AdapterHost
from peftcore.interop.adapterhub import VERSION

SETUP_FILE = "adapter_setup.json"
HeadSetup = str | Sequence[str] | Block | None


def save(host: AdapterHost, directory: str | os.PathLike, setup: Block, head_setup: HeadSetup, format: str,
         safetensors: bool) -> None:
    """Write ``setup``'s adapters (each with the head of its name, if any), fusions and the heads of ``head_setup``
    into ``directory``, then the setup file; every name is checked first."""
    directory = Path(directory)
    fusions = [block.name for block in walk(setup) if isinstance(block, Fuse)]
    for name in setup.flatten():
        placement.check_known(host, name)
    for name in head_names(head_setup):
        heads.check_known(host, name)
    for name in setup.flatten():
        interop.save_adapter(host, directory / name, name, True, format, safetensors)
    for name in fusions:
        interop.save_fusion(host, directory / name, name, False, format, safetensors)
    for name in head_names(head_setup):
        if name not in setup.flatten():  # saved beside its adapter already
            interop.save_head(host, directory / name, name, format, safetensors)
    io.write_json(directory / SETUP_FILE, {"adapter_setup": block_dict(setup), "head_setup": (
        block_dict(head_setup) if isinstance(head_setup, Block) else head_setup), "version": VERSION})


def load(host: AdapterHost, directory: str | os.PathLike) -> tuple[Block, HeadSetup]:
    """Attach what ``save`` wrote into ``directory`` (or AdapterHub's ``save_adapter_setup``); returns the setup and
    the head setup. The caller runs it as one change (all or nothing) and activates what it returns."""
    directory = Path(directory)
    raw = io.read_json(io.require(directory / SETUP_FILE))
    if not isinstance(raw, dict) or "adapter_setup" not in raw:
        raise ValueError(f"{directory / SETUP_FILE} holds no adapter_setup; it is not an adapter setup directory.")
    setup = block_from_dict(raw["adapter_setup"])
    head_setup = raw.get("head_setup")
    head_setup = block_from_dict(head_setup) if isinstance(head_setup, dict) else head_setup
    if not isinstance(setup, Block) or not (head_setup is None or isinstance(head_setup, str | list | Block)):
        raise ValueError(f"{directory / SETUP_FILE}: the setup must be a block and the head setup a name, a list or "
                         f"a block; got {raw['adapter_setup']!r} and {raw.get('head_setup')!r}.")
    for name in setup.flatten():
        interop.load_adapter(host, directory / name, None, True)
    for block in walk(setup):
        if isinstance(block, Fuse):
            interop.load_fusion(host, directory / block.name, None, False, False)
    for name in head_names(head_setup):
        if name not in host.heads:
            interop.load_head(host, directory / name, None, None, False)
    return setup, head_setup


def block_dict(block: Block | str) -> dict[str, Any]:
    """A setup in AdapterHub's layout."""
    if isinstance(block, str):
        return {"type": "single", "children": [block]}
    data: dict[str, Any] = {"type": type(block).__name__, "children": [block_dict(child) for child in block]}
    if block.options():
        data["kwargs"] = block.options()
    return data


def block_from_dict(data: Any) -> Block | str:
    """The setup ``block_dict`` (or AdapterHub) wrote; anything else is a ValueError saying what it found."""
    kind = data.get("type") if isinstance(data, dict) else None
    children = data.get("children") if isinstance(data, dict) else None
    if kind == "single" and isinstance(children, list) and len(children) == 1 and isinstance(children[0], str):
        return children[0]
    if kind not in BLOCKS or not isinstance(children, list) or not isinstance(data.get("kwargs", {}), dict):
        raise ValueError(f"an adapter setup block is {{'type': one of {sorted(BLOCKS)} or 'single', 'children': "
                         f"[...], 'kwargs': {{...}}}}, got {data!r}.")
    return BLOCKS[kind](*(block_from_dict(child) for child in children), **data.get("kwargs", {}))
