"""The sweep's live progress line (a Ray Tune callback on the driver): trials done / running /
total, elapsed, ETA and the best validation image AUROC so far per category (the metric that
steers the search; test never does), in at most 100 columns. It is printed when a trial ends and,
while trials run, once a minute."""
from __future__ import annotations

import math
import time

from ray.tune import Callback

from raybench.sweep.category_search import METRIC  # val_image_auroc: what Optuna and ASHA see

WIDTH = 100


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(done: int, running: int, total: int, elapsed: float, best: dict[str, float],
                  width: int = WIDTH) -> str:
    """`done` counts finished and failed trials. ETA: the mean time per finished trial so far,
    times those left (concurrency is already in that mean)."""
    eta = _duration(elapsed / done * (total - done)) if 0 < done < total else ("-" if done < total else "0s")
    head = f"[{done}/{total} done, {running} running] {_duration(elapsed)} elapsed, ETA {eta}"
    if not best:
        return head[:width]
    line = head + " | best val"
    items = sorted(best.items())
    for i, (category, value) in enumerate(items):
        item = f" {category} {value:.3f}"
        rest = len(items) - i - 1
        more = f" +{rest} more" if rest else ""
        if len(line) + len(item) + len(more) > width:  # what does not fit is counted, not cut mid-name
            return line + f" +{len(items) - i} more"
        line += item
    return line


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
        self.print_fn(progress_line(done, running, self.total, time.time() - self.start,
                                    best_so_far(trials, status=status)), flush=True)
        self._last = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, trial, "ERROR")

    def on_step_end(self, iteration, trials, **info):
        if time.time() - self._last >= self.every_s and any(t.status == "RUNNING" for t in trials):
            self._print(trials)
