"""Validation / test splits, scoring a split, metrics: no Ray, no MLflow."""
