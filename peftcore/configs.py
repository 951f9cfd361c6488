"""What every adapter config shares: the frozen-dataclass base with AdapterHub's (``adapters`` 1.3.0) dict layout,
the field checks, ``ConfigUnion``, the one string registry (``"seq_bn"``, ``"pfeiffer+inv"``, ...) and the
``"name[key=value,...]"`` override syntax.

Each method's config classes live in its file under ``peftcore/methods/`` and register there: ``register`` records a
config class under its AdapterHub ``"architecture"`` tag (what ``from_dict`` reads) and its preset names (what
``parse`` reads). A config's ``to_dict()`` is AdapterHub's: every field, plus ``"architecture"`` for the methods
that AdapterHub serialises it for (bottleneck configs have none). As in AdapterHub, ``type(c).from_dict(c.to_dict())``
is a config of ``c``'s class, and configs are equal when their ``to_dict()`` are, whatever their classes. Unlike
AdapterHub's, ``from_dict`` is strict: an unknown key is an error.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

Config = TypeVar("Config", bound="AdapterConfigBase")


@dataclass(frozen=True, kw_only=True)
class AdapterConfigBase:
    """Base of every method config. Subclasses validate their fields in ``__post_init__``.

    Two configs are equal when their ``to_dict()`` are, whatever their classes (AdapterHub's equality):
    ``SeqBnConfig() == BnConfig(**SeqBnConfig().to_dict())``.
    """

    architecture: ClassVar[str | None] = None  # AdapterHub's method tag in adapter_config.json

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # @dataclass gives each class it decorates a same-class __eq__ unless the class has its own
        cls.__eq__, cls.__hash__ = AdapterConfigBase.__eq__, AdapterConfigBase.__hash__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AdapterConfigBase):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(hashable(self.to_dict()))

    def __getitem__(self, field: str) -> Any:
        """A field by name, as AdapterHub's configs read like dicts: ``config["reduction_factor"]``."""
        if field not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(f"{type(self).__name__} has no field {field!r}.")
        return getattr(self, field)

    def union_conflict(self, other: AdapterConfigBase) -> str | None:
        """Why a ConfigUnion cannot hold this config and ``other`` together (None: it can, or only a model can tell):
        two configs of one method would sit at the same sites. Where either has a ``leave_out``, whether their layers
        meet depends on the model's depth; as AdapterHub does, the union leaves that to ``add_adapter``, which
        refuses two modules at one site."""
        if self.architecture != other.architecture or leaves_layers_out(self, other):
            return None
        return (f"ConfigUnion holds two {self.architecture} configs that would sit at the same sites; combine "
                "different methods, or the same method in different layers (leave_out).")

    def check_layers(self, num_layers: int) -> None:
        """Refuse a config that names layers a model of ``num_layers`` layers lacks (AdapterHub's ``leave_out``, where
        a config has it)."""
        too_deep = [i for i in getattr(self, "leave_out", ()) if i >= num_layers]
        if too_deep:
            raise ValueError(f"leave_out holds layer(s) {too_deep}, but the model has {num_layers} layers "
                             f"(0...{num_layers - 1}).")

    def essentials(self) -> dict[str, Any]:
        """The fields that decide what a trained adapter computes, by which AdapterHub tells whether adapters can be
        averaged: all but dropout and initialisation."""
        return {key: value for key, value in self.to_dict().items() if key not in ("dropout", "init_weights")}

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (tuples as lists), in AdapterHub's layout."""
        data = {f.name: to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return data if self.architecture is None else {"architecture": self.architecture, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfigBase:
        """The config the dict ``data`` (a ``to_dict()``) describes. On ``AdapterConfigBase``, the dict's
        ``"architecture"`` picks the method's class (none: bottleneck, as ``BnConfig``); on a config class, the
        config is of that class (``SeqBnConfig.from_dict``), which must serve the dict's method."""
        if not isinstance(data, Mapping):
            raise TypeError(f"an adapter config dict maps field names to values, got {type(data).__name__} {data!r}.")
        data = dict(data)
        architecture = data.pop("architecture", None)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"adapter architecture {architecture!r} is not known; known: "
                             f"{sorted(str(a) for a in ARCHITECTURES)}.")
        method_class = ARCHITECTURES[architecture]
        config_class = method_class if cls is AdapterConfigBase else cls
        if not issubclass(config_class, method_class):
            raise ValueError(f"{cls.__name__}.from_dict got the dict of a {method_class.__name__} (architecture "
                             f"{architecture!r}); read it with {method_class.__name__}.from_dict, or with "
                             "AdapterConfigBase.from_dict, which picks the class.")
        if config_class is ConfigUnion:
            return ConfigUnion.from_dict(data)
        valid = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"{config_class.__name__} has no field(s) {unknown}; valid fields: {sorted(valid)}.")
        return config_class(**data)

    def replace(self: Config, **changes: Any) -> Config:
        """A copy with ``changes`` applied (and validated); an unknown field is a TypeError, as an unknown keyword
        argument is."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {unknown}; valid fields: {sorted(valid)}.")
        return dataclasses.replace(self, **changes)

    @staticmethod
    def load(config: str | Mapping[str, Any] | AdapterConfigBase, **overrides: Any) -> AdapterConfigBase:
        """The config ``config`` names: a registry name (with optional ``[k=v]`` overrides), a dict, or a config;
        then ``overrides`` (None values are ignored, as in AdapterHub)."""
        if isinstance(config, str):
            config = parse(config)
        elif isinstance(config, Mapping):
            config = AdapterConfigBase.from_dict(config)
        elif not isinstance(config, AdapterConfigBase):
            raise TypeError(f"an adapter config is a name, a dict or a config object, got {type(config).__name__}.")
        overrides = {key: value for key, value in overrides.items() if value is not None}
        return config.replace(**overrides) if overrides else config


def leaves_layers_out(*configs: AdapterConfigBase) -> bool:
    """Whether any of ``configs`` has a non-empty ``leave_out``."""
    return any(getattr(config, "leave_out", ()) for config in configs)


def hashable(value: Any) -> Hashable:
    """A ``to_dict()`` ``value`` as a hashable that is equal where it is: lists as tuples, dicts as frozensets."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, Mapping):
        return frozenset((k, hashable(v)) for k, v in value.items())
    return value


def to_json(value: Any) -> Any:
    """``value`` JSON-ready: tuples as lists and mappings as dicts, at any depth."""
    if isinstance(value, tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    return value


def check_type(owner: str, name: str, value: Any, types: type | tuple[type, ...], hint: str) -> None:
    """Raise a TypeError naming field ``owner``.``name`` and what it must be (``hint``) when its ``value`` is not of
    ``types`` (bools are not numbers here)."""
    is_bool = isinstance(value, bool)
    accepts_bool = bool in (types if isinstance(types, tuple) else (types,))
    if not isinstance(value, types) or (is_bool and not accepts_bool):
        raise TypeError(f"{owner}.{name} must be {hint}, got {value!r}.")


def check_finite_number(owner: str, name: str, value: Any, hint: str = "a finite number") -> None:
    """Refuse a ``value`` of field ``owner``.``name`` that is not a finite number (``hint``: what it must be)."""
    check_type(owner, name, value, (int, float), hint)
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value!r}.")


def check_positive_number(owner: str, name: str, value: Any) -> None:
    """Refuse a ``value`` of field ``owner``.``name`` that is not a finite positive number."""
    check_finite_number(owner, name, value, "a positive number")
    if value <= 0:
        raise ValueError(f"{owner}.{name} must be positive, got {value!r}.")


def reduced_width(owner: str, name: str, hidden_size: int, factor: float) -> int:
    """``int(hidden_size // factor)``: the width the reduction ``factor`` of field ``owner``.``name`` leaves of
    ``hidden_size``, which must be at least one unit."""
    width = int(hidden_size // factor)
    if width < 1:
        raise ValueError(f"{owner}.{name}={factor} exceeds the width {hidden_size} it divides, leaving no units; use "
                         f"a factor of at most {hidden_size}.")
    return width


def check_in(owner: str, name: str, value: Any, choices: tuple) -> None:
    """Refuse a ``value`` of field ``owner``.``name`` that is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}.{name}={value!r} is not supported; use one of {list(choices)}.")


def check_probability(owner: str, name: str, value: Any) -> None:
    """Refuse a ``value`` of field ``owner``.``name`` that is not a probability in [0, 1)."""
    check_type(owner, name, value, (int, float), "a probability in [0, 1)")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}.{name} must lie in [0, 1), got {value!r}.")


def check_seed(owner: str, seed: Any) -> None:
    """Refuse an ``init_weights_seed`` of ``owner`` (``seed``) that is neither an int nor None."""
    if seed is not None:
        check_type(owner, "init_weights_seed", seed, int, "an int or None")


def check_distinct(owner: str, name: str, values: tuple) -> None:
    """Refuse ``values`` of field ``owner``.``name`` that list an entry more than once."""
    repeated = sorted({value for value in values if values.count(value) > 1}, key=str)
    if repeated:
        raise ValueError(f"{owner}.{name} lists {repeated} more than once; list each once.")


def check_leave_out(owner: str, leave_out: Any) -> tuple[int, ...]:
    """``owner``'s ``leave_out`` as a tuple, once it is a list (or tuple) of distinct non-negative layer indices."""
    check_type(owner, "leave_out", leave_out, (tuple, list), "a list of layer indices")
    for index in leave_out:
        check_type(owner, "leave_out", index, int, "a list of non-negative layer indices")
        if index < 0:
            raise ValueError(f"{owner}.leave_out holds {index}; layer indices are non-negative.")
    check_distinct(owner, "leave_out", tuple(leave_out))
    return tuple(leave_out)


@dataclass(frozen=True, init=False)
class ConfigUnion(AdapterConfigBase):
    """Several methods, the method ``configs``, as one adapter (He et al., 2021; Mao et al., 2022), as AdapterHub's
    ConfigUnion.

    Two configs of one method are refused — except bottleneck configs that differ in both ``mh_adapter`` and
    ``output_adapter`` (one after attention, one after the FFN) — as are nested unions. ``replace`` addresses a
    member's field as ``"0.r"``.
    """

    architecture: ClassVar[str | None] = "union"
    configs: tuple[AdapterConfigBase, ...]

    def __init__(self, *configs: AdapterConfigBase) -> None:
        object.__setattr__(self, "configs", tuple(configs))
        self.__post_init__()

    def __post_init__(self) -> None:
        if len(self.configs) < 2:
            raise ValueError(f"ConfigUnion needs at least two configs, got {len(self.configs)}.")
        for config in self.configs:
            if not isinstance(config, AdapterConfigBase) or isinstance(config, ConfigUnion):
                raise TypeError(f"ConfigUnion takes method configs (not unions), got {config!r}.")
        for i, first in enumerate(self.configs):
            for second in self.configs[i + 1:]:
                conflict = first.union_conflict(second)
                if conflict:
                    raise ValueError(conflict)

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "configs": [config.to_dict() for config in self.configs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfigUnion:
        """The union the dict ``data`` describes: ``{"configs": [member dicts]}`` (``"architecture"`` may be there)."""
        if set(data) - {"architecture"} != {"configs"} or not isinstance(data["configs"], (list, tuple)):
            raise ValueError(f"a union config holds one field, 'configs' (a list of method configs), got {dict(data)}.")
        return ConfigUnion(*(AdapterConfigBase.from_dict(config) for config in data["configs"]))

    def __getitem__(self, key: int | str) -> Any:
        """Member ``key`` (an index), or a member's field (``"0.r"``)."""
        if isinstance(key, int):
            return self.configs[key]
        index, _, field_name = key.partition(".")
        return getattr(self.configs[int(index)], field_name)

    def replace(self, **changes: Any) -> ConfigUnion:
        """``replace(**{"0.r": 4})`` changes field r of the first member; a field without a member index changes it in
        every member (AdapterHub's ``replace(leave_out=[0])``)."""
        per_member: dict[int, dict[str, Any]] = {}
        for key, value in changes.items():
            index, dot, field_name = key.partition(".")
            if not dot:
                for member in range(len(self.configs)):
                    per_member.setdefault(member, {})[key] = value
                continue
            if not index.isdigit() or int(index) >= len(self.configs) or not field_name:
                raise ValueError(f"ConfigUnion field {key!r} must read 'N.field' with N < {len(self.configs)}.")
            per_member.setdefault(int(index), {})[field_name] = value
        return ConfigUnion(*(config.replace(**per_member[i]) if i in per_member else config
                             for i, config in enumerate(self.configs)))


def members(config: AdapterConfigBase) -> tuple[AdapterConfigBase, ...]:
    """The method configs of ``config``: its members if it is a union, else itself."""
    return config.configs if isinstance(config, ConfigUnion) else (config,)


# AdapterHub's "architecture" tag -> config class, and preset name -> config; filled by each method's register()
ARCHITECTURES: dict[str | None, type[AdapterConfigBase]] = {"union": ConfigUnion}
ADAPTER_CONFIG_MAP: dict[str, AdapterConfigBase] = {}
DEFAULT_ADAPTER_CONFIG = "seq_bn"


def register(config_class: type[AdapterConfigBase] | None = None,
             presets: Mapping[str, AdapterConfigBase] | None = None) -> None:
    """Make a method's ``config_class`` readable from its ``"architecture"`` tag, and the names of its ``presets``
    (name -> config) parseable; a tag or name another registration holds is an error."""
    if config_class is not None:
        if ARCHITECTURES.get(config_class.architecture, config_class) is not config_class:
            raise ValueError(f"architecture tag {config_class.architecture!r} is registered for "
                             f"{ARCHITECTURES[config_class.architecture].__name__} already.")
        ARCHITECTURES[config_class.architecture] = config_class
    for name, config in (presets or {}).items():
        if name in ADAPTER_CONFIG_MAP:
            raise ValueError(f"adapter config name {name!r} is registered already.")
        ADAPTER_CONFIG_MAP[name] = config


NAME_WITH_OVERRIDES = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[(.*)\])?\s*$", re.DOTALL)


BARE_WORD = re.compile(r"[A-Za-z_][\w.+-]*")  # an unquoted string value: an activation or init name


def parse(text: str) -> AdapterConfigBase:
    """The config ``text`` names: ``"name"`` or ``"name[key=value, ...]"``, values Python literals
    (``ast.literal_eval``, else bare words); ``"a|b"`` is the ConfigUnion of a and b."""
    if "|" in text:
        return ConfigUnion(*(parse(part) for part in text.split("|")))
    match = NAME_WITH_OVERRIDES.match(text)
    if not match:
        raise ValueError(f"{text!r} is not 'name' or 'name[key=value,...]'.")
    name, body = match.groups()
    if name not in ADAPTER_CONFIG_MAP:
        raise ValueError(f"unknown adapter config {name!r}; known: {sorted(ADAPTER_CONFIG_MAP)}.")
    overrides = {}
    for item in split_top_level(body or ""):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} in {text!r} is not key=value.")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            if not BARE_WORD.fullmatch(value.strip()):
                raise ValueError(f"override {item!r} in {text!r}: {value.strip()!r} is neither a Python literal nor "
                                 "a bare word such as relu.") from None
            overrides[key.strip()] = value.strip()
    return ADAPTER_CONFIG_MAP[name].replace(**overrides) if overrides else ADAPTER_CONFIG_MAP[name]


def split_top_level(body: str) -> list[str]:
    """Split ``body`` on commas that are not inside brackets, braces, parentheses or quotes."""
    items, depth, quote, start = [], 0, None, 0
    for index, char in enumerate(body):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(body[start:index])
            start = index + 1
    items.append(body[start:])
    return [item.strip() for item in items if item.strip()]


