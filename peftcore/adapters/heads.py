"""AdapterHub's ``adapters.heads``: the head modules here (one ``PredictionHead`` class serves classification,
tagging and question answering; multiple choice and dependency parsing have their own; masked-LM heads are
BERT-style)."""

from peftcore.head_types import BiaffineParsingHead
from peftcore.heads import MaskedLMPredictionHead, MultipleChoiceHead, PredictionHead
from peftcore.model_heads import HeadsMixin

BertStyleMaskedLMHead = MaskedLMPredictionHead
ModelWithFlexibleHeadsAdaptersMixin = HeadsMixin

__all__ = ["BertStyleMaskedLMHead", "BiaffineParsingHead", "ModelWithFlexibleHeadsAdaptersMixin", "MultipleChoiceHead",
           "PredictionHead"]
