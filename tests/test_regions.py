"""The shared region mechanism: points, boxes and the two batched samplers."""
import pytest
import torch

from video_fer.faces.alignment import CANONICAL_LANDMARKS_68, normalised_to_pixels
from video_fer.models import regions
from video_fer.models.regions import (RegionInputError, acnn_points, aha_region_boxes, crop_resize,
                                      landmark_centred_boxes, point_windows, prior_attention_boxes, random_boxes,
                                      relative_boxes)

SIZE = 64


def canonical_landmarks(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    """Mean frontal face in crop pixels, each face shifted a little so faces differ: (B, 68, 2)."""
    base = normalised_to_pixels(torch.from_numpy(CANONICAL_LANDMARKS_68.copy()), size)
    shifts = torch.arange(batch, dtype=torch.float32)[:, None, None] * torch.tensor([1.5, -1.0])
    return base + shifts


def ramp_image(batch: int, height: int, width: int) -> torch.Tensor:
    """Channel 0 holds x, channel 1 holds y (pixel coordinates): (B, 2, H, W)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs, ys]).expand(batch, -1, -1, -1).clone()


def test_acnn_points_are_the_listed_landmarks_then_midpoints_then_cheeks():
    landmarks = canonical_landmarks(3)
    points = acnn_points(landmarks)
    assert points.shape == (3, 24, 2)
    torch.testing.assert_close(points[:, :16], landmarks[:, list(regions.ACNN_LANDMARK_INDICES)])
    # Left eye centre: midpoint of upper lid 37 and lower lid 41 (0-based).
    torch.testing.assert_close(points[:, 16], (landmarks[:, 37] + landmarks[:, 41]) / 2)
    # Right cheek (lower): midpoint of jaw point 13 and mouth corner 54.
    torch.testing.assert_close(points[:, 23], (landmarks[:, 13] + landmarks[:, 54]) / 2)
    assert len(set(regions.ACNN_LANDMARK_INDICES)) == 16


def test_acnn_points_lie_on_the_face_and_cheeks_flank_the_nose():
    landmarks = canonical_landmarks(1)
    points = acnn_points(landmarks)[0]
    low, high = landmarks[0].amin(0), landmarks[0].amax(0)
    assert ((points >= low) & (points <= high)).all()
    nose_x = landmarks[0, 30, 0]
    cheeks = points[20:]
    assert (cheeks[:2, 0] < nose_x).all() and (cheeks[2:, 0] > nose_x).all()


def test_landmark_functions_reject_wrong_shapes_naming_the_input():
    with pytest.raises(RegionInputError, match=r"landmarks: expected a \(B, 68, 2\)"):
        acnn_points(torch.zeros(2, 5, 2))
    with pytest.raises(RegionInputError, match="landmarks"):
        prior_attention_boxes(torch.zeros(68, 2), SIZE)


def test_prior_attention_boxes_bound_landmarks_with_a_10px_margin():
    landmarks = canonical_landmarks(2, size=256)
    boxes = prior_attention_boxes(landmarks, 256)
    assert boxes.shape == (2, 2, 4)
    eye_points = landmarks[:, list(range(17, 27)) + list(range(36, 48))]  # brows and eyes, not the nose
    torch.testing.assert_close(boxes[:, 0, :2], eye_points.amin(1) - 10)
    torch.testing.assert_close(boxes[:, 0, 2:], eye_points.amax(1) + 10)
    torch.testing.assert_close(boxes[:, 1, :2], landmarks[:, 48:].amin(1) - 10)
    torch.testing.assert_close(boxes[:, 1, 2:], landmarks[:, 48:].amax(1) + 10)


def test_boxes_are_clamped_to_the_image():
    landmarks = canonical_landmarks(1, size=256)
    landmarks[0, 17] = torch.tensor([2.0, 3.0])  # a brow point near the top-left corner
    landmarks[0, 57] = torch.tensor([120.0, 252.0])  # the chin-side lip point near the bottom
    boxes = prior_attention_boxes(landmarks, 256, margin=10.0)
    assert boxes[0, 0, 0].item() == -0.5 and boxes[0, 0, 1].item() == -0.5
    assert boxes[0, 1, 3].item() == 255.5


def test_aha_boxes_are_square_and_contain_their_landmarks():
    landmarks = canonical_landmarks(2, size=256)
    boxes = aha_region_boxes(landmarks, 256, margin=4.0)
    assert boxes.shape == (2, len(regions.AHA_REGION_NAMES), 4)
    torch.testing.assert_close(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
    for region, group in enumerate(regions.AHA_REGION_GROUPS):
        points = landmarks[:, list(group)]
        assert (points[..., 0] >= boxes[:, region, None, 0]).all() and (points[..., 0] <= boxes[:, region, None, 2]).all()
        assert (points[..., 1] >= boxes[:, region, None, 1]).all() and (points[..., 1] <= boxes[:, region, None, 3]).all()


def test_ran_fixed_crops_in_pixels():
    boxes = relative_boxes(2, SIZE)
    assert boxes.shape == (2, 5, 4)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([-0.5, -0.5, 47.5, 47.5]))
    torch.testing.assert_close(boxes[1, 2], torch.tensor([7.5, 15.5, 55.5, 63.5]))
    with pytest.raises(RegionInputError, match="fractions"):
        relative_boxes(1, SIZE, ((0.0, 0.0, 1.5, 1.0),))


def test_random_boxes_are_reproducible_inside_the_image_and_in_the_scale_range():
    boxes = random_boxes(4, 6, SIZE, (0.7, 0.9), generator=torch.Generator().manual_seed(3))
    again = random_boxes(4, 6, SIZE, (0.7, 0.9), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(boxes, again)
    side = boxes[..., 2] - boxes[..., 0]
    torch.testing.assert_close(side, boxes[..., 3] - boxes[..., 1])
    assert (side >= 0.7 * SIZE - 1e-4).all() and (side <= 0.9 * SIZE + 1e-4).all()
    assert (boxes[..., :2] >= -0.5).all() and (boxes[..., 2:] <= SIZE - 0.5 + 1e-4).all()
    assert boxes.std(dim=(0, 1)).min() > 0  # positions actually vary


def test_landmark_centred_boxes_centre_on_eye_centres_and_mouth_corners():
    landmarks = canonical_landmarks(2)
    boxes = landmark_centred_boxes(landmarks, SIZE, side_fraction=0.25)
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    torch.testing.assert_close(centres[:, 0], landmarks[:, 36:42].mean(1))
    torch.testing.assert_close(centres[:, 3], landmarks[:, 48])
    torch.testing.assert_close(boxes[..., 2] - boxes[..., 0], torch.full((2, 5), 16.0))


def test_crop_resize_of_the_whole_image_at_its_size_is_the_image():
    images = torch.rand(2, 3, 20, 24)
    whole = relative_boxes(2, (20, 24), ((0.0, 0.0, 1.0, 1.0),))
    torch.testing.assert_close(crop_resize(images, whole, (20, 24))[:, 0], images)


@pytest.mark.parametrize("samples_per_bin", [1, 3])
def test_crop_resize_samples_bin_centres_of_each_box(samples_per_bin):
    images = ramp_image(2, 40, 50)
    boxes = torch.tensor([[[4.0, 6.0, 20.0, 14.0], [10.0, 2.0, 30.0, 32.0]],
                          [[8.0, 8.0, 16.0, 24.0], [0.0, 0.0, 45.0, 36.0]]])
    crops = crop_resize(images, boxes, (4, 8), samples_per_bin=samples_per_bin)
    assert crops.shape == (2, 2, 2, 4, 8)
    # On a linear ramp the (averaged) sample is the bin centre: x0 + (j + 0.5) (x1 - x0) / w.
    j, i = torch.arange(8.0), torch.arange(4.0)
    expected_x = boxes[..., 0, None] + (j + 0.5) * (boxes[..., 2] - boxes[..., 0])[..., None] / 8  # (B, R, 8)
    expected_y = boxes[..., 1, None] + (i + 0.5) * (boxes[..., 3] - boxes[..., 1])[..., None] / 4  # (B, R, 4)
    torch.testing.assert_close(crops[:, :, 0], expected_x[:, :, None, :].expand(-1, -1, 4, -1))
    torch.testing.assert_close(crops[:, :, 1], expected_y[:, :, :, None].expand(-1, -1, -1, 8))


def test_crop_resize_on_a_feature_map_uses_image_pixel_boxes():
    stride = 4
    # A stride-4 map whose cells hold the image x / y of their centres: (j + 0.5) * 4 - 0.5.
    cell_ramp = ramp_image(1, 16, 16) * stride + (stride / 2 - 0.5)
    boxes = torch.tensor([[[10.0, 12.0, 42.0, 36.0]]])
    crops = crop_resize(cell_ramp, boxes, 4, stride=stride)
    j = torch.arange(4.0)
    torch.testing.assert_close(crops[0, 0, 0, 0], 10.0 + (j + 0.5) * 8.0)
    torch.testing.assert_close(crops[0, 0, 1, :, 0], 12.0 + (j + 0.5) * 6.0)


def test_crop_resize_keeps_faces_apart_and_pads_outside_with_zeros():
    images = torch.rand(3, 3, 32, 32)
    boxes = random_boxes(3, 2, 32, generator=torch.Generator().manual_seed(0))
    batched = crop_resize(images, boxes, 8)
    one_by_one = torch.cat([crop_resize(images[b:b + 1], boxes[b:b + 1], 8) for b in range(3)])
    torch.testing.assert_close(batched, one_by_one)
    outside = crop_resize(images, torch.tensor([[[40.0, 40.0, 60.0, 60.0]]]).expand(3, 1, 4), 4)
    assert outside.abs().max() == 0


def test_crop_resize_rejects_boxes_for_another_batch():
    with pytest.raises(RegionInputError, match=r"boxes: expected \(2, R, 4\)"):
        crop_resize(torch.zeros(2, 3, 8, 8), torch.zeros(3, 1, 4), 4)


def test_point_windows_take_cells_one_apart_centred_on_each_point():
    stride, window = 8, 6
    cell_ramp = ramp_image(2, 8, 8) * stride + (stride / 2 - 0.5)  # image px of each cell centre
    # Every window stays inside the map: centres within [23.5, 39.5] px (cells 2.5 .. 4.5).
    points = torch.tensor([[[31.5, 27.5], [30.0, 33.0]], [[35.5, 31.5], [24.0, 38.0]]])
    patches = point_windows(cell_ramp, points, stride, window)
    assert patches.shape == (2, 2, 2, window, window)
    offsets = (torch.arange(window, dtype=torch.float32) - (window - 1) / 2) * stride  # -20 .. 20
    torch.testing.assert_close(patches[:, :, 0], (points[..., 0, None] + offsets)[:, :, None, :].expand(-1, -1, window, -1))
    torch.testing.assert_close(patches[:, :, 1], (points[..., 1, None] + offsets)[:, :, :, None].expand(-1, -1, -1, window))


def test_point_windows_read_zero_outside_the_map():
    feature_map = torch.ones(1, 4, 8, 8)
    corner = point_windows(feature_map, torch.tensor([[[3.5, 3.5]]]), stride=8, window=6)  # cell (0, 0) centre
    # Cells at offsets -2.5 .. 2.5 around cell 0: the first 3 rows/cols fall outside (partly blended at -0.5).
    assert corner[0, 0, 0, 3:, 3:].eq(1).all()
    assert corner[0, 0, 0, :2].abs().max() == 0 and corner[0, 0, 0, :, :2].abs().max() == 0
