"""AdapterHub's ``adapters.wrappers``."""

from peftcore.adapters.models import init, load_model

__all__ = ["init", "load_model"]
