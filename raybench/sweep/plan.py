"""What a sweep is asked to do (`SweepSpec`) and the one place a trial's configuration is resolved
(`ConfigPlan`), used by the CLI (to check `--set` before anything runs), the driver (to check the
first trial's config before any trial) and every trial (to build its config).

Precedence, low to high: the method's defaults (the papers' values) < the dataset preset <
`--budget default` < the search space's `fixed:` < Optuna's sampled values < `--budget smoke|paper`
(taken out of the search, see `bound_by_budget`) < `--set`.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace

import yaml

from raybench.config import field_types, from_dict
from raybench.errors import ConfigError, did_you_mean
from raybench.evaluation.splits import DEFAULT_VAL_MODE, DEFAULT_VAL_NORMALS, DEFAULT_VAL_SPLIT, VAL_MODES
from raybench.methods.base import BOUNDING_BUDGETS, BUDGETS, paper_deviations
from raybench.methods import get_method
from raybench.sweep.search_space import SearchSpace

# the demo runs on real ImageNet features with no hub: tf_efficientnet_lite0 from the installed
# package (raybench[weights]), for the saliency net of cutswap too. It compares two methods, the
# PatchCore baseline and a trained one (CutPaste at a short schedule: `method_fixed` takes those
# keys out of its search, as --set does, so it fits the demo's ~5 minutes on 2 CPU cores).
DATASET_PRESETS = {"demo": {"weights": "imagenet", "trials": 3, "method": "patchcore,cutpaste",
                            "overrides": {"image_size": 128, "backbone": "tf_efficientnet_lite0",
                                          "saliency_net": "tf_efficientnet_lite0"},
                            "method_fixed": {"cutpaste": {"epochs": 2, "batch_images": 16}},
                            "final_seeds": 0,
                            # one search per category, not one per crossfit fold: half the trials, so
                            # the demo stays near 5 minutes (`--val-mode crossfit` runs the default protocol)
                            "val_mode": "real"}}
DEFAULT_METHOD = "patchcore"
DEFAULT_TRIALS = 8


@dataclass
class SweepSpec:
    dataset: str
    data_root: str | None = None
    categories: str | list[str] | None = "all"
    method: str = "patchcore"
    trials: int = DEFAULT_TRIALS
    search_space: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 if the Ray cluster has a GPU, else 0
    workers: int = 1
    seed: int = 0
    weights: str | None = None
    budget: str = "default"
    overrides: dict = field(default_factory=dict)  # --set KEY=VALUE: fixed for every trial
    storage: str | None = None
    sweep_id: str | None = None
    resume: bool = False
    asha: bool = False
    max_concurrent: int | None = None
    max_failures: int = 2  # retries of a trial whose node or worker died
    kinds: dict = field(default_factory=dict)  # category -> "object" | "texture" (--kind)
    figures: bool = True  # each trial's overlays, curves and histogram as MLflow artifacts

    val_split: float = DEFAULT_VAL_SPLIT  # share of the test images (real) or training normals (synthetic)
    val_mode: str = DEFAULT_VAL_MODE  # crossfit | real | synthetic (raybench.evaluation.splits)
    split_seed: int = 0  # the split depends on (dataset, category, split_seed, protocol) alone
    final_seeds: int = 0  # retrain each category's chosen config with this many new seeds
    val_normals: float = DEFAULT_VAL_NORMALS  # share of training normals held out into validation
    few_shot_pool: int | None = None  # pool size; None: the most real anomalies this method's search may draw
    accept_weak_validation: bool = False  # run even when validation is too small to rank trials
    select: str = "category"  # category: a configuration per category; dataset: one for all (the papers')


def preset_default(dataset: str, key: str, fallback):
    """A dataset preset's value for a sweep option (demo: 3 trials, two methods, --val-mode real), else `fallback`."""
    return DATASET_PRESETS.get(dataset, {}).get(key, fallback)


def preset_fixed(dataset: str, method: str, budget: str = "default") -> dict:
    """A dataset preset's fixed values for one method (demo: cutpaste's short schedule); none under
    a bounding budget (smoke, paper), whose values win."""
    if budget in BOUNDING_BUDGETS:
        return {}
    return dict(DATASET_PRESETS.get(dataset, {}).get("method_fixed", {}).get(method, {}))


def new_sweep_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def parse_set(items: list[str] | None) -> dict:
    """`--set KEY=VALUE` items -> {key: value}; values read as YAML (numbers, booleans, [lists])."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def parse_kinds(items: list[str] | None) -> dict:
    """`--kind CATEGORY=object|texture` items -> {category: kind}."""
    out = {}
    for item in items or []:
        name, sep, kind = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--kind expects CATEGORY=object|texture, got {item!r}")
        out[name.strip()] = kind.strip()
    return out


def overrides_per_method(methods: list[str], overrides: dict) -> dict[str, dict]:
    """Each method's share of `--set` (epochs1 is rd's only); a key no method has is an error."""
    fields = {m: set(field_types(get_method(m).config_cls)) for m in methods}
    unknown = [k for k in overrides if not any(k in f for f in fields.values())]
    if unknown:
        known = sorted(set().union(*fields.values()))
        raise ConfigError("; ".join(f"--set {k}: not a parameter of {', '.join(methods)}{did_you_mean(k, known)} "
                                    f"(`raybench methods METHOD` lists them)" for k in unknown))
    return {m: {k: v for k, v in overrides.items() if k in fields[m]} for m in methods}


def check_spec(spec: SweepSpec) -> None:
    """The sweep's own numbers (the method's config is checked by config.from_dict)."""
    for name, value, least in (("trials", spec.trials, 1), ("workers", spec.workers, 1),
                               ("max_concurrent", spec.max_concurrent, 1), ("max_failures", spec.max_failures, 0),
                               ("final_seeds", spec.final_seeds, 0), ("split_seed", spec.split_seed, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ConfigError(f"{name}: must be an integer >= {least}, got {value!r}")
    if spec.few_shot_pool is not None and (isinstance(spec.few_shot_pool, bool) or not isinstance(spec.few_shot_pool, int)
                                           or spec.few_shot_pool < 0):
        raise ConfigError(f"--few-shot-pool: must be an integer >= 0, got {spec.few_shot_pool!r}")
    if spec.val_mode not in VAL_MODES:
        raise ConfigError(f"--val-mode {spec.val_mode!r}: choose one of {VAL_MODES}")
    if spec.select not in ("category", "dataset"):
        raise ConfigError(f"--select {spec.select!r}: choose category or dataset")
    if not 0 <= spec.val_normals < 1:
        raise ConfigError(f"--val-normals {spec.val_normals}: the share of training normals must lie in [0, 1)")
    if not spec.cpus_per_trial > 0:
        raise ConfigError(f"cpus_per_trial: must be > 0, got {spec.cpus_per_trial!r}")
    if spec.gpus_per_trial is not None and not spec.gpus_per_trial >= 0:
        raise ConfigError(f"gpus_per_trial: must be >= 0, got {spec.gpus_per_trial!r}")


def bound_by_budget(space: SearchSpace, method, budget: str, log=print) -> SearchSpace:
    """smoke and paper take their keys out of the search (as --set does), so the search can never
    draw past the budget: smoke stays smoke, paper is the papers' schedule. default leaves the
    search space's ranges alone and fills only what it does not sample."""
    if budget not in BOUNDING_BUDGETS:
        return space
    values = method.budgets.get(budget, {})
    taken = sorted(k for k in values if k in space.distributions)
    if taken:
        log(f"budget {budget}: {', '.join(f'{k}={values[k]}' for k in taken)} fixed (taken out of the search)")
    return space.without(values)


def resolve_base_config(spec: SweepSpec, space: SearchSpace) -> dict:
    """The values below the sampled ones: dataset preset < budget < the space's fixed, plus the
    weights and the sweep's seed."""
    method = get_method(spec.method)
    if spec.budget not in BUDGETS:
        raise ValueError(f"unknown budget {spec.budget!r}; choose one of {BUDGETS}")
    preset = DATASET_PRESETS.get(spec.dataset, {})
    # smoke/paper budgets were taken out of the space (bound_by_budget), so for them the budget
    # sits above fixed and sampled values
    base = {**preset.get("overrides", {}), **method.budgets.get(spec.budget, {}), **space.fixed,
            **preset_fixed(spec.dataset, spec.method, spec.budget)}
    weights = spec.weights or preset.get("weights")
    if weights:
        base["weights"] = weights
    base["seed"] = spec.seed
    types = field_types(method.config_cls)
    return {k: v for k, v in base.items() if k in types}


def paper_setting_tags(method: str, budget: str, config) -> dict:
    """What a `--budget paper` run records: `paper_setting` yes (every value the papers state, or
    one of their alternatives) or no, and `paper_deviations` naming what departs (a `--set` above
    the budget, e.g. backbone=tf_efficientnet_lite0 where the hub is out of reach). Other budgets: none."""
    if budget != "paper":
        return {}
    departs = paper_deviations(get_method(method), config)
    tags = {"paper_setting": "no" if departs else "yes"}
    if departs:
        tags["paper_deviations"] = ", ".join(f"{k}={v}" for k, v in sorted(departs.items()))
    return tags


def build_config(method: str, base: dict, sampled: dict, overrides: dict):
    """The method's config from the three layers (each later one wins), checked field by field."""
    return from_dict(get_method(method).config_cls, {**base, **sampled, **overrides}, method=method)


@dataclass(frozen=True)
class ConfigPlan:
    """A trial's configuration, resolved once: `config(sampled)` is what a trial trains with."""
    method: str
    base: dict  # preset < budget < fixed (+ weights, seed): below the sampled values
    overrides: dict  # --set: above them

    def config(self, sampled: dict | None = None):
        return build_config(self.method, self.base, sampled or {}, self.overrides)

    def without_override(self, key: str) -> "ConfigPlan":
        """The final seeds set `seed` per trial: a --set seed must not pin them all to one."""
        return replace(self, overrides={k: v for k, v in self.overrides.items() if k != key})


def plan_sweep(spec: SweepSpec, space: SearchSpace, log=print) -> tuple[SearchSpace, ConfigPlan]:
    """The search space left to sample once `--set` and a bounding budget took their keys out,
    and the plan every trial builds its config from. The first config is built here, so a bad
    value fails before any trial."""
    method = get_method(spec.method)
    overrides = {}
    if spec.overrides:
        checked = from_dict(method.config_cls, dict(spec.overrides), method=spec.method).__dict__
        overrides = {k: v for k, v in checked.items() if k in spec.overrides}
        space = space.without(overrides)
    space = bound_by_budget(space, method, spec.budget, log)
    fixed = preset_fixed(spec.dataset, spec.method, spec.budget)
    if fixed:
        log(f"{spec.dataset} preset: {spec.method} {', '.join(f'{k}={v}' for k, v in fixed.items())} fixed")
        space = space.without(fixed)
    plan = ConfigPlan(spec.method, resolve_base_config(spec, space), overrides)
    plan.config()
    return space, plan


def real_anomaly_need(spec: SweepSpec, space: SearchSpace) -> int:
    """The most real anomalies a trial of this method's search, or its default configuration (the
    first trial of every study), may train on: the few-shot pool a sweep of it needs; the CLI takes
    the largest over the methods of one command."""
    quiet, method = (lambda *_: None), get_method(spec.method)
    space, plan = plan_sweep(spec, space, quiet)
    default = plan.config()  # every study's first trial runs it, sampled values or not
    return max(method.max_real_anomalies(default, space.distributions), method.max_real_anomalies(default, {}))
