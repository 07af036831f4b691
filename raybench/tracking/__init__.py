"""The MLflow side, read and written through one facade: `from raybench import tracking`.

store.py: addresses, checks, experiments, quote-safe run queries, artifacts.
leaderboard.py: the one ranking rule, the chosen run, winners, the leaderboard table.
sweeps.py: which sweep a leaderboard shows (complete sweeps; incomplete ones named).
ui.py: the MLflow UI's command and URLs."""
from raybench.tracking.store import (  # noqa: F401
    DEFAULT_TRACKING_URI, EXPERIMENT_KIND, EXPERIMENT_PREFIX, METRICS, THRESHOLDS, VAL_METRICS, check_tracking,
    client, download_detector, ensure_experiment, experiment_name, filter_literal, git_commit,
    raybench_experiments, require_existing_store, search_runs, sweep_split_hashes, tracking_uri)
from raybench.tracking.sweeps import COMPLETE_TAG, is_complete, mark_complete, pick_sweeps  # noqa: F401
from raybench.tracking.leaderboard import (  # noqa: F401
    OBJECTIVE, PIXEL_WEIGHT, RANK_BY, TIE_BREAKER, Leaderboard, LeaderboardRow, chosen_run, finished_runs,
    format_leaderboard, latest_sweep_id, leaderboard, method_label, objective, rank_key, tie_report, winners)
