"""HuggingFace PEFT's (0.21.2) LoRA files, both ways, for LoRA and the methods over its config (DoRA; (IA)^3 and
VeRA use the placement and option checks): what PEFT options we refuse, and lora_A/lora_B per module with PEFT's
per-module ranks and alphas (``rank_pattern``/``alpha_pattern``, rsLoRA) kept native.

PiSSA and OLoRA adapters (ΔW = B A - B0 A0, lora_init.py) are written as PEFT converts them to a plain LoRA
(``save_pretrained(path_initial_model_for_weight_conversion=...)``): rank 2r, A' = [A; A0], B' = [B, -B0], alpha
doubled (rsLoRA: times sqrt 2), so the scaling is unchanged; such files, as any plain LoRA, load here. A file still
in PiSSA/OLoRA form needs PEFT's rewritten base model, and is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from peftcore.methods.base import PeftFile
from peftcore.methods.lora_init import PEFT_INITS, is_base_changing, lora_scaling, pattern_value

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
SITE_MATRICES = {"attn.q": "q", "attn.k": "k", "attn.v": "v", "attn.out": "o"}


def refuse_gated_peft(config: Any) -> None:
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


def config_for_sites(file: PeftFile, config_class: type, **fields: Any) -> Any:
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
    attn = tuple(matrix for site, matrix in SITE_MATRICES.items() if site in used)
    return config_class(selfattn_lora=bool(attn), attn_matrices=attn or ("q", "v"),
                        intermediate_lora="ffn.intermediate" in used, output_lora="ffn.output" in used,
                        leave_out=tuple(layer for layer, sites in by_layer.items() if not sites), **fields)


def plain(value: float) -> float | int:
    """An alpha as PEFT's JSON states it: an int where it is whole."""
    return int(value) if float(value).is_integer() else value


def lora_from_peft(file: PeftFile, config_class: type, **fields: Any) -> tuple[Any, dict[str, Tensor]]:
    """Our lora_A/lora_B per site, each of its module's rank and alpha: PEFT's patterns become ours, keyed by the
    exact site path (DeBERTa v1's fused in_proj: each of q, k, v gets the module's A and its rows of B).
    ``fields`` go to the config (of ``config_class``)."""
    raw = file.raw
    r0, alpha0 = raw["r"], raw["lora_alpha"]
    ranks, alphas, state = {}, {}, {}
    for path, module in file.targeted.items():
        r = pattern_value(raw.get("rank_pattern") or {}, path, r0)
        alpha = pattern_value(raw.get("alpha_pattern") or {}, path, alpha0)
        A, B = file.tensors.get(f"{path}.lora_A.weight"), file.tensors.get(f"{path}.lora_B.weight")
        if A is None or B is None or A.shape[0] != r or B.shape[1] != r:
            raise ValueError(f"{file.where}: {path} needs lora_A (r, in) and lora_B (out, r) with r={r}, "
                             f"got {None if A is None else tuple(A.shape)} and "
                             f"{None if B is None else tuple(B.shape)}.")
        for site, part in zip(module.sites, module.split(B) if module.split else (B,), strict=True):
            key = re.escape(file.site_paths[module.layer, site])
            if r != r0:
                ranks[key] = r
            if alpha != alpha0:
                alphas[key] = plain(alpha)
            state[file.key(module.layer, site, "lora_A")] = A
            state[file.key(module.layer, site, "lora_B")] = part.contiguous()
    init = raw.get("init_lora_weights")
    config = config_for_sites(file, config_class, r=r0, alpha=plain(alpha0), dropout=raw.get("lora_dropout", 0.0),
                              use_rslora=bool(raw.get("use_rslora")), rank_pattern=ranks, alpha_pattern=alphas,
                              **({"init_weights": init} if init in PEFT_INITS else {}), **fields)
    return config, state


def peft_factors(lora: Any) -> tuple[Tensor, Tensor, int, float]:
    """(A, B, r, alpha) of one of our LoRA modules in PEFT's plain form: PiSSA/OLoRA as PEFT converts them."""
    B, A = (t.detach() for t in lora.factors())
    if lora.lora_A0 is None:
        return A, B, lora.r, lora.alpha
    return A, B, 2 * lora.r, lora.alpha * (math.sqrt(2) if lora.config.use_rslora else 2)


def lora_to_peft(config: Any, placed: Mapping[str, Mapping[str, Any]], modules: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """PEFT's lora_A/lora_B per module, with a rank_pattern/alpha_pattern entry (the module's escaped path) where its
    rank or alpha is not the config's. On DeBERTa v1's fused in_proj our q/k/v LoRAs join into one whose rank is
    the sum (block structure, exact), the scalings of the later ones folded into their rows of B."""
    doubled = is_base_changing(config.init_weights)
    r0 = 2 * config.r if doubled else config.r
    alpha0 = config.alpha * ((math.sqrt(2) if config.use_rslora else 2) if doubled else 1)
    state, ranks, alphas = {}, {}, {}
    for path, ours in placed.items():
        module = modules[path]
        factors = {site: peft_factors(lora) for site, lora in ours.items()}
        if not module.split:
            ((A, B, r, alpha),) = factors.values()
        else:
            A, B, r, alpha = joined(module, factors, config.use_rslora)
        state[f"{path}.lora_A.weight"], state[f"{path}.lora_B.weight"] = A, B
        if r != r0:
            ranks[re.escape(path)] = r
        if not math.isclose(alpha, alpha0, rel_tol=1e-12):
            alphas[re.escape(path)] = plain(alpha)
    init = config.init_weights if config.init_weights in ("gaussian",) else True
    raw = {**LORA_DEFAULTS, "r": r0, "lora_alpha": plain(alpha0), "lora_dropout": config.dropout,
           "use_rslora": config.use_rslora, "init_lora_weights": init, "rank_pattern": ranks, "alpha_pattern": alphas}
    return raw, state


def joined(module: Any, factors: Mapping[str, tuple[Tensor, Tensor, int, float]], rslora: bool
           ) -> tuple[Tensor, Tensor, int, float]:
    """One LoRA on a fused module (DeBERTa v1's in_proj) from ours on its sites: A stacked, each site's B in its rows
    and its own columns, at the first site's scaling (the others' folded into their B)."""
    present = [site for site in module.sites if site in factors]
    r = sum(factors[site][2] for site in present)
    scaling = lora_scaling(factors[present[0]][3], factors[present[0]][2], rslora)
    A = torch.cat([factors[site][0] for site in present])  # (sum R, in)
    parts, j = [], 0
    for site in module.sites:
        part = A.new_zeros(factors[present[0]][1].shape[0], r)  # (H D, sum R)
        if site in factors:
            _, B, r_site, alpha_site = factors[site]
            ratio = lora_scaling(alpha_site, r_site, rslora) / scaling
            part[:, j:j + r_site] = B * ratio if ratio != 1 else B
            j += r_site
        parts.append(part)
    return A, module.join(tuple(parts)), r, scaling * (math.sqrt(r) if rslora else r)
