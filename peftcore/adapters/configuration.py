"""AdapterHub's ``adapters.configuration``: the configs of the methods here, under its names. ``AdapterConfig`` is
the base class every config loads through (``AdapterConfig.load("lora[r=8]")``), as in AdapterHub 1.x."""

from peftcore.configs import ADAPTER_CONFIG_MAP, DEFAULT_ADAPTER_CONFIG, AdapterConfigBase, ConfigUnion
from peftcore.fusion import FUSION_CONFIG_MAP, AdapterFusionConfig
from peftcore.methods import (
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DiReftConfig,
    DoRAConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    DvoRAConfig,
    IA3Config,
    LoRAConfig,
    LoReftConfig,
    MAMConfig,
    MTLLoRAConfig,
    MultiTaskConfig,
    NoReftConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    ReftConfig,
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
    "DiReftConfig",
    "DoRAConfig",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "DvoRAConfig",
    "IA3Config",
    "LoRAConfig",
    "LoReftConfig",
    "MAMConfig",
    "MTLLoRAConfig",
    "ModelAdaptersConfig",
    "MultiTaskConfig",
    "NoReftConfig",
    "ParBnConfig",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "ReftConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "UniPELTConfig",
    "VeraConfig",
]
