"""peftcore: parameter-efficient fine-tuning methods that plug into the sites of Transformer encoders."""

from peftcore.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from peftcore.configs import ADAPTER_CONFIG_MAP, DEFAULT_ADAPTER_CONFIG, AdapterConfigBase, ConfigUnion
from peftcore.fusion import AdapterFusionConfig
from peftcore.methods import (
    AdapterConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DiReftConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    HoulsbyConfig,
    HoulsbyInvConfig,
    IA3Config,
    LoRAConfig,
    LoReftConfig,
    MAMConfig,
    NoReftConfig,
    ParallelConfig,
    ParBnConfig,
    PfeifferConfig,
    PfeifferInvConfig,
    PrefixTuningConfig,
    ReftConfig,
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
    "AdapterFusionConfig",
    "AdapterModelMixin",
    "Average",
    "BatchSplit",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "ConfigUnion",
    "DiReftConfig",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "Fuse",
    "HoulsbyConfig",
    "HoulsbyInvConfig",
    "IA3Config",
    "LoRAConfig",
    "LoReftConfig",
    "MAMConfig",
    "NoReftConfig",
    "ParBnConfig",
    "Parallel",
    "ParallelConfig",
    "PfeifferConfig",
    "PfeifferInvConfig",
    "PrefixTuningConfig",
    "ReftConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "Split",
    "Stack",
    "UniPELTConfig",
    "find_sites",
]
