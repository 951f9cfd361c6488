"""AdapterHub's ``adapters.context``."""

from peftcore.context import AdapterSetup

__all__ = ["AdapterSetup"]
