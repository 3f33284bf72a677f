"""Decoding in a worker process, for C decoders that can crash the interpreter, loop or
exhaust memory on crafted streams whose headers ctpress cannot fully validate.

SPERR aborts the process (an uncaught C++ exception) on some damaged streams and OpenJPH
(HTJ2K) segfaults on some damaged code blocks; SZ3 trusts size fields deep inside its
stream; zfp reads past the end of a truncated stream; libjxl allocates whatever extra
channels and frames a header declares.  Their decode functions run here in worker
processes, forked on first use (so they have every module the parent has) and kept in
a small pool for later chunks: each thread that decodes takes an idle worker (or forks
one), so chunks decoded in parallel threads decode in parallel processes.  A fork per
chunk would cost about 30 ms with PyTorch loaded, a request to a warm worker costs
about 1-13 ms per 1 MiB chunk (the copies of stream and result).  In the worker a
request may allocate :data:`MEMORY_FACTOR` times its declared output plus
:data:`MEMORY_SLACK` (``RLIMIT_DATA``) and must finish within :func:`time_limit`; a
worker that dies or overruns is ended (the next request forks a fresh one), and the
request fails with :class:`~ctpress.errors.CorruptFileError`.  Where ``fork`` does not exist
(Windows), the function runs in this process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ..errors import CorruptFileError, CtpressError
from .settings import declared_bytes

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

#: A decode request may allocate this many times its declared output in the worker ...
MEMORY_FACTOR = 8
#: ... plus this (the decoder's own tables, thread stacks, the stream).
MEMORY_SLACK = 512 << 20
#: Seconds a request may take: this ...
_TIME_BASE_S = 30.0
#: ... plus this per MiB of declared output (decoders run at 50-500 MiB/s).
_TIME_PER_MIB_S = 1.0

DecodeFunction = Callable[[bytes], np.ndarray]
#: Per thread: whether :func:`own_streams` is active.
_OWN_STREAMS = threading.local()


def time_limit(nbytes: int) -> float:
    """Seconds a decode of ``nbytes`` of declared output may take in the worker."""
    return _TIME_BASE_S + _TIME_PER_MIB_S * nbytes / (1 << 20)


@contextlib.contextmanager
def own_streams() -> Iterator[None]:
    """Decode in this process, in this thread, inside the block: for streams this process
    has just encoded (an encoder measuring its own probes), which cannot be crafted."""
    previous = getattr(_OWN_STREAMS, "active", False)
    _OWN_STREAMS.active = True
    try:
        yield
    finally:
        _OWN_STREAMS.active = previous


def decode_isolated(
    decode: DecodeFunction, stream: bytes, shape: tuple[int, ...], dtype: str, what: str
) -> np.ndarray:
    """``decode(stream)`` run in the worker process, checked to be an array of ``shape``
    and ``dtype`` (the chunk header's declaration).

    ``decode`` must be picklable (a module-level function or a ``functools.partial`` of
    one).  CorruptFileError when it raises, crashes, overruns its time or memory, or
    returns anything else than declared.
    """
    expected = np.dtype(dtype)
    nbytes = declared_bytes(shape, expected)
    if not _can_fork() or getattr(_OWN_STREAMS, "active", False):
        return _checked(decode(stream), shape, expected, what)
    worker = _take_worker()
    try:
        outcome = worker.request(decode, stream, nbytes)
    except _WorkerFailed as exc:
        worker.end()
        raise CorruptFileError(f"{what} stream could not be decoded: {exc}") from None
    except BaseException:  # e.g. KeyboardInterrupt mid-request: the pipe is out of step
        worker.end()
        raise
    _return_worker(worker)
    status, payload = outcome
    if status != "ok":
        raise CorruptFileError(f"{what} stream could not be decoded: {payload}")
    result_dtype, result_shape, data = payload
    if np.dtype(result_dtype) != expected or math.prod(result_shape) != math.prod(shape):
        raise CorruptFileError(
            f"{what} stream decoded to {tuple(result_shape)} {np.dtype(result_dtype)}, but its "
            f"chunk header declares {tuple(shape)} {expected}"
        )
    return np.frombuffer(data, dtype=expected).reshape(shape).copy()  # writable, like a decode


def _checked(array: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != dtype or array.size != math.prod(shape):
        raise CorruptFileError(
            f"{what} stream decoded to {array.shape} {array.dtype}, but its chunk header "
            f"declares {tuple(shape)} {dtype}"
        )
    return array.reshape(shape)


def _can_fork() -> bool:
    return resource is not None and hasattr(os, "fork")


class _WorkerFailed(Exception):
    """The worker died, overran its time, or its answer was not what was asked for."""


#: Idle workers kept for later requests (more are ended when they come back).
MAX_IDLE_WORKERS = os.cpu_count() or 1
#: Guards the pool, and makes a fork and the registration of its socket one step, so
#: that every child can close the sockets of all the other workers.
_POOL_LOCK = threading.Lock()
_IDLE: list[_Worker] = []
#: Every live worker of this process (the children close their sockets).
_LIVE: set[_Worker] = set()


def _take_worker() -> _Worker:
    """An idle live worker of this process, or a freshly forked one."""
    with _POOL_LOCK:
        while _IDLE:
            worker = _IDLE.pop()
            if worker.owner == os.getpid() and worker.alive():
                return worker
            worker.forget()
        return _Worker()


def _return_worker(worker: _Worker) -> None:
    """Put a worker that answered back in the pool (or end it if the pool is full)."""
    with _POOL_LOCK:
        if worker.owner == os.getpid() and len(_IDLE) < MAX_IDLE_WORKERS:
            _IDLE.append(worker)
            return
    worker.end()


class _Worker:
    """One worker process and the parent's end of its socket.

    Forked with ``os.fork`` (not ``multiprocessing``, whose daemonic pool workers may not
    have children), so it has every module and decode function the parent has; created
    with ``_POOL_LOCK`` held.
    """

    conn: Connection

    def __init__(self) -> None:
        parent_end, worker_end = socket.socketpair()
        self.owner = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:  # the worker: never returns into the caller
            try:
                parent_end.close()
                for other in _LIVE:  # else a sibling never sees its parent's end close
                    other.conn.close()
                _serve(Connection(worker_end.detach()))
            finally:
                os._exit(0)
        worker_end.close()
        self.conn = Connection(parent_end.detach())
        self.status: int | None = None
        _LIVE.add(self)

    def end(self) -> None:
        """End the worker (if it is this process's) and forget it."""
        if self.owner == os.getpid():
            self.conn.close()
            if self.alive():
                os.kill(self.pid, signal.SIGKILL)
            self.wait(block=True)
        self.forget()

    def forget(self) -> None:
        with contextlib.suppress(KeyError):
            _LIVE.remove(self)

    def alive(self) -> bool:
        return self.wait(block=False) is None

    def wait(self, block: bool) -> int | None:
        """The worker's exit status (``waitpid``), None while it runs."""
        if self.status is None:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if pid:
                self.status = status
        return self.status

    def request(self, decode: DecodeFunction, stream: bytes, nbytes: int) -> tuple[str, Any]:
        """Send one request; ``("ok", (dtype, shape, bytes))`` or ``("error", message)``."""
        limit = time_limit(nbytes)
        try:
            self.conn.send((decode, nbytes, MEMORY_FACTOR * nbytes + MEMORY_SLACK + len(stream)))
            self.conn.send_bytes(stream)
            if not self.conn.poll(limit):
                raise _WorkerFailed(f"the decoder did not finish within {limit:.0f} s")
            status, info = self.conn.recv()
            if status != "ok":
                return status, info
            if not self.conn.poll(limit):
                raise _WorkerFailed("the decoder process stopped answering")
            data = self.conn.recv_bytes(maxlength=max(nbytes, 1))
        except (EOFError, OSError):
            raise _WorkerFailed(self._death()) from None
        return status, (*info, data)

    def _death(self) -> str:
        self.conn.close()
        status = self.wait(block=True)
        code = 0 if status is None else os.waitstatus_to_exitcode(status)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the decoder crashed ({name})"
        return "the decoder process ended unexpectedly"


def _serve(conn: Connection) -> None:
    """Worker loop: decode requests until the parent's end of the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # a crash must end the worker plainly, not run the parent's handlers (faulthandler's
    # traceback, a fuzzer's crash report) in it
    faulthandler.disable()
    for crash in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL):
        signal.signal(crash, signal.SIG_DFL)
    assert resource is not None
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    while True:
        try:
            decode, nbytes, memory = conn.recv()
            stream = conn.recv_bytes()
        except EOFError:
            return
        used = _data_bytes()
        if used is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (_capped(used + memory, hard), hard))
        try:
            answer, array = _run(decode, stream, nbytes)
        finally:
            resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
        conn.send(answer)
        if array is not None:
            conn.send_bytes(array.reshape(-1).view(np.uint8).data)
        del array, stream


def _run(
    decode: DecodeFunction, stream: bytes, nbytes: int
) -> tuple[tuple[str, Any], np.ndarray | None]:
    """(answer, array to send) of one request in the worker."""
    try:
        array = np.ascontiguousarray(decode(stream))
    except MemoryError:
        return ("error", "the decoder needs more memory than allowed"), None
    except CtpressError as exc:
        return ("error", str(exc)), None
    except Exception as exc:  # a damaged stream fails inside the C library
        return ("error", f"{type(exc).__name__}: {exc}"), None
    if array.nbytes != nbytes:
        return ("error", f"decoded {array.nbytes} bytes, not {nbytes}"), None
    return ("ok", (array.dtype.str, array.shape)), array


def _capped(value: int, hard: int) -> int:
    assert resource is not None
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _data_bytes() -> int | None:
    """This process's data segment size (``VmData``: what ``RLIMIT_DATA`` limits), None
    where the system does not say (then no limit is set)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
