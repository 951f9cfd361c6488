"""The non-linearities adapter configs name (``non_linearity`` of bottleneck, invertible and prefix-tuning configs),
as AdapterHub 1.3.0 resolves them (``adapters.methods.modeling.Activation_Function_Class``): any case of
transformers' ``ACT2FN`` names, plus ``leakyrelu``; and ``gelu_orig``, the exact GELU of adapters saved by
adapter-transformers 1.x/2.x (AdapterHub renames it to ``gelu`` when it reads such a file: ``ACTIVATION_RENAME`` in
adapters/utils.py).

Two of them learn parameters: ``prelu`` (``nn.PReLU``, one slope) and ``xielu`` (Huang et al., 2024,
https://arxiv.org/abs/2411.13010). A learned activation is a module of the adapter, its tensors named as AdapterHub
names them, so its files map onto ours.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.configs import check_in, check_type
from peftcore.sites import ACTIVATIONS, Activation


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU's tanh approximation, which transformers spells four ways."""
    return F.gelu(x, approximate="tanh")


def laplace(x: Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> Tensor:
    """Ma et al. (2022), https://arxiv.org/abs/2209.10655: the normal CDF of ``x`` with mean ``mu`` and standard
    deviation ``sigma``, a bounded stand-in for squared ReLU."""
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


class XIELU(nn.Module):
    """xIELU (Huang et al., 2024, https://arxiv.org/abs/2411.13010), transformers' ``XIELUActivation``:

        y = a_p x² + β x                          x > 0
        y = a_n (expm1(min(x, ε)) − x) + β x      x ≤ 0

    with a_p = softplus(alpha_p) and a_n = β + softplus(alpha_n), both learned, starting at 0.8. transformers keeps
    the parameters in bfloat16 whatever the model's dtype; ours follow the model's.
    """

    def __init__(self, alpha_p: float = 0.8, alpha_n: float = 0.8, beta: float = 0.5, eps: float = -1e-6) -> None:
        super().__init__()
        self.alpha_p = nn.Parameter(torch.tensor([alpha_p]).expm1().log())  # softplus⁻¹
        self.alpha_n = nn.Parameter(torch.tensor([alpha_n - beta]).expm1().log())
        self.register_buffer("beta", torch.tensor(beta))  # buffers, as transformers saves them
        self.register_buffer("eps", torch.tensor(eps))

    def forward(self, x: Tensor) -> Tensor:
        positive = F.softplus(self.alpha_p) * x * x
        negative = (self.beta + F.softplus(self.alpha_n)) * (torch.expm1(torch.minimum(x, self.eps)) - x)
        return torch.where(x > 0, positive, negative) + self.beta * x


FIXED: dict[str, Callable[[Tensor], Tensor]] = {
    **ACTIVATIONS,
    "gelu_orig": F.gelu,
    "gelu_python": F.gelu,
    "gelu_10": lambda x: F.gelu(x).clamp(-10.0, 10.0),
    "gelu_python_tanh": gelu_tanh,
    "gelu_accurate": gelu_tanh,
    "laplace": laplace,
    "leaky_relu": F.leaky_relu,
    "mish": F.mish,
    "relu2": lambda x: F.relu(x).square(),
    "relu6": F.relu6,
}
LEARNED: dict[str, Callable[[], nn.Module]] = {"prelu": nn.PReLU, "xielu": XIELU}
NAMES = tuple(sorted((*FIXED, *LEARNED)))


def check_activation(owner: str, name: str, value: object) -> None:
    """Refuse a ``value`` of field ``owner``.``name`` that names no activation of ``NAMES`` (in any case)."""
    check_type(owner, name, value, str, f"an activation name, one of {list(NAMES)}")
    check_in(owner, name, value.lower(), NAMES)


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation ``name`` names (any case): a function, or a new module for a learned one."""
    key = name.lower()
    return LEARNED[key]() if key in LEARNED else FIXED[key]


def non_linearity(name: str) -> Activation:
    """The activation ``name`` names, as a module for ``nn.Sequential``; a learned one's tensors are named as
    AdapterHub names them (``F.1.f.weight``)."""
    return Activation(name, activation(name))
