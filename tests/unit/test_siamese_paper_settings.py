"""The Siamese U-Net paper's remaining elements: stage 2 samples from the anomalies stage 1 employed,
and the few-shot normal setting (16 normal training images) is a config field and a leaderboard row
of its own. Tiny real fits: demo data, the smoke budget's lite0 with random weights, 64 px."""
from __future__ import annotations

import pytest
import torch

from raybench.config import from_dict
from raybench.data import load_dataset
from raybench.errors import ConfigError
from raybench.methods import get_method
from raybench.methods.siamese_unet import draw_normal_shots, variant

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def disc(tmp_path_factory):
    (cat,) = load_dataset("demo", tmp_path_factory.mktemp("demo"), ["disc"])
    return cat


def smoke_config(**changes):
    spec = get_method("siamese-unet")
    return from_dict(spec.config_cls, {**spec.budgets["smoke"], "weights": "random", **changes})


@pytest.mark.parametrize("source", ["synthetic", "real"])
def test_stage2_samples_from_the_anomalies_stage1_employed(disc, source):
    config = smoke_config(anomaly_source=source, n_anomalies=4, epochs1=2, epochs2=2)
    info = get_method("siamese-unet").fit(config, disc, CPU).info
    stage1, stage2 = info["stage1_pools"], info["stage2_pools"]
    assert len(stage1) == 2 and len(stage2) == 2 and all(stage1 + stage2)
    assert set(stage2) <= set(stage1)  # every stage-2 pool is one stage 1 trained on
    assert stage2 == [stage1[-1]] * 2
    if source == "synthetic":
        assert stage1[0] != stage1[1]  # stage 1 still redraws its synthetic pool per epoch


def test_fresh_stage2_pools_are_the_switch_away(disc):
    config = smoke_config(anomaly_source="synthetic", n_anomalies=4, epochs1=1, epochs2=2, stage2_anomalies="fresh")
    info = get_method("siamese-unet").fit(config, disc, CPU).info
    assert not set(info["stage2_pools"]) & set(info["stage1_pools"])
    assert info["stage2_pools"][0] != info["stage2_pools"][1]


def test_sixteen_normal_shots_train_on_sixteen_seeded_images(disc):
    assert len(disc.train) > 16
    picks = draw_normal_shots(disc, 16, seed=3)
    assert len(picks) == 16 and len(set(picks)) == 16 and set(picks) <= set(disc.train)
    assert picks == draw_normal_shots(disc, 16, seed=3) and picks != draw_normal_shots(disc, 16, seed=4)
    assert draw_normal_shots(disc, None, seed=3) == list(disc.train)
    with pytest.raises(ConfigError, match="n_normal_shots"):
        draw_normal_shots(disc, len(disc.train) + 1, seed=0)
    config = smoke_config(anomaly_source="synthetic", n_anomalies=4, n_normal_shots=16)
    info = get_method("siamese-unet").fit(config, disc, CPU).info
    assert info["n_train_used"] == 16
    full = get_method("siamese-unet").fit(smoke_config(anomaly_source="synthetic", n_anomalies=4), disc, CPU).info
    assert full["n_train_used"] == len(disc.train)


def test_few_shot_normal_setting_is_its_own_leaderboard_row():
    rows = {variant(smoke_config(anomaly_source=a, n_normal_shots=n)) for a in ("real", "synthetic") for n in (None, 16)}
    assert rows == {"real", "synthetic", "real 16-shot", "synthetic 16-shot"}
    rd = get_method("rd")
    assert rd.variant(from_dict(rd.config_cls, {"n_normal_shots": 16})) == "16-shot"  # no anomalies: shots alone
    assert rd.variant(from_dict(rd.config_cls, {})) == ""
