"""The MLflow side, read and written through one facade: `from raybench import tracking`.

store.py: addresses, checks, experiments, quote-safe run queries, artifacts.
leaderboard.py: the one ranking rule, the chosen run, winners, the leaderboard table.
ui.py: the MLflow UI's command and URLs."""
from raybench.tracking.store import (  # noqa: F401
    DEFAULT_TRACKING_URI, EXPERIMENT_KIND, EXPERIMENT_PREFIX, METRICS, THRESHOLDS, VAL_METRICS, check_tracking,
    client, download_detector, ensure_experiment, experiment_name, filter_literal, git_commit,
    raybench_experiments, require_existing_store, search_runs, sweep_split_hashes, tracking_uri)
from raybench.tracking.leaderboard import (  # noqa: F401
    RANK_BY, LeaderboardRow, chosen_run, finished_runs, format_leaderboard, latest_sweep_id, leaderboard,
    method_label, rank_key, winners)
