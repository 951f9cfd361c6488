"""AdapterHub's ``adapters`` API over peftcore: ``import peftcore.adapters as adapters`` (and
``from peftcore.adapters import BertForSequenceClassification`` in place of transformers') is all an AdapterHub user
changes. Thin: names, module layout and defaults are AdapterHub's, behaviour is the core's. What differs, and why,
is in docs/migrating-from-adapterhub.md.
"""

from peftcore.adapters import composition, configuration, context, heads, models, utils, wrappers
from peftcore.adapters.composition import *  # noqa: F403
from peftcore.adapters.configuration import *  # noqa: F403
from peftcore.adapters.context import AdapterSetup
from peftcore.adapters.models import *  # noqa: F403
from peftcore.interop.adapterhub import VERSION
from peftcore.model import AdapterModelMixin

ModelAdaptersMixin = ModelWithHeadsAdaptersMixin = AdapterModelMixin
__version__ = VERSION.removeprefix("adapters.")  # the AdapterHub release whose API and files this follows

__all__ = ["AdapterModelMixin", "AdapterSetup", "ModelAdaptersMixin", "ModelWithHeadsAdaptersMixin", "__version__",
           "composition", "configuration", "context", "heads", "models", "utils", "wrappers",
           *composition.__all__, *configuration.__all__, *models.__all__]
