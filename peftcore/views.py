"""Read-only views of a model's adapter state in the shapes AdapterHub's API gives them: ``model.adapters_config``
(its ``ModelAdaptersConfig``), ``get_adapter`` by AdapterHub's locations, ``invertible_adapters``, ``iter_layers``,
``base_model`` and ``supports_adapter``. The state itself lives in the model (``adapter_configs``, the sites,
``fusion_configs``, ``fused_adapters``); a view reads it when asked, so it is never stale and never changes it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from torch import nn

from peftcore import placement
from peftcore.configs import AdapterConfigBase
from peftcore.host import AdapterHost

# AdapterHub's method types -> a config of that type
METHOD_TYPES = {"bottleneck": "seq_bn", "invertible": "seq_bn_inv", "lora": "lora", "ia3": "ia3",
                "prefix_tuning": "prefix_tuning", "reft": "loreft"}


class ViewsMixin:
    """AdapterHub's read-only queries of a model with adapter state (``AdapterModelMixin``)."""

    support_lora_delta_w_svd: ClassVar[bool] = True  # average_adapter's "lora_delta_w_svd" works on every model

    def get_adapter(self, name: str) -> dict[int, dict[str, nn.Module]]:
        """AdapterHub's ``{layer: {location: module}}`` of adapter ``name`` ({} when the model has none of that name):
        locations are AdapterHub's (``"selfattn"``, ``"output_adapter"``, ...; placement.LOCATIONS), several modules at
        one location an ``nn.ModuleList``, layer -1 what sits outside the layers. ``iter_adapters`` gives our sites."""
        return placement.by_location(self, name)

    @property
    def adapters_config(self) -> AdaptersConfig:
        """The adapters and fusions by name, as AdapterHub's ``model.adapters_config``: ``name in``, ``.get(name)``,
        ``.adapters``, ``.fusions`` (a read-only view; views.py)."""
        return AdaptersConfig(self)

    @property
    def invertible_adapters(self) -> nn.ModuleDict:
        """The invertible adapters (the modules at the site after the embeddings) by adapter name: a read-only view,
        as AdapterHub names them."""
        return nn.ModuleDict(dict(placement.embedding_site(self).adapters))

    def get_invertible_adapter(self) -> nn.Module | None:
        """The invertible adapter of the active setup's first adapter, or None (AdapterHub's)."""
        setup = self.active_adapters
        invertible = self.invertible_adapters
        return invertible[setup.first()] if setup is not None and setup.first() in invertible else None

    def supports_adapter(self, type_or_config: str | AdapterConfigBase) -> bool:
        """Whether adapters of ``type_or_config`` (a config, a config name or AdapterHub's method type:
        ``"bottleneck"``, ``"lora"``, ``"prompt_tuning"``, ...) can be added to this model: it builds them off the
        model (on the meta device) to find out."""
        config = METHOD_TYPES.get(type_or_config, type_or_config) if isinstance(type_or_config, str) else type_or_config
        try:
            placement.build(self, AdapterConfigBase.load(config), meta=True)
        except (ValueError, TypeError, KeyError):
            return False
        return True

    def iter_layers(self) -> Iterator[tuple[int, nn.Module]]:
        """(index, layer) for every Transformer layer, as AdapterHub's ``iter_layers``."""
        return enumerate(self.layers)

    @property
    def base_model(self) -> nn.Module:
        """The model itself: ours has no separate encoder inside a task model (AdapterHub's ``base_model``)."""
        return self


class AdaptersConfig:
    """The adapters and fusions of a model by name, in AdapterHub's shape: ``name in view``, ``view.get(name)`` (its
    config, or None), ``view.adapters`` and ``view.fusions`` (name -> key of ``config_map`` / ``fusion_config_map``,
    which hold the configs; the key is the name), ``view.fusion_name_map`` (fusion name -> the adapters it fuses)
    and ``view.get_fusion(name)`` (config and adapter names, or ``(None, None)``)."""

    def __init__(self, host: AdapterHost) -> None:
        self.host = host

    def __contains__(self, name: object) -> bool:
        return name in self.host.adapter_configs

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self.host.adapter_configs))

    def __len__(self) -> int:
        return len(self.host.adapter_configs)

    def __repr__(self) -> str:
        return f"AdaptersConfig(adapters={self.config_map}, fusions={self.fusion_config_map})"

    def get(self, name: str) -> AdapterConfigBase | None:
        return self.host.adapter_configs.get(name)

    @property
    def adapters(self) -> dict[str, str]:
        return {name: name for name in self.host.adapter_configs}

    @property
    def config_map(self) -> dict[str, AdapterConfigBase]:
        return dict(self.host.adapter_configs)

    @property
    def skip_layers(self) -> list[int] | None:
        """The layers whose adapters AdapterDrop skips (``set_active_adapters(..., skip_layers=)``), or None."""
        return sorted(self.host.plan.skip_layers) or None

    @property
    def fusions(self) -> dict[str, str]:
        return {name: name for name in self.host.fusion_configs}

    @property
    def fusion_config_map(self) -> dict[str, Any]:
        return dict(self.host.fusion_configs)

    @property
    def fusion_name_map(self) -> dict[str, list[str]]:
        return {name: list(adapters) for name, adapters in self.host.fused_adapters.items()}

    def get_fusion(self, name: str) -> tuple[Any, list[str]] | tuple[None, None]:
        if name not in self.host.fusion_configs:
            return None, None
        return self.host.fusion_configs[name], list(self.host.fused_adapters[name])
