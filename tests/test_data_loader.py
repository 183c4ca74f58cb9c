"""Prefetching loader and LRU cache: exactly-once delivery, order, slow consumers, early close, errors."""

from __future__ import annotations

import io
import pickle
import queue
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from taxaug.data import (
    GroupedBatchSampler,
    HybridDataset,
    ImageLoadError,
    LRUCache,
    PrefetchLoader,
    PureHDF5Dataset,
    nbytes,
    train_val_loaders,
    write_labels,
)

N = 37


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def dataset(tmp_path):
    ids = [f"{i:04d}.jpg" for i in range(N)]
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i, name in enumerate(ids):
        (img_dir / name).write_bytes(_jpeg(i))
    species = np.arange(N) % 5 + 1
    path = write_labels(tmp_path / "labels.h5", ids, {"taxa_L10": species, "taxa_L20": species % 2 + 1},
                        lat=np.linspace(-50, 50, N), lon=np.zeros(N))
    return HybridDataset(path, img_dir, image_size=(12, 16), metadata=("spatial",))


def _wait_until(condition, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds (a synchronisation point, not a timing assumption); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        threading.Event().wait(0.001)


def _taxaug_threads() -> list[str]:
    """The loader's threads; the process-wide reader pool (``taxaug-read``, bounded, kept) is not one."""
    return [t.name for t in threading.enumerate() if t.name.startswith("taxaug-") and t.name != "taxaug-read"]


def test_every_sample_exactly_once_per_epoch_in_sampler_order(dataset):
    sampler = GroupedBatchSampler(dataset.group_ids("taxa_L10"), 6, mode="mixed-pairs", seed=1)
    loader = PrefetchLoader(dataset, sampler, num_io_threads=3, num_decode_threads=2, batch_concurrency=2,
                            max_ready_batches=2, monitor_interval=None)
    assert len(loader) == len(sampler) == 7
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert [b.indices.tolist() for b in batches] == list(sampler)
        flat = torch.cat([b.indices for b in batches]).tolist()
        assert sorted(flat) == list(range(N))
        assert [b.batch_size for b in batches] == [6] * 6 + [1]
        for b in batches:  # images, targets and aux belong to the same rows
            idx = b.indices.numpy()
            assert torch.equal(b.targets["taxa_L10"], torch.from_numpy(dataset.class_targets("taxa_L10")[idx]))
            assert torch.equal(b.images[0], dataset.load_image(int(idx[0])))
            aux, mask = dataset.aux(idx)
            assert torch.equal(b.aux, aux) and torch.equal(b.aux_mask, mask)
    assert _taxaug_threads() == []
    stats = loader.last_stats
    assert stats["batches"] == 7 and stats["cache_hits"] == N  # second epoch served from the cache


def test_slow_consumer_gets_everything_and_queues_stay_bounded(dataset):
    sampler = GroupedBatchSampler(dataset.group_ids("taxa_L10"), 4, mode="standard", seed=0)
    loader = PrefetchLoader(dataset, sampler, num_io_threads=2, num_decode_threads=2, batch_concurrency=1,
                            max_ready_batches=1, monitor_interval=None)
    seen = []
    depth = []
    for batch in loader:
        seen.extend(batch.indices.tolist())
        run = loader._run
        if run is not None and len(seen) < N:  # a slow consumer: let the loader fill what it may before reading on
            _wait_until(lambda run=run: run.ready_queue.qsize() >= 1)
        depth.append(run.ready_queue.qsize() if run else 0)
    assert sorted(seen) == list(range(N))
    assert max(depth) == 1  # filled while the consumer waited, never past max_ready_batches


def test_early_close_stops_threads_and_next_epoch_is_complete(dataset):
    sampler = GroupedBatchSampler(dataset.group_ids("taxa_L10"), 4, mode="strict-group", seed=5)
    expected = list(sampler)
    loader = PrefetchLoader(dataset, sampler, num_io_threads=2, monitor_interval=None)
    got = []
    for i, batch in enumerate(loader):
        got.append(batch.indices.tolist())
        if i == 2:
            break
    assert got == expected[:3]  # what was delivered is whole and in order
    assert _taxaug_threads() == []
    it = iter(loader)
    first = next(it)
    loader.close()  # explicit close mid-epoch
    assert first.indices.tolist() == expected[0]
    assert _taxaug_threads() == []
    with pytest.raises(RuntimeError, match=f"closed mid-epoch after 1 of {len(expected)} batches"):
        next(it)  # never a silently short epoch
    assert [b.indices.tolist() for b in loader] == expected  # reusable after close


def test_second_iter_while_live_fails_the_first_consumer(dataset):
    sampler = GroupedBatchSampler(dataset.group_ids("taxa_L10"), 4, mode="standard", shuffle=False)
    loader = PrefetchLoader(dataset, sampler, monitor_interval=None)
    first = iter(loader)
    got = [next(first), next(first)]
    second = [b.indices.tolist() for b in loader]  # a new pass while `first` is live
    assert second == list(sampler)
    with pytest.raises(RuntimeError, match=r"after 2 of 10 batches \(a second iter\(\) started a new pass\)"):
        next(first)
    assert [b.indices.tolist() for b in got] == list(sampler)[:2]
    never_started = iter(loader)
    loader.close()
    with pytest.raises(RuntimeError, match="after 0 of 10 batches"):
        next(never_started)


class _Gated:
    """Wraps a dataset: the read of position `blocked` waits for `gate` and announces itself on `reached`."""

    def __init__(self, dataset, blocked: int):
        self.dataset, self.blocked = dataset, blocked
        self.reached, self.gate = threading.Event(), threading.Event()
        self.file_rows = dataset.file_rows

    def read_raw(self, index):
        if index == self.blocked:
            self.reached.set()
            self.gate.wait()
        return self.dataset.read_raw(index)

    def decode(self, raw, index):
        return self.dataset.decode(raw, index)

    def make_batch(self, images, indices):
        return self.dataset.make_batch(images, indices)


def test_close_from_another_thread_while_consumer_waits_raises_in_consumer(dataset):
    gated = _Gated(dataset, blocked=9)  # batch 2 (positions 8..11) cannot finish until the gate opens
    sampler = GroupedBatchSampler(dataset.group_ids("taxa_L10"), 4, mode="standard", shuffle=False)
    loader = PrefetchLoader(gated, sampler, num_io_threads=2, batch_concurrency=3, monitor_interval=None,
                            cache_bytes=0)
    outcome: queue.Queue = queue.Queue()
    two_received = threading.Event()

    def consume():
        got = 0
        try:
            for _ in loader:
                got += 1
                if got == 2:
                    two_received.set()
            outcome.put(("completed", got))
        except RuntimeError as exc:
            outcome.put((str(exc), got))

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert gated.reached.wait(10) and two_received.wait(10)  # the consumer now waits for batch 2
    run = loader._run
    closer = threading.Thread(target=loader.close)
    closer.start()
    assert run.stop.wait(10)  # close() has stopped the pass; let the blocked read return
    gated.gate.set()
    closer.join(10)
    consumer.join(10)
    message, got = outcome.get(timeout=10)
    assert got == 2
    assert "closed mid-epoch after 2 of 10 batches (close() was called)" in message
    assert _taxaug_threads() == []


def test_transforms_run_per_sample_and_per_batch(dataset):
    sampler = GroupedBatchSampler(dataset.group_ids("taxa_L10"), 5, mode="standard", shuffle=False)
    names = []

    def per_sample(img):
        names.append(threading.current_thread().name)
        return 255 - img

    def per_batch(batch):
        return batch.replace(images=batch.images.float() / 255)

    loader = PrefetchLoader(dataset, sampler, transform=per_sample, batch_transform=per_batch,
                            monitor_interval=None)
    batch = next(iter(loader))
    loader.close()
    assert batch.images.dtype == torch.float32
    expected = (255 - dataset.load_image(0)).float() / 255
    assert torch.allclose(batch.images[0], expected)
    assert all(n.startswith("taxaug-decode") for n in names)


def test_strict_error_raised_naming_file_and_threads_stop(dataset):
    broken = dataset.identifiers[9]
    dataset.locator.path_for(broken).write_bytes(b"garbage")
    sampler = GroupedBatchSampler(dataset.group_ids("taxa_L10"), 4, mode="standard", shuffle=False)
    loader = PrefetchLoader(dataset, sampler, monitor_interval=None)
    got = []
    with pytest.raises(ImageLoadError, match=broken):
        for b in loader:
            got.append(b)
    assert len(got) == 2  # batches before the bad one were delivered
    assert _taxaug_threads() == []


def test_permissive_placeholders_keep_batch_size_and_are_counted(dataset, tmp_path):
    dataset.locator.path_for(dataset.identifiers[3]).unlink()
    dataset.locator.path_for(dataset.identifiers[20]).write_bytes(b"garbage")
    loose = HybridDataset(dataset.labels_path, dataset.locator.images_dir, image_size=(12, 16),
                          missing="permissive")
    sampler = GroupedBatchSampler(loose.group_ids("taxa_L10"), 8, mode="standard", seed=2)
    lines = []
    loader = PrefetchLoader(loose, sampler, monitor_interval=None, monitor=lines.append)
    batches = list(loader)
    assert [b.batch_size for b in batches] == [8, 8, 8, 8, 5]
    assert loose.failures.count == 2
    assert loader.last_stats["failed"] == 2


def test_monitor_emits_one_line_per_interval(dataset):
    sampler = GroupedBatchSampler(dataset.group_ids("taxa_L10"), 2, mode="standard")
    lines = []
    loader = PrefetchLoader(dataset, sampler, monitor_interval=0.02, monitor=lines.append)
    for _ in loader:
        _wait_until(lambda: lines)  # the consumer holds the epoch open until an interval has been reported
    assert lines, "no monitor line was emitted"
    line = lines[0]
    for part in ("Q(io/dec/ready)", "Cache(H/M/E)", "Size:", "Tput(IO/Dec/Out)", "Wait(Main/Dec/IO)", "ms/s"):
        assert part in line
    assert "\n" not in line
    assert _taxaug_threads() == []


def test_sampler_failure_is_reported():
    class Boom:
        def __iter__(self):
            yield [0]
            raise RuntimeError("sampler broke")

        def __len__(self):
            return 2

    class Tiny:
        file_rows = np.arange(1)

        def read_raw(self, i):
            return np.zeros((4, 4, 3), np.uint8)

        def decode(self, raw, i):
            return torch.from_numpy(raw).permute(2, 0, 1)

        def make_batch(self, images, idx):
            from taxaug import MixBatch

            return MixBatch(images=images, targets={}, indices=torch.as_tensor(idx))

    loader = PrefetchLoader(Tiny(), Boom(), monitor_interval=None)
    it = iter(loader)
    assert next(it).batch_size == 1
    with pytest.raises(RuntimeError, match="sampler broke"):
        next(it)


def test_bad_loader_arguments():
    with pytest.raises(TypeError, match="read_raw"):
        PrefetchLoader([1, 2, 3], [[0]])
    with pytest.raises(ValueError, match="num_io_threads"):
        PrefetchLoader(type("D", (), {"read_raw": 0, "decode": 0, "make_batch": 0})(), [[0]], num_io_threads=0)


# ------------------------------------------------------------------ cache


def test_nbytes_counts_payload_not_headers():
    assert nbytes(b"x" * 1000) == 1000
    assert nbytes(np.zeros((10, 10), np.float32)) == 400
    assert nbytes(torch.zeros(3, 8, 8, dtype=torch.uint8)) == 192
    assert nbytes((b"ab", np.zeros(3, np.uint8))) == 5
    with pytest.raises(TypeError, match="cannot measure"):
        nbytes(object())
    assert nbytes((np.zeros(3, np.uint8), 7)) == 3  # numbers beside arrays have no buffer


def test_cache_pickles_empty_with_its_bound():
    cache = LRUCache(100)
    cache.put("a", b"x" * 10)
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.max_bytes == 100 and len(copy) == 0 and copy.size_bytes == 0
    assert copy.put("b", b"y" * 90) and copy.get("b") == b"y" * 90 and cache.get("a") == b"x" * 10


def test_lru_evicts_least_recent_by_bytes():
    cache = LRUCache(100)
    assert cache.put("a", b"x" * 40) and cache.put("b", b"x" * 40)
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", b"x" * 40)  # evicts b
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.size_bytes == 80 and cache.evictions == 1
    assert not cache.put("huge", b"x" * 101) and cache.size_bytes == 80
    cache.put("a", b"x" * 10)  # replacing re-accounts
    assert cache.size_bytes == 50
    s = cache.stats()
    assert (s["hits"], s["misses"]) == (1, 0)
    assert cache.get("zz") is None and cache.misses == 1


def test_train_val_loaders_keep_augmentation_off_validation(dataset):
    train, val = dataset.split(0.3, seed=0)
    calls = {"sample": [], "batch": 0}

    def aug(img):
        calls["sample"].append(img.shape)
        return img

    def batch_aug(batch):
        calls["batch"] += 1
        return batch

    tl, vl = train_val_loaders(train, val, batch_size=4, train_transform=aug, train_batch_transform=batch_aug,
                               monitor_interval=None)
    assert vl.transform is None and vl.batch_transform is None
    val_batches = list(vl)
    assert calls == {"sample": [], "batch": 0}
    assert torch.cat([b.indices for b in val_batches]).tolist() == list(range(len(val)))  # in order, all
    assert sum(b.batch_size for b in tl) == len(train)
    assert len(calls["sample"]) == len(train) and calls["batch"] == len(tl)
    assert tl.batch_sampler.mode == "mixed-pairs"


def test_empty_batch_from_sampler_is_an_error(dataset):
    loader = PrefetchLoader(dataset, [[0, 1], []], monitor_interval=None)
    it = iter(loader)
    assert next(it).indices.tolist() == [0, 1]
    with pytest.raises(ValueError, match="empty batch"):
        next(it)
    assert _taxaug_threads() == []


def test_pure_hdf5_through_loader_with_small_cache(tmp_path):
    n = 20
    blobs = [_jpeg(i) for i in range(n)]
    path = write_labels(tmp_path / "p.h5", [f"s{i}" for i in range(n)], {"taxa_L10": np.arange(n) % 4 + 1},
                        images=blobs)
    ds = PureHDF5Dataset(path, image_size=(8, 8))
    budget = sum(len(b) for b in blobs) // 3
    loader = PrefetchLoader(ds, GroupedBatchSampler(ds.group_ids("taxa_L10"), 3, mode="strict-group"),
                            num_io_threads=3, cache_bytes=budget, monitor_interval=None)
    for _ in range(2):
        assert sorted(torch.cat([b.indices for b in loader]).tolist()) == list(range(n))
        assert loader.cache.size_bytes <= budget
    assert loader.cache.evictions > 0
    assert torch.equal(next(iter(loader)).images[0], ds.load_image(int(next(iter(loader.batch_sampler))[0])))
    loader.close()
