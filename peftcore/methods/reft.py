"""ReFT, representation fine-tuning (Wu et al., 2024, https://arxiv.org/abs/2404.03592): low-rank interventions on
each layer's output at the first and last real tokens of every row, at the ``output`` site.

Numerically equal to AdapterHub's ``adapters.methods.reft.ReftModule`` (LoReFT, NoReFT, DiReFT), whose files it reads
and writes. Two differences, both where AdapterHub loses information:
- ``subtract_projection`` is a config field here, saved with the adapter where it is False; AdapterHub's is a class
  attribute that its ``to_dict`` and its loading drop, so a DiReFT reloads there subtracting the projection, with
  other outputs. In AdapterHub's layout ours writes a DiReFT as the LoReFT-form adapter that equals it.
- an orthogonal projection is parametrized by Householder reflectors alone, an (r, h) tensor (torch's
  ``orthogonal(..., use_trivialization=False)``); AdapterHub's torch parametrization also keeps an (h, h) ``base``
  buffer per unit, which its files carry (57 MB for a BERT-base LoReFT). Loading folds that buffer into the
  reflectors; saving in AdapterHub's layout writes an identity base, under which AdapterHub computes the same matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from peftcore.configs import AdapterConfigBase, check_distinct, check_probability, check_seed, check_type
from peftcore.methods.activations import check_activation, non_linearity
from peftcore.methods.base import Method, ModelShape, init_generator, register_method
from peftcore.sites import Site


@dataclass(frozen=True, kw_only=True)
class ReftConfig(AdapterConfigBase):
    """ReFT as AdapterHub's ReftConfig configures it, field for field.

    Interventions sit after each layer in ``layers`` ("all" or a list of indices) on the first ``prefix_positions``
    and the last ``suffix_positions`` real tokens of each row: ``unit(x) = dropout(x + (act(W x + b) - R x) Rᵀ)``
    with a rank-``r`` projection R, orthonormal rows when ``orthogonality``; without ``subtract_projection`` (DiReFT)
    the ``- R x`` term is left out. The prefix and the suffix have a unit each, one shared when ``tied_weights``.
    """

    architecture: ClassVar[str | None] = "reft"
    layers: str | tuple[int, ...]
    prefix_positions: int
    suffix_positions: int
    r: int
    orthogonality: bool
    tied_weights: bool = False
    subtract_projection: bool = True
    dropout: float = 0.05
    non_linearity: str | None = None
    dtype: str | None = None
    output_reft: bool = True
    init_weights_seed: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.layers != "all":
            check_type(name, "layers", self.layers, (tuple, list), '"all" or a list of layer indices')
            for index in self.layers:
                check_type(name, "layers", index, int, '"all" or a list of non-negative layer indices')
                if index < 0:
                    raise ValueError(f"{name}.layers holds {index}; layer indices are non-negative.")
            check_distinct(name, "layers", tuple(self.layers))
            object.__setattr__(self, "layers", tuple(self.layers))
        for field in ("prefix_positions", "suffix_positions"):
            check_type(name, field, getattr(self, field), int, "a non-negative int")
            if getattr(self, field) < 0:
                raise ValueError(f"{name}.{field} must not be negative, got {getattr(self, field)}.")
        check_type(name, "r", self.r, int, "a positive int")
        if self.r <= 0:
            raise ValueError(f"{name}.r must be a positive int, got {self.r}.")
        for flag in ("orthogonality", "tied_weights", "subtract_projection", "output_reft"):
            check_type(name, flag, getattr(self, flag), bool, "True or False")
        check_probability(name, "dropout", self.dropout)
        if self.non_linearity is not None:
            check_activation(name, "non_linearity", self.non_linearity)
        if self.dtype is not None:
            raise ValueError(f"{name}.dtype={self.dtype!r}: ReFT weights follow the model's dtype (an orthogonal "
                             "projection is computed in float32 at least); leave dtype=None.")
        check_seed(name, self.init_weights_seed)
        if not self.output_reft or not (self.prefix_positions or self.suffix_positions) or self.layers == ():
            raise ValueError(f"{name} intervenes nowhere: it needs output_reft=True, some layers and "
                             "prefix_positions or suffix_positions above 0.")

    def to_dict(self) -> dict[str, Any]:
        """AdapterHub's dict, which has no ``subtract_projection`` (it reads as True), plus the field where it is
        False: AdapterHub's dict loses it there."""
        data = super().to_dict()
        if self.subtract_projection:
            del data["subtract_projection"]
        return data

    def check_layers(self, num_layers: int) -> None:
        too_deep = [i for i in self.layers if i >= num_layers] if self.layers != "all" else []
        if too_deep:
            raise ValueError(f"layers holds layer(s) {too_deep}, but the model has {num_layers} layers "
                             f"(0...{num_layers - 1}).")


@dataclass(frozen=True, kw_only=True)
class LoReftConfig(ReftConfig):
    """LoReFT: an orthogonal rank-1 intervention on the first three tokens after every layer."""

    layers: str | tuple[int, ...] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = True


@dataclass(frozen=True, kw_only=True)
class NoReftConfig(LoReftConfig):
    """LoReFT without the orthogonality constraint."""

    orthogonality: bool = False


@dataclass(frozen=True, kw_only=True)
class DiReftConfig(LoReftConfig):
    """DiReFT: no orthogonality and no subtracted projection, ``x + act(W x + b) Rᵀ``."""

    orthogonality: bool = False
    subtract_projection: bool = False


def householder_rows(reflectors: Tensor) -> Tensor:
    """The (r, h) projection that Householder ``reflectors`` (r, h) stand for, as torch's ``orthogonal``
    parametrization without trivialization computes it: orthonormal rows, each row's sign that of its reflector's
    diagonal entry. A zero entry zeroes the row; torch truncates the entry to an int, which zeroes it as soon as
    weight decay shrinks it below 1 in magnitude (AdapterHub's LoReFT collapses so under AdamW), ours keeps it."""
    X = reflectors.mT  # (h, r)
    V = X.tril(diagonal=-1)
    tau = 2.0 / (1.0 + (V * V).sum(dim=-2))
    return (torch.linalg.householder_product(V, tau) * X.diagonal().sign()).mT


def reflectors_of(rows: Tensor) -> Tensor:
    """The Householder reflectors (r, h) whose ``householder_rows`` are the rows of ``rows`` (r, h) made orthonormal
    by Gram-Schmidt (the rows themselves when they are orthonormal): torch's ``right_inverse`` of the same
    parametrization."""
    A, tau = torch.geqrf(rows.mT)  # (h, r)
    A.diagonal().sign_()
    A.diagonal()[tau == 0.0] *= -1
    return A.mT.contiguous()


class OrthogonalProjection(nn.Module):
    """A rank-r projection with orthonormal rows, ``weight`` (r, h), learned through its Householder reflectors
    ``original`` (r, h); built from the rows of ``initial`` made orthonormal, as AdapterHub's is."""

    def __init__(self, initial: Tensor) -> None:
        super().__init__()
        # on the meta device (a model built to check a file's shapes) there are no values to make orthonormal
        self.original = nn.Parameter(torch.empty_like(initial) if initial.is_meta else reflectors_of(initial))

    @property
    def weight(self) -> Tensor:
        """(r, h), in float32 at least: torch has no half-precision Householder product (AdapterHub keeps the
        projection in float32 for the same reason)."""
        return householder_rows(self.original.to(torch.promote_types(self.original.dtype, torch.float32)))


class ReftUnit(nn.Module):
    """``x -> dropout(x + (act(W x + b) - R x) Rᵀ)`` on (n, h) hidden states; without ``- R x`` unless
    ``subtract_projection``."""

    def __init__(self, config: ReftConfig, hidden_size: int, generator: torch.Generator | None) -> None:
        super().__init__()
        self.learned_source = nn.Linear(hidden_size, config.r)
        projection = nn.Linear(hidden_size, config.r, bias=False)
        with torch.no_grad():  # nn.Linear's own initialisation, drawn in AdapterHub's order from the seeded generator
            for linear in (self.learned_source, projection):
                nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
                if linear.bias is not None:
                    bound = 1 / math.sqrt(hidden_size)
                    nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
        self.projection = OrthogonalProjection(projection.weight.detach()) if config.orthogonality else projection
        self.subtract_projection = config.subtract_projection
        self.non_linearity = non_linearity(config.non_linearity) if config.non_linearity else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        R = self.projection.weight.to(x.dtype)  # (r, h)
        source = self.learned_source(x)  # (n, r)
        if self.non_linearity is not None:
            source = self.non_linearity(source)
        if self.subtract_projection:
            source = source - x @ R.mT
        return self.dropout(x + source @ R)  # (n, h)


def token_runs(x: Tensor, padding: Any) -> tuple[Tensor, Tensor]:
    """Where each row's real tokens start in ``x.flatten(0, 1)`` and how many there are, (B,) each: from the packed
    rows' ``lengths``, else from the attention mask as AdapterHub reads it (the first 1 of a row starts it, left
    padding included), else every token of every row."""
    if padding.lengths is not None:  # packed (1, N, C): each row's tokens in a run
        lengths = torch.tensor(padding.lengths, device=x.device)
        return lengths.cumsum(0) - lengths, lengths
    rows, tokens = x.shape[:2]
    mask = padding.attention_mask
    if mask is None:
        return torch.arange(rows, device=x.device) * tokens, torch.full((rows,), tokens, device=x.device)
    real = (mask != 0).to(torch.int32)
    return torch.arange(rows, device=x.device) * tokens + real.argmax(dim=1), real.sum(dim=1)


class Reft(Method):
    """The interventions of one layer: ``units[0]`` on the first ``prefix_positions`` real tokens of each row,
    ``units[1]`` (``units[0]`` when tied) on the last ``suffix_positions``; where the two overlap in a short row the
    suffix's result is kept, as in AdapterHub. Every other position passes through.

    AdapterHub also edits padding positions of rows shorter than the prefix (and fails on right-padded rows shorter
    than the suffix); ours edits real tokens only, so the real tokens' outputs are AdapterHub's, padded or packed.
    """

    title = "ReFT"
    config_class = ReftConfig
    adapterhub_container = "refts"

    @classmethod
    def sites(cls, config: ReftConfig, layer: int | None) -> tuple[str, ...]:
        if layer is None or (config.layers != "all" and layer not in config.layers):
            return ()
        return ("output",)

    @classmethod
    def build(cls, config: ReftConfig, site: Site, shape: ModelShape, shared: nn.Module | None) -> Reft:
        return cls(config, shape.hidden_size)

    def __init__(self, config: ReftConfig, hidden_size: int) -> None:
        if config.orthogonality and config.r > hidden_size:
            raise ValueError(f"ReftConfig.r={config.r} exceeds the hidden size {hidden_size}: a projection with "
                             "orthonormal rows has at most that many; lower r, or set orthogonality=False.")
        super().__init__()
        self.config = config
        # AdapterHub reseeds before each unit: seeded units start equal
        self.units = nn.ModuleList(ReftUnit(config, hidden_size, init_generator(config.init_weights_seed))
                                   for _ in range(1 if config.tied_weights else 2))

    def forward(self, x: Tensor, padding: Any) -> Tensor:
        starts, lengths = token_runs(x, padding)
        prefix, suffix = self.config.prefix_positions, self.config.suffix_positions
        offsets = torch.arange(max(prefix, suffix), device=x.device)
        p, s = offsets[:prefix], offsets[:suffix]
        first = lengths[:, None] - suffix + s  # (B, S): the suffix's positions within each row
        in_prefix = p < lengths[:, None] - suffix  # (B, P): in the row and not overwritten by the suffix
        prefix_index = (starts[:, None] + p)[in_prefix]
        suffix_index = (starts[:, None] + first)[first >= 0]
        flat = x.flatten(0, 1)  # (B*T, C), or (N, C) packed
        index = torch.cat([prefix_index, suffix_index])
        if self.config.tied_weights:
            new = self.units[0](flat[index])
        else:
            new = torch.cat([self.units[0](flat[prefix_index]), self.units[1](flat[suffix_index])])
        return flat.index_copy(0, index, new).view_as(x)

    def merge_refusal(self) -> str | None:
        return ("a ReFT intervention edits chosen positions of each layer's output, which no weight can hold; only "
                "LoRA and (IA)^3 adapters merge")

    @classmethod
    def adapterhub_names(cls, config: ReftConfig, key: str) -> tuple[str, ...]:
        return (key.replace("projection.original", "projection.parametrizations.weight.original"),)

    @classmethod
    def read_adapterhub_tensors(cls, config: ReftConfig, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each orthogonal projection's ``base`` (h, h) folded into its reflectors: AdapterHub computes
        ``(base @ H(V) · int(diagonal))ᵀ`` from the reflectors V below the diagonal of ``original``; ours are those of
        ``base @ H(V)``, their diagonal entries AdapterHub's signs (0 where its truncation zeroes a row)."""
        converted = dict(tensors)
        for key in [key for key in tensors if key.endswith(BASE)]:
            original = key.removesuffix(BASE) + ORIGINAL
            if original not in tensors:
                continue  # the install reports the missing reflectors
            base, reflectors = converted.pop(key), tensors[original]
            X = reflectors.mT.double()  # (h, r)
            V = X.tril(diagonal=-1)
            columns = base.double() @ torch.linalg.householder_product(V, 2.0 / (1.0 + (V * V).sum(dim=-2)))
            ours = reflectors_of(columns.mT)
            ours.diagonal().mul_(X.diagonal().int())
            converted[original] = ours.to(reflectors.dtype)
        return converted

    @classmethod
    def write_adapterhub_tensors(cls, config: ReftConfig, tensors: dict[str, Tensor]
                                 ) -> tuple[ReftConfig, dict[str, Tensor]]:
        """Each orthogonal projection with the identity as its ``base`` and its reflectors' diagonal entries their
        signs (exactly -1, 0 or 1), so AdapterHub's parametrization computes our matrix. AdapterHub subtracts the
        projection in every ReFT it loads, whatever the file says: a DiReFT goes as the LoReFT-form adapter with
        ``W + R`` for ``W``, the same map where the source is linear (non_linearity None or "linear"); refused
        otherwise."""
        converted = dict(tensors)
        for key in [key for key in tensors if key.endswith(ORIGINAL)]:
            reflectors = tensors[key].detach().clone()
            reflectors.diagonal().copy_(reflectors.diagonal().sign())
            converted[key] = reflectors
            converted[key.removesuffix(ORIGINAL) + BASE] = torch.eye(reflectors.shape[1], dtype=reflectors.dtype)
        if config.subtract_projection:
            return config, converted
        if config.non_linearity is not None and config.non_linearity.lower() != "linear":
            raise ValueError(f"AdapterHub reloads every ReFT adapter with subtract_projection=True (its config drops "
                             f"the field); this one has subtract_projection=False and non_linearity="
                             f"{config.non_linearity!r}, which no such adapter equals. Save it with "
                             "format='peftcore'.")
        for key in [key for key in tensors if key.endswith("learned_source.weight")]:
            unit = key.removesuffix("learned_source.weight")
            projection = (householder_rows(converted[f"{unit}projection.{ORIGINAL}"]) if config.orthogonality
                          else tensors[unit + "projection.weight"])
            converted[key] = tensors[key].detach() + projection.detach().to(tensors[key].dtype)
        return config.replace(subtract_projection=True), converted


ORIGINAL = "parametrizations.weight.original"
BASE = "parametrizations.weight.0.base"

register_method(Reft, {"loreft": LoReftConfig(), "noreft": NoReftConfig(), "direft": DiReftConfig()})
