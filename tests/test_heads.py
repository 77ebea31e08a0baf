"""Expression / valence-arousal heads and their losses, on a small stand-in backbone."""
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from video_fer.errors import ConfigError
from video_fer.faces.alignment import CANONICAL_LANDMARKS_68, normalised_to_pixels
from video_fer.models.heads import LinearProbeHead, create_head
from video_fer.models.heads.common import (TAE_TRUNK_CHANNELS, BackboneEmbedding, CosineClassifier, HeadInputError,
                                           SmallRegionEncoder, backbone_channels, cosface_logits)
from video_fer.train.losses.heads import (aha_loss, ccc_loss, concordance_correlation, ran_loss, region_biased_loss,
                                          va_multitask_loss)
from video_fer.models.heads.acnn import ACNNHead
from video_fer.models.heads.aha import AHAHead
from video_fer.models.heads.prior import PriorAttentionHead
from video_fer.models.heads.ran import RANHead
from video_fer.models.heads.va import TwoLevelAttentionVAHead
from video_fer.models.regions import AHA_REGION_NAMES

SIZE = 64
CLASSES = 7
# Stand-in trunk channels at strides 2, 4, 8, 16, 32 (the TAE's are 32, 64, 128, 256, 256).
CHANNELS = {2: 4, 4: 8, 8: 12, 16: 16, 32: 16}
EMBEDDING = 32


@dataclass
class StandInFeatures:
    action_embedding: torch.Tensor
    pose_embedding: torch.Tensor
    attention_maps: torch.Tensor
    feature_maps: list


class StandInBackbone(nn.Module):
    """Five stride-2 conv blocks like the TAE trunk, much narrower, plus a pooled embedding."""

    def __init__(self):
        super().__init__()
        widths = [3] + list(CHANNELS.values())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 4, stride=2, padding=1), nn.BatchNorm2d(b), nn.LeakyReLU(0.2))
            for a, b in zip(widths[:-1], widths[1:])
        )
        self.embed = nn.Linear(widths[-1], EMBEDDING)

    def forward_features(self, images):
        maps, x = [], images
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        embedding = self.embed(x.mean(dim=(-2, -1)))
        return StandInFeatures(embedding, embedding, torch.zeros(images.shape[0], 0, 1, 1), maps)


def face_batch(batch: int = 3, size: int = SIZE, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=generator)
    base = normalised_to_pixels(torch.from_numpy(CANONICAL_LANDMARKS_68.copy()), size)
    landmarks = base + torch.randn(batch, 68, 2, generator=generator) * 0.5
    labels = torch.randint(0, CLASSES, (batch,), generator=generator)
    return images, landmarks, labels


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return StandInBackbone()


def grouped_weight_per_group(weight_grad: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum |grad| of a grouped conv's weight per group (out channels are group-major): (groups,)."""
    return weight_grad.abs().reshape(groups, -1).sum(1)


# --------------------------------------------------------------------------------------
# Losses on hand-made numbers
# --------------------------------------------------------------------------------------
def test_region_biased_loss_formula():
    mu = torch.tensor([[0.50, 0.40, 0.51], [0.30, 0.90, 0.10], [0.60, 0.20, 0.30]])
    # per face: max(0, 0.02 - (max crop - face)) = 0.01, 0, 0.02 + 0.3 = 0.32
    torch.testing.assert_close(region_biased_loss(mu, alpha=0.02), torch.tensor((0.01 + 0.0 + 0.32) / 3))
    torch.testing.assert_close(region_biased_loss(mu[1:2], alpha=0.1), torch.tensor(0.0))


def test_cosface_margin_only_on_the_true_class():
    classifier = CosineClassifier(3, 3, scale=10.0, margin=0.35)
    with torch.no_grad():
        classifier.weight.copy_(torch.eye(3) * torch.tensor([[2.0], [0.5], [1.0]]))  # norms must not matter
    features = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])  # cosines (0.6, 0.8, 0) and (0, 0, 1)
    torch.testing.assert_close(classifier(features), torch.tensor([[6.0, 8.0, 0.0], [0.0, 0.0, 10.0]]))
    with_margin = classifier(features, torch.tensor([0, 2]))
    torch.testing.assert_close(with_margin, torch.tensor([[10 * (0.6 - 0.35), 8.0, 0.0], [0.0, 0.0, 10 * (1 - 0.35)]]))
    torch.testing.assert_close(cosface_logits(torch.tensor([[0.2, -0.4]]), torch.tensor([1]), 64.0, 0.1),
                               torch.tensor([[12.8, -32.0]]))


def test_ccc_on_hand_made_numbers():
    truth = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(concordance_correlation(truth, truth), torch.tensor(1.0))
    torch.testing.assert_close(concordance_correlation(truth + 1, truth), torch.tensor(4 / 7))  # 2(2/3)/(2/3+2/3+1)
    torch.testing.assert_close(concordance_correlation(-truth + 4, truth), torch.tensor(-1.0), atol=1e-6, rtol=0)
    both = torch.stack([truth + 1, truth], dim=1)
    torch.testing.assert_close(ccc_loss(both, torch.stack([truth, truth], dim=1)), torch.tensor((3 / 7 + 0) / 2))


def test_va_multitask_loss_weights_mse_and_ccc():
    class Output:
        valence_arousal = torch.tensor([[0.0, 0.5], [0.5, 0.0], [1.0, -0.5]])
        logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])

    targets = torch.tensor([[0.0, 0.5], [0.5, 0.0], [0.5, -0.5]])
    terms = va_multitask_loss(Output, targets, mse_weight=2.0, ccc_weight=0.5)
    mse = 0.25 / 6
    # valence: p = (0, .5, 1), t = (0, .5, .5): cov 1/12, var_p 1/6, var_t 1/18, mean gap 1/6 -> CCC = 0.6
    ccc_valence = 2 * (1 / 12) / (1 / 6 + 1 / 18 + 1 / 36)
    torch.testing.assert_close(terms["mse"], torch.tensor(mse))
    torch.testing.assert_close(terms["ccc"], torch.tensor((1 - ccc_valence + 0) / 2))
    torch.testing.assert_close(terms["total"], torch.tensor(2 * mse + 0.5 * (1 - ccc_valence) / 2))
    with_expression = va_multitask_loss(Output, targets, expression_labels=torch.tensor([0, 1, 0]), expression_weight=3.0)
    cross_entropy = (2 * math.log(1 + math.exp(-2)) + math.log(2)) / 3
    torch.testing.assert_close(with_expression["expression_cross_entropy"], torch.tensor(cross_entropy))
    torch.testing.assert_close(with_expression["total"], terms["mse"] + terms["ccc"] + 3 * torch.tensor(cross_entropy))


# --------------------------------------------------------------------------------------
# Heads: shapes and attention
# --------------------------------------------------------------------------------------
def test_linear_probe_head(backbone):
    images, _, _ = face_batch()
    head = LinearProbeHead(12, embedding_dim=EMBEDDING)
    output = head(backbone.forward_features(images))
    assert output.logits.shape == (3, 12)
    assert head.linear.bias is None
    with pytest.raises(HeadInputError, match=r"action_embedding must be \(B, 256\)"):
        LinearProbeHead(12)(backbone.forward_features(images))


@pytest.mark.parametrize("use_global_unit", [True, False])
def test_acnn_shapes_and_gates(backbone, use_global_unit):
    images, landmarks, _ = face_batch()
    head = ACNNHead(CLASSES, stride=8, in_channels=CHANNELS[8], patch_hidden_channels=8, global_hidden_channels=8,
                    global_feature_dim=32, fc_dim=64, use_global_unit=use_global_unit, image_size=SIZE)
    output = head(backbone.forward_features(images), landmarks=landmarks)
    assert output.logits.shape == (3, CLASSES)
    assert output.embedding.shape == (3, 24 * 64 + (32 if use_global_unit else 0))
    gates = output.attention["patch_gates"]
    assert gates.shape == (3, 24) and ((gates > 0) & (gates < 1)).all()
    assert ("global_gate" in output.attention) == use_global_unit
    if use_global_unit:
        assert output.attention["global_gate"].shape == (3,)
        assert ((output.attention["global_gate"] > 0) & (output.attention["global_gate"] < 1)).all()


def test_acnn_says_which_input_is_missing(backbone):
    images, landmarks, _ = face_batch()
    head = ACNNHead(CLASSES, in_channels=CHANNELS[8], image_size=SIZE)
    with pytest.raises(HeadInputError, match="ACNNHead: needs `landmarks=`"):
        head(backbone.forward_features(images))
    with pytest.raises(HeadInputError, match=r"no feature map of stride 8 for 96px faces"):
        ACNNHead(CLASSES, in_channels=CHANNELS[8], image_size=96)(backbone.forward_features(images), landmarks=landmarks)


@pytest.mark.parametrize("crops, regions", [("fixed", 5), ("random", 3), ("landmark", 5)])
def test_ran_shapes_and_attention_ranges(crops, regions):
    images, landmarks, labels = face_batch()
    head = RANHead(CLASSES, crops=crops, region_encoder=SmallRegionEncoder(16, (8, 16)), crop_size=24,
                   num_random_crops=3)
    output = head(images=images, landmarks=landmarks)
    assert output.logits.shape == (3, CLASSES)
    assert output.embedding.shape == (3, 32)
    for name in ("self", "relation"):
        weights = output.attention[name]
        assert weights.shape == (3, 1 + regions) and ((weights > 0) & (weights < 1)).all()
    assert output.attention["boxes"].shape == (3, 1 + regions, 4)
    terms = ran_loss(output, labels, alpha=0.05)
    torch.testing.assert_close(terms["total"], terms["cross_entropy"] + terms["region_biased"])


def test_ran_random_crops_are_fresh_in_training_and_fixed_in_evaluation():
    images, _, _ = face_batch(2)
    head = RANHead(CLASSES, crops="random", region_encoder=SmallRegionEncoder(8, (4,)), crop_size=8)
    first, second = (head(images=images).attention["boxes"] for _ in range(2))
    assert not torch.equal(first, second)
    head.eval()
    first, second = (head(images=images).attention["boxes"] for _ in range(2))
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first[:, 0], torch.tensor([-0.5, -0.5, SIZE - 0.5, SIZE - 0.5]).expand(2, 4))


def test_ran_pooling_follows_the_paper():
    head = RANHead(3, region_encoder=SmallRegionEncoder(4, (4,)), feature_dim=4)
    region_features = torch.randn(2, 6, 4)
    from video_fer.models.heads.ran import ran_attention_pool

    pooled, mu, nu = ran_attention_pool(region_features, head.self_attention, head.relation_attention)
    expected_mu = torch.sigmoid(region_features @ head.self_attention.weight[0] + head.self_attention.bias)
    torch.testing.assert_close(mu, expected_mu)
    face_summary = (expected_mu[..., None] * region_features).sum(1) / expected_mu.sum(1, keepdim=True)
    paired = torch.cat([region_features, face_summary[:, None].expand(-1, 6, -1)], -1)
    expected_nu = torch.sigmoid(paired @ head.relation_attention.weight[0] + head.relation_attention.bias)
    torch.testing.assert_close(nu, expected_nu)
    weights = expected_mu * expected_nu
    torch.testing.assert_close(pooled, (weights[..., None] * paired).sum(1) / weights.sum(1, keepdim=True))


def test_prior_attention_shapes():
    images, landmarks, _ = face_batch(size=96)
    head = PriorAttentionHead(CLASSES, eye_crop_size=(16, 48), mouth_crop_size=(16, 32), channels=(8, 16),
                              hidden_dim=32, block_dim=16)
    output = head(images=images, landmarks=landmarks)
    assert output.logits.shape == (3, CLASSES) and output.embedding.shape == (3, 32)
    boxes = output.attention["boxes"]
    assert boxes.shape == (3, 2, 4)
    assert (boxes[:, 0, 3] < boxes[:, 1, 3]).all()  # eye block above the mouth block


@pytest.mark.parametrize("classifier", ["softmax", "cosface"])
def test_aha_shapes_and_spatial_attention_sums_to_one(backbone, classifier):
    images, landmarks, labels = face_batch()
    head = AHAHead(CLASSES, local_stride=8, global_stride=32, local_channels=CHANNELS[8],
                   global_channels=CHANNELS[32], region_size=4, branch_channels=8, feature_dim=16,
                   classifier=classifier, region_margin=4.0, image_size=SIZE)
    output = head(backbone.forward_features(images), landmarks=landmarks, labels=labels)
    regions = len(AHA_REGION_NAMES)
    assert output.logits.shape == (3, CLASSES)
    assert output.region_logits.shape == (3, regions, CLASSES)
    assert output.embedding.shape == (3, 48)
    region_spatial = output.attention["region_spatial"]
    assert region_spatial.shape == (3, regions, 4, 4) and (region_spatial > 0).all()
    torch.testing.assert_close(region_spatial.sum(dim=(-2, -1)), torch.ones(3, regions))
    mixture = output.attention["mixture_spatial"]
    assert mixture.shape == (3, 8, 8)
    torch.testing.assert_close(mixture.sum(dim=(-2, -1)), torch.ones(3))
    if classifier == "cosface":
        head.eval()
        plain = head(backbone.eval().forward_features(images), landmarks=landmarks)
        margined = head(backbone.forward_features(images), landmarks=landmarks, labels=labels)
        true_class = torch.nn.functional.one_hot(labels, CLASSES).bool()
        torch.testing.assert_close(plain.logits[true_class] - margined.logits[true_class], torch.full((3,), 30 * 0.35))
        torch.testing.assert_close(plain.logits[~true_class], margined.logits[~true_class])


@pytest.mark.parametrize("rnn, expressions", [("gru", 0), ("lstm", 5)])
def test_two_level_va_shapes_and_attention(backbone, rnn, expressions):
    images, _, _ = face_batch()
    strides = (4, 8, 16, 32)
    head = TwoLevelAttentionVAHead(strides, [CHANNELS[s] for s in strides], sequence_dim=16, rnn=rnn, rnn_hidden=8,
                                   attention_dim=8, shared_dim=16, num_expressions=expressions, image_size=SIZE)
    output = head(backbone.forward_features(images))
    va = output.valence_arousal
    assert va.shape == (3, 2) and (va.abs() <= 1).all()
    assert (output.logits is None) == (expressions == 0)
    if expressions:
        assert output.logits.shape == (3, expressions)
    torch.testing.assert_close(output.attention["depth"].sum(1), torch.ones(3))
    assert output.attention["depth"].shape == (3, 4)
    for stride in strides:
        spatial = output.attention[f"spatial_s{stride}"]
        assert spatial.shape == (3, SIZE // stride, SIZE // stride)
        torch.testing.assert_close(spatial.sum(dim=(-2, -1)), torch.ones(3))


def test_backbone_channels_reads_strides_without_touching_batchnorm(backbone):
    running_mean = backbone.blocks[0][1].running_mean.clone()
    backbone.train()
    assert backbone_channels(backbone, SIZE) == CHANNELS
    assert backbone.training
    torch.testing.assert_close(backbone.blocks[0][1].running_mean, running_mean)


def test_create_head_builds_by_name_and_rejects_unknown_names():
    assert isinstance(create_head("linear", num_outputs=12), LinearProbeHead)
    pacnn = create_head("pacnn", num_classes=7)
    assert isinstance(pacnn, ACNNHead) and pacnn.global_unit is None
    with pytest.raises(ConfigError, match="unknown head 'vgg'"):
        create_head("vgg")
    with pytest.raises(ConfigError, match="crops: unknown crop mode"):
        RANHead(crops="grid")


# --------------------------------------------------------------------------------------
# Gradients reach every region branch
# --------------------------------------------------------------------------------------
def test_acnn_gradient_reaches_every_patch_unit_and_the_global_unit(backbone):
    images, landmarks, labels = face_batch(4)
    head = ACNNHead(CLASSES, in_channels=CHANNELS[8], patch_hidden_channels=8, global_hidden_channels=8,
                    global_feature_dim=32, fc_dim=64, image_size=SIZE)
    output = head(backbone.forward_features(images), landmarks=landmarks)
    nn.functional.cross_entropy(output.logits, labels).backward()
    for layer in [m for m in head.patch_units.modules() if isinstance(m, nn.Conv2d)]:
        assert (grouped_weight_per_group(layer.weight.grad, 24) > 0).all(), layer
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.global_unit.parameters())
    assert all(p.grad.abs().sum() > 0 for p in backbone.blocks[2].parameters())  # the stride-8 block


def test_aha_gradient_reaches_every_region_branch(backbone):
    images, landmarks, labels = face_batch(4)
    head = AHAHead(CLASSES, local_channels=CHANNELS[8], global_channels=CHANNELS[32], region_size=4,
                   branch_channels=8, feature_dim=16, classifier="cosface", region_margin=4.0, image_size=SIZE)
    output = head(backbone.forward_features(images), landmarks=landmarks, labels=labels)
    terms = aha_loss(output, labels)
    torch.testing.assert_close(terms["total"], terms["cross_entropy"] + terms["region_cross_entropy"])
    terms["total"].backward()
    regions = len(AHA_REGION_NAMES)
    for layer in [head.region_convs[0], head.region_convs[2], head.region_attention]:
        assert (grouped_weight_per_group(layer.weight.grad, regions) > 0).all()
    assert (head.region_classifier.weight.grad.abs().sum(dim=(1, 2)) > 0).all()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_ran_and_prior_gradients_reach_every_part():
    images, landmarks, labels = face_batch(4, size=96)
    ran = RANHead(CLASSES, crops="landmark", region_encoder=SmallRegionEncoder(16, (8,)), crop_size=16)
    ran_loss(ran(images=images, landmarks=landmarks), labels, alpha=0.1)["total"].backward()
    prior = PriorAttentionHead(CLASSES, eye_crop_size=(16, 48), mouth_crop_size=(16, 32), channels=(8,),
                               hidden_dim=16, block_dim=8)
    nn.functional.cross_entropy(prior(images=images, landmarks=landmarks).logits, labels).backward()
    for head in (ran, prior):
        for name, parameter in head.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_va_gradient_reaches_every_depth(backbone):
    images, _, labels = face_batch(4)
    strides = (4, 8, 16, 32)
    head = TwoLevelAttentionVAHead(strides, [CHANNELS[s] for s in strides], sequence_dim=16, rnn_hidden=8,
                                   attention_dim=8, shared_dim=16, num_expressions=CLASSES, image_size=SIZE)
    output = head(backbone.forward_features(images))
    targets = torch.rand(4, 2) * 2 - 1
    va_multitask_loss(output, targets, expression_labels=labels)["total"].backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(block[0].weight.grad.abs().sum() > 0 for block in backbone.blocks[1:])


# --------------------------------------------------------------------------------------
# With the real TAE encoder, when it is there
# --------------------------------------------------------------------------------------
def test_heads_on_the_tae_encoder():
    tae = pytest.importorskip("video_fer.models.tae", reason="video_fer.models.tae (the TAE encoder) not written yet")
    torch.manual_seed(0)
    encoder = tae.FaceActionEncoder(tae.TAEConfig())
    assert backbone_channels(encoder, 256) == TAE_TRUNK_CHANNELS  # the heads' defaults fit the reference TAE
    images, landmarks, labels = face_batch(2, size=256)
    features = encoder.forward_features(images)
    heads = {
        "ran_on_the_encoder": RANHead(CLASSES, region_encoder=BackboneEmbedding(encoder), crop_size=256),
        "linear": LinearProbeHead(CLASSES),
        "acnn": ACNNHead(CLASSES),
        "aha": AHAHead(CLASSES),
        "two_level_va": TwoLevelAttentionVAHead(num_expressions=CLASSES),
    }
    for name, head in heads.items():
        output = head(features, landmarks=landmarks, images=images)
        assert output.embedding.shape[0] == 2, name
        assert (output.logits if output.logits is not None else output.valence_arousal).shape[0] == 2, name
