"""The methods: each module registers its MethodSpec on import (raybench.methods.base.register);
`get_method` and `method_names` look them up once all built-in ones are imported."""
from raybench.methods import cutswap, patchcore, siamese_unet  # noqa: F401  (they register themselves)
from raybench.methods.base import _REGISTRY, FitResult, MethodSpec  # noqa: F401


def get_method(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        from raybench.errors import ConfigError, unknown_name
        raise ConfigError(unknown_name("method", name, sorted(_REGISTRY)))
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)
