"""Prefetching loader: IO threads -> LRU cache -> decode threads -> in-order assembly -> ready queue.

Threads, not processes: Pillow releases the GIL while it decodes and resizes, so decode threads
scale across cores without pickling datasets or copying batches between processes.

Stages of one epoch::

    planner ──(sample tasks)──> io_queue ──> IO threads (cache or dataset.read_raw)
            ──> decode_queue ──> decode threads (dataset.decode, then transform per sample)
            ──> assembler (in sampler order: stack, targets/aux, batch_transform) ──> ready_queue ──> you

Every batch the sampler yields is delivered once, whole and in order; at most ``batch_concurrency``
batches are being read/decoded and at most ``max_ready_batches`` wait for you. Breaking out of the
loop or calling :meth:`PrefetchLoader.close` stops and joins every thread; a loop still running
over a pass that was closed (by ``close()`` or a second ``iter()``) raises ``RuntimeError`` at its
next step instead of ending as if the epoch were complete.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from taxaug.cache import LRUCache

__all__ = ["PrefetchLoader", "train_val_loaders"]

log = logging.getLogger("taxaug.data")

_END = object()
_POLL = 0.05


class _Job:
    """One batch in flight."""

    __slots__ = ("error", "images", "indices", "lock", "remaining", "seq")

    def __init__(self, seq: int, indices: np.ndarray):
        self.seq = seq
        self.indices = indices
        self.images: list[torch.Tensor | None] = [None] * len(indices)
        self.remaining = len(indices)
        self.error: BaseException | None = None
        self.lock = threading.Lock()


class _Counters:
    """Per-thread counters (one slot per thread, so no two threads write the same slot)."""

    def __init__(self, slots: int):
        self.items = [0] * slots
        self.wait = [0.0] * slots

    def total(self) -> tuple[int, float]:
        return sum(self.items), sum(self.wait)


class _EpochRun:
    """The threads and queues of one pass over the batch sampler."""

    def __init__(self, loader: PrefetchLoader, batches: Iterable[Any]):
        self.loader = loader
        self.batches = batches
        self.stop = threading.Event()
        hint = int(getattr(loader.batch_sampler, "batch_size", 64) or 64)
        self.io_queue: queue.Queue = queue.Queue(maxsize=max(1, loader.batch_concurrency * hint))
        self.decode_queue: queue.Queue = queue.Queue(maxsize=max(1, loader.batch_concurrency * hint))
        self.ready_queue: queue.Queue = queue.Queue(maxsize=loader.max_ready_batches)
        self.slots = threading.Semaphore(loader.batch_concurrency)
        self.jobs: dict[int, _Job] = {}
        self.jobs_cond = threading.Condition()
        self.planned: int | None = None
        self.planner_error: BaseException | None = None
        self.io_stats = _Counters(loader.num_io_threads)
        self.decode_stats = _Counters(loader.num_decode_threads)
        self.out_items = 0
        self.out_batches = 0
        self.main_wait = 0.0
        self.threads: list[threading.Thread] = []
        self.started = time.perf_counter()
        self.finished = False
        self.closed_reason: str | None = None

    def start(self) -> None:
        self._spawn("taxaug-planner", self._plan)
        for i in range(self.loader.num_io_threads):
            self._spawn(f"taxaug-io-{i}", self._io_worker, i)
        for i in range(self.loader.num_decode_threads):
            self._spawn(f"taxaug-decode-{i}", self._decode_worker, i)
        self._spawn("taxaug-assembler", self._assemble)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    # ------------------------------------------------------------------ helpers

    def _put(self, q: queue.Queue, item: Any) -> bool:
        """Blocking put that gives up when the run stops."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue, counters: _Counters, slot: int) -> Any:
        """Blocking get that gives up when the run stops; waiting time is added as it accrues."""
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                return q.get(timeout=_POLL)
            except queue.Empty:
                continue
            finally:
                counters.wait[slot] += time.perf_counter() - start
        return _END

    def _fail(self, job: _Job, exc: BaseException) -> None:
        with job.lock:
            if job.error is None:
                job.error = exc

    def _finish_sample(self, job: _Job) -> None:
        with job.lock:
            job.remaining -= 1
            done = job.remaining == 0
        if done:
            with self.jobs_cond:
                self.jobs_cond.notify_all()

    # ------------------------------------------------------------------ stages

    def _plan(self) -> None:
        seq = 0
        try:
            for indices in self.batches:
                idx = np.asarray(indices, dtype=np.int64).reshape(-1)
                if idx.size == 0:
                    raise ValueError(f"the batch sampler yielded an empty batch (batch {seq})")
                while not self.slots.acquire(timeout=_POLL):
                    if self.stop.is_set():
                        return
                job = _Job(seq, idx)
                with self.jobs_cond:
                    self.jobs[seq] = job
                    self.jobs_cond.notify_all()
                for slot in range(idx.size):
                    if not self._put(self.io_queue, (job, slot)):
                        return
                seq += 1
        except BaseException as exc:  # a failing sampler is reported to the consumer
            self.planner_error = exc
        finally:
            with self.jobs_cond:
                self.planned = seq
                self.jobs_cond.notify_all()

    def _io_worker(self, slot: int) -> None:
        loader = self.loader
        dataset, cache = loader.dataset, loader.cache
        rows = getattr(dataset, "file_rows", None)
        while True:
            task = self._get(self.io_queue, self.io_stats, slot)
            if task is _END:
                return
            job, i = task
            index = int(job.indices[i])
            raw: Any = None
            if job.error is None:
                try:
                    key = int(rows[index]) if rows is not None else index
                    raw = cache.get(key) if cache is not None else None
                    if raw is None:
                        raw = dataset.read_raw(index)
                        if cache is not None and isinstance(raw, (bytes, np.ndarray)):
                            cache.put(key, raw)
                except BaseException as exc:
                    self._fail(job, exc)
            self.io_stats.items[slot] += 1
            if not self._put(self.decode_queue, (job, i, raw)):
                return

    def _decode_worker(self, slot: int) -> None:
        dataset, transform = self.loader.dataset, self.loader.transform
        while True:
            task = self._get(self.decode_queue, self.decode_stats, slot)
            if task is _END:
                return
            job, i, raw = task
            if job.error is None:
                try:
                    index = int(job.indices[i])
                    image = dataset.decode(raw, index)
                    if transform is not None:
                        image = transform(image)
                    job.images[i] = image
                except BaseException as exc:
                    self._fail(job, exc)
            self.decode_stats.items[slot] += 1
            self._finish_sample(job)

    def _assemble(self) -> None:
        loader = self.loader
        seq = 0
        while not self.stop.is_set():
            with self.jobs_cond:
                while not self.stop.is_set():
                    job = self.jobs.get(seq)
                    if job is not None and job.remaining == 0:
                        break
                    if job is None and self.planned is not None and seq >= self.planned:
                        job = None
                        break
                    self.jobs_cond.wait(timeout=_POLL)
                else:
                    return
                if job is not None:
                    del self.jobs[seq]
            if job is None:
                self._put(self.ready_queue, self.planner_error if self.planner_error is not None else _END)
                return
            item: Any
            if job.error is not None:
                item = job.error
            else:
                try:
                    images = _stack(job.images)  # type: ignore[arg-type]
                    batch = loader.dataset.make_batch(images, job.indices)
                    if loader.batch_transform is not None:
                        batch = loader.batch_transform(batch)
                    if loader.pin_memory:
                        batch = _pin(batch)
                    item = batch
                except BaseException as exc:
                    item = exc
            self.slots.release()
            if not self._put(self.ready_queue, item):
                return
            seq += 1

    # ------------------------------------------------------------------ consumer side

    def _closed_error(self) -> RuntimeError:
        total = len(self.batches) if hasattr(self.batches, "__len__") else "?"  # type: ignore[arg-type]
        return RuntimeError(f"loader closed mid-epoch after {self.out_batches} of {total} batches "
                            f"({self.closed_reason or 'close() was called'}); this pass is incomplete: iterate the "
                            "loader again for a full epoch")

    def _next_item(self) -> Any:
        """The next ready item; raises when the run was closed before the epoch ended."""
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                return self.ready_queue.get(timeout=_POLL)
            except queue.Empty:
                if self.stop.is_set():  # closed while waiting: the threads exit because of it
                    break
                if not any(t.is_alive() for t in self.threads) and self.ready_queue.empty():
                    raise RuntimeError("loader threads exited before the epoch finished "
                                       f"({self.out_batches} batches delivered); this is a bug") from None
            finally:
                self.main_wait += time.perf_counter() - start
        raise self._closed_error()

    def __iter__(self) -> Iterator[Any]:
        if self.stop.is_set():
            raise self._closed_error()
        self.start()
        try:
            while True:
                item = self._next_item()
                if item is _END:
                    self.finished = True
                    return
                if isinstance(item, BaseException):
                    raise item
                self.out_batches += 1
                self.out_items += int(item.images.shape[0]) if hasattr(item, "images") else 0
                yield item
        finally:
            self.shutdown()

    def shutdown(self, reason: str | None = None) -> None:
        """Stop and join the threads; `reason` is what a consumer still iterating is told."""
        if reason is not None and self.closed_reason is None and not self.finished:
            self.closed_reason = reason
        self.stop.set()
        with self.jobs_cond:
            self.jobs_cond.notify_all()
        current = threading.current_thread()
        for thread in self.threads:
            if thread is not current:
                thread.join(timeout=10.0)
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            log.warning("loader threads still running after shutdown (a transform may be blocked): %s", alive)
        self.loader._on_run_closed(self)

    def snapshot(self) -> dict[str, float]:
        io_items, io_wait = self.io_stats.total()
        dec_items, dec_wait = self.decode_stats.total()
        return {
            "io_items": io_items, "io_wait": io_wait, "decode_items": dec_items, "decode_wait": dec_wait,
            "out_items": self.out_items, "out_batches": self.out_batches, "main_wait": self.main_wait,
            "q_io": self.io_queue.qsize(), "q_decode": self.decode_queue.qsize(), "q_ready": self.ready_queue.qsize(),
        }


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack CPU tensors through numpy: torch.stack's parallel copy is many times slower when called
    from a worker thread on a busy machine (an OpenMP team per call)."""
    first = images[0]
    if first.device.type == "cpu" and first.dtype in (torch.uint8, torch.float32, torch.float16, torch.float64) and all(
        t.shape == first.shape and t.dtype == first.dtype and t.device == first.device for t in images
    ):
        return torch.from_numpy(np.stack([t.numpy() for t in images]))
    return torch.stack(images)


def _pin(batch: Any) -> Any:
    if not torch.cuda.is_available():
        return batch
    return batch.replace(
        images=batch.images.pin_memory(),
        targets={k: v.pin_memory() for k, v in batch.targets.items()},
        aux=None if batch.aux is None else batch.aux.pin_memory(),
        aux_mask=None if batch.aux_mask is None else batch.aux_mask.pin_memory(),
        indices=None if batch.indices is None else batch.indices.pin_memory(),
    )


class PrefetchLoader:
    """Iterable of :class:`taxaug.MixBatch` over a dataset, driven by a batch sampler.

    Parameters
    ----------
    dataset: a :class:`~taxaug.data.LabelsDataset` (anything with ``read_raw``, ``decode``,
        ``make_batch`` and optionally ``file_rows``).
    batch_sampler: yields lists of dataset positions per batch (e.g. :class:`GroupedBatchSampler`,
        ``torch.utils.data.BatchSampler``); ``len()`` and ``set_epoch`` are forwarded.
    transform: per-sample ``(3, H, W) uint8 tensor -> tensor``, run in the decode threads (must be
        thread-safe; samples reach it in no fixed order, so a shared seeded generator does not give
        reproducible draws: use ``batch_transform`` for that). Give training augmentation to the
        training loader only.
    batch_transform: ``MixBatch -> MixBatch``, run on each assembled batch, in sampler order, on one
        thread (so a seeded generator gives reproducible results).
    num_io_threads / num_decode_threads: threads per stage.
    batch_concurrency: batches being read and decoded at once.
    max_ready_batches: finished batches waiting for the consumer.
    cache_bytes: LRU cache of raw (encoded) samples, kept across epochs; 0 disables it.
    monitor_interval: seconds between monitor lines (None: no monitor thread).
    monitor: where monitor lines go (default: ``logging.getLogger("taxaug.data").info``).
    pin_memory: pin batch tensors (when CUDA is available).
    """

    def __init__(
        self,
        dataset: Any,
        batch_sampler: Iterable[Any],
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_transform: Callable[[Any], Any] | None = None,
        num_io_threads: int = 4,
        num_decode_threads: int = 2,
        batch_concurrency: int = 4,
        max_ready_batches: int = 8,
        cache_bytes: int = 1 << 30,
        monitor_interval: float | None = 60.0,
        monitor: Callable[[str], None] | None = None,
        pin_memory: bool = False,
    ):
        for name, value in (("num_io_threads", num_io_threads), ("num_decode_threads", num_decode_threads),
                            ("batch_concurrency", batch_concurrency), ("max_ready_batches", max_ready_batches)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if monitor_interval is not None and not monitor_interval > 0:
            raise ValueError(f"monitor_interval must be > 0 seconds or None, got {monitor_interval!r}")
        for name in ("read_raw", "decode", "make_batch"):
            if not hasattr(dataset, name):
                raise TypeError(f"dataset must provide {name}() (a taxaug.data.LabelsDataset does); got "
                                f"{type(dataset).__name__}")
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.transform = transform
        self.batch_transform = batch_transform
        self.num_io_threads = num_io_threads
        self.num_decode_threads = num_decode_threads
        self.batch_concurrency = batch_concurrency
        self.max_ready_batches = max_ready_batches
        self.cache = LRUCache(cache_bytes) if cache_bytes > 0 else None
        self.monitor_interval = monitor_interval
        self.monitor = monitor if monitor is not None else log.info
        self.pin_memory = pin_memory
        self._run: _EpochRun | None = None
        self._lock = threading.Lock()
        self._monitor_stop = threading.Event()
        self._monitor_thread: threading.Thread | None = None
        self._last: dict[str, float] | None = None
        self._last_time = 0.0
        self._last_cache = (0, 0, 0)
        self._epoch_cache = (0, 0, 0)
        #: totals of the last finished (or closed) pass, same keys as the monitor's interval stats
        self.last_stats: dict[str, float] = {}

    @property
    def batch_size(self) -> int | None:
        return getattr(self.batch_sampler, "batch_size", None)

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the sampler: call before iterating each epoch to reshuffle."""
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        """A new pass. A pass still live is stopped: its consumer gets a RuntimeError, not a short epoch."""
        self._close("a second iter() started a new pass")
        run = _EpochRun(self, self.batch_sampler)
        with self._lock:
            self._run = run
        self._start_monitor()
        return iter(run)

    def close(self) -> None:
        """Stop the current pass (if any) and join its threads; the loader can be iterated again.

        A consumer still iterating that pass gets ``RuntimeError("loader closed mid-epoch after N of M
        batches ...")`` at its next step, never a silently short epoch.
        """
        self._close("close() was called")

    def _close(self, reason: str) -> None:
        with self._lock:
            run = self._run
        if run is not None:
            run.shutdown(reason)

    def _on_run_closed(self, run: _EpochRun) -> None:
        with self._lock:
            if self._run is not run:
                return
            self._run = None
            self._last, self._last_time, self._last_cache = None, run.started, self._epoch_cache
            self.last_stats = self._interval_stats(run)
            self._monitor_stop.set()
            monitor = self._monitor_thread
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(timeout=5.0)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ------------------------------------------------------------------ monitor

    def _start_monitor(self) -> None:
        self._last = None
        self._last_time = time.perf_counter()
        self._epoch_cache = self._last_cache
        if self.monitor_interval is None:
            return
        if self._monitor_thread is not None:
            self._monitor_stop.set()
            self._monitor_thread.join(timeout=5.0)
        self._monitor_stop = threading.Event()
        self._monitor_thread = threading.Thread(target=self._monitor_loop, args=(self._monitor_stop,),
                                                name="taxaug-monitor", daemon=True)
        self._monitor_thread.start()

    def _monitor_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.monitor_interval):
            line = self.monitor_line()
            if line:
                self.monitor(line)

    def _interval_stats(self, run: _EpochRun) -> dict[str, float]:
        now = time.perf_counter()
        snap = run.snapshot()
        prev = self._last or {k: 0.0 for k in snap}
        dt = max(now - self._last_time, 1e-9)
        cache = self.cache.stats() if self.cache is not None else {"hits": 0, "misses": 0, "evictions": 0,
                                                                   "size_bytes": 0, "max_bytes": 0}
        hits = cache["hits"] - self._last_cache[0]
        misses = cache["misses"] - self._last_cache[1]
        evictions = cache["evictions"] - self._last_cache[2]
        stats = {
            "interval_s": dt,
            "q_io": snap["q_io"], "q_decode": snap["q_decode"], "q_ready": snap["q_ready"],
            "cache_hits": hits, "cache_misses": misses, "cache_evictions": evictions,
            "cache_bytes": cache["size_bytes"], "cache_max_bytes": cache["max_bytes"],
            "io_per_s": (snap["io_items"] - prev["io_items"]) / dt,
            "decode_per_s": (snap["decode_items"] - prev["decode_items"]) / dt,
            "out_per_s": (snap["out_items"] - prev["out_items"]) / dt,
            "wait_main_ms_s": 1e3 * (snap["main_wait"] - prev["main_wait"]) / dt,
            "wait_decode_ms_s": 1e3 * (snap["decode_wait"] - prev["decode_wait"]) / dt / self.num_decode_threads,
            "wait_io_ms_s": 1e3 * (snap["io_wait"] - prev["io_wait"]) / dt / self.num_io_threads,
            "failed": getattr(getattr(self.dataset, "failures", None), "count", 0),
            "batches": snap["out_batches"],
        }
        self._last, self._last_time = snap, now
        self._last_cache = (cache["hits"], cache["misses"], cache["evictions"])
        return stats

    def monitor_line(self) -> str:
        """One line over the interval since the previous call: queues, cache, throughput, waits."""
        with self._lock:
            run = self._run
        if run is None:
            return ""
        s = self._interval_stats(run)
        looked = s["cache_hits"] + s["cache_misses"]
        hit = 100.0 * s["cache_hits"] / looked if looked else 0.0
        return (
            f"[taxaug.data] Q(io/dec/ready): {s['q_io']}/{s['q_decode']}/{s['q_ready']}"
            f" | Cache(H/M/E): {hit:.0f}%/{100 - hit if looked else 0:.0f}%/{s['cache_evictions']}"
            f" | Size: {s['cache_bytes'] / 1e9:.2f}/{s['cache_max_bytes'] / 1e9:.2f}GB"
            f" | Tput(IO/Dec/Out): {s['io_per_s']:.1f}/{s['decode_per_s']:.1f}/{s['out_per_s']:.1f} it/s"
            f" | Wait(Main/Dec/IO): {s['wait_main_ms_s']:.0f}/{s['wait_decode_ms_s']:.0f}/{s['wait_io_ms_s']:.0f} ms/s"
            f" | Failed: {s['failed']}"
        )


def train_val_loaders(
    train: Any,
    val: Any,
    *,
    batch_size: int,
    group_rank: str | None = None,
    mode: str = "mixed-pairs",
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    train_batch_transform: Callable[[Any], Any] | None = None,
    val_batch_size: int | None = None,
    unpairable: str = "fill",
    **loader_kwargs: Any,
) -> tuple[PrefetchLoader, PrefetchLoader]:
    """A training loader (grouped sampler at `group_rank`, training augmentation) and a validation
    loader (plain in-order batches, no augmentation, no sample dropped), sharing loader settings.

    `group_rank` defaults to the finest rank. Validation never receives `train_transform` or
    `train_batch_transform`; that separation is the point of this helper.
    """
    from taxaug.data.sampler import GroupedBatchSampler

    group_rank = group_rank or train.rank_names[0]
    train_sampler = GroupedBatchSampler(train.group_ids(group_rank), batch_size, mode=mode,  # type: ignore[arg-type]
                                        seed=seed, num_replicas=num_replicas, rank=rank,
                                        unpairable=unpairable)  # type: ignore[arg-type]
    val_sampler = GroupedBatchSampler(np.full(len(val), -1, dtype=np.int64), val_batch_size or batch_size,
                                      mode="standard", shuffle=False, num_replicas=num_replicas, rank=rank)
    train_loader = PrefetchLoader(train, train_sampler, transform=train_transform,
                                  batch_transform=train_batch_transform, **loader_kwargs)
    val_loader = PrefetchLoader(val, val_sampler, **loader_kwargs)
    return train_loader, val_loader
