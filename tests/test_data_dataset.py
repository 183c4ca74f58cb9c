"""Datasets: builder-free round trip, layouts, filtering alignment, splits, decode, missing/corrupt images."""

from __future__ import annotations

import io
import logging
import pickle
import warnings

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from taxaug.data import (
    FilterConfig,
    HybridDataset,
    ImageLoadError,
    LabelsDataset,
    PureHDF5Dataset,
    SchemaError,
    decode_image,
    shard_name,
    write_labels,
)
from taxaug.data.images import DecodeSpec
from taxaug.taxonomy import TaxonomyConflictError

N = 30


def _jpeg(seed: int, size=(32, 24)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _labels(n=N):
    species = 100 + np.arange(n) % 6  # 6 species
    genus = 10 + (species % 3)  # species 100,103 -> genus 10, ...
    species = species.copy()
    species[::7] = 0  # some unknown species
    return species, genus


@pytest.fixture
def hybrid(tmp_path):
    ids = [f"{i:04d}_0.jpg" for i in range(N)]
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i, name in enumerate(ids):
        (img_dir / name).write_bytes(_jpeg(i))
    species, genus = _labels()
    rng = np.random.default_rng(0)
    lat = rng.uniform(-60, 60, N)
    lat[::5] = np.nan
    in_region = (np.arange(N) % 4 != 0).astype(np.uint8)
    path = write_labels(tmp_path / "labels.h5", ids, {"taxa_L10": species, "taxa_L20": genus}, lat=lat,
                        lon=rng.uniform(-100, 100, N), dates=["2020-06-01T10:00:00"] * N,
                        elevation=rng.uniform(0, 2000, N), in_region=in_region)
    return path, img_dir, ids, species, genus, lat, in_region


def test_round_trip_targets_aux_and_images(hybrid):
    path, img_dir, ids, species, genus, lat, _ = hybrid
    ds = HybridDataset(path, img_dir, image_size=(16, 20), metadata=("spatial", "temporal", "elevation_multiscale"))
    assert len(ds) == N and ds.rank_names == ("taxa_L10", "taxa_L20")
    assert ds.num_classes == {"taxa_L10": 7, "taxa_L20": 4}
    assert ds.aux_components == [("spatial", 3), ("temporal", 2), ("elevation_multiscale", 6)]
    sample = ds[3]
    assert sample["image"].shape == (3, 16, 20) and sample["image"].dtype == torch.uint8
    batch = ds.collate([ds[i] for i in range(8)])
    assert batch.images.shape == (8, 3, 16, 20)
    assert batch.indices.tolist() == list(range(8))
    assert batch.aux.shape == (8, 11) and batch.aux_mask.shape == (8, 3)
    assert batch.aux_mask[:, 0].tolist() == [not np.isnan(v) for v in lat[:8]]
    # class indices map back to the raw taxon ids, 0 <-> 0
    for rank, raw in (("taxa_L10", species), ("taxa_L20", genus)):
        back = ds.taxon_ids(rank, ds.class_targets(rank))
        np.testing.assert_array_equal(back, raw)
    # the taxonomy is built from the same arrays: species' parent is its genus
    parents = ds.taxonomy.parent_array("taxa_L10")
    cls = ds.class_targets("taxa_L10")
    gen = ds.class_targets("taxa_L20")
    known = cls > 0
    np.testing.assert_array_equal(parents[cls[known]], gen[known])
    # decoded pixels equal a direct Pillow decode + resize of the same file
    direct = decode_image((img_dir / ids[3]).read_bytes(), DecodeSpec(size=(16, 20)))
    assert torch.equal(sample["image"], direct)


def test_group_ids_stay_aligned_after_filtering_and_split(hybrid):
    path, img_dir, _ids, species, _, lat, in_region = hybrid
    cfg = FilterConfig(required_ranks=("taxa_L10",), in_region_only=True, required_metadata=("spatial",))
    ds = HybridDataset(path, img_dir, image_size=16, filters=cfg)
    keep = (species != 0) & (in_region == 1) & ~np.isnan(lat)
    assert len(ds) == keep.sum()
    np.testing.assert_array_equal(ds.file_rows, np.flatnonzero(keep))
    assert set(ds.filter_report) == {"unknown taxa_L10", "not in_region", "unknown spatial"}
    assert sum(ds.filter_report.values()) == N - keep.sum()
    for view in (ds, *ds.split(0.3, seed=4)):
        gids = view.group_ids("taxa_L10")
        # each position's group id is the class of that position's own identifier
        raw = species[[int(i[:4]) for i in view.identifiers]]
        np.testing.assert_array_equal(view.taxon_ids("taxa_L10", np.where(gids < 0, 0, gids)), raw)
        assert (gids >= 1).all()


def test_partial_labels_off_drops_rows_unknown_at_any_rank(hybrid):
    path, img_dir, _, species, _, _, _ = hybrid
    ds = HybridDataset(path, img_dir, image_size=16, filters=FilterConfig(partial_labels=False))
    assert len(ds) == (species != 0).sum()
    full = HybridDataset(path, img_dir, image_size=16)
    assert (full.group_ids("taxa_L10") == -1).sum() == (species == 0).sum()


def test_split_deterministic_disjoint_and_stratified(hybrid):
    path, img_dir, *_ = hybrid
    ds = HybridDataset(path, img_dir, image_size=16)
    a_train, a_val = ds.split(0.25, seed=3)
    _b_train, b_val = ds.split(0.25, seed=3)
    np.testing.assert_array_equal(a_val.file_rows, b_val.file_rows)
    assert set(a_train.file_rows).isdisjoint(a_val.file_rows)
    assert sorted([*a_train.file_rows, *a_val.file_rows]) == list(range(N))
    assert len(a_val) == round(0.25 * N)
    _, c_val = ds.split(0.25, seed=4)
    assert not np.array_equal(c_val.file_rows, a_val.file_rows)
    s_train, s_val = ds.split(0.5, seed=0, stratify_rank="taxa_L10")
    tr = np.bincount(s_train.class_targets("taxa_L10"), minlength=7)
    va = np.bincount(s_val.class_targets("taxa_L10"), minlength=7)
    assert (np.abs(tr - va) <= 1).all()  # every class halved (up to rounding)
    # both views share class indices and the taxonomy
    assert s_val.num_classes == ds.num_classes and s_val.taxonomy is ds.taxonomy


def test_presplit_file_reuses_training_class_map(tmp_path, hybrid):
    path, img_dir, ids, _species, genus, *_ = hybrid
    train = HybridDataset(path, img_dir, image_size=16)
    val_path = write_labels(tmp_path / "val.h5", ids[:4], {"taxa_L10": [101, 999, 0, 105],
                                                           "taxa_L20": genus[[1, 1, 2, 5]]})
    val = HybridDataset(val_path, img_dir, image_size=16, class_maps=train.class_to_taxon_id)
    assert val.num_classes == train.num_classes
    np.testing.assert_array_equal(val.taxon_ids("taxa_L10", val.class_targets("taxa_L10")), [101, 0, 0, 105])


def test_sharded_layout_and_flat_fallback_warned_once(tmp_path, hybrid, caplog):
    path, img_dir, ids, *_ = hybrid
    sharded = tmp_path / "sharded"
    for name in ids[:-3]:  # the last three stay flat
        (sharded / shard_name(name, 3)).mkdir(parents=True, exist_ok=True)
        (sharded / shard_name(name, 3) / name).write_bytes((img_dir / name).read_bytes())
    for name in ids[-3:]:
        (sharded / name).write_bytes((img_dir / name).read_bytes())
    ds = HybridDataset(path, sharded, image_size=16, shard_k=3)
    flat = HybridDataset(path, img_dir, image_size=16)
    with caplog.at_level(logging.WARNING, logger="taxaug.data"):
        for i in range(N):
            assert torch.equal(ds.load_image(i), flat.load_image(i))
    fallbacks = [r for r in caplog.records if "falling back to the flat layout" in r.message]
    assert len(fallbacks) == 1
    assert str(ds.locator.path_for(ids[0])).endswith(f"{shard_name(ids[0], 3)}/{ids[0]}")


def test_file_extension_appended(tmp_path):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    (img_dir / "a1.png").write_bytes(_jpeg(1))
    path = write_labels(tmp_path / "l.h5", ["a1"], {"taxa_L10": [5]})
    ds = HybridDataset(path, img_dir, file_extension="png", image_size=8)
    assert ds.load_image(0).shape == (3, 8, 8)


def test_missing_and_corrupt_images_strict_and_permissive(hybrid):
    path, img_dir, ids, *_ = hybrid
    (img_dir / ids[2]).unlink()
    (img_dir / ids[5]).write_bytes(b"definitely not a jpeg")
    strict = HybridDataset(path, img_dir, image_size=(12, 10))
    with pytest.raises(ImageLoadError, match=ids[2]) as err:
        strict.load_image(2)
    assert "file not found" in str(err.value)
    with pytest.raises(ImageLoadError, match=ids[5]):
        strict.load_image(5)
    loose = HybridDataset(path, img_dir, image_size=(12, 10), missing="permissive")
    batch = loose.collate([loose[i] for i in range(8)])
    assert batch.images.shape == (8, 3, 12, 10)  # batch size kept
    assert not batch.images[2].any() and not batch.images[5].any()
    assert loose.failures.count == 2
    report = loose.failures.report()
    assert ids[2] in report and ids[5] in report
    with pytest.raises(ValueError, match="needs image_size"):
        HybridDataset(path, img_dir, missing="permissive")


def test_invalid_file_refused_with_full_report(tmp_path, hybrid):
    path, img_dir, *_ = hybrid
    with h5py.File(path, "a") as f:
        data = f["taxa_L20"][()]
        del f["taxa_L20"]
        f.create_dataset("taxa_L20", data=data.astype(np.int64))
        f["spatial"][0] = np.nan
    with pytest.raises(SchemaError) as err:
        HybridDataset(path, img_dir)
    assert "taxa_L20: dtype must be uint32" in str(err.value)
    assert "spatial: 3 NaN/infinite" in str(err.value)
    with pytest.raises(SchemaError, match="taxa_L40: required rank"):
        write_labels(tmp_path / "ok.h5", ["a"], {"taxa_L10": [1]})
        HybridDataset(tmp_path / "ok.h5", img_dir, rank_names=["taxa_L10", "taxa_L40"])


def test_taxonomy_conflicts_are_reported(tmp_path, hybrid):
    _, img_dir, ids, *_ = hybrid
    path = write_labels(tmp_path / "c.h5", ids[:4], {"taxa_L10": [1, 1, 2, 2], "taxa_L20": [7, 8, 9, 9]})
    in_file_ids = "taxa_L10 taxon 1 sits under 2 parents at taxa_L20: 7 (1 row), 8 (1 row)"  # not class indices
    with pytest.raises(TaxonomyConflictError) as info:
        HybridDataset(path, img_dir)
    assert info.value.lines == (in_file_ids,) and in_file_ids in str(info.value)
    assert [(c.rank, c.child, c.parents) for c in info.value.conflicts] == [("taxa_L10", 1, (1, 2))]  # classes
    with pytest.warns(UserWarning, match="1 taxon sits under several parents; kept the most frequent parent") as got:
        HybridDataset(path, img_dir, taxonomy_conflicts="majority")
    assert in_file_ids in str(got[0].message)


@pytest.mark.parametrize("stored", ["encoded", "pixels"])
def test_pure_hdf5_mode(tmp_path, stored):
    n = 6
    if stored == "encoded":
        images = [_jpeg(i) for i in range(n)]
    else:
        images = np.random.default_rng(0).integers(0, 255, (n, 20, 24, 3), dtype=np.uint8)
    path = write_labels(tmp_path / "p.h5", [f"s{i}" for i in range(n)], {"taxa_L10": np.arange(n) % 2 + 1},
                        images=images)
    ds = PureHDF5Dataset(path, image_size=(10, 12))
    batch = ds.collate([ds[i] for i in range(n)])
    assert batch.images.shape == (n, 3, 10, 12)
    if stored == "pixels":
        raw = PureHDF5Dataset(path)
        assert torch.equal(raw.load_image(1), torch.from_numpy(images[1]).permute(2, 0, 1))
    clone = pickle.loads(pickle.dumps(ds))  # fork/spawn workers reopen the file lazily
    assert torch.equal(clone.load_image(2), ds.load_image(2))
    no_images = write_labels(tmp_path / "q.h5", ["a"], {"taxa_L10": [1]})
    with pytest.raises(SchemaError, match="images: dataset is missing"):
        PureHDF5Dataset(no_images)


def test_decode_modes_and_draft():
    data = _jpeg(3, size=(400, 300))
    cover = decode_image(data, DecodeSpec(size=(50, 50)))
    stretch = decode_image(data, DecodeSpec(size=(50, 50), resize="resize"))
    nodraft = decode_image(data, DecodeSpec(size=(50, 50), draft=False))
    assert cover.shape == stretch.shape == nodraft.shape == (3, 50, 50)
    keep = decode_image(data, DecodeSpec())
    assert keep.shape == (3, 300, 400)
    # draft decoding stays close to a full decode on smooth content
    smooth = np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1))
    buf = io.BytesIO()
    Image.fromarray(np.stack([smooth] * 3, axis=2)).save(buf, format="JPEG", quality=95)
    a = decode_image(buf.getvalue(), DecodeSpec(size=(60, 80))).float()
    b = decode_image(buf.getvalue(), DecodeSpec(size=(60, 80), draft=False)).float()
    assert (a - b).abs().mean() < 3.0
    gray = io.BytesIO()
    Image.fromarray(smooth).save(gray, format="PNG")
    assert decode_image(gray.getvalue(), DecodeSpec(size=8)).shape == (3, 8, 8)
    with pytest.raises(ImageLoadError, match="not a decodable image"):
        decode_image(b"\x00" * 10, DecodeSpec(size=8), name="x.jpg")


def test_index_errors_and_pickling(hybrid):
    path, img_dir, *_ = hybrid
    ds = HybridDataset(path, img_dir, image_size=8)
    with pytest.raises(IndexError):
        ds[N]
    assert ds[-1]["index"] == N - 1
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone.load_image(4), ds.load_image(4))
    with pytest.raises(KeyError, match="not loaded"):
        ds.group_ids("taxa_L30")


def test_raw_columns_as_metadata_have_no_nan(hybrid):
    path, img_dir, _, _, _, lat, _ = hybrid
    ds = HybridDataset(path, img_dir, image_size=8, metadata=("raw_lat", "raw_elevation"))
    assert ds.aux_components == [("raw_lat", 1), ("raw_elevation", 1)]
    aux, mask = ds.aux(np.arange(N))
    assert torch.isfinite(aux).all()
    assert mask[:, 0].tolist() == (~np.isnan(lat)).tolist()


# ------------------------------------------------------------------ one lean read on open


def _dense_open_reference(path, names, rows, class_maps=None):
    """Targets, aux and mask of the kept file `rows` from whole columns, a Python dict per class map."""
    with h5py.File(path) as f:
        ranks = {r: f[r][()].astype(np.int64)[rows] for r in ("taxa_L10", "taxa_L20")}
        blocks = [f[n][()].astype(np.float32).reshape(f[n].shape[0], -1)[rows] for n in names]
    targets, tables = {}, {}
    for r, raw in ranks.items():
        table = class_maps[r] if class_maps else [0, *sorted(set(raw.tolist()) - {0})]
        index = {int(t): c for c, t in enumerate(table) if c}
        targets[r] = np.array([index.get(v, 0) for v in raw.tolist()])
        tables[r] = np.asarray(table)
    mask = np.stack([np.array([bool(np.any(b != 0)) and bool(np.isfinite(b).all()) for b in block])
                     for block in blocks], axis=1)
    aux = np.concatenate([np.where(np.isfinite(b), b, 0) for b in blocks], axis=1)
    return targets, tables, aux, mask


@pytest.mark.parametrize("class_maps", [False, True])
def test_open_in_slices_equals_a_dense_reference(hybrid, monkeypatch, caplog, class_maps):
    from taxaug.data import dataset as dataset_module

    path, img_dir, ids, *_ = hybrid
    monkeypatch.setattr(dataset_module, "AUX_BLOCK", 4)  # 30 rows: 8 slices, the last one short
    names = ("spatial", "raw_lat", "elevation_multiscale", "in_region")
    maps = {"taxa_L10": np.array([0, 101, 102, 104, 777]), "taxa_L20": np.array([0, 11, 12])} if class_maps else None
    chosen = np.r_[1:6, 9, 13:25, 29]  # slice 2 keeps one row, slices 5-6 all, slice 7 none of its first rows
    cfg = FilterConfig(in_region_only=True)
    with caplog.at_level(logging.WARNING, logger="taxaug.data"):
        ds = HybridDataset(path, img_dir, metadata=names, filters=cfg, rows=chosen, class_maps=maps)
    rows = np.intersect1d(chosen, np.flatnonzero(h5py.File(path)["in_region"][()] == 1))
    targets, tables, aux, mask = _dense_open_reference(path, names, rows, maps)
    np.testing.assert_array_equal(ds.file_rows, rows)
    assert ds.identifiers.tolist() == [ids[r] for r in rows]
    for r in ("taxa_L10", "taxa_L20"):
        np.testing.assert_array_equal(ds.class_to_taxon_id[r], tables[r])
        np.testing.assert_array_equal(ds.class_targets(r), targets[r])
    got = ds.targets(np.arange(len(ds)))
    assert all(t.dtype == torch.int64 for t in got.values())
    np.testing.assert_array_equal(got["taxa_L10"].numpy(), targets["taxa_L10"])
    aux_t, mask_t = ds.aux(np.arange(len(ds)))
    np.testing.assert_array_equal(aux_t.numpy(), aux)
    np.testing.assert_array_equal(mask_t.numpy(), mask)
    assert ds.aux_components == [("spatial", 3), ("raw_lat", 1), ("elevation_multiscale", 6), ("in_region", 1)]
    assert ("carry taxon ids absent from the given class map" in caplog.text) == class_maps  # 100, 103, 105 unmapped


@pytest.mark.parametrize("table", [[0, 105, 101], [3, 101], [0, 101, 101], [0, -1, 101], [[0, 101]]])
def test_class_map_that_is_not_ascending_is_refused(hybrid, table):
    path, img_dir, *_ = hybrid
    with pytest.raises(ValueError, match=r"class_maps\['taxa_L10'\] must be 1-D: 0 \(the null class\) first"):
        HybridDataset(path, img_dir, class_maps={"taxa_L10": np.array(table)})


@given(raw=st.lists(st.sampled_from([0, 0, 1, 7, 300, 2**22 + 5, 2**31, 2**32 - 1]), max_size=40),
       extra=st.lists(st.sampled_from([2, 7, 2**22 - 1, 2**33]), max_size=3, unique=True),
       dtype=st.sampled_from([np.uint32, np.int64, np.uint64]))
def test_class_indices_equal_a_dict_reference(raw, extra, dtype):
    """The dense lookup (small ids) and the sort (ids past LOOKUP_IDS) agree with a dict, with and without a map."""
    from taxaug.data.schema import class_indices, taxon_table

    ids = np.array(raw, dtype=dtype)
    table = taxon_table(ids)
    assert table.tolist() == [0, *sorted(set(raw) - {0})]
    idx, unseen = class_indices(ids, table)
    assert idx.dtype == np.int32 and unseen == 0
    assert idx.tolist() == [table.tolist().index(v) if v else 0 for v in raw]
    given_map = np.array([0, *sorted(set(raw[::2]) - {0} | set(extra))], dtype=np.int64)
    position = {int(t): c for c, t in enumerate(given_map) if c}
    idx, unseen = class_indices(ids, given_map)
    assert idx.tolist() == [position.get(v, 0) for v in raw]
    assert unseen == sum(1 for v in raw if v and v not in position)


@given(names=st.lists(st.binary(max_size=5), min_size=1, max_size=12), width=st.integers(1, 8))
def test_inner_nul_equals_a_bytes_reference(names, width):
    from taxaug.data.images import _inner_nul

    ids = np.array(names, dtype=f"S{width}")  # truncated to width, trailing NULs are padding
    expected = [b"\0" in bytes(v).rstrip(b"\0") for v in ids.tolist()]
    assert _inner_nul(ids).tolist() == expected


def _tree_of(child, parent, on_conflict):
    from taxaug.taxonomy import Taxonomy

    try:
        tax = Taxonomy.from_labels({"s": child, "g": parent}, num_classes={"s": 100_001, "g": 40_000},
                                   on_conflict=on_conflict)
    except TaxonomyConflictError as exc:
        return exc.conflicts
    return tax.parent_array("s").tolist(), tax.conflicts


@given(cols=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), min_size=1, max_size=30),
       child_dtype=st.sampled_from([np.int32, np.uint32, np.uint64]),
       parent_dtype=st.sampled_from([np.uint8, np.int32, np.uint64]), on_conflict=st.sampled_from(["raise", "majority"]))
def test_taxonomy_from_narrow_columns_equals_int64(cols, child_dtype, parent_dtype, on_conflict):
    """Datasets hand int32 targets to Taxonomy.from_labels; pair keys past int32 (K_child * K_parent) stay exact."""
    child, parent = np.array(cols, dtype=np.int64).T
    child *= 20_000  # child * K_parent reaches 3.2e9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (_tree_of(child.astype(child_dtype), parent.astype(parent_dtype), on_conflict)
                == _tree_of(child, parent, on_conflict))


def test_open_peak_memory_stays_under_twice_the_columns(tmp_path):
    """tracemalloc peak of an open (validate included) against the in-memory size of the columns it reads."""
    import tracemalloc

    n, rng = 60_000, np.random.default_rng(0)
    species = rng.integers(1, 500, n)
    taxa = {f"taxa_L{10 * (k + 1)}": (species // 3**k + 1) * 7 for k in range(4)}
    path = write_labels(tmp_path / "m.h5", [f"{i:09d}" for i in range(n)], taxa, lat=rng.uniform(-60, 60, n),
                        lon=rng.uniform(-100, 100, n), dates=["2020-06-01"] * n, elevation=rng.uniform(0, 9, n))
    names = ("spatial", "temporal", "elevation_multiscale")
    with h5py.File(path) as f:
        ids = f["img_identifiers"][()]
        columns = ids.nbytes + sum(len(v) for v in ids) + sum(f[c][()].nbytes for c in (*taxa, *names))
    del ids
    tracemalloc.start()
    try:
        LabelsDataset(path, metadata=names)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 2 * columns, f"open peaked at {peak / columns:.2f}x the columns"


# ------------------------------------------------------------------ decode as a viewer shows it


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[None], 3, axis=0)


def _over_white_reference(rgba: np.ndarray) -> np.ndarray:
    """Float reference of compositing over white, rounded: c * a/255 + 255 * (1 - a/255)."""
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    out = rgba[..., :3].astype(np.float64) * a + 255.0 * (1.0 - a)
    return np.floor(out + 0.5).astype(np.uint8).transpose(2, 0, 1)


def _decoded(data: bytes, **spec) -> np.ndarray:
    return decode_image(data, DecodeSpec(**spec)).numpy()


def test_sixteen_bit_grey_scales_to_eight_bits():
    values = np.array([[0, 1, 128, 129, 30000, 32767, 65534, 65535]], dtype="<u2")
    values = np.concatenate([values, np.random.default_rng(0).integers(0, 65536, (3, 8)).astype("<u2")])
    img = Image.frombytes("I;16", (8, 4), values.tobytes())
    expected = _grey_rgb(np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8))
    for fmt in ("PNG", "TIFF"):
        data = _encode(img, fmt)
        assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
        out = _decoded(data)
        np.testing.assert_array_equal(out, expected)
        assert out[0, 0, 4] == 117  # 30000 of 65535, not white


def test_int32_and_float_images():
    ints = np.array([[-5, 0, 30000, 65535, 70000, 2**31 - 1]], dtype=np.int32)
    data = _encode(Image.fromarray(ints), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    clipped = np.clip(ints.astype(np.float64), 0, 65535)
    np.testing.assert_array_equal(_decoded(data), _grey_rgb(np.floor(clipped * 255 / 65535 + 0.5).astype(np.uint8)))
    floats = np.array([[-0.5, 0.0, 0.25, 0.5, 1.0, 1.5, np.nan]], dtype=np.float32)
    data = _encode(Image.fromarray(floats), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    ref = np.floor(np.clip(np.nan_to_num(floats.astype(np.float64)), 0, 1) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(_decoded(data), _grey_rgb(ref))


def test_transparent_images_are_composited_over_white():
    rng = np.random.default_rng(1)
    la = rng.integers(0, 256, (5, 6, 2), dtype=np.uint8)
    la[0, :, 1] = [0, 1, 127, 128, 254, 255]
    data = _encode(Image.frombytes("LA", (6, 5), la.tobytes()), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    rgba = np.concatenate([np.repeat(la[..., :1], 3, axis=2), la[..., 1:]], axis=2)
    np.testing.assert_array_equal(_decoded(data), _over_white_reference(rgba))
    # palette image with a transparent index: that colour shows the background
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * 756)
    pal.putdata([0, 1, 2, 3, 3, 2, 1, 0])
    data = _encode(pal, "PNG", transparency=1)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    np.testing.assert_array_equal(_decoded(data), _over_white_reference(np.asarray(opened.convert("RGBA"))))
    assert _decoded(data)[:, 0, 1].tolist() == [255, 255, 255]  # the green index is transparent
    rgba_img = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    data = _encode(Image.fromarray(rgba_img), "PNG")
    np.testing.assert_array_equal(_decoded(data), _over_white_reference(rgba_img))


def test_cmyk_matches_pillows_conversion():
    cmyk = Image.frombytes("CMYK", (8, 8), np.random.default_rng(2).integers(0, 256, 256, dtype=np.uint8).tobytes())
    for fmt in ("JPEG", "TIFF"):
        data = _encode(cmyk, fmt)
        opened = Image.open(io.BytesIO(data))
        assert opened.mode == "CMYK"
        np.testing.assert_array_equal(_decoded(data), np.asarray(opened.convert("RGB")).transpose(2, 0, 1))


def _rotated_jpeg(orientation: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(orientation)
    arr = np.repeat(np.repeat(rng.integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8), 10, 0), 10, 1)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_applied_by_default(orientation):
    from PIL import ImageOps

    data = _rotated_jpeg(orientation)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(_decoded(data), reference)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(_decoded(data, exif_transpose=False), stored)
    assert _decoded(data).shape[1:] == ((40, 30) if orientation >= 5 else (30, 40))


def test_exif_orientation_with_draft_and_resize():
    yy, xx = np.mgrid[0:300, 0:400]
    smooth = np.stack([xx * 255 // 399, yy * 255 // 299, (xx * yy) * 255 // (399 * 299)], axis=2).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(smooth), "JPEG", quality=95, exif=exif.tobytes())  # shown 300 wide, 400 high
    drafted = _decoded(data, size=(80, 60)).astype(np.float64)
    full = _decoded(data, size=(80, 60), draft=False).astype(np.float64)
    assert drafted.shape == (3, 80, 60)
    assert np.abs(drafted - full).mean() < 4.0  # draft decoding sized in the displayed orientation
    unrotated = _decoded(data, size=(80, 60), draft=False, exif_transpose=False).astype(np.float64)
    assert np.abs(unrotated - full).mean() > 4 * np.abs(drafted - full).mean()


def test_dataset_decode_options_reach_the_decoder(tmp_path):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    (img_dir / "r.jpg").write_bytes(_rotated_jpeg(6))
    (img_dir / "g.png").write_bytes(_encode(Image.frombytes("I;16", (2, 1), np.array([30000, 0], "<u2").tobytes()),
                                            "PNG"))
    path = write_labels(tmp_path / "l.h5", ["r.jpg", "g.png"], {"taxa_L10": [1, 2]})
    ds = HybridDataset(path, img_dir)
    assert ds.load_image(0).shape == (3, 40, 30) and ds.load_image(1)[:, 0, 0].tolist() == [117] * 3
    assert HybridDataset(path, img_dir, exif_transpose=False).load_image(0).shape == (3, 30, 40)
    with pytest.raises(ImageLoadError, match=r"r\.jpg: decompression bomb: 40x30 = 1200 pixels exceeds the limit "
                                             r"of 1000"):
        HybridDataset(path, img_dir, max_pixels=1000).load_image(0)
