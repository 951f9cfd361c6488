"""peftcore: parameter-efficient fine-tuning methods that plug into the sites of Transformer encoders."""

from peftcore.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from peftcore.configs import ADAPTER_CONFIG_MAP, DEFAULT_ADAPTER_CONFIG, AdapterConfigBase, ConfigUnion
from peftcore.fusion import AdapterFusionConfig
from peftcore.methods import (
    AdapterConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoRAConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    DvoRAConfig,
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
    VeraConfig,
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
    "DoRAConfig",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "DvoRAConfig",
    "Fuse",
    "HoulsbyConfig",
    "HoulsbyInvConfig",
    "IA3Config",
    "LoRAConfig",
    "MAMConfig",
    "ParBnConfig",
    "Parallel",
    "ParallelConfig",
    "PfeifferConfig",
    "PfeifferInvConfig",
    "PrefixTuningConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "Split",
    "Stack",
    "UniPELTConfig",
    "VeraConfig",
    "find_sites",
]
