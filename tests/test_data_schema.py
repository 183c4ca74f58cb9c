"""labels.h5 schema: writer round trip, every validation error, metadata encoders."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taxaug.data import SchemaError, encoders, validate, write_labels
from taxaug.data.schema import tree_conflicts


def _write(path, n=6, **kw):
    ids = [f"{i:04d}_0.jpg" for i in range(n)]
    taxa = {"taxa_L10": np.arange(n) % 3 + 1, "taxa_L20": np.ones(n)}
    return write_labels(path, ids, taxa, **kw)


def test_writer_round_trip_is_valid_and_holds_every_dataset(tmp_path):
    n = 5
    path = _write(tmp_path / "labels.h5", n=n, lat=[10, -20, np.nan, 45, 0], lon=[0, 100, 5, -170, 0],
                  dates=["2020-01-01", "2020-07-01T12:00:00", "", None, "2021-12-31T23:30:00Z"],
                  temporal_features=("month", "hour"), elevation=[0, 100, np.nan, 2500, 10],
                  elevation_sets={"micro": (10, 100), "macro": (1000,)}, anomaly_score=np.zeros(n),
                  observer_id=np.arange(n), in_region=[1, 0, 1, 1, 0], config={"source": "unit test"})
    report = validate(path)
    assert report.ok, report.problems
    assert report.num_samples == n and report.rank_names == ("taxa_L10", "taxa_L20")
    with h5py.File(path) as f:
        assert f["taxa_L10"].dtype == np.uint32
        assert f["spatial"].shape == (n, 3) and f["temporal"].shape == (n, 4)
        assert f["elevation_micro"].shape == (n, 4) and f["elevation_macro"].shape == (n, 2)
        assert list(f["elevation_micro"].attrs["scales"]) == [10, 100]
        assert json.loads(f["metadata"].attrs["config_json"]) == {"source": "unit test"}
        assert not f["spatial"][2].any()  # NaN latitude encodes as all-zero (unknown)
        assert not f["temporal"][3].any()  # missing date
        assert f["temporal"][0, 2:].tolist() == [0.0, 0.0]  # date without time: hour unknown
        assert f["temporal"][1, 2:].tolist() == pytest.approx([0.0, -1.0], abs=1e-6)  # 12:00
        np.testing.assert_allclose(np.linalg.norm(f["spatial"][0]), 1.0, rtol=1e-6)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _write(path)


def _corrupt(path, edit):
    _write(path, lat=np.zeros(6), lon=np.zeros(6), elevation=np.zeros(6), dates=["2020-01-01"] * 6,
           in_region=np.ones(6))
    with h5py.File(path, "a") as f:
        edit(f)
    return validate(path)


def _replace(f, name, data, **attrs):
    if name in f:
        del f[name]
    ds = f.create_dataset(name, data=data)
    for k, v in attrs.items():
        ds.attrs[k] = v


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda f: f.__delitem__("img_identifiers"), "img_identifiers: mandatory dataset is missing"),
        (lambda f: (f.__delitem__("taxa_L10"), f.__delitem__("taxa_L20")), "no rank datasets"),
        (lambda f: _replace(f, "taxa_L10", np.ones(6, dtype=np.int64)), "taxa_L10: dtype must be uint32"),
        (lambda f: _replace(f, "taxa_L20", np.ones(5, dtype=np.uint32)), "taxa_L20: length 5 does not match"),
        (lambda f: _replace(f, "img_identifiers", np.arange(6)), "img_identifiers: dtype must be variable-length"),
        (lambda f: _replace(f, "img_identifiers", np.array([b"a", b"a", b"b", b"c", b"d", b"e"])),
         "duplicated identifier"),
        (lambda f: _replace(f, "spatial", np.full((6, 3), np.nan, np.float32)), "spatial: 18 NaN/infinite"),
        (lambda f: _replace(f, "spatial", np.zeros((6, 2), np.float32)), "spatial: must have 3 columns"),
        (lambda f: _replace(f, "temporal", np.zeros((6, 3), np.float32)), "temporal: must have an even number"),
        (lambda f: _replace(f, "elevation_multiscale", np.zeros((6, 4), np.float32), scales=[1.0, 2.0, 3.0]),
         "attribute scales has 3 entries"),
        (lambda f: _replace(f, "temporal", np.zeros((6, 2), np.float32), column_names=["a"]),
         "column_names has 1 entries"),
        (lambda f: _replace(f, "raw_lat", np.full(6, 95, np.float32)), "raw_lat: 6 value(s) outside"),
        (lambda f: _replace(f, "raw_lon", np.array([1, 2, 3, 4, 5, np.inf], np.float32)), "raw_lon: 1 infinite"),
        (lambda f: _replace(f, "anomaly_score", np.array([b"x"] * 6)), "anomaly_score: dtype"),
        (lambda f: _replace(f, "in_region", np.full(6, 2, np.uint8)), "in_region: values must be 0 or 1"),
        (lambda f: f["metadata"].attrs.__setitem__("config_json", "{not json"), "config_json is not valid JSON"),
        (lambda f: f.create_dataset("images", data=np.zeros((6, 4), np.float32)), "images: must be vlen uint8"),
    ],
)
def test_every_schema_error_is_reported_with_its_dataset(tmp_path, edit, expected):
    report = _corrupt(tmp_path / "labels.h5", edit)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
    with pytest.raises(SchemaError, match="problem"):
        report.raise_if_invalid()


def test_all_problems_reported_at_once(tmp_path):
    def edit(f):
        _replace(f, "taxa_L10", np.ones(6, dtype=np.int16))
        _replace(f, "spatial", np.full((6, 3), np.nan, np.float32))
        _replace(f, "in_region", np.full(6, 7, np.uint8))

    report = _corrupt(tmp_path / "l.h5", edit)
    assert len(report.problems) == 3
    text = str(SchemaError(report.path, report.problems))
    for name in ("taxa_L10", "spatial", "in_region"):
        assert name in text


def test_missing_file_and_non_hdf5(tmp_path):
    assert "file not found" in validate(tmp_path / "nope.h5").problems[0]
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    assert "not an HDF5 file" in validate(bad).problems[0]


def test_required_ranks_and_datasets(tmp_path):
    path = _write(tmp_path / "l.h5")
    problems = validate(path, required_ranks=["taxa_L30"], required_datasets=["spatial"]).problems
    assert any("taxa_L30: required rank" in p for p in problems)
    assert any("spatial: required dataset" in p for p in problems)


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="taxa_L<digits>"):
        write_labels(tmp_path / "a.h5", ["a"], {"species": [1]})
    with pytest.raises(ValueError, match="length 2"):
        write_labels(tmp_path / "b.h5", ["a", "b"], {"taxa_L10": [1, 2, 3]})
    with pytest.raises(ValueError, match="non-negative"):
        write_labels(tmp_path / "c.h5", ["a"], {"taxa_L10": [-1]})
    with pytest.raises(ValueError, match="together"):
        write_labels(tmp_path / "d.h5", ["a"], {"taxa_L10": [1]}, lat=[0.0])


# ------------------------------------------------------------------ encoders


@given(lat=st.floats(-90, 90), lon=st.floats(-180, 180))
def test_unit_sphere_rows_have_unit_norm(lat, lon):
    xyz = encoders.unit_sphere([lat], [lon])
    assert xyz.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(xyz[0]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.degrees(np.arcsin(np.clip(xyz[0, 2], -1, 1))), lat, atol=1e-2)


def test_unit_sphere_known_points_and_bad_range():
    xyz = encoders.unit_sphere([0, 90, 0], [0, 0, 90])
    np.testing.assert_allclose(xyz, [[1, 0, 0], [0, 0, 1], [0, 1, 0]], atol=1e-6)
    with pytest.raises(ValueError, match=r"lat must be in \[-90, 90\]"):
        encoders.unit_sphere([91], [0])


@given(values=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=8), period=st.floats(0.5, 1e4))
def test_cyclical_pairs_lie_on_unit_circle(values, period):
    out = encoders.cyclical(values, period)
    np.testing.assert_allclose(out[:, 0] ** 2 + out[:, 1] ** 2, 1.0, rtol=1e-4)


def test_cyclical_is_periodic_and_elevation_scales():
    a = encoders.cyclical([1.0, 13.0], 12.0)
    np.testing.assert_allclose(a[0], a[1], atol=1e-6)
    elev = encoders.multiscale_elevation([250.0, np.nan], [1000, 100])
    assert elev.shape == (2, 4)
    np.testing.assert_allclose(elev[0, :2], [1.0, 0.0], atol=1e-6)  # quarter of the 1000 m period
    assert not elev[1].any()
    with pytest.raises(ValueError, match="positive"):
        encoders.multiscale_elevation([1.0], [0])


def test_cyclical_date_features():
    out = encoders.cyclical_date(["2021-01-01T06:00:00", "garbage"], ("day_of_year", "hour"))
    np.testing.assert_allclose(out[0], [0, 1, 1, 0], atol=1e-6)
    assert not out[1].any()
    with pytest.raises(ValueError, match="subset of"):
        encoders.cyclical_date(["2021-01-01"], ("week",))


# ------------------------------------------------------------------ structured fast paths vs references

_D2 = st.integers(0, 99).map(lambda v: f"{v:02d}")
_DATE = st.tuples(st.integers(0, 9999).map(lambda v: f"{v:04d}"), st.sampled_from(["-", "/", "x"]),
                  st.sampled_from(["00", "01", "02", "06", "09", "12", "13"]), st.sampled_from(["-", "-", "."]),
                  st.sampled_from(["00", "01", "28", "29", "30", "31", "32"])).map("".join)
_CLOCK = st.tuples(st.sampled_from(["T", " ", "t", "_"]), _D2, st.sampled_from([":", ":", "-"]), _D2,
                   st.sampled_from(["", ":00", ":59", ":60", ":5", ".5"])).map("".join)
_ZONE = st.sampled_from(["", "", "Z", "z", "+05:30", "-23:59", "+24:00", "+00:60", "+0530", "+05:30:15"])
_DATES = st.one_of(
    _DATE,
    st.tuples(_DATE, _CLOCK, _ZONE).map("".join),
    st.tuples(st.sampled_from(["", " ", "\t"]), _DATE, st.sampled_from(["", " "])).map("".join),
    st.text(alphabet="0123456789-T: Z+.", max_size=26),
    st.text(max_size=12),
    st.none(),
)


@given(values=st.lists(_DATES, max_size=40))
def test_vectorised_date_parsing_equals_the_per_row_parser(values):
    got = encoders.parse_iso_dates(values)
    for i, value in enumerate(values):
        ref = encoders.parse_iso_date(value or "")
        row = (got["day_of_year"][i], got["month"][i], got["hour"][i])
        if ref is None:
            assert not got["parsed"][i] and np.isnan(row).all(), value
        else:
            assert got["parsed"][i], value
            np.testing.assert_array_equal(row, ref, err_msg=repr(value))  # bit-exact, NaN hour included
    texts = [v for v in values if v is not None and "\0" not in v]  # as the CSV builder passes them: UTF-8 bytes
    as_bytes = encoders.parse_iso_dates(np.array([v.encode() for v in texts], dtype=bytes))
    as_str = encoders.parse_iso_dates(texts)
    for key in as_str:
        np.testing.assert_array_equal(as_bytes[key], as_str[key])


def _old_identifier_problems(path):
    """The object-array implementation validate used before (np.unique over Python strings)."""
    with h5py.File(path) as f:
        ids = f["img_identifiers"].asstr()[()]
    problems = []
    empty = np.flatnonzero(np.char.str_len(ids.astype(str)) == 0) if ids.size else np.array([], int)
    if empty.size:
        problems.append(f"img_identifiers: {empty.size} empty identifier(s) (first rows {empty[:5].tolist()})")
    uniq, counts = np.unique(ids, return_counts=True)
    dup = uniq[counts > 1]
    if dup.size:
        problems.append(f"img_identifiers: {dup.size} duplicated identifier(s), e.g. {[str(d) for d in dup[:3]]}")
    return problems


@given(ids=st.lists(st.text(alphabet="ab\u00e9\u4e2d.", max_size=3), min_size=1, max_size=30))
def test_identifier_checks_equal_the_object_array_implementation(tmp_path_factory, ids):
    path = tmp_path_factory.mktemp("ids") / "labels.h5"
    write_labels(path, ids, {"taxa_L10": np.ones(len(ids))})
    got = [p for p in validate(path).problems if p.startswith("img_identifiers")]
    assert got == _old_identifier_problems(path)


@given(rows=st.lists(st.tuples(st.sampled_from([0, 3, 2**32 - 1, 70]), st.sampled_from([0, 9, 10, 2**31]),
                                st.sampled_from([0, 1, 5])), min_size=1, max_size=40))
def test_tree_conflicts_equal_a_dict_reference(rows):
    cols = np.array(rows, dtype=np.uint32).T
    ranks = ("taxa_L10", "taxa_L20", "taxa_L30")
    got = {(c.rank, c.child): dict(zip(c.parents, c.counts)) for c in tree_conflicts(dict(zip(ranks, cols)))}
    expected = {}
    for k in range(2):
        seen: dict[int, dict[int, int]] = {}
        for child, parent in zip(cols[k].tolist(), cols[k + 1].tolist()):
            if child and parent:
                seen.setdefault(child, {}).setdefault(parent, 0)
                seen[child][parent] += 1
        expected.update({(ranks[k], c): p for c, p in seen.items() if len(p) > 1})
    assert got == expected


def test_validate_reports_tree_conflicts_with_raw_ids(tmp_path):
    path = write_labels(tmp_path / "t.h5", list("abcdef"), {"taxa_L10": [4, 4, 4, 9, 9, 0],
                                                             "taxa_L20": [70, 70, 80, 70, 0, 80]})
    report = validate(path)
    assert report.problems == ("tree: taxa_L10 taxon 4 sits under 2 parents at taxa_L20: 70 (2 rows), 80 (1 row); "
                               "a taxon has one parent, fix the rows",)
    assert not report.ok and validate(path, check_tree=False).ok


def test_strings_and_encoded_images_written_in_slices_round_trip(tmp_path, monkeypatch):
    from taxaug.data import schema

    monkeypatch.setattr(schema, "WRITE_BLOCK", 3)  # 10 rows: slices of 3, 3, 3 and 1
    ids = [f"{i}_\u00e9.jpg" for i in range(10)]
    blobs = [bytes([i]) * (i // 3 + 1) for i in range(10)]  # equal lengths inside a slice, one-row last slice
    dates = ["2021-01-01", None, "", *(f"2021-02-{d:02d}" for d in range(1, 8))]
    path = write_labels(tmp_path / "l.h5", np.array(ids), {"taxa_L10": np.arange(10) + 1}, images=blobs,
                        dates=np.array([(d or "").encode() for d in dates]))
    with h5py.File(path) as f:
        assert f["img_identifiers"].asstr()[()].tolist() == ids
        assert [bytes(b) for b in f["images"][()]] == blobs
        assert f["raw_date_observed"].asstr()[()].tolist() == [d or "" for d in dates]
    assert validate(path).ok


def test_identifiers_read_in_slices_equal_the_whole_column(tmp_path, monkeypatch):
    from taxaug.data import schema
    from taxaug.data.dataset import read_identifiers

    monkeypatch.setattr(schema, "READ_BLOCK", 3)  # slices of different widths, a one-row last slice
    ids = ["a", "bb", "c", "\u00e9\u4e2d.jpg", "d", "e", "longest_name.png", "f", "g", "h"]
    path = write_labels(tmp_path / "l.h5", ids, {"taxa_L10": np.ones(len(ids))})
    expected = np.array([i.encode() for i in ids])
    report = validate(path)
    assert report.ok and report.identifiers.dtype == expected.dtype
    np.testing.assert_array_equal(report.identifiers, expected)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(read_identifiers(f["img_identifiers"]), expected)
    empty = write_labels(tmp_path / "e.h5", [], {"taxa_L10": np.ones(0)})
    assert validate(empty).identifiers.shape == (0,)
