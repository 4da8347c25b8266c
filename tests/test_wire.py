"""The wire codec: every supported type round-trips through JSON, the rest fails clearly."""

from __future__ import annotations

import ast
import collections
import datetime
import decimal
import enum
import json
import math
import pathlib
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from ywmagics import wire
from ywmagics.wire import WireError, decode, decode_namespace, encode, encode_namespace

from .conftest import PYTHON38, needs_python38

WIRE_FILE = Path(wire.__file__)


def through_json(value: Any, name: str = "") -> Any:
    """Encode, send as strict JSON (no NaN), decode: what a value becomes on the other side."""
    text = json.dumps(encode(value, name), allow_nan=False)
    return decode(json.loads(text), name)


class Color(enum.IntEnum):
    RED = 1


class Point(NamedTuple):
    x: int
    y: int


class UserThing:
    pass


# ---------------------------------------------------------------------------------------------
# plain JSON, as the tutorial reads it


def test_plain_json_encodes_to_itself() -> None:
    value = {
        "resp": {"python": "3.10.4", "numpy": "1.26"},
        "n": [1, 2.5, -3, True, False, None, "é", [], {}],
        "nested": [{"a": [[1], {"b": None}]}],
    }
    assert encode(value) == value
    assert json.dumps(encode(value)) == json.dumps(value)
    assert decode(json.loads(json.dumps(value))) == value


def test_encode_does_not_alias_the_value() -> None:
    value = {"a": [1, 2]}
    encoded = encode(value)
    encoded["a"].append(3)
    assert value == {"a": [1, 2]}


# ---------------------------------------------------------------------------------------------
# round trips


ROUND_TRIPS = [
    (1, 2, (3, "x")),
    (),
    {1, 2, 3},
    frozenset({"a", (1, 2)}),
    b"\x00\xffbinary",
    bytearray(b"mutable"),
    {1: "one", (2, 3): "tuple key", None: [1], 2.5: "float key"},
    {"__yw__": "tuple", "items": [1, 2]},  # a user dict with the tag key: escaped
    {"outer": {"__yw__": 1, "other": (1,)}},
    complex(1.5, -2),
    datetime.datetime(2024, 5, 6, 7, 8, 9, 123456),
    datetime.datetime(2024, 5, 6, 7, 8, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    datetime.date(1999, 12, 31),
    datetime.time(23, 59, 1, 5),
    datetime.time(1, 2, tzinfo=datetime.timezone.utc),
    datetime.timedelta(days=-3, seconds=5, microseconds=7),
    decimal.Decimal("1.10"),
    decimal.Decimal("-Infinity"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    pathlib.Path("/tmp/some file.txt"),
    pathlib.PurePosixPath("a/b"),
    pathlib.PureWindowsPath(r"C:\Users\x"),
    10**5000,
    -(10**5000),
    float("inf"),
    float("-inf"),
    [1, (2, {3}), {"k": b"v"}],
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=lambda v: type(v).__name__)
def test_round_trip(value: Any) -> None:
    back = through_json(value)
    assert back == value
    assert type(back) is type(value)


def test_round_trip_keeps_nested_types() -> None:
    value = {"t": (1, [2, (3,)]), "s": {(1, 2)}, "b": [b"x"]}
    back = through_json(value)
    assert back == value
    assert type(back["t"][1][1]) is tuple


def test_nan_and_complex_nan() -> None:
    assert math.isnan(through_json(float("nan")))
    back = through_json(complex(float("nan"), float("inf")))
    assert math.isnan(back.real) and back.imag == float("inf")
    assert through_json(decimal.Decimal("NaN")).is_nan()


def test_the_collections_of_the_standard_library_travel_as_they_are() -> None:
    ordered = through_json(collections.OrderedDict([("b", 1), ("a", 2)]))
    assert type(ordered) is collections.OrderedDict and list(ordered.items()) == [
        ("b", 1),
        ("a", 2),
    ]
    counted = through_json(collections.Counter("abracadabra"))
    assert type(counted) is collections.Counter and counted.most_common(1) == [("a", 5)]
    grouped = through_json(collections.defaultdict(list, {"k": [1], 2: [3]}))
    assert type(grouped) is collections.defaultdict and grouped.default_factory is list
    assert grouped == {"k": [1], 2: [3]} and grouped["new"] == []
    window = through_json(collections.deque([1, 2, 3], maxlen=3))
    assert type(window) is collections.deque and window.maxlen == 3 and list(window) == [1, 2, 3]
    assert through_json(memoryview(b"abc")) == b"abc"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (Color.RED, "is an enum member (Color.RED): it would come back as a plain int"),
        (Point(1, 2), "is a namedtuple (Point): it would come back as a plain tuple"),
        (type("Tag", (str,), {})("x"), "is a Tag, a subclass of str"),
        (collections.defaultdict(lambda: 0), "default_factory function cannot travel"),
    ],
)
def test_a_subclass_that_would_come_back_as_its_base_type_is_refused(value: Any, said: str) -> None:
    # IntEnum became int, namedtuple tuple, OrderedDict dict: silently, worse than an error.
    with pytest.raises(WireError, match="cannot send variable 'v'") as raised:
        encode({"inner": [value]}, "v")
    assert said in str(raised.value)
    assert "v['inner'][0]" in str(raised.value)  # where in the variable


def test_datetimes_keep_their_zone_by_name_through_a_change_of_time() -> None:
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    # 02:30 happens twice on 25 October 2026 in Paris: fold 1 is the second time, in winter time.
    second = datetime.datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=paris)
    for value in (second, second.replace(fold=0), datetime.datetime(2026, 7, 1, 12, tzinfo=paris)):
        back = through_json(value)
        assert back == value and back.tzinfo is paris and back.fold == value.fold
        assert back.utcoffset() == value.utcoffset()
        later = back + datetime.timedelta(days=30)  # across a change: still Paris time
        assert later.utcoffset() == (value + datetime.timedelta(days=30)).utcoffset()
    fixed = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5)))
    assert through_json(fixed) == fixed and through_json(fixed).utcoffset() == fixed.utcoffset()

    class Local(datetime.tzinfo):  # a zone of one's own, known by no name
        def utcoffset(self, dt: Any) -> datetime.timedelta:
            return datetime.timedelta(hours=1)

        def dst(self, dt: Any) -> datetime.timedelta:
            return datetime.timedelta(0)

    with pytest.raises(WireError, match="neither zoneinfo's nor a fixed offset"):
        encode(datetime.datetime(2026, 1, 1, tzinfo=Local()), "when")


def test_tag_key_is_escaped() -> None:
    value = {"__yw__": "bytes", "b64": "AAAA"}
    encoded = encode(value)
    assert encoded["__yw__"] == "dict"
    assert through_json(value) == value


def test_namespace_helpers() -> None:
    namespace = {"a": (1, 2), "b": "plain"}
    encoded = encode_namespace(namespace)
    assert encoded["b"] == "plain"
    assert decode_namespace(json.loads(json.dumps(encoded))) == namespace


# ---------------------------------------------------------------------------------------------
# errors


def test_function_error_names_the_variable_and_type() -> None:
    with pytest.raises(WireError) as info:
        encode(lambda: 1, "my_func")
    error = info.value
    assert error.name == "my_func"
    assert "function" in error.reason
    assert str(error).startswith("cannot send variable 'my_func': ")
    assert "Hint:" in str(error)


def test_error_locates_the_value_inside_containers() -> None:
    with pytest.raises(WireError) as info:
        encode({"rows": [1, {"obj": UserThing()}]}, "data")
    assert "data['rows'][1]['obj']" in str(info.value)
    assert "test_wire.UserThing" in str(info.value)
    assert "convert it to a dict" in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: sys,
        lambda tmp: threading.Lock(),
        lambda tmp: (tmp / "f.txt").open("w"),
        lambda tmp: UserThing(),
        lambda tmp: UserThing,
        lambda tmp: Ellipsis,
    ],
    ids=["module", "lock", "open_file", "instance", "class", "ellipsis"],
)
def test_values_that_cannot_travel(make: Any, tmp_path: Path) -> None:
    value = make(tmp_path)
    try:
        with pytest.raises(WireError, match="cannot send variable 'v'"):
            encode_namespace({"ok": 1, "v": value})
    finally:
        if hasattr(value, "close"):
            value.close()


def test_cycle_is_an_error_not_a_crash() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(WireError, match="cycle"):
        encode(loop, "loop")
    shared = [1]
    assert through_json([shared, shared]) == [[1], [1]]  # shared, not cyclic: fine


def test_too_deep_is_an_error() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(WireError, match="nested too deeply"):
        encode(deep, "deep")


def test_decode_errors() -> None:
    with pytest.raises(WireError, match="unknown tag 'martian'") as info:
        decode({"__yw__": "martian"}, "x")
    assert info.value.action == "receive"
    assert str(info.value).startswith("cannot receive variable 'x'")
    with pytest.raises(WireError, match="cannot be rebuilt here"):
        decode({"__yw__": "tuple"}, "x")
    with pytest.raises(WireError, match="cannot be rebuilt here"):
        decode({"__yw__": "ndarray", "dtype": "<f8", "shape": [3], "b64": "AAAA"}, "x")
    with pytest.raises(WireError):
        decode_namespace([1, 2])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# numpy


@pytest.mark.parametrize(
    "array",
    [
        np.array([True, False]),
        np.arange(10, dtype=np.int8),
        np.arange(6, dtype=np.uint16).reshape(2, 3),
        np.arange(24, dtype=np.int64).reshape(2, 3, 4),
        np.linspace(0, 1, 7, dtype=np.float16),
        np.array([1.5, np.nan, np.inf], dtype=np.float32),
        np.arange(5, dtype=">f8"),  # big-endian stays big-endian
        np.array([1 + 2j, 3 - 4j]),
        np.array(["2024-01-01", "NaT"], dtype="datetime64[ns]"),
        np.array([1, 2], dtype="timedelta64[s]"),
        np.array(["a", "héllo"], dtype="<U5"),
        np.array([b"ab", b"c"], dtype="S3"),
        np.zeros((0, 3)),
        np.array(3.5),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(20.0)[::3],  # not contiguous
    ],
    ids=lambda a: f"{a.dtype.str}{list(a.shape)}",
)
def test_ndarray_round_trip(array: Any) -> None:
    back = through_json(array)
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_object_array_goes_element_wise() -> None:
    array = np.array([1, "x", None, (1, 2)], dtype=object)
    back = through_json(array)
    assert back.dtype == object
    assert list(back) == [1, "x", None, (1, 2)]


@pytest.mark.parametrize(
    "scalar",
    [
        np.float64(1.25),
        np.float32(-2.5),
        np.int32(7),
        np.uint8(255),
        np.bool_(True),
        np.str_("hé"),
        np.datetime64("2024-02-03T04:05"),
        np.complex64(1 - 1j),
    ],
    ids=lambda s: type(s).__name__,
)
def test_numpy_scalar_round_trip(scalar: Any) -> None:
    back = through_json(scalar)
    assert type(back) is type(scalar)
    assert back == scalar


def test_unsupported_numpy_values() -> None:
    with pytest.raises(WireError, match="masked array"):
        encode(np.ma.masked_array([1, 2], mask=[0, 1]), "m")
    with pytest.raises(WireError, match=r"structured dtype .* Python objects"):
        encode(np.zeros(2, dtype=[("a", "<i4"), ("b", object)]), "s")


def test_a_big_array_round_trips_exactly() -> None:
    # Its speed against base64 + JSON is measured by benchmarks/bench_wire.py.
    array = np.random.default_rng(0).random(1_000_000, dtype=np.float32)
    back = decode(json.loads(json.dumps(encode(array, "big"))), "big")
    assert back.dtype == np.float32 and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_numpy_missing_on_the_receiving_side(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = json.loads(json.dumps(encode(np.arange(3), "arr")))
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy now raises ImportError
    with pytest.raises(WireError, match="numpy is not installed") as info:
        decode_namespace({"arr": encoded})
    assert info.value.name == "arr"
    assert "pyrun_backend.build.modules=numpy" in str(info.value)


# ---------------------------------------------------------------------------------------------
# pandas


def test_pandas_missing_on_the_receiving_side(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = {
        "__yw__": "pd.series",
        "values": [],
        "index": {"__yw__": "pd.rangeindex", "start": 0, "stop": 0, "step": 1, "name": None},
        "name": None,
    }
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(WireError, match="pandas is not installed") as info:
        decode(encoded, "frame")
    assert info.value.name == "frame"


def test_dataframe_round_trip() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {
            "i": [1, 2, 3],
            "f": [1.5, np.nan, 3.0],
            "s": ["a", None, "c"],
            "obj": np.array([1, "x", None], dtype=object),
            "b": [True, False, True],
            "dt": pd.to_datetime(["2024-01-01", None, "2024-03-01"]),
            "tz": pd.date_range("2024-01-01", periods=3, tz="Europe/Paris"),
            "cat": pd.Categorical(["x", "y", "x"], categories=["y", "x", "z"], ordered=True),
            "I": pd.array([1, None, 3], dtype="Int64"),
            "td": pd.to_timedelta([1, 2, 3], unit="s"),
        },
        index=pd.Index(["r1", "r2", "r3"], name="rows"),
    )
    pd.testing.assert_frame_equal(through_json(frame), frame)


def test_pandas_indexes_series_and_scalars() -> None:
    pd = pytest.importorskip("pandas")
    rows = pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["letter", "n"])
    columns = pd.MultiIndex.from_tuples([("x", "y"), ("x", "z")])
    frame = pd.DataFrame([[1, 2], [3, 4]], index=rows, columns=columns)
    pd.testing.assert_frame_equal(through_json(frame), frame)
    duplicated = pd.DataFrame([[1, 2]], columns=["a", "a"], index=[5])
    pd.testing.assert_frame_equal(through_json(duplicated), duplicated)
    pd.testing.assert_frame_equal(through_json(pd.DataFrame()), pd.DataFrame())
    series = pd.Series([1.0, 2.0], index=pd.date_range("2024", periods=2), name=("a", 1))
    pd.testing.assert_series_equal(through_json(series), series)
    stamp = pd.Timestamp("2024-01-01 10:00:00.000000005", tz="US/Eastern")
    assert through_json(stamp) == stamp
    assert through_json(pd.Timedelta(5, unit="ns")) == pd.Timedelta(5, unit="ns")
    assert through_json(pd.NaT) is pd.NaT
    assert through_json(pd.NA) is pd.NA


# ---------------------------------------------------------------------------------------------
# the file itself: copied verbatim into runner environments


def test_wire_module_is_stdlib_only() -> None:
    tree = ast.parse(WIRE_FILE.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative import: the file runs as ywmagics_wire"
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


@needs_python38
def test_wire_runs_on_python38(tmp_path: Path) -> None:
    copy = tmp_path / "ywmagics_wire.py"
    copy.write_bytes(WIRE_FILE.read_bytes())
    script = (
        "import json, datetime, ywmagics_wire as w\n"
        "v = {'t': (1, 2), 's': {3}, 'b': b'x', 'd': datetime.date(2020, 1, 2)}\n"
        "v['f'] = float('inf')\n"
        "assert w.decode(json.loads(json.dumps(w.encode(v)))) == v\n"
        "try:\n"
        "    w.encode(len, 'fn')\n"
        "except w.WireError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [str(PYTHON38), "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n{script}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "cannot send variable 'fn'" in result.stdout


@pytest.mark.parametrize(
    "freq", ["h", "15min", "s", "ms", "D", "ME", "YE-DEC", "W-SUN", "QE-NOV", "BME", "2B"]
)
def test_index_frequencies_travel_by_offset_not_by_name(freq: str) -> None:
    # pandas renamed them ('H' became 'h', month-end 'M' became 'ME'): a name written by one
    # version is refused by another. An offset and its count are understood by both.
    pd = pytest.importorskip("pandas")
    index = pd.date_range("2026-01-01", periods=4, freq=freq, name="when")
    encoded = encode(index)
    assert "freq" not in encoded and encoded["offset"]["kind"] == type(index.freq).__name__
    back = through_json(index)
    assert back.equals(index) and back.freq == index.freq and back.name == "when"
    assert through_json(pd.Series(range(4), index=index)).index.freq == index.freq


def test_strings_keep_what_a_missing_one_means() -> None:
    # pandas 3's "str" (missing is NaN: comparisons are False) and "string" (missing is NA: they
    # are NA) came back one as the other through another pandas.
    pd = pytest.importorskip("pandas")
    for dtype in ("str", "string"):
        series = pd.Series(
            ["a", None, "b"], dtype=dtype, index=pd.Index(["x", "y", "z"], dtype=dtype)
        )
        back = through_json(series)
        assert back.dtype == series.dtype and back.index.dtype == series.index.dtype
        assert back.equals(series)
        assert (back == "a").tolist() == (series == "a").tolist()
    frame = pd.DataFrame({"s": pd.Series(["a", None], dtype="str")})
    back = through_json(frame)
    assert back.equals(frame) and back["s"].dtype == frame["s"].dtype
    # As an older pandas sends them: read with the same meaning here.
    older = {"__yw__": "pd.strings", "storage": "python", "missing": "nan", "items": ["a", None]}
    assert (decode(older) == "a").tolist() == [True, False]
