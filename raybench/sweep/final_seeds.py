"""`--final-seeds N`: after the search, each category's chosen configuration (best on validation,
one per leaderboard variant) is trained again with N new seeds, so the leaderboard can report the
test mean +- std of the method rather than the luckiest draw of the search.

The retraining is a second Tune run in the same driver with the configurations fixed (no
searcher state, no early stopping), logged by the same kind of MLflowTrialLogger with the tag
`final: yes`. Nothing here reads a test metric: the choice is made on validation alone.
"""
from __future__ import annotations

import json

from ray.tune.search import Searcher

from raybench.sweep.category_search import METRIC, MODE, PicklingSearcher
from raybench.tracking import rank_key


class FixedConfigs(PicklingSearcher):
    """Hands out a fixed list of trial configs, each once, then FINISHED."""

    def __init__(self, configs: list[dict], metric: str = METRIC, mode: str = MODE):
        super().__init__(metric=metric, mode=mode)
        self.configs, self.next = [dict(c) for c in configs], 0

    def suggest(self, trial_id: str):
        if self.next >= len(self.configs):
            return Searcher.FINISHED
        self.next += 1
        return dict(self.configs[self.next - 1])

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass


def chosen_configs(results) -> dict[tuple[str, str], dict]:
    """(category, variant) -> the full config of the trial with the best validation figures among
    the finished trials of a Tune ResultGrid (trials stopped early or failed never count)."""
    best: dict[tuple[str, str], tuple] = {}
    for result in results:
        metrics = result.metrics or {}
        if result.error is not None or not metrics.get("final") or "raybench_config" not in metrics:
            continue
        key = (result.config.get("category", "?"), metrics.get("variant", ""))
        if key not in best or rank_key(metrics) > best[key][0]:
            best[key] = (rank_key(metrics), json.loads(metrics["raybench_config"]))
    return {key: config for key, (_, config) in sorted(best.items())}


def final_trial_configs(chosen: dict[tuple[str, str], dict], n_seeds: int) -> list[dict]:
    """N trials per chosen configuration, with seeds the search did not use (its seed + 1..N)."""
    jobs = []
    for (category, _variant), config in chosen.items():
        for i in range(n_seeds):
            jobs.append({**config, "seed": int(config.get("seed", 0)) + 1 + i, "category": category})
    return jobs
