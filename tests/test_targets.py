"""Target helpers and box helpers: exact examples and bad inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from taxaug import functional as F


def test_to_dense_targets_example():
    targets = {"s": torch.tensor([2, 0]), "g": torch.tensor([[0.0, 0.25, 0.75], [1.0, 0.0, 0.0]])}
    dense = F.to_dense_targets(targets, {"s": 3})
    assert dense["s"].tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert dense["g"].tolist() == targets["g"].tolist()
    assert F.to_dense_targets({"y": torch.tensor([1])}, 2)["y"].tolist() == [[0.0, 1.0]]


def test_to_dense_targets_bad_inputs():
    with pytest.raises(ValueError, match=r"targets\['s'\] holds class index 3 outside \[0, 3\)"):
        F.to_dense_targets({"s": torch.tensor([3])}, {"s": 3})
    with pytest.raises(ValueError, match=r"num_classes\['s'\] is needed"):
        F.to_dense_targets({"s": torch.tensor([1])}, {"g": 3})
    with pytest.raises(ValueError, match="has 3 classes but num_classes says 4"):
        F.to_dense_targets({"s": torch.zeros(2, 3)}, {"s": 4})
    with pytest.raises(TypeError, match="num_classes must be a dict"):
        F.to_dense_targets({"s": torch.tensor([1])}, [3])


def test_smooth_targets_example_and_errors():
    t = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    out = F.smooth_targets(t, 0.2)
    assert torch.allclose(out, torch.tensor([[0.05, 0.85, 0.05, 0.05], [0.45, 0.45, 0.05, 0.05]]))
    assert torch.allclose(out.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="smoothing must be in"):
        F.smooth_targets(t, 1.5)
    with pytest.raises(ValueError, match="dense float"):
        F.smooth_targets(torch.tensor([1, 2]), 0.1)


def test_mix_targets_uses_one_weight_for_every_task():
    targets = {"a": torch.tensor([1, 2]), "b": torch.tensor([0, 1])}
    mixed = F.mix_targets(targets, torch.tensor([1, 0]), torch.tensor([0.75, 0.25]), {"a": 3, "b": 2})
    assert mixed["a"].tolist() == [[0.0, 0.75, 0.25], [0.0, 0.75, 0.25]]
    assert mixed["b"].tolist() == [[0.75, 0.25], [0.75, 0.25]]


def test_box_helpers_example():
    boxes = torch.tensor([[1, 2, 3, 5], [0, 0, 0, 0], [2, 3, 4, 4]])
    assert F.box_area(boxes).tolist() == [6, 0, 2]
    masks = F.box_masks(boxes, 4, 5)
    assert masks.shape == (3, 1, 4, 5) and masks.dtype == torch.bool
    assert masks[0, 0].nonzero().tolist() == [[1, 2], [1, 3], [1, 4], [2, 2], [2, 3], [2, 4]]
    assert not masks[1].any()
    assert masks.flatten(1).sum(1).tolist() == F.box_area(boxes).tolist()


def test_sample_boxes_cover_the_requested_area_when_unclipped():
    lam = torch.full((2000,), 0.64)
    boxes = F.sample_boxes(lam, 100, 100, generator=torch.Generator().manual_seed(0))
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    inside = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < 100) & (boxes[:, 3] < 100)
    assert bool((heights[inside] == 60).all()) and bool((widths[inside] == 60).all())  # sqrt(1 - 0.64) = 0.6
    assert bool((heights <= 60).all())
    bounded = F.sample_boxes(torch.zeros(500), 100, 100, minmax=(0.2, 0.3),
                             generator=torch.Generator().manual_seed(1))
    sides = torch.cat([bounded[:, 2] - bounded[:, 0], bounded[:, 3] - bounded[:, 1]])
    assert int(sides.max()) <= 30



@pytest.mark.parametrize(("height", "width", "minmax"), [(100, 100, (0.2, 0.3)), (37, 61, (0.1, 0.9)),
                                                          (20, 30, (0.5, 0.5))])
def test_minmax_boxes_draw_each_side_uniformly_inside_the_image_and_ignore_lam(height, width, minmax):
    # timm's cutmix_minmax: sides uniform in [int(low * side), int(high * side)], box inside the image
    n = 6000
    boxes = F.sample_boxes(torch.zeros(n), height, width, minmax=minmax, generator=torch.Generator().manual_seed(2))
    same = F.sample_boxes(torch.full((n,), 0.9), height, width, minmax=minmax,
                          generator=torch.Generator().manual_seed(2))
    assert torch.equal(boxes, same)  # lam plays no part
    y1, x1, y2, x2 = boxes.unbind(1)
    assert bool(((y1 >= 0) & (x1 >= 0) & (y2 <= height) & (x2 <= width)).all())
    for side, size in ((y2 - y1, height), (x2 - x1, width)):
        low, high = int(minmax[0] * size), int(minmax[1] * size)
        counts = torch.bincount(side - low, minlength=high - low + 1)
        assert counts.shape[0] == high - low + 1  # no side outside the range, and both ends occur
        assert int(counts.min()) > 0.7 * n / (high - low + 1) and int(counts.max()) < 1.3 * n / (high - low + 1)
    # the position is uniform over the places the box fits: the top row 0 and the lowest place both occur
    assert int(y1.min()) == 0 and bool((y2 == height).any())


@given(st.integers(1, 20), st.integers(1, 9), st.integers(0, 10_000))
def test_mix_targets_from_indices_matches_the_lerp_of_one_hot_rows_bit_for_bit(size, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, classes, (size,), generator=gen)
    perm = torch.randperm(size, generator=gen)
    lam = torch.rand(size, generator=gen)
    lam[: min(size, 2)] = torch.tensor([0.5, 1.0])[: min(size, 2)]
    from_indices = F.mix_targets({"y": index}, perm, lam, classes)["y"]
    one_hot = F.to_dense_targets({"y": index}, classes)["y"]
    expected = torch.lerp(one_hot[perm], one_hot, lam.unsqueeze(1))
    assert torch.equal(from_indices, expected)
    assert torch.equal(F.mix_targets({"y": one_hot}, perm, lam)["y"], expected)
