"""The registered pyfunc model's code (MLflow "models from code"): MLflow copies this file into
each model and runs it on load, so no pickled object is ever deserialised."""
from mlflow.models import set_model

from raybench.delivery.registry import DetectorModel

set_model(DetectorModel())
