"""Random crop jitter of METHOD.md §1 (video_fer.data.augment)."""
import pytest
import torch

from video_fer.data.augment import (
    AugmentInputError,
    augment_pair,
    crop_and_resize,
    crop_ranges,
    random_crop_boxes,
    random_crop_jitter,
)


def test_crop_ranges_scale_from_256():
    assert crop_ranges(256) == (224, 200, 223)
    assert crop_ranges(128) == (112, 100, 111)


@pytest.mark.parametrize("size", [256, 128])
def test_boxes_stay_inside_the_central_region_and_cover_the_side_range(size):
    central, min_side, max_side = crop_ranges(size)
    margin = (size - central) // 2
    boxes = random_crop_boxes(4000, size, torch.Generator().manual_seed(0))
    x0, y0, side = boxes.unbind(1)
    assert int(side.min()) == min_side and int(side.max()) == max_side
    assert int(x0.min()) == margin and int(y0.min()) == margin  # the corner reaches the region's edge
    assert int((x0 + side).max()) == margin + central and int((y0 + side).max()) == margin + central
    assert ((x0 >= margin) & (y0 >= margin) & (x0 + side <= margin + central) & (y0 + side <= margin + central)).all()


def test_output_shape_range_dtype_and_seeding():
    frames = torch.randint(0, 256, (6, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = random_crop_jitter(frames, torch.Generator().manual_seed(5))
    assert out.shape == (6, 3, 64, 64) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 and out.max() > 0.9
    again = random_crop_jitter(frames, torch.Generator().manual_seed(5))
    other = random_crop_jitter(frames, torch.Generator().manual_seed(6))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_full_box_is_identity_and_uint8_matches_float():
    frames = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    full = torch.tensor([[0, 0, 32]] * 3)
    out = random_crop_jitter(frames, boxes=full)
    torch.testing.assert_close(out, frames.permute(0, 3, 1, 2).float() / 255, atol=1e-5, rtol=0)


def test_central_box_resizes_a_ramp_exactly():
    size = 256
    columns = torch.arange(size, dtype=torch.float32)
    ramp = (columns / (size - 1)).expand(1, 3, size, size).clone()  # value = x / 255
    ramp_y = ramp.transpose(-1, -2).clone()
    boxes = torch.tensor([[16, 16, 224], [30, 20, 200]])
    out = crop_and_resize(torch.cat([ramp, ramp_y]), boxes)
    j = torch.arange(size, dtype=torch.float32)
    expected_x = (16 + j * 223 / 255) / 255  # output pixel j samples input pixel x0 + j (side-1)/(S-1)
    expected_y = (20 + j * 199 / 255) / 255
    torch.testing.assert_close(out[0, 0, 100], expected_x, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, 0, :, 7], expected_y, atol=1e-5, rtol=0)


def test_pair_crops_are_independent():
    frames = torch.rand(4, 3, 64, 64)
    source, target = augment_pair(frames, frames, torch.Generator().manual_seed(0))
    assert source.shape == target.shape == (4, 3, 64, 64)
    assert not torch.allclose(source, target)  # same pixels in, different crops out


def test_bad_input_is_named():
    with pytest.raises(AugmentInputError, match="frames"):
        random_crop_jitter(torch.zeros(2, 64, 64, dtype=torch.uint8))
    with pytest.raises(AugmentInputError, match="boxes"):
        crop_and_resize(torch.zeros(2, 3, 8, 8), torch.zeros(3, 3))
