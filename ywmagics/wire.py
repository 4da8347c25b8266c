"""The wire codec: how captured variables travel between a notebook kernel and a python runner.

This module is the single source of truth for both sides. The kernel side imports it as
``ywmagics.wire``; the orchestrator's installer copies this very file, unchanged, next to the
python runner as ``ywmagics_wire.py``. That is why it uses the standard library only, has no
relative import, and runs on every Python from 3.8 on: a runner's environment may be any of them.

Format
------
``encode`` turns a value into an object that ``json.dumps`` accepts (no NaN, no infinity), and
``decode`` turns it back. Plain JSON values -- ``None``, ``bool``, ``int``, finite ``float``,
``str``, lists, and dicts whose keys are all ``str`` -- encode to themselves, so a reader of the
raw JSON (``resp["capturedOut"]["resp"]["python"]``) sees them as they are. Every other value is a
tagged object ``{"__yw__": TAG, ...}``:

==================  =============================================================================
tag                 fields
==================  =============================================================================
``tuple``           ``items``: encoded elements (also ``set``, ``frozenset``)
``dict``            ``items``: ``[key, value]`` pairs; for non-``str`` keys, or a dict that has a
                    ``"__yw__"`` key of its own (escaped this way, so it round-trips)
``bytes``           ``b64``, or ``buffer`` (see below) (also ``bytearray``)
``float``           ``value``: ``"nan"``, ``"inf"`` or ``"-inf"``
``int``             ``hex``: an integer too long for JSON readers (over 14,000 bits)
``complex``         ``real``, ``imag`` (encoded floats)
``datetime``        ``iso``, and ``tz``, the IANA name of its zone if it has a named one (also
                    ``date``, ``time``: ``iso``); ``timedelta``: ``days``, ``seconds``,
                    ``microseconds``
``decimal``         ``value`` (``str``); ``uuid``: ``value``; ``path``: ``value``, ``class``
``ndarray``         ``dtype`` (``dtype.str``; a structured dtype as ``names``, ``formats``,
                    ``offsets``, ``itemsize``, ``aligned``, a sub-array as ``base``, ``shape``),
                    ``shape``, ``order`` (``"C"``/``"F"``) and ``b64`` of the raw buffer, or
                    ``buffer``; object arrays carry ``items`` instead
``npscalar``        ``dtype``, ``b64``
``pd.dataframe``    ``columns``, ``index`` (indexes), ``data`` (one column array each)
``pd.series``       ``values`` (a column array), ``index``, ``name``
``pd.index``        ``values``, ``name``, ``offset`` (a frequency: ``kind``, ``n``, ``normalize``,
                    ``kwds``); ``pd.rangeindex``: ``start``, ``stop``, ``step``,
                    ``name``; ``pd.multiindex``: ``levels``, ``names``
``pd.categorical``  ``codes``, ``categories``, ``ordered``; ``pd.datetimetz``: ``values`` (UTC),
                    ``tz``; ``pd.strings``: ``storage``, ``missing`` (``"nan"`` or ``"na"``),
                    ``items``; ``pd.extarray``: ``dtype``, ``items`` (other extension arrays)
``pd.timestamp``    ``iso``, ``tz``; ``pd.timedelta``: ``ns``; ``pd.nat``; ``pd.na``
==================  =============================================================================

Bulk data: given a :class:`Bulk`, ``encode`` puts each buffer of at least ``Bulk.min_size``
bytes (an array's data, a long ``bytes``) there instead of in base64, and the value says
``"buffer": INDEX``; ``decode`` is then given the received buffers, in that order. How they
travel (shared memory, binary frames) is :mod:`ywmagics.bulk`'s business; without a ``Bulk``,
everything is inside the JSON, as a reader of the raw answer expects.

Values are named the same way whatever the versions on either side (a frequency by offset and
count, strings by what a missing one means, a zone by its IANA name), and each side rebuilds
them as its own versions call them; what cannot be kept exactly is an error naming the variable,
never a silent change (an IntEnum, a namedtuple, a str subclass are refused: they would come
back as their base type).

Nothing is ever pickled or evaluated. numpy and pandas are imported only when a value of theirs is
met; a receiver that lacks them raises a :class:`WireError` that says so. Anything else (a
function, a module, an open file, an instance of a user class) raises a :class:`WireError` that
names the variable, where in it the value sits, and its type.
"""

from __future__ import annotations

import binascii
import importlib
import math

# Only what every use needs is imported here: the runner imports this module at each start, which
# is timed. datetime, decimal, pathlib and uuid come when a value of theirs is met.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime
    import decimal
    import pathlib
    import uuid
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from typing import Any

__all__ = ["Bulk", "WireError", "decode", "decode_namespace", "encode", "encode_namespace"]

TAG = "__yw__"
# Raised when a value's encoding changes so that the other side would misread it. Each cell says
# the version it was encoded with ("codec"), and a runner refuses another one.
CODEC_VERSION = 1

_HINT = "convert it to a dict, list, str or number first (for example vars(obj) or str(obj))"
_CODE_HINT = "only data can travel: define it in the receiving cell instead, or send its result"
_LONG_INT = 1 << 14000  # int() and str() refuse more than 4,300 digits on recent Pythons
_PATH_CLASSES = ("PurePath", "PurePosixPath", "PureWindowsPath")
_LAZY_MODULES = ("datetime", "decimal", "pathlib", "uuid", "collections")
# The default factories a defaultdict may travel with: builtins, known by name on both sides.
_FACTORIES = {
    f.__name__: f for f in (list, dict, set, frozenset, tuple, int, float, complex, str, bytes)
}


BULK_MIN = 64 * 1024  # bytes: a smaller buffer stays in the JSON, readable and just as quick
_PIECE = 8 << 20  # bytes of a non-contiguous array copied at a time, in C order


class Bulk:
    """The big buffers of the values being encoded, which travel beside their JSON.

    The same source in two places (one array in two variables) is one buffer: on the other side
    both values share its memory, as they did here. ``pieces(i)`` gives buffer ``i`` as
    contiguous byte views, in the order the receiver reads them."""

    def __init__(self, min_size: int = BULK_MIN) -> None:
        self.min_size = min_size
        self.sources: list[Any] = []  # kept alive: their ids are the keys of _indexes
        self.sizes: list[int] = []
        self._indexes: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.sources)

    def add(self, source: Any, size: int) -> int:
        index = self._indexes.get(id(source))
        if index is None:
            index = self._indexes[id(source)] = len(self.sources)
            self.sources.append(source)
            self.sizes.append(size)
        return index

    def pieces(self, index: int) -> Iterator[memoryview]:
        source = self.sources[index]
        if not type(source).__module__.startswith("numpy"):
            yield memoryview(source).cast("B")
        elif source.flags.c_contiguous or source.flags.f_contiguous:
            flat = source.reshape(-1, order="F" if not source.flags.c_contiguous else "C")
            yield memoryview(flat.view("u1"))
        else:
            yield from _c_order_pieces(source)


def _c_order_pieces(array: Any) -> Iterator[memoryview]:
    """A non-contiguous array's bytes in C order, a few MiB copied at a time (not all at once:
    that would hold a second copy of the whole array)."""
    np: Any = importlib.import_module("numpy")
    if array.ndim == 0 or array.nbytes <= _PIECE:
        yield memoryview(np.ascontiguousarray(array).reshape(-1).view("u1"))
        return
    row = array[0].nbytes
    if row > _PIECE:
        for item in array:
            yield from _c_order_pieces(item)
        return
    step = max(1, _PIECE // max(row, 1))
    for start in range(0, array.shape[0], step):
        block = np.ascontiguousarray(array[start : start + step])
        yield memoryview(block.reshape(-1).view("u1"))


def _b64encode(data: bytes | bytearray | memoryview) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _b64decode(text: str) -> bytes:
    return binascii.a2b_base64(text)


class WireError(Exception):
    """A value that cannot be encoded or decoded.

    ``name`` is the variable (``""`` when unknown), ``reason`` what went wrong and ``hint`` what to
    do about it; ``action`` is ``"send"`` when encoding and ``"receive"`` when decoding.
    """

    def __init__(self, reason: str, name: str = "", *, hint: str = "", action: str = "send"):
        super().__init__(reason)
        self.reason = reason
        self.name = name
        self.hint = hint
        self.action = action

    def __str__(self) -> str:
        what = f"variable {self.name!r}" if self.name else "a value"
        text = f"cannot {self.action} {what}: {self.reason}"
        if self.hint:
            text += f". Hint: {self.hint}"
        return text


class _Unsupported(Exception):
    """Raised deep inside the encoder; each container on the way out adds its part of the path."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint
        self.path: list[str] = []


def _type_name(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _unsupported(value: object) -> _Unsupported:
    code_like = callable(value) or type(value).__name__ == "module"
    problem = f"has type '{_type_name(value)}', which cannot travel between processes"
    return _Unsupported(problem, _CODE_HINT if code_like else _HINT)


def _import(module: str, name: str) -> Any:
    """Import numpy or pandas for decoding, with an error that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise WireError(
            f"it holds {module} data but {module} is not installed here",
            name,
            hint=f"install {module} in this environment (for a python runner: "
            f"--config pyrun_backend.build.modules={module})",
            action="receive",
        ) from None


# ---------------------------------------------------------------------------------------------
# encoding


class _Encoder:
    __slots__ = ("_active", "bulk")

    def __init__(self, bulk: Bulk | None = None) -> None:
        self._active: set[int] = set()  # ids of the containers being encoded, to catch cycles
        self.bulk = bulk

    def _in_bulk(self, source: Any, size: int) -> int | None:
        """The index of ``source`` among the bulk buffers, if it is big enough to go there."""
        if self.bulk is None or size < self.bulk.min_size:
            return None
        return self.bulk.add(source, size)

    def encode(self, value: Any) -> Any:
        cls = type(value)
        if value is None or cls is str or cls is bool:
            return value
        if cls is int:
            return value if -_LONG_INT < value < _LONG_INT else {TAG: "int", "hex": hex(value)}
        if cls is float:
            return value if math.isfinite(value) else {TAG: "float", "value": repr(value)}
        if cls is list:
            return self._items(value, value)
        if cls is dict:
            return self._dict(value)
        method = _ENCODERS_BY_TYPE.get(cls)
        if method is not None:
            return method(self, value)
        module = cls.__module__
        if module.startswith("numpy"):
            return self._numpy(value)
        if module.startswith("pandas"):
            return self._pandas(value)
        return self._subclass(value)

    def _enter(self, container: object) -> None:
        if id(container) in self._active:
            raise _Unsupported("contains itself (a reference cycle)", "send a copy without it")
        self._active.add(id(container))

    def _items(self, values: Iterable[Any], container: object) -> list[Any]:
        self._enter(container)
        out: list[Any] = []
        try:
            for index, item in enumerate(values):
                try:
                    out.append(self.encode(item))
                except _Unsupported as exc:
                    exc.path.append(f"[{index}]")
                    raise
        finally:
            self._active.discard(id(container))
        return out

    def _dict(self, value: Mapping[Any, Any]) -> Any:
        if TAG not in value and all(type(key) is str for key in value):
            return dict(self._entries(value, encode_keys=False))
        return {TAG: "dict", "items": self._pairs(value)}

    def _tagged_items(self, tag: str, value: Iterable[Any]) -> dict[str, Any]:
        return {TAG: tag, "items": self._items(value, value)}

    def _tuple(self, value: tuple[Any, ...]) -> Any:
        return self._tagged_items("tuple", value)

    def _set(self, value: set[Any]) -> Any:
        return self._tagged_items("set", value)

    def _frozenset(self, value: frozenset[Any]) -> Any:
        return self._tagged_items("frozenset", value)

    def _bytes(self, value: bytes | bytearray | memoryview, tag: str = "bytes") -> Any:
        index = self._in_bulk(value, memoryview(value).nbytes)
        if index is not None:
            return {TAG: tag, "buffer": index}
        return {TAG: tag, "b64": _b64encode(value)}

    def _bytearray(self, value: bytearray) -> Any:
        return self._bytes(value, "bytearray")

    def _complex(self, value: complex) -> Any:
        return {TAG: "complex", "real": self.encode(value.real), "imag": self.encode(value.imag)}

    def _datetime(self, value: datetime.datetime) -> Any:
        encoded: dict[str, Any] = {TAG: "datetime", "iso": value.isoformat()}
        zone = _zone_of(value)
        if zone is not None:  # a named zone, not a fixed offset: kept by its IANA name
            encoded["tz"] = zone
        return encoded

    def _date(self, value: datetime.date) -> Any:
        return {TAG: "date", "iso": value.isoformat()}

    def _time(self, value: datetime.time) -> Any:
        return {TAG: "time", "iso": value.isoformat()}

    def _timedelta(self, value: datetime.timedelta) -> Any:
        return {
            TAG: "timedelta",
            "days": value.days,
            "seconds": value.seconds,
            "microseconds": value.microseconds,
        }

    def _decimal(self, value: decimal.Decimal) -> Any:
        return {TAG: "decimal", "value": str(value)}

    def _uuid(self, value: uuid.UUID) -> Any:
        return {TAG: "uuid", "value": str(value)}

    def _path(self, value: pathlib.PurePath) -> Any:
        name = type(value).__name__
        return {
            TAG: "path",
            "value": str(value),
            "class": name if name in _PATH_CLASSES else "Path",
        }

    def _subclass(self, value: Any) -> Any:
        """The types of modules imported on demand (datetime, Decimal, UUID, Path, and the
        collections kept exactly); any other subclass of a supported type is refused: it would
        come back as its base type (an IntEnum as an int, a namedtuple as a tuple), a change
        worse than an error."""
        if type(value).__module__.partition(".")[0] in _LAZY_MODULES:
            _load_lazy_types()
            method = _ENCODERS_BY_TYPE.get(type(value))
            if method is not None:
                return method(self, value)
        if isinstance(value, memoryview):
            return self._bytes(value if value.c_contiguous else value.tobytes())
        raise _narrowed(value)

    def _ordereddict(self, value: Any) -> Any:
        return {TAG: "ordereddict", "items": self._pairs(value)}

    def _counter(self, value: Any) -> Any:
        return {TAG: "counter", "items": self._pairs(value)}

    def _defaultdict(self, value: Any) -> Any:
        factory = value.default_factory
        if factory is not None and factory not in _FACTORIES.values():
            raise _Unsupported(
                f"is a defaultdict whose default_factory {_type_name(factory)} cannot travel",
                "send dict(value), or use a builtin type (list, set, int...) as its factory",
            )
        name = None if factory is None else factory.__name__
        return {TAG: "defaultdict", "factory": name, "items": self._pairs(value)}

    def _deque(self, value: Any) -> Any:
        return {TAG: "deque", "maxlen": value.maxlen, "items": self._items(value, value)}

    def _pairs(self, value: Mapping[Any, Any]) -> list[Any]:
        return [list(pair) for pair in self._entries(value, encode_keys=True)]

    def _entries(self, value: Mapping[Any, Any], encode_keys: bool) -> list[tuple[Any, Any]]:
        """``(key, item)`` of a mapping, each encoded (the key only if ``encode_keys``); an
        error names the key it came from."""
        self._enter(value)
        entries: list[tuple[Any, Any]] = []
        try:
            for key, item in value.items():
                try:
                    entries.append((self.encode(key) if encode_keys else key, self.encode(item)))
                except _Unsupported as exc:
                    exc.path.append(f"[{key!r}]")
                    raise
        finally:
            self._active.discard(id(value))
        return entries

    # numpy -----------------------------------------------------------------------------------

    def _numpy(self, value: Any) -> Any:
        np: Any = importlib.import_module("numpy")
        if isinstance(value, np.ndarray):
            return self._ndarray(np, value)
        if isinstance(value, np.generic):
            dtype = value.dtype
            if dtype.hasobject:
                raise _unsupported(value)
            data = _b64encode(value.tobytes())
            return {TAG: "npscalar", "dtype": _dtype_spec(dtype), "b64": data}
        raise _unsupported(value)

    def _ndarray(self, np: Any, value: Any) -> Any:
        if isinstance(value, np.ma.MaskedArray):
            raise _Unsupported(
                "is a numpy masked array, which cannot travel",
                "send arr.filled(...) or its .data and .mask separately",
            )
        dtype = value.dtype
        shape = list(value.shape)
        if dtype.hasobject and dtype.fields is None:
            flat = value.ravel(order="C")
            return {
                TAG: "ndarray",
                "dtype": "object",
                "shape": shape,
                "items": self._items(flat, value),
            }
        if dtype.hasobject:
            raise _Unsupported(
                f"is a numpy array of structured dtype {dtype!r} with Python objects in it, "
                "which cannot travel",
                "send a dict of arrays, one per field, or a pandas DataFrame",
            )
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        encoded = {TAG: "ndarray", "dtype": _dtype_spec(dtype), "shape": shape, "order": order}
        index = self._in_bulk(value, value.nbytes)
        if index is not None:
            encoded["buffer"] = index
        else:
            encoded["b64"] = _b64encode(value.tobytes(order=order))
        return encoded

    # pandas ----------------------------------------------------------------------------------

    def _pandas(self, value: Any) -> Any:
        pd: Any = importlib.import_module("pandas")
        if isinstance(value, pd.DataFrame):
            columns = [self._pd_values(value.iloc[:, i]) for i in range(value.shape[1])]
            return {
                TAG: "pd.dataframe",
                "columns": self._pd_index(pd, value.columns),
                "index": self._pd_index(pd, value.index),
                "data": columns,
            }
        if isinstance(value, pd.Series):
            return {
                TAG: "pd.series",
                "values": self._pd_values(value),
                "index": self._pd_index(pd, value.index),
                "name": self.encode(value.name),
            }
        if isinstance(value, pd.Index):
            return self._pd_index(pd, value)
        if value is pd.NaT:
            return {TAG: "pd.nat"}
        if value is pd.NA:
            return {TAG: "pd.na"}
        if isinstance(value, pd.Timestamp):
            return {TAG: "pd.timestamp", "iso": value.isoformat(), "tz": _tz_name(value.tz)}
        if isinstance(value, pd.Timedelta):
            return {TAG: "pd.timedelta", "ns": int(value.value)}
        raise _unsupported(value)

    def _pd_index(self, pd: Any, index: Any) -> Any:
        if isinstance(index, pd.RangeIndex):
            return {
                TAG: "pd.rangeindex",
                "start": int(index.start),
                "stop": int(index.stop),
                "step": int(index.step),
                "name": self.encode(index.name),
            }
        if isinstance(index, pd.MultiIndex):
            levels = [self._pd_index(pd, index.get_level_values(i)) for i in range(index.nlevels)]
            return {TAG: "pd.multiindex", "levels": levels, "names": self.encode(list(index.names))}
        encoded = {
            TAG: "pd.index",
            "values": self._pd_values(index),
            "name": self.encode(index.name),
        }
        freq = getattr(index, "freq", None)  # DatetimeIndex, TimedeltaIndex
        if freq is not None:
            # By offset and count, not by name: pandas renamed them ('H' is 'h' in 2.2, 'M'
            # month-end is 'ME'), and a name one version writes, another refuses.
            encoded["offset"] = {
                "kind": type(freq).__name__,
                "n": int(freq.n),
                "normalize": bool(freq.normalize),
                "kwds": self._dict(dict(freq.kwds)),
            }
        return encoded

    def _pd_values(self, column: Any) -> Any:
        """The values of a Series or an Index, as an array that keeps their dtype."""
        np: Any = importlib.import_module("numpy")
        pd: Any = importlib.import_module("pandas")
        dtype = column.dtype
        if isinstance(dtype, np.dtype):
            return self._ndarray(np, column.to_numpy())
        if isinstance(dtype, pd.CategoricalDtype):
            return {
                TAG: "pd.categorical",
                "codes": self._ndarray(np, np.asarray(column.array.codes)),
                "categories": self._pd_index(pd, dtype.categories),
                "ordered": bool(dtype.ordered),
            }
        if isinstance(dtype, pd.StringDtype):
            # By meaning, not by name: pandas 3's "str" is strings whose missing value is NaN
            # (comparisons with it are False); "string" is strings with pd.NA (they are NA).
            storage = str(dtype.storage)
            nan_missing = (
                storage == "pyarrow_numpy" or getattr(dtype, "na_value", pd.NA) is not pd.NA
            )
            items = column.to_numpy(dtype=object, na_value=None)
            return {
                TAG: "pd.strings",
                "storage": "pyarrow" if storage.startswith("pyarrow") else "python",
                "missing": "nan" if nan_missing else "na",
                "items": self._items(items, column),
            }
        if isinstance(dtype, pd.DatetimeTZDtype):
            utc = column.array.tz_convert("UTC").tz_localize(None)
            return {
                TAG: "pd.datetimetz",
                "values": self._ndarray(np, np.asarray(utc)),
                "tz": _tz_name(dtype.tz),
            }
        items = column.to_numpy(dtype=object, na_value=None)
        return {TAG: "pd.extarray", "dtype": str(dtype), "items": self._items(items, column)}


def _dtype_spec(dtype: Any) -> Any:
    """A numpy dtype as JSON that any numpy reads back the same: its ``str`` (``"<f8"``,
    ``"<M8[ns]"``), or, for a structured one, its fields with their offsets (``descr`` would
    not keep the offsets of an aligned one)."""
    if dtype.fields is not None:
        names = list(dtype.names)
        spec = {
            "names": names,
            "formats": [_dtype_spec(dtype.fields[name][0]) for name in names],
            "offsets": [dtype.fields[name][1] for name in names],
            "itemsize": dtype.itemsize,
            "aligned": bool(dtype.isalignedstruct),
        }
        titles = [dtype.fields[name][2] if len(dtype.fields[name]) > 2 else None for name in names]
        if any(title is not None for title in titles):
            spec["titles"] = titles
        return spec
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return {"base": _dtype_spec(base), "shape": list(shape)}
    return dtype.str


def _dtype(np: Any, spec: Any) -> Any:
    if isinstance(spec, str):
        return np.dtype(spec)
    if "names" in spec:
        fields = {
            "names": spec["names"],
            "formats": [_dtype(np, item) for item in spec["formats"]],
            "offsets": spec["offsets"],
            "itemsize": spec["itemsize"],
        }
        if "titles" in spec:
            fields["titles"] = spec["titles"]
        return np.dtype(fields, align=bool(spec.get("aligned")))
    return np.dtype((_dtype(np, spec["base"]), tuple(spec["shape"])))


def _zone(name: str, variable: str) -> Any:
    for module in ("zoneinfo", "backports.zoneinfo"):  # Python 3.9 on; an optional backport
        try:
            return importlib.import_module(module).ZoneInfo(name)
        except ImportError:
            continue
    raise WireError(
        f"a datetime in zone {name!r} needs zoneinfo, which this Python "
        f"{'.'.join(map(str, __import__('sys').version_info[:2]))} lacks",
        variable,
        hint="pip install backports.zoneinfo here, or send it as UTC",
        action="receive",
    )


def _tz_name(tz: Any) -> str | None:
    return None if tz is None else str(tz)


def _zone_of(value: datetime.datetime) -> str | None:
    """The IANA name of a datetime's zone (zoneinfo's ``key``, pytz's ``zone``), ``None`` for a
    naive datetime or a fixed offset; a zone known by neither is refused (it would come back
    as a fixed offset, an hour off after the next change of daylight saving time)."""
    import datetime

    tz = value.tzinfo
    if tz is None or type(tz) is datetime.timezone:
        return None
    name = getattr(tz, "key", None) or getattr(tz, "zone", None)
    if isinstance(name, str):
        return name
    raise _Unsupported(
        f"has a time zone ({_type_name(tz)}) that is neither zoneinfo's nor a fixed offset",
        "convert it with .astimezone(zoneinfo.ZoneInfo('Europe/Paris')), say",
    )


def _narrowed(value: object) -> _Unsupported:
    """A subclass of a type that travels: it would come back as the base type."""
    cls = type(value)
    base = next(b for b in (bool, int, float, complex, str, bytes, tuple, list, dict, set,
                            frozenset, object) if isinstance(value, b))  # fmt: skip
    if base is object:
        return _unsupported(value)
    if base is tuple and hasattr(value, "_fields"):
        return _Unsupported(
            f"is a namedtuple ({cls.__name__}): it would come back as a plain tuple (its class is "
            "not on the other side)",
            "send tuple(value), or value._asdict()",
        )
    if isinstance(value, __import__("enum").Enum):
        return _Unsupported(
            f"is an enum member ({cls.__name__}.{getattr(value, 'name', '?')}): it would come "
            f"back as a plain {base.__name__}",
            "send its .value or .name",
        )
    return _Unsupported(
        f"is a {cls.__name__}, a subclass of {base.__name__}: it would come back as a plain "
        f"{base.__name__}",
        f"send {base.__name__}(value)",
    )


_ENCODERS_BY_TYPE: dict[type, Callable[[_Encoder, Any], Any]] = {
    tuple: _Encoder._tuple,
    set: _Encoder._set,
    frozenset: _Encoder._frozenset,
    bytes: _Encoder._bytes,
    bytearray: _Encoder._bytearray,
    complex: _Encoder._complex,
}


def _load_lazy_types() -> None:
    """Add the types of datetime, decimal, pathlib, uuid and collections to
    ``_ENCODERS_BY_TYPE``, once."""
    import collections
    import datetime
    import decimal
    import pathlib
    import uuid

    if datetime.datetime not in _ENCODERS_BY_TYPE:
        _ENCODERS_BY_TYPE.update(
            {
                collections.OrderedDict: _Encoder._ordereddict,
                collections.Counter: _Encoder._counter,
                collections.defaultdict: _Encoder._defaultdict,
                collections.deque: _Encoder._deque,
                datetime.datetime: _Encoder._datetime,  # before date: a datetime is a date
                datetime.date: _Encoder._date,
                datetime.time: _Encoder._time,
                datetime.timedelta: _Encoder._timedelta,
                decimal.Decimal: _Encoder._decimal,
                uuid.UUID: _Encoder._uuid,
                pathlib.PurePath: _Encoder._path,
                pathlib.PosixPath: _Encoder._path,
                pathlib.WindowsPath: _Encoder._path,
                pathlib.PurePosixPath: _Encoder._path,
                pathlib.PureWindowsPath: _Encoder._path,
            }
        )


def encode(value: Any, name: str = "", bulk: Bulk | None = None) -> Any:
    """Turn ``value`` into an object that ``json.dumps`` accepts; ``decode`` undoes it. With
    ``bulk``, its big buffers go there (see :class:`Bulk`).

    Raises :class:`WireError`, naming ``name`` and where in the value the problem sits, for
    values that cannot travel (functions, modules, open files, instances of user classes...).
    """
    try:
        return _Encoder(bulk).encode(value)
    except _Unsupported as exc:
        where = (name or "the value") + "".join(reversed(exc.path))
        raise WireError(f"{where} {exc.problem}", name, hint=exc.hint) from None
    except RecursionError:
        raise WireError("it is nested too deeply", name, hint=_HINT) from None


def encode_namespace(namespace: Mapping[str, Any], bulk: Bulk | None = None) -> dict[str, Any]:
    """Encode each variable of ``namespace``; an error names the variable that cannot travel."""
    return {name: encode(value, name, bulk) for name, value in namespace.items()}


# ---------------------------------------------------------------------------------------------
# decoding


class _Decoder:
    __slots__ = ("buffers", "name")

    def __init__(self, name: str, buffers: Sequence[Any]) -> None:
        self.name = name
        self.buffers = buffers

    def _buffer(self, index: Any) -> Any:
        if type(index) is not int or not 0 <= index < len(self.buffers):
            raise ValueError(f"no buffer {index!r} came with it ({len(self.buffers)} did)")
        return self.buffers[index]

    def decode(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is dict:
            if TAG in obj:
                tag = obj[TAG]
                method = _DECODERS.get(tag) if type(tag) is str else None
                if method is None:
                    raise WireError(
                        f"unknown tag {tag!r}",
                        self.name,
                        hint="the other side's ywmagics is newer: update this side's "
                        "(pip install -U ywmagics)",
                        action="receive",
                    )
                return method(self, obj)
            return {key: self.decode(item) for key, item in obj.items()}
        if cls is list:
            return [self.decode(item) for item in obj]
        return obj

    def _items(self, obj: dict[str, Any]) -> list[Any]:
        return [self.decode(item) for item in obj["items"]]

    def _dict(self, obj: dict[str, Any]) -> Any:
        return {self.decode(key): self.decode(item) for key, item in obj["items"]}

    def _ordereddict(self, obj: dict[str, Any]) -> Any:
        import collections

        return collections.OrderedDict(self._pairs(obj))

    def _counter(self, obj: dict[str, Any]) -> Any:
        import collections

        return collections.Counter(dict(self._pairs(obj)))

    def _defaultdict(self, obj: dict[str, Any]) -> Any:
        import collections

        factory = obj["factory"]
        if factory is not None and factory not in _FACTORIES:
            raise ValueError(f"unknown default factory {factory!r}")
        return collections.defaultdict(
            None if factory is None else _FACTORIES[factory], self._pairs(obj)
        )

    def _deque(self, obj: dict[str, Any]) -> Any:
        import collections

        return collections.deque(self._items(obj), obj["maxlen"])

    def _pairs(self, obj: dict[str, Any]) -> list[tuple[Any, Any]]:
        return [(self.decode(key), self.decode(item)) for key, item in obj["items"]]

    def _tuple(self, obj: dict[str, Any]) -> Any:
        return tuple(self._items(obj))

    def _set(self, obj: dict[str, Any]) -> Any:
        return set(self._items(obj))

    def _frozenset(self, obj: dict[str, Any]) -> Any:
        return frozenset(self._items(obj))

    def _bytes(self, obj: dict[str, Any]) -> Any:
        if "buffer" in obj:
            return bytes(self._buffer(obj["buffer"]))
        return _b64decode(obj["b64"])

    def _bytearray(self, obj: dict[str, Any]) -> Any:
        if "buffer" in obj:
            buffer = self._buffer(obj["buffer"])
            return buffer if type(buffer) is bytearray else bytearray(buffer)
        return bytearray(_b64decode(obj["b64"]))

    def _int(self, obj: dict[str, Any]) -> Any:
        return int(obj["hex"], 16)

    def _float(self, obj: dict[str, Any]) -> Any:
        text = obj["value"]
        if text not in ("nan", "inf", "-inf"):
            raise ValueError(f"bad float {text!r}")
        return float(text)

    def _complex(self, obj: dict[str, Any]) -> Any:
        return complex(self.decode(obj["real"]), self.decode(obj["imag"]))

    def _datetime(self, obj: dict[str, Any]) -> Any:
        import datetime

        value = datetime.datetime.fromisoformat(obj["iso"])
        zone = obj.get("tz")
        if zone is None:
            return value
        # The same instant, in its zone: the wall time, the offset and the fold follow.
        return value.astimezone(_zone(str(zone), self.name))

    def _date(self, obj: dict[str, Any]) -> Any:
        import datetime

        return datetime.date.fromisoformat(obj["iso"])

    def _time(self, obj: dict[str, Any]) -> Any:
        import datetime

        return datetime.time.fromisoformat(obj["iso"])

    def _timedelta(self, obj: dict[str, Any]) -> Any:
        import datetime

        return datetime.timedelta(
            days=obj["days"], seconds=obj["seconds"], microseconds=obj["microseconds"]
        )

    def _decimal(self, obj: dict[str, Any]) -> Any:
        import decimal

        return decimal.Decimal(obj["value"])

    def _uuid(self, obj: dict[str, Any]) -> Any:
        import uuid

        return uuid.UUID(obj["value"])

    def _path(self, obj: dict[str, Any]) -> Any:
        import pathlib

        name = obj.get("class")
        cls = getattr(pathlib, name) if name in _PATH_CLASSES else pathlib.Path
        return cls(obj["value"])

    # numpy -----------------------------------------------------------------------------------

    def _ndarray(self, obj: dict[str, Any]) -> Any:
        np = _import("numpy", self.name)
        shape = tuple(obj["shape"])
        if obj["dtype"] == "object":
            items = obj["items"]
            flat = np.empty(len(items), dtype=object)
            for index, item in enumerate(items):  # element-wise: np.array would nest lists
                flat[index] = self.decode(item)
            return flat.reshape(shape)
        dtype = _dtype(np, obj["dtype"])
        order = obj.get("order", "C")
        count = math.prod(shape)
        if "buffer" in obj:
            # Its memory is the buffer's (a mapped segment, a received frame): no copy.
            raw = self._buffer(obj["buffer"])
            size = memoryview(raw).nbytes
        else:
            raw = bytearray(_b64decode(obj["b64"]))  # a bytearray keeps it writable
            size = len(raw)
        if size != count * dtype.itemsize:
            raise ValueError(f"{size} bytes for {count} items of {dtype}")
        if not size:
            return np.zeros(shape, dtype=dtype, order=order)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape, order=order)

    def _npscalar(self, obj: dict[str, Any]) -> Any:
        np = _import("numpy", self.name)
        dtype = _dtype(np, obj["dtype"])
        raw = _b64decode(obj["b64"])
        if dtype.itemsize == 0:
            return np.zeros((), dtype=dtype)[()]
        return np.frombuffer(raw, dtype=dtype)[0]

    # pandas ----------------------------------------------------------------------------------

    def _pd_dataframe(self, obj: dict[str, Any]) -> Any:
        pd = _import("pandas", self.name)
        columns = self.decode(obj["columns"])
        index = self.decode(obj["index"])
        data = [self.decode(column) for column in obj["data"]]
        if not data:
            return pd.DataFrame(index=index, columns=columns)
        # copy=False: the columns keep the memory they arrived in (a mapped segment, a frame).
        columns_by_position = {
            i: pd.Series(values, dtype=values.dtype, copy=False) for i, values in enumerate(data)
        }
        frame = pd.DataFrame(columns_by_position, copy=False)
        frame.index = index
        frame.columns = columns
        return frame

    def _pd_series(self, obj: dict[str, Any]) -> Any:
        pd = _import("pandas", self.name)
        values = self.decode(obj["values"])
        series = pd.Series(values, dtype=values.dtype, name=self.decode(obj["name"]))
        series.index = self.decode(obj["index"])
        return series

    def _pd_index(self, obj: dict[str, Any]) -> Any:
        pd = _import("pandas", self.name)
        values = self.decode(obj["values"])
        index = pd.Index(values, dtype=values.dtype, name=self.decode(obj["name"]))
        offset = obj.get("offset")
        freq = obj.get("freq")  # by name, as an older ywmagics sent it
        if offset is not None:
            kind = getattr(pd.offsets, str(offset["kind"]), None)
            if kind is None:
                raise ValueError(f"this pandas has no {offset['kind']} offset")
            options = self.decode(offset["kwds"])
            if offset["normalize"]:
                options["normalize"] = True
            freq = kind(offset["n"], **options)
        if freq is not None:
            cls = pd.DatetimeIndex if isinstance(index, pd.DatetimeIndex) else pd.TimedeltaIndex
            index = cls(index, freq=freq, name=index.name)
        return index

    def _pd_rangeindex(self, obj: dict[str, Any]) -> Any:
        pd = _import("pandas", self.name)
        name = self.decode(obj["name"])
        return pd.RangeIndex(obj["start"], obj["stop"], obj["step"], name=name)

    def _pd_multiindex(self, obj: dict[str, Any]) -> Any:
        pd = _import("pandas", self.name)
        levels = [self.decode(level) for level in obj["levels"]]
        return pd.MultiIndex.from_arrays(levels, names=self.decode(obj["names"]))

    def _pd_categorical(self, obj: dict[str, Any]) -> Any:
        pd = _import("pandas", self.name)
        return pd.Categorical.from_codes(
            self.decode(obj["codes"]),
            categories=self.decode(obj["categories"]),
            ordered=obj["ordered"],
        )

    def _pd_datetimetz(self, obj: dict[str, Any]) -> Any:
        pd = _import("pandas", self.name)
        utc = pd.DatetimeIndex(self.decode(obj["values"])).tz_localize("UTC")
        return utc.tz_convert(obj["tz"]).array

    def _pd_extarray(self, obj: dict[str, Any]) -> Any:
        pd = _import("pandas", self.name)
        items = self._items(obj)
        dtype: Any = obj["dtype"]
        try:
            resolved = pd.api.types.pandas_dtype(dtype)
        except TypeError:
            resolved = None
        if resolved is not None and not isinstance(resolved, pd.api.extensions.ExtensionDtype):
            # This pandas reads the name as a numpy dtype: pandas 3's "str" is numpy's str in
            # pandas 2, which would turn missing values into the text 'None'. Keep them missing.
            dtype = "string" if obj["dtype"] == "str" else object
        return pd.array(items, dtype=dtype)

    def _pd_strings(self, obj: dict[str, Any]) -> Any:
        """Strings, with the missing-value meaning they had, as this pandas can have it."""
        pd = _import("pandas", self.name)
        items = self._items(obj)
        storage = obj["storage"]
        import importlib.util

        if storage == "pyarrow" and importlib.util.find_spec("pyarrow") is None:
            storage = "python"  # the same meaning; pyarrow only stores them otherwise
        if obj["missing"] == "na":
            return pd.array(items, dtype=pd.StringDtype(storage))
        np: Any = importlib.import_module("numpy")
        try:
            dtype = pd.StringDtype(storage, na_value=np.nan)  # pandas 2.3 on
        except TypeError:  # an older pandas: its strings with NaN for missing are objects
            return np.array([np.nan if item is None else item for item in items], dtype=object)
        return pd.array(items, dtype=dtype)

    def _pd_timestamp(self, obj: dict[str, Any]) -> Any:
        pd = _import("pandas", self.name)
        stamp = pd.Timestamp(obj["iso"])
        return stamp if obj["tz"] is None else stamp.tz_convert(obj["tz"])

    def _pd_timedelta(self, obj: dict[str, Any]) -> Any:
        return _import("pandas", self.name).Timedelta(obj["ns"], unit="ns")

    def _pd_nat(self, obj: dict[str, Any]) -> Any:
        return _import("pandas", self.name).NaT

    def _pd_na(self, obj: dict[str, Any]) -> Any:
        return _import("pandas", self.name).NA


_DECODERS: dict[str, Callable[[_Decoder, dict[str, Any]], Any]] = {
    "dict": _Decoder._dict,
    "ordereddict": _Decoder._ordereddict,
    "counter": _Decoder._counter,
    "defaultdict": _Decoder._defaultdict,
    "deque": _Decoder._deque,
    "tuple": _Decoder._tuple,
    "set": _Decoder._set,
    "frozenset": _Decoder._frozenset,
    "bytes": _Decoder._bytes,
    "bytearray": _Decoder._bytearray,
    "int": _Decoder._int,
    "float": _Decoder._float,
    "complex": _Decoder._complex,
    "datetime": _Decoder._datetime,
    "date": _Decoder._date,
    "time": _Decoder._time,
    "timedelta": _Decoder._timedelta,
    "decimal": _Decoder._decimal,
    "uuid": _Decoder._uuid,
    "path": _Decoder._path,
    "ndarray": _Decoder._ndarray,
    "npscalar": _Decoder._npscalar,
    "pd.dataframe": _Decoder._pd_dataframe,
    "pd.series": _Decoder._pd_series,
    "pd.index": _Decoder._pd_index,
    "pd.rangeindex": _Decoder._pd_rangeindex,
    "pd.multiindex": _Decoder._pd_multiindex,
    "pd.categorical": _Decoder._pd_categorical,
    "pd.datetimetz": _Decoder._pd_datetimetz,
    "pd.strings": _Decoder._pd_strings,
    "pd.extarray": _Decoder._pd_extarray,
    "pd.timestamp": _Decoder._pd_timestamp,
    "pd.timedelta": _Decoder._pd_timedelta,
    "pd.nat": _Decoder._pd_nat,
    "pd.na": _Decoder._pd_na,
}


def decode(obj: Any, name: str = "", buffers: Sequence[Any] = ()) -> Any:
    """Turn what :func:`encode` produced (after a JSON round trip) back into the value;
    ``buffers`` are the bulk buffers that came with it, in order (see :class:`Bulk`).

    Raises :class:`WireError` naming ``name`` for malformed input, unknown tags, or numpy/pandas
    data when numpy/pandas is not installed here.
    """
    try:
        return _Decoder(name, buffers).decode(obj)
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WireError(
            f"it cannot be rebuilt here ({type(exc).__name__}: {exc})",
            name,
            hint=f"{_here()}: the other side's libraries made a value that these cannot, and "
            "it is refused rather than changed; send it in a plainer form (a list, a str)",
            action="receive",
        ) from None
    except RecursionError:
        raise WireError("it is nested too deeply", name, action="receive") from None


def _here() -> str:
    """This side's Python, and its numpy and pandas if loaded: where values are rebuilt."""
    import sys

    here = "here: Python " + ".".join(map(str, sys.version_info[:3]))
    for library in ("numpy", "pandas"):
        module = sys.modules.get(library)
        if module is not None:
            here += f", {library} {getattr(module, '__version__', '?')}"
    return here


def decode_namespace(encoded: Mapping[str, Any], buffers: Sequence[Any] = ()) -> dict[str, Any]:
    """Decode each variable of ``encoded``; an error names the variable that cannot be read."""
    if not isinstance(encoded, dict):
        raise WireError(
            f"expected an object of variables, got {_type_name(encoded)}", action="receive"
        )
    return {str(name): decode(obj, str(name), buffers) for name, obj in encoded.items()}
