"""`--final-seeds N`: after the search, each category's chosen configuration (best on validation,
one per leaderboard variant) is trained again with N new seeds, so the leaderboard can report the
test mean +- std of the method rather than the luckiest draw of the search.

The retraining is a second Tune run in the same driver with the configurations fixed (no
searcher state, no early stopping), logged by the same kind of MLflowTrialLogger with the tag
`final: yes`. The configurations retrained are the runs the leaderboard chose (tracking.leaderboard),
on validation alone: nothing here reads a test metric.
"""
from __future__ import annotations

import json

from ray.tune.search import Searcher

from raybench.sweep.category_search import METRIC, MODE, PicklingSearcher


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


def chosen_configs(results, rows) -> dict[tuple[str, str, str], dict]:
    """(category, variant, fold) -> the full config of each run the leaderboard `rows` chose
    (`tracking.leaderboard`, the one definition of the chosen run; crossfit: one per fold), read
    from the Tune results by the run's trial id."""
    by_trial = {}
    for result in results:
        metrics = result.metrics or {}
        if result.error is None and metrics.get("final") and "raybench_config" in metrics:
            by_trial[metrics.get("trial_id")] = (result.config or {}, json.loads(metrics["raybench_config"]))
    chosen = {}
    for row in rows:
        for trial_id, fold in zip(row.trial_ids, row.folds):
            if trial_id in by_trial:
                chosen[(row.category, row.variant, fold)] = by_trial[trial_id][1]
    return dict(sorted(chosen.items()))


def final_trial_configs(chosen: dict[tuple, dict], n_seeds: int) -> list[dict]:
    """N trials per chosen configuration, with seeds the search did not use (its seed + 1..N)."""
    jobs = []
    for (category, _variant, *fold), config in chosen.items():
        for i in range(n_seeds):
            jobs.append({**config, "seed": int(config.get("seed", 0)) + 1 + i, "category": category,
                         "fold": fold[0] if fold else ""})
    return jobs
