"""PEFT methods, one method per file, each with its config classes, its module class and its hooks (base.py).

A method file ends by registering itself (``register_method``), so importing it here is what makes a built-in
method available; ``METHODS`` lists every registered module class, each declaring the config class it serves
(``config_class``) and, through ``sites(config, layer)``, where a config places it.
"""

from peftcore.methods.adalora import AdaLoRA, AdaLoraConfig
from peftcore.methods.base import METHODS, Method, ModelShape, MultiTaskConfig, methods_for, register_method
from peftcore.methods.bottleneck import (
    AdapterConfig,
    AdapterPlusConfig,
    BnConfig,
    Bottleneck,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoubleSeqBnConfig,
    HoulsbyConfig,
    ParallelConfig,
    ParBnConfig,
    PfeifferConfig,
    SeqBnConfig,
)
from peftcore.methods.combinations import MAMConfig, UniPELTConfig
from peftcore.methods.dora import DoRA, DoRAConfig, DVoRA, DvoRAConfig
from peftcore.methods.ia3 import IA3, IA3Config
from peftcore.methods.invertible import (
    DoubleSeqBnInvConfig,
    GLOWCoupling,
    HoulsbyInvConfig,
    NICECoupling,
    PfeifferInvConfig,
    SeqBnInvConfig,
)
from peftcore.methods.loha import LoHa, LoHaConfig
from peftcore.methods.lokr import LoKr, LoKrConfig
from peftcore.methods.lora import LoRA, LoRAConfig
from peftcore.methods.mtl_lora import MTLLoRA, MTLLoRAConfig
from peftcore.methods.phm import PHMLinear, PHMShared
from peftcore.methods.prefix import PrefixTuning, PrefixTuningConfig
from peftcore.methods.prompt import PromptTuning, PromptTuningConfig
from peftcore.methods.reft import DiReftConfig, LoReftConfig, NoReftConfig, Reft, ReftConfig
from peftcore.methods.vera import Vera, VeraConfig

__all__ = [
    "IA3",
    "METHODS",
    "AdaLoRA",
    "AdaLoraConfig",
    "AdapterConfig",
    "AdapterPlusConfig",
    "BnConfig",
    "Bottleneck",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "DVoRA",
    "DiReftConfig",
    "DoRA",
    "DoRAConfig",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "DvoRAConfig",
    "GLOWCoupling",
    "HoulsbyConfig",
    "HoulsbyInvConfig",
    "IA3Config",
    "LoHa",
    "LoHaConfig",
    "LoKr",
    "LoKrConfig",
    "LoRA",
    "LoRAConfig",
    "LoReftConfig",
    "MAMConfig",
    "MTLLoRA",
    "MTLLoRAConfig",
    "Method",
    "ModelShape",
    "MultiTaskConfig",
    "NICECoupling",
    "NoReftConfig",
    "PHMLinear",
    "PHMShared",
    "ParBnConfig",
    "ParallelConfig",
    "PfeifferConfig",
    "PfeifferInvConfig",
    "PrefixTuning",
    "PrefixTuningConfig",
    "PromptTuning",
    "PromptTuningConfig",
    "Reft",
    "ReftConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "UniPELTConfig",
    "Vera",
    "VeraConfig",
    "methods_for",
    "register_method",
]
