"""Functional API faults (issue 13 item 18): overlapping out=, a perm across groups, a non-generator, meta tensors.

Each call reproduces the fault and asserts the one-line error naming the argument.
"""

from __future__ import annotations

import pytest
import torch

from taxaug import MixBatch
from taxaug import functional as F


def _batch(size: int = 4) -> MixBatch:
    images = torch.rand(size, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    return MixBatch(images, {"y": torch.arange(size) % 2})


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("fn", [F.selective_mixup, F.selective_cutmix])
def test_out_partly_overlapping_the_images_is_refused(fn):
    storage = torch.rand(5, 3, 6, 6)
    images, out = storage[:4], storage[1:]  # out shares three samples with the input
    before = storage.clone()
    with pytest.raises(ValueError, match=r"^out partly overlaps the memory of images") as err:
        fn(MixBatch(images, {}), torch.zeros(4, dtype=torch.long), 0.5, out=out)
    _one_line(err)
    assert torch.equal(storage, before)  # nothing written


def test_out_that_is_the_images_is_refused_and_a_disjoint_view_accepted():
    storage = torch.rand(8, 3, 6, 6)
    images = storage[:4]
    with pytest.raises(ValueError, match=r"^out is the memory of images"):
        F.selective_mixup(MixBatch(images, {}), torch.zeros(4, dtype=torch.long), 0.5, out=images)
    result = F.selective_mixup(MixBatch(images, {}), torch.zeros(4, dtype=torch.long), 0.5, out=storage[4:],
                               generator=torch.Generator().manual_seed(1))
    assert result.batch.images.data_ptr() == storage[4:].data_ptr()


@pytest.mark.parametrize("fn", [F.selective_mixup, F.selective_cutmix])
def test_explicit_perm_across_groups_is_refused_naming_the_pair(fn):
    groups = torch.tensor([0, 0, 1, 1])
    perm = torch.tensor([1, 2, 3, 0])  # 1 -> 2 crosses from group 0 to group 1
    with pytest.raises(ValueError, match=r"^perm pairs sample 1 \(group 0\) with sample 2 \(group 1\)") as err:
        fn(_batch(), groups, 0.5, perm=perm, num_classes=2)
    _one_line(err)


def test_explicit_perm_mixing_an_unknown_sample_is_refused():
    groups = torch.tensor([-1, -1, 1, 1])
    with pytest.raises(ValueError, match=r"^perm pairs sample 0 \(group -1\) with sample 1 \(group -1\)"):
        F.selective_mixup(_batch(), groups, 0.5, perm=torch.tensor([1, 0, 3, 2]), num_classes=2)
    # a perm that respects the groups is used as given
    result = F.selective_mixup(_batch(), groups, 0.5, perm=torch.tensor([0, 1, 3, 2]), num_classes=2)
    assert result.perm.tolist() == [0, 1, 3, 2]


@pytest.mark.parametrize("call", [
    lambda g: F.selective_mixup(_batch(), torch.zeros(4, dtype=torch.long), 0.5, num_classes=2, generator=g),
    lambda g: F.selective_cutmix(_batch(), torch.zeros(4, dtype=torch.long), 0.5, num_classes=2, generator=g),
    lambda g: F.mix(_batch(), num_classes=2, generator=g),
    lambda g: F.mixup_batch(torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 0, 1]), num_classes=2, generator=g),
    lambda g: F.ingroup_permutation(torch.zeros(4, dtype=torch.long), generator=g),
    lambda g: F.mix_aux_chunkwise(torch.rand(4, 2), torch.arange(4), [(0, 1)], generator=g),
])
def test_an_int_generator_is_a_type_error_naming_generator(call):
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator or None, got int 5") as err:
        call(5)
    _one_line(err)


@pytest.mark.parametrize(("name", "call"), [
    ("images", lambda m: MixBatch(torch.rand(4, 3, 6, 6, device=m), {})),
    ("group_ids", lambda m: F.selective_mixup(_batch(), torch.zeros(4, dtype=torch.long, device=m), 0.5)),
    ("group_ids", lambda m: F.ingroup_permutation(torch.zeros(4, dtype=torch.long, device=m))),
    ("perm", lambda m: F.selective_mixup(_batch(), torch.zeros(4, dtype=torch.long), 0.5, num_classes=2,
                                         perm=torch.arange(4, device=m))),
    ("out", lambda m: F.selective_mixup(_batch(), torch.zeros(4, dtype=torch.long), 0.5, num_classes=2,
                                        out=torch.empty(4, 3, 6, 6, device=m))),
    ("x", lambda m: F.cutmix_batch(torch.rand(4, 3, 6, 6, device=m), torch.tensor([0, 1, 0, 1]), num_classes=2)),
    (r"targets\['y'\]", lambda m: MixBatch(torch.rand(4, 3, 6, 6), {"y": torch.zeros(4, dtype=torch.long,
                                                                                     device=m)})),
])
def test_meta_tensors_are_refused_naming_the_argument(name, call):
    with pytest.raises(ValueError, match=rf"^{name} is on the meta device") as err:
        call("meta")
    _one_line(err)
