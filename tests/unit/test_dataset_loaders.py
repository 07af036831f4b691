"""Dataset loaders on tiny trees written in each dataset's real layout, and their errors."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from conftest import make_mvtec_category, save_png, shared_dataset
from raybench.data import load_dataset, validate_category
from raybench.data.io import load_image, load_mask
from raybench.data.tensors import load_images, load_masks
from raybench.errors import DatasetError


def test_mvtec_layout_finds_splits_masks_and_kinds(mvtec_root):
    cats = load_dataset("mvtec", mvtec_root, "all")
    assert [c.name for c in cats] == ["bottle", "carpet"]
    bottle, carpet = cats
    assert len(bottle.train) == 6 and len(bottle.test) == 6
    assert sum(s.label for s in bottle.test) == 3
    assert all(s.mask_path.name == f"{s.path.stem}_mask.png" for s in bottle.test if s.label)
    assert bottle.kind == "object" and carpet.kind == "texture"


def test_category_selection_and_unknown_names(mvtec_root):
    assert [c.name for c in load_dataset("mvtec", mvtec_root, "carpet")] == ["carpet"]
    with pytest.raises(DatasetError, match="unknown category"):
        load_dataset("mvtec", mvtec_root, "bottle,zebra")


def test_missing_mask_is_named(mvtec_root):
    victim = mvtec_root / "bottle" / "ground_truth" / "scratch" / "001_mask.png"
    victim.unlink()
    with pytest.raises(DatasetError, match=r"test/scratch/001\.png.*no mask"):
        load_dataset("mvtec", mvtec_root, "bottle")


def test_corrupt_image_is_named_by_validation(mvtec_root):
    bad = mvtec_root / "bottle" / "test" / "good" / "002.png"
    bad.write_bytes(b"not a png at all")
    (cat,) = load_dataset("mvtec", mvtec_root, "bottle")
    with pytest.raises(DatasetError, match=r"002\.png: cannot read image"):
        validate_category(cat)


def test_empty_category_and_wrong_layout(tmp_path):
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no training images"):
        load_dataset("folder", tmp_path, "empty")
    with pytest.raises(DatasetError, match="data root not found"):
        load_dataset("mvtec", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="needs --data-root"):
        load_dataset("mvtec", None)


def test_test_set_without_anomalies_is_rejected(tmp_path):
    make_mvtec_category(tmp_path, "plain", n_bad=0)
    with pytest.raises(DatasetError, match="both good and anomalous"):
        load_dataset("folder", tmp_path)


def test_folder_accepts_a_single_category_folder(mvtec_root):
    (cat,) = load_dataset("folder", mvtec_root / "bottle")
    assert cat.name == "bottle" and cat.dataset == "folder"


def test_grayscale_16bit_and_odd_sizes_become_rgb_squares(tmp_path):
    gray16 = (np.linspace(0, 65535, 30 * 50).reshape(30, 50)).astype(np.uint16)
    p16 = tmp_path / "g16.png"
    Image.fromarray(gray16).save(p16)
    arr = load_image(p16, 16)
    assert arr.shape == (3, 16, 16) and arr.dtype == np.float32
    assert 0.0 <= arr.min() < 0.05 and 0.95 < arr.max() <= 1.0  # scaled by 16-bit depth, not 255
    assert np.allclose(arr[0], arr[1]) and np.allclose(arr[1], arr[2])
    p8 = save_png(tmp_path / "g8.png", np.full((70, 20), 255, np.uint8))
    assert load_image(p8, 8).min() == pytest.approx(1.0)


def test_masks_are_binary_after_resize(tmp_path):
    m = np.zeros((40, 40), np.uint8)
    m[10:30, 10:30] = 1  # some datasets store 1 instead of 255
    path = save_png(tmp_path / "m.png", m)
    out = load_mask(path, 20)
    assert set(np.unique(out)) == {0, 1} and out.sum() == 100


def test_mvtec3d_rgb_layout(tmp_path):
    root = tmp_path / "mvtec3d"
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    for i in range(3):
        save_png(root / "cookie" / "train" / "good" / "rgb" / f"{i:03d}.png", img())
        save_png(root / "cookie" / "test" / "good" / "rgb" / f"{i:03d}.png", img())
        save_png(root / "cookie" / "test" / "crack" / "rgb" / f"{i:03d}.png", img())
        save_png(root / "cookie" / "test" / "crack" / "gt" / f"{i:03d}.png", np.eye(24, dtype=np.uint8) * 255)
    (cat,) = load_dataset("mvtec3d", root)
    assert len(cat.train) == 3 and sum(s.label for s in cat.test) == 3
    assert all(s.mask_path.parent.name == "gt" for s in cat.test if s.label)


def test_visa_split_csv(tmp_path):
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    rng = np.random.default_rng(0)
    for i in range(4):
        rel = f"candle/Data/Images/Normal/{i:04d}.JPG"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / rel, format="JPEG")
        rows.append(f"candle,{'train' if i < 2 else 'test'},normal,{rel},")
    for i in range(2):
        rel, mrel = f"candle/Data/Images/Anomaly/{i:04d}.JPG", f"candle/Data/Masks/Anomaly/{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / rel, format="JPEG")
        save_png(root / mrel, np.eye(20, dtype=np.uint8))  # VisA masks use small non-zero values
        rows.append(f"candle,test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    (cat,) = load_dataset("visa", root)
    assert len(cat.train) == 2 and len(cat.test) == 4 and sum(s.label for s in cat.test) == 2
    assert load_masks([s for s in cat.test if s.label], 20).sum() == 2 * 20


def test_demo_is_deterministic_and_has_textures_and_an_object(tmp_path, demo_root):
    from raybench.data.demo import ensure_demo
    other = ensure_demo(tmp_path / "again")
    digest = lambda root: hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.png")))).hexdigest()
    assert digest(other) == digest(demo_root)
    cats = load_dataset("demo", demo_root)
    assert {c.kind for c in cats} == {"texture", "object"} and len(cats) >= 3
    for cat in cats:
        validate_category(cat)
        masks = load_masks([s for s in cat.test if s.label], 64)
        assert (masks.reshape(len(masks), -1).sum(1) > 0).all()  # every defect is visible in its mask


def test_load_images_reports_the_bad_file(mvtec_root):
    (cat,) = load_dataset("mvtec", mvtec_root, "bottle")
    cat.train[2].path.write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="002.png"):
        load_images(cat.train, 16)


@pytest.mark.realdata
def test_real_datasets_load_and_validate():
    for name in ("kolektorsdd", "magnetic_tile"):
        (cat,) = load_dataset("folder", shared_dataset(name), name)
        assert len(cat.train) > 100 and sum(s.label for s in cat.test) > 40
        imgs = load_images(cat.test[:4], 32)
        assert imgs.shape == (4, 3, 32, 32)
