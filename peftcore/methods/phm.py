"""Compacter (Karimi Mahabadi et al., 2021, https://arxiv.org/abs/2106.04647): the bottleneck's down- and
up-projections as parameterized hypercomplex multiplication (PHM) layers.

A PHM layer builds its weight from ``n = phm_dim`` small "rule" matrices ``A_i`` (n, n) and as many weight blocks
``W_i`` (in/n, out/n), low-rank by default (``W_i = W_left_i W_right_i``)::

    H = Σ_i kron(A_i, W_i)        (in, out)
    y = x H + b

Numerically equal to AdapterHub's ``adapters.methods.modeling.PHMLayer``, with its parameter names (``W_left``,
``W_right``, ``W``, ``b``, ``phm_rule``, ``phm_rule_left``/``_right``) and its (in, out) layout, so its files map onto
ours by path alone. What an adapter shares across its layers (the rule with ``shared_phm_rule``, W with
``shared_W_phm``) lives once in ``PHMShared``, kept in ``model.shared_parameters[adapter]["phm"]``.

Where we differ from AdapterHub 1.3.0 (``adapters/methods/modeling.py``):

- ``hypercomplex_nonlinearity`` is honoured: "glorot-uniform" (the default), "glorot-normal" (also "phm"), "normal"
  (std ``phm_init_range``). AdapterHub's ``init_W`` tests the string for truth, so its W is always glorot-normal.
- ``shared_W_phm=True`` with ``factorized_phm_W=False`` works; AdapterHub raises NameError building it.
- ``learn_phm=False`` keeps the rule fixed through ``train_adapter`` (the forward detaches it); AdapterHub's
  ``train_adapter`` switches ``requires_grad`` back on and trains it.
- ``init_weights="mam_adapter"`` zeroes the up-projection's W (``W_right`` when factorized), so the adapter starts as
  the identity; AdapterHub crashes (a PHM layer has no ``.weight``).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from peftcore.configs import check_in, check_positive_number, check_type

PER_LAYER_RULE_SCALE = 0.01  # AdapterHub and the Compacter code draw a per-layer rule from N(0, 0.01) or U(±0.01)


class CompacterFields(Protocol):
    """The fields of a bottleneck config (bottleneck.py's ``BnConfig``) that PHM layers read."""

    init_weights: str
    phm_dim: int
    phm_rank: int
    factorized_phm_W: bool
    shared_W_phm: bool
    shared_phm_rule: bool
    factorized_phm_rule: bool
    phm_c_init: str
    phm_init_range: float
    learn_phm: bool
    hypercomplex_nonlinearity: str
    phm_bias: bool


def check_phm_fields(config: CompacterFields, name: str) -> None:
    """Compacter's fields of a bottleneck config named ``name``, checked only when phm_layer is on (AdapterHub
    ignores them otherwise)."""
    for flag in ("factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule"):
        check_type(name, flag, getattr(config, flag), bool, "True or False")
    for size in ("phm_dim", "phm_rank"):
        check_type(name, size, getattr(config, size), int, "a positive int")
        if getattr(config, size) <= 0:
            raise ValueError(f"{name}.{size} must be a positive int, got {getattr(config, size)}.")
    check_positive_number(name, "phm_init_range", config.phm_init_range)
    check_in(name, "phm_c_init", config.phm_c_init, ("normal", "uniform"))
    check_in(name, "hypercomplex_nonlinearity", config.hypercomplex_nonlinearity,
             ("glorot-uniform", "glorot-normal", "normal", "phm"))
    if config.init_weights == "houlsby":
        raise ValueError(f"{name}: init_weights='houlsby' draws nn.Linear weights, and phm_layer=True has none "
                         "(AdapterHub crashes here). Use init_weights='bert' (the PHM layers' own init, set by "
                         "hypercomplex_nonlinearity) or 'mam_adapter' (the up-projection starts at zero).")


def kronecker_sum(rule: Tensor, weight: Tensor) -> Tensor:
    """Σ_i kron(A_i, W_i) for A (n, n, n) and W (n, p, q), as one (n·p, n·q) matrix.

    kron(A, W)[a·p + b, c·q + d] = A[a, c] · W[b, d], summed over i by the einsum.
    """
    blocks = einsum(rule, weight, "i a c, i b d -> a b c d")  # (n, p, n, q)
    return rearrange(blocks, "a b c d -> (a b) (c d)")  # (n·p, n·q)


def new_rule(config: CompacterFields) -> dict[str, nn.Parameter]:
    """The rule's parameters, uninitialised: A (n, n, n), or its factors (n, n, 1) and (n, 1, n)."""
    n = config.phm_dim
    if config.factorized_phm_rule:
        return {"phm_rule_left": nn.Parameter(torch.empty(n, n, 1)),
                "phm_rule_right": nn.Parameter(torch.empty(n, 1, n))}
    return {"phm_rule": nn.Parameter(torch.empty(n, n, n))}


def new_weight(config: CompacterFields, in_features: int, out_features: int, prefix: str) -> dict[str, nn.Parameter]:
    """W's parameters, uninitialised: ``{prefix}`` (n, in/n, out/n), or ``{prefix}_left`` (n, in/n, rank) and
    ``{prefix}_right`` (n, rank, out/n) when ``factorized_phm_W``."""
    n, rank = config.phm_dim, config.phm_rank
    if config.factorized_phm_W:
        return {f"{prefix}_left": nn.Parameter(torch.empty(n, in_features // n, rank)),
                f"{prefix}_right": nn.Parameter(torch.empty(n, rank, out_features // n))}
    return {prefix: nn.Parameter(torch.empty(n, in_features // n, out_features // n))}


def init_rule(parameters: list[nn.Parameter], config: CompacterFields, scale: float,
              generator: torch.Generator | None) -> None:
    """N(0, scale) when ``phm_c_init="normal"``, else U(-scale, scale); ``requires_grad`` is ``learn_phm``."""
    with torch.no_grad():
        for parameter in parameters:
            if config.phm_c_init == "normal":
                parameter.normal_(0.0, scale, generator=generator)
            else:
                parameter.uniform_(-scale, scale, generator=generator)
            parameter.requires_grad_(config.learn_phm)


def init_weight(parameter: nn.Parameter, config: CompacterFields, generator: torch.Generator | None) -> None:
    """Each (rows, cols) block W_i drawn as ``hypercomplex_nonlinearity`` says: Glorot (Xavier) uniform or normal
    over the block's own fans, or N(0, phm_init_range)."""
    rows, cols = parameter.shape[1:]
    std = math.sqrt(2.0 / (rows + cols))  # Glorot, gain 1, fans of one block
    with torch.no_grad():
        if config.hypercomplex_nonlinearity == "glorot-uniform":
            parameter.uniform_(-math.sqrt(3.0) * std, math.sqrt(3.0) * std, generator=generator)
        elif config.hypercomplex_nonlinearity == "normal":
            parameter.normal_(0.0, config.phm_init_range, generator=generator)
        else:  # "glorot-normal", and AdapterHub's "phm"
            parameter.normal_(0.0, std, generator=generator)


def zero_weight(parameters: dict[str, nn.Parameter]) -> None:
    """Make W zero while keeping it trainable: zero its right factor only (a zero product of two zero factors would
    get no gradient), or the whole W when it is not factorized."""
    with torch.no_grad():
        for name, parameter in parameters.items():
            if not name.endswith("_left"):
                parameter.zero_()


class PHMShared(nn.Module):
    """What one Compacter adapter shares across its layers: the rule (``shared_phm_rule``) and the down and up W
    (``shared_W_phm``), under AdapterHub's names (``phm_rule``, ``W_down_left``, ``W_up_right``, ``W_down``, ...).

    A shared rule is drawn from N(0, phm_init_range) or U(-1, 1), as AdapterHub draws it.
    """

    def __init__(self, config: CompacterFields, hidden_size: int, width: int, generator: torch.Generator | None = None,
                 zero_up: bool = False) -> None:
        super().__init__()
        self.config = config
        if config.shared_phm_rule:
            rule = new_rule(config)
            for name, parameter in rule.items():
                self.register_parameter(name, parameter)
            scale = config.phm_init_range if config.phm_c_init == "normal" else 1.0
            init_rule(list(rule.values()), config, scale, generator)
        if config.shared_W_phm:
            for position, (fan_in, fan_out) in (("down", (hidden_size, width)), ("up", (width, hidden_size))):
                weight = new_weight(config, fan_in, fan_out, f"W_{position}")
                for name, parameter in weight.items():
                    self.register_parameter(name, parameter)
                    init_weight(parameter, config, generator)
                if zero_up and position == "up":
                    zero_weight(weight)


class PHMLinear(nn.Module):
    """y = x H + b with H = Σ_i kron(A_i, W_i), in (in, out) layout; see the module docstring.

    The Kronecker weight is rebuilt from the parameters on every forward (one einsum), so it never goes stale after
    an optimizer step. Parts the config shares are read from ``shared`` (a ``PHMShared``), which this module
    references without registering it (its tensors belong to ``model.shared_parameters``).

    Args:
        position: "down" or "up": which of the shared W (``W_down_*``/``W_up_*``) this layer uses.
        zero_init: start with H = 0 (``init_weights="mam_adapter"`` on the up-projection).
    """

    def __init__(self, in_features: int, out_features: int, config: CompacterFields, position: str = "down",
                 shared: PHMShared | None = None, zero_init: bool = False) -> None:
        super().__init__()
        n = config.phm_dim
        for field, size in (("in_features", in_features), ("out_features", out_features)):
            if size % n:
                raise ValueError(f"PHMLinear {field}={size} is not divisible by phm_dim={n}; choose a phm_dim that "
                                 f"divides both {in_features} and {out_features}.")
        if position not in ("down", "up"):
            raise ValueError(f"PHMLinear position must be 'down' or 'up', got {position!r}.")
        if shared is None and (config.shared_phm_rule or config.shared_W_phm):
            raise ValueError("shared_phm_rule / shared_W_phm need the adapter's PHMShared module; pass shared=.")
        self.config, self.in_features, self.out_features, self.position = config, in_features, out_features, position
        object.__setattr__(self, "shared", shared)  # a reference, not a submodule
        rule = {} if config.shared_phm_rule else new_rule(config)
        weight = {} if config.shared_W_phm else new_weight(config, in_features, out_features, "W")
        for name, parameter in {**rule, **weight}.items():
            self.register_parameter(name, parameter)
        self.rule_names, self.weight_names = tuple(rule), tuple(weight)  # names, so .to() or assign= never stale
        self.b = nn.Parameter(torch.empty(out_features)) if config.phm_bias else None
        self.reset_parameters(zero_init=zero_init)

    def reset_parameters(self, generator: torch.Generator | None = None, zero_init: bool = False) -> None:
        """Draw this layer's own parameters (shared ones are drawn by ``PHMShared``); the bias starts at 0."""
        config = self.config
        init_rule([getattr(self, name) for name in self.rule_names], config, PER_LAYER_RULE_SCALE, generator)
        weight = {name: getattr(self, name) for name in self.weight_names}
        for parameter in weight.values():
            init_weight(parameter, config, generator)
        if zero_init:
            zero_weight(weight)
        if self.b is not None:
            nn.init.zeros_(self.b)

    def rule(self) -> Tensor:
        """A (n, n, n): the layer's own or the shared one, multiplied out when factorized."""
        source = self.shared if self.config.shared_phm_rule else self
        if self.config.factorized_phm_rule:
            rule = torch.bmm(source.phm_rule_left, source.phm_rule_right)  # (n, n, 1) @ (n, 1, n)
        else:
            rule = source.phm_rule
        return rule if self.config.learn_phm else rule.detach()

    def weight_blocks(self) -> Tensor:
        """W (n, in/n, out/n): the layer's own or its position's shared one, multiplied out when factorized."""
        if self.config.shared_W_phm:
            source, prefix = self.shared, f"W_{self.position}"
        else:
            source, prefix = self, "W"
        if self.config.factorized_phm_W:
            return torch.bmm(getattr(source, f"{prefix}_left"), getattr(source, f"{prefix}_right"))
        return getattr(source, prefix)

    def kronecker(self) -> Tensor:
        """H = Σ_i kron(A_i, W_i), (in, out)."""
        return kronecker_sum(self.rule(), self.weight_blocks())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.kronecker().mT, self.b)  # x H + b: (B, T, in) -> (B, T, out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, phm_dim={self.config.phm_dim}"
