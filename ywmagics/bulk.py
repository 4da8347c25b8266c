"""How the bulk buffers of captured variables travel: shared memory, or binary frames.

The wire codec (:mod:`ywmagics.wire`) keeps an array's data and long ``bytes`` out of its JSON
(a :class:`~ywmagics.wire.Bulk`); the JSON lists them as descriptors, ``{"size": N}``, each with
``"shm": NAME`` when it waits in shared memory. Like the codec, this module is copied next to
the python runner (as ``ywmagics_bulk.py``): the standard library only, Python 3.8 on. Unlike
the rest of what the kernel, client and orchestrator share, it does I/O (files, mappings,
``/proc``): moving bytes between processes is its one job.

Shared memory, when both sides run on one machine (:func:`host` describes where a process runs;
:func:`same_host` compares two): each buffer is a segment, a file that the sender creates (mode
0600, ``O_EXCL``) in the user's own folder of ``/dev/shm`` (``ywmagics-UID``, 0700: other users
cannot see the segments, link them or flood the folder), and fills with one copy, written (a
full ``/dev/shm`` is then an error, and the buffer goes as a frame instead). The receiver maps
it copy-on-write and removes its name at once: the memory is then the receiver's value's alone
(a forked child's writes stay the child's, as with any array), and goes back to the system when
that value is dropped. Nothing is copied on the receiving side.

Who removes a segment: until the receiver maps it, it is the sender's, which removes what is
left of its segments when the exchange ends, however it ends. A segment is named
``ywbulk-CREATOR-RECEIVER-TOKEN`` (process ids): when either process has died, nobody can need it
any more, and :func:`sweep` (run by the orchestrator) removes it, once it is a few seconds old
(a runner restarted since its kernel learned its pid must still get what is on its way). So a
kernel or a runner killed in the middle of a transfer leaves nothing behind for long.

Frames, otherwise (another machine, no ``/dev/shm``, no room there): the body is the JSON on
one line, then the raw bytes of each buffer without a ``shm``, in order.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import re
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from typing import Any

PROTOCOL = 1  # what a runner's GET / says ("bulk": 1) when it takes buffers beside the JSON
SHM_FOLDER = "/dev/shm"
FRAMES = "application/vnd.ywmagics.frames"  # the content type of a body with frames
PREFIX = "ywbulk-"
MAX_PID = 1 << 22  # Linux's largest (pid_max); a name's pids are checked against it
_NAME = re.compile(r"ywbulk-([0-9]{1,7})-([0-9]{1,7})-[0-9a-f]{16}", re.ASCII)
# No room: no space, no inode, no descriptor. The buffer then goes as a frame.
_NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.ENOMEM, errno.EDQUOT, errno.EMFILE, errno.ENFILE)
SWEEP_AGE = 10.0  # seconds: a younger segment may still be on its way to a receiver


class SegmentError(Exception):
    """A segment that cannot be created (the shared memory is full, its folder gone) or read.

    Not in :mod:`ywmagics.errors`' tree: this module runs alone in a runner, where ywmagics is
    not installed; the kernel side says it as a ``TransferError``."""


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return ""


_hosts: dict[int, dict[str, Any] | None] = {}


def host() -> dict[str, Any] | None:
    """Where this process runs, as far as shared memory goes: its machine (boot), the
    ``/dev/shm`` it sees, its pid namespace, user and pid; ``None`` without a usable
    ``/dev/shm``."""
    pid = os.getpid()  # a forked child is another process: it finds out for itself
    if pid not in _hosts:
        _hosts[pid] = _find_host()
    return _hosts[pid]


def folder() -> str | None:
    """This user's private folder of ``/dev/shm``, made if need be; ``None`` if it cannot be
    used (no ``/dev/shm``, or someone else's folder, or a link, in its place)."""
    path = os.path.join(SHM_FOLDER, f"ywmagics-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            return None  # someone else's, a link, or one others may enter: not used
        if stat.S_IMODE(info.st_mode) != 0o700:  # ours, made under a umask that left it unusable
            os.chmod(path, 0o700)  # a folder of ours in sticky /dev/shm: nobody swaps it
    except OSError:
        return None
    return path


def _find_host() -> dict[str, Any] | None:
    try:
        info = os.stat(SHM_FOLDER)
    except OSError:
        return None
    if folder() is None:
        return None
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    return {
        "boot": _read("/proc/sys/kernel/random/boot_id"),
        "shm": f"{info.st_dev}:{info.st_ino}",
        "pidns": namespace,
        "uid": os.getuid(),
        "pid": os.getpid(),
    }


def same_host(mine: Any, theirs: Any) -> bool:
    """Whether a segment one of them creates is one the other can map."""
    if not isinstance(mine, dict) or not isinstance(theirs, dict):
        return False
    keys = ("boot", "shm", "pidns", "uid")
    return all(mine.get(key) == theirs.get(key) for key in keys) and bool(mine.get("boot"))


def _path(name: str) -> str:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise SegmentError(f"{name!r} is not the name of a bulk segment")
    place = folder()
    if place is None:
        raise SegmentError(f"there is no private folder for segments in {SHM_FOLDER} here")
    return os.path.join(place, name)


def _no_room(size: int) -> SegmentError:
    return SegmentError(f"{SHM_FOLDER} has no room for {size} bytes")


def write_segment(pieces: Iterable[memoryview], size: int, receiver: int) -> str:
    """A new segment holding ``pieces`` (``size`` bytes in all), for process ``receiver``."""
    name = f"{PREFIX}{os.getpid()}-{receiver}-{os.urandom(8).hex()}"
    path = _path(name)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as error:
        if error.errno in _NO_ROOM:
            raise _no_room(size) from None
        raise
    try:
        # Written, not mapped and stored into: a full /dev/shm is then an error of write(), not
        # a SIGBUS in the middle of a copy; and nobody maps it before it is whole.
        written = 0
        for piece in pieces:
            offset = 0
            while offset < piece.nbytes:
                try:
                    offset += os.write(descriptor, piece[offset:])
                except OSError as error:
                    if error.errno not in _NO_ROOM:
                        raise
                    raise _no_room(size) from None
            written += piece.nbytes
        if written != size:
            raise SegmentError(f"wrote {written} bytes of {size}")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(descriptor)
    return name


def map_segment(name: str, size: int) -> mmap.mmap:
    """Map the segment ``name`` (it must be ``size`` bytes, and this user's alone) and remove
    its name: its memory now lives as long as the mapping does. Copy-on-write: what is written
    into it stays the writer's (a forked child does not change its parent's value)."""
    path = _path(name)
    try:
        descriptor = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise SegmentError(
            f"the shared-memory segment {name} is gone (its sender stopped, or it was "
            "cleaned up as left over)"
        ) from None
    except OSError as error:  # a link in its place (O_NOFOLLOW), a file of another user
        raise SegmentError(f"the segment {path} cannot be opened: {error.strerror}") from None
    try:
        info = os.fstat(descriptor)
        if info.st_uid != os.getuid() or info.st_mode & 0o077 or not stat.S_ISREG(info.st_mode):
            raise SegmentError(f"{path} is not a private segment of this user: refused")
        if info.st_size != size:
            raise SegmentError(f"the segment {name} holds {info.st_size} bytes, not {size}")
        mapped = mmap.mmap(descriptor, size, access=mmap.ACCESS_COPY)
    finally:
        os.close(descriptor)
        with contextlib.suppress(OSError):
            os.unlink(path)
    return mapped


def remove_segments(names: Iterable[str]) -> None:
    """Remove the segments left of ``names`` (those already mapped are gone: that is fine)."""
    for name in names:
        with contextlib.suppress(OSError, SegmentError):
            os.unlink(_path(name))


def _alive(pid: int) -> bool:
    # As ywmagics.discovery.pid_alive, which a runner cannot import: this module runs alone there.
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = _read(f"/proc/{pid}/stat").rpartition(")")[2].split()[:1]
    return state not in (["Z"], ["X"])  # a zombie reads nothing any more


def sweep(min_age: float = SWEEP_AGE) -> list[str]:
    """Remove this user's segments (at least ``min_age`` seconds old) whose creator or
    receiver has died; their names. Only the user's own folder is read: what others put in
    ``/dev/shm`` costs nothing here."""
    removed: list[str] = []
    place = folder()
    try:
        names = os.listdir(place) if place is not None else []
    except OSError:
        return removed
    now = time.time()
    for name in names:
        match = _NAME.fullmatch(name)
        if match is None:
            continue
        try:
            path = os.path.join(place, name)  # type: ignore[arg-type]
            info = os.lstat(path)
            if info.st_uid != os.getuid() or now - info.st_mtime < min_age:
                continue
            if not (_alive(int(match.group(1))) and _alive(int(match.group(2)))):
                os.unlink(path)
                removed.append(name)
        except Exception:  # one odd entry must not stop the sweep of the others
            continue
    return removed


def alive(pid: Any) -> bool:
    """Whether ``pid`` is a live process here (``False`` for what cannot be a pid)."""
    return valid_pid(pid) and _alive(pid)


def valid_pid(pid: Any) -> bool:
    """Whether ``pid`` can be a process's (a receiver's pid comes from the other side)."""
    return type(pid) is int and 0 < pid <= MAX_PID


# --- sending and receiving ------------------------------------------------------------------


def descriptors(sizes: Sequence[int]) -> list[dict[str, Any]]:
    """The descriptors of buffers of ``sizes``, before any is placed: each a frame."""
    return [{"size": size} for size in sizes]


def place(
    bulk: Any, receiver_host: Any, mine: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], list[int]]:
    """Put the buffers of the :class:`~ywmagics.wire.Bulk` ``bulk`` in shared memory when the
    receiver shares this machine (each that finds no room there goes as a frame instead): the
    descriptors, and the indexes of the buffers left to send as frames, in order."""
    listed = descriptors(bulk.sizes)
    frames = list(range(len(listed)))
    if not (mine and same_host(mine, receiver_host) and valid_pid(receiver_host.get("pid"))):
        return listed, frames
    frames = []
    try:
        for index, size in enumerate(bulk.sizes):
            try:
                name = write_segment(bulk.pieces(index), size, receiver_host["pid"])
            except (SegmentError, OSError):  # no room, or the folder gone or unusable since
                frames.append(index)
            else:
                listed[index]["shm"] = name
    except BaseException:
        remove_segments(segment_names(listed))
        raise
    return listed, frames


def segment_names(listed: Iterable[dict[str, Any]]) -> list[str]:
    """The segments among the descriptors ``listed`` (to remove what is left of them)."""
    return [item["shm"] for item in listed if isinstance(item, dict) and "shm" in item]


FRAME_PIECE = 256 * 1024  # bytes: HTTP clients copy what they are given to write, at least once


def frame_pieces(bulk: Any, frames: Iterable[int]) -> Iterator[memoryview]:
    """The bytes of the buffers ``frames`` of ``bulk``, in pieces an HTTP writer takes."""
    for index in frames:
        for piece in bulk.pieces(index):
            for start in range(0, piece.nbytes, FRAME_PIECE):
                yield piece[start : start + FRAME_PIECE]


class FramedBody:
    """A request body with frames: the JSON line, then the buffers; iterable again (a request
    sent once more reads it from the start)."""

    def __init__(self, head: Any, bulk: Any, frames: Sequence[int]) -> None:
        self.line = json.dumps(head).encode() + b"\n"
        self.bulk = bulk
        self.frames = list(frames)
        self.size = len(self.line) + sum(bulk.sizes[index] for index in self.frames)

    def __iter__(self) -> Iterator[bytes | memoryview]:
        yield self.line
        yield from frame_pieces(self.bulk, self.frames)


def check_descriptors(listed: Any) -> list[dict[str, Any]]:
    """The descriptors of a received body or result, checked: each a size, maybe a segment."""
    if not isinstance(listed, list):
        raise ValueError("'buffers' must be a list of {'size': N} objects")
    for item in listed:
        size = item.get("size") if isinstance(item, dict) else None
        if type(size) is not int or size < 0:
            raise ValueError(f"a buffer has no valid size: {item!r}")
        if "shm" in item:
            _path(item["shm"])  # raises for a name that is not a segment's
            if not size:
                raise ValueError(f"an empty buffer in shared memory: {item!r}")
    return listed


def receive(listed: Sequence[dict[str, Any]], readinto: Callable[[memoryview], int]) -> list[Any]:
    """The buffers ``listed`` describes: segments mapped, frames read with ``readinto`` (into
    buffers of their own, so that each goes back to the system when its value is dropped).
    On any failure the segments not yet mapped are removed."""
    buffers: list[Any] = []
    try:
        for item in listed:
            if "shm" in item:
                buffers.append(map_segment(item["shm"], item["size"]))
            else:
                buffers.append(read_frame(item["size"], readinto))
    except BaseException:
        remove_segments(segment_names(listed[len(buffers) :]))
        raise
    return buffers


def read_frame(size: int, readinto: Callable[[memoryview], int]) -> Any:
    """A frame of ``size`` bytes, read into memory of its own: an anonymous mapping, whose pages
    are given only as bytes arrive (a size claimed with nothing behind it costs nothing)."""
    if not size:
        return bytearray()
    frame = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)  # a forked child's writes stay its own
    view = memoryview(frame)
    done = 0
    while done < size:
        got = readinto(view[done:])
        if not got:
            raise EOFError(f"the frames ended after {done} bytes of {size}")
        done += got
    return frame
