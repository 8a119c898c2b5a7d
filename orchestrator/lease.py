"""One driver per sweep: a lease file in the sweep directory (host, pid, since, heartbeat).

The driver that holds it refreshes its heartbeat; a second driver of the same sweep says in one line who holds
it and waits (up to sweep.lease_wait_s), then continues what the first left. A lease whose heartbeat is older
than sweep.lease_stale_s (its driver died, or its machine sleeps), or whose holder is a dead process on this host,
is taken over.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from store import io

LEASE_FILE = "lease.json"


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: float  # time.time() when it took the lease
    heartbeat: float  # time.time() of its last refresh

    def line(self, now: float) -> str:
        return (f"driver pid {self.pid} on {self.host} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}"
                f" (heartbeat {now - self.heartbeat:.0f}s ago)")


def decide(holder: Holder | None, me: Holder, now: float, stale_s: float, alive: bool | None) -> str:
    """take (free, or already ours) | take_over (stale heartbeat, or a dead process on this host) | wait.
    `alive`: whether the holder's process runs (None when it is on another host: only its heartbeat tells)."""
    if holder is None or (holder.host, holder.pid) == (me.host, me.pid):
        return "take"
    if alive is False or now - holder.heartbeat > stale_s:
        return "take_over"
    return "wait"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LeaseHeld(RuntimeError):
    """Another live driver holds the sweep (the message names it)."""


class Lease:
    """The sweep's lease, held by this process from `acquire` until `release` (a heartbeat thread refreshes it)."""

    def __init__(self, sweep_dir: str, stale_s: float, clock=time.time):
        self.location = io.join(sweep_dir, LEASE_FILE)
        self.stale_s = stale_s
        self.clock = clock
        now = clock()
        self.me = Holder(socket.gethostname(), os.getpid(), now, now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> Holder | None:
        try:
            return Holder(**json.loads(io.read_text(self.location)))
        except (FileNotFoundError, OSError, ValueError, TypeError):
            return None

    def _create(self) -> bool:
        """Write our lease if there is none (atomically on a local store); whether we hold it now."""
        text = json.dumps(asdict(self.me))
        if io.is_uri(self.location):  # an object store has no create-if-absent: write, then read back
            if self.holder() is not None:
                return False
            io.write_text(self.location, text)
            return self.holder() == self.me
        Path(self.location).parent.mkdir(parents=True, exist_ok=True)
        # written whole under a name of our own, then linked into place: the lease file never exists half-written
        mine = f"{self.location}.{self.me.host}-{self.me.pid}"
        Path(mine).write_text(text)
        try:
            os.link(mine, self.location)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(mine)

    def _remove_stale(self, stale: Holder) -> None:
        """Move the stale lease aside (one taker wins the rename; the others find it gone and try again)."""
        if io.is_uri(self.location):
            if self.holder() == stale:
                io.delete_file(self.location)
            return
        aside = f"{self.location}.stale-{os.getpid()}"
        try:
            os.replace(self.location, aside)
        except FileNotFoundError:
            return
        # another driver may have taken it over between our read and the rename: put its fresh lease back
        try:
            if Holder(**json.loads(Path(aside).read_text())) != stale:
                os.link(aside, self.location)
        except (OSError, ValueError, TypeError):
            pass
        os.unlink(aside)

    def acquire(self, wait_s: float, say=print, poll_s: float = 2.0) -> None:
        """Take the lease, waiting up to `wait_s` for a live holder (LeaseHeld after that)."""
        deadline = self.clock() + wait_s
        said = False
        while True:
            if self._create():
                break
            holder = self.holder()
            now = self.clock()
            if holder is None:  # released or moved aside meanwhile (try again), or unreadable
                if self._unreadable_for() > self.stale_s:
                    say(f"lease: {self.location} is unreadable and older than sweep.lease_stale_s="
                        f"{self.stale_s:g}s; taking the sweep over")
                    io.delete_file(self.location)
                elif now >= deadline:
                    raise LeaseHeld(f"{self.location} stayed unreadable for sweep.lease_wait_s={wait_s:g}s")
                else:
                    time.sleep(min(poll_s, 0.2))
                continue
            alive = _pid_alive(holder.pid) if holder.host == self.me.host else None
            action = decide(holder, self.me, now, self.stale_s, alive)
            if action == "take":
                break
            if action == "take_over":
                say(f"lease: taking the sweep over from {holder.line(now)}: "
                    + ("that process is gone" if alive is False else f"no heartbeat for sweep.lease_stale_s={self.stale_s:g}s"))
                self._remove_stale(holder)
                continue
            if now >= deadline:
                raise LeaseHeld(f"the sweep is held by {holder.line(now)}; it did not end within "
                                f"sweep.lease_wait_s={wait_s:g}s")
            if not said:
                say(f"lease: the sweep is held by {holder.line(now)}; waiting for it (up to "
                    f"sweep.lease_wait_s={wait_s:g}s), then continuing what it left")
                said = True
            time.sleep(poll_s)
        self._thread = threading.Thread(target=self._beat, name="premem-lease", daemon=True)
        self._thread.start()

    def _unreadable_for(self) -> float:
        """Seconds since an unreadable lease file was last written (0 when there is none or it reads)."""
        if io.is_uri(self.location) or self.holder() is not None:
            return 0.0
        try:
            return time.time() - os.path.getmtime(self.location)
        except OSError:
            return 0.0

    def _beat(self) -> None:
        while not self._stop.wait(max(1.0, self.stale_s / 4)):
            holder = self.holder()
            if holder is None:
                continue  # a read that failed (an object store's hiccup): the next beat tries again
            if (holder.host, holder.pid) != (self.me.host, self.me.pid):
                print(f"lease: this driver's sweep was taken over by {holder.line(self.clock())} (no heartbeat "
                      f"for sweep.lease_stale_s={self.stale_s:g}s); it now continues the sweep", flush=True)
                return
            try:
                io.write_text(self.location, json.dumps(asdict(replace_heartbeat(holder, self.clock()))))
            except Exception as exc:  # noqa: BLE001 -- a failed refresh is retried at the next beat
                print(f"lease: refreshing the heartbeat failed ({exc}); trying again", flush=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self.holder()
        if holder is not None and (holder.host, holder.pid) == (self.me.host, self.me.pid):
            io.delete_file(self.location)
        if not io.is_uri(self.location):  # a sweep refused before it wrote anything leaves no directory
            sweep_dir = Path(self.location).parent
            for empty in (sweep_dir, sweep_dir.parent):  # its own, and <store>/sweeps if it made that
                try:
                    empty.rmdir()
                except OSError:
                    break

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def replace_heartbeat(holder: Holder, now: float) -> Holder:
    return Holder(holder.host, holder.pid, holder.since, now)
