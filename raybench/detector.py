"""Detector: a trained scorer plus what it needs to preprocess images; saved as weights only.

A checkpoint is a folder with `detector.json` (method, config, provenance) and
`weights.safetensors`. Loading rebuilds the architecture from the method's config (randomly
initialised, never downloading) and loads the weights into it: no pickled code is ever executed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raybench.config import from_dict, to_dict
from raybench.data.io import image_to_array, read_image, resize_array
from raybench.data.tensors import stack_images
from raybench.methods import get_method
from raybench.models.common import pick_device

CONFIG_FILE, WEIGHTS_FILE = "detector.json", "weights.safetensors"


def _to_hwc(img) -> np.ndarray:
    """A PIL image, array or tensor -> float32 (H, W, 3) in [0, 1]; integer inputs are scaled by
    their bit depth, float inputs are taken as already in [0, 1]."""
    if isinstance(img, Image.Image):
        return image_to_array(img)
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    integer = np.issubdtype(arr.dtype, np.integer)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # channels-first -> HWC
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = arr.astype(np.float32)
    if integer:
        arr /= 65535.0 if arr.max() > 255 else 255.0
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _as_items(images) -> list:
    """One input or many (paths, PIL images, arrays (H,W), (H,W,C), (N,H,W,C), tensors (N,C,H,W))
    -> a list of single images."""
    single = isinstance(images, (str, Path, Image.Image)) or (
        isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim < 4)
    return [images] if single else list(images)


def _as_batch(items: list, size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Single images -> (N,3,S,S) in [0,1] at the evaluation's input precision (stack_images),
    and each input's own (H, W)."""
    out, sizes = [], []
    for img in items:
        arr = read_image(img) if isinstance(img, (str, Path)) else _to_hwc(img)
        sizes.append(arr.shape[:2])
        out.append(np.ascontiguousarray(resize_array(arr, size).transpose(2, 0, 1)))
    return stack_images(out).float(), sizes


class Detector:
    def __init__(self, method: str, config, scorer: torch.nn.Module, meta: dict | None = None):
        self.method, self.config, self.scorer = method, config, scorer
        self.meta = dict(meta or {})
        self.device = next(scorer.parameters(), torch.empty(0)).device

    @property
    def image_size(self) -> int:
        return self.scorer.image_size

    def to(self, device) -> "Detector":
        self.device = torch.device(device)
        self.scorer.to(self.device)
        return self

    @property
    def image_threshold(self) -> float | None:
        """Image scores >= this are called anomalous: the F1-max threshold on the category's
        validation split when the sweep scored the detector (never on test; None if it never was).
        Recalibrate on your own images where the cost of a miss and of a false alarm differ."""
        return self.meta.get("image_threshold")

    @property
    def pixel_threshold(self) -> float | None:
        """Map values >= this mark defect pixels (the pixel-level F1-max threshold, as above)."""
        return self.meta.get("pixel_threshold")

    def verdict(self, score: float) -> str | None:
        """"anomalous" or "normal" by the image cut (validation's, or calibrate's); None without a cut.
        The one verdict rule: predict, serve and the registered pyfunc model all ask here.
        A score that is not finite gets "error", never "normal" (NaN >= cut is False)."""
        if not np.isfinite(score):
            return "error"
        cut = self.image_threshold
        if cut is None or not np.isfinite(cut):
            return None
        return "anomalous" if score >= cut else "normal"

    def map_image(self, amap: np.ndarray) -> Image.Image:
        """An anomaly map as an 8-bit grey picture on one scale for every image: black at half the
        pixel cut, mid-grey at the cut, white at one and a half times it (a map's calm baseline
        sits near black, a defect stands out); without a cut, the map's own span."""
        cut = self.pixel_threshold
        if cut and cut > 0:
            low, high = 0.5 * cut, 1.5 * cut
        else:
            low, high = float(amap.min()), float(amap.max())
            high = high if high > low else low + 1.0
        return Image.fromarray((np.clip((amap - low) / (high - low), 0, 1) * 255).round().astype(np.uint8))

    @torch.no_grad()
    def predict(self, images, batch_size: int = 32, map_size: str = "model"):
        """Image scores (N,) and anomaly maps: `map_size="model"` gives one (N, S, S) array at the
        detector's image size; `"input"` gives a list of (H, W) maps, each at its own input's size
        (bilinear), ready to lay over the image."""
        if map_size not in ("model", "input"):
            raise ValueError(f"map_size must be 'model' or 'input', not {map_size!r}")
        items = _as_items(images)
        self.scorer.eval()
        scores, maps = [], []
        for start in range(0, len(items), batch_size):  # read a batch, score it: memory stays flat
            batch, sizes = _as_batch(items[start:start + batch_size], self.image_size)
            s, m = self.scorer(batch.to(self.device))
            scores.append(s.float().cpu())
            m = m.float().cpu()
            if map_size == "model":
                maps.append(m)
            else:
                maps += [F.interpolate(one[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0].numpy()
                         for one, hw in zip(m, sizes)]
        scores = torch.cat(scores).numpy()
        return (scores, torch.cat(maps).numpy()) if map_size == "model" else (scores, maps)

    def calibrate(self, normal_images, false_alarm_rate: float = 0.01, batch_size: int = 32) -> dict:
        """Set the verdict thresholds from known-good images alone: the image cut flags at most
        `false_alarm_rate` of them, the pixel cut at most that share of their map pixels. For lines
        where defects are too rare to label; replaces the test-split F1-max cuts (save() keeps them)."""
        from raybench.evaluation.metrics import threshold_for_false_alarm_rate
        scores, maps = self.predict(normal_images, batch_size=batch_size)
        self.meta.update(image_threshold=threshold_for_false_alarm_rate(scores, false_alarm_rate),
                         pixel_threshold=threshold_for_false_alarm_rate(maps, false_alarm_rate),
                         threshold_source=f"calibrated on {len(scores)} normal images, "
                                          f"false-alarm rate {false_alarm_rate:g}")
        return {k: self.meta[k] for k in ("image_threshold", "pixel_threshold", "threshold_source")}

    def evaluate(self, data_root=None, dataset: str | None = None, category: str | None = None) -> dict:
        """Recompute the test metrics on the test split this detector was scored on: the split is
        rebuilt from the seed it records and must have the same file list (`test_split_hash`).
        A detector that records no split (not made by a sweep) is scored on the whole test split
        less the `excluded_test` images it trained on."""
        from raybench.data import load_dataset
        from raybench.errors import DatasetError
        from raybench.evaluation.scoring import evaluate_scorer
        from raybench.evaluation.splits import split_from_meta
        dataset = dataset or self.meta.get("dataset")
        category = category or self.meta.get("category")
        if not dataset or not category:
            raise ValueError("this detector does not record its dataset/category: pass them")
        (cat,) = load_dataset(dataset, data_root, [category])
        recorded = self.meta.get("split")
        if recorded:
            split = split_from_meta(cat, recorded)  # crossfit: this run's fold; the few-shot pool left out
            if split.test_split_hash != recorded["test_split_hash"]:
                raise DatasetError(cat.root / cat.name, f"the test split rebuilt here (hash {split.test_split_hash[:12]}) "
                                                        f"is not the one this detector was scored on "
                                                        f"({recorded['test_split_hash'][:12]}): the data differ")
            cat = split.test_view()
        # a checkpoint from before splits existed names the test images it trained on: left out
        metrics = evaluate_scorer(self.scorer, cat, self.device, () if recorded else self.meta.get("excluded_test", []))
        metrics["test_split_hash"] = split.test_split_hash if recorded else None
        return metrics

    # ---- persistence (weights only) ----
    def save(self, folder) -> Path:
        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.scorer.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(
            {"method": self.method, "config": to_dict(self.config), "meta": self.meta}, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder, device=None) -> "Detector":
        from safetensors.torch import load_file
        folder = Path(folder)
        spec_json = json.loads((folder / CONFIG_FILE).read_text())
        spec = get_method(spec_json["method"])
        config = from_dict(spec.config_cls, spec_json["config"], method=spec.name)
        # the architecture only: weights come from the checkpoint, so never download them
        arch_config = from_dict(spec.config_cls, {**spec_json["config"], "weights": "random"})
        scorer = spec.build(arch_config)
        state = load_file(str(folder / WEIGHTS_FILE))
        # checkpoints saved before the normalisation was: ImageNet's, which rebuilt ResNets also get
        for key, value in scorer.state_dict().items():
            if key.endswith(("normalise.mean", "normalise.std")):
                state.setdefault(key, value)
        _resize_buffers(scorer, state)
        scorer.load_state_dict(state, strict=True)
        det = cls(spec.name, config, scorer, spec_json.get("meta"))
        return det.to(pick_device(device))


def _resize_buffers(module: torch.nn.Module, state: dict) -> None:
    """Buffers whose size is data-dependent (a PatchCore memory bank) take the checkpoint's shape."""
    for name, buf in list(module.named_buffers()):
        if name in state and state[name].shape != buf.shape:
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            setattr(owner, name.rsplit(".", 1)[-1], torch.empty_like(state[name]))
