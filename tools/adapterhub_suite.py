"""Run AdapterHub's own test suite against ``peftcore.adapters``: ``adapters`` resolves to it, nothing else changes.

    python tools/adapterhub_suite.py ADAPTERS_REPO [--api] [--nodes FILE] [pytest arguments ...]

The user's other change, ``from transformers import BertForSequenceClassification`` to ``from peftcore.adapters
import ...``, is made by pointing transformers' task classes at peftcore.adapters' (``swap_task_classes``).

ADAPTERS_REPO is a checkout of github.com/adapter-hub/adapters (its ``tests/``; none of its code is copied here), run
from a Python environment with its test dependencies (transformers, datasets, pytest) and peftcore installed.
``--api`` runs the API-level selection issue 17 measures (``API_TESTS``: the method, core, heads and composition
classes of the BERT and RoBERTa test modules and five files of ``tests/test_misc``); ``--nodes FILE`` runs the
pytest node ids listed in FILE, one per line (e.g. those of the selection that AdapterHub itself passes).

AdapterHub's test modules import, at module level, names of things peftcore does not have (causal-LM and
seq2seq heads, the transformers-based ``AdapterTrainer``, the plugin interface). Without them no test of those
modules could even be collected, so this runner stands each in with a class whose instances raise
``NotImplementedError`` naming what is missing when used: the tests that use one fail, and say why. The list is
below; every other name comes from ``peftcore.adapters`` unchanged.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import pytest

MISSING = {  # module of AdapterHub's package -> names peftcore.adapters lacks -> why
    "adapters": {"AdapterTrainer": "a transformers Trainer subclass; peftcore trains with peftcore.training.Trainer",
                 "AdapterModelInterface": "plugin interface for transformers models; peftcore runs its own encoders",
                 "get_adapter_config_hash": "AdapterHub Hub lookups (its Hub is not used by peftcore)",
                 "T5AdapterModel": "encoder-decoder models (peftcore runs encoders)"},
    "adapters.heads": {name: "decoder and task heads peftcore does not build (encoders only; PredictionHead serves "
                             "classification, tagging and question answering)"
                       for name in ("CausalLMHead", "Seq2SeqLMHead", "ClassificationHead", "TaggingHead",
                                    "QuestionAnsweringHead", "MultiLabelClassificationHead")},
    "adapters.heads.language_modeling": {"CausalLMHead": "decoder heads (encoders only)"},
    "adapters.configuration.adapter_config": {},
    "adapters.methods.lora": {"LoRALayer": "AdapterHub's layer wrapper class; peftcore's LoRA plugs into sites"},
    "adapters.models.auto.adapter_model": {},
    "adapters.trainer": {"AdapterTrainer": "a transformers Trainer subclass; peftcore trains with its Trainer",
                         "logger": "AdapterTrainer's logger"},
    "adapters.utils": {"find_in_index": "AdapterHub Hub lookups"},
}
API_TESTS = [
    *(f"tests/test_methods/test_on_{model}.py::{cls}" for model in ("bert", "roberta")
      for cls in ("Core", "Heads", "Composition", "PrefixTuning", "UniPELT", "Compacter", "Bottleneck", "IA3", "LoRA",
                  "ConfigUnion")),
    *(f"tests/test_misc/test_adapter_{name}.py" for name in ("composition", "config", "fusion_config", "safetensors",
                                                             "save_id2label")),
]
OURS = {"adapters.models.auto.adapter_model": "peftcore.adapters.models",
        "adapters.configuration.adapter_config": "peftcore.adapters.configuration",
        "adapters.heads.language_modeling": "peftcore.adapters.heads"}


def placeholder(name: str, why: str) -> type:
    """A stand-in that can be built (some test classes build configs in their bodies, and name generated tests after
    a config's ``architecture``) but not used: any other attribute raises, and peftcore refuses it wherever a real
    one is expected."""
    def refuse(self: object, attribute: str) -> None:
        raise NotImplementedError(f"peftcore.adapters has no {name}: {why}.")

    return type(name, (), {"__init__": lambda self, *args, **kwargs: None, "__getattr__": refuse,
                           "architecture": name.removesuffix("Config").lower(),
                           "__module__": "adapters (not in peftcore)"})


def install() -> None:
    """``adapters`` and its submodules, as copies of peftcore.adapters' modules plus the placeholders above."""
    for name in [key for key in sys.modules if key == "adapters" or key.startswith("adapters.")]:
        del sys.modules[name]
    wanted = {*MISSING, "adapters.composition", "adapters.configuration", "adapters.context", "adapters.heads",
              "adapters.models", "adapters.utils", "adapters.wrappers"}
    parents = {name.rsplit(".", depth)[0] for name in wanted for depth in range(1, name.count(".") + 1)}
    names = sorted(wanted | parents, key=lambda name: name.count("."))
    for name in names:
        ours = OURS.get(name, "peftcore." + name)
        try:
            source = vars(importlib.import_module(ours))
        except ModuleNotFoundError:
            source = {}
        module = types.ModuleType(name)
        module.__dict__.update({key: value for key, value in source.items()
                                if not key.startswith("__") or key == "__version__"})
        module.__path__ = []  # a package, so that its submodules import
        for missing, why in MISSING.get(name, {}).items():
            setattr(module, missing, placeholder(missing, why))
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def swap_task_classes() -> None:
    """The user's other import change: transformers' task classes (``BertForSequenceClassification``, ``AutoModel``,
    ...) that AdapterHub's tests build and pass to ``adapters.init`` come from peftcore.adapters."""
    import transformers

    from peftcore.adapters import models

    for name, cls in models.CLASSES.items():
        if "AdapterModel" not in name and hasattr(transformers, name):
            theirs = getattr(transformers, name)
            setattr(sys.modules[theirs.__module__], name, cls)  # where transformers' lazy imports find it
            setattr(transformers, name, cls)


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    repo, rest = argv[0], argv[1:]
    if "--api" in rest:
        rest = [arg for arg in rest if arg != "--api"] + API_TESTS
    if "--nodes" in rest:
        at = rest.index("--nodes")
        with open(rest[at + 1]) as file:
            nodes = [line.strip() for line in file if line.strip()]
        rest = rest[:at] + rest[at + 2:] + nodes
    os.chdir(repo)
    sys.path.insert(0, os.getcwd())
    install()
    swap_task_classes()
    return pytest.main(["-p", "no:cacheprovider", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
