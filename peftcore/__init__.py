"""peftcore: parameter-efficient fine-tuning methods that plug into the sites of Transformer encoders."""

from peftcore.composition import Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from peftcore.configs import ADAPTER_CONFIG_MAP, DEFAULT_ADAPTER_CONFIG, AdapterConfigBase, ConfigUnion
from peftcore.fusion import AdapterFusionConfig
from peftcore.methods import (
    AdapterConfig,
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    HoulsbyConfig,
    HoulsbyInvConfig,
    IA3Config,
    LoRAConfig,
    MAMConfig,
    MTLLoRAConfig,
    ParallelConfig,
    ParBnConfig,
    PfeifferConfig,
    PfeifferInvConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
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
    "AdapterPlusConfig",
    "Average",
    "BatchSplit",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "ConfigUnion",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "Fuse",
    "HoulsbyConfig",
    "HoulsbyInvConfig",
    "IA3Config",
    "LoRAConfig",
    "MAMConfig",
    "MTLLoRAConfig",
    "MultiTask",
    "ParBnConfig",
    "Parallel",
    "ParallelConfig",
    "PfeifferConfig",
    "PfeifferInvConfig",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "Split",
    "Stack",
    "UniPELTConfig",
    "find_sites",
]
