"""What every method builds on: ``Method``, the module base class whose hooks are the only place the core learns
what differs between methods, and ``ModelShape``, what a method may know of the model it is built for.

The core (placement, composition, merging, averaging, files) calls these hooks and never looks at a method's class,
config fields or parameter names. A new method overrides the hooks it needs; the defaults describe a method that
adds computation at its sites and stores its tensors under the same names in every format.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from peftcore.configs import AdapterConfigBase, check_in, check_type, register
from peftcore.sites import Site


class ModelShape(NamedTuple):
    """What a method needs to know of the model it is built for."""

    hidden_size: int
    num_layers: int
    num_heads: int | None  # None: the model's config has no num_attention_heads


def init_generator(seed: int | None) -> torch.Generator | None:
    """A private generator for ``init_weights_seed`` (None: the global RNG), so seeding never touches global state."""
    return None if seed is None else torch.Generator().manual_seed(seed)


def state_key(site_path: str, local: str) -> str:
    """Our file key of a tensor ``local`` of the module attached at ``site_path`` (the adapter name left out)."""
    return f"{site_path}.adapters.{local}"


def shared_state_key(shared_key: str, local: str) -> str:
    """Our file key of a tensor ``local`` of an adapter's shared module ``shared_key``."""
    return f"shared_parameters.{shared_key}.{local}"


@dataclass(frozen=True)
class PeftFile:
    """A HuggingFace PEFT adapter as a method's ``from_peft`` receives it: the file's config, its tensors (keys
    without PEFT's ``base_model.model.`` root), the model's HF modules that its ``target_modules`` select (each
    covering some of our sites, in the file's own naming), and where each of our sites lives in our model."""

    where: Path  # the config file, for messages
    raw: Mapping[str, Any]
    tensors: Mapping[str, Tensor]
    targeted: Mapping[str, Any]  # HF module path -> the model's HFModule (path, layer, sites, split, join)
    site_paths: Mapping[tuple[int, str], str]  # (layer, site name) -> our module path
    shape: ModelShape

    def key(self, layer: int, site: str, local: str) -> str:
        """Our key for tensor ``local`` of the module at ``site`` of ``layer``."""
        return state_key(self.site_paths[layer, site], local)


STRATEGIES = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
              "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
PRUNED = ("ties", "dare_linear", "dare_ties", "magnitude_prune")  # their base names: each needs a density


@dataclass(frozen=True)
class Weighting:
    """A ``merge_adapters`` strategy (PEFT's ``combination_type``; the math: task_arithmetic.py) and its options,
    checked; ``generator`` draws DARE's random masks (None: the global RNG, as PEFT)."""

    method: str
    svd_rank: int | None = None
    svd_clamp: float | None = None
    svd_full_matrices: bool = True
    density: float | None = None
    majority_sign_method: str = "total"
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        check_in("merge_adapters", "method", self.method, STRATEGIES)
        if (self.svd_rank is not None or self.svd_clamp is not None) and not self.is_svd:
            raise ValueError(f"svd_rank and svd_clamp apply to the SVD strategies (svd, *_svd), not "
                             f"{self.method!r}; leave them None.")
        if self.svd_rank is not None:
            check_type("merge_adapters", "svd_rank", self.svd_rank, int, "a positive int or None")
            if self.svd_rank < 1:
                raise ValueError(f"merge_adapters.svd_rank must be a positive int, got {self.svd_rank}.")
        if self.svd_clamp is not None:
            check_type("merge_adapters", "svd_clamp", self.svd_clamp, (int, float), "a quantile in [0, 1] or None")
            if not 0.0 <= self.svd_clamp <= 1.0:
                raise ValueError(f"merge_adapters.svd_clamp is a quantile in [0, 1], got {self.svd_clamp}.")
        check_type("merge_adapters", "svd_full_matrices", self.svd_full_matrices, bool, "True or False")
        check_in("merge_adapters", "majority_sign_method", self.majority_sign_method, ("total", "frequency"))
        if self.base not in PRUNED:
            if self.density is not None:
                raise ValueError(f"density applies to {', '.join(PRUNED)} and their *_svd forms, not "
                                 f"{self.method!r}; leave it None.")
            return
        check_type("merge_adapters", "density", self.density, (int, float), f"a fraction in [0, 1] ({self.method} "
                   "keeps that fraction of each update's entries)")
        low_ok = self.density > 0 if self.is_dare else self.density >= 0
        if not (low_ok and self.density <= 1):
            bounds = "(0, 1] (DARE rescales by 1/density)" if self.is_dare else "[0, 1]"
            raise ValueError(f"merge_adapters.density must lie in {bounds}, got {self.density}.")

    @property
    def is_svd(self) -> bool:
        return self.method == "svd" or self.method.endswith("_svd")

    @property
    def is_dare(self) -> bool:
        return self.method.startswith("dare")

    @property
    def base(self) -> str:
        """The strategy without its SVD cut: ``svd`` is ``linear``."""
        return "linear" if self.method == "svd" else self.method.removesuffix("_svd")

    @property
    def concatenates(self) -> bool:
        """Whether the result is the exact weighted sum held by concatenated factors (``linear``, ``cat``)."""
        return self.method in ("linear", "cat")

    def for_count(self, count: int) -> Weighting:
        """PEFT's rule: a single adapter is always merged linearly (it ignores density and the SVD cut)."""
        return self if count > 1 else replace(self, method="linear", svd_rank=None, svd_clamp=None, density=None)


def linear_average(target: nn.Module, sources: Sequence[nn.Module], weights: Sequence[float]) -> None:
    """Every tensor of ``target`` := the weighted sum of the same tensor in ``sources``."""
    states = [source.state_dict() for source in sources]
    with torch.no_grad():
        for key, tensor in target.state_dict(keep_vars=True).items():
            tensor.copy_(sum(w * state[key] for w, state in zip(weights, states, strict=True)))


class TrainingCallback:
    """What a method asks of the Trainer beside the optimizer step (AdaLoRA's rank allocation): a term added to each
    loss, work after each optimizer step (before the gradients are cleared), and its state in checkpoints."""

    def regularisation(self) -> Tensor | float:
        """Added to the loss of every forward pass in training."""
        return 0.0

    def after_step(self, step: int) -> None:
        """Called after optimizer step ``step`` (0 for the first), the gradients still in place."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict()``'s ``state`` when a run resumes."""


class MultiTaskConfig(AdapterConfigBase):
    """Marks the configs of multi-task methods (AdapterHub's MultiTaskConfig): adapters of one such config, one per
    task, may tie their ``Method.shareable`` tensors together with ``share_parameters``."""


class Method(nn.Module):
    """Base of every PEFT method module: one module per site it sits at, built from one config class.

    Placement: ``sites(config, layer)`` maps config fields to site names for one layer (``None``: the embeddings);
    it is the only translation from config to placement. ``build_shared`` makes the one module an adapter shares
    across its sites, if the method has one (kept in ``model.shared_parameters[adapter][shared_key]``); ``build``
    makes the module for one site. Running: the module's ``forward`` matches its site kind (peftcore/plugs.py
    names the signatures). A gated method keeps its ``Gate`` as ``self.gate``.
    """

    config_class: ClassVar[type[AdapterConfigBase]]
    shared_key: ClassVar[str | None] = None
    shareable: ClassVar[tuple[str, ...]] = ()  # parameters share_parameters ties across adapters (MultiTaskConfig)
    trains_shared: ClassVar[bool] = True  # False: the shared module stays fixed (VeRA's random A, B) in train_adapter
    loraplus_b: ClassVar[tuple[str, ...]] = ()  # parameters LoRA+ trains at its higher rate (peftcore/loraplus.py)
    title: ClassVar[str]  # the method's name in messages; the class name unless set

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.title = cls.__dict__.get("title", cls.__name__)

    @classmethod
    def sites(cls, config: Any, layer: int | None) -> tuple[str, ...]:
        raise NotImplementedError

    @classmethod
    def build_shared(cls, config: Any, shape: ModelShape) -> nn.Module | None:
        return None

    @classmethod
    def build(cls, config: Any, site: Site, shape: ModelShape, shared: nn.Module | None) -> Method:
        return cls(config, shape.hidden_size, site.layer)

    def initialise(self, site: Site) -> None:
        """Initialisation that reads the model at ``site`` (prompt tuning's ``from_string`` embeds a text), run when an
        adapter is added, not when its tensors come from a file or an average; nothing by default."""

    @contextmanager
    def checkpointed(self) -> Iterator[None]:
        """The span of one call of the module's layer under gradient checkpointing, which recomputes each layer alone
        in the backward pass: a method that carries values from one layer to the next within a forward computes them
        in each layer instead while it lasts (prefix tuning's pool); nothing by default."""
        yield

    def share(self, shared: nn.Module) -> None:
        """Keep a reference to the adapter's shared module without registering it a second time."""
        object.__setattr__(self, "shared", shared)

    @property
    def token_wise(self) -> bool:
        """Whether this module acts on each token alone, so a padded batch may run on its real tokens only.
        A UniPELT gate averages over the whole padded sequence, as AdapterHub's does, unless it averages over the
        real tokens only (``gate_over_real_tokens``)."""
        gate = getattr(self, "gate", None)
        return gate is None or gate.real_tokens

    @classmethod
    def training_callback(cls, config: Any, modules: Sequence[Method], total_steps: int) -> TrainingCallback | None:
        """What the Trainer must do for ``modules`` (this method's modules of one adapter of ``config``, in model
        order) over a run of ``total_steps`` optimizer steps beside the optimizer step; None for most methods."""
        return None

    # ---- merging into the site's weights ---------------------------------------------------------------------

    @property
    def is_merged(self) -> bool:
        return False

    def merge_refusal(self) -> str | None:
        """Why this module cannot be folded into its site's weights, or None when ``merge_into`` can."""
        return (f"a {type(self).__name__} adds computation that no weight can hold; only LoRA and (IA)^3 adapters "
                "(DoRA and VeRA included) merge")

    def merge_into(self, site: nn.Module) -> None:
        raise ValueError(self.merge_refusal())

    def unmerge_from(self, site: nn.Module) -> None:
        raise ValueError(f"this {type(self).__name__} is not merged; there is nothing to reset.")

    # ---- averaging several adapters into one -----------------------------------------------------------------

    average_strategies: ClassVar[tuple[str, ...]] = ("linear",)  # the first is the default, every method has it

    @classmethod
    def averaged_config(cls, config: Any, strategy: str, svd_rank: int | None) -> Any:
        """The config of an adapter averaged from adapters of ``config`` by ``strategy``; ``svd_rank`` belongs to
        strategies that cut the average's rank, and is an error elsewhere."""
        if svd_rank is not None:
            raise ValueError(f"svd_rank applies to rank-cutting strategies (LoRA's 'lora_delta_w_svd'), not "
                             f"{strategy!r}; leave it None.")
        return config

    def average_from(self, sources: Sequence[Method], weights: Sequence[float], strategy: str) -> None:
        """Fill this (new) module from the same module of each averaged adapter; "linear" averages every tensor."""
        linear_average(self, sources, weights)

    # ---- weighted merging into a new adapter (merge_adapters: PEFT's add_weighted_adapter) ----------------------

    weighted_strategies: ClassVar[tuple[str, ...]] = ()  # those of STRATEGIES it offers; () for none

    def weighted_refusal(self) -> str | None:
        """Why this module cannot take part in ``merge_adapters`` though its class offers strategies, or None."""
        return None

    @classmethod
    def weighted_config(cls, configs: Sequence[Any], weighting: Weighting, shape: ModelShape) -> Any:
        """The config of the adapter ``merge_adapters`` builds from adapters of ``configs`` by ``weighting``; by
        default they must agree up to dropout and initialisation, and it is theirs."""
        if any(config.essentials() != configs[0].essentials() for config in configs):
            raise ValueError(f"{cls.title} adapters of different configs cannot be merged; merge adapters of one "
                             "config (up to dropout and initialisation).")
        return configs[0]

    def weighted_from(self, sources: Sequence[Method], weights: Sequence[float], weighting: Weighting) -> None:
        """Fill this (new) module from the same module of each merged adapter; by default every tensor is the
        weighted sum of the sources' (PEFT's (IA)^3 ``linear``: Σ wᵢ·lᵢ, unnormalised)."""
        linear_average(self, sources, weights)

    # ---- ejecting a reparameterisation ----------------------------------------------------------------------

    @classmethod
    def ejected(cls, config: Any, shared: nn.Module | None) -> tuple[Any, nn.Module] | None:
        """The config and shared module this method's part of an adapter becomes when its training-time
        reparameterisation is dropped (prefix tuning's MLP), or None when it has none."""
        return None

    # ---- AdapterHub's file layout ----------------------------------------------------------------------------

    adapterhub_container: ClassVar[str | None] = "adapters"  # the ModuleDict at the site; None: right under it
    adapterhub_shared_path: ClassVar[str | None] = None  # where the shared module sits, with {name}

    @classmethod
    def adapterhub_names(cls, config: Any, key: str) -> tuple[str, ...]:
        """AdapterHub's names, inside its module, for our tensor ``key`` (the first is the one it reads)."""
        return (key,)

    @classmethod
    def from_adapterhub(cls, config: Any, state: dict[str, Tensor]) -> Any:
        """This method's part ``config`` of an AdapterHub file as the file's tensors ``state`` (our keys) show it,
        those tensors rewritten in place where ours stores them otherwise; by default both as they are."""
        return config

    @classmethod
    def to_adapterhub(cls, config: Any, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` (our keys) with this method's tensors in AdapterHub's form; by default as it is."""
        return state

    @classmethod
    def is_adapterhub_copy(cls, key: str) -> bool:
        """Whether an AdapterHub key (base-model prefix removed) is a redundant copy that loading skips."""
        return False

    @classmethod
    def read_adapterhub_tensors(cls, config: Any, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """An AdapterHub file's tensors (its keys, base-model prefix removed) with this method's values converted
        where its layout stores them otherwise than ours, before they take our names: for what AdapterHub keeps that
        ours has no key for (ReFT's ``base``); unchanged by default. ``from_adapterhub`` follows, on our keys."""
        return tensors

    @classmethod
    def write_adapterhub_tensors(cls, config: Any, tensors: dict[str, Tensor]) -> tuple[Any, dict[str, Tensor]]:
        """The config and our tensors, under AdapterHub's names, as AdapterHub's file must state them for AdapterHub
        to compute what ours does (``read_adapterhub_tensors``' inverse); unchanged by default. Raises where it
        cannot."""
        return config, tensors

    # ---- HuggingFace PEFT's file layout ----------------------------------------------------------------------

    peft_type: ClassVar[str | None] = None  # PEFT's name for this method; None: PEFT has none we convert
    peft_suffixes: ClassVar[tuple[str, ...]] = ()  # the tensors PEFT keeps per targeted module; () for prompts
    peft_shared: ClassVar[tuple[str, ...]] = ()  # PEFT's keys of tensors the whole model shares (VeRA's projections)

    @classmethod
    def reads_peft(cls, raw: Mapping[str, Any]) -> bool:
        """Whether a PEFT file's config ``raw`` is this method's (by default: its ``peft_type``)."""
        return cls.peft_type is not None and raw.get("peft_type") == cls.peft_type

    @classmethod
    def from_peft(cls, file: PeftFile) -> tuple[AdapterConfigBase, dict[str, Tensor]]:
        """Our config and tensors (our keys, adapter name left out) for a PEFT file of ``peft_type``; raises,
        naming the option, where PEFT's adapter cannot be expressed exactly."""
        raise NotImplementedError

    @classmethod
    def to_peft(cls, config: Any, placed: Mapping[str, Mapping[str, Method]], modules: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """PEFT's config fields for this method and its tensors (HF module path + suffix) for the modules
        ``placed`` (HF module path -> {site: our module}); raises where PEFT cannot express the adapter."""
        raise ValueError(f"{cls.__name__} adapters have no HuggingFace PEFT equivalent; save with "
                         "format='peftcore' or 'adapterhub'.")


METHODS: list[type[Method]] = []  # every registered method module class, in registration order


def register_method(method: type[Method], presets: Mapping[str, AdapterConfigBase] | None = None) -> None:
    """Make a method available to every model: its module class (``METHODS``), its config class (readable from its
    AdapterHub ``"architecture"`` tag) and its preset names (``add_adapter("name")``). A method file ends with this
    call; importing the file registers the method."""
    if method in METHODS:
        raise ValueError(f"{method.__name__} is registered already.")
    register(method.config_class, presets)
    METHODS.append(method)


def methods_for(config: object) -> list[type[Method]]:
    """The method classes a (member) config builds modules of: several for one config class (a bottleneck config
    with an invertible adapter; LoRA and (IA)^3 share LoRAConfig), each deciding by ``sites`` where it sits. A config
    class with methods of its own is served by them alone, not by those of its base classes (MTLLoRAConfig is a
    LoRAConfig, but builds no LoRA)."""
    matching = [method for method in METHODS if isinstance(config, method.config_class)]
    return [method for method in matching
            if not any(issubclass(other.config_class, method.config_class) and other.config_class is not
                       method.config_class for other in matching)]
