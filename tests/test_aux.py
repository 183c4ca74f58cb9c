"""Chunk-wise metadata mixing: whole chunks from one source, validity masks, bad inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from taxaug import functional as F


@st.composite
def aux_cases(draw):
    size = draw(st.integers(1, 10))
    widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    gap = draw(st.integers(0, 2))  # trailing columns outside every chunk
    chunks = F.aux_chunks_from_components([(f"c{i}", w) for i, w in enumerate(widths)])
    width = chunks[-1][1] + gap
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    aux = torch.rand(size, width, generator=g) + torch.arange(size).unsqueeze(1) * 10  # rows distinguishable
    mask = torch.rand(size, len(chunks), generator=g) > 0.3
    perm = torch.randperm(size, generator=g)
    lam = draw(st.none() | st.floats(0, 1))
    return aux, perm, chunks, mask, lam, seed


@given(aux_cases(), st.booleans())
def test_each_chunk_comes_whole_from_one_source(case, use_mask):
    aux, perm, chunks, mask, lam, seed = case
    before = (aux.clone(), mask.clone())
    out, new_mask = F.mix_aux_chunkwise(aux, perm, chunks, aux_mask=mask if use_mask else None, lam=lam,
                                        generator=torch.Generator().manual_seed(seed))
    covered = torch.zeros(aux.shape[1], dtype=torch.bool)
    for j, (s, e) in enumerate(chunks):
        covered[s:e] = True
        own = (out[:, s:e] == aux[:, s:e]).all(1)
        partner = (out[:, s:e] == aux[perm, s:e]).all(1)
        assert bool((own | partner).all()), "a chunk must be copied whole, never interpolated"
        if use_mask:
            own_ok, partner_ok = mask[:, j], mask[perm, j]
            assert bool(own[own_ok & ~partner_ok].all()), "invalid partner chunk must not be taken"
            assert bool(partner[~own_ok & partner_ok].all()), "invalid own chunk is replaced by a valid one"
            took_partner = partner & ~own
            assert torch.equal(new_mask[took_partner, j], mask[perm, j][took_partner])
    assert torch.equal(out[:, ~covered], aux[:, ~covered]), "columns outside chunks keep own values"
    assert torch.equal(aux, before[0]) and torch.equal(mask, before[1])
    if not use_mask:
        assert new_mask is None


def test_lam_biases_the_pick():
    size = 4000
    aux = torch.arange(size, dtype=torch.float32).unsqueeze(1)
    perm = torch.roll(torch.arange(size), 1)
    for lam, expected in ((0.9, 0.9), (0.2, 0.2)):
        out, _ = F.mix_aux_chunkwise(aux, perm, [(0, 1)], lam=lam, generator=torch.Generator().manual_seed(0))
        kept = float((out == aux).float().mean())
        assert abs(kept - expected) < 0.03
    ones, _ = F.mix_aux_chunkwise(aux, perm, [(0, 1)], lam=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ones, aux)


def test_example_hand_computed():
    aux = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 6.0, 8.0]])
    mask = torch.tensor([[True, False], [True, True]])
    perm = torch.tensor([1, 0])
    out, new_mask = F.mix_aux_chunkwise(aux, perm, [(0, 2), (2, 3)], aux_mask=mask, lam=1.0)
    # lam=1 keeps own chunks wherever own is valid; sample 0's chunk 1 is invalid so it comes from sample 1
    assert out.tolist() == [[1.0, 2.0, 6.0, 9.0], [4.0, 5.0, 6.0, 8.0]]
    assert new_mask.tolist() == [[True, True], [True, True]]


def test_chunks_from_components():
    assert F.aux_chunks_from_components([("spatial", 3), {"name": "temporal", "width": 2}, ("elev", 4)]) == [
        (0, 3), (3, 5), (5, 9)]
    with pytest.raises(ValueError, match="positive int width"):
        F.aux_chunks_from_components([("spatial", 0)])


@pytest.mark.parametrize(("chunks", "match"), [
    ([(0, 3), (2, 4)], "overlap"),
    ([(0, 3), (3, 6)], "<= D = 5"),
    ([(2, 2)], "start < end"),
    ([(0,)], "pair of ints"),
])
def test_bad_chunks(chunks, match):
    with pytest.raises(ValueError, match=match):
        F.mix_aux_chunkwise(torch.rand(2, 5), torch.tensor([1, 0]), chunks)


def test_aux_mask_of_wrong_width():
    with pytest.raises(ValueError, match=r"aux_mask must be bool \(2, 2\)"):
        F.mix_aux_chunkwise(torch.rand(2, 5), torch.tensor([1, 0]), [(0, 2), (2, 5)],
                            aux_mask=torch.ones(2, 3, dtype=torch.bool))


def test_bad_perm():
    with pytest.raises(ValueError, match="perm must be long"):
        F.mix_aux_chunkwise(torch.rand(2, 5), torch.tensor([1, 0, 2]), [(0, 2)])
