"""AdapterHub's ``adapters.heads``: the head modules here (one ``PredictionHead`` class serves classification,
tagging and question answering; masked-LM heads are BERT-style)."""

from peftcore.heads import MaskedLMPredictionHead, PredictionHead
from peftcore.model_heads import HeadsMixin

BertStyleMaskedLMHead = MaskedLMPredictionHead
ModelWithFlexibleHeadsAdaptersMixin = HeadsMixin

__all__ = ["BertStyleMaskedLMHead", "ModelWithFlexibleHeadsAdaptersMixin", "PredictionHead"]
