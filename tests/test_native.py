"""The C kernels (taxaug/_native) and huge-page buffers (taxaug/_memory): same bytes as the torch paths."""

from __future__ import annotations

import os
import platform
import select
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from taxaug import MixBatch, _memory, _native
from taxaug import functional as F
from taxaug.functional import policies as P

image_shapes = st.tuples(st.integers(1, 12), st.integers(1, 4), st.integers(1, 40), st.integers(1, 40))


def _images(shape, dtype, seed, channels_last):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    x = x if dtype == torch.uint8 else (x.to(dtype) / 255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _lam(size, seed):
    lam = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    lam[: min(size, 3)] = torch.tensor([0.5, 0.0, 1.0])[: min(size, 3)]  # ties and both ends
    return lam


def _both_paths(fn):
    fast = fn()
    with _native.disabled():
        assert not _native.available()
        reference = fn()
    return fast, reference


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")
                         and (shutil.which("cc") or shutil.which("gcc"))),
                    reason="the kernels are built where a C compiler is present (checked on linux x86-64)")
def test_kernels_are_built_by_the_install():
    built = _native._library is not None  # built, whether or not TAXAUG_NATIVE=0 turns them off
    assert built, "the C kernels (taxaug/_native/*.c) were not built: pip install -e . needs a C compiler"
    assert _native.kernel_isa() in ("avx2", "scalar")


@given(image_shapes, st.booleans(), st.integers(0, 10_000))
def test_uint8_mixup_kernel_gives_the_torch_bytes(shape, channels_last, seed):
    x = _images(shape, torch.uint8, seed, channels_last)
    groups = torch.randint(0, 3, (shape[0],), generator=torch.Generator().manual_seed(seed))
    lam = _lam(shape[0], seed)
    fast, reference = _both_paths(lambda: F.selective_mixup(
        MixBatch(x, {}), groups, lam, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(fast.perm, reference.perm)
    assert torch.equal(fast.batch.images, reference.batch.images)
    assert fast.batch.images.stride() == reference.batch.images.stride() == x.stride()


@given(image_shapes, st.booleans(), st.booleans(), st.sampled_from([1e-3, 1.0, 1e4]), st.integers(0, 10_000))
def test_float32_mixup_kernel_gives_the_torch_bytes(shape, channels_last, offset, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    whole = torch.randn((shape[0] + 1, *shape[1:]), generator=gen) * scale  # any sign and size, not a 1/255 grid
    whole = whole.contiguous(memory_format=torch.channels_last) if channels_last else whole
    x = whole[1:] if offset else whole[:-1]  # [1:] starts one sample in: rows not 32-byte aligned
    groups = torch.randint(0, 3, (shape[0],), generator=gen)
    lam = _lam(shape[0], seed)
    fast, reference = _both_paths(lambda: F.selective_mixup(
        MixBatch(x, {}), groups, lam, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(fast.perm, reference.perm)
    assert torch.equal(fast.batch.images, reference.batch.images)
    assert fast.batch.images.dtype == torch.float32


def test_uint8_mixup_kernel_on_a_full_size_batch_rounds_ties_to_even():
    x = _images((16, 3, 224, 224), torch.uint8, 0, False)
    lam = torch.full((16,), 0.5)
    fast, reference = _both_paths(lambda: F.selective_mixup(MixBatch(x, {}), torch.zeros(16, dtype=torch.long), lam,
                                                            generator=torch.Generator().manual_seed(1)))
    assert torch.equal(fast.batch.images, reference.batch.images)
    tie = F.selective_mixup(MixBatch(torch.tensor([2, 3], dtype=torch.uint8).view(2, 1, 1, 1), {}),
                            torch.zeros(2, dtype=torch.long), 0.5)
    assert tie.batch.images.flatten().tolist() == [2, 2]  # 2.5 -> 2 both ways


@given(image_shapes, st.sampled_from([torch.uint8, torch.float32, torch.float16, torch.float64]), st.booleans(),
       st.booleans(), st.integers(0, 10_000))
def test_cutmix_paste_kernel_gives_the_torch_bytes(shape, dtype, channels_last, per_sample, seed):
    x = _images(shape, dtype, seed, channels_last)
    groups = torch.randint(0, 2, (shape[0],), generator=torch.Generator().manual_seed(seed))
    lam = _lam(shape[0], seed) if per_sample else 0.4
    fast, reference = _both_paths(lambda: F.selective_cutmix(
        MixBatch(x, {}), groups, lam, per_sample_boxes=per_sample, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(fast.boxes, reference.boxes) and torch.equal(fast.lam, reference.lam)
    assert torch.equal(fast.batch.images, reference.batch.images)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_cutmix_paste_kernel_on_long_rows_gives_the_torch_bytes(dtype, channels_last, seed):
    # rows of 600+ bytes take the kernel's streaming copy (short runs take memcpy); offset views
    # start the rows off 32-byte boundaries
    gen = torch.Generator().manual_seed(seed)
    width = (601, 333, 160, 257)[seed]
    whole = _images((9, 3, 37, width), dtype, seed, channels_last)
    x = whole[1:] if seed % 2 else whole[:-1]
    groups = torch.randint(0, 2, (8,), generator=gen)
    lam = torch.rand(8, generator=gen)
    lam[0] = 0.0  # a box as large as the image
    fast, reference = _both_paths(lambda: F.selective_cutmix(
        MixBatch(x, {}), groups, lam, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(fast.boxes, reference.boxes)
    assert torch.equal(fast.batch.images, reference.batch.images)


def test_kernels_write_into_out_and_leave_the_input_alone():
    x = _images((6, 3, 9, 11), torch.uint8, 3, False)
    snapshot = x.clone()
    out = torch.full_like(x, 7)
    groups = torch.zeros(6, dtype=torch.long)
    mixed = F.selective_mixup(MixBatch(x, {}), groups, 0.3, out=out, generator=torch.Generator().manual_seed(0))
    assert mixed.batch.images.data_ptr() == out.data_ptr()
    cut = F.selective_cutmix(MixBatch(x, {}), groups, 0.3, out=torch.empty_like(x),
                             generator=torch.Generator().manual_seed(0))
    with _native.disabled():
        expected = F.selective_cutmix(MixBatch(x, {}), groups, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cut.batch.images, expected.batch.images)
    assert torch.equal(x, snapshot)


def test_strided_images_take_the_torch_path_and_stay_correct():
    base = _images((5, 3, 12, 20), torch.uint8, 4, False)
    x = base[:, :, :, ::2]  # no sample is one dense block
    assert not _native.sample_blocks_match(x, torch.empty_like(x))
    groups = torch.zeros(5, dtype=torch.long)
    result = F.selective_mixup(MixBatch(x, {}), groups, 0.25, generator=torch.Generator().manual_seed(0))
    expected = F.selective_mixup(MixBatch(x.contiguous(), {}), groups, 0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.batch.images, expected.batch.images)


def test_native_switch_in_the_environment_turns_the_kernels_off():
    probe = "from taxaug import _native; print(_native.available())"
    result = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "TAXAUG_NATIVE": "0"},
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


BIG = 5 * 2**20 // 4  # float32 elements: over the cache's 1 MiB threshold


@pytest.mark.parametrize("numel", [1000, BIG])
def test_cached_buffers_behave_like_torch_buffers(numel):
    x = torch.arange(numel, dtype=torch.float32).view(1, 1, 1, -1).contiguous(memory_format=torch.channels_last)
    copy = _memory.clone(x)
    assert torch.equal(copy, x) and copy.data_ptr() != x.data_ptr()
    assert copy.stride() == x.stride()
    fresh = _memory.empty_like(x.expand(2, 1, 1, numel), dtype=torch.float64, memory_format=torch.contiguous_format)
    assert fresh.dtype == torch.float64 and fresh.shape == (2, 1, 1, numel) and fresh.is_contiguous()
    fresh.fill_(3.0)
    assert float(fresh.sum()) == 3.0 * 2 * numel


@given(st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
       st.sampled_from(["contiguous", "channels_last", "transposed", "sliced", "expanded"]),
       st.sampled_from([torch.preserve_format, torch.contiguous_format, torch.channels_last]),
       st.sampled_from([None, torch.uint8, torch.float64]))
def test_cached_empty_like_lays_out_memory_as_torch_does(shape, source, memory_format, dtype):
    x = torch.zeros(shape)
    x = {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
         "transposed": x.transpose(2, 3), "sliced": x[:, :, ::2], "expanded": x[:1].expand(3, *shape[1:])}[source]
    previous, _memory._MIN_BYTES = _memory._MIN_BYTES, 0  # every size from the cache
    try:
        ours = _memory.empty_like(x, dtype=dtype, memory_format=memory_format)
    finally:
        _memory._MIN_BYTES = previous
    theirs = torch.empty_like(x, dtype=dtype, memory_format=memory_format)
    assert (ours.shape, ours.stride(), ours.dtype) == (theirs.shape, theirs.stride(), theirs.dtype)
    assert ours.untyped_storage().nbytes() >= theirs.numel() * theirs.element_size()


def test_a_buffer_is_reused_only_after_its_last_view_is_gone():
    _memory.release_cached()
    like = torch.empty(4, BIG // 4)
    first = _memory.empty_like(like)
    address = first.data_ptr()
    row = first[1]  # a view keeps the storage, so the buffer must stay taken
    row.fill_(7.0)
    del first
    assert _memory.cached_bytes() == 0
    second = _memory.empty_like(like)
    second.fill_(1.0)
    assert second.data_ptr() != address and bool((row == 7.0).all())
    del row
    assert _memory.cached_bytes() == BIG * 4
    third = _memory.empty_like(like)
    assert third.data_ptr() == address and _memory.cached_bytes() == 0
    del second, third
    assert _memory.release_cached() == 2 * BIG * 4 and _memory.cached_bytes() == 0


def test_buffer_cache_size_zero_gives_plain_torch_tensors():
    probe = ("import torch; from taxaug import _memory; t = _memory.empty_like(torch.empty(2**22)); "
             "t.resize_(2**23); print(t.shape[0])")  # resizable: not from the cache
    result = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "TAXAUG_BUFFER_CACHE_MB": "0"},
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(2**23)


_POINTWISE_VALUES = {
    "brightness": st.floats(0.0, 3.0), "color": st.floats(0.0, 3.0), "contrast": st.floats(0.0, 3.0),
    "posterize": st.sampled_from([0.0, 1.0, 2.0, 3.5, 4.0, 7.0, 8.0]),
    "solarize": st.sampled_from([0.0, 1.0, 77.0, 128.0, 254.6, 255.0, 256.0]), "invert": st.just(0.0),
    "autocontrast": st.just(0.0), "equalize": st.just(0.0), "sharpness": st.floats(0.0, 3.0),
}


@given(st.sampled_from(sorted(_POINTWISE_VALUES)), st.sampled_from([torch.uint8, torch.float32]),
       st.sampled_from([1, 3]), st.integers(1, 9), st.data())
def test_pointwise_kernels_give_the_torch_bytes(name, dtype, channels, size, data):
    x = _images((size, channels, data.draw(st.integers(1, 17)), data.draw(st.integers(1, 17))), dtype,
                data.draw(st.integers(0, 10_000)), False)
    if data.draw(st.booleans()):  # a narrow range of values, as autocontrast stretches
        x = x // 4 + 60 if dtype == torch.uint8 else x * 0.3 + 0.2
    ops = torch.tensor(data.draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)))  # op or identity
    values = torch.tensor(data.draw(st.lists(_POINTWISE_VALUES[name], min_size=size, max_size=size)),
                          dtype=torch.float64)
    fast, reference = _both_paths(lambda: P.apply_ops_per_sample(x, ops, values, [name, "identity"]))
    assert torch.equal(fast, reference)


@given(st.sampled_from([torch.uint8, torch.float32]), st.sampled_from([1, 3]), st.integers(1, 8),
       st.sampled_from([3, 255]), st.data())
def test_color_jitter_kernels_give_the_torch_bytes(dtype, channels, size, levels, data):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 10_000)))
    x = torch.randint(0, 256, (size, channels, 7, 9), generator=gen) * levels // 255  # few levels: ties in max/min
    x = x.to(torch.uint8) if dtype == torch.uint8 else x.float() / levels
    factors = [torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.3, 1.0, 1.7, 4.0]), min_size=size,
                                               max_size=size)), dtype=torch.float64) for _ in range(3)]
    shifts = [-0.5, -0.2, 0.0, 1e-3, 0.25, 0.5] + ([-1.7, 0.9, 2.5] if data.draw(st.booleans()) else [])
    shift = torch.tensor(data.draw(st.lists(st.sampled_from(shifts), min_size=size, max_size=size)),
                         dtype=torch.float64)  # beyond +-0.5 the torch kernel runs
    order = torch.stack([torch.randperm(4, generator=gen) for _ in range(size)])
    fast, reference = _both_paths(lambda: F.color_jitter(x, *factors, shift, order=order))
    assert torch.equal(fast, reference)


@given(image_shapes, st.sampled_from([torch.uint8, torch.float32, torch.float16, torch.float64]),
       st.sampled_from(["rotate", "shear_x", "shear_y", "translate_x", "translate_y"]),
       st.floats(-45.0, 45.0, allow_nan=False), st.integers(0, 10_000))
def test_warp_kernel_gives_the_torch_bytes(shape, dtype, op, amount, seed):
    x = _images(shape, dtype, seed, False)
    amount = amount if op == "rotate" else amount / 90 if op.startswith("shear") else amount / 3
    fill = 128 if dtype == torch.uint8 else 0.5
    fast, reference = _both_paths(lambda: getattr(F, op)(x, amount, fill=fill))
    assert torch.equal(fast, reference)
    if shape[1] in (1, 3):  # the dispatcher (grey or RGB): three ops on interleaved rows, straight into its output
        ops = torch.arange(shape[0]) % 3
        values = torch.full((shape[0],), amount, dtype=torch.float64)
        fast, reference = _both_paths(lambda: P.apply_ops_per_sample(x, ops, values, [op, "identity", "hflip"],
                                                                     fill=fill))
        assert torch.equal(fast, reference)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("policy", ["auto_augment", "rand_augment", "trivial_augment_wide", "augmix"])
def test_policies_give_the_same_bytes_with_and_without_the_kernels(policy, dtype):
    x = _images((24, 3, 20, 26), dtype, 11, False)
    fn = getattr(P, policy)
    fast, reference = _both_paths(lambda: fn(x, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(fast, reference)


@given(st.sampled_from([torch.uint8, torch.float32]), st.sampled_from([1, 3]), st.integers(1, 8),
       st.integers(0, 10_000))
def test_kernels_in_place_give_the_torch_bytes(dtype, channels, size, seed):
    """Policies' later rounds run in place: warps and sharpness then read pixels they also write."""
    from taxaug.functional.dispatch import _dispatch
    from taxaug.functional.op_tables import OP_NAMES

    names = [n for n in OP_NAMES if n not in ("hue",)]
    gen = torch.Generator().manual_seed(seed)
    x = _images((size, channels, 13, 11), dtype, seed, False)
    ops = torch.randint(0, len(names), (size,), generator=gen)
    values = torch.rand(size, generator=gen, dtype=torch.float64) * 2
    values[ops == names.index("rotate")] *= 20

    def run():
        work = x.clone()
        return _dispatch(work, ops, values, names, None, "nearest", inplace=True)

    fast, reference = _both_paths(run)
    assert torch.equal(fast, reference)


def _mixup_bytes(x, lam, seed):
    groups = torch.zeros(x.shape[0], dtype=torch.long)
    return F.selective_mixup(MixBatch(x, {}), groups, lam, generator=torch.Generator().manual_seed(seed)).batch.images


@pytest.mark.skipif(not _native.available(), reason="needs the C kernels")
def test_openmp_pool_and_own_threads_give_the_same_bytes():
    x = _images((64, 3, 96, 96), torch.uint8, 0, False)  # 1.7 MB: large enough for two threads
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pooled = _mixup_bytes(x, 0.3, 1)
        with _native.own_threads():
            assert _native.thread_pool() == "own"
            own = _mixup_bytes(x, 0.3, 1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(pooled, own)
    with _native.disabled():
        assert torch.equal(_mixup_bytes(x, 0.3, 1), own)


@pytest.mark.skipif(not (_native.available() and hasattr(os, "fork")), reason="needs the C kernels and fork")
def test_a_forked_child_runs_the_kernels_on_threads_of_its_own():
    x = _images((32, 3, 256, 256), torch.uint8, 0, False)  # 6 MB: two threads of its own in the child too
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    # the kernels under test run only with the cpu strategy (the accelerator pass would take torch's
    # multi-threaded ops, which hang in a forked child)
    with _native.forced_strategy("cpu"):
        _check_kernels_in_forked_child(x, threads)


def _check_kernels_in_forked_child(x: torch.Tensor, threads: int) -> None:
    try:
        expected = _mixup_bytes(x, 0.3, 1).numpy().tobytes()  # the parent's OpenMP pool is now started
        if "parallel backend: OpenMP" in torch.__config__.parallel_info():
            assert _native.thread_pool() == "openmp"

        def check() -> bool:  # no multi-threaded torch op here: torch's own would hang after the fork
            return (_native.thread_pool() == "own" and _native._threads(x.numel()) == 2
                    and _mixup_bytes(x, 0.3, 1).numpy().tobytes() == expected)

        answer = _in_forked_child(check)
    finally:
        torch.set_num_threads(threads)
    assert answer == b"1"


def _in_forked_child(check, timeout: float = 60.0) -> bytes:
    """b"1" or b"0" from check() run in a forked child; b"" if it died or hung past the timeout."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: an OpenMP pool does not survive a fork; a hang here fails the parent's wait
        try:
            os.write(write, b"1" if check() else b"0")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        ready, _, _ = select.select([pipe], [], [], timeout)
        answer = pipe.read() if ready else b""
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return answer


@given(st.lists(st.integers(-3, 6), max_size=300), st.sampled_from([1, 997, 2**40, 2**60]), st.integers(1, 5),
       st.integers(0, 10_000))
def test_ingroup_pairing_kernel_gives_the_torch_perm(ids, spread, min_group_size, seed):
    # spread: small ids, sparse ids, ids that still pack beside a position, ids that do not (torch code)
    groups = torch.tensor([i * spread if i >= 0 else i for i in ids], dtype=torch.long)
    fast, reference = _both_paths(lambda: F.ingroup_permutation(
        groups, min_group_size=min_group_size, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(fast, reference)


def test_ingroup_pairing_kernel_takes_a_large_batch_and_falls_back_on_huge_ids():
    gen = torch.Generator().manual_seed(0)
    groups = torch.randint(-1, 500, (4096,), generator=gen)
    fast, reference = _both_paths(lambda: F.ingroup_permutation(groups, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(fast, reference)
    shuffled = torch.randperm(4096, generator=gen)
    if _native.available():
        assert _native.ingroup_perm(groups, shuffled, 2) is not None
        # 13 bits of position beside a 62-bit id do not fit in 64: the kernel declines, the torch code runs
        assert _native.ingroup_perm(torch.full((4096,), 2**62), shuffled, 2) is None


def test_a_forced_cpu_strategy_never_hands_device_memory_to_the_kernels():
    # the strategy picks the algorithm; only host memory may reach the C kernels (meta stands in for CUDA)
    x = torch.empty(2, 3, 8, 8, dtype=torch.uint8, device="meta")
    with _native.forced_strategy("cpu"):
        assert not _native.sample_blocks_match(x, x)
        assert not _native._contiguous_cpu_pair(x, x)
        host = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
        assert _native.sample_blocks_match(host, host)


def _stable_top(row_scores: torch.Tensor, count: int, skip: int) -> torch.Tensor:
    """The reference order: a stable descending sort (NaN first, ties to the lower column), `skip` left out."""
    batch, width = row_scores.shape
    order = torch.sort(row_scores, dim=1, descending=True, stable=True).indices
    return order[order != skip].reshape(batch, width - (skip < width))[:, :count]


special_scores = st.sampled_from([0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf")])


@given(st.lists(st.integers(1, 300), min_size=1, max_size=4), st.integers(0, 6), st.integers(1, 6),
       st.sampled_from([torch.float32, torch.float64]), st.booleans(), st.integers(0, 10_000),
       st.lists(special_scores, max_size=8))
def test_top_k_kernel_equals_a_stable_sort(widths, batch, k, dtype, strided, seed, specials):
    # ties (scores drawn from a few values), NaN and infinities sprinkled in, the skipped column anywhere
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.randint(-4, 5, (batch, w + 3 * strided), generator=gen).to(dtype) / 2 for w in widths]
    scores = [s[:, 3:] if strided else s for s in scores]  # rows further apart than their width
    for s in scores:
        for n, value in enumerate(specials):
            if s.numel():
                at = (seed * (n + 1)) % s.numel()
                s[at // s.shape[1], at % s.shape[1]] = value
    skip = seed % (max(widths) + 1)
    counts = [max(1, min(k, w - (skip < w))) for w in widths]
    with _native.forced_strategy("cpu"):  # the kernel serves the cpu strategy (forced ones included)
        top = _native.top_k(scores, counts, k, skip)
    if not _native.available():  # TAXAUG_NATIVE=0 or no compiler: the caller is told to run torch.topk
        assert top is None
        return
    assert top.shape == (len(widths), batch, k)
    for m, s in enumerate(scores):
        real = s.shape[1] - (skip < s.shape[1])
        if real == 0:
            assert bool((top[m] == skip).all())
            continue
        expected = _stable_top(s, counts[m], skip)
        assert torch.equal(top[m, :, : counts[m]], expected)
        assert torch.equal(top[m, :, counts[m]:], top[m, :, :1].expand(-1, k - counts[m]))  # the best, again


def test_top_k_kernel_declines_what_it_cannot_take():
    scores = [torch.randn(4, 50)]
    assert _native.top_k([scores[0].half()], [5], 5, 0) is None  # the caller runs torch.topk
    assert _native.top_k(scores, [5], _native.TOPK_MAX + 1, 0) is None
    assert _native.top_k(scores, [6], 5, 0) is None
    with _native.forced_strategy("accelerator"):
        assert _native.top_k(scores, [5], 5, 0) is None
    with _native.disabled():
        assert _native.top_k(scores, [5], 5, 0) is None
    with _native.forced_strategy("cpu"):
        if _native.available():
            assert torch.equal(_native.top_k(scores, [5], 5, 0)[0], _stable_top(scores[0], 5, 0))
