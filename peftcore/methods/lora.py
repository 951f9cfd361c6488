"""LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685) on the linear sites: ``attn.{q,k,v}``, ``attn.out``,
``ffn.intermediate``, ``ffn.output`` — and what (IA)^3 (ia3.py) shares with it: the config, the placement, the
UniPELT gate and exact merge/reset.

Numerically equal to AdapterHub's ``adapters.methods.lora.LoRA`` inside ``LoRALinear`` and to HF PEFT's LoRA, whose
files it reads and writes (``from_peft``/``to_peft``). Merging keeps a copy of the original weight and bias, so reset
restores them bit for bit after any number of cycles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.configs import (
    AdapterConfigBase,
    check_distinct,
    check_in,
    check_leave_out,
    check_positive_number,
    check_probability,
    check_seed,
    check_type,
)
from peftcore.methods.base import Method, ModelShape, PeftFile, init_generator, linear_average, register_method
from peftcore.methods.gating import Gate, check_gate_option
from peftcore.methods.lora_init import (
    PEFT_INITS,
    check_lora_options,
    gaussian_,
    initial_factors,
    is_base_changing,
    lora_scaling,
    site_rank,
)
from peftcore.methods.lora_peft import check_peft_options, lora_from_peft, lora_to_peft, refuse_gated_peft
from peftcore.methods.lora_peft import config_for_sites as config_for_sites  # re-exported: ia3, vera and others use it
from peftcore.methods.task_arithmetic import WeightedLowRank
from peftcore.sites import Site, SiteLinear


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(AdapterConfigBase):
    r"""LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685): AdapterHub's LoRAConfig, field for field.

    ``selfattn_lora`` adapts the attention matrices in ``attn_matrices`` ("q", "k", "v", and ours: "o", the attention
    output, site ``attn.out``); ``intermediate_lora`` and ``output_lora`` the two feed-forward linears.
    ``composition_mode="scale"`` is (IA)^3; ``vera_d`` and ``vera_b`` (both set) make it VeRA (vera.py) and
    ``use_dora`` DoRA (dora.py), both VeRA and DoRA DVoRA.

    Two fields are ours, each naming which of two definitions an adapter follows, so that every file gives the
    outputs of the library that wrote it: ``vera_dense`` keeps AdapterHub 1.3.0's dense VeRA scaling matrices instead
    of the published vectors (vera.py), ``dora_variant`` says whose DoRA forward to run, "adapterhub" or "peft"
    (dora.py).

    PEFT's options, ours too (lora_init.py): ``target="all-linear"`` sets every linear site of the layers (q, k, v, o
    and both feed-forward linears; never a head); ``use_rslora`` scales by alpha / sqrt(r); ``rank_pattern`` and
    ``alpha_pattern`` give sites other ranks and alphas, their keys regexes matched as PEFT matches them, against the
    site paths (``"attn.q"``, ``r"layers\.0\.ffn\.output"``); ``init_weights`` also takes PEFT's "gaussian", "pissa",
    "pissa_niter_K" and "olora"; ``input_scaled`` names sites whose input (IA)^3 scales instead of their output (PEFT's
    ``feedforward_modules``: ``("attn.out", "ffn.output")`` in its BERT default).
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
    gate_over_real_tokens: bool = False  # average gates over real tokens only (gating.py); not AdapterHub's
    use_dora: bool = False
    vera_d: float | None = None
    vera_b: float | None = None
    dtype: str | None = None
    vera_dense: bool = False
    dora_variant: str = "adapterhub"
    target: str | None = None
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    input_scaled: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        name = type(self).__name__
        for flag in ("selfattn_lora", "intermediate_lora", "output_lora", "use_gating", "use_dora", "vera_dense"):
            check_type(name, flag, getattr(self, flag), bool, "True or False")
        check_type(name, "r", self.r, int, "a positive int")
        if self.r <= 0:
            raise ValueError(f"{name}.r must be a positive int, got {self.r}.")
        check_positive_number(name, "alpha", self.alpha)
        check_probability(name, "dropout", self.dropout)
        check_in(name, "composition_mode", self.composition_mode, ("add", "scale"))
        check_lora_options(self)
        check_placement(self)
        if self.composition_mode == "scale" and (self.r != 1 or self.dropout):
            raise ValueError(f"{name}: composition_mode='scale' ((IA)^3) needs r=1 and dropout=0, got r={self.r}, "
                             f"dropout={self.dropout}.")
        self.check_variants()
        if self.dtype is not None:
            raise ValueError(f"{name}.dtype={self.dtype!r}: LoRA weights follow the model's dtype; leave dtype=None.")
        unplaced = [site for site in self.input_scaled if site not in layer_sites(self)]
        if unplaced:
            raise ValueError(f"{name}.input_scaled names {unplaced}, which this config does not place; it places "
                             f"{list(layer_sites(self))}.")
        check_seed(name, self.init_weights_seed)
        check_gate_option(name, self)

    def to_dict(self) -> dict[str, Any]:
        """AdapterHub's fields, and ours (``OWN_FIELDS``) only where they differ from their default, so an adapter
        AdapterHub can express saves exactly AdapterHub's dict."""
        return {key: value for key, value in super().to_dict().items()
                if key not in OWN_FIELDS or value != OWN_FIELDS[key]}

    @property
    def is_vera(self) -> bool:
        """Whether this config is VeRA's: vera_d and vera_b set (AdapterHub's test is a float in either)."""
        return self.vera_d is not None

    def check_variants(self) -> None:
        """The VeRA and DoRA fields: each pair set together, and only on the additive composition."""
        name = type(self).__name__
        for field_name in ("vera_d", "vera_b"):
            value = getattr(self, field_name)
            if value is not None:
                check_type(name, field_name, value, (int, float), "a number or None")
                if not math.isfinite(value):
                    raise ValueError(f"{name}.{field_name} must be a finite number, got {value}.")
                object.__setattr__(self, field_name, float(value))
        if (self.vera_d is None) != (self.vera_b is None):
            raise ValueError(f"{name}: VeRA needs both vera_d and vera_b (VeraConfig: 0.1 and 0.0), got "
                             f"vera_d={self.vera_d}, vera_b={self.vera_b}; set both, or neither for LoRA.")
        check_in(name, "dora_variant", self.dora_variant, ("adapterhub", "peft"))
        if self.composition_mode == "scale" and (self.use_dora or self.is_vera or self.init_weights == "vera"):
            raise ValueError(f"{name}: composition_mode='scale' ((IA)^3) has no DoRA or VeRA form; leave use_dora, "
                             "vera_d, vera_b and init_weights='vera' to LoRA.")
        if self.vera_dense and not self.is_vera:
            raise ValueError(f"{name}.vera_dense=True applies to VeRA (vera_d and vera_b set); leave it False.")
        if self.dora_variant != "adapterhub" and not self.use_dora:
            raise ValueError(f"{name}.dora_variant={self.dora_variant!r} applies to DoRA (use_dora=True); leave it "
                             "'adapterhub'.")
        if self.dora_variant == "peft" and self.use_gating:
            raise ValueError(f"{name}: PEFT's DoRA (dora_variant='peft') has no gate; set use_gating=False.")
        if self.is_vera and (self.intermediate_lora or self.output_lora):
            raise ValueError(f"{name}: VeRA shares one random A (r, hidden) and B (hidden, r) across layers, so it "
                             "adapts the attention matrices only (AdapterHub's shared matrices fail there too); set "
                             "intermediate_lora=False and output_lora=False.")


OWN_FIELDS = {  # LoRAConfig's fields AdapterHub lacks, by default
    "vera_dense": False, "dora_variant": "adapterhub", "target": None, "use_rslora": False, "rank_pattern": {},
    "alpha_pattern": {}, "input_scaled": [], "gate_over_real_tokens": False,
}
MATRIX_SITES = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.out"}  # attn_matrices -> site


def check_placement(config: Any) -> None:
    """LoRAConfig's placement fields, which the configs reusing them (lowrank.py) share: ``attn_matrices`` distinct
    names of MATRIX_SITES (a tuple after this), something placed, ``leave_out`` normalised."""
    name = type(config).__name__
    check_type(name, "attn_matrices", config.attn_matrices, (tuple, list), "a list of 'q', 'k', 'v', 'o'")
    object.__setattr__(config, "attn_matrices", tuple(config.attn_matrices))
    for matrix in config.attn_matrices:
        check_in(name, "attn_matrices", matrix, tuple(MATRIX_SITES))
    check_distinct(name, "attn_matrices", config.attn_matrices)
    if not (config.selfattn_lora and config.attn_matrices) and not config.intermediate_lora and not config.output_lora:
        raise ValueError(f"{name} places nothing: set selfattn_lora (with attn_matrices), intermediate_lora or "
                         "output_lora.")
    object.__setattr__(config, "leave_out", check_leave_out(name, config.leave_out))


def linear_sites(config: LoRAConfig, layer: int | None) -> tuple[str, ...]:
    """selfattn_lora + attn_matrices -> attn.{q,k,v,out}; intermediate_lora -> ffn.intermediate;
    output_lora -> ffn.output; leave_out skips layers."""
    if layer is None or layer in config.leave_out:
        return ()
    return layer_sites(config)


def layer_sites(config: LoRAConfig) -> tuple[str, ...]:
    """The linear sites ``config`` places in each layer it does not leave out."""
    attention = tuple(MATRIX_SITES[matrix] for matrix in config.attn_matrices) if config.selfattn_lora else ()
    return attention + ("ffn.intermediate",) * config.intermediate_lora + ("ffn.output",) * config.output_lora


class LinearMethod(Method):
    """What LoRA and its variants and (IA)^3 share: their sites, the optional UniPELT gate, and merge/reset on a
    SiteLinear. Several classes serve LoRAConfig; each says by ``serves`` which configs are its own."""

    config_class = LoRAConfig
    composition_mode: str

    @classmethod
    def serves(cls, config: LoRAConfig) -> bool:
        """Whether ``config`` builds this class's modules: the plain forms by default (no VeRA, no DoRA)."""
        return config.composition_mode == cls.composition_mode and not config.is_vera and not config.use_dora

    @classmethod
    def sites(cls, config: LoRAConfig, layer: int | None) -> tuple[str, ...]:
        return linear_sites(config, layer) if cls.serves(config) else ()

    @classmethod
    def build(cls, config: LoRAConfig, site: Site, shape: ModelShape, shared: nn.Module | None) -> LinearMethod:
        return cls(config, site.module.in_features, site.module.out_features)

    adapterhub_container = "loras"

    def __init__(self, config: LoRAConfig, in_features: int) -> None:
        super().__init__()
        self.config = config
        self.gate = Gate(in_features, real_tokens=config.gate_over_real_tokens) if config.use_gating else None
        self.original: tuple[Tensor, Tensor | None] | None = None  # the linear's weights while merged
        if self.gate is not None:  # AdapterHub: N(0, 0.02) weight, PyTorch's default bias
            self.gate.reset_parameters_from(init_generator(config.init_weights_seed), zero_bias=False)

    @property
    def is_merged(self) -> bool:
        return self.original is not None

    def merge_refusal(self) -> str | None:
        if self.is_merged:
            return "it is merged already; reset_adapter() before merging again"
        if self.gate is not None:
            return ("it is gated (use_gating=True): its output depends on the input, so it cannot be folded into a "
                    "weight")
        return None

    def merge_into(self, linear: SiteLinear) -> None:
        """Fold this adapter into ``linear``'s weight (and bias), keeping the originals for ``unmerge_from``."""
        refusal = self.merge_refusal()
        if refusal:
            raise ValueError(f"this adapter cannot merge: {refusal}.")
        with torch.no_grad():
            self.original = (linear.weight.detach().clone(),
                             None if linear.bias is None else linear.bias.detach().clone())
            self.fold(linear)

    def unmerge_from(self, linear: SiteLinear) -> None:
        """Restore ``linear``'s weights exactly as they were before ``merge_into``."""
        if not self.is_merged:
            raise ValueError("this adapter is not merged; there is nothing to reset.")
        weight, bias = self.original
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        self.original = None

    def fold(self, linear: SiteLinear) -> None:
        raise NotImplementedError

    @classmethod
    def to_adapterhub(cls, config: LoRAConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Refused where the config uses what AdapterHub's LoRA lacks (the attention output, PEFT's options)."""
        extensions = [f"{key}={value!r}" for key, value in config.to_dict().items()
                      if key in OWN_FIELDS and key not in ("vera_dense", "dora_variant")]
        extensions += [f"attn_matrices={list(config.attn_matrices)} ('o': the attention output)"] * (
            "o" in config.attn_matrices and config.selfattn_lora)
        if config.init_weights in PEFT_INITS or is_base_changing(config.init_weights):
            extensions.append(f"init_weights={config.init_weights!r} (ΔW = B A - B0 A0)")
        if extensions:  # AdapterHub keeps no LoRA at the attention output: ours saved there would not load
            raise ValueError(f"AdapterHub's LoRA has no {', '.join(extensions)}; save with format='peftcore' or "
                             "'peft'.")
        return state


class LowRankUpdate(LinearMethod):
    """What LoRA and VeRA share: y = W x + b + s · ΔW dropout(x), with s = alpha / r, or s = gate(x) when gated
    (AdapterHub ignores alpha then); a subclass gives ΔW x (``update``) and ΔW (``delta_weight``)."""

    composition_mode = "add"

    def __init__(self, config: LoRAConfig, in_features: int) -> None:
        super().__init__(config, in_features)
        self.scaling = config.alpha / config.r
        self.dropout = nn.Dropout(config.dropout)

    def update(self, x: Tensor) -> Tensor:
        """ΔW x, unscaled."""
        raise NotImplementedError

    def delta_weight(self) -> Tensor:
        """ΔW (out, in), unscaled."""
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        delta = self.update(self.dropout(x))
        if self.gate is not None:
            return y + delta * self.gate(x)
        return y.add(delta, alpha=self.scaling)  # one fused pass, no scaled copy of delta

    def fold(self, linear: SiteLinear) -> None:
        linear.weight += self.scaling * self.delta_weight()

    @property
    def update_scale(self) -> float:
        """The factor on ΔW: alpha / r, or 1 when a gate scales the update instead."""
        return 1.0 if self.gate is not None else self.scaling


class LoRA(WeightedLowRank, LowRankUpdate):
    """ΔW = B A: A is (r, in) and B is (out, r); the "lora" init (Kaiming-uniform A, zero B) starts as the identity.
    PiSSA and OLoRA start from factors A0, B0 of the base weight, kept as buffers: ΔW = B A - B0 A0 (lora_init.py).
    ``r`` and ``alpha`` are this site's (``rank_pattern``, ``alpha_pattern``). ``merge_adapters`` strategies:
    task_arithmetic.py.
    """

    peft_type = "LORA"
    peft_suffixes = (".lora_A.weight", ".lora_B.weight")
    loraplus_b = ("lora_B",)

    @classmethod
    def build(cls, config: LoRAConfig, site: Site, shape: ModelShape, shared: nn.Module | None) -> LoRA:
        return cls(config, site.module.in_features, site.module.out_features, *site_rank(config, site.path))

    def __init__(self, config: LoRAConfig, in_features: int, out_features: int, r: int | None = None,
                 alpha: float | None = None) -> None:
        super().__init__(config, in_features)
        self.r, self.alpha = r or config.r, alpha or config.alpha
        self.scaling = lora_scaling(self.alpha, self.r, config.use_rslora)
        self.lora_A = nn.Parameter(torch.zeros(self.r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, self.r))
        base_changing = is_base_changing(config.init_weights)  # A0, B0 filled by initialise, or from a file
        self.register_buffer("lora_A0", torch.zeros(self.r, in_features) if base_changing else None)
        self.register_buffer("lora_B0", torch.zeros(out_features, self.r) if base_changing else None)
        generator = init_generator(config.init_weights_seed)
        with torch.no_grad():
            if config.init_weights == "lora":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
            elif config.init_weights == "gaussian":
                gaussian_(self.lora_A, self.r, generator)
            elif config.init_weights == "bert":
                nn.init.normal_(self.lora_A, std=0.02, generator=generator)
                nn.init.normal_(self.lora_B, std=0.02, generator=generator)
            elif config.init_weights == "vera":  # AdapterHub's: both Kaiming-uniform with a = 0
                nn.init.kaiming_uniform_(self.lora_A, generator=generator)
                nn.init.kaiming_uniform_(self.lora_B, generator=generator)
            elif config.init_weights == "ia3":  # ones, as AdapterHub allows
                nn.init.ones_(self.lora_A)
                nn.init.ones_(self.lora_B)

    def initialise(self, site: Site) -> None:
        """PiSSA and OLoRA: A = A0 and B = B0, the factors of the base weight at ``site``."""
        if self.lora_A0 is not None:
            A0, B0 = initial_factors(self.config.init_weights, site.module.weight, self.r, self.scaling,
                                     self.config.init_weights_seed)
            with torch.no_grad():
                for tensor in (self.lora_A, self.lora_A0):
                    tensor.copy_(A0)
                for tensor in (self.lora_B, self.lora_B0):
                    tensor.copy_(B0)

    def factors(self) -> tuple[Tensor, Tensor]:
        """(B, A) with ΔW = B A before scaling: [B, -B0] and [A; A0] for PiSSA and OLoRA."""
        if self.lora_A0 is None:
            return self.lora_B, self.lora_A
        return torch.cat([self.lora_B, -self.lora_B0], dim=1), torch.cat([self.lora_A, self.lora_A0])

    def update(self, x: Tensor) -> Tensor:
        B, A = self.factors()
        return F.linear(F.linear(x, A), B)  # (B, T, R) -> (B, T, out)

    def delta_weight(self) -> Tensor:
        B, A = self.factors()
        return B @ A

    @classmethod
    def reads_peft(cls, raw: Mapping[str, Any]) -> bool:
        return super().reads_peft(raw) and not raw.get("use_dora")  # DoRA's files are DoRA's (dora.py)

    @classmethod
    def from_peft(cls, file: PeftFile) -> tuple[LoRAConfig, dict[str, Tensor]]:
        check_peft_options(file)
        return lora_from_peft(file, LoRAConfig)

    @classmethod
    def to_peft(cls, config: LoRAConfig, placed: Mapping[str, Mapping[str, Method]], modules: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        refuse_gated_peft(config)
        return lora_to_peft(config, placed, modules)

    # ---- averaging: AdapterHub's three strategies ----------------------------------------------------------------

    average_strategies = ("linear", "lora_linear_only_negate_b", "lora_delta_w_svd")

    @classmethod
    def averaged_config(cls, config: LoRAConfig, strategy: str, svd_rank: int | None) -> LoRAConfig:
        """``lora_delta_w_svd`` cuts the summed update to rank ``svd_rank``: the new adapter has r = svd_rank."""
        if strategy != "lora_delta_w_svd":
            return super().averaged_config(config, strategy, svd_rank)
        if not isinstance(svd_rank, int) or isinstance(svd_rank, bool) or svd_rank < 1:
            raise ValueError(f"lora_delta_w_svd needs svd_rank, a positive int; got {svd_rank!r}.")
        return config.replace(r=svd_rank)

    def average_from(self, sources: Sequence[LoRA], weights: Sequence[float], strategy: str) -> None:
        """linear: A and B by w; negate_b: A by |w|, B by w (Zhang et al., 2023); delta_w_svd: the weighted sum of
        the updates s·B·A, cut to this adapter's rank by SVD (its scaling folded into B). A gate averages by w."""
        if any(source.lora_A0 is not None for source in sources):
            raise ValueError("PiSSA/OLoRA adapters (ΔW = B A - B0 A0) cannot be averaged here; save them for PEFT "
                             "(a plain LoRA of rank 2r), load that and average it.")
        pairs = list(zip(weights, sources, strict=True))
        if self.gate is not None:
            linear_average(self.gate, [source.gate for source in sources], weights)
        with torch.no_grad():
            if strategy != "lora_delta_w_svd":
                negate_b = strategy == "lora_linear_only_negate_b"
                self.lora_A.copy_(sum((abs(w) if negate_b else w) * source.lora_A for w, source in pairs))
                self.lora_B.copy_(sum(w * source.lora_B for w, source in pairs))
                return
            delta = sum(w * source.update_scale * source.lora_B.double() @ source.lora_A.double()
                        for w, source in pairs)
            r = self.lora_A.shape[0]
            if r > min(delta.shape):
                raise ValueError(f"svd_rank={r} exceeds the rank {min(delta.shape)} a {tuple(delta.shape)} weight "
                                 "update can have; choose a smaller svd_rank.")
            u, singular, v = torch.linalg.svd(delta, full_matrices=False)
            self.lora_A.copy_(v[:r])
            self.lora_B.copy_(u[:, :r] * singular[:r] / self.update_scale)


register_method(LoRA, {"lora": LoRAConfig()})
