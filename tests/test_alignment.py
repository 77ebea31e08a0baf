"""Similarity alignment: closed-form fit, kornia warp conventions, template, real frames."""
import json
import math

import numpy as np
import pytest
import torch
from kornia.geometry.transform import warp_affine

from video_fer.errors import ConfigError
from video_fer.faces.alignment import (
    CANONICAL_LANDMARKS_68,
    AlignmentInputError,
    AlignmentSpec,
    align_faces,
    apply_affine,
    five_points,
    invert_affine,
    normalised_to_pixels,
    similarity_from_points,
)

# iBUG-68 left/right mirror permutation (jaw, brows, nose, eyes, outer and inner lips).
MIRROR_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)


def similarity_matrix(scale: float, angle_degrees: float, tx: float, ty: float) -> torch.Tensor:
    angle = math.radians(angle_degrees)
    a, b = scale * math.cos(angle), scale * math.sin(angle)
    return torch.tensor([[a, -b, tx], [b, a, ty]], dtype=torch.float32)


def gaussian_blob_image(height: int, width: int, centres, sigma: float = 2.0) -> torch.Tensor:
    """(1, 3, H, W) float image, a bright Gaussian blob at each (x, y) centre (pixel-centre origin)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    image = torch.zeros(height, width, dtype=torch.float64)
    for x, y in centres:
        image += torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return image.clamp(0, 1).float().expand(1, 3, height, width).clone()


def intensity_centroid(image: torch.Tensor) -> torch.Tensor:
    """(x, y) intensity-weighted centroid of a (C, H, W) image (channel 0)."""
    weight = image[0].double()
    ys, xs = torch.meshgrid(torch.arange(image.shape[1], dtype=torch.float64),
                            torch.arange(image.shape[2], dtype=torch.float64), indexing="ij")
    return torch.stack([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


def landmarks_for(matrix_crop_to_source: torch.Tensor, size: int = 256) -> torch.Tensor:
    """Landmarks (68, 2) in source pixels of the canonical face placed by a crop->source map."""
    crop_points = normalised_to_pixels(torch.tensor(CANONICAL_LANDMARKS_68, dtype=torch.float32), size)
    return apply_affine(matrix_crop_to_source[None], crop_points[None])[0]


def test_five_points_numpy_and_torch():
    landmarks = np.arange(68 * 2, dtype=np.float32).reshape(68, 2)
    points = five_points(landmarks[None])
    assert points.shape == (1, 5, 2)
    np.testing.assert_allclose(points[0, 0], landmarks[36:42].mean(0))
    np.testing.assert_allclose(points[0, 1], landmarks[42:48].mean(0))
    np.testing.assert_allclose(points[0, 2:], landmarks[[30, 48, 54]])
    torch_points = five_points(torch.from_numpy(landmarks).expand(3, 68, 2))
    assert isinstance(torch_points, torch.Tensor) and torch_points.shape == (3, 5, 2)
    np.testing.assert_allclose(torch_points[2].numpy(), points[0])
    with pytest.raises(AlignmentInputError, match=r"landmarks68: expected shape \(\.\.\., 68, 2\)"):
        five_points(landmarks[:60])


def test_similarity_recovers_a_known_transform_in_a_batch():
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(4, 7, 2, generator=generator) * 200
    truth = torch.stack([similarity_matrix(0.5 + i, 30.0 * i - 40, 10.0 * i, -5.0 * i) for i in range(4)])
    target = apply_affine(truth, source)
    fitted = similarity_from_points(source, target)
    assert fitted.shape == (4, 2, 3) and fitted.dtype == torch.float32
    torch.testing.assert_close(fitted, truth, atol=1e-4, rtol=1e-5)


def test_weighted_fit_matches_weighted_least_squares():
    generator = torch.Generator().manual_seed(1)
    source = torch.rand(3, 5, 2, generator=generator, dtype=torch.float64) * 100
    target = torch.rand(3, 5, 2, generator=generator, dtype=torch.float64) * 100  # not a similarity: residuals remain
    weights = torch.tensor([4.0, 4.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    fitted = similarity_from_points(source, target, weights)
    for i in range(3):  # reference: weighted linear least squares in (a, b, tx, ty), solved by numpy
        x, y = source[i, :, 0].numpy(), source[i, :, 1].numpy()
        ones, zeros = np.ones(5), np.zeros(5)
        design = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
        rhs = np.concatenate([target[i, :, 0].numpy(), target[i, :, 1].numpy()])
        sqrt_w = np.sqrt(np.concatenate([weights.numpy(), weights.numpy()]))
        a, b, tx, ty = np.linalg.lstsq(design * sqrt_w[:, None], rhs * sqrt_w, rcond=None)[0]
        np.testing.assert_allclose(fitted[i].numpy(), [[a, -b, tx], [b, a, ty]], rtol=1e-4, atol=1e-3)
    unweighted = similarity_from_points(source, target)
    heavy = apply_affine(fitted.double(), source) - target
    plain = apply_affine(unweighted.double(), source) - target
    assert heavy[:, :2].norm(dim=-1).mean() < plain[:, :2].norm(dim=-1).mean()  # heavy points fit better


def test_similarity_rejects_degenerate_points():
    source = torch.zeros(2, 5, 2)
    source[0] = torch.rand(5, 2)
    with pytest.raises(AlignmentInputError, match=r"face\(s\) \[1\] have coincident or non-finite points"):
        similarity_from_points(source, torch.rand(5, 2))
    with pytest.raises(AlignmentInputError, match="weights: expected 5 non-negative weights with a positive sum"):
        similarity_from_points(torch.rand(1, 5, 2), torch.rand(5, 2), torch.zeros(5))


def test_invert_affine_round_trip():
    matrices = torch.stack([similarity_matrix(2.0, 25.0, 3.0, -7.0), torch.tensor([[1.0, 0.3, 5.0], [-0.2, 0.8, 1.0]])])
    points = torch.rand(2, 10, 2) * 50
    torch.testing.assert_close(apply_affine(invert_affine(matrices), apply_affine(matrices, points)), points, atol=1e-4, rtol=0)


def test_warped_dot_lands_where_the_matrix_says():
    # Blobs at sub-pixel positions; the crop->source map is a rotated, scaled placement of the mean face.
    dots = [(70.3, 41.7), (95.0, 60.25)]
    image = gaussian_blob_image(120, 160, dots, sigma=2.0)
    crop_to_source = similarity_matrix(0.35, 20.0, 40.0, 10.0)
    landmarks = landmarks_for(crop_to_source)
    aligned = align_faces(image, landmarks[None], AlignmentSpec(size=256))
    # The fit recovers the placement (so the crop is the face), and each dot lands at matrix @ dot.
    torch.testing.assert_close(aligned.matrices[0], invert_affine(crop_to_source[None])[0], atol=2e-3, rtol=1e-4)
    expected = apply_affine(aligned.matrices, torch.tensor([dots]))[0]
    for (x, y), target in zip(dots, expected):
        window = aligned.crops[0][:, int(target[1]) - 20:int(target[1]) + 21, int(target[0]) - 20:int(target[0]) + 21]
        found = intensity_centroid(window) + torch.tensor([int(target[0]) - 20, int(target[1]) - 20])
        assert (found - target.double()).norm() < 0.5, (found, target)


def test_frames_with_several_faces_match_per_face_warps():
    # Two uint8 frames (T, H, W, 3): frame 0 holds three faces, frame 1 one.
    generator = torch.Generator().manual_seed(2)
    frames = (torch.rand(2, 90, 120, 3, generator=generator) * 255).to(torch.uint8)
    placements = [similarity_matrix(0.15, 0.0, 5.0, 5.0), similarity_matrix(0.12, -15.0, 60.0, 30.0),
                  similarity_matrix(0.2, 10.0, 30.0, 20.0), similarity_matrix(0.18, 5.0, 50.0, 10.0)]
    landmarks = torch.stack([landmarks_for(m) for m in placements])
    frame_index = torch.tensor([0, 1, 0, 0])
    spec = AlignmentSpec(size=64)
    packed = align_faces(frames, landmarks, spec, frame_index=frame_index)
    assert packed.crops.shape == (4, 3, 64, 64) and packed.crops.dtype == torch.uint8

    per_face = frames[frame_index].permute(0, 3, 1, 2).float()
    reference = warp_affine(per_face, packed.matrices, (64, 64), align_corners=True)
    assert (packed.crops.int() - reference.round().int()).abs().max() <= 1
    assert packed.crops.float().std() > 30  # the crops hold the noise image, not padding
    as_images = align_faces(per_face / 255, landmarks, spec)
    assert as_images.crops.dtype == torch.float32
    torch.testing.assert_close(as_images.crops * 255, reference, atol=1e-3, rtol=0)


def test_shrinking_a_face_does_not_alias():
    # Vertical stripes with a 2 px period, shrunk 4x: the honest crop is a flat 50% grey.
    stripes = (torch.arange(300) % 2).float().expand(300, 300)
    frames = (stripes * 255).to(torch.uint8)[None, :, :, None].expand(1, 300, 300, 3)
    shrink_4x = landmarks_for(similarity_matrix(4.0, 0.0, 10.0, 10.0), size=64)
    shrink_2x = landmarks_for(similarity_matrix(2.0, 0.0, 100.0, 120.0), size=64)
    spec = AlignmentSpec(size=64)
    aliased = align_faces(frames, shrink_4x[None], spec, frame_index=[0], antialias=False).crops.float()
    assert (aliased - 127.5).abs().mean() > 60  # samples hit the same stripe phase: black or white, not grey
    per_face = align_faces(frames, shrink_4x[None], spec, frame_index=[0]).crops.float()
    packed = align_faces(frames, torch.stack([shrink_4x, shrink_2x]), spec, frame_index=[0, 0]).crops.float()
    for crops in (per_face, packed):
        central = crops[:, :, 8:56, 8:56]
        assert (central - 127.5).abs().max() < 8, f"stripes survive: {central.min()}..{central.max()}"


def test_aligned_landmarks_are_the_matrix_applied_and_fit_the_template():
    crop_to_source = similarity_matrix(0.5, -12.0, 100.0, 20.0)
    landmarks = landmarks_for(crop_to_source)
    aligned = align_faces(torch.zeros(1, 3, 200, 300), landmarks[None])
    torch.testing.assert_close(aligned.landmarks, apply_affine(aligned.matrices, landmarks[None]), atol=1e-4, rtol=0)
    canonical_pixels = normalised_to_pixels(torch.tensor(CANONICAL_LANDMARKS_68), 256)
    torch.testing.assert_close(aligned.landmarks[0], canonical_pixels, atol=0.02, rtol=0)


def test_alignment_errors_name_the_input():
    image = torch.zeros(1, 3, 50, 50)
    with pytest.raises(AlignmentInputError, match=r"landmarks68: expected shape \(B, 68, 2\)"):
        align_faces(image, torch.zeros(1, 5, 2))
    frames = torch.zeros(2, 50, 50, 3, dtype=torch.uint8)
    landmarks = landmarks_for(similarity_matrix(0.1, 0.0, 10.0, 10.0))[None].repeat(3, 1, 1)
    with pytest.raises(AlignmentInputError, match="images: 2 images for 3 faces; give frame_index"):
        align_faces(frames, landmarks)
    with pytest.raises(AlignmentInputError, match=r"frame_index: values must lie in \[0, 1\]"):
        align_faces(frames, landmarks, frame_index=[0, 1, 2])
    bad = landmarks.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(AlignmentInputError, match=r"face\(s\) \[1\] have non-finite points"):
        align_faces(frames, bad, frame_index=[0, 1, 1])
    assert align_faces(frames, torch.zeros(0, 68, 2), AlignmentSpec(size=32), frame_index=[]).crops.shape == (0, 3, 32, 32)


def test_spec_round_trips_through_json_and_rejects_bad_dicts():
    spec = AlignmentSpec(size=128, point_weights=(2, 2, 1, 1, 1))
    restored = AlignmentSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored == spec and restored.size == 128 and restored.point_weights == (2.0, 2.0, 1.0, 1.0, 1.0)
    torch.testing.assert_close(restored.template_pixels(), normalised_to_pixels(torch.tensor(spec.template_points), 128).float())
    with pytest.raises(ConfigError, match=r"alignment: missing key\(s\) \['point_weights'\]"):
        AlignmentSpec.from_dict({"size": 256, "template_points": spec.template_points})
    with pytest.raises(ConfigError, match="AlignmentSpec.template_points: expected 5 finite"):
        AlignmentSpec(template_points=((0.5, 0.5),) * 4)
    with pytest.raises(ConfigError, match="AlignmentSpec.point_weights"):
        AlignmentSpec(point_weights=(1, 1, 1, 1, -1))


def test_canonical_face_is_symmetric_upright_and_inside_every_augmentation_crop():
    canonical = CANONICAL_LANDMARKS_68.astype(np.float64)
    assert canonical.shape == (68, 2) and CANONICAL_LANDMARKS_68.dtype == np.float32
    mirrored = canonical[MIRROR_68] * [-1, 1] + [1, 0]
    np.testing.assert_allclose(mirrored, canonical, atol=2e-4)
    eyes = five_points(canonical)
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-4  # eye line horizontal
    assert eyes[0, 0] < eyes[1, 0] and eyes[0, 1] < eyes[2, 1] < eyes[3, 1]  # upright: eyes above nose above mouth
    # Every 200 px crop inside the central 224 px of 256 contains [40, 216) px: the 68 points must lie there.
    pixels = normalised_to_pixels(canonical, 256)
    assert pixels.min() > 40 and pixels.max() < 215
    lo, hi = pixels.min(0), pixels.max(0)
    np.testing.assert_allclose((lo + hi) / 2, [127.5, 127.5], atol=0.5)  # centred
    np.testing.assert_allclose(np.asarray(AlignmentSpec().template_points), five_points(canonical), atol=1e-5)


def test_real_video_eyes_land_on_the_template(shared_videos, mediapipe_model):
    import decord

    from video_fer.faces import create_landmarker

    video = shared_videos / "single_face.mp4"
    reader = decord.VideoReader(str(video), ctx=decord.cpu(0))
    indices = np.arange(len(reader))  # all 72 frames
    frames = torch.from_numpy(reader.get_batch(indices.tolist()).asnumpy())  # (T, H, W, 3) uint8
    fps = float(reader.get_avg_fps())
    landmarker = create_landmarker("mediapipe", model_path=str(mediapipe_model))
    try:
        landmarker.start_clip(str(video), fps)
        per_frame = landmarker(frames.numpy(), indices, indices / fps)
    finally:
        landmarker.close()
    with_face = [i for i, faces in enumerate(per_frame) if faces]
    assert len(with_face) >= 0.9 * len(indices), f"faces in only {len(with_face)} of {len(indices)} frames"
    landmarks = torch.tensor(np.stack([per_frame[i][0].landmarks for i in with_face]), dtype=torch.float32)

    spec = AlignmentSpec(size=256)
    aligned = align_faces(frames, landmarks, spec, frame_index=with_face)
    assert aligned.crops.shape == (len(with_face), 3, 256, 256) and aligned.crops.dtype == torch.uint8
    eye_error = (five_points(aligned.landmarks)[:, :2] - spec.template_pixels()[:2]).norm(dim=-1)
    assert eye_error.max() < 3.0, f"eye centres up to {eye_error.max():.2f} px from the template"
    torch.testing.assert_close(aligned.landmarks, apply_affine(aligned.matrices, landmarks), atol=1e-3, rtol=0)
    # The face fills the crop: nothing of the central 224 px falls outside the 640x360 frame (no black padding).
    central = aligned.crops[:, :, 16:240, 16:240].float()
    assert (central.sum(1) == 0).float().mean() < 0.01
