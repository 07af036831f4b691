"""The sweep's live progress line (a Ray Tune callback on the driver): trials done / running /
total, elapsed, ETA and the best validation image AUROC so far per category (the metric that
steers the search; test never does), in at most 100 columns. It is printed when a trial ends and,
while trials run, once a minute."""
from __future__ import annotations

import math
import time

from ray.tune import Callback

from raybench.tracking.leaderboard import RANK_BY, TIE_BREAKER

METRIC = RANK_BY[0]  # val_image_auroc: the ranked figure (Optuna and ASHA see the objective built on it)

WIDTH = 100


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(done: int, running: int, total: int, elapsed: float, best: dict[str, float],
                  width: int = WIDTH, ties: dict[str, int] | None = None) -> str:
    """`done` counts finished and failed trials. ETA: the mean time per finished trial so far,
    times those left (concurrency is already in that mean). `ties`: category -> how many finished
    trials share its best validation image AUROC; shown as `(N tied)`, with what breaks the tie."""
    eta = _duration(elapsed / done * (total - done)) if 0 < done < total else ("-" if done < total else "0s")
    head = f"[{done}/{total} done, {running} running] {_duration(elapsed)} elapsed, ETA {eta}"
    if not best:
        return head[:width]
    ties = {c: n for c, n in (ties or {}).items() if n > 1 and c in best}
    note = f" | ties -> {TIE_BREAKER}" if ties else ""
    line = head + " | best val"
    items = sorted(best.items())
    for i, (category, value) in enumerate(items):
        item = f" {category} {value:.3f}" + (f" ({ties[category]} tied)" if category in ties else "")
        rest = len(items) - i - 1
        more = f" +{rest} more" if rest else ""
        if len(line) + len(item) + len(more) > width:  # what does not fit is counted, not cut mid-name
            return line + f" +{len(items) - i} more"
        line += item
    return line + note if len(line + note) <= width else line


def ties_so_far(trials, best: dict[str, float], metric: str = METRIC, status=None) -> dict[str, int]:
    """category -> finished trials of one validation set (crossfit: one fold) sharing its best `metric`."""
    status = status or (lambda t: t.status)
    counts: dict[tuple, int] = {}
    for trial in trials:
        value, category = (trial.last_result or {}).get(metric), trial.config.get("category")
        if category in best and status(trial) == "TERMINATED" and isinstance(value, (int, float)) \
                and abs(value - best[category]) <= 1e-9:
            key = (category, trial.config.get("fold") or "")
            counts[key] = counts.get(key, 0) + 1
    out: dict[str, int] = {}
    for (category, _fold), n in counts.items():
        out[category] = max(out.get(category, 0), n)
    return out


def best_so_far(trials, metric: str = METRIC, status=None) -> dict[str, float]:
    status = status or (lambda t: t.status)
    best: dict[str, float] = {}
    for trial in trials:
        value = (trial.last_result or {}).get(metric)
        category = trial.config.get("category")
        if category is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if status(trial) == "TERMINATED":  # a running trial's per-epoch value is not its result yet
            best[category] = max(best.get(category, -math.inf), float(value))
    return best


class ProgressLine(Callback):
    def __init__(self, total: int, every_s: float = 60.0, print_fn=print):
        self.total, self.every_s, self.print_fn = total, every_s, print_fn
        self.start = time.time()
        self._last = 0.0

    def __getstate__(self):  # a restored sweep keeps counting from its own start
        state = self.__dict__.copy()
        state["print_fn"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.print_fn = print

    def _print(self, trials, ended=None, how: str = "TERMINATED") -> None:
        def status(t):  # the trial being reported may not carry its final status yet
            return how if t is ended else t.status
        done = sum(status(t) in ("TERMINATED", "ERROR") for t in trials)
        running = sum(status(t) == "RUNNING" for t in trials)
        best = best_so_far(trials, status=status)
        self.print_fn(progress_line(done, running, self.total, time.time() - self.start, best,
                                    ties=ties_so_far(trials, best, status=status)), flush=True)
        self._last = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, trial, "ERROR")

    def on_step_end(self, iteration, trials, **info):
        if time.time() - self._last >= self.every_s and any(t.status == "RUNNING" for t in trials):
            self._print(trials)
