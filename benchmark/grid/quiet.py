"""Quiet timing: while one worker times a latency pair, every other cell worker of this machine stands still.

Workers (the processes that compute cells, of any invocation and executor) register their pid in a
folder of this machine's temp directory. :func:`quiet` takes a machine-wide lock, so two timings never
overlap, and pauses every other registered worker with ``SIGSTOP`` until the timing ends (``SIGCONT``),
so a latency pair never shares the cores with another cell's arithmetic. A paused worker's phase
times include the pause. Pausing needs Linux's ``/proc`` (a pid is paused only while the process that
registered it still runs); elsewhere the lock alone serialises timings.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no lock, no pausing
    fcntl = None

STOP_WAIT_SECONDS = 2.0  # longest wait for a paused worker to stop before timing anyway


def registry_dir() -> Path:
    """Where this machine's workers register (``$DIFFPRUNE_BENCH_QUIET_DIR``, else a folder per user in the
    temp directory)."""
    default = Path(tempfile.gettempdir()) / f"diffprune-bench-{getattr(os, 'getuid', lambda: 0)()}"
    return Path(os.environ.get("DIFFPRUNE_BENCH_QUIET_DIR") or default)


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused pid apart); None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


@contextmanager
def worker() -> Iterator[None]:
    """Register this process as a cell worker for the duration of the block."""
    folder = registry_dir()
    folder.mkdir(parents=True, exist_ok=True)
    entry, written = folder / f"{os.getpid()}.worker", folder / f".{os.getpid()}.tmp"
    written.write_text(_start_time(os.getpid()) or "")
    written.replace(entry)  # readers never see a half-written entry
    try:
        yield
    finally:
        entry.unlink(missing_ok=True)


def _other_workers() -> list[int]:
    """Registered workers of this machine that still run, other than this process; stale entries are removed."""
    pids = []
    for entry in registry_dir().glob("*.worker"):
        if not entry.stem.isdigit() or int(entry.stem) == os.getpid():
            continue
        started = _start_time(int(entry.stem))
        if started is None or started != _read(entry):
            entry.unlink(missing_ok=True)  # its process is gone, or the pid now names another process
            continue
        pids.append(int(entry.stem))
    return pids


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


@contextmanager
def quiet() -> Iterator[None]:
    """Hold the machine-wide timing lock and pause the other registered workers for the duration of the block."""
    folder = registry_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "timing.lock", "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        paused = _pause(_other_workers()) if sys.platform.startswith("linux") else []
        try:
            yield
        finally:
            for pid in paused:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


def _pause(pids: list[int]) -> list[int]:
    """SIGSTOP each pid and wait (briefly) until they have all stopped; the pids paused."""
    paused = []
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGSTOP)
            paused.append(pid)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while time.monotonic() < deadline and any(_state(pid) not in ("T", "t", None) for pid in paused):
        time.sleep(0.001)
    return paused
