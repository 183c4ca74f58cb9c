"""Fault reproductions for the data IO path, with real files and processes (issue 13 items 7-10, 12, 14).

Each test causes the failure a user can meet — a decompression-bomb header, a FIFO that never
delivers, identifiers escaping the images folder, a truncated labels file, a CLI run — and asserts
the one-line error, the exit code, the counted placeholder or the refusal.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import struct
import subprocess
import sys
import threading
import tracemalloc
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from taxaug.data import (
    GroupedBatchSampler,
    HybridDataset,
    ImageLoadError,
    ImageLocator,
    PrefetchLoader,
    PureHDF5Dataset,
    SchemaError,
    verify_images,
    write_labels,
)
from taxaug.data._io import MAX_READ_THREADS, reader_threads
from taxaug.data.cli import main
from taxaug.data.dataset import IdentifierArray

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB pixels, followed by a token IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _folder(tmp_path: Path, n: int = 8, ids: list[str] | None = None) -> tuple[Path, Path, list[str]]:
    ids = ids or [f"{i:03d}.jpg" for i in range(n)]
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    for i, name in enumerate(ids):
        (img_dir / name).write_bytes(_jpeg(i))
    labels = write_labels(tmp_path / "labels.h5", ids, {"taxa_L10": np.arange(len(ids)) % 3 + 1})
    return labels, img_dir, ids


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "taxaug.data.cli", "verify", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _verify(capsys, *args: str) -> tuple[int, str, str]:
    """The verify subcommand in this process (the subprocess tests cover the real entry point)."""
    code = main(["verify", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("taxaug-data verify: error: "), lines[0]
    return lines[0]


# ------------------------------------------------------------------ decompression bombs (item 7)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (10_000, 10_000)])
def test_bomb_header_is_a_bad_image_strict_and_permissive(tmp_path, width, height):
    # 1e10 pixels: Pillow's DecompressionBombError; 1e8: its warning variant (above the limit, below 2x)
    labels, img_dir, ids = _folder(tmp_path)
    (img_dir / ids[2]).write_bytes(_png_header(width, height))
    strict = HybridDataset(labels, img_dir, image_size=8)
    with pytest.raises(ImageLoadError, match=rf"{ids[2]}: decompression bomb.*raise max_pixels") as err:
        strict.load_image(2)
    assert "\n" not in str(err.value)
    loose = HybridDataset(labels, img_dir, image_size=8, missing="permissive")
    loader = PrefetchLoader(loose, GroupedBatchSampler(loose.group_ids("taxa_L10"), 3, mode="standard",
                                                       shuffle=False), monitor_interval=None)
    batches = list(loader)
    assert sum(b.batch_size for b in batches) == len(ids)  # the epoch is complete
    assert loose.failures.count == 1 and "decompression bomb" in loose.failures.report()
    assert not batches[0].images[2].any()


def test_bomb_warning_made_an_error_is_still_a_bad_image(tmp_path):
    labels, img_dir, ids = _folder(tmp_path)
    (img_dir / ids[1]).write_bytes(_png_header(10_000, 10_000))
    ds = HybridDataset(labels, img_dir, image_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError, match=f"{ids[1]}: decompression bomb"):
            ds.load_image(1)


def test_max_pixels_is_configurable_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    labels, img_dir, ids = _folder(tmp_path)
    (img_dir / ids[3]).write_bytes(_png_header(20_000, 10_000))  # 2e8 px: above twice Pillow's default
    small = HybridDataset(labels, img_dir, image_size=8, max_pixels=500)
    with pytest.raises(ImageLoadError, match=f"{ids[0]}: decompression bomb: 32x24 = 768 pixels exceeds the "
                                             "limit of 500"):
        small.load_image(0)
    big = HybridDataset(labels, img_dir, image_size=8, max_pixels=10**9)
    with pytest.raises(ImageLoadError) as err:
        big.load_image(3)  # allowed through the pixel check; fails later because the data is a stub
    assert "decompression bomb" not in str(err.value) and "not a decodable image" in str(err.value)
    assert big.load_image(0).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="max_pixels must be a positive int"):
        HybridDataset(labels, img_dir, max_pixels=0)


# ------------------------------------------------------------------ reads that never return (item 8)


@pytest.fixture
def fifo_dataset(tmp_path):
    """A folder whose image 4 is a FIFO with no writer; opened readers are released at teardown."""
    labels, img_dir, ids = _folder(tmp_path)
    fifo = img_dir / ids[4]
    fifo.unlink()
    os.mkfifo(fifo)
    yield labels, img_dir, ids, fifo
    # a writer that opens and closes lets every blocked reader see end-of-file (ENXIO: none is blocked)
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_fifo_read_times_out_strict_names_file(fifo_dataset):
    labels, img_dir, ids, _ = fifo_dataset
    exists_only = verify_images(labels, img_dir, decode=False, read_timeout=0.2)  # stat does not open it
    assert exists_only.failure_reasons == {ids[4]: "not a regular file"}
    ds = HybridDataset(labels, img_dir, image_size=8, read_timeout=0.2)
    with pytest.raises(ImageLoadError, match=rf"{ids[4]}: read failed \(timed out after 0.2 s\)"):
        ds.load_image(4)
    threads = reader_threads()
    with pytest.raises(ImageLoadError, match="still blocked"):  # fails at once, starts no thread
        ds.load_image(4)
    assert reader_threads() == threads <= MAX_READ_THREADS
    assert ds.load_image(5).shape == (3, 8, 8)  # other files still read


def test_fifo_permissive_is_a_counted_placeholder_every_epoch(fifo_dataset):
    labels, img_dir, ids, _ = fifo_dataset
    ds = HybridDataset(labels, img_dir, image_size=8, read_timeout=0.2, missing="permissive")
    loader = PrefetchLoader(ds, GroupedBatchSampler(ds.group_ids("taxa_L10"), 4, mode="standard"),
                            monitor_interval=None, cache_bytes=0)
    for epoch in range(3):
        assert sum(b.batch_size for b in loader) == len(ids)
        assert ds.failures.count == epoch + 1
    assert "timed out after 0.2 s" in ds.failures.report()
    assert reader_threads() <= MAX_READ_THREADS


def test_pure_hdf5_read_timeout_argument_checked(tmp_path):
    path = write_labels(tmp_path / "p.h5", ["a"], {"taxa_L10": [1]}, images=[_jpeg(0)])
    assert PureHDF5Dataset(path, read_timeout=5).load_image(0).shape == (3, 24, 32)
    assert PureHDF5Dataset(path, read_timeout=None).read_timeout is None
    for bad in (0, -1, float("inf"), float("nan"), "60", True):
        with pytest.raises(ValueError, match="read_timeout must be a positive number"):
            PureHDF5Dataset(path, read_timeout=bad)


def test_verify_cli_times_out_on_fifo_and_exits(fifo_dataset):
    labels, img_dir, ids, _ = fifo_dataset
    proc = _cli(str(labels), str(img_dir), "--read-timeout", "0.3", "--no-progress")
    assert proc.returncode == 1, proc.stderr  # and the process exited despite the blocked reader thread
    assert f"corrupt: {ids[4]} (read failed (timed out after 0.3 s))" in proc.stdout
    assert "verify FAILED: 8 checked, 0 missing, 1 corrupt" in proc.stdout


# ------------------------------------------------------------------ identifiers escaping images_dir (item 12)


@pytest.mark.parametrize("bad", ["../victim.jpg", "sub/../../victim.jpg", "/etc/hostname", "..", "a/b/../../../v"])
def test_identifiers_escaping_images_dir_are_refused(tmp_path, bad):
    ids = ["000.jpg", "001.jpg", bad]
    labels, img_dir, _ = _folder(tmp_path, ids=ids[:2])
    (tmp_path / "victim.jpg").write_bytes(_jpeg(9))
    labels = write_labels(tmp_path / "bad.h5", ids, {"taxa_L10": [1, 2, 3]})
    with pytest.raises(ValueError, match=rf"img_identifiers: 1 identifier\(s\) point outside images_dir .*row 2: "
                                         rf"'{bad}'"):
        HybridDataset(labels, img_dir)
    assert len(HybridDataset(labels, img_dir, rows=[0, 1])) == 2  # only the rows read are checked
    report = verify_images(labels, img_dir)
    assert report.corrupt_identifiers == [bad] and not report.passed
    assert report.failure_reasons[bad] == "identifier points outside images_dir"


def test_identifiers_inside_images_dir_and_shard_dot_dot(tmp_path):
    ids = ["a/../000.jpg", "..x.jpg", "b..c.jpg"]
    labels, img_dir, _ = _folder(tmp_path, ids=["000.jpg"])
    (img_dir / "..x.jpg").write_bytes(_jpeg(1))
    (img_dir / "b..c.jpg").write_bytes(_jpeg(2))
    (img_dir / "a").mkdir()
    labels = write_labels(tmp_path / "ok.h5", ids, {"taxa_L10": [1, 2, 3]})
    ds = HybridDataset(labels, img_dir, image_size=8)  # '..' inside a name, or climbing back in: fine
    assert all(ds.load_image(i).shape == (3, 8, 8) for i in range(3))
    # sharded by 2 characters, "..x.jpg" would live in images_dir/../..x.jpg
    with pytest.raises(ValueError, match=r"row 1: '\.\.x\.jpg'"):
        HybridDataset(labels, img_dir, shard_k=2)
    # a NUL byte cannot come from HDF5 strings, but any array given to the check is screened for it
    assert ImageLocator(img_dir).escaping(np.array([b"ok.jpg", b"a\x00b.jpg", b"ok\x00"])).tolist() == [1]
    linked = tmp_path / "linked"
    linked.symlink_to(img_dir)  # a symlinked images folder is fine: the check is lexical
    assert HybridDataset(labels, linked, image_size=8).load_image(0).shape == (3, 8, 8)


# ------------------------------------------------------------------ identifiers held once, fixed width (issue 12.5)


def test_identifiers_are_a_fixed_width_array_not_python_objects(tmp_path):
    n = 20_000
    ids = [f"{i:07d}_x.jpg" for i in range(n)]
    (tmp_path / "images").mkdir()
    path = write_labels(tmp_path / "big.h5", ids, {"taxa_L10": np.arange(n) % 50 + 1})
    HybridDataset(path, tmp_path / "images")  # imports and caches warmed outside the measurement
    gc.collect()
    tracemalloc.start()
    try:
        ds = HybridDataset(path, tmp_path / "images")
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # per row: 13 identifier bytes + int64 file row + int64 target (~29 B); an object array of str held
    # ~64 B more per row (a pointer and a Python string each), which every forked worker copies on touch
    assert retained < 45 * n, retained / n
    assert isinstance(ds.identifiers, IdentifierArray)
    assert ds.identifiers.array.dtype == np.dtype("S13") and ds.identifiers.nbytes == 13 * n
    assert ds.identifiers[5] == ids[5] and ds.subset([3, 7]).identifiers.tolist() == [ids[3], ids[7]]


# ------------------------------------------------------------------ verify (item 10)


def test_verify_fails_by_default_on_a_missing_image(tmp_path, capsys):
    labels, img_dir, ids = _folder(tmp_path)
    (img_dir / ids[6]).unlink()
    code, out, _ = _verify(capsys, str(labels), str(img_dir), "--no-progress")
    assert code == 1
    assert "verify FAILED: 8 checked, 1 missing" in out and f"missing: {ids[6]}" in out
    assert _verify(capsys, str(labels), str(img_dir), "--max-missing-count", "1", "--no-progress")[0] == 0


def test_verify_decodes_as_the_loader(tmp_path):
    labels, img_dir, ids = _folder(tmp_path)
    (img_dir / ids[0]).write_bytes(_png_header(100_000, 100_000))
    g16 = io.BytesIO()
    Image.frombytes("I;16", (2, 2), np.full(4, 30000, "<u2").tobytes()).save(g16, "PNG")
    (img_dir / ids[1]).write_bytes(g16.getvalue())
    report = verify_images(labels, img_dir, max_missing_count=1)
    loader_reason = None
    try:
        HybridDataset(labels, img_dir, image_size=64).load_image(0)
    except ImageLoadError as exc:
        loader_reason = exc.reason
    assert report.corrupt_identifiers == [ids[0]] and report.passed
    assert report.failure_reasons[ids[0]] == loader_reason
    assert not verify_images(labels, img_dir, max_pixels=500).passed  # the 32x24 JPEGs exceed it


def test_verify_reports_schema_and_tree_problems(tmp_path, capsys):
    _, img_dir, ids = _folder(tmp_path, n=4)
    labels = write_labels(tmp_path / "tree.h5", ids, {"taxa_L10": [1, 1, 2, 2], "taxa_L20": [7, 8, 9, 9]})
    code, out, _ = _verify(capsys, str(labels), str(img_dir), "--no-progress")
    assert code == 1
    assert "1 labels-file problem(s)" in out
    assert "taxa_L10 taxon 1 sits under 2 parents at taxa_L20: 7 (1 row), 8 (1 row)" in out
    with h5py.File(labels, "a") as f:
        del f["taxa_L20"]
        f["taxa_L20"] = np.array([7, 7, 9, 9], dtype=np.int64)  # wrong dtype
    report = verify_images(labels, img_dir)
    assert not report.passed and any("taxa_L20: dtype must be uint32" in p for p in report.labels_problems)


def test_verify_cli_truncated_labels_file_is_one_line(tmp_path):
    labels, img_dir, _ = _folder(tmp_path)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(labels.read_bytes()[: labels.stat().st_size // 3])
    proc = _cli(str(truncated), str(img_dir))
    assert proc.returncode == 1
    assert f"{truncated} cannot be verified: not an HDF5 file" in _one_line_error(proc.stderr)
    with pytest.raises(SchemaError):
        HybridDataset(truncated, img_dir)


def test_verify_other_one_line_errors(tmp_path, capsys):
    labels, img_dir, _ = _folder(tmp_path)
    ints = tmp_path / "ints.h5"
    with h5py.File(ints, "w") as f:
        f["img_identifiers"] = np.arange(8)
        f["taxa_L10"] = np.ones(8, np.uint32)
    code, _, err = _verify(capsys, str(ints), str(img_dir))
    assert code == 1
    assert "img_identifiers: dtype must be variable-length string, got int64" in _one_line_error(err)

    folder = tmp_path / "reports"
    folder.mkdir()
    code, _, err = _verify(capsys, str(labels), str(img_dir), "--report", str(folder))
    assert code == 2
    assert f"--report {folder} is a folder" in _one_line_error(err)
    blocked = tmp_path / "file"
    blocked.write_text("")
    code, _, err = _verify(capsys, str(labels), str(img_dir), "--report", str(blocked / "r.json"), "--no-progress")
    assert code == 2 and "cannot write --report" in _one_line_error(err)

    code, _, err = _verify(capsys, str(labels), str(tmp_path / "nowhere"))
    assert code == 2
    assert "is not a directory" in _one_line_error(err)
    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(labels), str(img_dir), "--read-timeout", "-1"])
    assert exit_.value.code == 2 and "must be a number of seconds" in capsys.readouterr().err


# ------------------------------------------------------------------ loader close mid-epoch (item 14)


def test_loader_closed_mid_epoch_by_a_second_thread_is_never_a_short_epoch(tmp_path):
    labels, img_dir, _ = _folder(tmp_path, n=12)
    ds = HybridDataset(labels, img_dir, image_size=8)
    loader = PrefetchLoader(ds, GroupedBatchSampler(ds.group_ids("taxa_L10"), 2, mode="standard", shuffle=False),
                            monitor_interval=None, max_ready_batches=1, batch_concurrency=1)
    got_one, errors = threading.Event(), []
    release = threading.Event()

    def consume():
        try:
            for _ in loader:
                got_one.set()
                release.wait(10)  # hold the batch until the other thread has closed the loader
        except RuntimeError as exc:
            errors.append(str(exc))

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert got_one.wait(10)
    loader.close()
    release.set()
    consumer.join(10)
    assert errors == ["loader closed mid-epoch after 1 of 6 batches (close() was called); this pass is "
                      "incomplete: iterate the loader again for a full epoch"]


# ------------------------------------------------------------------ a damaged HDF5 chunk (pure-HDF5 mode)


def test_damaged_hdf5_chunk_names_file_and_row(tmp_path):
    n = 4
    pixels = np.random.default_rng(0).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    path = write_labels(tmp_path / "p.h5", [f"s{i}" for i in range(n)], {"taxa_L10": np.arange(n) % 2 + 1})
    with h5py.File(path, "a") as f:
        f.create_dataset("images", data=pixels, chunks=(1, 16, 16, 3), compression="gzip")
        info = f["images"].id.get_chunk_info(2)
    data = bytearray(path.read_bytes())
    data[info.byte_offset + 10: info.byte_offset + info.size - 4] = b"\xab" * (info.size - 14)
    path.write_bytes(bytes(data))
    strict = PureHDF5Dataset(path)
    assert strict.load_image(1).shape == (3, 16, 16)
    with pytest.raises(ImageLoadError, match=r"p\.h5:images\[2\] \(s2\): read failed \(.*filter returned failure"):
        strict.load_image(2)
    loose = PureHDF5Dataset(path, image_size=8, missing="permissive")
    assert not loose.load_image(2).any() and loose.failures.count == 1


def test_reader_threads_are_bounded_when_every_read_hangs(tmp_path):
    from taxaug.data._io import ReadTimeout, _ReadPool

    pool = _ReadPool(max_threads=3)
    fifos = [tmp_path / f"f{i}" for i in range(5)]
    for fifo in fifos:
        os.mkfifo(fifo)
    try:
        for fifo in fifos:  # five different hung files, three threads at most
            with pytest.raises(ReadTimeout, match=r"timed out after 0\.1 s"):
                pool.call(str(fifo), fifo.read_bytes, 0.1)
        assert pool.threads() == 3
        with pytest.raises(ReadTimeout, match="still blocked"):
            pool.call(str(fifos[0]), fifos[0].read_bytes, 0.1)
        assert pool.threads() == 3
    finally:
        for fifo in fifos[:3]:  # the three started reads: release them
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    # the queued reads of f3 and f4 were cancelled and never start; healthy reads work again
    (tmp_path / "ok").write_bytes(b"data")
    assert pool.call(str(tmp_path / "ok"), (tmp_path / "ok").read_bytes, 5.0) == b"data"
    assert pool._hung[str(fifos[0])].result.get(timeout=5) == (True, b"")  # its blocked read saw end-of-file
    assert pool.call(str(fifos[0]), lambda: b"retried", 5.0) == b"retried"  # so the file is read again
    assert pool.threads() == 3


def test_timed_reads_work_in_a_forked_worker(tmp_path):
    labels, img_dir, _ = _folder(tmp_path)
    ds = HybridDataset(labels, img_dir, image_size=8, read_timeout=5.0)
    assert ds.load_image(0).shape == (3, 8, 8)  # the parent now holds an idle reader thread
    pid = os.fork()
    if pid == 0:  # the child has no reader threads: its pool must start its own
        code = 1
        try:
            code = 0 if ds.load_image(1).shape == (3, 8, 8) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
