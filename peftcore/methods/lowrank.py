"""What LoHa (loha.py), LoKr (lokr.py) and AdaLoRA (adalora.py) share: LoRA's placement on the linear sites
(``selfattn_lora`` + ``attn_matrices``, ``intermediate_lora``, ``output_lora``, ``leave_out``: lora.py's
``linear_sites``), and for the two LyCORIS methods their config, their forward through a dense ΔW with PEFT's rank and
module dropout, and their HF PEFT file handling.

HF PEFT 0.21.2 (``peft/tuners/lycoris_utils.py``) computes a LyCORIS update as a dense ΔW, scaled by alpha / r, and
adds ``F.linear(x, ΔW)`` to the linear's output; in training, ``rank_dropout`` zeroes rows of ΔW (output features)
and ``module_dropout`` skips the whole update. Merging folds ΔW into the weight; LoRA's merge keeps the original for an
exact reset (lora.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.configs import (
    AdapterConfigBase,
    check_positive_number,
    check_probability,
    check_seed,
    check_type,
)
from peftcore.methods.base import Method, ModelShape, PeftFile
from peftcore.methods.lora import LinearMethod, check_placement, linear_sites
from peftcore.methods.lora_init import pattern_value
from peftcore.methods.lora_peft import config_for_sites
from peftcore.sites import Site, SiteLinear


@dataclass(frozen=True, kw_only=True)
class LinearSitesConfig(AdapterConfigBase):
    """LoRAConfig's placement fields, names and defaults: queries and values in every layer."""

    use_gating: ClassVar[bool] = False  # these methods have no UniPELT gate (LinearMethod reads it)
    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    leave_out: tuple[int, ...] = ()
    attn_matrices: tuple[str, ...] = ("q", "v")

    def __post_init__(self) -> None:
        name = type(self).__name__
        for flag in ("selfattn_lora", "intermediate_lora", "output_lora"):
            check_type(name, flag, getattr(self, flag), bool, "True or False")
        check_placement(self)


def check_rank(name: str, field: str, value: Any) -> None:
    check_type(name, field, value, int, "a positive int")
    if value <= 0:
        raise ValueError(f"{name}.{field} must be a positive int, got {value}.")


@dataclass(frozen=True, kw_only=True)
class LycorisConfig(LinearSitesConfig):
    """HF PEFT's LycorisConfig fields for linears: rank ``r``, ``alpha`` (ΔW scaled by alpha / r), ``rank_dropout``
    (in training, each output row of ΔW dropped with this probability), ``module_dropout`` (in training, the whole
    update skipped with this probability), ``init_weights`` (True: the update starts at zero; False: every factor
    random, which PEFT discourages). ``use_effective_conv2d`` is PEFT's option for convolutions, which encoders'
    sites are not: it must stay False. ``init_weights_seed`` (ours) draws the initial factors from a private
    generator."""

    r: int = 8
    alpha: float = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    init_weights: bool | str = True
    init_weights_seed: int | None = None
    use_effective_conv2d: bool = False

    inits: ClassVar[tuple[bool | str, ...]] = (True, False)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_rank(name, "r", self.r)
        check_positive_number(name, "alpha", self.alpha)
        check_probability(name, "rank_dropout", self.rank_dropout)
        check_probability(name, "module_dropout", self.module_dropout)
        if self.init_weights not in self.inits or not isinstance(self.init_weights, (bool, str)):
            raise ValueError(f"{name}.init_weights={self.init_weights!r} is not supported; use one of "
                             f"{list(self.inits)}.")
        check_seed(name, self.init_weights_seed)
        check_type(name, "use_effective_conv2d", self.use_effective_conv2d, bool, "True or False")
        if self.use_effective_conv2d:
            raise ValueError(f"{name}.use_effective_conv2d=True is PEFT's option for convolutions with kernels "
                             "larger than 1x1; the sites here are linears; leave it False.")

    def essentials(self) -> dict[str, Any]:
        return {key: value for key, value in super().essentials().items()
                if key not in ("rank_dropout", "module_dropout", "init_weights_seed")}


class LinearSitesMethod(LinearMethod):
    """A method of its own config class on LoRA's linear sites, with LoRA's exact merge/reset (lora.py), no gate and
    no AdapterHub form."""

    composition_mode = "add"
    adapterhub_container = None

    @classmethod
    def serves(cls, config: Any) -> bool:
        return True

    @classmethod
    def sites(cls, config: Any, layer: int | None) -> tuple[str, ...]:
        return linear_sites(config, layer)

    @classmethod
    def build(cls, config: Any, site: Site, shape: ModelShape, shared: nn.Module | None) -> LinearSitesMethod:
        return cls(config, site.module.in_features, site.module.out_features)

    @classmethod
    def to_adapterhub(cls, config: Any, state: dict[str, Tensor]) -> dict[str, Tensor]:
        raise ValueError(f"{cls.title} adapters have no AdapterHub equivalent; save with format='peftcore' or 'peft'.")


class Lycoris(LinearSitesMethod):
    """y = W x + b + F.linear(x, s · ΔW) with s = alpha / r; a subclass gives ΔW, unscaled (``delta_weight``).

    In training, ``module_dropout`` skips the update (PEFT draws ``torch.rand(1)`` per linear and forward) and
    ``rank_dropout`` multiplies ΔW's rows by a Bernoulli mask (PEFT's ``torch.rand(out) > p``), divided by its mean
    when the method rescales (``rescales_rank_dropout``).
    """

    peft_names: ClassVar[tuple[str, ...]]  # every tensor a module may hold, under PEFT's names (ours too)

    def __init__(self, config: LycorisConfig, in_features: int) -> None:
        super().__init__(config, in_features)
        self.scaling = config.alpha / config.r

    @property
    def rescales_rank_dropout(self) -> bool:
        return True

    def delta_weight(self) -> Tensor:
        """ΔW (out, in), unscaled."""
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        config = self.config
        # PEFT draws for module dropout in every training forward, even at p = 0: so do we, and random streams agree
        if self.training and not torch.rand(1) > config.module_dropout:
            return y
        weight = self.delta_weight() * self.scaling  # (out, in)
        if self.training and config.rank_dropout:
            keep = (torch.rand(weight.shape[0]) > config.rank_dropout).to(weight)  # (out,)
            if self.rescales_rank_dropout:
                keep = keep / keep.mean()
            weight = weight * keep[:, None]
        return y + F.linear(x, weight)

    def fold(self, linear: SiteLinear) -> None:
        linear.weight += self.delta_weight() * self.scaling

    # ---- HuggingFace PEFT's files --------------------------------------------------------------------------------

    @classmethod
    def peft_fields(cls, config: LycorisConfig) -> dict[str, Any]:
        """PEFT's config fields for ``config`` (the placement aside)."""
        return {"peft_type": cls.peft_type, "r": config.r, "alpha": config.alpha, "rank_dropout": config.rank_dropout,
                "module_dropout": config.module_dropout, "init_weights": config.init_weights,
                "use_effective_conv2d": False, "rank_pattern": {}, "alpha_pattern": {}, "layers_pattern": None,
                "layers_to_transform": None}

    @classmethod
    def our_fields(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Our config fields (the placement, r and alpha aside) for PEFT's config ``raw``."""
        return {"rank_dropout": raw.get("rank_dropout", 0.0), "module_dropout": raw.get("module_dropout", 0.0),
                "init_weights": raw.get("init_weights", True)}

    @classmethod
    def features(cls, tensors: Mapping[str, Tensor]) -> tuple[int, int] | None:
        """(in, out) features of the linear that PEFT's ``tensors`` (our names) adapt; None where they do not say."""
        raise NotImplementedError

    @classmethod
    def scaled_factor(cls, tensors: Mapping[str, Tensor]) -> str:
        """The name of the tensor of ``tensors`` that ΔW is linear in, which takes another module's scaling."""
        raise NotImplementedError

    @classmethod
    def convert_peft(cls, tensors: Mapping[str, Tensor], r: int, ratio: float) -> dict[str, Tensor]:
        """One module's tensors (our names) at rank ``r`` and its scaling times ``ratio``: a smaller rank padded with
        zeros (``*_a`` columns, ``*_b`` rows: the products are the same, and the padding gets no gradient, so it
        stays zero in training), the ratio folded into ``scaled_factor``."""
        scaled, out = cls.scaled_factor(tensors), {}
        for name, tensor in tensors.items():
            if name.endswith("_a"):
                tensor = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], r - tensor.shape[1])], dim=1)
            elif name.endswith("_b"):
                tensor = torch.cat([tensor, tensor.new_zeros(r - tensor.shape[0], tensor.shape[1])])
            out[name] = tensor * ratio if name == scaled and ratio != 1 else tensor
        return out

    @classmethod
    def from_peft(cls, file: PeftFile) -> tuple[LycorisConfig, dict[str, Tensor]]:
        """PEFT's factors under their own names; per-module ranks and alphas (``rank_pattern``/``alpha_pattern``)
        become one rank and one alpha where ``convert_peft`` can say so exactly."""
        raw = file.raw
        fused = sorted(path for path, module in file.targeted.items() if module.split)
        if fused:
            raise ValueError(f"{file.where}: {cls.title} on DeBERTa's fused {fused[0]}: its update covers q, k and v "
                             "together, which peftcore's per-site modules cannot hold exactly.")
        ranks = {path: pattern_value(raw.get("rank_pattern") or {}, path, raw["r"]) for path in file.targeted}
        alphas = {path: pattern_value(raw.get("alpha_pattern") or {}, path, raw["alpha"]) for path in file.targeted}
        r = max(ranks.values())
        scaling = raw["alpha"] / raw["r"]
        if len({alphas[path] / ranks[path] for path in file.targeted}) == 1:
            scaling = next(iter(alphas.values())) / next(iter(ranks.values()))
        alpha = scaling * r
        config = config_for_sites(file, cls.config_class, r=r, alpha=int(alpha) if float(alpha).is_integer() else
                                  alpha, **cls.our_fields(raw))
        state = {}
        for path, module in file.targeted.items():
            tensors = {name: file.tensors[f"{path}.{name}"] for name in cls.peft_names
                       if f"{path}.{name}" in file.tensors}
            found = {name: tuple(t.shape) for name, t in tensors.items()}
            expected, features = {}, cls.features(tensors)
            if features is not None:
                with torch.device("meta"):  # the shapes alone
                    built = cls(config.replace(r=ranks[path]), *features)
                expected = {name: tuple(t.shape) for name, t in built.state_dict().items()}
            if not tensors or found != expected:
                raise ValueError(f"{file.where}: {path} needs {cls.title} tensors {expected or list(cls.peft_names)} "
                                 f"for r={ranks[path]}, got {found}.")
            converted = cls.convert_peft(tensors, r, alphas[path] / ranks[path] / scaling)
            with torch.device("meta"):
                held = {name: tuple(t.shape) for name, t in cls(config, *features).state_dict().items()}
            if held != {name: tuple(t.shape) for name, t in converted.items()}:
                raise ValueError(f"{file.where}: {path} has rank {ranks[path]} and others {r} (rank_pattern); at rank "
                                 f"{r} its {cls.title} factors would be {held}, not {found}, so peftcore's one rank "
                                 "per adapter cannot hold it.")
            for name, tensor in converted.items():
                state[file.key(module.layer, module.sites[0], name)] = tensor
        return config, state

    @classmethod
    def to_peft(cls, config: LycorisConfig, placed: Mapping[str, Mapping[str, Method]], modules: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        state = {}
        for path, ours in placed.items():
            if modules[path].split:
                raise ValueError(f"{cls.title} on DeBERTa's fused {path}: PEFT would adapt the fused q/k/v projection "
                                 "with one update, ours adapts each site on its own.")
            (module,) = ours.values()
            state.update({f"{path}.{name}": tensor.detach() for name, tensor in module.state_dict().items()})
        return cls.peft_fields(config), state
