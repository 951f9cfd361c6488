"""PEFT methods, one family per file. ``METHODS`` lists every method module class: each declares the config
class it serves (``config_class``) and, through ``sites(config, layer)``, where a config places it."""

from peftcore.methods.bottleneck import Bottleneck
from peftcore.methods.invertible import GLOWCoupling, NICECoupling

METHODS = (Bottleneck, NICECoupling, GLOWCoupling)

__all__ = ["METHODS", "Bottleneck", "GLOWCoupling", "NICECoupling"]
