"""Compatibility only: every model registered by raybench 0.1 loads by running
`from raybench.registry import DetectorModel` (MLflow "models from code" copied that line into the
model). The registry lives in raybench.delivery.registry; this name keeps those models loading."""
from raybench.delivery.registry import DetectorModel  # noqa: F401

__all__ = ["DetectorModel"]
