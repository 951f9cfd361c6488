"""What every file format reads into: an adapter or fusion in our key names, not yet attached to any model, and the
one install step that checks it against the model off the model and only then attaches it (a failed load leaves the
model as it was)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from peftcore import fusion, heads, io, placement
from peftcore.composition import Fuse
from peftcore.configs import AdapterConfigBase
from peftcore.fusion import AdapterFusionConfig
from peftcore.host import AdapterHost


@dataclass
class SavedAdapter:
    """An adapter read from disk, in our key names."""

    name: str
    config: AdapterConfigBase
    state: dict[str, Tensor]  # our keys, adapter name left out
    model_type: str | None
    hidden_size: int | None
    head_config: dict[str, Any] | None = None
    head_state: dict[str, Tensor] | None = None
    model_head_state: dict[str, Tensor] | None = None  # a transformers task head's weights, for the model's own head


@dataclass
class SavedHead:
    """A prediction head read from disk: its config dict and tensors, keys relative to the head."""

    name: str | None  # as saved
    config: dict[str, Any]
    state: dict[str, Tensor]
    model_type: str | None
    hidden_size: int | None


@dataclass
class SavedFusion:
    """Fusion layers read from disk, in our key names."""

    name: Any
    config: Any  # the fields of an AdapterFusionConfig, validated on install
    adapters: Any  # the fused adapters' names, or None where the file only has the fusion's name
    state: dict[str, Tensor]
    model_type: str | None
    hidden_size: int | None
    head: SavedHead | None = None  # the head saved beside the fusion (``save_adapter_fusion(with_head=...)``)


def check_model(host: AdapterHost, model_type: str | None, hidden_size: int | None, what: str) -> None:
    if model_type is not None and model_type != host.config.model_type:
        raise ValueError(f"{what} for a {model_type!r} model; this model is {host.config.model_type!r}.")
    if hidden_size is not None and hidden_size != host.config.hidden_size:
        raise ValueError(f"{what} for hidden size {hidden_size}; this model's is {host.config.hidden_size}.")


def install(host: AdapterHost, saved: SavedAdapter, name: str, source: str, strict: bool = True,
            report: dict | None = None) -> str:
    """Build, fill and check every module of ``saved`` off the model, then attach them all. Without ``strict``,
    the adapter's tensors load as AdapterHub loads them (``io.lenient``: missing and unexpected keys go to
    ``report``)."""
    placement.check_name(name)
    if name in host.adapter_configs:
        raise ValueError(f"the model already has an adapter {name!r}; pass load_as='another_name' or delete it.")
    check_model(host, saved.model_type, saved.hidden_size, f"{source} holds an adapter")
    what = f"{source}: adapter {saved.name!r}"
    slots, state = placement.build(host, saved.config, meta=True).slots(), saved.state
    if not strict:
        slots, state = io.lenient(slots, state, report)
    io.check_fit(slots, state, what)  # before allocating
    built = placement.build(host, saved.config)
    io.fill({key: slot for key, slot in built.slots().items() if key in state}, state, what)  # strict: every key
    if saved.head_config is not None and name in host.heads:
        raise ValueError(f"the model has a head {name!r} already and {source} holds one; delete_head({name!r}), "
                         "load under another name (load_as=...), or pass with_head=False.")
    head = None
    if saved.head_config is not None:
        head = built_head(host, saved.head_config, saved.head_state or {}, f"{source}: head {saved.name!r}")
    if saved.model_head_state is not None:
        tied = host.aliases()
        io.fill({f"head.{key}": (host.head, key) for key in host.head.state_dict() if f"head.{key}" not in tied},
                saved.model_head_state, f"{source}: model head")
    placement.attach(host, name, saved.config, built)
    if head is not None:
        heads.attach(host, name, head)
    return name


def built_head(host: AdapterHost, config: dict[str, Any], state: dict[str, Tensor], what: str) -> nn.Module:
    """A head built from its config and filled from a file, checked on the meta device first; attaches nothing."""
    io.check_fit(*head_fit(host, heads.build(host, config, meta=True), state), what)
    head = heads.build(host, config)
    io.fill(*head_fit(host, head, state), what)
    return head


def head_fit(host: AdapterHost, head: nn.Module, state: dict[str, Tensor]
             ) -> tuple[dict[str, tuple[nn.Module, str]], dict[str, Tensor]]:
    """A head's own tensors (what a head file holds) and the saved ones for them: the word embeddings a masked-LM
    decoder is tied to are the model's, though AdapterHub writes them too."""
    own = heads.own_state(host, head)
    tied = set(head.state_dict()) - set(own)
    return {key: (head, key) for key in own}, {key: t for key, t in state.items() if key not in tied}


def checked_head(host: AdapterHost, saved: SavedHead, name: str | None, source: str, overwrite_ok: bool = False
                 ) -> tuple[str, nn.Module]:
    """A saved head built and filled off the model under ``name`` (default: its saved name), once the name is free
    (or ``overwrite_ok``) and the head fits the model; attaches nothing."""
    name = name or saved.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source} names no head; pass load_as='a_name'.")
    placement.check_name(name)
    if name in host.heads and not overwrite_ok:
        raise ValueError(f"the model has a head {name!r} already; delete_head({name!r}), pass "
                         "load_as='another_name', or overwrite_ok=True to replace it.")
    check_model(host, saved.model_type, saved.hidden_size, f"{source} holds a head")
    return name, built_head(host, saved.config, saved.state, f"{source}: head {name!r}")


def install_fusion(host: AdapterHost, saved: SavedFusion, load_as: str | None, source: str) -> tuple[Fuse, str | None]:
    """Check a fusion (and the head saved with it, named ``load_as`` if given) against the model and the adapters it
    fuses off the model, then attach its layers (and head); returns the fusion and the head's name, if any."""
    if not isinstance(saved.name, str) or not saved.name:
        raise ValueError(f"{source} names no fusion (its config has no 'name').")
    check_model(host, saved.model_type, saved.hidden_size, f"{source} holds a fusion")
    config = AdapterFusionConfig.load(saved.config)
    adapters = saved.adapters if saved.adapters is not None else saved.name.split(",")
    if not isinstance(adapters, list) or not adapters or not all(isinstance(a, str) and a for a in adapters):
        raise ValueError(f"{source} names the fused adapters {adapters!r}; expected a list of adapter names.")
    custom = load_as or (saved.name if saved.name != ",".join(adapters) else None)
    fuse = Fuse(*adapters, name=custom)
    for adapter in fuse.flatten():
        if adapter not in host.adapter_configs:
            raise ValueError(f"{source} fuses adapters {list(fuse.flatten())}; load adapter {adapter!r} first.")
    if fuse.name in host.fusion_configs:
        raise ValueError(f"the model already has a fusion {fuse.name!r}; delete it first or pass load_as.")
    what = f"{source}: fusion {saved.name!r}"
    io.check_fit(fusion.slots(fusion.build(host, fuse, config, meta=True)), saved.state, what)  # before allocating
    head = None if saved.head is None else checked_head(host, saved.head, load_as, source)
    placed = fusion.build(host, fuse, config)
    io.fill(fusion.slots(placed), saved.state, what)
    fusion.attach(host, fuse, config, placed)
    if head is not None:
        heads.attach(host, *head)
    return fuse, None if head is None else head[0]
