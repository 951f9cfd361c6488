"""LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685) on the linear sites: ``attn.{q,k,v}``,
``ffn.intermediate``, ``ffn.output`` — and what (IA)^3 (ia3.py) shares with it: the config, the placement, the
UniPELT gate and exact merge/reset.

Numerically equal to AdapterHub's ``adapters.methods.lora.LoRA`` inside ``LoRALinear`` and to HF PEFT's LoRA, whose
files it reads and writes (``from_peft``/``to_peft``). Merging keeps a copy of the original weight and bias, so reset
restores them bit for bit after any number of cycles.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from peftcore.methods.gating import Gate
from peftcore.methods.task_arithmetic import WeightedLowRank
from peftcore.sites import Site, SiteLinear


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(AdapterConfigBase):
    """LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685): AdapterHub's LoRAConfig, field for field.

    ``selfattn_lora`` adapts the attention matrices in ``attn_matrices`` ("q", "k", "v"); ``intermediate_lora`` and
    ``output_lora`` the two feed-forward linears. ``composition_mode="scale"`` is (IA)^3; ``vera_d`` and ``vera_b``
    (both set) make it VeRA (vera.py) and ``use_dora`` DoRA (dora.py), both VeRA and DoRA DVoRA.

    Two fields are ours, each naming which of two definitions an adapter follows, so that every file gives the
    outputs of the library that wrote it: ``vera_dense`` keeps AdapterHub 1.3.0's dense VeRA scaling matrices instead
    of the published vectors (vera.py), ``dora_variant`` says whose DoRA forward to run, "adapterhub" or "peft"
    (dora.py).
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
    vera_dense: bool = False
    dora_variant: str = "adapterhub"

    def __post_init__(self) -> None:
        name = type(self).__name__
        for flag in ("selfattn_lora", "intermediate_lora", "output_lora", "use_gating", "use_dora", "vera_dense"):
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
        check_in(name, "init_weights", self.init_weights, ("lora", "bert", "ia3", "vera"))
        if self.composition_mode == "scale" and (self.r != 1 or self.dropout):
            raise ValueError(f"{name}: composition_mode='scale' ((IA)^3) needs r=1 and dropout=0, got r={self.r}, "
                             f"dropout={self.dropout}.")
        self.check_variants()
        if self.dtype is not None:
            raise ValueError(f"{name}.dtype={self.dtype!r}: LoRA weights follow the model's dtype; leave dtype=None.")
        if not (self.selfattn_lora and self.attn_matrices) and not self.intermediate_lora and not self.output_lora:
            raise ValueError(f"{name} places nothing: set selfattn_lora (with attn_matrices), intermediate_lora or "
                             "output_lora.")
        object.__setattr__(self, "leave_out", check_leave_out(name, self.leave_out))
        check_seed(name, self.init_weights_seed)

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


OWN_FIELDS = {"vera_dense": False, "dora_variant": "adapterhub"}  # LoRAConfig's fields AdapterHub lacks, by default


def linear_sites(config: LoRAConfig, layer: int | None) -> tuple[str, ...]:
    """selfattn_lora + attn_matrices -> attn.{q,k,v}; intermediate_lora -> ffn.intermediate;
    output_lora -> ffn.output; leave_out skips layers."""
    if layer is None or layer in config.leave_out:
        return ()
    attention = tuple(f"attn.{matrix}" for matrix in config.attn_matrices) if config.selfattn_lora else ()
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
        self.gate = Gate(in_features) if config.use_gating else None
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
    ``merge_adapters`` strategies: task_arithmetic.py.
    """

    peft_type = "LORA"
    peft_suffixes = (".lora_A.weight", ".lora_B.weight")

    def __init__(self, config: LoRAConfig, in_features: int, out_features: int) -> None:
        super().__init__(config, in_features)
        self.lora_A = nn.Parameter(torch.zeros(config.r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, config.r))
        generator = init_generator(config.init_weights_seed)
        with torch.no_grad():
            if config.init_weights == "lora":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
            elif config.init_weights == "bert":
                nn.init.normal_(self.lora_A, std=0.02, generator=generator)
                nn.init.normal_(self.lora_B, std=0.02, generator=generator)
            elif config.init_weights == "vera":  # AdapterHub's: both Kaiming-uniform with a = 0
                nn.init.kaiming_uniform_(self.lora_A, generator=generator)
                nn.init.kaiming_uniform_(self.lora_B, generator=generator)
            else:  # "ia3": ones, as AdapterHub allows
                nn.init.ones_(self.lora_A)
                nn.init.ones_(self.lora_B)

    def update(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B)  # (B, T, R) -> (B, T, out)

    def delta_weight(self) -> Tensor:
        return self.lora_B @ self.lora_A

    @classmethod
    def reads_peft(cls, raw: Mapping[str, Any]) -> bool:
        return super().reads_peft(raw) and not raw.get("use_dora")  # DoRA's files are DoRA's (dora.py)

    @classmethod
    def from_peft(cls, file: PeftFile) -> tuple[LoRAConfig, dict[str, Tensor]]:
        check_peft_options(file)
        return lora_from_peft(file)

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


# ---- HuggingFace PEFT's files ------------------------------------------------------------------------------------

# PEFT options whose non-default value changes what the file means; each must be falsy (bias: "none")
REFUSED_PEFT_OPTIONS = {
    "use_dora": "DoRA's magnitude vector", "lora_bias": "a bias on lora_B", "fan_in_fan_out": "Conv1D (GPT-2) weights",
    "layer_replication": "replicated layers", "target_parameters": "bare nn.Parameter targets",
    "trainable_token_indices": "trainable embedding rows", "use_qalora": "QALoRA", "use_bdlora": "BD-LoRA",
    "alora_invocation_tokens": "activated LoRA", "megatron_config": "Megatron layers", "arrow_config": "Arrow routing",
    "kasa_config": "KaSA", "monteclora_config": "MonteCLoRA", "velora_config": "VeLoRA",
}
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")  # these rewrite the base weights
LORA_DEFAULTS = {  # the rest of what peft 0.21.2 writes for a plain LoRA
    "alora_invocation_tokens": None, "arrow_config": None, "bias": "none", "corda_config": None,
    "ensure_weight_tying": False, "eva_config": None, "init_lora_weights": True, "kasa_config": None,
    "layer_replication": None, "layers_pattern": None, "layers_to_transform": None, "loftq_config": {},
    "lora_bias": False, "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core",
    "monteclora_config": None, "peft_type": "LORA", "qalora_group_size": 16, "target_parameters": None,
    "trainable_token_indices": None, "use_bdlora": None, "use_dora": False, "use_qalora": False,
    "use_rslora": False, "velora_config": None,
}


def refuse_gated_peft(config: LoRAConfig) -> None:
    if config.use_gating:
        raise ValueError("it is gated (use_gating=True); PEFT has no gated LoRA/(IA)^3.")


def check_peft_options(file: PeftFile, allowed: tuple[str, ...] = ()) -> None:
    """Refuse a PEFT LoRA/(IA)^3 file whose options peftcore cannot express (but those ``allowed``), naming them."""
    raw = file.raw
    if raw.get("bias", "none") != "none":
        raise ValueError(f"{file.where}: bias={raw['bias']!r} trains base-model biases, which peftcore keeps out of "
                         "adapters; only bias='none' adapters load.")
    used = [f"{option}={raw[option]!r} ({what})" for option, what in REFUSED_PEFT_OPTIONS.items()
            if raw.get(option) and option not in allowed]
    if used:
        raise ValueError(f"{file.where}: peftcore's LoRA has no equivalent of {', '.join(used)}; only plain "
                         "LoRA/(IA)^3 adapters load.")
    init = str(raw.get("init_lora_weights", True)).lower()
    if init.startswith(BASE_CHANGING_INITS):
        raise ValueError(f"{file.where}: init_lora_weights={raw['init_lora_weights']!r} rewrites the base weights, "
                         "so this file's A and B only hold on PEFT's modified base model; convert it to a plain LoRA "
                         "first (save_pretrained(path_initial_model_for_weight_conversion=...)).")


def config_for_sites(file: PeftFile, config_class: type[LoRAConfig], **fields: Any) -> LoRAConfig:
    """Our config places one set of sites in every layer it does not leave out: the sites the file targets."""
    by_layer: dict[int, set[str]] = {i: set() for i in range(file.shape.num_layers)}
    for module in file.targeted.values():
        by_layer[module.layer].update(module.sites)
    used = set().union(*by_layer.values())
    uneven = {layer: sorted(sites) for layer, sites in by_layer.items() if sites and sites != used}
    if uneven:
        raise ValueError(f"{file.where}: the adapted modules differ between layers ({uneven} vs {sorted(used)} "
                         "elsewhere); peftcore's LoRA/(IA)^3 adapts the same sites in every layer it does not leave "
                         "out.")
    attn = tuple(m for m in ("q", "k", "v") if f"attn.{m}" in used)
    return config_class(selfattn_lora=bool(attn), attn_matrices=attn or ("q", "v"),
                        intermediate_lora="ffn.intermediate" in used, output_lora="ffn.output" in used,
                        leave_out=tuple(layer for layer, sites in by_layer.items() if not sites), **fields)


def pattern_value(patterns: Mapping[str, Any], key: str, default: Any) -> Any:
    """``rank_pattern``/``alpha_pattern`` lookup (peft's ``utils.other.get_pattern_key``): the first match."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


def lora_from_peft(file: PeftFile, config_class: type[LoRAConfig] = LoRAConfig,
                   **fields: Any) -> tuple[LoRAConfig, dict[str, Tensor]]:
    """Our lora_A/lora_B per site: one rank (the largest, zero-padded: padded rows and columns stay zero in
    training) and one alpha (other modules' scalings folded into their B); rsLoRA's alpha / sqrt(r) likewise.
    ``fields`` go to the config (of ``config_class``)."""
    raw = file.raw
    ranks, scalings = {}, {}
    for path in file.targeted:
        r = pattern_value(raw.get("rank_pattern") or {}, path, raw["r"])
        alpha = pattern_value(raw.get("alpha_pattern") or {}, path, raw["lora_alpha"])
        ranks[path], scalings[path] = r, alpha / (math.sqrt(r) if raw.get("use_rslora") else r)
    r = max(ranks.values())
    uniform = len(set(scalings.values())) == 1
    scaling = next(iter(scalings.values())) if uniform else raw["lora_alpha"] / (
        math.sqrt(raw["r"]) if raw.get("use_rslora") else raw["r"])
    alpha = scaling * r
    config = config_for_sites(file, config_class, r=r, alpha=int(alpha) if float(alpha).is_integer() else alpha,
                              dropout=raw.get("lora_dropout", 0.0), **fields)
    if len(set(ranks.values())) > 1:
        warnings.warn(f"{file.where}: ranks differ between modules ({sorted(set(ranks.values()))}); smaller ranks "
                      f"are padded with zeros to r={r} (same outputs, more parameters).", stacklevel=5)
    state = {}
    for path, module in file.targeted.items():
        A, B = file.tensors.get(f"{path}.lora_A.weight"), file.tensors.get(f"{path}.lora_B.weight")
        if A is None or B is None or A.shape[0] != ranks[path] or B.shape[1] != ranks[path]:
            raise ValueError(f"{file.where}: {path} needs lora_A (r, in) and lora_B (out, r) with r={ranks[path]}, "
                             f"got {None if A is None else tuple(A.shape)} and "
                             f"{None if B is None else tuple(B.shape)}.")
        A = torch.cat([A, A.new_zeros(r - A.shape[0], A.shape[1])])  # (R, in)
        B = torch.cat([B, B.new_zeros(B.shape[0], r - B.shape[1])], dim=1)  # (out, R)
        if scalings[path] != scaling:
            B = B * (scalings[path] / scaling)
        for site, part in zip(module.sites, module.split(B) if module.split else (B,), strict=True):
            state[file.key(module.layer, site, "lora_A")] = A
            state[file.key(module.layer, site, "lora_B")] = part.contiguous()
    return config, state


def lora_to_peft(config: LoRAConfig, placed: Mapping[str, Mapping[str, LoRA]], modules: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """PEFT's lora_A/lora_B per module; on DeBERTa v1's fused in_proj our q/k/v LoRAs of rank r join into one of
    rank m·r (block structure, exact), said in rank_pattern/alpha_pattern."""
    state, patterns = {}, {}
    for path, ours in placed.items():
        module = modules[path]
        if not module.split:
            (lora,) = ours.values()
            state[f"{path}.lora_A.weight"] = lora.lora_A.detach()
            state[f"{path}.lora_B.weight"] = lora.lora_B.detach()
            continue
        present = [site for site in module.sites if site in ours]
        A = torch.cat([ours[site].lora_A.detach() for site in present])  # (m R, in)
        parts = []
        for site in module.sites:
            part = A.new_zeros(ours[present[0]].lora_B.shape[0], A.shape[0])  # (H D, m R)
            if site in ours:
                j = present.index(site) * config.r
                part[:, j:j + config.r] = ours[site].lora_B.detach()
            parts.append(part)
        state[f"{path}.lora_A.weight"] = A
        state[f"{path}.lora_B.weight"] = module.join(tuple(parts))
        if len(present) > 1:
            patterns[path.rsplit(".", 1)[-1]] = len(present)
    raw = {**LORA_DEFAULTS, "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
           "rank_pattern": {leaf: m * config.r for leaf, m in patterns.items()},
           "alpha_pattern": {leaf: m * config.alpha for leaf, m in patterns.items()}}
    return raw, state


register_method(LoRA, {"lora": LoRAConfig()})
