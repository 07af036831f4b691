"""The sweep's progress line: counts, elapsed, ETA and best-so-far (validation) within 100 columns."""
from types import SimpleNamespace

from raybench.sweep.progress import ProgressLine, best_so_far, progress_line


def test_line_counts_eta_and_best():
    line = progress_line(2, 1, 8, 120.0, {"stripes": 0.9123, "disc": 0.8})
    # 60 s per finished trial, 6 left -> 6 min
    assert line == "[2/8 done, 1 running] 2m00s elapsed, ETA 6m00s | best val disc 0.800 stripes 0.912"
    assert progress_line(0, 2, 8, 5.0, {}) == "[0/8 done, 2 running] 5s elapsed, ETA -"
    assert progress_line(8, 0, 8, 3725.0, {}).startswith("[8/8 done, 0 running] 1h02m elapsed, ETA 0s")


def test_many_categories_fit_in_100_columns():
    best = {f"cat_{i:02d}": 0.5 + i / 100 for i in range(15)}
    line = progress_line(30, 2, 120, 3000.0, best)
    assert len(line) <= 100
    shown = line.count("cat_")
    assert shown >= 2 and line.endswith(f"+{15 - shown} more")


def _trial(category, status, value):
    return SimpleNamespace(config={"category": category}, status=status,
                           last_result={} if value is None else {"val_image_auroc": value, "image_auroc": 1.0 - value})


def test_best_so_far_takes_finished_trials_only_and_the_callback_counts_the_ending_one():
    trials = [_trial("a", "TERMINATED", 0.7), _trial("a", "TERMINATED", 0.9), _trial("a", "RUNNING", 0.99),
              _trial("b", "ERROR", None), _trial("b", "RUNNING", 0.6)]
    assert best_so_far(trials) == {"a": 0.9}  # validation, never test (here 1 - val)
    printed = []
    cb = ProgressLine(total=6, print_fn=lambda line, flush: printed.append(line))
    cb.on_trial_complete(0, trials, trials[4])  # Tune may still say RUNNING for the trial that ends
    assert printed[-1].startswith("[4/6 done, 1 running]") and "best val a 0.900 b 0.600" in printed[-1]


def test_ties_on_one_validation_set_are_shown_with_what_breaks_them():
    from raybench.sweep.progress import ties_so_far

    def trial(fold, value):
        return SimpleNamespace(config={"category": "a", "fold": fold}, status="TERMINATED",
                               last_result={"val_image_auroc": value})
    trials = [trial("a", 1.0), trial("a", 1.0), trial("b", 1.0), trial("b", 0.9)]
    best = best_so_far(trials)
    assert ties_so_far(trials, best) == {"a": 2}  # fold b's 1.0 is another validation set: not a tie
    line = progress_line(4, 0, 4, 60.0, best, ties=ties_so_far(trials, best))
    assert line.endswith("best val a 1.000 (2 tied) | ties -> val_pixel_auroc")
