"""peftcore: parameter-efficient fine-tuning methods that plug into the sites of Transformer encoders."""

from peftcore.configs import (
    ADAPTER_CONFIG_MAP,
    DEFAULT_ADAPTER_CONFIG,
    AdapterConfig,
    AdapterConfigBase,
    BnConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    HoulsbyConfig,
    HoulsbyInvConfig,
    IA3Config,
    LoRAConfig,
    ParallelConfig,
    ParBnConfig,
    PfeifferConfig,
    PfeifferInvConfig,
    PrefixTuningConfig,
    SeqBnConfig,
    SeqBnInvConfig,
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
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "HoulsbyConfig",
    "HoulsbyInvConfig",
    "IA3Config",
    "LoRAConfig",
    "ParBnConfig",
    "ParallelConfig",
    "PfeifferConfig",
    "PfeifferInvConfig",
    "PrefixTuningConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "find_sites",
]
