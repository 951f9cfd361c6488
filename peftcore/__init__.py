"""peftcore: parameter-efficient fine-tuning methods that plug into the sites of Transformer encoders."""

from peftcore.configs import (
    ADAPTER_CONFIG_MAP,
    DEFAULT_ADAPTER_CONFIG,
    AdapterConfig,
    AdapterConfigBase,
    BnConfig,
    ConfigUnion,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    HoulsbyConfig,
    HoulsbyInvConfig,
    IA3Config,
    LoRAConfig,
    MAMConfig,
    ParallelConfig,
    ParBnConfig,
    PfeifferConfig,
    PfeifferInvConfig,
    PrefixTuningConfig,
    SeqBnConfig,
    SeqBnInvConfig,
    UniPELTConfig,
)
from peftcore.model import AdapterModelMixin
from peftcore.sites import SITE_NAMES, find_sites

__version__ = "0.1.0"

__all__ = [
    "ADAPTER_CONFIG_MAP",
    "DEFAULT_ADAPTER_CONFIG",
    "SITE_NAMES",
    "AdapterConfig",
    "AdapterConfigBase",
    "AdapterModelMixin",
    "BnConfig",
    "ConfigUnion",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "HoulsbyConfig",
    "HoulsbyInvConfig",
    "IA3Config",
    "LoRAConfig",
    "MAMConfig",
    "ParBnConfig",
    "ParallelConfig",
    "PfeifferConfig",
    "PfeifferInvConfig",
    "PrefixTuningConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "UniPELTConfig",
    "find_sites",
]
