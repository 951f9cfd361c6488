"""Bottleneck adapters: sequential (Houlsby et al., 2019, https://arxiv.org/abs/1902.00751; Pfeiffer et al., 2020,
https://arxiv.org/abs/2005.00247) and parallel (He et al., 2021, https://arxiv.org/abs/2110.04366).

Numerically equal to AdapterHub's ``adapters.methods.modeling.Adapter`` / ``ParallelAdapter`` and the
``pre_forward``/``post_forward`` logic of ``adapters.methods.bottleneck.BottleneckLayer``. A bottleneck plugs into a
residual site, which hands it the sub-layer output ``h``, the sub-layer input ``x`` and the layer's LayerNorm.

    sequential (SeqBn / Pfeiffer):          parallel (ParBn):
        x ──► sub-layer ──► h                   x ──┬─► sub-layer ──► h ──┐
                            │                       └─► f(x)·s ───────────┤
        LN(h + x) ──► f ──► + r                                          (+)──► LN(· + x)
                            │
                      LN(· + x)

The exact placement of the residual ``r`` and the LayerNorms follows the config's ``original_ln_before/after``,
``residual_before_ln``, ``adapter_residual_before_ln``, ``ln_before/after`` fields, as AdapterHub applies them.
Compacter (``phm_layer``) swaps the two linears for PHM layers (phm.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from peftcore.configs import (
    AdapterConfigBase,
    check_finite_number,
    check_in,
    check_leave_out,
    check_positive_number,
    check_probability,
    check_seed,
    check_type,
    leaves_layers_out,
    reduced_width,
)
from peftcore.methods.activations import activation, check_activation
from peftcore.methods.base import Method, ModelShape, init_generator, register_method
from peftcore.methods.gating import Gate, check_gate_option, without_default_gate_option
from peftcore.methods.phm import PHMLinear, PHMShared, check_phm_fields
from peftcore.sites import Site


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
    gate_over_real_tokens: bool = False  # average gates over real tokens only (gating.py); not AdapterHub's
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
        check_activation(name, "non_linearity", self.non_linearity)
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
        check_gate_option(name, self)
        if self.phm_layer:
            check_phm_fields(self, name)

    def to_dict(self) -> dict[str, Any]:
        return without_default_gate_option(super().to_dict())

    def union_conflict(self, other: AdapterConfigBase) -> str | None:
        """Bottlenecks ``self`` and ``other`` may share a union when one sits after attention and the other after the
        FFN, or, with a ``leave_out``, in layers the model shows to be apart; never two sharing PHM parameters."""
        if not isinstance(other, BnConfig):
            return None
        if has_shared_phm(self) and has_shared_phm(other):
            return ("ConfigUnion holds two Compacter bottlenecks that share PHM parameters across layers; an adapter "
                    "has one set. Set shared_phm_rule=False and shared_W_phm=False on one of them.")
        if leaves_layers_out(self, other):
            return None
        if self.mh_adapter == other.mh_adapter or self.output_adapter == other.output_adapter:
            return ("ConfigUnion holds two bottleneck configs that would sit at the same sites; combine different "
                    "methods, bottlenecks at different places (mh_adapter vs output_adapter), or bottlenecks in "
                    "different layers (leave_out).")
        return None

    def reduction_for(self, layer: int) -> float:
        """The reduction factor of ``layer``: its own entry, else ``"default"`` (AdapterHub's lookup)."""
        if not isinstance(self.reduction_factor, Mapping):
            return self.reduction_factor
        factor = self.reduction_factor.get(str(layer), self.reduction_factor.get("default"))
        if factor is None:
            raise MissingLayerEntry(f"reduction_factor {dict(self.reduction_factor)} has no entry for layer {layer} "
                                    "and no 'default'; add one.")
        return factor



class MissingLayerEntry(ValueError, KeyError):
    """A per-layer setting without an entry for a layer the model has: a config that does not fit the model, and
    the KeyError AdapterHub raises for it."""

    __str__ = Exception.__str__  # the message as written, not quoted as KeyError quotes its key


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
class AdapterPlusConfig(BnConfig):
    """AdapterPlus (Steitz and Roth, 2024, https://arxiv.org/abs/2406.06820), made for ViT: one adapter after the
    FFN, inside the residual and before the layer's own norm, Houlsby initialisation, a learned scale per channel and
    stochastic depth 0.1. AdapterHub gives it no config name, and saves it as a plain bottleneck config."""

    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: float | Mapping[str, float] = 96
    non_linearity: str = "gelu"
    original_ln_before: bool = True
    original_ln_after: bool = False
    residual_before_ln: bool | str = False
    stochastic_depth: float = 0.1
    init_weights: str = "houlsby"
    scaling: float | str = "channel"


class Bottleneck(Method):
    """f(z) = gate(z) · dropout(s · up(act(down(ln_before(z))))), placed around a residual site.

    ``s`` is ``config.scaling``: a float, a learned scalar ("learned") or a learned vector ("channel").
    The UniPELT gate is ``mean_T(sigmoid(W_g z + b_g))``, one value per example.
    With ``phm_layer`` (Compacter) ``down`` and ``up`` are ``PHMLinear`` layers, and what they share across layers
    is the adapter's ``PHMShared`` (``shared_key`` "phm").
    """

    config_class = BnConfig
    shared_key = "phm"
    adapterhub_shared_path = "shared_parameters.{name}"  # Compacter's shared rule and W sit in the base model

    @classmethod
    def sites(cls, config: BnConfig, layer: int | None) -> tuple[str, ...]:
        """mh_adapter -> attn.residual; output_adapter -> ffn.residual; leave_out skips layers."""
        if layer is None or layer in config.leave_out:
            return ()
        return ("attn.residual",) * config.mh_adapter + ("ffn.residual",) * config.output_adapter

    @classmethod
    def build_shared(cls, config: BnConfig, shape: ModelShape) -> PHMShared | None:
        """Compacter's shared rule and/or W (one per adapter), else nothing."""
        if not has_shared_phm(config):
            return None
        widths = {bottleneck_width(config, shape.hidden_size, layer) for layer in range(shape.num_layers)
                  if layer not in config.leave_out}
        if config.shared_W_phm and len(widths) > 1:
            raise ValueError(f"shared_W_phm=True shares one W across layers, but reduction_factor "
                             f"{config.reduction_factor} gives widths {sorted(widths)}; use one reduction_factor.")
        width = widths.pop() if widths else 1
        check_phm_sizes(config, shape.hidden_size, width)
        return PHMShared(config, shape.hidden_size, width, init_generator(config.init_weights_seed),
                         zero_up=config.init_weights == "mam_adapter")

    @classmethod
    def build(cls, config: BnConfig, site: Site, shape: ModelShape, shared: PHMShared | None) -> Bottleneck:
        return cls(config, shape.hidden_size, site.layer, shared)

    @property
    def token_wise(self) -> bool:
        """Stochastic depth drops whole examples' updates, so it needs the batch rows too."""
        return super().token_wise and not self.config.stochastic_depth

    def __init__(self, config: BnConfig, hidden_size: int, layer: int, shared: PHMShared | None = None) -> None:
        super().__init__()
        self.config = config
        width = bottleneck_width(config, hidden_size, layer)
        self.norm_before = nn.LayerNorm(hidden_size) if config.ln_before else nn.Identity()
        if config.phm_layer:
            check_phm_sizes(config, hidden_size, width)
            self.down: nn.Linear | PHMLinear = PHMLinear(hidden_size, width, config, "down", shared)
            self.up: nn.Linear | PHMLinear = PHMLinear(width, hidden_size, config, "up", shared)
        else:
            self.down, self.up = nn.Linear(hidden_size, width), nn.Linear(width, hidden_size)
        self.act: Callable[[Tensor], Tensor] = activation(config.non_linearity)  # a module if it learns (prelu)
        if isinstance(config.scaling, float):
            self.scaling: float | nn.Parameter = config.scaling
        else:
            self.scaling = nn.Parameter(torch.ones(1 if config.scaling == "learned" else hidden_size))
        self.norm_after = nn.LayerNorm(hidden_size) if config.ln_after else nn.Identity()
        self.gate = Gate(hidden_size, real_tokens=config.gate_over_real_tokens) if config.use_gating else None
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """AdapterHub's three initialisations; ``init_weights_seed`` seeds a private generator."""
        generator = init_generator(self.config.init_weights_seed)
        init = self.config.init_weights
        with torch.no_grad():
            for linear in (self.down, self.up):
                if isinstance(linear, PHMLinear):  # its own init; mam_adapter zeroes the up W: identity start
                    linear.reset_parameters(generator, zero_init=init == "mam_adapter" and linear is self.up)
                    continue
                if init == "bert" or (init == "mam_adapter" and linear is self.down):
                    if init == "bert":
                        nn.init.normal_(linear.weight, std=0.02, generator=generator)
                    else:
                        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
                elif init == "mam_adapter":  # zero up-projection: the adapter starts as the identity
                    nn.init.zeros_(linear.weight)
                else:  # houlsby
                    nn.init.trunc_normal_(linear.weight, std=1e-2, a=-2e-2, b=2e-2, generator=generator)
                nn.init.zeros_(linear.bias)
        if self.gate is not None and init != "houlsby":  # AdapterHub leaves a houlsby gate at PyTorch's init
            self.gate.reset_parameters_from(generator, zero_bias=True)

    def transform(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The scaled, dropped-out and gated bottleneck output f(z), without any residual, and the scaled
        up-projection before dropout and gate."""
        up = self.up(self.act(self.down(self.norm_before(z))))  # (B, T, C)
        if self.training and self.config.stochastic_depth > 0:
            up = drop_rows(up, self.config.stochastic_depth)
        up = up * self.scaling
        out = self.dropout(up)
        if self.gate is not None:
            out = out * self.gate(z)  # (B, 1, 1)
        return out, up

    def pre(self, h: Tensor, x: Tensor, norm: nn.Module,
            query_before_ln: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """What the adapter reads, the fusion query and the adapter's residual: ``(z, query, residual)``.

        h is the sub-layer output, x its input, norm the layer's LayerNorm. A parallel adapter reads x.
        """
        config = self.config
        if config.is_parallel:
            return x, x, x
        residual = h
        query = h if query_before_ln else None
        if config.original_ln_before:
            h = h + x
            if config.residual_before_ln == "post_add":
                residual = h
            h = norm(h)
        if config.residual_before_ln is False:
            residual = h
        return h, h if query is None else query, residual

    def body(self, z: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """The adapter's output (with its own residual, unless parallel) and its scaled up-projection, which
        AdapterFusion attends over."""
        out, up = self.transform(z)
        if self.config.is_parallel:
            return self.norm_after(out), up
        if self.config.adapter_residual_before_ln:
            return self.norm_after(out + residual), up
        return self.norm_after(out) + residual, up

    def post(self, out: Tensor, h: Tensor, x: Tensor, norm: nn.Module) -> Tensor:
        """After the adapter(s): a parallel adapter's output joins the sub-layer output h, then the layer's residual
        x and LayerNorm follow if ``original_ln_after``."""
        if self.config.is_parallel:
            out = out + h
        return norm(out + x) if self.config.original_ln_after else out

    def forward(self, h: Tensor, x: Tensor, norm: nn.Module) -> Tensor:
        """Residual-site step: h is the sub-layer output, x its input, norm the layer's LayerNorm."""
        z, _, residual = self.pre(h, x, norm)
        return self.post(self.body(z, residual)[0], h, x, norm)

    @classmethod
    def adapterhub_names(cls, config: BnConfig, key: str) -> tuple[str, ...]:
        """``down.weight`` -> ``adapter_down.0.weight`` (``adapter_down`` is AdapterHub's Sequential: [LayerNorm,]
        Linear, act). AdapterHub stores an input LayerNorm under ``adapter_down.0`` and again as
        ``adapter_norm_before``, a learned activation in ``adapter_down`` and again as ``non_linearity``."""
        down = 1 if config.ln_before else 0
        names = {"down": (f"adapter_down.{down}",), "up": ("adapter_up",), "norm_after": ("adapter_norm_after",),
                 "norm_before": ("adapter_down.0", "adapter_norm_before"),
                 "act": (f"adapter_down.{down + 1}.f", "non_linearity.f"), "gate": ("gate",), "scaling": ("scaling",)}
        module, _, leaf = key.partition(".")
        return tuple(f"{name}.{leaf}" if leaf else name for name in names[module])


def has_shared_phm(config: BnConfig) -> bool:
    """Whether a Compacter config keeps a rule or W shared across layers (model.shared_parameters)."""
    return config.phm_layer and (config.shared_phm_rule or config.shared_W_phm)


def bottleneck_width(config: BnConfig, hidden_size: int, layer: int) -> int:
    """hidden // reduction_factor; a factor that leaves no unit is refused (AdapterHub silently keeps one)."""
    return reduced_width(type(config).__name__, "reduction_factor", hidden_size, config.reduction_for(layer))


def check_phm_sizes(config: BnConfig, hidden_size: int, width: int) -> None:
    """Both PHM layers need phm_dim to divide the hidden size and the bottleneck width."""
    n = config.phm_dim
    if hidden_size % n:
        raise ValueError(f"phm_dim={n} does not divide the hidden size {hidden_size}; choose a phm_dim that does.")
    if width % n:
        raise ValueError(f"phm_dim={n} does not divide the bottleneck width {width} (hidden size {hidden_size} // "
                         f"reduction_factor {config.reduction_factor}); choose reduction_factor or phm_dim so it "
                         "does.")


def drop_rows(x: Tensor, p: float) -> Tensor:
    """Stochastic depth in "row" mode (Huang et al., 2016): drop each example's update with probability p."""
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


PfeifferConfig, HoulsbyConfig, ParallelConfig = SeqBnConfig, DoubleSeqBnConfig, ParBnConfig

PRESETS = {"seq_bn": SeqBnConfig(), "double_seq_bn": DoubleSeqBnConfig(), "par_bn": ParBnConfig(),
           "scaled_par_bn": ParBnConfig(scaling="learned"), "compacter": CompacterConfig(),
           "compacter++": CompacterPlusPlusConfig()}
LEGACY_NAMES = {"pfeiffer": "seq_bn", "houlsby": "double_seq_bn", "parallel": "par_bn",  # AdapterHub's old names,
                "scaled_parallel": "scaled_par_bn"}  # still accepted
register_method(Bottleneck, {**PRESETS, **{old: PRESETS[new] for old, new in LEGACY_NAMES.items()}})
