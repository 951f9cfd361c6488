"""Files, with no knowledge of any method or model: atomic directory writes, JSON, safetensors and weights-only
pickles read strictly, the strict copy of a file's tensors into modules, and where a directory named by a
Hugging Face Hub repo id lies (``resolve_directory``: every checkpoint, adapter and tokenizer path goes through it).

Everything that writes to disk goes through ``atomic_directory_write`` — adapters, fusions and whole checkpoints —
so an interrupted save never leaves a half-written directory where a good one was. Pickle is read only through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

LIST_LIMIT = 10  # entries shown per list in an error message; the rest are counted


# ---- writing -----------------------------------------------------------------------------------------------------


@contextmanager
def atomic_directory_write(path: str | os.PathLike, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write files into a new sibling directory, then swap it in for ``path`` with two renames.

    The new directory first receives hard links to whatever else ``path`` holds (files this write neither produces
    nor names in ``replaces``: a head saved earlier beside the adapter is dropped, so it cannot load with the new
    files). Until the swap, ``path`` is untouched; an error in the swap puts it back. A process killed mid-save
    leaves its scratch directory ``.NAME.tmp-PID-*`` beside ``path``, and one killed between the two renames leaves
    ``path`` missing with its previous content in that scratch's ``previous``: ``recover`` (run by every save and
    load of ``path``) restores the one and removes the other.
    """
    target = Path(path)
    recover(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} is a file; an adapter or checkpoint is saved as a directory.")
    working = Path.cwd().resolve()
    if target.resolve() in (working, *working.parents):
        raise ValueError(f"{str(target)!r} is the working directory or one of its parents, and a save replaces its "
                         "whole directory; save into a directory of its own (e.g. 'out/adapter').")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f"{scratch_prefix(target)}{os.getpid()}-") as scratch:
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


def scratch_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def recover(path: str | os.PathLike) -> None:
    """Undo what saves of ``path`` killed midway left: put back a previous version a kill between the final renames
    left only in a scratch directory, and remove the scratch directories of saves no process is running."""
    target = Path(path)
    if not target.parent.is_dir():
        return
    for scratch in sorted(target.parent.glob(f"{glob.escape(scratch_prefix(target))}*")):
        pid = scratch.name.removeprefix(scratch_prefix(target)).partition("-")[0]
        if not scratch.is_dir() or (pid.isdigit() and is_running(int(pid))):
            continue
        if not target.exists() and (scratch / "previous").is_dir():
            os.replace(scratch / "previous", target)
        shutil.rmtree(scratch, ignore_errors=True)


def is_running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (a save in progress owns its scratch directory)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        return True
    return True


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
    """A safetensors file with the mode any new file gets (safetensors itself creates it 0600: unreadable for the
    other users of a shared model folder)."""
    save_file({key: t.detach().contiguous() for key, t in state.items()}, path, metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (changing it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---- reading -----------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a missing file, invalid JSON or another JSON value is an error naming the file."""
    try:
        data = json.loads(Path(path).read_text())
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


def read_tensors(directory: Path, names: tuple[str, str]) -> dict[str, Tensor] | None:
    """The first of (safetensors, pickle) in ``directory`` that exists, read safely; None when neither does."""
    safetensors, pickle_file = (directory / name for name in names)
    if safetensors.is_file():
        return read_safetensors(safetensors)
    return read_pickle(pickle_file) if pickle_file.is_file() else None


def require(file: Path) -> Path:
    """``file``, or a FileNotFoundError listing what its directory holds instead."""
    if not file.is_file():
        present = sorted(p.name for p in file.parent.iterdir())
        raise FileNotFoundError(f"{file.parent} has no {file.name} (it holds {present}).")
    return file


# ---- Hugging Face Hub repo ids ------------------------------------------------------------------------------------

REPO_ID = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")  # huggingface_hub's rule, less its bare names (a missing
# local directory "out" would read as one)
TRUE = ("1", "ON", "YES", "TRUE")  # huggingface_hub's spellings of a true environment flag


def is_repo_id(text: str) -> bool:
    """Whether ``text`` is a Hugging Face Hub repo id "org/name" (letters, digits, ``_ . -``; no ``--`` or ``..``;
    at most 96 characters)."""
    return (REPO_ID.fullmatch(text) is not None and len(text) <= 96 and "--" not in text and ".." not in text
            and not any(part.startswith((".", "-")) or part.endswith((".", "-")) for part in text.split("/")))


def resolve_directory(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a local directory, once a save killed midway there is undone; where no such path exists and it is
    a Hub repo id ("org/name"), the repo's snapshot directory in the Hugging Face cache, downloaded there first
    unless ``HF_HUB_OFFLINE`` is set (``huggingface_hub``'s ``snapshot_download``; the cache is ``HF_HUB_CACHE``, by
    default ``$HF_HOME/hub``). ``what`` names the directory in errors ("checkpoint", "adapter").

    A string that is neither an existing path nor a repo id is an error, as is a repo id without ``huggingface_hub``
    installed (the optional ``hub`` extra) or, offline, without a snapshot in the cache.
    """
    target = Path(path)
    recover(target)
    if not isinstance(path, str) or target.exists():
        return target
    if not is_repo_id(path):
        raise FileNotFoundError(f"{what} directory {path!r} does not exist, and it is not a Hugging Face Hub repo id "
                                "('org/name') either; pass an existing directory or a repo id.")
    return hub_snapshot(path, what)


def hub_snapshot(repo_id: str, what: str) -> Path:
    """The local snapshot directory of Hub repo ``repo_id`` (see ``resolve_directory``)."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as error:
        raise ImportError(f"{what} {repo_id!r} is not a local directory; as a Hugging Face Hub repo id it needs "
                          "huggingface_hub: pip install peftcore[hub]") from error
    offline = huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE
    cache = os.environ.get("HF_HUB_CACHE") or huggingface_hub.constants.HF_HUB_CACHE  # read now, not at import
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, cache_dir=cache, local_files_only=offline))
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"{what} {repo_id!r} is not a local directory, and the Hugging Face cache ({cache}) holds no snapshot of "
            f"that repo" + (" while HF_HUB_OFFLINE is set; download it where the Hub is reachable "
                            f"(huggingface-cli download {repo_id}) or unset HF_HUB_OFFLINE." if offline else
                            f" and the Hub could not be reached: {error}")) from error


# ---- strict copies -----------------------------------------------------------------------------------------------


def problem_report(heading: str, problems: Sequence[tuple[str, Sequence[str]]], hint: str | None = None) -> str:
    """One message listing every kind of problem (``(title, entries)``), each list cut to ``LIST_LIMIT`` entries."""
    lines = [heading]
    for title, entries in problems:
        if entries:
            shown = ", ".join(entries[:LIST_LIMIT])
            more = f", ... ({len(entries) - LIST_LIMIT} more)" if len(entries) > LIST_LIMIT else ""
            lines.append(f"  {len(entries)} {title}: {shown}{more}")
    if hint:
        lines.append(hint)
    return "\n".join(lines)


def tensor_problems(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> list[tuple[str, list[str]]]:
    """What keeps ``state`` from filling the tensors ``expected`` exactly: unexpected and missing keys, shape
    mismatches, integer tensors where a float belongs (float dtypes convert). Every list is empty when it fits."""
    common = sorted(set(state) & set(expected))
    return [("unexpected", sorted(set(state) - set(expected))),
            ("missing", sorted(set(expected) - set(state))),
            ("shape mismatches", [f"{key}: file {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
                                  for key in common if state[key].shape != expected[key].shape]),
            ("dtype mismatches", [f"{key}: file {state[key].dtype}, model {expected[key].dtype}" for key in common
                                  if state[key].is_floating_point() != expected[key].is_floating_point()])]


def check_fit(expected: Mapping[str, tuple[nn.Module, str]], state: Mapping[str, Tensor], what: str
              ) -> dict[str, Tensor]:
    """The tensors ``expected`` names (key -> (module, key inside it)), once ``state`` fits them exactly: the same
    keys and shapes, floats where floats belong, every value finite. The modules may be on the meta device, so a
    file is checked against what it declares before anything of that size is allocated."""
    targets = {key: module.state_dict(keep_vars=True)[local] for key, (module, local) in expected.items()}
    problems = tensor_problems(state, targets)
    problems.append(("tensors with NaN or infinite values", sorted(key for key, t in state.items()
                                                                  if t.is_floating_point() and not t.isfinite().all())))
    if any(entries for _, entries in problems):
        raise ValueError(problem_report(f"{what} does not fit this model:", problems))
    return targets


def lenient(expected: Mapping[str, tuple[nn.Module, str]], state: Mapping[str, Tensor], report: dict | None
            ) -> tuple[dict[str, tuple[nn.Module, str]], dict[str, Tensor]]:
    """AdapterHub's loading, as an option: the keys ``expected`` and ``state`` share (the rest keeps its fresh
    values), with the missing and the unexpected keys added to ``report``'s ``missing_keys``/``unexpected_keys``.
    Shapes and values of the shared keys are still checked (``check_fit``)."""
    if report is not None:
        report.setdefault("missing_keys", []).extend(sorted(set(expected) - set(state)))
        report.setdefault("unexpected_keys", []).extend(sorted(set(state) - set(expected)))
    return {key: slot for key, slot in expected.items() if key in state}, {
        key: tensor for key, tensor in state.items() if key in expected}


def fill(expected: Mapping[str, tuple[nn.Module, str]], state: Mapping[str, Tensor], what: str) -> None:
    """Copy ``state`` into the modules ``expected`` names, after ``check_fit``; nothing is copied unless all fits."""
    with torch.no_grad():
        for key, target in check_fit(expected, state, what).items():
            target.copy_(state[key])
