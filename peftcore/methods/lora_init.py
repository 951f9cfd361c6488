"""What a LoRA module starts as at one site, beyond AdapterHub's options: HF PEFT's (0.21.2) per-site rank and alpha
(``rank_pattern``/``alpha_pattern``), rsLoRA's scaling, (IA)^3's vectors on a linear's input (``input_scaled``,
PEFT's ``feedforward_modules``), and its initialisations ``gaussian``, ``pissa``,
``pissa_niter_K`` and ``olora`` (peft/tuners/lora/layer.py ``reset_lora_parameters``, ``pissa_init``,
``olora_init``).

- rsLoRA (Kalajdzievski, 2023, https://arxiv.org/abs/2312.03732): scaling alpha / sqrt(r) instead of alpha / r.
- PiSSA (Meng et al., 2024, https://arxiv.org/abs/2404.02948): A0, B0 from the top r singular triplets of W,
  B0 A0 = (U_r S_r V_r^T) / scaling; ``pissa_niter_K`` takes them from ``torch.svd_lowrank`` with K iterations.
- OLoRA (Büyükakyüz, 2024, https://arxiv.org/abs/2406.01775): W = Q R, B0 = Q[:, :r], A0 = R[:r].

PEFT subtracts scaling · B0 A0 from the base weight and trains A, B from A0, B0. Ours leaves the base weight alone
and keeps A0, B0 as buffers: ΔW = B A - B0 A0, the very form of PEFT's conversion to a plain LoRA of rank 2r
(``save_pretrained(path_initial_model_for_weight_conversion=...)``: A' = [A; A0], B' = [B, -B0]). So the outputs
are PEFT's, the model without the adapter is the original one, and deleting or resetting the adapter needs no
restoring of base weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

INITS = ("lora", "bert", "ia3", "vera", "gaussian", "pissa", "olora")  # and "pissa_niter_K", K a positive int
PEFT_INITS = ("gaussian", "pissa", "olora")  # PEFT's own, which AdapterHub lacks
LINEAR_SITES = ("attn.q", "attn.k", "attn.v", "attn.out", "ffn.intermediate", "ffn.output")
LINEAR_TARGETS = {"all-linear": (("q", "k", "v", "o"), True, True)}  # attn_matrices, intermediate, output


def is_base_changing(init: str) -> bool:
    """Whether ``init`` starts from the base weight's factors (PiSSA, OLoRA): the adapter keeps A0 and B0."""
    return init == "olora" or init.startswith("pissa")


def check_init(owner: str, init: Any) -> None:
    if init not in INITS and not (isinstance(init, str) and re.fullmatch(r"pissa_niter_[1-9]\d*", init)):
        raise ValueError(f"{owner}.init_weights={init!r} is not known; use one of {list(INITS)} or "
                         "'pissa_niter_K' (K iterations of the fast SVD, e.g. 'pissa_niter_4').")


def check_lora_options(config: Any) -> None:
    """Validate (and normalise) the PEFT-style fields of a LoRAConfig: ``target``, ``use_rslora``, ``rank_pattern``,
    ``alpha_pattern`` and PEFT's initialisations; they belong to additive LoRA (DoRA takes rsLoRA and patterns)."""
    name = type(config).__name__
    if config.target is not None:
        if config.target not in LINEAR_TARGETS:
            raise ValueError(f"{name}.target={config.target!r} is not known; use {list(LINEAR_TARGETS)} or None.")
        matrices, intermediate, output = LINEAR_TARGETS[config.target]
        for field, value in (("selfattn_lora", True), ("attn_matrices", matrices), ("intermediate_lora", intermediate),
                             ("output_lora", output)):
            object.__setattr__(config, field, value)
    if not isinstance(config.use_rslora, bool):
        raise TypeError(f"{name}.use_rslora must be True or False, got {config.use_rslora!r}.")
    for field, kinds in (("rank_pattern", (int,)), ("alpha_pattern", (int, float))):
        patterns = getattr(config, field)
        if not isinstance(patterns, Mapping):
            raise TypeError(f"{name}.{field} maps module-path patterns to values, got {patterns!r}.")
        for pattern, value in patterns.items():
            if not isinstance(pattern, str) or isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
                raise ValueError(f"{name}.{field}: {pattern!r}: {value!r}; keys are regex strings matched against "
                                 "site paths ('attn.q', 'layers.0.ffn.output'), values positive "
                                 f"{'ints' if field == 'rank_pattern' else 'numbers'}.")
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{name}.{field}: {pattern!r} is not a valid regex ({error}).") from None
        object.__setattr__(config, field, dict(patterns))
    check_init(name, config.init_weights)
    if not isinstance(config.input_scaled, (tuple, list)):
        raise TypeError(f"{name}.input_scaled lists linear site names, got {config.input_scaled!r}.")
    object.__setattr__(config, "input_scaled", tuple(config.input_scaled))
    for site in config.input_scaled:
        if site not in LINEAR_SITES:
            raise ValueError(f"{name}.input_scaled: {site!r} is not a linear site; use some of {list(LINEAR_SITES)}.")
    if config.input_scaled and (config.composition_mode != "scale" or config.use_gating):
        raise ValueError(f"{name}.input_scaled applies to (IA)^3 (composition_mode='scale') without a gate; leave it "
                         "empty.")
    peft_init = config.init_weights in PEFT_INITS or is_base_changing(config.init_weights)
    extras = [field for field, used in (("use_rslora", config.use_rslora), ("rank_pattern", config.rank_pattern),
                                        ("alpha_pattern", config.alpha_pattern)) if used]
    if (extras or peft_init) and (config.composition_mode != "add" or config.is_vera):
        raise ValueError(f"{name}: {', '.join(extras) or f'init_weights={config.init_weights!r}'} applies to LoRA "
                         "(composition_mode='add', no VeRA); leave it at its default.")
    if peft_init and config.use_dora:
        raise ValueError(f"{name}: init_weights={config.init_weights!r} is LoRA's; DoRA starts with init_weights="
                         "'lora'.")


def pattern_value(patterns: Mapping[str, Any], key: str, default: Any) -> Any:
    """``rank_pattern``/``alpha_pattern`` lookup as peft's ``utils.other.get_pattern_key``: the first key that
    matches the end of ``key`` at a dot."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


def site_rank(config: Any, path: str) -> tuple[int, float]:
    """(r, alpha) of the LoRA at the site ``path`` (``layers.0.attn.q``) under the config's patterns."""
    return pattern_value(config.rank_pattern, path, config.r), pattern_value(config.alpha_pattern, path, config.alpha)


def lora_scaling(alpha: float, r: int, rslora: bool) -> float:
    """alpha / r, or rsLoRA's alpha / sqrt(r) (PEFT's ``LoraLayer.update_layer``)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def gaussian_(A: Tensor, r: int, generator: torch.Generator | None) -> None:
    """PEFT's "gaussian": A ~ N(0, (1/r)^2) (std 1 / r); B stays zero."""
    torch.nn.init.normal_(A, std=1 / r, generator=generator)


def initial_factors(init: str, weight: Tensor, r: int, scaling: float, seed: int | None) -> tuple[Tensor, Tensor]:
    """(A0 (r, in), B0 (out, r)) of PiSSA or OLoRA for the base ``weight`` (out, in), computed in float32 as PEFT
    computes them. ``pissa_niter_K`` draws from the global RNG as PEFT does, or from ``seed`` without touching it."""
    w = weight.detach().float()
    if init == "olora":
        Q, R = torch.linalg.qr(w)
        return R[:r].contiguous(), Q[:, :r].contiguous()
    if init == "pissa":
        V, S, Uh = torch.linalg.svd(w, full_matrices=False)
        Vr, Sr, Uhr = V[:, :r], S[:r] / scaling, Uh[:r]
    else:
        niter = int(init.removeprefix("pissa_niter_"))
        with torch.random.fork_rng(enabled=seed is not None, devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            Vr, Sr, Ur = torch.svd_lowrank(w, r, niter=niter)
        Sr, Uhr = Sr / scaling, Ur.t()
    root = torch.diag(torch.sqrt(Sr))
    return root @ Uhr, Vr @ root
