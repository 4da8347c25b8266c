"""Finding the user's orchestrator, or starting one: waiting for it, or not.

``%load_ext`` must not wait for an orchestrator to start (a few hundred milliseconds): it calls
:func:`start_in_background`, which spawns the orchestrator at once and leaves the wait for its
first answer to a thread; the first call that needs the orchestrator (:func:`connect`) waits
for that thread, and raises what the start failed with. Nothing here loads an HTTP library
(:func:`ywmagics.discovery.answers` is a raw probe), so the spawn comes before httpx is loaded.

One process at a time starts an orchestrator: the one that holds the start lock, from the spawn
until the orchestrator answers or fails; others wait for the lock, then find it running.
"""

from __future__ import annotations

import fcntl
import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ywmagics import paths
from ywmagics.discovery import Connection, answers, pid_alive, read_discovery
from ywmagics.errors import OrchestratorError
from ywmagics.protocol import PROTOCOL_VERSION

START_TIMEOUT = 30.0
# How often a start looks for the discovery file: a read of a small file, cheap enough to do
# often; once it is there, one probe waits for the first answer itself.
DISCOVERY_POLL = 0.005
LOCK_POLL = 0.02


def find_orchestrator() -> Connection | None:
    """The running orchestrator of this user, or ``None``."""
    connection = read_discovery()
    return connection if connection is not None and answers(connection) else None


def same_protocol(connection: Connection) -> Connection:
    """``connection``, if its orchestrator speaks this package's protocol; else a clear error:
    values and requests of another protocol would be misread, never refused."""
    if connection.protocol == PROTOCOL_VERSION:
        return connection
    from ywmagics import __version__

    theirs = connection.version or "an older version"
    raise OrchestratorError(
        f"the orchestrator that runs (ywmagics {theirs}, protocol {connection.protocol}, pid "
        f"{connection.pid}) does not speak this ywmagics's protocol ({__version__}, protocol "
        f"{PROTOCOL_VERSION}): it was started from another environment",
        hint="an older one is replaced by itself once nothing uses it; else stop it when "
        "nothing of yours runs on it ('ywmagics shutdown', from either environment), and the "
        "next kernel starts one of its own version",
    )


def connect(*, start: bool = True, timeout: float = START_TIMEOUT) -> Connection:
    """The running orchestrator; when none runs (and ``start``), one is started, as a process
    that outlives this one, and waited for until it answers (at most ``timeout``).

    A start begun by :func:`start_in_background` is waited for the same way, and what it failed
    with is raised here: its caller returned long ago."""
    started = _background_result(timeout)
    if started is not None and read_discovery() == started:  # and it still runs
        return started
    found = find_orchestrator()
    if found is not None and (not start or not outdated(found)):
        return same_protocol(found)
    if not start:
        raise OrchestratorError(
            "no orchestrator is running", hint="start one with 'ywmagics serve'"
        )
    return _find_or_start(timeout)


def start_in_background(timeout: float = START_TIMEOUT) -> None:
    """Start the orchestrator unless one runs, without waiting for it; the next :func:`connect`
    of this process waits for it. Raises nothing: :func:`connect` raises what went wrong. A start
    under way is not repeated."""
    global _background
    with _background_lock:
        if _background is None:
            _background = BackgroundStart(timeout)


class BackgroundStart:
    """A start of the orchestrator that its caller does not wait for.

    What can be done at once is done in the caller's thread: the spawn, when this process takes
    the start lock without waiting (a thread of its own would compete with the caller's next
    work for the interpreter, and spawn later). The rest waits in a thread: for the first
    answer, or for the process that holds the lock. What it failed with is kept for
    :meth:`result`: an error in a thread is otherwise printed to nobody, or lost."""

    def __init__(self, timeout: float) -> None:
        self.connection: Connection | None = None
        self.error: Exception | None = None
        self._done = threading.Event()
        try:
            rest = _begin_start(timeout)
        except Exception as error:  # a runtime folder that can't be used, say: said later
            self.error = error
            self._done.set()
            return
        threading.Thread(target=self._run, args=(rest,), name="ywmagics-start", daemon=True).start()

    def _run(self, rest: Callable[[], Connection]) -> None:
        try:
            self.connection = rest()
        except Exception as error:  # given to whoever needs the orchestrator next
            self.error = error
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float) -> Connection:
        """The orchestrator, once found or started; what the start raised, if it failed."""
        self._done.wait(timeout)
        if self.error is not None:
            raise self.error
        if self.connection is None:
            raise OrchestratorError(
                f"the orchestrator did not answer within {timeout:g} s of its start",
                hint=f"its log is {paths.runtime_dir() / 'orchestrator.log'}",
            )
        return self.connection


_background_lock = threading.Lock()
_background: BackgroundStart | None = None


def _forget_background() -> None:
    # A forked child has no start thread (and may hold a copy of a taken lock): it finds or
    # starts the orchestrator itself, under the start lock as every process does.
    global _background, _background_lock
    _background, _background_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_background)


def _background_result(timeout: float) -> Connection | None:
    """What the background start gives, waited for; ``None`` if there is none. Once it has
    given its result (or error) it is forgotten: a failed start is tried again next time."""
    global _background
    with _background_lock:
        pending = _background
    if pending is None:
        return None
    try:
        return pending.result(timeout)
    except Exception:
        # Another process may have started one since (another kernel): no need to fail then.
        found = find_orchestrator()
        if found is None:
            raise
        return found
    finally:
        with _background_lock:
            if _background is pending and pending.done():
                _background = None


def _begin_start(timeout: float) -> Callable[[], Connection]:
    """Spawn the orchestrator now if none runs and no other process is starting one; return
    what is left to do, which waits: for its first answer, or for the other process's start."""
    lock = StartLock(paths.runtime_dir() / "start.lock")
    if not lock.acquire(timeout=0):
        return functools.partial(_find_or_start, timeout)
    try:
        running = find_orchestrator()
        spawned = Spawned() if running is None else None
    except BaseException:
        lock.release()
        raise
    if running is not None and outdated(running):  # replaced, or kept and said, as it waits
        lock.release()
        return functools.partial(_find_or_start, timeout)

    def rest() -> Connection:
        try:
            if spawned is not None:
                return spawned.first_answer(timeout)
            assert running is not None
            return running
        finally:
            lock.release()

    return rest


def _find_or_start(timeout: float) -> Connection:
    lock = StartLock(paths.runtime_dir() / "start.lock")
    if not lock.acquire(timeout):
        raise OrchestratorError(
            f"another process has been starting the orchestrator for {timeout:g} s",
            hint=f"see {paths.runtime_dir() / 'orchestrator.log'}; the lock is {lock.path}",
        )
    try:
        found = find_orchestrator()
        if found is not None and outdated(found):
            if _idle(found) and _replace(found):
                found = None
            elif found.protocol == PROTOCOL_VERSION:
                _say_kept(found)
        return same_protocol(found or Spawned().first_answer(timeout))
    finally:
        lock.release()


def outdated(connection: Connection) -> bool:
    """Whether that orchestrator is of an older ywmagics than this one: an older protocol, or
    the same protocol and an older version (an environment upgraded while it ran). One of an
    unreadable version is not taken for older: it is not stopped on a guess."""
    if connection.protocol != PROTOCOL_VERSION:
        return connection.protocol < PROTOCOL_VERSION
    from ywmagics import __version__

    if connection.version == __version__:
        return False
    from packaging.version import InvalidVersion, Version

    try:
        return Version(connection.version) < Version(__version__)
    except InvalidVersion:
        return False


_said_kept: set[int] = set()


def _say_kept(older: Connection) -> None:
    """Say once per orchestrator that an older one of the same protocol is used: it speaks with
    this version, but its bundled backends and fixes are its own."""
    if older.pid in _said_kept:
        return
    _said_kept.add(older.pid)
    from ywmagics import __version__

    print(
        f"ywmagics: the orchestrator that runs is of ywmagics {older.version} (pid {older.pid}), "
        f"older than this environment's {__version__}; it speaks the same protocol "
        f"({PROTOCOL_VERSION}) and is used. It is replaced by one of {__version__} once "
        "nothing runs on it (or stop it with 'ywmagics shutdown')",
        file=sys.stderr,
        flush=True,
    )


def _idle(connection: Connection) -> bool:
    """Whether nothing uses that orchestrator: no instance runs, no kernel is attached, no
    install is under way (one that publishes no count of those may have one: not idle).
    The orchestrator decides again as it is stopped (``if_idle``); this look first is for one
    of before ``if_idle``, which would stop whatever it runs."""
    import json
    import urllib.request

    request = urllib.request.Request(f"{connection.url}/status", headers=connection.headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status = json.loads(answer.read())
    except (OSError, ValueError):
        return False
    return bool(
        status.get("instances") == 0
        and status.get("kernels") == 0
        and status.get("installing") == 0
    )


def _replace(older: Connection) -> bool:
    """Stop an older orchestrator that nothing uses, so that one of this version starts in its
    place (the start lock is held: no kernel starts another meanwhile); said on stderr, which a
    notebook shows. ``False`` if it turned out to be in use: it decides, at once, so that a
    kernel that has just found it is not left without it."""
    import json
    import urllib.error
    import urllib.request

    from ywmagics import __version__

    request = urllib.request.Request(
        f"{older.url}/shutdown",
        method="POST",
        headers={**older.headers, "Content-Type": "application/json"},
        data=json.dumps({"if_idle": True}).encode(),
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as error:
        if error.code == 409:  # in use after all
            return False
        raise OrchestratorError(
            f"cannot stop the older orchestrator (ywmagics {older.version or '?'}, pid "
            f"{older.pid}): it answered {error.code}",
            hint="stop it with 'ywmagics shutdown', then try again",
        ) from None
    except OSError as error:
        raise OrchestratorError(
            f"cannot stop the older orchestrator (ywmagics {older.version or '?'}, pid "
            f"{older.pid}): {error}",
            hint="stop it with 'ywmagics shutdown', then try again",
        ) from None
    deadline = time.monotonic() + 15
    while pid_alive(older.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(older.pid):
        raise OrchestratorError(
            f"the older orchestrator (pid {older.pid}) did not stop within 15 s",
            hint=f"end it ('kill {older.pid}'), then try again",
        )
    print(
        f"ywmagics: the orchestrator that ran was of ywmagics {older.version or 'an older version'}"
        f" (protocol {older.protocol}) and nothing used it: it was stopped, and one of "
        f"ywmagics {__version__} (protocol {PROTOCOL_VERSION}) starts in its place",
        file=sys.stderr,
        flush=True,
    )
    return True


class StartLock:
    """The lock of the process that starts the orchestrator: an ``flock`` of ``path`` (the
    lock that filelock takes too). Held by an open file and released by closing it, which any
    thread may do: the spawn and the wait for the answer may happen in two."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None

    def acquire(self, timeout: float) -> bool:
        """Whether it was taken within ``timeout`` seconds (0: at once or not at all)."""
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.fchmod(descriptor, 0o600)  # private whatever the caller's umask
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(descriptor)
                    return False
                time.sleep(LOCK_POLL)
            else:
                self._descriptor = descriptor
                return True

    def release(self) -> None:
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            os.close(descriptor)


def _orchestrator_environment() -> dict[str, str]:
    # A kernel forces colours for its own output (FORCE_COLOR, CLICOLOR_FORCE): the orchestrator,
    # its build tools and its backends write logs and events, which want plain text.
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    env.update(PYTHONUNBUFFERED="1", NO_COLOR="1")
    # It runs in another folder (see Spawned): folders named relative to ours, made absolute.
    if env.get("YW_HOME"):
        env["YW_HOME"] = os.path.abspath(os.path.expanduser(env["YW_HOME"]))
    for variable in ("YW_BACKENDS_PATH", "PYTHONPATH"):
        if env.get(variable):
            env[variable] = os.pathsep.join(
                os.path.abspath(os.path.expanduser(entry)) if entry else entry
                for entry in env[variable].split(os.pathsep)
            )
    # This very ywmagics, wherever it was imported from (a checkout in the kernel's folder, an
    # editable install): not another one the interpreter would find first.
    own = _package_parent()
    if own is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (own, env.get("PYTHONPATH"))))
    return env


def _package_parent() -> str | None:
    """The folder this ywmagics was imported from, unless it is a site-packages folder (which
    the orchestrator's interpreter, the same, searches anyway, in its usual order)."""
    import site

    parent = str(Path(os.path.abspath(__file__)).parents[2])  # .../ywmagics/client/_connect.py
    usual = {*site.getsitepackages(), site.getusersitepackages()}
    return None if parent in {os.path.abspath(p) for p in usual} else parent


class Spawned:
    """An orchestrator process this one has just started (``python -m ywmagics serve``), its
    output going to ``orchestrator.log`` in the runtime folder."""

    def __init__(self) -> None:
        self.log_path = paths.runtime_dir() / "orchestrator.log"
        # Private whatever the caller's umask (it holds what backends print); kept so if it
        # exists.
        descriptor = os.open(
            self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600
        )
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ywmagics", "serve"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # shared by all kernels: it outlives the one starting it
                env=_orchestrator_environment(),
                # Not the kernel's folder: 'python -m' imports from it first, and a ywmagics
                # there (a checkout) would run instead of this install's; nor would it be
                # held open for the orchestrator's life.
                cwd=paths.runtime_dir(),
            )
        # Reap it when it ends: a process that started the orchestrator (a kernel) would
        # otherwise keep a zombie, which looks alive to 'ywmagics shutdown' and the discovery
        # check.
        threading.Thread(target=self.process.wait, name="ywmagics-reaper", daemon=True).start()

    def first_answer(self, timeout: float) -> Connection:
        """Its connection, once it answers; if it ends or does not answer within ``timeout``
        (then it is ended), an error with the end of its log."""
        process = self.process
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            connection = read_discovery()
            # The file is written once its sockets listen: from then on, the probe itself
            # waits for the first answer.
            if (
                connection is not None
                and connection.pid == process.pid
                and answers(connection, timeout=max(0.1, deadline - time.monotonic()))
            ):
                return self._of_this_version(connection)
            if process.poll() is not None:
                break
            time.sleep(DISCOVERY_POLL)
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        if process.poll() is None and pid_alive(process.pid):
            process.kill()
        raise OrchestratorError(
            "the orchestrator did not start", hint=f"its log is {self.log_path}", log_tail=tail
        )

    def _of_this_version(self, connection: Connection) -> Connection:
        """``connection``, if the orchestrator started is of this ywmagics; else it is ended,
        and an error says which one ran: it would be taken for older, or newer, forever."""
        from ywmagics import __version__

        if (connection.version, connection.protocol) == (__version__, PROTOCOL_VERSION):
            return connection
        self.process.terminate()
        raise OrchestratorError(
            f"the orchestrator started from this environment ({sys.executable} -m ywmagics "
            f"serve) is ywmagics {connection.version or '?'} (protocol {connection.protocol}), "
            f"not this one's {__version__} (protocol {PROTOCOL_VERSION}), from {__file__}",
            hint="another ywmagics is first on that interpreter's path (PYTHONPATH, a .pth "
            "file): remove it, or install this one there",
        )
