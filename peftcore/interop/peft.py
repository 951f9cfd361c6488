"""HuggingFace PEFT (``peft`` 0.21.2) adapter directories, both ways: LoRA and (IA)^3; prefix tuning on read.

PEFT writes ``adapter_config.json`` (``peft_type``, ``target_modules``, ``r``, ``lora_alpha``, ...) and
``adapter_model.safetensors`` (older: ``adapter_model.bin``) with keys ``base_model.model.`` + the module path inside
the transformers model that was wrapped + the tensor (``bert.encoder.layer.0.attention.self.query.lora_A.weight``,
``...key.ia3_l``); ``modules_to_save`` (a task model's classifier) beside them without their wrapper names
(``base_model.model.classifier.weight``). Prompt methods keep ``prompt_embeddings``. The model names its HF modules
(``hf_modules``); this module matches PEFT's ``target_modules`` against them exactly as PEFT does
(``tuners_utils.check_target_module_exists``), handles the task head, and hands the tensors to the method whose
``peft_type`` the file names (``Method.from_peft``/``to_peft``), which converts them.

Conversions, all exact in outputs unless refused (every refusal says why, before the model changes):

- LoRA: ``r``, ``lora_alpha``, ``use_rslora`` and the per-module ``rank_pattern``/``alpha_pattern`` are ours
  (methods/lora_peft.py), the patterns keyed by our exact site paths on reading and by PEFT's exact module paths on
  writing. Every linear inside the layers has a site, the attention output dense (``attention.output.dense``)
  included (``attn.out``), so ``target_modules="all-linear"`` files load, but for a ``pooler.dense`` they also adapt
  (BERT-style models' pooler has no site: refused). PiSSA/OLoRA adapters are written as PEFT converts them to a
  plain LoRA of rank 2r; files still in PiSSA/OLoRA form are refused (they need PEFT's rewritten base weights).
- DeBERTa v1's fused ``in_proj`` is interleaved per head; its ``lora_B`` rows split like the weight (``A`` is shared),
  and on export our q/k/v LoRAs of rank r join into one ``in_proj`` LoRA of rank m·r (block structure, exact).
- The classifier in ``modules_to_save`` is the model's own task head (``model.head``); a head module PEFT did not save
  keeps the model's (= PEFT's base) values.
- (IA)^3: a vector on a module's output maps 1:1; PEFT's ``feedforward_modules`` vectors scale a module's *input*,
  ours at the sites in ``input_scaled`` (PEFT's default BERT (IA)^3: key and value outputs, the inputs of
  ``attention.output.dense`` and ``output.dense``).
- Prefix tuning: ``prompt_embeddings`` (P, L·2·H·D) is our flat prefix, same layout. transformers treats the prefix as
  past keys and shifts the position ids by P; ours does not (AdapterHub's semantics): pass
  ``position_ids = P + arange(T)`` to reproduce PEFT's numbers (a warning says so).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from peftcore import io, placement
from peftcore.host import AdapterHost
from peftcore.interop.saved import SavedAdapter
from peftcore.methods import METHODS
from peftcore.methods.base import Method, PeftFile

CONFIG_FILE = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_VERSION = "0.21.2"
ROOT = "base_model.model."  # module-targeting methods' keys; prompt methods' heads sit under "base_model."
PROMPT_ROOT, PROMPT_TENSOR = "base_model.", "prompt_embeddings"  # what every PEFT prompt-learning method writes
TASK_TYPES = {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
              "question_answering": "QUESTION_ANS", "image_classification": None}


def is_peft(raw: Mapping[str, Any]) -> bool:
    return "peft_type" in raw


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


# ---- reading ------------------------------------------------------------------------------------------------


def read(directory: Path, raw: Mapping[str, Any], with_head: bool, host: AdapterHost) -> SavedAdapter:
    """A PEFT directory as a SavedAdapter in our key names; anything we cannot express exactly is refused here."""
    where = directory / CONFIG_FILE
    method = next((method for method in METHODS if method.reads_peft(raw)), None)
    if method is None:
        known = sorted({method.peft_type for method in METHODS if method.peft_type})
        raise ValueError(f"{where}: PEFT method {raw['peft_type']!r} is not available in peftcore; it reads "
                         f"{', '.join(known)} adapters.")
    tensors = io.read_tensors(directory, WEIGHTS)
    if tensors is None:
        raise FileNotFoundError(f"{directory} has no {' or '.join(WEIGHTS)}.")
    name = directory.name if directory.name and not set(directory.name) & {".", ","} else "default"
    shape = placement.model_shape(host)
    if method.peft_suffixes:
        file, rest = module_file(where, raw, tensors, host, method)
    else:
        file = PeftFile(where, raw, tensors, {}, {}, shape)
        rest = {key.removeprefix(PROMPT_ROOT): t for key, t in tensors.items() if key != PROMPT_TENSOR}
    config, state = method.from_peft(file)
    saved = SavedAdapter(name, config, state, None, None)
    head_keys = saved_modules(where, raw, rest)
    if with_head and head_keys:
        saved.model_head_state = model_head_state(where, host, head_keys)
    return saved


def module_file(where: Path, raw: Mapping[str, Any], tensors: Mapping[str, Tensor], host: AdapterHost,
                method: type[Method]) -> tuple[PeftFile, dict[str, Tensor]]:
    """A file of a method that targets modules (LoRA, (IA)^3), checked for placement: every module its
    ``target_modules`` select has one of our sites and tensors, and no tensors are for other modules. Also returns
    the tensors that are not the method's (``modules_to_save``)."""
    suffixes = method.peft_suffixes
    targets = raw.get("target_modules")
    if targets is None or not isinstance(targets, (str, list)):
        raise ValueError(f"{where}: target_modules={targets!r}; a saved PEFT adapter names its modules (a list, a "
                         "regex or 'all-linear').")
    adapter_keys = {key for key in tensors if key.endswith(suffixes)}
    outside = sorted(key for key in tensors if not key.startswith(ROOT) and key not in method.peft_shared)
    if outside or not adapter_keys:
        raise ValueError(f"{where}: expected {raw['peft_type']} tensors named 'base_model.model.<module>"
                         f"{suffixes[0]}'; found {outside[:5] or sorted(tensors)[:5]}.")
    names = {key.removeprefix(ROOT) for key in adapter_keys}
    modules = host.hf_modules(with_prefix=all(key.startswith(host.hf_prefix) for key in names))
    targeted = {path: module for path, module in modules.items()
                if (module.sites if targets == "all-linear" else is_targeted(raw, path))}
    check_placement(where, targeted, {strip_suffix(key, suffixes) for key in names}, host)
    site_paths = {(site.layer, site.name): site.path for site in host.sites_found}
    tensors = {key.removeprefix(ROOT): t for key, t in tensors.items()}
    rest = {key: t for key, t in tensors.items()
            if strip_suffix(key, suffixes) == key and key not in method.peft_shared}
    return PeftFile(where, raw, tensors, targeted, site_paths, placement.model_shape(host)), rest


def strip_suffix(key: str, suffixes: tuple[str, ...]) -> str:
    return next((key.removesuffix(suffix) for suffix in suffixes if key.endswith(suffix)), key)


def check_placement(where: Path, targeted: Mapping[str, Any], in_file: set[str], host: AdapterHost) -> None:
    """The file's modules must be those its target_modules select, each at a site of ours."""
    no_site = sorted(path for path, module in targeted.items() if not module.sites)
    if no_site:
        raise ValueError(f"{where}: target_modules select modules where {type(host).__name__} has no LoRA/(IA)^3 "
                         "site (only the linears inside the layers have one; PEFT's all-linear also adapts a "
                         "model's pooler.dense: train with exclude_modules=['pooler.dense'] to leave it out): "
                         f"{', '.join(no_site[:6])}{' ...' if len(no_site) > 6 else ''}.")
    problems = [("tensors for modules not targeted (or absent from this model)", sorted(in_file - set(targeted))),
                ("targeted modules without tensors", sorted(set(targeted) - in_file))]
    if any(paths for _, paths in problems):
        raise ValueError(io.problem_report(f"{where}: the tensors do not match target_modules on "
                                           f"{type(host).__name__}:", problems))


def saved_modules(where: Path, raw: Mapping[str, Any], rest: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors besides the method's: each must belong to a module of ``modules_to_save``, matched as peft 0.21.2's
    ``_set_trainable`` matches them: a module path that ends with a name (so ``classifier`` saves DistilBERT's
    ``pre_classifier`` too)."""
    names = raw.get("modules_to_save") or []

    def saved(key: str) -> bool:
        modules = [key.rsplit(".", depth)[0] for depth in range(1, key.count(".") + 1)]
        return any(module.endswith(name) for module in modules for name in names)

    strays = sorted(key for key in rest if not saved(key))
    if strays:
        raise ValueError(f"{where}: tensors that are neither {raw['peft_type']} weights nor in modules_to_save "
                         f"({names}): {strays[:6]}{' ...' if len(strays) > 6 else ''}.")
    return rest


def model_head_state(where: Path, host: AdapterHost, hf_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``modules_to_save`` tensors as the model's ``head.*`` state; head tensors the file lacks keep their values."""
    if host.head is None:
        raise ValueError(f"{where} holds a task head ({sorted(hf_state)[:4]}) but this model has none; load the "
                         "checkpoint with head='sequence_classification' (or the task's head), or pass "
                         "with_head=False.")
    table = host.hf_head_keys()
    unknown = sorted(key for key in hf_state if table.get(key) is None)
    if unknown:
        raise ValueError(f"{where}: modules_to_save holds {unknown[:6]}, which are not this model's "
                         f"{host.config.head} head ({sorted(k for k, v in table.items() if v)}); peftcore keeps base "
                         "weights out of adapters.")
    state = {f"head.{key}": t.detach().clone() for key, t in host.head.state_dict().items()}
    state.update({table[key]: t for key, t in hf_state.items()})
    return state


# ---- writing ------------------------------------------------------------------------------------------------


def save(host: AdapterHost, directory: str | os.PathLike, name: str, with_head: bool = True) -> None:
    """Write adapter ``name`` so that ``peft.PeftModel.from_pretrained`` gives our outputs (LoRA and (IA)^3).

    Keys are named for the transformers class matching this model: ``XFor<Task>`` (``bert.`` prefix) when the model
    has a task head, ``XModel`` otherwise. With ``with_head``, the model's classification/tagging/QA head is saved as
    ``modules_to_save``.
    """
    placement.check_known(host, name)
    config = host.adapter_configs[name]
    ours = placement.placed(host, name)
    writers = [method for method in METHODS
               if method.peft_type and method.to_peft.__func__ is not Method.to_peft.__func__]  # it writes PEFT's
    kinds = {type(module) for _, module in ours}
    if len(kinds) != 1 or not issubclass(next(iter(kinds)), tuple(writers)):
        raise ValueError(f"adapter {name!r} is {type(config).__name__}; PEFT files hold "
                         f"{' or '.join(method.title for method in writers)} here.")
    if with_head and name in host.heads:
        raise ValueError(f"adapter {name!r} has an AdapterHub-style head, which PEFT cannot hold; pass "
                         "with_head=False, or save with format='peftcore' or 'adapterhub'.")
    task_head = host.config.head if host.head is not None else None
    modules = host.hf_modules(with_prefix=task_head is not None)
    by_site = {(module.layer, site): module for module in modules.values() for site in module.sites}
    placed: dict[str, dict[str, nn.Module]] = {}  # HF module path -> {site: our module}
    for site, module in ours:
        placed.setdefault(by_site[site.layer, site.name].path, {})[site.name] = module
    writer = next(iter(kinds))
    try:
        fields, method_state = writer.to_peft(config, placed, modules)
    except ValueError as error:
        raise ValueError(f"adapter {name!r} cannot be saved for PEFT: {error}") from error
    state = {key if key in writer.peft_shared else ROOT + key: tensor for key, tensor in method_state.items()}
    saved_modules: list[str] = []
    if with_head and task_head in TASK_TYPES:
        inverse = {ours: hf for hf, ours in host.hf_head_keys().items() if ours}
        for key, tensor in host.head.state_dict().items():
            state[f"{ROOT}{inverse[f'head.{key}']}"] = tensor.detach()
            saved_modules.append(inverse[f"head.{key}"].split(".")[0])
    kept = {modules[path].layer for path in placed}
    common = {"auto_mapping": None, "base_model_name_or_path": None, "exclude_modules": None, "fan_in_fan_out": False,
              "inference_mode": True, "modules_to_save": sorted(set(saved_modules)) or None, "peft_version":
              PEFT_VERSION, "revision": None,
              "target_modules": target_modules(modules, placed, tuple(i for i in range(len(host.layers))
                                                                       if i not in kept), len(host.layers)),
              "task_type": TASK_TYPES.get(task_head) if saved_modules else None}
    with io.atomic_directory_write(directory) as scratch:
        io.write_json(scratch / CONFIG_FILE, {**common, **fields})
        io.write_safetensors(scratch / WEIGHTS[0], state)


def target_modules(modules: Mapping[str, Any], placed: Mapping[str, Any], leave_out: tuple[int, ...],
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
