"""The Ray Tune side of a sweep: plan (a trial's config, resolved once), driver, trial, search spaces,
per-category Optuna, final seeds, the MLflow run logger, progress, summary, storage."""
