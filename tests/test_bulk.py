"""Big values beside the JSON: the codec's buffers, shared-memory segments, binary frames, and a
real python runner taking and giving them both ways."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from ywmagics import bulk, wire
from ywmagics.discovery import Connection
from ywmagics.kernel.interpreter import RunRequest, RunResult, _read_stream
from ywmagics.kernel.output import Output
from ywmagics.kernel.transfer import ChunkReader, bulk_request, decode_outputs, encode_inputs

from .pyrun_process import Server

BIG = 1 << 17  # elements: over the codec's bulk threshold for every dtype below
FOLDER = bulk.folder() or "no private folder for segments"


def _arrays() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    base = rng.random((512, 300))
    structured = np.zeros(BIG, dtype=[("id", "<i4"), ("pos", "<f8", (3,)), ("tag", "S5")])
    structured["id"] = np.arange(BIG)
    structured["pos"] = rng.random((BIG, 3))
    structured["tag"] = b"ab"
    aligned = np.zeros(BIG, dtype=np.dtype([("a", "u1"), ("b", "<f8")], align=True))
    aligned["b"] = np.arange(BIG) / 3
    return {
        "c_order": base,
        "f_order": np.asfortranarray(base),
        "strided_view": base[::3, 1::2],
        "transposed_view": base.T[10:200],
        "reversed": base[::-1],
        "broadcast": np.broadcast_to(np.arange(300.0), (512, 300)),
        "zero_d_big": np.array(b"x" * (70 * 1024)),
        "empty": np.zeros((0, 300)),
        "float16": rng.random(BIG).astype(np.float16),
        "big_endian": np.arange(BIG, dtype=">i4"),
        "complex": (rng.random(BIG) + 1j * rng.random(BIG)).astype(np.complex64),
        "bool": rng.random(BIG) > 0.5,
        "unicode": np.array([f"s{i}" for i in range(BIG // 4)]),
        "datetime64": np.arange(BIG).astype("M8[ms]"),
        "timedelta64": np.arange(BIG).astype("m8[us]")[::2],
        "structured": structured,
        "structured_view": structured[1::2],
        "aligned_struct": aligned,
    }


ARRAYS = _arrays()


def _pieces_as_frames(values: wire.Bulk) -> list[bytearray]:
    return [bytearray(b"".join(values.pieces(i))) for i in range(len(values))]


def assert_same_array(back: Any, array: Any) -> None:
    assert type(back) is np.ndarray
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable  # like the notebook's own arrays


@pytest.mark.parametrize("name", ARRAYS)
def test_every_layout_and_dtype_goes_beside_the_json_and_back(name: str) -> None:
    array = ARRAYS[name]
    values = wire.Bulk()
    encoded = json.loads(json.dumps(wire.encode(array, name, values)))
    if array.nbytes >= values.min_size:
        assert "b64" not in json.dumps(encoded) and len(values) == 1
        assert values.sizes == [array.nbytes]
    back = wire.decode(encoded, name, _pieces_as_frames(values))
    assert_same_array(back, array)
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        assert back.flags.f_contiguous  # its layout, not only its values


def test_small_values_stay_readable_json() -> None:
    values = wire.Bulk()
    encoded = wire.encode({"a": np.arange(10), "b": b"short", "n": 3}, "v", values)
    assert len(values) == 0 and encoded["b"] == {"__yw__": "bytes", "b64": "c2hvcnQ="}


def test_one_array_in_two_variables_is_one_buffer_and_stays_shared() -> None:
    array = np.arange(BIG, dtype=np.float64)
    values = wire.Bulk()
    encoded = wire.encode_namespace({"a": array, "b": array, "c": array.copy()}, values)
    assert len(values) == 2
    back = wire.decode_namespace(json.loads(json.dumps(encoded)), _pieces_as_frames(values))
    back["a"][0] = -1.0
    assert back["b"][0] == -1.0 and back["c"][0] == 0.0  # as it was in the sender's namespace


def test_bytes_and_frames_of_mixed_columns() -> None:
    frame = pd.DataFrame(
        {
            "x": np.arange(BIG, dtype=np.int64),
            "y": np.random.default_rng(1).random(BIG),
            "when": pd.date_range("2020-01-01", periods=BIG, freq="s", tz="Europe/Paris"),
            "cat": pd.Categorical(["a", "b"] * (BIG // 2)),
            "s": ["t"] * BIG,
        }
    )
    value = {
        "frame": frame,
        "blob": b"\x00\xff" * BIG,
        "mutable": bytearray(BIG),
        "view": memoryview(b"m" * BIG),
    }
    values = wire.Bulk()
    encoded = json.loads(json.dumps(wire.encode(value, "v", values)))
    back = wire.decode(encoded, "v", _pieces_as_frames(values))
    pd.testing.assert_frame_equal(back["frame"], frame)
    assert back["blob"] == value["blob"] and type(back["blob"]) is bytes
    assert back["mutable"] == value["mutable"] and type(back["mutable"]) is bytearray
    assert back["view"] == b"m" * BIG


def test_a_buffer_of_the_wrong_size_or_missing_is_refused() -> None:
    values = wire.Bulk()
    encoded = json.loads(json.dumps(wire.encode(np.arange(BIG), "a", values)))
    with pytest.raises(wire.WireError, match=r"cannot receive variable 'a'.*bytes for"):
        wire.decode(encoded, "a", [bytearray(8)])
    with pytest.raises(wire.WireError, match="no buffer 0 came with it"):
        wire.decode(encoded, "a", [])


# --- segments ---------------------------------------------------------------------------------


def _our_segments() -> set[str]:
    return {n for n in os.listdir(FOLDER) if n.startswith(bulk.PREFIX)}


@pytest.fixture
def no_segment_left() -> Iterator[None]:
    before = _our_segments()
    yield
    assert _our_segments() - before == set(), "a segment was left in /dev/shm"


def test_a_segment_is_private_mapped_once_and_its_name_gone(no_segment_left: None) -> None:
    data = memoryview(np.arange(BIG, dtype=np.int32)).cast("B")
    name = bulk.write_segment([data[:1000], data[1000:]], data.nbytes, os.getpid())
    info = os.stat(f"{FOLDER}/{name}")
    assert info.st_mode & 0o777 == 0o600 and info.st_size == data.nbytes
    mapped = bulk.map_segment(name, data.nbytes)
    assert not os.path.exists(f"{FOLDER}/{name}")  # its memory is the mapping's alone
    assert bytes(mapped) == bytes(data)
    with pytest.raises(bulk.SegmentError, match="is gone"):
        bulk.map_segment(name, data.nbytes)


def test_a_segment_that_is_not_what_was_said_is_refused(no_segment_left: None) -> None:
    name = bulk.write_segment([memoryview(b"x" * 100)], 100, os.getpid())
    with pytest.raises(bulk.SegmentError, match="holds 100 bytes, not 200"):
        bulk.map_segment(name, 200)
    for bad in ("../etc/passwd", "ywbulk-1-2-zz", "other"):
        with pytest.raises(bulk.SegmentError, match="not the name of a bulk segment"):
            bulk.map_segment(bad, 1)
    name = bulk.write_segment([memoryview(b"x" * 100)], 100, os.getpid())
    os.chmod(f"{FOLDER}/{name}", 0o644)
    with pytest.raises(bulk.SegmentError, match="not a private segment"):
        bulk.map_segment(name, 100)
    # A link put in a segment's place (by someone who can write in /dev/shm) is not followed.
    target = bulk.write_segment([memoryview(b"y" * 100)], 100, os.getpid())
    link = f"ywbulk-{os.getpid()}-{os.getpid()}-{'cd' * 8}"
    os.symlink(f"{FOLDER}/{target}", f"{FOLDER}/{link}")
    try:
        with pytest.raises(bulk.SegmentError, match="cannot be opened"):
            bulk.map_segment(link, 100)
    finally:
        bulk.remove_segments([target, link])


def test_the_sweep_removes_what_dead_processes_left_and_nothing_else(no_segment_left: None) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone = int(dead.stdout)
    me = os.getpid()
    token = "0123456789abcdef"
    paths = {
        "dead_creator": f"{FOLDER}/ywbulk-{gone}-{me}-{token}",
        "dead_receiver": f"{FOLDER}/ywbulk-{me}-{gone}-{token}",
        "alive": f"{FOLDER}/ywbulk-{me}-{me}-{token}",
        "another_users": f"{FOLDER}/ywbulk-{gone}-{gone}-{token}",
    }
    for path in paths.values():
        Path(path).write_bytes(b"x")
    if os.getuid() == 0:
        os.chown(paths["another_users"], 65534, 65534)
    try:
        assert bulk.sweep() == []  # too young: they may still be on their way
        removed = bulk.sweep(min_age=0)
        assert Path(paths["alive"]).exists()
        assert (
            not Path(paths["dead_creator"]).exists() and not Path(paths["dead_receiver"]).exists()
        )
        if os.getuid() == 0:
            assert Path(paths["another_users"]).exists()  # not ours to remove
        assert {Path(paths["dead_creator"]).name, Path(paths["dead_receiver"]).name} <= set(removed)
    finally:
        for path in paths.values():
            Path(path).unlink(missing_ok=True)


def test_segments_live_in_a_private_folder_that_others_cannot_list() -> None:
    info = os.lstat(FOLDER)
    assert f"{bulk.SHM_FOLDER}/ywmagics-{os.getuid()}" == FOLDER
    assert stat.S_ISDIR(info.st_mode) and info.st_mode & 0o777 == 0o700
    assert info.st_uid == os.getuid()


def test_a_folder_in_its_place_that_is_not_private_means_no_shared_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bulk, "SHM_FOLDER", str(tmp_path))
    squatted = tmp_path / f"ywmagics-{os.getuid()}"
    squatted.symlink_to(tmp_path)  # another user's link, say, made before ours
    assert bulk.folder() is None and bulk._find_host() is None
    squatted.unlink()
    squatted.mkdir(mode=0o755)
    squatted.chmod(0o755)
    assert bulk.folder() is None
    values = wire.Bulk()
    wire.encode(np.arange(BIG), "a", values)
    # No shared memory here: every buffer goes as a frame.
    assert bulk.place(values, {"pid": os.getpid()}, bulk._find_host()) == (
        [{"size": BIG * 8}],
        [0],
    )


def test_a_folder_of_ours_left_unusable_by_a_umask_is_mended(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bulk, "SHM_FOLDER", str(tmp_path))
    ours = tmp_path / f"ywmagics-{os.getuid()}"
    ours.mkdir(mode=0o500)
    ours.chmod(0o500)
    assert bulk.folder() == str(ours) and stat.S_IMODE(ours.stat().st_mode) == 0o700


def test_a_folder_lost_since_the_host_was_learned_means_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = wire.Bulk()
    wire.encode(np.arange(BIG), "a", values)
    here = bulk.host()
    monkeypatch.setattr(bulk, "folder", lambda: None)  # removed, and its name taken by another
    assert bulk.place(values, here, here) == ([{"size": BIG * 8}], [0])


def test_the_kernel_says_once_why_big_values_go_as_frames(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ywmagics.kernel import transfer

    monkeypatch.setattr(bulk, "host", lambda: None)
    monkeypatch.setattr(transfer, "_said_no_shared_memory", False)
    for _ in range(2):
        inputs = transfer.encode_inputs({"a": np.ones(BIG)}, ["a"], runner_host=None)
        assert inputs.frames == [0]
    said = capsys.readouterr().err
    assert said.count("no private folder for shared memory") == 1 and "frames" in said


def test_a_frame_size_claimed_with_nothing_behind_it_costs_no_memory() -> None:
    def peak() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

    reader = ChunkReader(iter([b"only ten b"]))
    before = peak()
    with pytest.raises(EOFError, match="ended after 10 bytes of 3221225472"):
        bulk.read_frame(3 << 30, reader.readinto)
    assert peak() - before < 100_000  # kB


def test_the_sweep_takes_odd_names_in_its_stride(no_segment_left: None) -> None:
    odd = [
        f"ywbulk-{os.getpid()}-{10**20}-{'ef' * 8}",  # a pid no process can have
        f"ywbulk-{os.getpid()}--1-{'ef' * 8}",
        "ywbulk-٣-1-" + "ef" * 8,  # digits of another script
    ]
    for name in odd:
        Path(FOLDER, name).write_bytes(b"x")
    try:
        assert bulk.sweep(min_age=0) == []  # not ours to judge, and no crash
    finally:
        for name in odd:
            Path(FOLDER, name).unlink()


def test_a_receiver_pid_that_no_process_can_have_means_frames() -> None:
    values = wire.Bulk()
    wire.encode(np.arange(BIG), "a", values)
    for pid in (10**20, -1, 0, "abc", None, True):
        host = {**(bulk.host() or {}), "pid": pid}
        assert bulk.place(values, host, bulk.host())[1] == [0], pid


def test_no_room_in_shared_memory_sends_frames_instead(
    monkeypatch: pytest.MonkeyPatch, no_segment_left: None
) -> None:
    write = os.write

    def full(descriptor: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{descriptor}").startswith(FOLDER):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(descriptor, data)

    values = wire.Bulk()
    wire.encode_namespace({"a": np.arange(BIG), "b": np.ones(BIG)}, values)
    monkeypatch.setattr(os, "write", full)
    listed, frames = bulk.place(values, bulk.host(), bulk.host())
    assert frames == [0, 1] and bulk.segment_names(listed) == []


def test_the_chunk_reader_splits_lines_and_frames_anywhere() -> None:
    payload = bytes(range(256)) * 40
    stream = b'{"a": 1}\n{"result": 2}\n' + payload + b'{"end": 3}\n'
    for size in (1, 3, 7, 64, 4096, len(stream)):
        reader = ChunkReader(iter([stream[i : i + size] for i in range(0, len(stream), size)]))
        lines = reader.lines()
        assert next(lines) == b'{"a": 1}' and next(lines) == b'{"result": 2}'
        assert bytes(bulk.read_frame(len(payload), reader.readinto)) == payload
        assert list(lines) == [b'{"end": 3}']


# --- with a real runner ---------------------------------------------------------------------


def exchange(
    server: Server,
    code: str,
    namespace: dict[str, Any],
    inputs: list[str],
    outputs: list[str],
    runner_host: Any,
) -> tuple[dict[str, Any], RunResult]:
    """One ``%%interpreter`` run as the kernel makes it, straight to the runner's socket."""
    printed: list[str] = []
    output = Output(printed.append, printed.append, lambda bundle: None)
    request = RunRequest(
        "cell",
        code,
        encode_inputs(namespace, inputs, runner_host),
        outputs,
        bulk_request(runner_host),
    )
    body = request.body()
    headers = {**body.pop("headers", {}), "Accept": "application/x-ndjson"}
    try:
        with server.client.stream("POST", "/run", **body, headers=headers) as response:
            assert response.status_code == 200, response.read()
            result = _read_stream(response.iter_bytes(), output)
    finally:
        request.inputs.release()
    assert not result.get("exception"), result.get("exception")
    try:
        return decode_outputs(result.get("capturedOut"), outputs, result.buffers), result
    finally:
        bulk.remove_segments(bulk.segment_names(result.get("buffers") or []))


SENT = ("c_order", "f_order", "strided_view", "structured", "datetime64", "empty", "zero_d_big")


@pytest.mark.parametrize("mode", ["shared", "frames"])
def test_arrays_go_to_a_runner_and_come_back(
    start_server: Callable[..., Server],
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
    no_segment_left: None,
) -> None:
    monkeypatch.setenv("YWMAGICS_BULK", mode)
    server = start_server()
    host = server.client.get("/").json()["host"]
    namespace = {name: ARRAYS[name] for name in SENT}
    code = (
        "checks = {n: (v.dtype.str, v.shape, bool(v.flags.writeable))\n"
        "          for n, v in dict(globals()).items() if hasattr(v, 'dtype')}\n"
    )
    code += "".join(f"{name}_back = {name}\n" for name in SENT)
    outs = [f"{name}_back" for name in SENT] + ["checks"]
    values, result = exchange(server, code, namespace, list(SENT), outs, host)
    listed = result.get("buffers")
    assert len(listed) >= 5
    assert all(("shm" in item) == (mode == "shared") for item in listed)
    for name in SENT:
        assert_same_array(values[f"{name}_back"], ARRAYS[name])
        dtype, shape, writeable = values["checks"][name]
        assert (dtype, tuple(shape), writeable) == (
            ARRAYS[name].dtype.str,
            ARRAYS[name].shape,
            True,
        )


def test_the_connection_is_kept_for_the_next_cell(start_server: Callable[..., Server]) -> None:
    server = start_server()
    host = server.client.get("/").json()["host"]
    connections = set()
    for _ in range(3):
        values, _ = exchange(server, "y = x * 2", {"x": np.ones(BIG)}, ["x"], ["y"], host)
        assert values["y"].sum() == 2 * BIG
        connections.add(id(server.client._transport._pool.connections[0]))
    assert len(connections) == 1


# httpcore sometimes drops the connection that the kill broke without closing it (the garbage
# collector does): a warning of the test's HTTP client, not of what is tested here.
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_runner_killed_with_segments_on_the_way_leaves_none(
    start_server: Callable[..., Server], no_segment_left: None
) -> None:
    server = start_server()
    host = server.client.get("/").json()["host"]
    os.kill(server.process.pid, signal.SIGSTOP)  # it takes nothing, as if busy or hung
    before = _our_segments()
    seen: list[set[str]] = []

    def kill_once_sent() -> None:
        deadline = time.monotonic() + 10
        while not _our_segments() - before and time.monotonic() < deadline:
            time.sleep(0.005)
        seen.append(_our_segments() - before)
        os.kill(server.process.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_once_sent)
    killer.start()
    with pytest.raises(httpx.TransportError):
        exchange(server, "y = x", {"x": np.ones(BIG)}, ["x"], ["y"], host)
    killer.join()
    assert seen[0], "no segment was on its way when the runner was killed"


def test_a_kernel_killed_before_taking_its_values_leaves_them_to_the_sweep(
    start_server: Callable[..., Server], tmp_path: Path, no_segment_left: None
) -> None:
    server = start_server()
    # A kernel that reads the runner's result line, then dies before mapping the segments.
    script = tmp_path / "kernel.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os, httpx
        from ywmagics import bulk
        transport = httpx.HTTPTransport(uds={str(server.socket_path)!r})
        client = httpx.Client(transport=transport, base_url="http://pyrun")
        code = "import numpy; y = numpy.ones(1 << 17)"
        body = {{"cellId": "c", "code": code, "capturedIn": {{}}, "capturedOut": ["y"],
                 "bulk": {{"host": bulk.host()}}}}
        headers = {{"Accept": "application/x-ndjson"}}
        with client.stream("POST", "/run", json=body, headers=headers) as response:
            for line in response.iter_lines():
                if "result" in line:
                    print(json.dumps(json.loads(line)["result"]["buffers"]), flush=True)
                    os._exit(0)
        """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=30
    )
    [segment] = json.loads(done.stdout)
    # Nobody mapped it. The runner may have seen its client leave and removed it already; if
    # not, the sweep must: either way, nothing is left.
    left = Path(FOLDER, segment["shm"])
    assert not left.exists() or segment["shm"] in bulk.sweep(min_age=0)
    assert not left.exists()


@pytest.mark.slow
def test_the_orchestrator_sweeps_segments_left_by_the_dead(orchestrator: Connection) -> None:
    from ywmagics.client import OrchestratorClient
    from ywmagics.spec import InstallRequest

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    left = Path(FOLDER, f"ywbulk-{int(dead.stdout)}-{os.getpid()}-{'ab' * 8}")
    left.write_bytes(b"x" * 100)
    os.utime(left, (time.time() - 60, time.time() - 60))  # old enough to be swept
    # A kernel's install: its partition is owned, and the orchestrator watches.
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        request = InstallRequest.from_object("demo_yw_backend#^0.1.1", partition="Sweep")
        OrchestratorClient(orchestrator).install(request, owner=owner.pid)
        deadline = time.monotonic() + 10
        while left.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left.exists(), "the orchestrator left a dead transfer's segment"
        # The last kernel dies, say in the middle of a transfer: what it left goes too.
        owner.kill()
        owner.wait()
        left.write_bytes(b"x" * 100)
        os.utime(left, (time.time() - 60, time.time() - 60))
        deadline = time.monotonic() + 10
        while left.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left.exists(), "what the last kernel left was not swept"
    finally:
        owner.kill()
        owner.wait()
        left.unlink(missing_ok=True)


def test_output_after_the_result_does_not_break_its_frames(
    start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread of the cell (a logging handler, say) writes as the cell ends: its text comes in
    # the same batch as the result, which must still be followed by its frames at once.
    monkeypatch.setenv("YWMAGICS_BULK", "frames")
    server = start_server()
    host = server.client.get("/").json()["host"]
    code = textwrap.dedent("""
        import sys, threading, time, numpy
        out = sys.stdout
        def chatter():
            for i in range(300):
                out.write("x" * 70000 + "\\n"); time.sleep(0.001)
        threading.Thread(target=chatter, daemon=True).start()
        time.sleep(0.05)
        y = numpy.ones(1 << 17)
    """)
    for _ in range(3):
        values, _ = exchange(server, code, {}, [], ["y"], host)
        assert values["y"].sum() == 1 << 17
    values, _ = exchange(server, "z = 2", {}, [], ["z"], host)  # the runner serves on
    assert values["z"] == 2


@pytest.mark.parametrize("mode", ["shared", "frames"])
def test_a_forked_child_does_not_change_a_received_value(
    start_server: Callable[..., Server], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YWMAGICS_BULK", mode)
    server = start_server()
    host = server.client.get("/").json()["host"]
    code = textwrap.dedent("""
        import os
        child = os.fork()
        if child == 0:
            x[:] = -1
            os._exit(0)
        os.waitpid(child, 0)
        kept = bool((x == 1).all())
        y = x
    """)
    values, _ = exchange(server, code, {"x": np.ones(BIG)}, ["x"], ["kept", "y"], host)
    assert values["kept"] is True  # in the runner
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        values["y"][:] = -1
        os._exit(0)
    os.waitpid(child, 0)
    assert (values["y"] == 1).all()  # in the kernel


def test_frames_that_claim_more_than_the_body_are_refused_before_any_memory(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    head = {"cellId": "c", "code": "pass", "capturedIn": {"a": {"__yw__": "bytes", "buffer": 0}},
            "capturedOut": [], "buffers": [{"size": 3 << 30}]}  # fmt: skip
    body = json.dumps(head).encode() + b"\n" + b"x" * 10
    answer = server.client.post("/run", content=body, headers={"Content-Type": bulk.FRAMES})
    assert answer.status_code == 400 and "more than the body holds" in answer.text
    with open(f"/proc/{server.process.pid}/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    assert peak < 500_000  # kB: nothing like the 3 GiB claimed was given


def test_a_chunk_size_that_is_not_hex_digits_is_refused(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(server.socket_path))
        raw.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n")
        answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b"malformed chunked body" in answer


def test_a_runner_that_does_not_say_it_takes_buffers_gets_every_value_in_the_json() -> None:
    from ywmagics.kernel.transfer import bulk_request, encode_inputs

    # An older runner's GET / has no "bulk": it reads JSON bodies only, as it always did.
    inputs = encode_inputs({"a": np.zeros(BIG)}, ["a"], bulk.host(), takes_bulk=False)
    body = RunRequest("c", "pass", inputs, ["a"], bulk_request(bulk.host(), False)).body()
    assert list(body) == ["json"] and "bulk" not in body["json"]
    assert body["json"]["capturedIn"]["a"]["b64"]


def test_structured_titles_travel_too() -> None:
    titled = np.zeros(BIG, dtype=[(("the x", "x"), "<f8"), ("y", "<i4")])
    values = wire.Bulk()
    back = wire.decode(json.loads(json.dumps(wire.encode(titled, "t", values))), "t",
                       _pieces_as_frames(values))  # fmt: skip
    assert back.dtype == titled.dtype and back.dtype.fields["x"][2] == "the x"


def test_the_kernel_asks_a_restarted_runner_where_it_is_again() -> None:
    from ywmagics.kernel import interpreter

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    answers = [
        {"bulk": bulk.PROTOCOL, "host": {**(bulk.host() or {}), "pid": int(gone.stdout)}},
        {"bulk": bulk.PROTOCOL, "host": bulk.host()},
    ]

    class Runner:  # a stand-in for the client: what its GET / answers, in turn
        url_base, partition = "http://test/backends/pyrun_backend/0.1.0", "Restarted"

        def fetch_json(self, path: str) -> Any:
            return answers.pop(0)

    runner: Any = Runner()
    assert interpreter.runner_bulk(runner)[1]["pid"] == int(gone.stdout)
    # Its pid has ended since: segments named for it could be swept on their way. Asked again.
    assert interpreter.runner_bulk(runner) == (True, bulk.host())
    assert interpreter.runner_bulk(runner) == (True, bulk.host())  # and kept, while it lives
    assert answers == []
