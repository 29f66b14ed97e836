"""The store: one JSON file per (backbone, method, seed) cell, written atomically and keyed by a config hash.

A run directory holds ``cells/{backbone}__{method}__seed{seed}.json`` and the files a cell produced
beside it (``samples/{stem}.png``, ``models/{stem}.pt``); ``features/`` keeps the FID features of each
seed's dense samples, which every cell of the seed compares with, for later invocations, and
``continuations/`` the training state where a budget of a cell whose budgets share work ended. A cell whose
file says ``"status": "ok"`` and whose ``config_hash`` matches the current configuration is complete
and is skipped on resume; failed, stale and unreadable cells are recomputed.

Cell schema, version 3 (``"schema": 3``)::

    schema       3
    backbone     backbone name
    method       method name or chain, each part with its operating point where set, e.g. "dipgo@0.3",
                 "sparsedm+dipgo"
    status       "ok" | "failed"
    error        null, or "ExceptionType: message" for a failed cell
    traceback    null, or the formatted traceback of a failed cell
    config       everything that changes a number: preset (dict), options (dict), seed, device,
                 method_versions ({method: version}), backbone_version, dense_checkpoint (sha256 of
                 its content), fid (Inception weights' identity, bootstrap resamples)
    config_hash  config_hash(config)
    versions     python, torch, diffusers, pytorch-fid, torch-pruning, benchmark
    device       device name, e.g. "cpu" or "NVIDIA H100 80GB HBM3"
    seed         the cell's seed (data order, noise, sampling, FID bootstrap)
    steps        the fine-tuning budget where a ``--train-steps`` list gave one other than the preset's,
                 else null (the preset's budget, or a method that trains no weights)
    threads      torch threads of the process that computed the cell (latency pairs ran with them)
    timings      seconds per phase: load (the backbone's dense checkpoint, shared by its cells),
                 prune, metrics, fid, total (their sum); a phase includes any time its worker stood
                 paused while another worker timed a latency pair
    metrics      fid and fid_to_dense with fid_sd/fid_low/fid_high and fid_to_dense_sd/_low/_high
                 (bootstrap sd and 95% interval over the generated samples), fid_samples, params_m,
                 macs_g, sparse_macs_g (params and MACs counted on the pruned model),
                 latency_mode (how the pair below was timed), dense_latency_ms and latency_ms (the
                 dense model and the row's, timed that way; text such as "n/a (needs CUDA sm80+)"
                 where they could not be), speedup (their ratio, or that text), sparsity (share of
                 the dense parameters removed or exactly zero, measured on the model),
                 masked_sparsity (N:M rows: zeros in the masked layers), loss_after_pruning (chains
                 that train weights: the noise-prediction MSE on a fixed batch of the data set when
                 fine-tuning began, :func:`benchmark.training.probe_batch`), train_steps, sample_steps,
                 sampler; a failed cell has the ones measured before it failed
    info         what each method of the chain reported ({method: Pruned.info})
    latency_report  null, or the 2:4 kernel timing report (per layer) where one was measured
    pruned_model null, or "models/{stem}.pt" where the method changed layer shapes (reload it with
                 benchmark.structural.load_pruned)
    started      ISO 8601 time the cell started
    finished     ISO 8601 time the cell was written
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tempfile
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

try:
    import fcntl
except ImportError:  # not on Windows: take-overs there are not locked
    fcntl = None

from benchmark import __version__
from benchmark.errors import BenchmarkError

SCHEMA_VERSION = 3
REFERENCE_METHOD = "dense"  # every backbone's reference row
FINETUNE_CONTROL = "dense-ft"  # the reference row of methods that train weights
_VERSIONED_DISTRIBUTIONS = ("torch", "diffusers", "transformers", "pytorch-fid", "torch-pruning")


def config_hash(config: dict[str, Any]) -> str:
    """First 16 hex digits of the sha256 of ``config`` as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def environment_versions() -> dict[str, str]:
    """Versions of Python and of every library that can change a cell's numbers."""
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    versions["benchmark"] = __version__
    return versions


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cell_stem(backbone: str, method: str, seed: int, steps: int | None = None) -> str:
    """``{backbone}__{method}__seed{seed}``, with ``__steps{steps}`` for a fine-tuning budget other than the
    preset's; every character outside ``[A-Za-z0-9.+@-]`` percent-encoded.

    ``_`` is encoded too, so the ``__`` separator is unambiguous; ``uvit__sparsedm+dipgo@0.3__seed0`` and
    ``ddpm__asp__seed0__steps1000`` stay readable.
    """
    budget = "" if steps is None else f"__steps{int(steps)}"
    return f"{_safe(backbone)}__{_safe(method)}__seed{int(seed)}{budget}"


def _safe(name: str) -> str:
    return "".join(
        c if c.isascii() and (c.isalnum() or c in "+-.@") else "".join(f"%{b:02X}" for b in c.encode("utf-8"))
        for c in name
    )


LEASE_SECONDS = 600.0  # a claim not renewed for this long is taken over, from any host
RENEW_SECONDS = 60.0  # how often a driver renews the claims of the cells it is computing


def _umask() -> int:
    """The process's umask (read by setting it and putting it back; no file is created in between)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _expired(path: Path, holder: str) -> bool:
    """True when a claim's holder is gone: a process of this host that no longer exists, or a lease (the claim
    file's modification time, renewed while its cell computes) older than :data:`LEASE_SECONDS`."""
    host, _, pid = holder.rpartition(" ")
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > LEASE_SECONDS:
        return True
    if host != platform.node() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class CellStore:
    """The ``cells/`` folder of a run directory."""

    def __init__(self, out_dir: str | os.PathLike[str]):
        self.out_dir = Path(out_dir)
        self.cells_dir = self.out_dir / "cells"
        self._held: set[Path] = set()  # claims this process holds

    def path(self, backbone: str, method: str, seed: int, steps: int | None = None) -> Path:
        return self.cells_dir / f"{cell_stem(backbone, method, seed, steps)}.json"

    def ensure_writable(self) -> None:
        """Create the folder and prove a file can be written there; raise :class:`BenchmarkError` if not."""
        try:
            self.cells_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.cells_dir):
                pass
        except OSError as e:
            raise self._unwritable(e) from None

    def _unwritable(self, error: OSError) -> BenchmarkError:
        return BenchmarkError(f"cannot write results to {self.out_dir}: {error.strerror or error}")

    def write(self, cell: dict[str, Any], artefacts: dict[str, bytes] | None = None) -> Path:
        """Write a cell's ``artefacts`` (run-relative path -> bytes), then the cell itself, each atomically:
        readers see either the old file or the complete new one, and a cell file never names a missing one."""
        for relative, data in (artefacts or {}).items():
            self._replace(self.out_dir / relative, data)
        text = json.dumps(cell, indent=2, ensure_ascii=False) + "\n"
        return self._replace(self.path(cell["backbone"], cell["method"], cell["seed"], cell.get("steps")),
                             text.encode("utf-8"))

    def _replace(self, path: Path, data: bytes) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        except OSError as e:
            raise self._unwritable(e) from None
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would keep the results from colleagues
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def read(self, backbone: str, method: str, seed: int, steps: int | None = None) -> dict[str, Any] | None:
        """The stored cell, or None when there is none or its file is unreadable (then it warns)."""
        return self._load(self.path(backbone, method, seed, steps))

    def is_complete(self, backbone: str, method: str, seed: int, config_hash: str, steps: int | None = None) -> bool:
        """True only for an ``ok`` cell of this schema computed under the same configuration."""
        cell = self.read(backbone, method, seed, steps)
        return (
            cell is not None
            and cell.get("schema") == SCHEMA_VERSION
            and cell.get("status") == "ok"
            and cell.get("config_hash") == config_hash
        )

    def claim(self, backbone: str, method: str, seed: int, steps: int | None = None) -> str | None:
        """Claim a cell for this process as it starts; None when claimed, else who holds it (``host pid``).

        A claim is a ``cells/.{stem}.claim`` file created exclusively, so of two invocations on one run
        directory (or on one shared filesystem from two hosts) only one computes a cell. Its holder
        renews it (:meth:`renew`) while the cell computes; a claim whose process is gone (same host, no
        such pid) or whose lease ran out (not renewed for :data:`LEASE_SECONDS`, e.g. its host died) is
        taken over. Take-overs hold an ``flock`` on ``cells/.claims.lock``, so two invocations cannot
        both take over one claim (on filesystems where ``flock`` is not shared between hosts, two hosts
        taking over the same dead claim in the same instant could both compute it).
        """
        path = self._claim_path(backbone, method, seed, steps)
        for _ in range(2):
            try:
                self._publish_claim(path)
            except FileExistsError:
                with self._claims_lock():
                    holder = _read_text(path)
                    if holder is None or not _expired(path, holder):
                        return holder or "another process"
                    path.unlink(missing_ok=True)  # its holder is gone: take the claim over
                continue
            self._held.add(path)
            return None
        return "another process"

    @staticmethod
    def _publish_claim(path: Path) -> None:
        """Create the claim file ``path`` naming this process, or raise FileExistsError.

        The holder is written to a private file first and hard-linked into place (``link`` fails when the
        claim exists), so a claim file names its holder from the instant it exists: a process killed while
        claiming leaves no claim, not an empty one that no liveness check could attribute. Filesystems
        without hard links fall back to an exclusive create followed by the write.
        """
        mine = f"{platform.node()} {os.getpid()}"
        private = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        private.write_text(mine)
        try:
            os.link(private, path)
        except FileExistsError:
            raise
        except OSError:  # no hard links here
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            with os.fdopen(fd, "w") as f:
                f.write(mine)
        finally:
            private.unlink(missing_ok=True)

    def renew(self) -> None:
        """Extend the lease of every claim this store holds (its cells are still computing)."""
        for path in list(self._held):
            try:
                os.utime(path)
            except FileNotFoundError:
                self._held.discard(path)

    def release_all(self) -> None:
        """Drop every claim this store holds (a run that stops early leaves none behind)."""
        for path in list(self._held):
            self._held.discard(path)
            path.unlink(missing_ok=True)

    def release(self, backbone: str, method: str, seed: int, steps: int | None = None) -> None:
        path = self._claim_path(backbone, method, seed, steps)
        self._held.discard(path)
        path.unlink(missing_ok=True)

    def _claim_path(self, backbone: str, method: str, seed: int, steps: int | None = None) -> Path:
        return self.cells_dir / f".{cell_stem(backbone, method, seed, steps)}.claim"

    @contextmanager
    def _claims_lock(self) -> Iterator[None]:
        with open(self.cells_dir / ".claims.lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # the lock goes with the file

    @property
    def continuations_dir(self) -> Path:
        """Where the training of cells whose budgets share work is kept when a budget is spent
        (:mod:`benchmark.training`), so that a later invocation continues it to a larger budget."""
        return self.out_dir / "continuations"

    def features_path(self, backbone: str, seed: int, dense_hash: str) -> Path:
        """Where the FID features of a seed's dense samples are kept, keyed by the dense cell's config hash."""
        return self.out_dir / "features" / f"{cell_stem(backbone, REFERENCE_METHOD, seed)}-{dense_hash}.npy"

    def write_features(self, backbone: str, seed: int, dense_hash: str, features: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, features, allow_pickle=False)
        self._replace(self.features_path(backbone, seed, dense_hash), buffer.getvalue())

    def read_features(self, backbone: str, seed: int, dense_hash: str) -> np.ndarray | None:
        """The kept dense features, shared by every invocation on this directory; None when there are none."""
        try:
            return np.load(self.features_path(backbone, seed, dense_hash), allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            return None

    def all_cells(self) -> list[dict[str, Any]]:
        """Every readable cell, in file-name order."""
        if not self.cells_dir.is_dir():
            return []
        cells = (self._load(p) for p in sorted(self.cells_dir.glob("*.json")))
        return [c for c in cells if c is not None]

    @staticmethod
    def _load(path: Path) -> dict[str, Any] | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            cell = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            warnings.warn(f"ignoring unreadable result file {path} ({e}); the cell will be recomputed", stacklevel=3)
            return None
        if not isinstance(cell, dict) or not {"backbone", "method", "status"} <= cell.keys():
            warnings.warn(f"ignoring result file {path}: not a result cell; the cell will be recomputed", stacklevel=3)
            return None
        return cell
