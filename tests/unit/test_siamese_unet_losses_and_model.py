"""Siamese U-Net losses (eq. 1, 2, 6, 7, 8), CPAM and model shapes, against hand-computed values."""
import math

import pytest
import torch

from raybench.models.siamese_unet.cpam import CPAM, ChannelAttention, PositionAttention, pooled_grid
from raybench.models.siamese_unet.losses import (anomaly_map, contrastive_loss, cosine_distance_loss,
                                                 deviation_loss, layer_scalars, stage1_loss)


def vectors(*per_position):
    """Channel vectors at positions along one row -> (1, C, 1, W)."""
    return torch.tensor(per_position, dtype=torch.float32).T[None, :, None, :]


# ---- eq. 1 ----
def test_cosine_distance_loss_hand_computed():
    # layer A: positions (1,0)|(1,0) -> 1-cos 0, and (1,0)|(0,1) -> 1-cos 1: mean 0.5
    # layer B: (3,4)|(4,3) -> cos 24/25, 1-cos 0.04
    teacher = [vectors((1, 0), (1, 0)), vectors((3, 4))]
    student = [vectors((1, 0), (0, 1)), vectors((4, 3))]
    assert cosine_distance_loss(teacher, student, "position").item() == pytest.approx((0.5 + 0.04) / 2, abs=1e-6)


def test_cosine_distance_loss_flatten_reduction_hand_computed():
    # positions (3,0)|(3,0) -> 1-cos 0 and (0,1)|(1,0) -> 1-cos 1: per position, mean 0.5;
    # flattened (C,H,W): teacher [3,0,0,1], student [3,1,0,0] -> cos 9/10, 1-cos 0.1
    teacher, student = [vectors((3, 0), (0, 1))], [vectors((3, 0), (1, 0))]
    assert cosine_distance_loss(teacher, student, "position").item() == pytest.approx(0.5, abs=1e-6)
    assert cosine_distance_loss(teacher, student, "flatten").item() == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ValueError, match="cosine reduction"):
        cosine_distance_loss(teacher, student, "pooled")


# ---- eq. 2 ----
def test_anomaly_map_sums_upsampled_layers():
    # layer A (2x2 grid): 1-cos 1 at the top-left, 0 elsewhere; layer B (1x1): 1-cos 0.04 everywhere
    t_a = torch.zeros(1, 2, 2, 2)
    t_a[0, 0] = 1.0
    s_a = t_a.clone()
    s_a[0, :, 0, 0] = torch.tensor([0.0, 1.0])
    teacher, student = [t_a, vectors((3, 4))], [s_a, vectors((4, 3))]
    amap = anomaly_map(teacher, student, image_size=2, sigma=0)
    expected = torch.tensor([[[1.04, 0.04], [0.04, 0.04]]])
    assert torch.allclose(amap, expected, atol=1e-6)


def test_anomaly_map_smoothing_keeps_a_constant_map():
    # every position at 1-cos 0.04 in both layers: the sum is 0.08 everywhere, and stays so blurred
    teacher = [torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4),
               torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)]
    student = [torch.tensor([4.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4),
               torch.tensor([4.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)]
    amap = anomaly_map(teacher, student, image_size=16, sigma=4)
    assert amap.shape == (1, 16, 16)
    assert torch.allclose(amap, torch.full((1, 16, 16), 0.08), atol=1e-5)


# ---- eq. 6 ----
def test_contrastive_loss_hand_computed():
    # layer A: cos(N, Naug) = 1/sqrt(2), cos(N, A) = 0; layer B: both cosines 1
    normal = [vectors((1, 0)), vectors((1, 0))]
    normal_aug = [vectors((1, 1)), vectors((1, 0))]
    anomalous = [vectors((0, 1)), vectors((2, 0))]
    layer_a = max(0 - 1 / math.sqrt(2) + 1.0, 0)
    layer_b = max(1 - 1 + 1.0, 0)
    assert contrastive_loss(normal, normal_aug, anomalous, 1.0).item() == pytest.approx((layer_a + layer_b) / 2, abs=1e-6)
    # margin 0.5: layer A's hinge is inactive (0 - 0.707 + 0.5 < 0), layer B gives 0.5
    assert contrastive_loss(normal, normal_aug, anomalous, 0.5).item() == pytest.approx(0.25, abs=1e-6)


def test_contrastive_reductions_differ_as_documented():
    # N = (1,0),(1,0); Naug = (0,1),(1,0) (two positions)
    normal, normal_aug = [vectors((1, 0), (1, 0))], [vectors((0, 1), (1, 0))]
    anomalous = [vectors((1, 0), (1, 0))]  # cos(N, A) = 1 either way
    # pooled: N -> (1,0), Naug -> (0.5,0.5): cos 1/sqrt(2)
    pooled = contrastive_loss(normal, normal_aug, anomalous, 0.0, "pooled").item()
    assert pooled == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    # flatten (channel-major): N -> (1,1,0,0), Naug -> (0,1,1,0): cos 1/2
    flat = contrastive_loss(normal, normal_aug, anomalous, 0.0, "flatten").item()
    assert flat == pytest.approx(0.5, abs=1e-6)


# ---- eq. 7 ----
def test_stage1_loss_weights():
    assert stage1_loss(torch.tensor(0.3), torch.tensor(0.4), 2.0, 0.5).item() == pytest.approx(0.8)


# ---- eq. 8 ----
def test_deviation_loss_hand_computed():
    scalars = torch.tensor([[0.2, -0.4], [0.3, 1.5]])
    labels = torch.tensor([0, 1])
    # normal: |0.2|, |-0.4|; anomalous: max(0, 1 - 0.3) = 0.7, max(0, 1 - 1.5) = 0
    assert deviation_loss(scalars, labels, p=1.0).item() == pytest.approx((0.2 + 0.4 + 0.7 + 0.0) / 4)


def test_layer_scalars_max_and_mean():
    # one layer, two positions: 1-cos 0 and 1; a second layer at 1-cos 0.04
    teacher = [vectors((1, 0), (1, 0)), vectors((3, 4))]
    student = [vectors((1, 0), (0, 1)), vectors((4, 3))]
    assert torch.allclose(layer_scalars(teacher, student, "max"), torch.tensor([[1.0, 0.04]]), atol=1e-6)
    assert torch.allclose(layer_scalars(teacher, student, "mean"), torch.tensor([[0.5, 0.04]]), atol=1e-6)


# ---- CPAM (eq. 3-5) ----
@pytest.mark.parametrize("shape", [(2, 16, 4, 4), (1, 8, 3, 5), (2, 32, 8, 8)])
def test_cpam_shapes_and_init(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    cpam = CPAM(shape[1])
    out = cpam(x)
    assert out.shape == x.shape
    # β = γ = 0: both attentions are the identity, so eq. 5 gives X ⊙ X ⊙ X (not X)
    assert torch.allclose(out, x * x * x, atol=1e-6)
    with torch.no_grad():
        cpam.channel.beta.fill_(0.5)
        cpam.position.gamma.fill_(0.5)
    moved = cpam(x)
    assert moved.shape == x.shape and not torch.allclose(moved, x * x * x)


def test_channel_attention_hand_computed():
    # C=2, one position, X = (1, 0): X Xᵀ = [[1,0],[0,0]]; softmax rows [e,1]/(e+1) and [.5,.5]
    att = ChannelAttention()
    with torch.no_grad():
        att.beta.fill_(1.0)
    out = att(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)).flatten()
    e = math.e
    assert out.tolist() == pytest.approx([e / (e + 1) + 1, 0.5], abs=1e-6)


def test_position_attention_pools_keys_above_the_limit():
    assert pooled_grid(8, 8, 1024) == (8, 8)
    assert pooled_grid(64, 64, 1024) == (32, 32)
    torch.manual_seed(0)
    pam = PositionAttention(16, max_positions=16)  # 8x8 input -> keys on a 4x4 grid
    with torch.no_grad():
        pam.gamma.fill_(1.0)
    x = torch.randn(2, 16, 8, 8)
    assert pam(x).shape == x.shape


# ---- model ----
@pytest.mark.parametrize("cpam,block", [(True, "auto"), (False, "auto"), (True, "bottleneck")])
def test_student_restores_every_teacher_layer(cpam, block):
    from raybench.models.siamese_unet import SiameseUNet
    torch.manual_seed(0)
    model = SiameseUNet("resnet18", ["layer1", "layer2", "layer3"], "random", image_size=64,
                        cpam=cpam, bottleneck_blocks=1, decoder_blocks=1, block=block)
    x = torch.rand(2, 3, 64, 64)
    teacher, student = model.features(x)
    assert [t.shape for t in teacher] == [s.shape for s in student]
    assert [t.shape[1] for t in teacher] == [64, 128, 256]
    assert all(p.requires_grad is False for p in model.teacher.parameters())
    scores, maps = model.eval()(x)
    assert scores.shape == (2,) and maps.shape == (2, 64, 64)
    assert torch.allclose(scores, maps.flatten(1).amax(1))


def test_decoder_blocks_mirror_the_teachers_as_in_rd():
    from raybench.models.siamese_unet.model import (FeatureExtractor, ResidualBasic, ResidualBottleneck,
                                                    SiameseUNet, teacher_block_type)
    assert teacher_block_type(FeatureExtractor("resnet18", ["layer1"], "random")) == "basic"
    assert teacher_block_type(FeatureExtractor("resnet50", ["layer1"], "random")) == "bottleneck"
    model = SiameseUNet("resnet18", ["layer1", "layer2", "layer3"], "random", image_size=32,
                        bottleneck_blocks=1, decoder_blocks=1)
    assert all(isinstance(stage.blocks[0], ResidualBasic) for stage in model.decoder)
    model = SiameseUNet("resnet18", ["layer1", "layer2", "layer3"], "random", image_size=32,
                        bottleneck_blocks=1, decoder_blocks=1, block="bottleneck")
    assert all(isinstance(stage.blocks[0], ResidualBottleneck) for stage in model.decoder)
    with pytest.raises(ValueError, match="unknown block"):
        SiameseUNet("resnet18", ["layer1", "layer2", "layer3"], "random", image_size=32, block="dense")


# ---- search spaces ----
@pytest.mark.parametrize("method", ["siamese-unet", "rd"])
def test_search_space_names_fields_of_the_config(method):
    from raybench.sweep.search_space import load_search_space
    space = load_search_space(method)  # the loader checks every name and type against the config
    assert space.distributions
