"""Status of each stage on a shared POSIX file system: pending / running / done / failed, with leases.

SWEEP/stages/ID/status.json is read and written only under an exclusive `fcntl.flock` on
SWEEP/stages/ID/.lock, and written atomically (temporary file + rename), so two runners (processes,
hosts, SLURM jobs) never both claim a stage. A running stage holds a lease (`expires`, renewed by the
runner's heartbeat); a runner that dies stops renewing it, and the stage is claimable once it expires,
or at once when its owner is a process of this host that no longer exists.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
CLAIMED, BUSY = "claimed", "busy"  # claim() answers, beside DONE
STATUS_FILE = "status.json"


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Atomic: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
    partial.write_text(json.dumps(value, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(partial, path)


def new_owner() -> str:
    """host:pid:random, unique per runner (or SLURM task)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _owner_is_dead(owner: str) -> bool:
    """True only when the owner is a process of this host that has exited."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class StatusStore:
    """Claims, leases and results of the stages under SWEEP/stages."""

    def __init__(self, sweep_dir: str | os.PathLike, lease_s: float = 120.0):
        self.root = Path(sweep_dir) / "stages"
        self.lease_s = lease_s

    def stage_dir(self, stage_id: str) -> Path:
        return self.root / stage_id

    @contextlib.contextmanager
    def _locked(self, stage_id: str) -> Iterator[Path]:
        directory = self.stage_dir(stage_id)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield directory / STATUS_FILE
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self, stage_id: str) -> dict[str, Any]:
        """{"status": ..., "owner", "expires", "log", "error", "seconds", ...}; pending when never claimed."""
        path = self.stage_dir(stage_id) / STATUS_FILE
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"status": PENDING}

    def status(self, stage_id: str) -> str:
        """The status as a runner deciding what to do sees it: an expired or orphaned lease reads pending."""
        record = self.read(stage_id)
        if record["status"] == RUNNING and self._stale(record):
            return PENDING
        return record["status"]

    def _stale(self, record: dict[str, Any]) -> bool:
        return record.get("expires", 0) < time.time() or _owner_is_dead(record.get("owner", ""))

    def claim(self, stage_id: str, owner: str, log: str = "") -> str:
        """Try to take the stage: "claimed", or why not: "done", or "busy" (another live runner has it).
        A failed stage, an expired lease or a dead local owner is taken over."""
        with self._locked(stage_id) as path:
            record = self.read(stage_id)
            if record["status"] == DONE:
                return DONE
            if record["status"] == RUNNING and record.get("owner") != owner and not self._stale(record):
                return BUSY
            now = time.time()
            attempts = record.get("attempts", 0) + 1
            write_json(path, {"status": RUNNING, "owner": owner, "started": now, "expires": now + self.lease_s,
                              "log": log, "attempts": attempts, "previous": record.get("status")})
            return CLAIMED

    def renew(self, stage_id: str, owner: str) -> bool:
        """Extend the lease; False when the stage is no longer this owner's (taken over after a stall)."""
        with self._locked(stage_id) as path:
            record = self.read(stage_id)
            if record.get("owner") != owner or record["status"] != RUNNING:
                return False
            record["expires"] = time.time() + self.lease_s
            write_json(path, record)
            return True

    def finish(self, stage_id: str, owner: str, ok: bool, **details: Any) -> None:
        """Record done or failed (with details: error, returncode, seconds), if the stage is still ours."""
        with self._locked(stage_id) as path:
            record = self.read(stage_id)
            if record.get("owner") != owner:
                return
            record.update(details, status=DONE if ok else FAILED, finished=time.time())
            record.pop("expires", None)
            write_json(path, record)

