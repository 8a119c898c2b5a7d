"""python -m orchestrator.reaper DRIVER_PID SESSION_DIR: end what a local Ray leaves behind its driver.

A driver that starts its own Ray owns that Ray's processes. Ray fate-shares its GCS and raylet with the
driver, but when the driver is SIGKILLed the raylet cannot stop the agents it started (the dashboard and
runtime-env agents live on, reparented to init). The driver starts this watcher in its own session; once the
driver is gone and Ray has had a moment to end its own processes, it kills every process still holding a file
of that Ray session open. Never used for a cluster the user started (cluster.address).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_S = 5.0  # Ray's own fate-sharing ends most processes within a second or two


def session_processes(session_dir: str, exclude: set[int]) -> list[int]:
    """Pids of processes with a file under `session_dir` open (their logs), this one excluded."""
    session = os.path.realpath(session_dir)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if any(link.startswith(session + "/") for link in links):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def watch(driver_pid: int, session_dir: str, poll_s: float = 1.0) -> list[int]:
    """Wait for the driver to end, then kill what is left of its Ray session; the pids killed."""
    while alive(driver_pid):
        time.sleep(poll_s)
    time.sleep(GRACE_S)
    leftovers = session_processes(session_dir, {os.getpid()})
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers


def start(session_dir: str) -> subprocess.Popen:
    """Start the watcher for this process's local Ray (detached: it must outlive a SIGKILLed driver)."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator.reaper", str(os.getpid()), session_dir],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=Path(__file__).resolve().parent.parent)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
