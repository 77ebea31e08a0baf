"""Synthetic facial actions, head motion and the embedded demo cache (video_fer.data.synthetic)."""
import numpy as np
import pytest
import torch

from video_fer.data.synthetic import (
    ACTION_UNITS,
    AU_NAMES,
    MIRROR_68,
    action_field,
    animate_faces,
    build_animated_cache,
    build_demo_cache,
    carry_points,
    compose_fields,
    demo_faces,
    flow_to_color,
    identity_head_motion,
    pose_field,
    template_landmarks,
)
from video_fer.errors import CacheError
from video_fer.models.warp import warp

SIZE = 96


def textured_faces(batch, size=SIZE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, size // 8, size // 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_no_action_and_no_motion_leave_the_image_unchanged():
    faces = textured_faces(3)
    out = animate_faces(faces, au_intensities=torch.zeros(3, len(AU_NAMES)), head_motion=identity_head_motion(3))
    torch.testing.assert_close(out.target, faces, atol=1e-5, rtol=0)
    assert out.total_field.abs().max() < 1e-6
    torch.testing.assert_close(out.landmarks, template_landmarks(3, SIZE), atol=1e-3, rtol=0)


def test_shapes_and_determinism_per_seed():
    faces = textured_faces(4)
    first = animate_faces(faces, torch.Generator().manual_seed(7))
    again = animate_faces(faces, torch.Generator().manual_seed(7))
    other = animate_faces(faces, torch.Generator().manual_seed(8))
    assert first.target.shape == (4, 3, SIZE, SIZE)
    assert first.action_field.shape == first.pose_field.shape == first.total_field.shape == (4, 2, SIZE, SIZE)
    assert first.au_intensities.shape == (4, len(AU_NAMES)) and first.head_motion.shape == (4, 6)
    assert first.landmarks.shape == (4, 68, 2)
    assert torch.equal(first.target, again.target) and torch.equal(first.au_intensities, again.au_intensities)
    assert not torch.equal(first.target, other.target)
    assert ((first.au_intensities == 0) | (first.au_intensities >= 0.3)).all() and first.au_intensities.max() <= 1


@pytest.mark.parametrize("name", AU_NAMES)
def test_each_action_moves_only_pixels_near_its_landmarks(name):
    size = 128
    intensities = torch.zeros(1, len(AU_NAMES))
    intensities[0, AU_NAMES.index(name)] = 1.0
    field = action_field(intensities, size)[0] * (size - 1) / 2  # pixels, (2, S, S)
    magnitude = field.norm(dim=0)
    landmarks = template_landmarks(1, size)[0]
    anchors, reach = [], []
    for bump in ACTION_UNITS[name]:
        sides = [bump.anchor] + ([tuple(int(MIRROR_68[i]) for i in bump.anchor)] if bump.mirror else [])
        for indices in sides:
            anchors.append(landmarks[list(indices)].mean(0))
            reach.append(4 * max(bump.sigma) * size + 0.1 * size)  # 4 sigma + the largest displacement
    anchors, reach = torch.stack(anchors), torch.tensor(reach)
    axis = torch.arange(size, dtype=torch.float32)
    pixels = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1)  # (S, S, 2) x, y
    distance = (pixels[:, :, None] - anchors).norm(dim=-1)  # (S, S, bumps)
    near = (distance < reach).any(-1)
    assert magnitude.max() > 0.8  # the action moves something by most of a pixel at 128 px
    assert magnitude[~near].max() < 0.02  # and nothing far from its landmarks


def test_a_feature_arrives_exactly_at_its_displaced_position():
    size = 128
    intensities = torch.zeros(1, len(AU_NAMES))
    intensities[0, AU_NAMES.index("AU2")] = 1.0
    field = action_field(intensities, size)[0] * (size - 1) / 2
    bump = ACTION_UNITS["AU2"][0]
    landmarks = template_landmarks(1, size)[0]
    start = landmarks[list(bump.anchor)].mean(0)
    end = start + torch.tensor(bump.displacement) * size
    x, y = end.round().long().tolist()
    sampled_from = torch.tensor([x, y], dtype=torch.float32) + field[:, y, x]
    assert torch.allclose(sampled_from, start + (torch.tensor([x, y]) - end), atol=0.35)  # target(end) shows source(start)


def test_pure_shift_gives_a_constant_pose_field_and_moves_landmarks():
    motion = identity_head_motion(1)
    motion[0, 2], motion[0, 3] = 4.0, -2.0  # pixels of a 256 px crop
    field = pose_field(motion, 256)
    torch.testing.assert_close(field[0, 0], torch.full((256, 256), -4 * 2 / 255), atol=1e-6, rtol=0)
    torch.testing.assert_close(field[0, 1], torch.full((256, 256), 2 * 2 / 255), atol=1e-6, rtol=0)
    points = torch.tensor([[[100.0, 120.0], [30.0, 200.0]]])
    torch.testing.assert_close(carry_points(points, field), points + torch.tensor([4.0, -2.0]), atol=1e-3, rtol=0)


def test_total_field_is_actions_then_head_motion():
    faces = textured_faces(2, 64)
    out = animate_faces(faces, torch.Generator().manual_seed(1))
    torch.testing.assert_close(compose_fields(torch.zeros_like(out.pose_field), out.pose_field), out.pose_field)
    two_steps = warp(warp(faces, out.action_field), out.pose_field)  # actions, then head motion
    inside = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert (two_steps - out.target)[inside].abs().mean() < 0.01  # equal up to double interpolation
    assert (warp(faces, out.pose_field) - out.target)[inside].abs().mean() > 2 * (two_steps - out.target)[inside].abs().mean()


def test_flow_colours():
    flow = torch.zeros(1, 2, 2, 2)
    flow[0, 0, 0, 0] = 1.0  # +x: red
    colour = flow_to_color(flow)
    torch.testing.assert_close(colour[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(colour[0, :, 1, 1], torch.ones(3))  # still: white


def test_demo_faces_are_aligned_like_the_template():
    faces = demo_faces(64, mirrored=True)
    assert faces.crops.shape == (4, 3, 64, 64) and faces.canvases.shape[-1] == 80
    assert faces.identities == ["astronaut", "astronaut", "grace_hopper", "grace_hopper"]
    eyes = faces.landmarks[:, 36:48].reshape(4, 2, 6, 2).mean(2)
    template_eyes = template_landmarks(1, 64)[0, 36:48].reshape(2, 6, 2).mean(1)
    assert (eyes - template_eyes).norm(dim=-1).max() < 2.0  # pixels at 64 px
    assert faces.crops.std() > 0.1  # real photo content, not padding


def test_build_demo_cache_writes_a_readable_cache_with_labels(tmp_path):
    cache = build_demo_cache(tmp_path / "demo", size=64, frames_per_track=5, tracks_per_identity=2, seed=3)
    assert len(cache.tracks) == 4
    assert {t.identity for t in cache.tracks} == {"astronaut", "grace_hopper"}
    track = cache.tracks[0]
    assert track.num_frames == 5 and cache.size == 64
    frames = cache.read_frames(track.track_id, [0, 4])
    assert frames.shape == (2, 64, 64, 3) and frames.dtype == torch.uint8 and frames.float().std() > 10
    arrays = cache.track_arrays(track.track_id)
    assert arrays["au_intensities"].shape == (5, len(AU_NAMES)) and list(arrays["au_names"]) == list(AU_NAMES)
    assert arrays["head_motion"].shape == (5, 6) and arrays["landmarks_aligned"].shape == (5, 68, 2)
    video = tmp_path / "demo" / track.path
    written_at = video.stat().st_mtime_ns
    again = build_demo_cache(tmp_path / "demo", size=64, frames_per_track=5, tracks_per_identity=2, seed=3)
    assert [t.track_id for t in again.tracks] == [t.track_id for t in cache.tracks]
    assert np.array_equal(again.track_arrays(track.track_id)["head_motion"], arrays["head_motion"])
    assert video.stat().st_mtime_ns == written_at  # reused, not rewritten
    with pytest.raises(CacheError, match="other settings"):
        build_demo_cache(tmp_path / "demo", size=64, frames_per_track=6, tracks_per_identity=2, seed=3)


def test_build_animated_cache_takes_any_faces_and_turns_views_per_identity(tmp_path):
    faces = demo_faces(64, mirrored=True)  # astronaut, astronaut (mirrored), grace_hopper, grace_hopper (mirrored)
    names = ["a", "a", "b", "b"]
    cache = build_animated_cache(tmp_path / "faces", faces.crops, faces.landmarks, names, frames_per_track=4,
                                 tracks_per_identity=3, seed=1, settings={"faces": "demo"})
    assert sorted(t.identity for t in cache.tracks) == ["a"] * 3 + ["b"] * 3
    first = cache.read_frames("a__t0000", [0]).float()
    second = cache.read_frames("a__t0001", [0]).float()  # the next track animates the mirrored view
    mirrored_first = cache.read_frames("a__t0000", [0]).float().flip(2)
    assert (second - mirrored_first).abs().mean() < (second - first).abs().mean()
    with pytest.raises(CacheError, match="other settings"):
        build_animated_cache(tmp_path / "faces", faces.crops, faces.landmarks, names, frames_per_track=4,
                             tracks_per_identity=3, seed=1, settings={"faces": "other"})
