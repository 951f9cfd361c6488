"""What peftcore's modules need from a model: the host interface, written down.

Placement, setup, forward, merging, fusion, heads, summary and every file format work against ``AdapterHost``, never
against a model class or the mixin that implements most of it (model.py). A model provides the rest: its config,
its layers and sites, its own task head, and ``HFLayout`` — where its tensors and sites sit in the HuggingFace
layout, which AdapterHub's and PEFT's files name them by. models/'s ``PretrainedEncoder`` is one such host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from torch import Tensor, nn

from peftcore.composition import Block
from peftcore.configs import AdapterConfigBase
from peftcore.recording import Recorder
from peftcore.sites import Site


class HFModule(Protocol):
    """One module of a model's HF layout that PEFT may target, and the sites of ours it covers."""

    path: str  # as PEFT names it (with the task model's base prefix when the file has one)
    layer: int | None
    sites: tuple[str, ...]  # none: no site of ours there; several: a fused module (DeBERTa v1's in_proj)
    split: Callable[[Tensor], tuple[Tensor, ...]] | None  # a fused module's rows -> one tensor per site
    join: Callable[[tuple[Tensor, ...]], Tensor] | None


class HFLayout(Protocol):
    """Where a model's tensors and sites sit in the HuggingFace layout."""

    @property
    def hf_prefix(self) -> str:
        """The base model's prefix in HF task checkpoints (``"bert."``)."""

    @property
    def hf_base_class(self) -> str:
        """transformers' class of the base model (``"BertModel"``), after which AdapterHub names its classes."""

    def hf_site_path(self, site: str, layer: int | None) -> str | None:
        """Where AdapterHub keeps the modules of our site ``site`` (None: nowhere in this architecture)."""

    def hf_shared_path(self, shared_key: str) -> str | None:
        """Where AdapterHub keeps shared module ``shared_key`` (``{name}`` for the adapter), where this architecture
        names it otherwise than the method's ``adapterhub_shared_path``; None: the method's."""

    def hf_modules(self, with_prefix: bool) -> Mapping[str, HFModule]:
        """Every HF module with a weight, base modules under ``hf_prefix`` when ``with_prefix``, by path."""

    def hf_head_keys(self) -> Mapping[str, str | None]:
        """The model's own task head's HF keys -> our keys (None: dropped); empty without a head."""

    def head_state_from_hf(self, hf_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """An HF task head's tensors in our ``head.*`` names."""


class AdapterHost(HFLayout, Protocol):
    """A model with sites and adapter state: what peftcore's modules read and change."""

    config: Any  # model_type, hidden_size, layer_norm_eps, head; vocab_size, num_attention_heads where it has them
    layers: nn.ModuleList
    head: nn.Module | None  # the model's own task head
    training: bool
    adapter_configs: dict[str, AdapterConfigBase]
    fusion_configs: dict[str, Any]
    fused_adapters: dict[str, tuple[str, ...]]
    heads: nn.ModuleDict
    shared_parameters: nn.ModuleDict
    active_head: Any  # a head name, a Parallel's heads (list), a BatchSplit of heads or None (model.py)
    _active_head: str | None  # the one head of the output when no branch has its own (forward.py swaps it)
    plan: Any  # the installed setup.Plan (setup.py imports this module, so it is not named here)
    recorder: Recorder

    @property
    def sites_found(self) -> tuple[Site, ...]: ...

    @property
    def active_adapters(self) -> Block | None: ...

    def get_input_embeddings(self) -> nn.Module: ...

    def head_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss of the model's own task head's ``logits`` against ``labels``."""

    def set_active_adapters(self, setup: Any) -> None: ...

    def merge_adapter(self, name: str) -> None: ...

    def aliases(self) -> set[str]:
        """State-dict keys that name a parameter already listed under another key (tied weights)."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]: ...
