"""HuggingFace PEFT (``peft`` 0.21.2) adapter directories, both ways: LoRA and (IA)^3; prefix tuning on read.

PEFT writes ``adapter_config.json`` (``peft_type``, ``target_modules``, ``r``, ``lora_alpha``, ...) and
``adapter_model.safetensors`` (older: ``adapter_model.bin``) with keys ``base_model.model.`` + the module path inside
the transformers model that was wrapped + the tensor (``bert.encoder.layer.0.attention.self.query.lora_A.weight``,
``...key.ia3_l``); ``modules_to_save`` (a task model's classifier) beside them without their wrapper names
(``base_model.model.classifier.weight``). Prompt methods keep ``prompt_embeddings``. The model names its HF modules
(its key table, ``model.keymap``); this module matches PEFT's ``target_modules`` against them exactly as PEFT does
(``tuners_utils.check_target_module_exists``) and renames the tensors.

Conversions, all exact in outputs unless refused (every refusal says why, before the model changes):

- LoRA scaling ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``) becomes our ``alpha / r``; per-module
  ``rank_pattern``/``alpha_pattern`` become one rank (the largest; smaller ranks padded with zero rows/columns, which
  stay zero in training) and one alpha, any other module's scaling folded into its ``lora_B``.
- DeBERTa v1's fused ``in_proj`` is interleaved per head; its ``lora_B`` rows split like the weight (``A`` is shared),
  and on export our q/k/v LoRAs of rank r join into one ``in_proj`` LoRA of rank m·r (block structure, exact).
- The classifier in ``modules_to_save`` is the model's own task head (``model.head``); a head module PEFT did not save
  keeps the model's (= PEFT's base) values.
- (IA)^3: a vector on a module's output maps 1:1. PEFT's ``feedforward_modules`` vectors scale a module's *input*
  (``output.dense``: after the activation); ours, as AdapterHub's, scale ``ffn.intermediate``'s output before it, and
  GELU(l·z) ≠ l·GELU(z): such files are refused, as are vectors on modules without a site
  (``attention.output.dense``, part of PEFT's default BERT targets).
- Prefix tuning: ``prompt_embeddings`` (P, L·2·H·D) is our flat prefix, same layout. transformers treats the prefix as
  past keys and shifts the position ids by P; ours does not (AdapterHub's semantics): pass
  ``position_ids = P + arange(T)`` to reproduce PEFT's numbers (a warning says so).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from peftcore.configs import IA3Config, LoRAConfig, PrefixTuningConfig
from peftcore.interop.adapterhub import read_tensors
from peftcore.io import CONFIG_FILE, SavedAdapter, atomic_directory_write, write_json, write_safetensors

if TYPE_CHECKING:
    from peftcore.model import AdapterModelMixin

WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_VERSION = "0.21.2"
ROOT = "base_model.model."  # LoRA and (IA)^3 keys; prompt methods' heads sit under "base_model."
LINEAR_SITES = ("attn.q", "attn.k", "attn.v", "ffn.intermediate", "ffn.output")
SUFFIXES = {"LORA": (".lora_A.weight", ".lora_B.weight"), "IA3": (".ia3_l",)}
TASK_TYPES = {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
              "question_answering": "QUESTION_ANS", "image_classification": None}
# options whose non-default value changes what the file means; each must be falsy (bias: "none")
REFUSED = {
    "use_dora": "DoRA's magnitude vector", "lora_bias": "a bias on lora_B", "fan_in_fan_out": "Conv1D (GPT-2) weights",
    "layer_replication": "replicated layers", "target_parameters": "bare nn.Parameter targets",
    "trainable_token_indices": "trainable embedding rows", "use_qalora": "QALoRA", "use_bdlora": "BD-LoRA",
    "alora_invocation_tokens": "activated LoRA", "megatron_config": "Megatron layers", "arrow_config": "Arrow routing",
    "kasa_config": "KaSA", "monteclora_config": "MonteCLoRA", "velora_config": "VeLoRA",
}
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")  # these rewrite the base weights


def is_peft(raw: Mapping[str, Any]) -> bool:
    return "peft_type" in raw


@dataclass(frozen=True)
class HFModule:
    """One module of the transformers model a PEFT adapter may target, and our sites it covers."""

    path: str  # as PEFT names it (task prefix included when the file has one)
    layer: int | None
    sites: tuple[str, ...]  # none: no site of ours there; three: DeBERTa v1's fused in_proj (q, k, v)
    split: Callable[[Tensor], tuple[Tensor, ...]] | None = None  # fused rows -> one tensor per site
    join: Callable[[tuple[Tensor, ...]], Tensor] | None = None


def hf_modules(model: AdapterModelMixin, prefix: str) -> dict[str, HFModule]:
    """Every module with a weight in the model's HF key table (base under ``prefix``, its task head at the top),
    each with the sites it covers."""
    keymap, config = model.keymap, model.config
    site_of: dict[str, tuple[str, ...]] = {}
    for hf_key, target in keymap.keys.items():
        targets = (target,) if target is None or isinstance(target, str) else target.targets  # a Split: several
        sites = tuple(t.removeprefix("layers.{i}.").removesuffix(".weight") for t in targets if t is not None)
        if all(site in LINEAR_SITES for site in sites) and sites and hf_key.endswith(".weight"):
            site_of[hf_key] = sites
    modules = {}
    head_table = keymap.heads.get(config.head, {}) if getattr(config, "head", None) else {}
    for table, root, is_base in ((keymap.keys, prefix, True), (head_table, "", False)):
        for hf_key, target in table.items():
            if not hf_key.endswith(".weight"):
                continue
            template = hf_key.removesuffix(".weight")
            split, join = (None, None) if target is None or isinstance(target, str) else (target.split, target.join)
            for layer in range(len(model.layers)) if "{i}" in template else (None,):
                path = root + template.format(i=layer)
                modules[path] = HFModule(path, layer, site_of.get(hf_key, ()) if is_base else (),
                                         None if split is None else lambda t, f=split: f(t, config),
                                         None if join is None else lambda parts, f=join: f(parts, config))
    return modules


# ---- PEFT's matching rules ------------------------------------------------------------------------------------


def matches_list(entries: list[str], key: str) -> bool:
    return key in entries or any(key.endswith(f".{entry}") for entry in entries)


def is_targeted(raw: Mapping[str, Any], key: str) -> bool:
    """``tuners_utils.check_target_module_exists`` of peft 0.21.2, for one module path."""
    exclude = raw.get("exclude_modules")
    if exclude and (re.fullmatch(exclude, key) if isinstance(exclude, str) else matches_list(exclude, key)):
        return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in raw.get("modules_to_save") or ()):
        return False
    targets = raw.get("target_modules")
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if not matches_list(list(targets), key):
        return False
    layers = raw.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    patterns = raw.get("layers_pattern")
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match["idx"])
    return index == layers if isinstance(layers, int) else index in layers


def pattern_value(patterns: Mapping[str, Any], key: str, default: Any) -> Any:
    """``rank_pattern``/``alpha_pattern`` lookup (``utils.other.get_pattern_key``): the first matching entry."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


def is_feedforward(raw: Mapping[str, Any], key: str) -> bool:
    """``IA3Model._check_target_module_feedforward``: a list entry matches any suffix, without a dot."""
    modules = raw.get("feedforward_modules") or []
    return bool(re.fullmatch(modules, key)) if isinstance(modules, str) else any(key.endswith(m) for m in modules)


# ---- reading ------------------------------------------------------------------------------------------------


def read(directory: Path, raw: Mapping[str, Any], with_head: bool, model: AdapterModelMixin) -> SavedAdapter:
    """A PEFT directory as a SavedAdapter in our key names; anything we cannot express exactly is refused here."""
    where = directory / CONFIG_FILE
    peft_type = raw["peft_type"]
    if peft_type not in ("LORA", "IA3", "PREFIX_TUNING"):
        raise ValueError(f"{where}: PEFT method {peft_type!r} is not available in peftcore; it reads LORA, IA3 and "
                         "PREFIX_TUNING adapters.")
    tensors = read_tensors(directory, WEIGHTS)
    if tensors is None:
        raise FileNotFoundError(f"{directory} has no {' or '.join(WEIGHTS)}.")
    name = directory.name if directory.name and not set(directory.name) & {".", ","} else "default"
    if peft_type == "PREFIX_TUNING":
        return read_prefix(where, raw, tensors, with_head, model, name)
    check_options(where, raw)
    adapter_keys = {key for key in tensors if key.endswith(SUFFIXES[peft_type])}
    outside = sorted(key for key in tensors if not key.startswith(ROOT))
    if outside or not adapter_keys:
        raise ValueError(f"{where}: expected {peft_type} tensors named 'base_model.model.<module>"
                         f"{SUFFIXES[peft_type][0]}'; found {outside[:5] or sorted(tensors)[:5]}.")
    names = {key: key.removeprefix(ROOT) for key in adapter_keys}
    prefix = model.keymap.prefix if all(k.startswith(model.keymap.prefix) for k in names.values()) else ""
    modules = hf_modules(model, prefix)
    targeted = {path: module for path, module in modules.items() if is_targeted(raw, path)}
    in_file = {strip_suffix(key, SUFFIXES[peft_type]) for key in names.values()}
    check_placement(where, targeted, in_file, model)
    by_layer: dict[int, set[str]] = {i: set() for i in range(len(model.layers))}
    for module in targeted.values():
        by_layer[module.layer].update(module.sites)
    config = config_for_sites(where, by_layer, peft_type, raw)
    site_paths = {(site.layer, site.name): site.path for site in model.sites_found}
    tensors = {key.removeprefix(ROOT): t for key, t in tensors.items()}
    if peft_type == "LORA":
        state, config = lora_state(where, raw, targeted, tensors, site_paths, config)
    else:
        state = ia3_state(where, raw, targeted, tensors, site_paths)
    saved = SavedAdapter(name, config, state, None, None)
    head_keys = saved_modules(where, raw, {key: t for key, t in tensors.items()
                                           if strip_suffix(key, SUFFIXES[peft_type]) == key})
    if with_head and head_keys:
        saved.model_head_state = model_head_state(where, model, head_keys)
    return saved


def strip_suffix(key: str, suffixes: tuple[str, ...]) -> str:
    return next((key.removesuffix(suffix) for suffix in suffixes if key.endswith(suffix)), key)


def check_options(where: Path, raw: Mapping[str, Any]) -> None:
    if raw.get("bias", "none") != "none":
        raise ValueError(f"{where}: bias={raw['bias']!r} trains base-model biases, which peftcore keeps out of "
                         "adapters; only bias='none' adapters load.")
    used = [f"{option}={raw[option]!r} ({what})" for option, what in REFUSED.items() if raw.get(option)]
    if used:
        raise ValueError(f"{where}: peftcore's LoRA has no equivalent of {', '.join(used)}; only plain LoRA/(IA)^3 "
                         "adapters load.")
    init = str(raw.get("init_lora_weights", True)).lower()
    if init.startswith(BASE_CHANGING_INITS):
        raise ValueError(f"{where}: init_lora_weights={raw['init_lora_weights']!r} rewrites the base weights, so "
                         "this file's A and B only hold on PEFT's modified base model; convert it to a plain LoRA "
                         "first (save_pretrained(path_initial_model_for_weight_conversion=...)).")
    targets = raw.get("target_modules")
    if targets is None or targets == "all-linear" or not isinstance(targets, (str, list)):
        raise ValueError(f"{where}: target_modules={targets!r}; a saved PEFT adapter names its modules (a list or a "
                         "regex). 'all-linear' also adapts attention output projections, which have no site here.")


def check_placement(where: Path, targeted: Mapping[str, HFModule], in_file: set[str], model: AdapterModelMixin
                    ) -> None:
    """The file's modules must be those its target_modules select, each at a site of ours."""
    no_site = sorted(path for path, module in targeted.items() if not module.sites)
    if no_site:
        raise ValueError(f"{where}: target_modules select modules where {type(model).__name__} has no LoRA/(IA)^3 "
                         f"site (only attention q/k/v and the two feed-forward linears have one): "
                         f"{', '.join(no_site[:6])}{' ...' if len(no_site) > 6 else ''}.")
    unexpected, missing = sorted(in_file - set(targeted)), sorted(set(targeted) - in_file)
    if unexpected or missing:
        lines = [f"{where}: the tensors do not match target_modules on {type(model).__name__}:"]
        for title, paths in (("tensors for modules not targeted (or absent from this model)", unexpected),
                             ("targeted modules without tensors", missing)):
            if paths:
                lines.append(f"  {title}: {', '.join(paths[:6])}{' ...' if len(paths) > 6 else ''}")
        raise ValueError("\n".join(lines))


def config_for_sites(where: Path, by_layer: Mapping[int, set[str]], peft_type: str, raw: Mapping[str, Any]
                     ) -> LoRAConfig:
    """Our config places one set of sites in every layer it does not leave out."""
    used = set().union(*by_layer.values())
    uneven = {layer: sorted(sites) for layer, sites in by_layer.items() if sites and sites != used}
    if uneven:
        raise ValueError(f"{where}: the adapted modules differ between layers ({uneven} vs {sorted(used)} "
                         "elsewhere); peftcore's LoRA/(IA)^3 adapts the same sites in every layer it does not leave "
                         "out.")
    attn = tuple(m for m in ("q", "k", "v") if f"attn.{m}" in used)
    placement = dict(selfattn_lora=bool(attn), attn_matrices=attn or ("q", "v"),
                     intermediate_lora="ffn.intermediate" in used, output_lora="ffn.output" in used,
                     leave_out=tuple(layer for layer, sites in by_layer.items() if not sites))
    if peft_type == "IA3":
        return IA3Config(**placement)
    return LoRAConfig(**placement, r=raw["r"], alpha=raw["lora_alpha"], dropout=raw.get("lora_dropout", 0.0))


def lora_state(where: Path, raw: Mapping[str, Any], targeted: Mapping[str, HFModule], tensors: Mapping[str, Tensor],
               site_paths: Mapping[tuple[int, str], str], config: LoRAConfig) -> tuple[dict[str, Tensor], LoRAConfig]:
    """Our lora_A/lora_B per site: one rank (the largest, zero-padded) and one alpha (other scalings folded into B)."""
    ranks, scalings = {}, {}
    for path in targeted:
        r = pattern_value(raw.get("rank_pattern") or {}, path, raw["r"])
        alpha = pattern_value(raw.get("alpha_pattern") or {}, path, raw["lora_alpha"])
        ranks[path], scalings[path] = r, alpha / (math.sqrt(r) if raw.get("use_rslora") else r)
    r = max(ranks.values())
    uniform = len(set(scalings.values())) == 1
    scaling = next(iter(scalings.values())) if uniform else raw["lora_alpha"] / (
        math.sqrt(raw["r"]) if raw.get("use_rslora") else raw["r"])
    alpha = scaling * r
    config = config.replace(r=r, alpha=int(alpha) if float(alpha).is_integer() else alpha)
    if len(set(ranks.values())) > 1:
        warnings.warn(f"{where}: ranks differ between modules ({sorted(set(ranks.values()))}); smaller ranks are "
                      f"padded with zeros to r={r} (same outputs, more parameters).", stacklevel=4)
    state = {}
    for path, module in targeted.items():
        A, B = tensors.get(f"{path}.lora_A.weight"), tensors.get(f"{path}.lora_B.weight")
        if A is None or B is None or A.shape[0] != ranks[path] or B.shape[1] != ranks[path]:
            raise ValueError(f"{where}: {path} needs lora_A (r, in) and lora_B (out, r) with r={ranks[path]}, got "
                             f"{None if A is None else tuple(A.shape)} and {None if B is None else tuple(B.shape)}.")
        A = torch.cat([A, A.new_zeros(r - A.shape[0], A.shape[1])])  # (R, in)
        B = torch.cat([B, B.new_zeros(B.shape[0], r - B.shape[1])], dim=1)  # (out, R)
        if scalings[path] != scaling:
            B = B * (scalings[path] / scaling)
        for site, part in zip(module.sites, module.split(B) if module.split else (B,), strict=True):
            state[f"{site_paths[module.layer, site]}.adapters.lora_A"] = A
            state[f"{site_paths[module.layer, site]}.adapters.lora_B"] = part.contiguous()
    return state, config


def ia3_state(where: Path, raw: Mapping[str, Any], targeted: Mapping[str, HFModule], tensors: Mapping[str, Tensor],
              site_paths: Mapping[tuple[int, str], str]) -> dict[str, Tensor]:
    feedforward = sorted(path for path in targeted if is_feedforward(raw, path))
    if feedforward:
        listed = ", ".join(feedforward[:4]) + (" ..." if len(feedforward) > 4 else "")
        raise ValueError(f"{where}: PEFT's (IA)^3 scales the input of its feedforward_modules ({listed}): "
                         "for output.dense that is after the activation, "
                         "l ⊙ GELU(W1 x). peftcore's (IA)^3, like AdapterHub's, scales ffn.intermediate before it, "
                         "GELU(l ⊙ W1 x), and scales outputs only; the two differ, so this file is refused. An (IA)^3 "
                         "on 'intermediate.dense' outside feedforward_modules converts exactly.")
    fused = sorted(path for path, module in targeted.items() if module.split)
    if fused:
        raise ValueError(f"{where}: (IA)^3 on DeBERTa's fused {fused[0]} scales W x before DeBERTa adds q_bias and "
                         "v_bias; peftcore's (IA)^3 at attn.q/attn.v scales W x + b, so the two differ.")
    state = {}
    for path, module in targeted.items():
        vector = tensors.get(f"{path}.ia3_l")
        if vector is None or vector.dim() != 2 or vector.shape[1] != 1:
            raise ValueError(f"{where}: {path}.ia3_l must be an (out, 1) vector, got "
                             f"{None if vector is None else tuple(vector.shape)}.")
        state[f"{site_paths[module.layer, module.sites[0]]}.adapters.lora_B"] = vector
    return state


def saved_modules(where: Path, raw: Mapping[str, Any], rest: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors besides the method's: each must belong to a module of ``modules_to_save``."""
    names = raw.get("modules_to_save") or []
    strays = sorted(key for key in rest if not any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in names))
    if strays:
        raise ValueError(f"{where}: tensors that are neither {raw['peft_type']} weights nor in modules_to_save "
                         f"({names}): {strays[:6]}{' ...' if len(strays) > 6 else ''}.")
    return rest


def model_head_state(where: Path, model: AdapterModelMixin, hf_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``modules_to_save`` tensors as the model's ``head.*`` state; head tensors the file lacks keep their values."""
    head = getattr(model.config, "head", None)
    if getattr(model, "head", None) is None or head is None:
        raise ValueError(f"{where} holds a task head ({sorted(hf_state)[:4]}) but this model has none; load the "
                         "checkpoint with head='sequence_classification' (or the task's head), or pass "
                         "with_head=False.")
    table = model.keymap.heads.get(head, {})
    unknown = sorted(key for key in hf_state if table.get(key) is None)
    if unknown:
        raise ValueError(f"{where}: modules_to_save holds {unknown[:6]}, which are not this model's {head} head "
                         f"({sorted(k for k, v in table.items() if v)}); peftcore keeps base weights out of adapters.")
    state = {f"head.{key}": t.detach().clone() for key, t in model.head.state_dict().items()}
    state.update({table[key]: t for key, t in hf_state.items()})
    return state


def read_prefix(where: Path, raw: Mapping[str, Any], tensors: Mapping[str, Tensor], with_head: bool,
                model: AdapterModelMixin, name: str) -> SavedAdapter:
    """PEFT's prefix: ``prompt_embeddings`` (P, L·2·H·D) — the projected output when ``prefix_projection`` — viewed
    as (P, L, 2, H, D), exactly our flat pool's layout."""
    shape = (len(model.layers), model.config.num_attention_heads, model.config.hidden_size)
    theirs = (raw.get("num_layers"), raw.get("num_attention_heads"), raw.get("token_dim"))
    if theirs != shape or raw.get("num_transformer_submodules", 1) != 1:
        raise ValueError(f"{where}: prefix for (layers, heads, hidden) = {theirs} with "
                         f"{raw.get('num_transformer_submodules')} submodule(s); this model is {shape}.")
    embeddings = tensors.get("prompt_embeddings")
    length = raw.get("num_virtual_tokens")
    if embeddings is None or tuple(embeddings.shape) != (length, shape[0] * 2 * shape[2]):
        raise ValueError(f"{where}: expected prompt_embeddings of shape ({length}, {shape[0] * 2 * shape[2]}), got "
                         f"{None if embeddings is None else tuple(embeddings.shape)}.")
    warnings.warn(f"{where}: transformers shifts position ids by the prefix length under PEFT's prefix tuning; "
                  f"peftcore does not. Pass position_ids = {length} + arange(T) to reproduce PEFT's outputs.",
                  stacklevel=4)
    saved = SavedAdapter(name, PrefixTuningConfig(flat=True, prefix_length=length),
                         {"shared_parameters.prefix.control_trans": embeddings.reshape(-1)}, None, None)
    head_keys = saved_modules(where, raw, {key.removeprefix("base_model."): t for key, t in tensors.items()
                                           if key != "prompt_embeddings"})
    if with_head and head_keys:
        saved.model_head_state = model_head_state(where, model, head_keys)
    return saved


# ---- writing ------------------------------------------------------------------------------------------------


def save(model: AdapterModelMixin, directory: str | os.PathLike, name: str, with_head: bool = True) -> None:
    """Write LoRA or (IA)^3 adapter ``name`` so that ``peft.PeftModel.from_pretrained`` gives our outputs.

    Keys are named for the transformers class matching this model: ``XFor<Task>`` (``bert.`` prefix) when the model
    has a task head, ``XModel`` otherwise. With ``with_head``, the model's classification/tagging/QA head is saved as
    ``modules_to_save``.
    """
    model.check_known(name)
    config = model.adapter_configs[name]
    if not isinstance(config, LoRAConfig):
        raise ValueError(f"adapter {name!r} is {type(config).__name__}; PEFT files hold LoRA or (IA)^3 here.")
    if config.use_gating:
        raise ValueError(f"adapter {name!r} is gated (use_gating=True); PEFT has no gated LoRA/(IA)^3.")
    if with_head and name in model.heads:
        raise ValueError(f"adapter {name!r} has an AdapterHub-style head, which PEFT cannot hold; pass "
                         "with_head=False, or save with format='peftcore' or 'adapterhub'.")
    task_head = getattr(model.config, "head", None) if getattr(model, "head", None) is not None else None
    modules = hf_modules(model, model.keymap.prefix if task_head else "")
    by_site = {(m.layer, site): m for m in modules.values() for site in m.sites}
    placed: dict[str, dict[str, torch.nn.Module]] = {}  # HF module path -> {site: our module}
    for site in model.sites_found:
        if name in site.module.adapters:
            placed.setdefault(by_site[site.layer, site.name].path, {})[site.name] = site.module.adapters[name]
    is_ia3 = config.composition_mode == "scale"
    state, patterns = {}, {}
    for path, ours in placed.items():
        module = modules[path]
        if is_ia3:
            if module.split:
                raise ValueError(f"(IA)^3 on DeBERTa's fused {path}: PEFT would scale W x before q_bias/v_bias are "
                                 "added, ours scales W x + b; PEFT cannot express this adapter.")
            state[f"{ROOT}{path}.ia3_l"] = ours[module.sites[0]].lora_B.detach() * config.alpha  # (out, 1)
        elif module.split:  # q/k/v LoRAs of rank r -> one in_proj LoRA of rank m·r, block by block
            present = [site for site in module.sites if site in ours]
            A = torch.cat([ours[site].lora_A.detach() for site in present])  # (m R, in)
            parts = []
            for site in module.sites:
                part = A.new_zeros(ours[present[0]].lora_B.shape[0], A.shape[0])  # (H D, m R)
                if site in ours:
                    j = present.index(site) * config.r
                    part[:, j:j + config.r] = ours[site].lora_B.detach()
                parts.append(part)
            state[f"{ROOT}{path}.lora_A.weight"] = A
            state[f"{ROOT}{path}.lora_B.weight"] = module.join(tuple(parts))
            if len(present) > 1:
                leaf = path.rsplit(".", 1)[-1]
                patterns[leaf] = len(present)
        else:
            (lora,) = ours.values()
            state[f"{ROOT}{path}.lora_A.weight"] = lora.lora_A.detach()
            state[f"{ROOT}{path}.lora_B.weight"] = lora.lora_B.detach()
    saved_modules: list[str] = []
    if with_head and task_head in TASK_TYPES:
        inverse = {ours: hf for hf, ours in model.keymap.heads[task_head].items() if ours}
        for key, tensor in model.head.state_dict().items():
            state[f"{ROOT}{inverse[f'head.{key}']}"] = tensor.detach()
            saved_modules.append(inverse[f"head.{key}"].split(".")[0])
    targets = target_modules(modules, placed, config.leave_out, len(model.layers))
    common = {"auto_mapping": None, "base_model_name_or_path": None, "exclude_modules": None, "fan_in_fan_out": False,
              "inference_mode": True, "modules_to_save": sorted(set(saved_modules)) or None, "peft_version":
              PEFT_VERSION, "revision": None, "target_modules": targets,
              "task_type": TASK_TYPES.get(task_head) if saved_modules else None}
    if is_ia3:
        raw = {**common, "feedforward_modules": [], "init_ia3_weights": True, "peft_type": "IA3"}
    else:
        raw = {**common, **LORA_DEFAULTS, "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
               "rank_pattern": {leaf: m * config.r for leaf, m in patterns.items()},
               "alpha_pattern": {leaf: m * config.alpha for leaf, m in patterns.items()}}
    with atomic_directory_write(directory) as scratch:
        write_json(scratch / CONFIG_FILE, raw)
        write_safetensors(scratch / WEIGHTS[0], state)


LORA_DEFAULTS = {  # the rest of what peft 0.21.2 writes for a plain LoRA
    "alora_invocation_tokens": None, "arrow_config": None, "bias": "none", "corda_config": None,
    "ensure_weight_tying": False, "eva_config": None, "init_lora_weights": True, "kasa_config": None,
    "layer_replication": None, "layers_pattern": None, "layers_to_transform": None, "loftq_config": {},
    "lora_bias": False, "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core",
    "monteclora_config": None, "peft_type": "LORA", "qalora_group_size": 16, "target_parameters": None,
    "trainable_token_indices": None, "use_bdlora": None, "use_dora": False, "use_qalora": False,
    "use_rslora": False, "velora_config": None,
}


def target_modules(modules: Mapping[str, HFModule], placed: Mapping[str, Any], leave_out: tuple[int, ...],
                   num_layers: int) -> list[str] | str:
    """PEFT's target_modules for exactly the modules in ``placed``: short names (``["query", "value"]``) when they
    select nothing else, else a regex over the full paths."""
    templates = {re.sub(r"\.\d+\.", ".{i}.", path, count=1) for path in placed}
    others = {re.sub(r"\.\d+\.", ".{i}.", path, count=1) for path in modules} - templates
    short = []
    for template in sorted(templates):
        parts = template.split(".")
        suffixes = [".".join(parts[-n:]) for n in range(1, len(parts) + 1) if "{i}" not in parts[-n:]]
        unique = next((s for s in suffixes if not any(o == s or o.endswith(f".{s}") for o in others)), None)
        if unique is None:
            break
        short.append(unique)
    if len(short) == len(templates) and not leave_out:
        return short
    layers = "|".join(str(i) for i in range(num_layers) if i not in leave_out)
    stems = {t.partition("{i}.")[0] for t in templates}
    if len(stems) == 1:  # the usual case: "encoder.layer.{i}." then the modules inside a layer
        tails = "|".join(re.escape(t.partition("{i}.")[2]) for t in sorted(templates))
        return rf"(.*\.)?{re.escape(stems.pop())}(?:{layers})\.(?:{tails})"
    body = "|".join(re.escape(t).replace(r"\{i\}", f"(?:{layers})") for t in sorted(templates))
    return rf"(.*\.)?(?:{body})"
