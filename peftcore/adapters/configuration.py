"""AdapterHub's ``adapters.configuration``: the configs of the methods here, under its names. ``AdapterConfig`` is
the base class every config loads through (``AdapterConfig.load("lora[r=8]")``), as in AdapterHub 1.x."""

from peftcore.configs import ADAPTER_CONFIG_MAP, DEFAULT_ADAPTER_CONFIG, AdapterConfigBase, ConfigUnion
from peftcore.fusion import FUSION_CONFIG_MAP, AdapterFusionConfig
from peftcore.methods import (
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoRAConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    DvoRAConfig,
    IA3Config,
    LoRAConfig,
    MAMConfig,
    MTLLoRAConfig,
    MultiTaskConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    SeqBnConfig,
    SeqBnInvConfig,
    UniPELTConfig,
    VeraConfig,
)
from peftcore.views import AdaptersConfig

AdapterConfig = AdapterConfigBase
ModelAdaptersConfig = AdaptersConfig
ADAPTERFUSION_CONFIG_MAP = FUSION_CONFIG_MAP
DEFAULT_ADAPTERFUSION_CONFIG = "dynamic"

__all__ = [
    "ADAPTERFUSION_CONFIG_MAP",
    "ADAPTER_CONFIG_MAP",
    "DEFAULT_ADAPTERFUSION_CONFIG",
    "DEFAULT_ADAPTER_CONFIG",
    "AdapterConfig",
    "AdapterFusionConfig",
    "AdapterPlusConfig",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "ConfigUnion",
    "DoRAConfig",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "DvoRAConfig",
    "IA3Config",
    "LoRAConfig",
    "MAMConfig",
    "MTLLoRAConfig",
    "ModelAdaptersConfig",
    "MultiTaskConfig",
    "ParBnConfig",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "UniPELTConfig",
    "VeraConfig",
]
