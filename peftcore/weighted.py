"""Weighted merging of adapters into a new one (``merge_adapters``, HF PEFT's ``add_weighted_adapter``) and folding
the active adapter into the weights for good (``merge_and_unload``), as a mixin of the model API (model.py).

The strategies and their math are methods/task_arithmetic.py; which methods offer which is each ``Method``'s
``weighted_strategies`` (LoRA: all of them, (IA)^3: ``linear``). Each call checks everything, then changes the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from peftcore import fusion, merging, placement
from peftcore.changes import mutation
from peftcore.composition import Stack
from peftcore.configs import check_seed
from peftcore.host import AdapterHost
from peftcore.methods.base import Method, Weighting, init_generator
from peftcore.setup import compile_plan
from peftcore.sharing import check_unshared
from peftcore.sites import Site


def check_weights(names: Sequence[str], weights: Sequence[float]) -> tuple[float, ...]:
    """One finite number per adapter; negative weights subtract (task arithmetic), nothing is normalised."""
    weights = list(weights)
    if len(weights) != len(names):
        raise ValueError(f"{len(names)} adapters but {len(weights)} weights; give one weight per adapter.")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"weights must be finite numbers (negative ones subtract), got {weights}.")
    return tuple(float(weight) for weight in weights)


def sources(host: AdapterHost, names: Sequence[str], weighting: Weighting) -> dict[str, list[Method]]:
    """Site path -> the adapters' modules there, once every adapter sits at the same sites with modules of one class
    that offers ``weighting``'s strategy."""
    by_adapter = {name: dict((site.path, module) for site, module in placement.placed(host, name)) for name in names}
    first = by_adapter[names[0]]
    for name, modules in by_adapter.items():
        if modules.keys() != first.keys():
            differ = sorted(modules.keys() ^ first.keys())
            raise ValueError(f"adapters {names[0]!r} and {name!r} sit at different sites ({differ[:4]}...); "
                             "merge_adapters merges adapters placed alike.")
    classes = {type(module) for modules in by_adapter.values() for module in modules.values()}
    method = classes.pop()
    if classes:
        raise ValueError(f"adapters {list(names)} are of different methods; merge_adapters merges adapters of one.")
    if weighting.method not in method.weighted_strategies:
        offered = method.weighted_strategies
        what = f"offer only {list(offered)}" if offered else ("have no weighted merge (LoRA offers every strategy, "
                                                              "(IA)^3 'linear')")
        raise ValueError(f"{method.title} adapters {what}; method={weighting.method!r} is not among them.")
    for name, modules in by_adapter.items():
        for path, module in modules.items():
            refusal = module.weighted_refusal()
            if refusal:
                raise ValueError(f"adapter {name!r} cannot be merged at {path}: {refusal}.")
    return {path: [by_adapter[name][path] for name in names] for path in first}


def merge_adapters(host: AdapterHost, new_name: str, names: Sequence[str], weights: Sequence[float],
                   weighting: Weighting, overwrite_ok: bool) -> None:
    """Build adapter ``new_name`` from adapters ``names`` by ``weighting`` (see ``WeightedMixin.merge_adapters``)."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("merge_adapters needs at least one adapter to merge.")
    for name in names:
        placement.check_known(host, name)
    weights = check_weights(names, weights)
    weighting = weighting.for_count(len(names))
    at = sources(host, names, weighting)
    method = type(next(iter(at.values()))[0])
    config = method.weighted_config([host.adapter_configs[name] for name in names], weighting,
                                    placement.model_shape(host))
    check_unshared(host, new_name)
    built = merging.build_new(host, new_name, config, overwrite_ok)
    for site, module in built.placed:
        module.weighted_from(at[site.path], weights, weighting)
    merging.install(host, new_name, config, built)


def check_unload(host: AdapterHost) -> list[tuple[Site, Method]]:
    """The (site, module) pairs ``merge_and_unload`` folds in: the active adapter's, unless it is merged already;
    refuses a setup of several adapters, an adapter that cannot merge, and adapters that share parameters."""
    setup = host.active_adapters
    names = () if setup is None else setup.flatten()
    if len(names) > 1 or (names and setup != Stack(*names)):
        raise ValueError(f"merge_and_unload folds one active adapter, and {setup!r} is active; merge the adapters "
                         "into one first (merge_adapters; method='cat' is exact for LoRA) and activate it.")
    for name in host.adapter_configs:
        check_unshared(host, name)
    if not names or names[0] in placement.merged(host):
        return []
    return merging.check_merge(host, names[0])


def unload(host: AdapterHost, placed: list[tuple[Site, Method]]) -> None:
    """Fold ``placed`` into the weights, then remove every fusion and adapter: merged ones stay in the weights."""
    merging.merge(placed)
    for name in list(host.fusion_configs):
        fusion.remove(host, name)
    merged = placement.merged(host)
    for name in sorted(host.adapter_configs, key=lambda name: name not in merged):  # the folded ones first
        placement.remove(host, name)


class WeightedMixin:
    """``merge_adapters`` and ``merge_and_unload`` for the model API (AdapterModelMixin)."""

    @mutation
    def merge_adapters(self, new_name: str, names: Sequence[str], weights: Sequence[float], method: str = "linear",
                       svd_rank: int | None = None, svd_clamp: float | None = None, svd_full_matrices: bool = True,
                       density: float | None = None, majority_sign_method: str = "total", seed: int | None = None,
                       overwrite_ok: bool = False, set_active: bool = False) -> None:
        """A new adapter ``new_name`` from adapters ``names``, weighted by ``weights`` (negative ones subtract; not
        normalised), by one of HF PEFT's ``add_weighted_adapter`` strategies (``method``, its ``combination_type``):
        ``linear``/``cat`` (exact Σ wᵢ·ΔWᵢ), ``svd``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` and
        their ``*_svd`` forms; ``svd_rank`` (default: the largest r), ``svd_clamp``, ``svd_full_matrices``,
        ``density`` and ``majority_sign_method`` as PEFT's. DARE draws its masks from the global RNG, as PEFT, or
        from a private generator seeded with ``seed``. LoRA offers every strategy, (IA)^3 ``linear``;
        methods/task_arithmetic.py says where ours differs from PEFT's. ``overwrite_ok`` and ``set_active`` as in
        ``add_adapter``."""
        check_seed("merge_adapters", seed)
        weighting = Weighting(method, svd_rank, svd_clamp, svd_full_matrices, density, majority_sign_method,
                              init_generator(seed))
        merge_adapters(self, new_name, names, weights, weighting, overwrite_ok)
        self._replug_or_activate(new_name if set_active else None)

    @mutation
    def merge_and_unload(self) -> WeightedMixin:
        """Fold the active adapter (LoRA or (IA)^3; one, or none) into the weights and remove every adapter and
        fusion: a plain model, returned, whose every site is empty; adapters merged before stay in the weights,
        heads stay. ``save_pretrained(format="hf")`` then writes what transformers loads (``peftcore merge``)."""
        placed = check_unload(self)
        self._install(compile_plan(self, None, None, merged=set(), skip_layers=frozenset()),
                      lambda: unload(self, placed))
        return self
