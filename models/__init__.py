"""Transformer encoders with built-in PEFT sites, loadable from HuggingFace checkpoints."""

from __future__ import annotations

import os

from peftcore.io import resolve_directory
from peftcore.models.albert import AlbertConfig, AlbertModel
from peftcore.models.bert import BertConfig, BertModel
from peftcore.models.camembert import CamembertConfig, CamembertModel
from peftcore.models.convert import read_config
from peftcore.models.deberta import DebertaConfig, DebertaModel
from peftcore.models.deberta_v2 import DebertaV2Config, DebertaV2Model
from peftcore.models.distilbert import DistilBertConfig, DistilBertModel
from peftcore.models.electra import ElectraConfig, ElectraModel
from peftcore.models.image import ImageProcessor
from peftcore.models.layers import EncoderConfig, EncoderOutput
from peftcore.models.modernbert import ModernBertConfig, ModernBertModel
from peftcore.models.pretrained import PretrainedEncoder
from peftcore.models.roberta import RobertaConfig, RobertaModel
from peftcore.models.tokenizer import Tokenizer
from peftcore.models.vit import ViTConfig, ViTModel
from peftcore.models.xlm_roberta import XLMRobertaConfig, XLMRobertaModel

MODEL_CLASSES: dict[str, type[PretrainedEncoder]] = {}  # model_type -> the class that loads its checkpoints


def register_model(*classes: type[PretrainedEncoder]) -> None:
    """Make model classes loadable by ``from_pretrained(path)`` and the CLI, by their config's model_type."""
    for cls in classes:
        model_type = cls.config_class.model_type
        if MODEL_CLASSES.get(model_type, cls) is not cls:
            raise ValueError(f"model_type {model_type!r} is registered for {MODEL_CLASSES[model_type].__name__}.")
        MODEL_CLASSES[model_type] = cls


register_model(BertModel, RobertaModel, DebertaModel, DebertaV2Model, ViTModel)
register_model(DistilBertModel, AlbertModel)
register_model(XLMRobertaModel, CamembertModel, ElectraModel)
register_model(ModernBertModel)


def model_class(path: str | os.PathLike) -> type[PretrainedEncoder]:
    """The model class for a checkpoint directory (or Hub repo id), from its config.json's model_type."""
    model_type = read_config(resolve_directory(path, "checkpoint"))["model_type"]
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"{os.fspath(path)!r} holds a {model_type!r} checkpoint; supported architectures: "
                         f"{sorted(MODEL_CLASSES)}.")
    return MODEL_CLASSES[model_type]


def from_pretrained(path: str | os.PathLike, **kwargs) -> PretrainedEncoder:
    """Load any supported checkpoint directory (or Hugging Face Hub repo id) with the class its model_type names."""
    path = resolve_directory(path, "checkpoint")
    return model_class(path).from_pretrained(path, **kwargs)


__all__ = [
    "MODEL_CLASSES",
    "AlbertConfig",
    "AlbertModel",
    "BertConfig",
    "BertModel",
    "CamembertConfig",
    "CamembertModel",
    "DebertaConfig",
    "DebertaModel",
    "DebertaV2Config",
    "DebertaV2Model",
    "DistilBertConfig",
    "DistilBertModel",
    "ElectraConfig",
    "ElectraModel",
    "EncoderConfig",
    "EncoderOutput",
    "ImageProcessor",
    "ModernBertConfig",
    "ModernBertModel",
    "PretrainedEncoder",
    "RobertaConfig",
    "RobertaModel",
    "Tokenizer",
    "ViTConfig",
    "ViTModel",
    "XLMRobertaConfig",
    "XLMRobertaModel",
    "from_pretrained",
    "model_class",
    "register_model",
]
