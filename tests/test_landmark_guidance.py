"""Landmark-guided fields [ours]: the rigid/residual split of a pair's landmark motion and the loss terms."""
import math

import pytest
import torch

from video_fer.data.augment import augment_pair, augment_pair_and_points, crop_and_resize, crop_points
from video_fer.data.pretrain_dataset import FacePairDataset
from video_fer.data.synthetic import build_demo_cache
from video_fer.errors import ConfigError
from video_fer.faces.alignment import CANONICAL_LANDMARKS_68
from video_fer.train.losses.landmarks import (apply_transform, fit_rigid_transform, landmark_attention_term,
                                         landmark_field_terms, landmark_heatmap, split_landmark_motion)
from video_fer.train.losses.tae import TAELossWeights, check_landmark_readout, uses_landmarks
from video_fer.models.warp import identity_grid

SIZE = 64
MOUTH = list(range(48, 68))


def template(batch: int = 1) -> torch.Tensor:
    return (torch.tensor(CANONICAL_LANDMARKS_68) * SIZE - 0.5).expand(batch, 68, 2).clone()


def similarity(angle_degrees: float, scale: float, shift: tuple[float, float]) -> torch.Tensor:
    """(1, 2, 3) rotation about the crop centre, then a shift (pixels)."""
    angle, centre = math.radians(angle_degrees), (SIZE - 1) / 2
    linear = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    translation = torch.tensor([centre, centre]) - linear @ torch.tensor([centre, centre]) + torch.tensor(shift)
    return torch.cat([linear, translation[:, None]], 1)[None]


def field_of(matrix: torch.Tensor) -> torch.Tensor:
    """The backward-warp field (B, 2, S, S) in normalised units of the pixel map p -> matrix(p)."""
    pixels = (identity_grid(SIZE)[0] + 1) * (SIZE - 1) / 2  # (S, S, 2) pixel coordinates
    moved = apply_transform(matrix, pixels.reshape(1, -1, 2)).reshape(1, SIZE, SIZE, 2)
    return ((moved - pixels) * 2 / (SIZE - 1)).permute(0, 3, 1, 2)


def test_a_pure_head_rotation_has_no_action_residual():
    target = template()
    source = apply_transform(similarity(8.0, 1.05, (2.0, -1.5)), target)
    rigid, residual, moved = split_landmark_motion(source, target)
    assert residual.abs().max() < 1e-4
    assert torch.allclose(rigid, source - target, atol=1e-4) and torch.allclose(moved, source, atol=1e-4)


def test_a_mouth_only_motion_is_all_residual_at_the_mouth():
    target = template()
    source = target.clone()
    source[:, MOUTH] += torch.tensor([0.0, 3.0])  # the mouth opens by 3 px, the head stays
    rigid, residual, _ = split_landmark_motion(source, target)
    assert rigid.abs().max() < 1e-4
    assert torch.allclose(residual[:, MOUTH], torch.tensor([0.0, 3.0]).expand(1, 20, 2), atol=1e-4)
    assert residual[:, :48].abs().max() < 1e-4


def test_rotation_plus_mouth_motion_splits_into_both_parts():
    target = template()
    matrix = similarity(-6.0, 0.97, (1.0, 2.0))
    source = apply_transform(matrix, target)
    source[:, MOUTH] += torch.tensor([1.0, 2.5])
    rigid, residual, _ = split_landmark_motion(source, target)
    expected_rigid = apply_transform(matrix, target) - target
    assert torch.allclose(rigid, expected_rigid, atol=1e-3)
    assert torch.allclose(residual[:, MOUTH], torch.tensor([1.0, 2.5]).expand(1, 20, 2), atol=1e-3)


def test_a_3d_head_turn_is_head_motion_for_rigid3d_but_leaves_a_2d_fit_a_residual():
    from video_fer.faces.head_pose import project_mean_face

    angles = torch.deg2rad(torch.tensor([[0.0, 0.0, 0.0], [4.0, 12.0, 2.0]]))  # pitch, yaw, roll
    faces = project_mean_face(angles, scale=0.4, offset=(32.0, 30.0)).float()  # (2, 68, 2) pixels of a 64 px crop
    source, target = faces[1:], faces[:1]
    nose = [27, 28, 29, 30]
    assert split_landmark_motion(source, target, "rigid3d")[1].abs().max() < 1e-3
    assert split_landmark_motion(source, target, "similarity")[1][:, nose].norm(dim=-1).mean() > 0.5


def test_the_affine_fit_absorbs_a_shear_that_the_similarity_leaves():
    target = template()
    shear = torch.tensor([[[1.0, 0.08, -2.0], [0.0, 0.95, 1.0]]])
    source = apply_transform(shear, target)
    assert split_landmark_motion(source, target, "affine")[1].abs().max() < 1e-3
    assert split_landmark_motion(source, target, "similarity")[1].abs().max() > 0.5
    assert torch.allclose(fit_rigid_transform(target, source, "affine"), shear, atol=1e-4)
    with pytest.raises(ConfigError, match="landmark_fit"):
        split_landmark_motion(source, target, "projective")


@pytest.mark.parametrize("kind", ["rigid3d", "similarity", "affine"])
def test_every_fit_leaves_no_residual_for_a_2d_similarity_motion(kind):
    target = template(2)
    source = apply_transform(similarity(-9.0, 0.9, (3.0, 1.0)).expand(2, 2, 3), target)
    rigid, residual, _ = split_landmark_motion(source, target, kind)
    assert residual.abs().max() < 1e-3 and torch.allclose(rigid, source - target, atol=1e-3)


@pytest.mark.parametrize("penalty", ["l1", "huber"])
def test_the_true_fields_score_zero_and_the_zero_fields_do_not(penalty):
    target = template(2)
    matrix = similarity(5.0, 1.03, (1.5, -1.0))
    source = apply_transform(matrix.expand(2, 2, 3), target)
    true_pose = field_of(matrix).expand(2, -1, -1, -1)
    zero = torch.zeros(2, 2, SIZE, SIZE)
    terms = landmark_field_terms(zero, true_pose, source, target, penalty=penalty)
    assert set(terms) == {"landmark_pose_field", "landmark_action_field"}
    assert terms["landmark_pose_field"].shape == (2,) and terms["landmark_pose_field"].max() < 1e-6
    assert terms["landmark_action_field"].max() < 1e-6  # no action: the zero action field is right
    wrong = landmark_field_terms(zero, zero, source, target, penalty=penalty)
    assert (wrong["landmark_pose_field"] > 1e-4).all()

    moved_mouth = source.clone()
    moved_mouth[:, MOUTH] += torch.tensor([0.0, 2.0])
    opened = landmark_field_terms(zero, true_pose, moved_mouth, target, penalty=penalty)
    assert opened["landmark_pose_field"].max() < 1e-6  # the rigid points did not move
    assert (opened["landmark_action_field"] > 1e-4).all()  # the zero action field misses the mouth


def test_readouts_equal_to_the_split_score_zero_and_a_zero_readout_misses_the_mouth():
    target = template(2)
    source = apply_transform(similarity(4.0, 1.02, (1.0, -0.5)).expand(2, 2, 3), target)
    source[:, MOUTH] += torch.tensor([0.0, 2.0])  # head motion plus a mouth opening
    rigid, residual, _ = split_landmark_motion(source, target)
    scale = 2.0 / (SIZE - 1)
    zero_field = torch.zeros(2, 2, SIZE, SIZE)
    exact = landmark_field_terms(zero_field, zero_field, source, target, readouts=(residual * scale, rigid * scale))
    assert exact["landmark_pose_embedding"].max() < 1e-6 and exact["landmark_action_embedding"].max() < 1e-6
    zeros = torch.zeros(2, 68, 2, requires_grad=True)
    missed = landmark_field_terms(zero_field, zero_field, source, target, readouts=(zeros, zeros))
    assert (missed["landmark_action_embedding"] > 1e-4).all() and (missed["landmark_pose_embedding"] > 1e-4).all()
    missed["landmark_action_embedding"].sum().backward()
    assert zeros.grad[:, MOUTH].abs().sum() > 0  # the readout learns where the residual is
    assert "landmark_action_embedding" not in landmark_field_terms(zero_field, zero_field, source, target)

    far = source.clone()
    far[:, :] = 5 * SIZE  # outside the crop: the fields skip every point, the readouts still compare them
    outside = landmark_field_terms(zero_field, zero_field, far, target, readouts=(zeros, zeros))
    assert outside["landmark_pose_field"].max() == 0.0 and (outside["landmark_pose_embedding"] > 0).all()


def test_the_frame_readout_is_scored_against_the_track_mean_in_any_crop():
    mean = template(2)
    frames = apply_transform(similarity(-5.0, 1.04, (1.5, 0.5)).expand(2, 2, 3), mean)  # the head turned
    frames[1, MOUTH] += torch.tensor([0.0, 2.5])  # the second frame opens its mouth
    source, target = frames[:1].expand(2, 68, 2), frames[1:].expand(2, 68, 2)  # pair 0 and pair 1 alike
    scale = 2.0 / (SIZE - 1)
    mouth = torch.zeros(68, 2)
    mouth[MOUTH] = torch.tensor([0.0, 2.5]) * scale  # the opening, in the frame's pixels
    exact = torch.stack((torch.zeros(68, 2), mouth)).expand(2, 2, 68, 2)  # (B, frame, 68, 2)
    zero_field = torch.zeros(2, 2, SIZE, SIZE)
    elsewhere = apply_transform(similarity(0.0, 0.8, (-6.0, 4.0)).expand(2, 2, 3), mean)  # the mean in another crop
    for track_points in (mean, elsewhere):
        terms = landmark_field_terms(zero_field, zero_field, source, target, frame_readouts=exact,
                                     track_points=track_points)
        assert terms["landmark_action_frame"].shape == (2,) and terms["landmark_action_frame"].max() < 1e-5
    zeros = torch.zeros(2, 2, 68, 2, requires_grad=True)
    missed = landmark_field_terms(zero_field, zero_field, source, target, frame_readouts=zeros, track_points=mean)
    assert (missed["landmark_action_frame"] > 1e-4).all()
    missed["landmark_action_frame"].sum().backward()
    assert zeros.grad[:, 1, MOUTH, 1].abs().min() > 1e-3 and zeros.grad[:, 0].abs().max() < 1e-5  # frame 0: the mean
    assert "landmark_action_frame" not in landmark_field_terms(zero_field, zero_field, source, target)
    with pytest.raises(ValueError, match="track_points"):
        landmark_field_terms(zero_field, zero_field, source, target, frame_readouts=zeros)


def test_the_pose_frame_readout_is_scored_against_the_head_motion_from_the_track_mean():
    mean = template(2)
    turn = similarity(-5.0, 1.04, (1.5, 0.5))
    frames = apply_transform(turn.expand(2, 2, 3), mean)  # both frames: the head turned from the mean
    frames[1, MOUTH] += torch.tensor([0.0, 2.5])  # the second frame also opens its mouth
    source, target = frames[:1].expand(2, 68, 2), frames[1:].expand(2, 68, 2)
    scale = 2.0 / (SIZE - 1)
    motion = (apply_transform(turn, mean[:1])[0] - mean[0]) * scale  # (68, 2) the turn, read at the mean's points
    exact = motion.expand(2, 2, 68, 2)  # the same head motion for both frames: the mouth is not the head's
    zero_field = torch.zeros(2, 2, SIZE, SIZE)
    terms = landmark_field_terms(zero_field, zero_field, source, target, track_points=mean, pose_frame_readouts=exact)
    assert terms["landmark_pose_frame"].shape == (2,) and terms["landmark_pose_frame"].max() < 1e-5
    assert "landmark_action_frame" not in terms
    zeros = torch.zeros(2, 2, 68, 2, requires_grad=True)
    missed = landmark_field_terms(zero_field, zero_field, source, target, track_points=mean, pose_frame_readouts=zeros)
    assert (missed["landmark_pose_frame"] > 1e-3).all()
    missed["landmark_pose_frame"].sum().backward()
    assert zeros.grad[:, :, 0].abs().min() > 1e-3  # the jaw's first point moves with the head in both frames
    both = landmark_field_terms(zero_field, zero_field, source, target, track_points=mean, pose_frame_readouts=exact,
                                frame_readouts=torch.zeros(2, 2, 68, 2))
    assert torch.equal(both["landmark_pose_frame"], terms["landmark_pose_frame"])
    assert (both["landmark_action_frame"] > 1e-4).all()  # frame 1's open mouth is the action part's
    with pytest.raises(ValueError, match="track_points"):
        landmark_field_terms(zero_field, zero_field, source, target, pose_frame_readouts=zeros)


def test_the_landmark_heatmap_peaks_at_its_weighted_points_and_sums_to_one():
    points = torch.tensor([[[10.0, 50.0], [40.0, 20.0]]])  # (x, y) crop pixels of a 64 px crop
    heat = landmark_heatmap(points, torch.tensor([[3.0, 1.0]]), SIZE, 16)  # 4 px cells
    assert heat.shape == (1, 16, 16) and torch.allclose(heat.sum(), torch.tensor(1.0))
    assert divmod(int(heat[0].argmax()), 16) == (12, 2)  # row = y // 4, column = x // 4 of the heavier point
    assert heat[0, 5, 10] > 10 * heat[0, 5, 2]  # the lighter point still has its own bump


def test_the_attention_term_asks_for_the_moving_features_and_reaches_the_maps():
    mean = template(2)
    frames = mean.clone()
    frames[1, MOUTH] += torch.tensor([0.0, 4.0])  # sample 1 opens its mouth; sample 0 is its average face
    _, residual, _ = split_landmark_motion(frames, mean)
    grid = 16
    rows = torch.arange(grid)[:, None].expand(grid, grid)
    mouth_row = int(frames[1, MOUTH, 1].mean() / (SIZE / grid))
    at_mouth = (rows == mouth_row).float()[None, None].repeat(2, 4, 1, 1) * 0.98 + 0.01  # (B, K, h, h)
    at_brows = (rows == mouth_row - 7).float()[None, None].repeat(2, 4, 1, 1) * 0.98 + 0.01
    on_mouth, on_brows = (landmark_attention_term(maps, frames, residual, SIZE) for maps in (at_mouth, at_brows))
    assert on_mouth.shape == (2,) and (on_mouth >= 0).all()
    assert on_mouth[1] < on_brows[1]  # the open mouth wants attention on the mouth ...
    assert on_mouth[1] < on_mouth[0]  # ... more than the neutral face (brows, eyes and mouth evenly) does
    uniform = torch.full((2, 4, grid, grid), 0.5)
    assert torch.allclose(landmark_attention_term(uniform, frames, residual, SIZE),
                          landmark_attention_term(0.2 * uniform, frames, residual, SIZE))  # a distribution: scale-free
    maps = torch.full((2, 4, grid, grid), 0.5, requires_grad=True)
    zero_field = torch.zeros(2, 2, SIZE, SIZE)
    terms = landmark_field_terms(zero_field, zero_field, frames, mean, track_points=mean, attention_maps=maps)
    assert torch.allclose(terms["landmark_attention"], landmark_attention_term(maps, frames, residual, SIZE))
    terms["landmark_attention"].sum().backward()
    assert maps.grad.abs().max() > 0
    assert "landmark_attention" not in landmark_field_terms(zero_field, zero_field, frames, mean)
    hidden = frames.clone()
    hidden[0] = float("nan")  # a frame without landmarks asks nothing; the other keeps its term
    hidden_terms = landmark_attention_term(uniform, hidden, residual, SIZE)
    assert hidden_terms[0] == 0 and torch.allclose(hidden_terms[1], landmark_attention_term(uniform, frames, residual, SIZE)[1])
    with pytest.raises(ValueError, match="track_points"):
        landmark_field_terms(zero_field, zero_field, frames, mean, attention_maps=maps)


def test_the_readout_terms_need_their_readouts_and_the_attention_term_needs_attention_maps():
    check_landmark_readout(TAELossWeights(), False)  # the reference: neither
    check_landmark_readout(TAELossWeights(landmark_action_embedding=10, landmark_pose_embedding=10), True)
    with pytest.raises(ConfigError, match="needs model.landmark_readout: true"):
        check_landmark_readout(TAELossWeights(landmark_action_embedding=10), False)
    with pytest.raises(ConfigError, match="landmark_pose_embedding=0.0"):
        check_landmark_readout(TAELossWeights(landmark_action_embedding=10), True)
    assert uses_landmarks(TAELossWeights(landmark_pose_embedding=1.0))
    check_landmark_readout(TAELossWeights(landmark_action_frame=10), False, frame_readout=True)
    for weights, frame_readout in ((TAELossWeights(landmark_action_frame=10), False), (TAELossWeights(), True)):
        with pytest.raises(ConfigError, match="frame readout and its term go together"):
            check_landmark_readout(weights, False, frame_readout)
    assert uses_landmarks(TAELossWeights(landmark_action_frame=1.0))
    check_landmark_readout(TAELossWeights(landmark_pose_frame=10), False, pose_frame_readout=True)
    for weights, pose_frame_readout in ((TAELossWeights(landmark_pose_frame=10), False), (TAELossWeights(), True)):
        with pytest.raises(ConfigError, match="pose_frame_readout.*landmark_pose_frame"):
            check_landmark_readout(weights, False, pose_frame_readout=pose_frame_readout)
    assert uses_landmarks(TAELossWeights(landmark_pose_frame=1.0))
    assert uses_landmarks(TAELossWeights(landmark_attention=1.0))
    check_landmark_readout(TAELossWeights(landmark_attention=1), False)  # a TAE model: maps to pull
    with pytest.raises(ConfigError, match="model.attention_streams > 0"):
        check_landmark_readout(TAELossWeights(landmark_attention=1), False, attention_maps=False)
    check_landmark_readout(TAELossWeights(), False, attention_maps=False)  # TCAE without the term


def test_the_terms_backpropagate_into_the_fields_and_skip_points_outside():
    target = template(1)
    source = target + torch.tensor([1.0, 0.0])
    action = torch.zeros(1, 2, SIZE, SIZE, requires_grad=True)
    pose = torch.zeros(1, 2, SIZE, SIZE, requires_grad=True)
    terms = landmark_field_terms(action, pose, source, target)
    (terms["landmark_pose_field"] + terms["landmark_action_field"]).sum().backward()
    assert pose.grad.abs().sum() > 0
    far = target.clone()
    far[:, :] = 5 * SIZE  # every point outside the crop: nothing to compare, the term is 0
    assert landmark_field_terms(action, pose, far, target)["landmark_pose_field"].item() == 0.0


def test_crop_points_follow_crop_and_resize():
    size = 32
    ramp_x = torch.arange(size, dtype=torch.float32).expand(size, size)  # pixel value = its x coordinate
    image = torch.stack([ramp_x, ramp_x.T, torch.zeros(size, size)])[None]
    boxes = torch.tensor([[3, 5, 20]])
    cropped = crop_and_resize(image, boxes)
    point = torch.tensor([[[10.0, 12.0]]])
    x, y = crop_points(point, boxes, size)[0, 0].round().long().tolist()
    moved = crop_points(point, boxes, size)[0, 0]
    assert torch.allclose(moved, torch.tensor([(10 - 3) * 31 / 19, (12 - 5) * 31 / 19]))
    assert abs(cropped[0, 0, y, x] - (3 + x * 19 / 31)) < 1e-3 and abs(cropped[0, 1, y, x] - (5 + y * 19 / 31)) < 1e-3


def test_augment_pair_and_points_crops_like_augment_pair():
    frames = torch.randint(0, 255, (6, 64, 64, 3), dtype=torch.uint8)
    points = template(3)
    plain = augment_pair(frames[:3], frames[3:], torch.Generator().manual_seed(4))
    source, target, source_points, target_points = augment_pair_and_points(
        frames[:3], frames[3:], points, points + 1, torch.Generator().manual_seed(4))
    assert torch.equal(plain[0], source) and torch.equal(plain[1], target)
    assert source_points.shape == (3, 68, 2) and not torch.allclose(source_points, points)


def test_the_pair_dataset_delivers_the_cached_landmarks(tmp_path):
    cache = build_demo_cache(tmp_path / "demo", size=64, frames_per_track=4, tracks_per_identity=1)
    track = cache.tracks[0].track_id
    item = FacePairDataset(cache, landmarks=True)[(track, 1, 3)]
    expected = torch.from_numpy(cache.landmarks(track)[[1, 3]])
    assert torch.equal(item["source_landmarks"], expected[0]) and torch.equal(item["target_landmarks"], expected[1])
    track_mean = torch.from_numpy(cache.landmarks(track)).mean(0)
    assert torch.allclose(item["track_landmarks"], track_mean)
    assert "source_landmarks" not in FacePairDataset(cache)[(track, 1, 3)]


def test_landmark_weights_default_off():
    assert not uses_landmarks(TAELossWeights())
    assert uses_landmarks(TAELossWeights(landmark_action_field=1.0))


def test_same_crop_gives_each_pair_one_crop_and_keeps_the_draws():
    frames = torch.randint(0, 255, (4, 64, 64, 3), dtype=torch.uint8)
    source, target = augment_pair(frames, frames, torch.Generator().manual_seed(1), same_crop=True)
    assert torch.equal(source, target)
    independent = augment_pair(frames, frames, torch.Generator().manual_seed(1))
    assert torch.equal(independent[0], source) and not torch.equal(independent[1], target)
    points = template(4)
    *_, source_points, target_points = augment_pair_and_points(frames, frames, points, points,
                                                               torch.Generator().manual_seed(1), same_crop=True)
    assert torch.equal(source_points, target_points)
