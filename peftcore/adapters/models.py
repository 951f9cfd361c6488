"""AdapterHub's model classes over ours: ``BertAdapterModel`` (flexible heads), transformers' task classes
(``BertForSequenceClassification``, ...) that AdapterHub users pair with ``adapters.init``, the ``Auto`` classes,
``ADAPTER_MODEL_MAPPING``, ``init`` and ``load_model``.

Each class is one of our models (``BertAdapterModel`` is a ``peftcore.models.BertModel``) that takes a transformers
config object as well as ours (read through ``to_dict()``: transformers is never imported), and saves as AdapterHub
does: adapters, heads and fusions in AdapterHub's files, ``save_pretrained`` with everything attached. Behaviour is
the core's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from peftcore.models import MODEL_CLASSES, PretrainedEncoder
from peftcore.models.convert import read_config
from peftcore.sites import SiteLinear

# transformers' task classes that have a counterpart here
STATIC_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMaskedLM",
                "ForImageClassification", "ForMultipleChoice")


class AdapterHubModel:
    """What the classes here change in a model of ours (the base after this one in the MRO)."""

    adapter_file_format: ClassVar[str] = "adapterhub"
    checkpoint_format: ClassVar[str] = "peftcore"
    static_head: ClassVar[str | None] = None  # the head a transformers task class builds; None: flexible heads only

    def __init__(self, config: Any) -> None:
        overrides = {} if self.static_head is None else {"head": self.static_head}
        if overrides or not isinstance(config, self.config_class):
            config = self.config_from(config, **overrides)
        super().__init__(config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> PretrainedEncoder:
        if cls.static_head is not None:
            kwargs.setdefault("head", cls.static_head)
        return super().from_pretrained(path, **kwargs)

    # AdapterHub's loads take use_safetensors to pick between the two forms of its files; a save here replaces both
    # forms, so a directory holds one, and it is read whichever it is.

    def load_adapter(self, path: str | os.PathLike, *args: Any, use_safetensors: bool = False,
                     loading_info: dict | None = None, strict: bool = False, **kwargs: Any) -> str:
        """The core's ``load_adapter`` with AdapterHub's loading by default (``strict=False``): what the file lacks
        keeps its fresh values and what the adapter lacks is ignored, listed in ``loading_info`` or, without one, in
        a warning (AdapterHub logs them)."""
        report: dict = {} if loading_info is None else loading_info
        name = super().load_adapter(path, *args, loading_info=report, strict=strict, **kwargs)
        if loading_info is None and (report.get("missing_keys") or report.get("unexpected_keys")):
            warnings.warn(f"adapter {name!r} loaded from {os.fspath(path)!r} without tensors "
                          f"{report['missing_keys']} (they keep their fresh values) and ignoring "
                          f"{report['unexpected_keys']}; pass strict=True to refuse such a file.", stacklevel=2)
        return name

    def apply_to_adapter_layers(self, fn: Callable[[int, AdapterLayer], Any]) -> None:
        """AdapterHub's: ``fn(layer index, layer)`` for every site (layer -1: the embeddings)."""
        for site in self.sites_found:
            fn(-1 if site.layer is None else site.layer, AdapterLayer(site.module))

    def load_adapter_fusion(self, path: str | os.PathLike, *args: Any, use_safetensors: bool = False,
                            **kwargs: Any) -> str:
        return super().load_adapter_fusion(path, *args, **kwargs)

    def load_head(self, path: str | os.PathLike, *args: Any, use_safetensors: bool = False,
                  overwrite_ok: bool = True, **kwargs: Any) -> str:
        """The core's ``load_head``, replacing a head of the same name as AdapterHub does (``overwrite_ok``)."""
        return super().load_head(path, *args, overwrite_ok=overwrite_ok, **kwargs)


class AdapterLayer:
    """A site seen as AdapterHub's adapter layer: its adapters by name (``adapter_modules``) and the tensors they
    share there (``shared_parameters``, by group)."""

    def __init__(self, site: nn.Module) -> None:
        self.adapter_modules = site.adapters
        self.shared_parameters = site.shared_parameters if isinstance(site, SiteLinear) else nn.ModuleDict()


def adapterhub_class(base: type[PretrainedEncoder], name: str, head: str | None) -> type[PretrainedEncoder]:
    return type(name, (AdapterHubModel, base), {"static_head": head, "__module__": __name__, "__qualname__": name})


class ModelMapping(dict):
    """model_type -> class; looked up by model_type, a transformers config class or a config object alike."""

    @staticmethod
    def key(config: Any) -> Any:
        return config if isinstance(config, str) else getattr(config, "model_type", config)

    def __contains__(self, config: object) -> bool:
        return super().__contains__(self.key(config))

    def __getitem__(self, config: Any) -> type[PretrainedEncoder]:
        if not super().__contains__(self.key(config)):
            raise KeyError(f"no peftcore model for model_type {self.key(config)!r}; supported: {sorted(self)}.")
        return super().__getitem__(self.key(config))


ADAPTER_MODEL_MAPPING = ModelMapping()
TASK_MAPPINGS: dict[str, ModelMapping] = {suffix: ModelMapping() for suffix in ("Model", *STATIC_HEADS)}
CLASSES: dict[str, type[PretrainedEncoder]] = {}  # every class made here, by name
for model_type, base in MODEL_CLASSES.items():
    prefix = base.__name__.removesuffix("Model")
    CLASSES[f"{prefix}AdapterModel"] = ADAPTER_MODEL_MAPPING[model_type] = adapterhub_class(
        base, f"{prefix}AdapterModel", None)
    for hf_name, (head, _) in base.architecture.hf_classes.items():
        suffix = hf_name.removeprefix(prefix)
        if suffix in TASK_MAPPINGS:
            CLASSES[hf_name] = TASK_MAPPINGS[suffix][model_type] = adapterhub_class(base, hf_name, head)


class AutoClass:
    """transformers' ``Auto`` pattern: ``from_config`` and ``from_pretrained`` pick the class by model_type."""

    mapping: ClassVar[ModelMapping]

    def __init__(self) -> None:
        raise TypeError(f"{type(self).__name__} is built with from_config(config) or from_pretrained(path).")

    @classmethod
    def from_config(cls, config: Any) -> PretrainedEncoder:
        return cls.mapping[config](config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> PretrainedEncoder:
        return cls.mapping[read_config(path)["model_type"]].from_pretrained(path, **kwargs)


AUTO_CLASSES = {"AutoAdapterModel": ADAPTER_MODEL_MAPPING,
                **{f"AutoModel{suffix.removeprefix('Model')}": mapping for suffix, mapping in TASK_MAPPINGS.items()}}
for auto_name, mapping in AUTO_CLASSES.items():
    CLASSES[auto_name] = type(auto_name, (AutoClass,), {"mapping": mapping, "__module__": __name__})
AutoAdapterModel = CLASSES["AutoAdapterModel"]


def init(model: Any, **_: Any) -> None:
    """AdapterHub's ``adapters.init``: adds adapter support to a model. Every peftcore model has it built in, so
    this checks the model is one of ours."""
    if not isinstance(model, PretrainedEncoder):
        raise TypeError(f"peftcore runs its own encoders and cannot add adapters to a {type(model).__name__}; build "
                        "the model from peftcore.adapters instead (e.g. peftcore.adapters."
                        "BertForSequenceClassification.from_pretrained(path) in place of transformers').")


def load_model(path: str | os.PathLike, model_class: Any, *args: Any, output_loading_info: bool = False,
               **kwargs: Any) -> Any:
    """AdapterHub's ``load_model``: ``model_class.from_pretrained(path)`` with the adapters saved beside the model;
    ``output_loading_info`` also returns AdapterHub's ``loading_info`` (empty: our loads are exact or raise)."""
    if args:
        raise TypeError("load_model takes no positional model arguments here; pass config overrides by keyword.")
    model = model_class.from_pretrained(path, **kwargs)
    return (model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
            ) if output_loading_info else model


globals().update(CLASSES)
__all__ = ["ADAPTER_MODEL_MAPPING", "AutoAdapterModel", "init", "load_model", *sorted(CLASSES)]
