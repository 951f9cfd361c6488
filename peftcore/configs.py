"""Adapter configs: frozen dataclasses with AdapterHub's (``adapters`` 1.3.0) field names and defaults, the one
string registry (``"seq_bn"``, ``"pfeiffer+inv"``, ...) and the ``"name[key=value,...]"`` override syntax.

A config's ``to_dict()`` is AdapterHub's: every field, plus ``"architecture"`` for the methods that AdapterHub
serialises it for (bottleneck configs have none). ``from_dict`` is strict: an unknown key is an error.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from peftcore.sites import ACTIVATIONS

Config = TypeVar("Config", bound="AdapterConfigBase")


@dataclass(frozen=True, kw_only=True)
class AdapterConfigBase:
    """Base of every method config. Subclasses validate their fields in ``__post_init__``."""

    architecture: ClassVar[str | None] = None  # AdapterHub's method tag in adapter_config.json

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (tuples as lists), in AdapterHub's layout."""
        data = {f.name: to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return data if self.architecture is None else {"architecture": self.architecture, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfigBase:
        """The config a dict describes; its ``"architecture"`` picks the class (none: bottleneck)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"an adapter config dict maps field names to values, got {type(data).__name__} {data!r}.")
        data = dict(data)
        architecture = data.pop("architecture", None)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"adapter architecture {architecture!r} is not known; known: "
                             f"{sorted(str(a) for a in ARCHITECTURES)}.")
        config_class = ARCHITECTURES[architecture]
        if config_class is ConfigUnion:
            return ConfigUnion.from_dict(data)
        valid = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"{config_class.__name__} has no field(s) {unknown}; valid fields: {sorted(valid)}.")
        return config_class(**data)

    def replace(self: Config, **changes: Any) -> Config:
        """A copy with ``changes`` applied (and validated); an unknown field is an error."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no field(s) {unknown}; valid fields: {sorted(valid)}.")
        return dataclasses.replace(self, **changes)

    @staticmethod
    def load(config: str | Mapping[str, Any] | AdapterConfigBase, **overrides: Any) -> AdapterConfigBase:
        """A config from a registry name (with optional ``[k=v]`` overrides), a dict, or a config; then
        ``overrides`` (None values are ignored, as in AdapterHub)."""
        if isinstance(config, str):
            config = parse(config)
        elif isinstance(config, Mapping):
            config = AdapterConfigBase.from_dict(config)
        elif not isinstance(config, AdapterConfigBase):
            raise TypeError(f"an adapter config is a name, a dict or a config object, got {type(config).__name__}.")
        overrides = {key: value for key, value in overrides.items() if value is not None}
        return config.replace(**overrides) if overrides else config


def to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    return value


def check_type(owner: str, name: str, value: Any, types: type | tuple[type, ...], hint: str) -> None:
    """Raise a TypeError naming the field when ``value`` is not of ``types`` (bools are not numbers here)."""
    is_bool = isinstance(value, bool)
    accepts_bool = bool in (types if isinstance(types, tuple) else (types,))
    if not isinstance(value, types) or (is_bool and not accepts_bool):
        raise TypeError(f"{owner}.{name} must be {hint}, got {value!r}.")


def check_finite_number(owner: str, name: str, value: Any, hint: str = "a finite number") -> None:
    check_type(owner, name, value, (int, float), hint)
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value!r}.")


def check_positive_number(owner: str, name: str, value: Any) -> None:
    check_finite_number(owner, name, value, "a positive number")
    if value <= 0:
        raise ValueError(f"{owner}.{name} must be positive, got {value!r}.")


def reduced_width(owner: str, name: str, hidden_size: int, factor: float) -> int:
    """``int(hidden_size // factor)``: the width a reduction factor leaves, which must be at least one unit."""
    width = int(hidden_size // factor)
    if width < 1:
        raise ValueError(f"{owner}.{name}={factor} exceeds the width {hidden_size} it divides, leaving no units; use "
                         f"a factor of at most {hidden_size}.")
    return width


def check_in(owner: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name}={value!r} is not supported; use one of {list(choices)}.")


def check_probability(owner: str, name: str, value: Any) -> None:
    check_type(owner, name, value, (int, float), "a probability in [0, 1)")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}.{name} must lie in [0, 1), got {value!r}.")


def check_seed(owner: str, seed: Any) -> None:
    if seed is not None:
        check_type(owner, "init_weights_seed", seed, int, "an int or None")


def check_distinct(owner: str, name: str, values: tuple) -> None:
    repeated = sorted({value for value in values if values.count(value) > 1}, key=str)
    if repeated:
        raise ValueError(f"{owner}.{name} lists {repeated} more than once; list each once.")


def check_leave_out(owner: str, leave_out: Any) -> tuple[int, ...]:
    check_type(owner, "leave_out", leave_out, (tuple, list), "a list of layer indices")
    for index in leave_out:
        check_type(owner, "leave_out", index, int, "a list of non-negative layer indices")
        if index < 0:
            raise ValueError(f"{owner}.leave_out holds {index}; layer indices are non-negative.")
    check_distinct(owner, "leave_out", tuple(leave_out))
    return tuple(leave_out)


@dataclass(frozen=True, kw_only=True)
class BnConfig(AdapterConfigBase):
    """Bottleneck adapter (Houlsby et al., 2019; Pfeiffer et al., 2020): AdapterHub's BnConfig, field for field.

    ``reduction_factor`` may map layer indices (as strings) and ``"default"`` to factors. Bottleneck width is
    ``max(1, int(hidden_size // reduction_factor))``. The ``phm_*`` fields configure Compacter's PHM layers.
    """

    mh_adapter: bool
    output_adapter: bool
    reduction_factor: float | Mapping[str, float]
    non_linearity: str
    original_ln_before: bool = False
    original_ln_after: bool = True
    residual_before_ln: bool | str = True
    adapter_residual_before_ln: bool = False
    ln_before: bool = False
    ln_after: bool = False
    init_weights: str = "bert"
    init_weights_seed: int | None = None
    is_parallel: bool = False
    scaling: float | str = 1.0
    use_gating: bool = False
    inv_adapter: str | None = None
    inv_adapter_reduction_factor: float | None = None
    cross_adapter: bool = False
    leave_out: tuple[int, ...] = ()
    dropout: float = 0.0
    phm_layer: bool = False
    phm_dim: int = 4
    factorized_phm_W: bool = True
    shared_W_phm: bool = False
    shared_phm_rule: bool = True
    factorized_phm_rule: bool = False
    phm_c_init: str = "normal"
    phm_init_range: float = 0.0001
    learn_phm: bool = True
    hypercomplex_nonlinearity: str = "glorot-uniform"
    phm_rank: int = 1
    phm_bias: bool = True
    stochastic_depth: float = 0.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        for flag in ("mh_adapter", "output_adapter", "original_ln_before", "original_ln_after",
                     "adapter_residual_before_ln", "ln_before", "ln_after", "is_parallel", "use_gating",
                     "cross_adapter", "phm_layer", "learn_phm", "phm_bias"):
            check_type(name, flag, getattr(self, flag), bool, "True or False")
        if isinstance(self.reduction_factor, Mapping):
            for key, factor in self.reduction_factor.items():
                if not (key == "default" or str(key).isdigit()):
                    raise ValueError(f"{name}.reduction_factor keys are layer indices or 'default', got {key!r}.")
                check_positive_number(name, f"reduction_factor[{key!r}]", factor)
            object.__setattr__(self, "reduction_factor", {str(k): v for k, v in self.reduction_factor.items()})
        else:
            check_positive_number(name, "reduction_factor", self.reduction_factor)
        check_in(name, "non_linearity", self.non_linearity.lower() if isinstance(self.non_linearity, str) else
                 self.non_linearity, tuple(ACTIVATIONS))
        if not (isinstance(self.residual_before_ln, bool) or self.residual_before_ln == "post_add"):
            # not check_in: `0 in (True, False)` holds, and the bottleneck tests `is False`
            raise ValueError(f"{name}.residual_before_ln={self.residual_before_ln!r} is not supported; use one of "
                             "[True, False, 'post_add'].")
        check_in(name, "init_weights", self.init_weights, ("bert", "mam_adapter", "houlsby"))
        if isinstance(self.scaling, int) and not isinstance(self.scaling, bool):
            object.__setattr__(self, "scaling", float(self.scaling))
        if isinstance(self.scaling, float):
            check_finite_number(name, "scaling", self.scaling)
        else:
            check_in(name, "scaling", self.scaling, ("learned", "channel"))
        check_in(name, "inv_adapter", self.inv_adapter, (None, "nice", "glow"))
        if self.inv_adapter is not None:
            check_positive_number(name, "inv_adapter_reduction_factor", self.inv_adapter_reduction_factor)
        if self.cross_adapter:
            raise ValueError(f"{name}.cross_adapter=True places an adapter after decoder cross-attention; "
                             "peftcore's encoders have none. Use mh_adapter or output_adapter.")
        if not (self.mh_adapter or self.output_adapter or self.inv_adapter):
            raise ValueError(f"{name} places nothing: set mh_adapter, output_adapter or inv_adapter.")
        object.__setattr__(self, "leave_out", check_leave_out(name, self.leave_out))
        for rate in ("dropout", "stochastic_depth"):
            check_probability(name, rate, getattr(self, rate))
        check_seed(name, self.init_weights_seed)
        if self.phm_layer:
            self.check_phm(name)

    def check_phm(self, name: str) -> None:
        """Compacter's fields, checked only when phm_layer is on (AdapterHub ignores them otherwise)."""
        for flag in ("factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule"):
            check_type(name, flag, getattr(self, flag), bool, "True or False")
        for size in ("phm_dim", "phm_rank"):
            check_type(name, size, getattr(self, size), int, "a positive int")
            if getattr(self, size) <= 0:
                raise ValueError(f"{name}.{size} must be a positive int, got {getattr(self, size)}.")
        check_positive_number(name, "phm_init_range", self.phm_init_range)
        check_in(name, "phm_c_init", self.phm_c_init, ("normal", "uniform"))
        check_in(name, "hypercomplex_nonlinearity", self.hypercomplex_nonlinearity,
                 ("glorot-uniform", "glorot-normal", "normal", "phm"))
        if self.init_weights == "houlsby":
            raise ValueError(f"{name}: init_weights='houlsby' draws nn.Linear weights, and phm_layer=True has none "
                             "(AdapterHub crashes here). Use init_weights='bert' (the PHM layers' own init, set by "
                             "hypercomplex_nonlinearity) or 'mam_adapter' (the up-projection starts at zero).")

    def reduction_for(self, layer: int) -> float:
        """The reduction factor of ``layer``: its own entry, else ``"default"`` (AdapterHub's lookup)."""
        if not isinstance(self.reduction_factor, Mapping):
            return self.reduction_factor
        factor = self.reduction_factor.get(str(layer), self.reduction_factor.get("default"))
        if factor is None:
            raise ValueError(f"reduction_factor {dict(self.reduction_factor)} has no entry for layer {layer} and no "
                             "'default'; add one.")
        return factor


AdapterConfig = BnConfig  # AdapterHub's older name for the bottleneck config


@dataclass(frozen=True, kw_only=True)
class SeqBnConfig(BnConfig):
    """Pfeiffer et al. (2020), https://arxiv.org/abs/2005.00247: one adapter after the FFN; AdapterHub's default."""

    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: float | Mapping[str, float] = 16
    non_linearity: str = "relu"
    original_ln_before: bool = True


@dataclass(frozen=True, kw_only=True)
class DoubleSeqBnConfig(BnConfig):
    """Houlsby et al. (2019), https://arxiv.org/abs/1902.00751: adapters after attention and after the FFN."""

    mh_adapter: bool = True
    output_adapter: bool = True
    reduction_factor: float | Mapping[str, float] = 16
    non_linearity: str = "swish"


@dataclass(frozen=True, kw_only=True)
class ParBnConfig(BnConfig):
    """He et al. (2021), https://arxiv.org/abs/2110.04366: an adapter parallel to the FFN, scaled by 4."""

    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: float | Mapping[str, float] = 2
    non_linearity: str = "relu"
    init_weights: str = "mam_adapter"
    is_parallel: bool = True
    scaling: float | str = 4.0


@dataclass(frozen=True, kw_only=True)
class SeqBnInvConfig(SeqBnConfig):
    """SeqBn plus a NICE invertible adapter on the embeddings (MAD-X's language adapter)."""

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


@dataclass(frozen=True, kw_only=True)
class CompacterConfig(DoubleSeqBnConfig):
    """Compacter (Karimi Mahabadi et al., 2021, https://arxiv.org/abs/2106.04647): Houlsby placement with PHM
    down- and up-projections (``phm_layer``)."""

    phm_layer: bool = True
    reduction_factor: float | Mapping[str, float] = 32
    non_linearity: str = "gelu"


@dataclass(frozen=True, kw_only=True)
class CompacterPlusPlusConfig(SeqBnConfig):
    """Compacter++ (Karimi Mahabadi et al., 2021): Compacter with one adapter after the FFN only (Pfeiffer
    placement)."""

    phm_layer: bool = True
    reduction_factor: float | Mapping[str, float] = 32
    non_linearity: str = "gelu"


@dataclass(frozen=True, kw_only=True)
class DoubleSeqBnInvConfig(DoubleSeqBnConfig):
    """DoubleSeqBn plus a NICE invertible adapter on the embeddings."""

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(AdapterConfigBase):
    """LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685): AdapterHub's LoRAConfig, field for field.

    ``selfattn_lora`` adapts the attention matrices in ``attn_matrices`` ("q", "k", "v"); ``intermediate_lora`` and
    ``output_lora`` the two feed-forward linears. ``composition_mode="scale"`` is (IA)^3. DoRA and VeRA fields are
    accepted at their defaults only.
    """

    architecture: ClassVar[str | None] = "lora"
    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    leave_out: tuple[int, ...] = ()
    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    attn_matrices: tuple[str, ...] = ("q", "v")
    composition_mode: str = "add"
    init_weights: str = "lora"
    init_weights_seed: int | None = None
    use_gating: bool = False
    use_dora: bool = False
    vera_d: float | None = None
    vera_b: float | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        for flag in ("selfattn_lora", "intermediate_lora", "output_lora", "use_gating", "use_dora"):
            check_type(name, flag, getattr(self, flag), bool, "True or False")
        check_type(name, "r", self.r, int, "a positive int")
        if self.r <= 0:
            raise ValueError(f"{name}.r must be a positive int, got {self.r}.")
        check_positive_number(name, "alpha", self.alpha)
        check_probability(name, "dropout", self.dropout)
        check_type(name, "attn_matrices", self.attn_matrices, (tuple, list), "a list of 'q', 'k', 'v'")
        object.__setattr__(self, "attn_matrices", tuple(self.attn_matrices))
        for matrix in self.attn_matrices:
            check_in(name, "attn_matrices", matrix, ("q", "k", "v"))
        check_distinct(name, "attn_matrices", self.attn_matrices)
        check_in(name, "composition_mode", self.composition_mode, ("add", "scale"))
        check_in(name, "init_weights", self.init_weights, ("lora", "bert", "ia3"))
        if self.composition_mode == "scale" and (self.r != 1 or self.dropout):
            raise ValueError(f"{name}: composition_mode='scale' ((IA)^3) needs r=1 and dropout=0, got r={self.r}, "
                             f"dropout={self.dropout}.")
        if self.use_dora or self.vera_d is not None or self.vera_b is not None:
            raise ValueError(f"{name}: DoRA (use_dora) and VeRA (vera_d, vera_b) are not available; leave them at "
                             "their defaults.")
        if self.dtype is not None:
            raise ValueError(f"{name}.dtype={self.dtype!r}: LoRA weights follow the model's dtype; leave dtype=None.")
        if not (self.selfattn_lora and self.attn_matrices) and not self.intermediate_lora and not self.output_lora:
            raise ValueError(f"{name} places nothing: set selfattn_lora (with attn_matrices), intermediate_lora or "
                             "output_lora.")
        object.__setattr__(self, "leave_out", check_leave_out(name, self.leave_out))
        check_seed(name, self.init_weights_seed)


@dataclass(frozen=True, kw_only=True)
class IA3Config(LoRAConfig):
    """(IA)^3 (Liu et al., 2022, https://arxiv.org/abs/2205.05638): learned vectors that rescale keys, values and the
    feed-forward intermediate; AdapterHub 1.3.0's defaults (it scales the intermediate before the activation)."""

    intermediate_lora: bool = True
    r: int = 1
    alpha: float = 1
    attn_matrices: tuple[str, ...] = ("k", "v")
    composition_mode: str = "scale"
    init_weights: str = "ia3"


@dataclass(frozen=True, kw_only=True)
class PrefixTuningConfig(AdapterConfigBase):
    """Prefix tuning (Li & Liang, 2021, https://arxiv.org/abs/2101.00190): AdapterHub's PrefixTuningConfig.

    ``prefix_length`` key/value vectors per layer, produced by an MLP over ``prefix_length`` learned embeddings
    (``bottleneck_size`` wide) shared by all layers, or stored directly when ``flat``. ``encoder_prefix`` and
    ``cross_prefix`` are AdapterHub's encoder-decoder switches; an encoder's self-attention ignores them.
    """

    architecture: ClassVar[str | None] = "prefix_tuning"
    encoder_prefix: bool = True
    cross_prefix: bool = True
    leave_out: tuple[int, ...] = ()
    flat: bool = False
    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    use_gating: bool = False
    shared_gating: bool = True
    init_weights_seed: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        for flag in ("encoder_prefix", "cross_prefix", "flat", "use_gating", "shared_gating"):
            check_type(name, flag, getattr(self, flag), bool, "True or False")
        for size in ("prefix_length", "bottleneck_size"):
            check_type(name, size, getattr(self, size), int, "a positive int")
            if getattr(self, size) <= 0:
                raise ValueError(f"{name}.{size} must be a positive int, got {getattr(self, size)}.")
        check_in(name, "non_linearity", self.non_linearity.lower() if isinstance(self.non_linearity, str) else
                 self.non_linearity, tuple(ACTIVATIONS))
        check_probability(name, "dropout", self.dropout)
        object.__setattr__(self, "leave_out", check_leave_out(name, self.leave_out))
        check_seed(name, self.init_weights_seed)


@dataclass(frozen=True, init=False)
class ConfigUnion(AdapterConfigBase):
    """Several methods as one adapter (He et al., 2021; Mao et al., 2022), as AdapterHub's ConfigUnion.

    Two configs of one method are refused — except bottleneck configs that differ in both ``mh_adapter`` and
    ``output_adapter`` (one after attention, one after the FFN) — as are nested unions. ``replace`` addresses a
    member's field as ``"0.r"``.
    """

    architecture: ClassVar[str | None] = "union"
    configs: tuple[AdapterConfigBase, ...]

    def __init__(self, *configs: AdapterConfigBase) -> None:
        object.__setattr__(self, "configs", tuple(configs))
        self.__post_init__()

    def __post_init__(self) -> None:
        if len(self.configs) < 2:
            raise ValueError(f"ConfigUnion needs at least two configs, got {len(self.configs)}.")
        for config in self.configs:
            if not isinstance(config, AdapterConfigBase) or isinstance(config, ConfigUnion):
                raise TypeError(f"ConfigUnion takes method configs (not unions), got {config!r}.")
        for i, first in enumerate(self.configs):
            for second in self.configs[i + 1:]:
                if first.architecture != second.architecture:
                    continue
                separate = (isinstance(first, BnConfig) and first.mh_adapter != second.mh_adapter
                            and first.output_adapter != second.output_adapter)
                if separate and has_shared_phm(first) and has_shared_phm(second):
                    raise ValueError("ConfigUnion holds two Compacter bottlenecks that share PHM parameters across "
                                     "layers; an adapter has one set. Set shared_phm_rule=False and "
                                     "shared_W_phm=False on one of them.")
                if not separate:
                    raise ValueError(f"ConfigUnion holds two {first.architecture or 'bottleneck'} configs that would "
                                     "sit at the same sites; combine different methods, or bottlenecks at different "
                                     "places (mh_adapter vs output_adapter).")

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "configs": [config.to_dict() for config in self.configs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfigUnion:
        if set(data) - {"architecture"} != {"configs"} or not isinstance(data["configs"], (list, tuple)):
            raise ValueError(f"a union config holds one field, 'configs' (a list of method configs), got {dict(data)}.")
        return ConfigUnion(*(AdapterConfigBase.from_dict(config) for config in data["configs"]))

    def replace(self, **changes: Any) -> ConfigUnion:
        """``replace(**{"0.r": 4})`` changes field r of the first member."""
        per_member: dict[int, dict[str, Any]] = {}
        for key, value in changes.items():
            index, _, field_name = key.partition(".")
            if not index.isdigit() or int(index) >= len(self.configs) or not field_name:
                raise ValueError(f"ConfigUnion field {key!r} must read 'N.field' with N < {len(self.configs)}.")
            per_member.setdefault(int(index), {})[field_name] = value
        return ConfigUnion(*(config.replace(**per_member[i]) if i in per_member else config
                             for i, config in enumerate(self.configs)))


def has_shared_phm(config: BnConfig) -> bool:
    """Whether a Compacter config keeps a rule or W shared across layers (model.shared_parameters)."""
    return config.phm_layer and (config.shared_phm_rule or config.shared_W_phm)


def members(config: AdapterConfigBase) -> tuple[AdapterConfigBase, ...]:
    """The method configs of a config: its members if it is a union, else itself."""
    return config.configs if isinstance(config, ConfigUnion) else (config,)


# MAMConfig and UniPELTConfig are functions named like AdapterHub's classes, so AdapterHub code reads the same
def MAMConfig(prefix_tuning: PrefixTuningConfig | None = None, adapter: BnConfig | None = None) -> ConfigUnion:
    """Mix-and-match adapters (He et al., 2021, https://arxiv.org/abs/2110.04366): prefix tuning with a
    bottleneck of 800 plus a scaled parallel adapter on the FFN."""
    return ConfigUnion(prefix_tuning or PrefixTuningConfig(bottleneck_size=800), adapter or ParBnConfig())


def UniPELTConfig(prefix_tuning: PrefixTuningConfig | None = None, adapter: BnConfig | None = None,
                  lora: LoRAConfig | None = None) -> ConfigUnion:
    """UniPELT (Mao et al., 2022, https://arxiv.org/abs/2110.07577): gated prefix tuning, sequential bottleneck and
    LoRA, each switched on per example by a learned gate."""
    members = (prefix_tuning or PrefixTuningConfig(prefix_length=10), adapter or SeqBnConfig(reduction_factor=16),
               lora or LoRAConfig(r=8, alpha=2))
    return ConfigUnion(*(member.replace(use_gating=True) for member in members))


PfeifferConfig, HoulsbyConfig, ParallelConfig = SeqBnConfig, DoubleSeqBnConfig, ParBnConfig
PfeifferInvConfig, HoulsbyInvConfig = SeqBnInvConfig, DoubleSeqBnInvConfig

# AdapterHub's "architecture" tag -> config class
ARCHITECTURES: dict[str | None, type[AdapterConfigBase]] = {
    None: BnConfig, "lora": LoRAConfig, "prefix_tuning": PrefixTuningConfig, "union": ConfigUnion,
}

ADAPTER_CONFIG_MAP: dict[str, AdapterConfigBase] = {
    "seq_bn": SeqBnConfig(),
    "double_seq_bn": DoubleSeqBnConfig(),
    "par_bn": ParBnConfig(),
    "scaled_par_bn": ParBnConfig(scaling="learned"),
    "seq_bn_inv": SeqBnInvConfig(),
    "double_seq_bn_inv": DoubleSeqBnInvConfig(),
    "compacter": CompacterConfig(),
    "compacter++": CompacterPlusPlusConfig(),
    "lora": LoRAConfig(),
    "ia3": IA3Config(),
    "prefix_tuning": PrefixTuningConfig(),
    "prefix_tuning_flat": PrefixTuningConfig(flat=True),
    "mam": MAMConfig(),
    "unipelt": UniPELTConfig(),
}
ADAPTER_CONFIG_MAP.update({  # AdapterHub's deprecated names, still accepted
    "pfeiffer": ADAPTER_CONFIG_MAP["seq_bn"],
    "houlsby": ADAPTER_CONFIG_MAP["double_seq_bn"],
    "parallel": ADAPTER_CONFIG_MAP["par_bn"],
    "scaled_parallel": ADAPTER_CONFIG_MAP["scaled_par_bn"],
    "pfeiffer+inv": ADAPTER_CONFIG_MAP["seq_bn_inv"],
    "houlsby+inv": ADAPTER_CONFIG_MAP["double_seq_bn_inv"],
})
DEFAULT_ADAPTER_CONFIG = "seq_bn"

NAME_WITH_OVERRIDES = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[(.*)\])?\s*$", re.DOTALL)


def parse(text: str) -> AdapterConfigBase:
    """``"name"`` or ``"name[key=value, ...]"`` -> config; values are Python literals (``ast.literal_eval``)."""
    if "|" in text:
        return ConfigUnion(*(parse(part) for part in text.split("|")))
    match = NAME_WITH_OVERRIDES.match(text)
    if not match:
        raise ValueError(f"{text!r} is not 'name' or 'name[key=value,...]'.")
    name, body = match.groups()
    if name not in ADAPTER_CONFIG_MAP:
        raise ValueError(f"unknown adapter config {name!r}; known: {sorted(ADAPTER_CONFIG_MAP)}.")
    overrides = {}
    for item in split_top_level(body or ""):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} in {text!r} is not key=value.")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()  # a bare word such as relu
    return ADAPTER_CONFIG_MAP[name].replace(**overrides) if overrides else ADAPTER_CONFIG_MAP[name]


def split_top_level(body: str) -> list[str]:
    """Split on commas that are not inside brackets, braces, parentheses or quotes."""
    items, depth, quote, start = [], 0, None, 0
    for index, char in enumerate(body):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(body[start:index])
            start = index + 1
    items.append(body[start:])
    return [item.strip() for item in items if item.strip()]


__all__ = [
    "ADAPTER_CONFIG_MAP",
    "DEFAULT_ADAPTER_CONFIG",
    "AdapterConfig",
    "AdapterConfigBase",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "ConfigUnion",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "HoulsbyConfig",
    "HoulsbyInvConfig",
    "IA3Config",
    "LoRAConfig",
    "MAMConfig",
    "ParBnConfig",
    "ParallelConfig",
    "PfeifferConfig",
    "PfeifferInvConfig",
    "PrefixTuningConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "UniPELTConfig",
    "parse",
]
