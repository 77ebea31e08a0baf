"""Backward warping and flow fusion (video_fer.models.warp)."""
import pytest
import torch

from video_fer.models.warp import fuse_flows, identity_grid, warp

SIZE = 16


def constant_flow(batch: int, size: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.zeros(batch, 2, size, size)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def test_identity_grid_is_xy_linspace():
    grid = identity_grid(5)
    assert grid.shape == (1, 5, 5, 2)
    coords = torch.linspace(-1, 1, 5)
    assert torch.equal(grid[0, 2, :, 0], coords)  # x varies along columns
    assert torch.equal(grid[0, :, 3, 1], coords)  # y varies along rows
    assert grid[0, 0, 0].tolist() == [-1.0, -1.0] and grid[0, -1, -1].tolist() == [1.0, 1.0]


def test_zero_field_leaves_image_unchanged():
    image = torch.rand(2, 3, SIZE, SIZE)
    # 1e-5: float32 rounding of the normalised grid, far below one grey level (1/255).
    assert torch.allclose(warp(image, torch.zeros(2, 2, SIZE, SIZE)), image, atol=1e-5)


@pytest.mark.parametrize("shift", [1, 3])
def test_constant_shift_samples_k_pixels_to_the_right_and_below(shift):
    image = torch.rand(2, 3, SIZE, SIZE)
    step = 2 * shift / (SIZE - 1)
    moved_x = warp(image, constant_flow(2, SIZE, step, 0.0))
    assert torch.allclose(moved_x[..., :, : SIZE - shift], image[..., :, shift:], atol=1e-5)
    moved_y = warp(image, constant_flow(2, SIZE, 0.0, step))
    assert torch.allclose(moved_y[..., : SIZE - shift, :], image[..., shift:, :], atol=1e-5)


def test_half_pixel_shift_is_bilinear_average():
    image = torch.rand(1, 1, SIZE, SIZE)
    moved = warp(image, constant_flow(1, SIZE, 1 / (SIZE - 1), 0.0))
    expected = 0.5 * (image[..., :, :-1] + image[..., :, 1:])
    assert torch.allclose(moved[..., :, :-1], expected, atol=1e-5)


def test_sampling_points_outside_are_clamped_to_the_border():
    image = torch.rand(1, 3, SIZE, SIZE)
    moved = warp(image, constant_flow(1, SIZE, 5.0, 0.0))  # every p + T(p) is far right of the image
    assert torch.allclose(moved, image[..., :, -1:].expand_as(image), atol=1e-6)


def test_gradient_reaches_the_flow_not_the_pixels():
    image = torch.rand(2, 3, SIZE, SIZE, requires_grad=True)
    flow = (0.1 * torch.randn(2, 2, SIZE, SIZE)).requires_grad_()
    warp(image, flow).square().sum().backward()
    assert image.grad is None
    assert flow.grad is not None and flow.grad.abs().sum() > 0


def test_warp_rejects_mismatched_shapes_with_names():
    with pytest.raises(ValueError, match="`flow` must be \\(B, 2, H, W\\)"):
        warp(torch.rand(1, 3, SIZE, SIZE), torch.zeros(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="share batch size and H, W"):
        warp(torch.rand(1, 3, SIZE, SIZE), torch.zeros(1, 2, 8, 8))


def test_fusion_weights_are_a_per_pixel_softmax_summing_to_one():
    action_out, pose_out = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 3, SIZE, SIZE)
    fused, action_weight, pose_weight = fuse_flows(action_out, pose_out)
    assert fused.shape == (2, 2, SIZE, SIZE) and action_weight.shape == (2, 1, SIZE, SIZE)
    assert torch.allclose(action_weight + pose_weight, torch.ones_like(action_weight), atol=1e-6)
    expected_action = torch.sigmoid(action_out[:, 2:3] - pose_out[:, 2:3])  # 2-way softmax
    assert torch.allclose(action_weight, expected_action, atol=1e-6)
    expected = action_weight * action_out[:, :2] + pose_weight * pose_out[:, :2]
    assert torch.allclose(fused, expected, atol=1e-6)


def test_fusion_picks_the_field_whose_mask_dominates():
    action_out, pose_out = torch.randn(1, 3, SIZE, SIZE), torch.randn(1, 3, SIZE, SIZE)
    action_out[:, 2, :, : SIZE // 2] = 30.0  # left half: action mask wins
    pose_out[:, 2, :, SIZE // 2:] = 30.0  # right half: pose mask wins
    fused, _, _ = fuse_flows(action_out, pose_out)
    assert torch.allclose(fused[..., : SIZE // 2], action_out[:, :2, :, : SIZE // 2], atol=1e-5)
    assert torch.allclose(fused[..., SIZE // 2:], pose_out[:, :2, :, SIZE // 2:], atol=1e-5)
