"""Built-in methods register themselves on import."""
from raybench.methods import patchcore  # noqa: F401
from raybench.methods import cutswap  # noqa: F401
from raybench.methods import siamese_unet  # noqa: F401
from raybench.methods.base import FitResult, MethodSpec, get_method, method_names

__all__ = ["FitResult", "MethodSpec", "get_method", "method_names"]
