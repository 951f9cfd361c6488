"""PEFT methods, one family per file. ``METHODS`` lists every method module class: each declares the config
class it serves (``config_class``) and, through ``sites(config, layer)``, where a config places it."""

from peftcore.methods.bottleneck import Bottleneck
from peftcore.methods.invertible import GLOWCoupling, NICECoupling
from peftcore.methods.lora import IA3, LoRA
from peftcore.methods.phm import PHMLinear, PHMShared
from peftcore.methods.prefix import PrefixTuning

METHODS = (Bottleneck, NICECoupling, GLOWCoupling, LoRA, IA3, PrefixTuning)

__all__ = ["IA3", "METHODS", "Bottleneck", "GLOWCoupling", "LoRA", "NICECoupling", "PHMLinear", "PHMShared",
           "PrefixTuning"]
