"""Which process fits which group of cells: a claim is a file beside the cells, made with O_EXCL, so
`accelerate launch`, torchrun and independent processes sharing a filesystem (a SLURM job array) divide
the fits without a barrier and without a launcher of their own.

A live claim is kept fresh by a heartbeat thread touching it. A claim goes stale when its owner is seen
dead (same host and pid namespace, pid gone: at once) or when its mtime has not moved for `expiry`
seconds of this process's own clock (another node: clocks of different machines are never compared).
A stale claim is taken over by renaming it away, so of several processes that see it stale, one wins.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

EXPIRY_SECONDS = 120.0  # a claim whose heartbeat stopped this long ago is another process's to take
EXPIRY_ENV = "SPATIALBENCH_CLAIM_EXPIRY"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux: pids are compared on the host name alone
        return "-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Claims:
    def __init__(self, expiry: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.expiry = float(os.environ.get(EXPIRY_ENV, EXPIRY_SECONDS)) if expiry is None else expiry
        self.clock = clock
        self.host = f"{socket.gethostname()} {_pid_namespace()}"
        self.owner = f"{self.host} {os.getpid()} {uuid.uuid4().hex}"
        self.held: set[Path] = set()
        self._seen: dict[Path, tuple[int, float]] = {}  # another's claim -> (its mtime, when first seen at it)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def take(self, path: Path) -> bool:
        """Claim `path` for this process: True if it is now ours (made, or taken over from a stale owner)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # the second try follows a takeover
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                if not self._take_over(path):
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.owner)
            with self._lock:
                self.held.add(path)
            self._start_heartbeat()
            return True
        return False

    def release(self, path: Path) -> None:
        with self._lock:
            self.held.discard(path)
        if self._owner_of(path) == self.owner:
            path.unlink(missing_ok=True)

    def beat(self) -> None:
        """Touch every claim this process holds: its owner is alive."""
        with self._lock:
            held = list(self.held)
        for path in held:
            try:
                now = time.time_ns()  # not the kernel's coarse file clock: every beat moves the mtime
                os.utime(path, ns=(now, now))
            except FileNotFoundError:  # taken over after all (this process was stalled past the expiry)
                with self._lock:
                    self.held.discard(path)

    def close(self) -> None:
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
        for path in list(self.held):
            self.release(path)

    # -- another process's claim ------------------------------------------------------------------------

    def stale(self, path: Path) -> bool:
        owner = self._owner_of(path)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        parts = (owner or "").split()
        if owner and " ".join(parts[:2]) == self.host and parts[2].isdigit() and not _alive(int(parts[2])):
            return True
        seen = self._seen.get(path)
        if seen is None or seen[0] != mtime:
            self._seen[path] = (mtime, self.clock())
            return False
        return self.clock() - seen[1] >= self.expiry

    def _take_over(self, path: Path) -> bool:
        """Move a stale claim out of the way; True when the path is free to claim again."""
        owner = self._owner_of(path)
        if owner is None:  # released meanwhile, or being written this instant (empty): look again later
            return not path.exists()
        if not self.stale(path):
            return False
        aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(path, aside)
        except FileNotFoundError:  # another process took it over first
            return False
        if self._owner_of(aside) != owner:  # we moved a fresh claim made by whoever took it over: put it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        self._seen.pop(path, None)
        return True

    @staticmethod
    def _owner_of(path: Path) -> str | None:
        try:
            return path.read_text() or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def _start_heartbeat(self) -> None:
        if self._beater is None:
            self._beater = threading.Thread(target=self._heartbeat, name="spatialbench-claims", daemon=True)
            self._beater.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.expiry / 4):
            self.beat()
