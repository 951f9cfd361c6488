"""``Architecture``: one record per model of everything about its HuggingFace side — the key table, the transformers
classes, the config.json fields it names differently or refuses, and where AdapterHub and PEFT attach method modules.

The records live in tables.py (ALBERT's in albert.py, ModernBERT's in modernbert.py); a model class names its
record (``architecture = BERT``) and answers every HF-layout question from it (``PretrainedEncoder.hf_modules``
...), so no other code reads a key table's internals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from peftcore.models.convert.keymap import KeyMap, Split
from peftcore.sites import SITE_NAMES


@dataclass(frozen=True)
class HFModule:
    """One module with a weight in a model's HF layout (what a PEFT adapter may target), and our sites it covers."""

    path: str  # as transformers names it: base modules under the HF prefix when asked for, head modules at the top
    layer: int | None
    sites: tuple[str, ...]  # none: no linear site of ours there; three: DeBERTa v1's fused in_proj (q, k, v)
    split: Callable[[Tensor], tuple[Tensor, ...]] | None = None  # fused rows -> one tensor per site
    join: Callable[[tuple[Tensor, ...]], Tensor] | None = None
    splits_bias: bool = False  # a fused module whose bias splits like its weight (ModernBERT's Wqkv): its output
    # splits into the sites' outputs W x + b; DeBERTa v1's in_proj has no bias, its q_bias/v_bias are added later


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """How one architecture looks on the HF side. Its model_type is its config class's, stated once there.

    Args:
        keymap: the HF key table of the base model and of each task head.
        hf_classes: transformers class name -> (our head, whether that class builds the pooler). The first class of
            a head is the one a model with that head is exported as, and whose pooler it gets by default.
        site_paths: site name -> the HF module path (``{i}`` for the layer) where AdapterHub and PEFT attach the
            method modules of that site; their adapter files name keys after it. A site without an entry has no
            such place in this architecture.
        shared_paths: a method's ``shared_key`` -> where AdapterHub keeps that shared module (``{name}`` for the
            adapter), where this architecture names it otherwise than the method's ``adapterhub_shared_path``.
        config_renames: config.json field -> our config field, where the two names differ; renamed on reading an
            HF config.json and back on writing one.
        required_values: config.json fields that change the computation, and the only value we implement.
        ignored_config_fields: config.json fields of released checkpoints that transformers never reads either;
            accepted without the warning an unknown field gets.
    """

    keymap: KeyMap
    hf_classes: Mapping[str, tuple[str | None, bool]]
    site_paths: Mapping[str, str]
    shared_paths: Mapping[str, str] = field(default_factory=dict)
    config_renames: Mapping[str, str] = field(default_factory=dict)
    required_values: Mapping[str, Any] = field(default_factory=dict)
    ignored_config_fields: frozenset[str] = frozenset()

    def __post_init__(self) -> None:  # a malformed record fails at import
        if not self.hf_classes:
            raise ValueError("an Architecture needs at least one transformers class in hf_classes.")
        unknown = sorted(set(self.site_paths) - set(SITE_NAMES))
        if unknown:
            raise ValueError(f"site_paths names unknown sites {unknown}; sites are {SITE_NAMES}.")
        if any(isinstance(t, Split) for table in self.keymap.heads.values() for t in table.values()):
            raise ValueError("a head table splits a tensor; head tensors must map one to one (interop relies on it).")
        ours = list(self.config_renames.values())
        if len(ours) != len(set(ours)):
            raise ValueError(f"config_renames {dict(self.config_renames)} maps two config.json fields to one of ours.")

    @property
    def config_renames_back(self) -> dict[str, str]:
        """Our config field -> its config.json name, for the fields named differently."""
        return {ours: theirs for theirs, ours in self.config_renames.items()}

    def pooler_for(self, head: str | None) -> bool:
        """Whether the transformers class of ``head`` (its first in hf_classes) builds the pooler."""
        return next((pooler for class_head, pooler in self.hf_classes.values() if class_head == head), False)

    def site_path(self, site: str, layer: int | None, config: Any = None) -> str | None:
        """The HF module path where AdapterHub attaches ``site``'s method modules in ``layer``; None: nowhere.
        ``config`` is needed where HF numbers layers otherwise than we do (``keymap.numbering``)."""
        path = self.site_paths.get(site)
        return None if path is None else path.format(**self.keymap.hf_fields(layer, config))

    def head_keys(self, head: str | None) -> dict[str, str | None]:
        """The key table of task head ``head`` (HF key -> our ``head.*`` key, or None: dropped); {} for no head."""
        return dict(self.keymap.heads[head]) if head in self.keymap.heads else {}

    def hf_modules(self, config: Any, num_layers: int, linear_sites: Mapping[str, str], with_prefix: bool,
                   present: Callable[[str], bool] = lambda key: True) -> dict[str, HFModule]:
        """Every module with a weight in the key table of a model with ``config`` and ``num_layers`` layers: the base
        model's (under ``keymap.prefix`` when ``with_prefix``), then its own task head's (at the top level).

        ``linear_sites`` maps the model's ``SiteLinear`` module paths to their site names: an HF module covers sites
        when each tensor its weight becomes is the weight of such a module (three for a fused in_proj, whose
        ``split``/``join`` are bound to ``config``). ``present`` says whether the model has one of our weights: a
        module the model was built without (the pooler of a RoBERTa classifier) is left out.
        """
        modules: dict[str, HFModule] = {}
        roots = ((self.keymap.keys, self.keymap.prefix if with_prefix else ""), (self.head_keys(config.head), ""))
        for table, root in roots:
            for hf_key, target in table.items():
                if not hf_key.endswith(".weight"):
                    continue
                template = hf_key.removesuffix(".weight")
                ours = target.targets if isinstance(target, Split) else (target,) if target else ()
                split, join = bound(target, config) if isinstance(target, Split) else (None, None)
                splits_bias = isinstance(target, Split) and isinstance(table.get(f"{template}.bias"), Split)
                for layer in range(num_layers) if "{i}" in template else (None,):
                    if not all(present(key.format(i=layer)) for key in ours):
                        continue
                    path = root + template.format(**self.keymap.hf_fields(layer, config))
                    sites = tuple(linear_sites.get(key.format(i=layer).removesuffix(".weight")) for key in ours)
                    modules[path] = HFModule(path, layer, sites if sites and None not in sites else (), split, join,
                                             splits_bias)
        return modules


def bound(rule: Split, config: Any) -> tuple[Callable[[Tensor], tuple[Tensor, ...]],
                                             Callable[[tuple[Tensor, ...]], Tensor]]:
    """A Split's split and join with ``config`` bound, as functions of the tensors alone."""
    return (lambda tensor: rule.split(tensor, config)), (lambda parts: rule.join(parts, config))
