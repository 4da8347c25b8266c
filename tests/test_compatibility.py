"""Values between libraries of other versions: the kernel (the test venv's Python, numpy and
pandas) and runners on Python 3.8 (pandas 2.0, numpy 1.24) and on a current Python (the newest
pandas and numpy), every kind of value of the codec, both ways, compared with ``==``, ``equals``,
dtypes, frequencies and zone names. What cannot be kept is an error naming the variable.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import pathlib
import uuid
from typing import Any

import numpy as np
import pandas as pd
import pytest

import ywmagics
from ywmagics.client import BackendClient
from ywmagics.discovery import Connection
from ywmagics.errors import RemoteExecutionError
from ywmagics.kernel.interpreter import run_interpreter_cell
from ywmagics.kernel.output import Output

from .conftest import python_or_skip

pytestmark = pytest.mark.slow  # builds runners with pandas on two Pythons

RUNNERS = {
    "old": ("3.8", "pandas==2.0.3 numpy==1.24.4 backports.zoneinfo"),
    "new": ("3.12", "pandas numpy"),
}


@pytest.fixture(scope="module")
def runners(orchestrator: Connection) -> dict[str, BackendClient]:
    for python, _ in RUNNERS.values():
        python_or_skip(python)
    clients = {}
    for name, (python, modules) in RUNNERS.items():
        clients[name] = ywmagics.install(
            {
                "modules": [f"pyrun_backend#^0.1.0 as {name}"],
                "configurations": {
                    "pyrun_backend": {"build": {"python": python, "modules": modules}}
                },
            },
            partition=f"Compat-{name}",
            connection=orchestrator,
        )[name]
    return clients


def _cell(client: BackendClient, code: str, namespace: dict[str, Any], inputs: list[str],
          outputs: list[str]) -> dict[str, Any]:  # fmt: skip
    quiet = Output(lambda text: None, lambda text: None, lambda bundle: None)
    return run_interpreter_cell(
        client, "runner", code, namespace=namespace, inputs=inputs, outputs=outputs,
        timeout=120, cell_id="compat", output=quiet,
    )  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (pd.DataFrame, pd.Series, pd.Index)):
        kept = type(a) is type(b) and a.equals(b)
        if isinstance(a, pd.DataFrame):
            kept = kept and list(a.dtypes.astype(str)) == list(b.dtypes.astype(str))
        elif isinstance(a, pd.Series):
            kept = kept and str(a.dtype) == str(b.dtype) and _same(a.index, b.index)
        else:
            kept = (
                kept
                and str(a.dtype) == str(b.dtype)
                and getattr(a, "freq", None) == getattr(b, "freq", None)
            )
        return bool(kept)
    if isinstance(a, np.ndarray):
        return bool(
            a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        )
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    if isinstance(a, datetime.datetime) and a.tzinfo is not None:
        return a == b and str(a.tzinfo) == str(b.tzinfo) and a.fold == b.fold
    return type(a) is type(b) and a == b


def _values() -> dict[str, Any]:
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    when = pd.date_range("2026-03-28", periods=4, freq="h", tz="Europe/Paris")
    return {
        "int": 2**70,
        "float": 1.5,
        "nan": float("nan"),
        "text": "héllo",
        "raw": b"\x00\xff",
        "pair": (1, "a"),
        "bag": {1, 2},
        "frozen": frozenset({3}),
        "keys": {1: "one", (2, 3): "t"},
        "complex": 1 + 2j,
        "naive": datetime.datetime(2026, 1, 2, 3, 4, 5, 6),
        "zoned": datetime.datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=paris),
        "day": datetime.date(2026, 1, 2),
        "clock": datetime.time(3, 4),
        "span": datetime.timedelta(1, 2, 3),
        "money": decimal.Decimal("1.10"),
        "id": uuid.UUID(int=7),
        "where": pathlib.PurePosixPath("/a/b"),
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "counted": collections.Counter("abca"),
        "grouped": collections.defaultdict(list, {"k": [1]}),
        "window": collections.deque([1, 2], maxlen=5),
        "floats": np.arange(6, dtype=np.float64).reshape(2, 3),
        "ints": np.array([1, 2], dtype=np.int32),
        "flags": np.array([True, False]),
        "stamps": np.array(["2026-01-01"], dtype="datetime64[ns]"),
        "letters": np.array(["ab", "c"]),
        "scalar": np.float32(1.25),
        "frame": pd.DataFrame(
            {
                "i": [1, 2, 3],
                "f": [1.0, None, 3.0],
                "s": pd.array(["a", None, "c"], dtype="str"),
                "S": pd.array(["a", None, "c"], dtype="string"),
                "c": pd.Categorical(["x", "y", "x"]),
                "t": pd.to_datetime(["2026-01-01", None, "2026-01-03"]),
                "z": pd.date_range("2026-01-01", periods=3, tz="Europe/Paris"),
            },
            index=pd.Index(["r1", "r2", "r3"], dtype="str", name="row"),
        ),
        "hourly": pd.Series(range(4), index=when),
        "monthly": pd.Series(range(3), index=pd.date_range("2026-01-31", periods=3, freq="ME")),
        "ranged": pd.Series([1.5, 2.5], index=pd.RangeIndex(0, 4, 2)),
        "multi": pd.Series(
            [1, 2], index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["k", "n"])
        ),
        "stamp": pd.Timestamp("2026-10-25 01:30", tz="Europe/Paris"),
        "delta": pd.Timedelta("1h"),
    }


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_every_value_comes_back_from_a_runner_as_it_was(
    runners: dict[str, BackendClient], runner: str
) -> None:
    values = _values()
    names = list(values)
    # In and back out again: decoded by the runner's versions, encoded again, decoded here.
    back = _cell(runners[runner], "pass", dict(values), names, names)
    changed = [name for name in names if not _same(values[name], back[name])]
    # Through a pandas older than 2.3, pandas 3's str strings are objects (the same values and
    # the same meaning of a missing one: that pandas has no other way to hold them).
    if runner == "old":
        for name in ("frame",):
            frame = back[name]
            assert (frame["s"] == "a").tolist() == (values[name]["s"] == "a").tolist()
            assert frame["s"].tolist()[::2] == ["a", "c"]
        changed = [n for n in changed if n != "frame"]
    assert changed == [], {n: (values[n], back[n]) for n in changed}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_values_made_by_a_runners_libraries_are_read_here(
    runners: dict[str, BackendClient], runner: str
) -> None:
    code = (
        "import pandas as pd, numpy as np\n"
        "hourly = pd.Series(range(3), index=pd.date_range('2026-01-01', periods=3, freq='H' if "
        "pd.__version__ < '2.2' else 'h'))\n"
        "monthly = pd.date_range('2026-01-31', periods=3, freq='M' if pd.__version__ < '2.2' "
        "else 'ME')\n"
        "labels = pd.Series(['a', None], dtype='string')\n"
        "version = pd.__version__\n"
    )
    got = _cell(runners[runner], code, {}, [], ["hourly", "monthly", "labels", "version"])
    assert got["hourly"].index.freq == pd.offsets.Hour(1)
    assert got["monthly"].freq == pd.offsets.MonthEnd(1)
    assert str(got["labels"].dtype) == "string" and got["labels"].isna().tolist() == [False, True]
    assert got["version"].startswith("2.0." if runner == "old" else ("2.", "3."))


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_what_cannot_be_kept_is_an_error_naming_the_variable(
    runners: dict[str, BackendClient], runner: str
) -> None:
    code = "import enum\nclass Color(enum.IntEnum):\n    RED = 1\nshade = Color.RED\n"
    namespace = {"shade": None}
    with pytest.raises(RemoteExecutionError, match=r"'shade'.*enum member"):
        _cell(runners[runner], code, namespace, [], ["shade"])
    assert namespace == {"shade": None}  # a failed --out leaves the namespace as it was


def _big_values() -> dict[str, Any]:
    """Values whose buffers travel beside the JSON (see ywmagics.bulk), every layout."""
    rng = np.random.default_rng(3)
    rows = 1 << 16
    grid = rng.random((400, 300))
    records = np.zeros(rows, dtype=[("id", "<i4"), ("pos", "<f8", (3,)), ("tag", "S5")])
    records["id"] = np.arange(rows)
    records["tag"] = b"yw"
    return {
        "grid": grid,
        "fortran": np.asfortranarray(grid),
        "strided": grid[::2, 1::3],
        "records": records,
        "stamps": (np.arange(rows) * 10**9).astype("datetime64[ns]"),
        "blob": rng.bytes(1 << 18),
        "table": pd.DataFrame(
            {
                "x": np.arange(rows),
                "y": rng.random(rows),
                "when": pd.date_range("2026-01-01", periods=rows, freq="min", tz="Europe/Paris"),
                # Numbers: strings as categories are pandas 3's str, objects in an older pandas.
                "kind": pd.Categorical([10, 20, 30, 40] * (rows // 4)),
            }
        ),
    }


@pytest.mark.parametrize("mode", ["shared", "frames"])
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_big_values_travel_beside_the_json_to_and_from_a_runner(
    runners: dict[str, BackendClient], runner: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YWMAGICS_BULK", mode)
    values = _big_values()
    names = list(values)
    code = "sizes = {'grid': grid.nbytes, 'python': __import__('sys').version_info[:2]}"
    back = _cell(runners[runner], code, dict(values), names, [*names, "sizes"])
    changed = [name for name in names if not _same(values[name], back[name])]
    assert changed == [], changed
    assert back["sizes"]["grid"] == values["grid"].nbytes  # an array there, not a list
    assert back["sizes"]["python"] == tuple(map(int, RUNNERS[runner][0].split(".")))
