"""One --seed proposes the same trials: TPE's flags are explicit (Optuna 5 changed two defaults)
and two searchers built alike propose identical trials, through the random start and TPE's own."""
import math

from raybench.sweep.category_search import TPE_FLAGS, PerCategorySearch, make_sampler
from raybench.sweep.search_space import load_search_space
from raybench.sweep.trial import reproducibility_params


def _proposals(seed: int, n: int = 6) -> list[dict]:
    search = PerCategorySearch(["a", "b"], load_search_space("patchcore"), trials_per_category=n // 2, seed=seed)
    out = []
    for i in range(n):
        config = search.suggest(f"t{i}")
        out.append(config)
        # a made-up validation figure from the config, so TPE's model (after the random start) has data
        value = sum(float(v) for v in config.values() if isinstance(v, (int, float)) and not isinstance(v, bool))
        search.on_trial_complete(f"t{i}", {"val_image_auroc": math.tanh(value % 1)})
    return out


def test_the_flags_are_set_explicitly_and_recorded():
    sampler = make_sampler(seed=3, trials=8)
    assert TPE_FLAGS == {"multivariate": True, "constant_liar": True, "group": False, "n_ei_candidates": 24}
    assert (sampler._multivariate, sampler._constant_liar, sampler._group, sampler._n_ei_candidates) == (
        True, True, False, 24)
    assert sampler._n_startup_trials == 4
    recorded = reproducibility_params()
    assert recorded["tpe_multivariate"] is True and recorded["tpe_constant_liar"] is True
    assert set(recorded) >= {f"version_{p}" for p in ("raybench", "torch", "timm", "ray", "optuna", "mlflow")}
    assert all(recorded[f"version_{p}"] not in ("", "not installed") for p in ("torch", "optuna", "mlflow"))


def test_the_same_seed_proposes_identical_trials_and_another_seed_does_not():
    first, again = _proposals(seed=0, n=8), _proposals(seed=0, n=8)
    assert first == again
    assert [c["category"] for c in first] == ["a", "b"] * 4
    assert _proposals(seed=1, n=8) != first
