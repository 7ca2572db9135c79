"""Run a command as a child process and measure it: exit code, wall time and peak RSS.

The peak RSS is the child's own (``wait4``'s resource usage of that one process), not the
test's nor its servers'. A child going past `kill_after_s` or `kill_above_mb` is killed, so a
runaway scan cannot take the machine down; the `Run` then says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Run:
    """What a measured child did."""

    code: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float
    killed: str | None
    """Why the child was killed (``"time"``, ``"memory"``), None when it ended by itself."""


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_measured(args: list[str], env: dict[str, str], cwd: Path, kill_after_s: float = 120.0,
                 kill_above_mb: float = 2048.0) -> Run:
    """Run `args` and wait for it, killing it past `kill_after_s` seconds or `kill_above_mb` MB."""
    started = time.monotonic()
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    outputs: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda name=name, pipe=pipe: outputs.__setitem__(name, pipe.read()))
               for name, pipe in (("stdout", child.stdout), ("stderr", child.stderr))]
    ended = threading.Event()
    killed: list[str] = []

    def watch() -> None:
        while not ended.wait(0.05):
            if time.monotonic() - started > kill_after_s:
                killed.append("time")
            elif _rss_mb(child.pid) > kill_above_mb:
                killed.append("memory")
            if killed:
                child.kill()
                return

    watcher = threading.Thread(target=watch)
    for thread in (*readers, watcher):
        thread.start()
    _, status, usage = os.wait4(child.pid, 0)
    ended.set()
    wall = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    for thread in (*readers, watcher):
        thread.join()
    for pipe in (child.stdout, child.stderr):
        if pipe is not None:
            pipe.close()
    return Run(child.returncode, outputs.get("stdout", b"").decode(errors="replace"),
               outputs.get("stderr", b"").decode(errors="replace"), wall, usage.ru_maxrss / 1024,
               killed[0] if killed else None)


def pcrs_indexer(*args: str) -> list[str]:
    """The command line of the installed ``pcrs-indexer`` of this interpreter's environment."""
    return [str(Path(sys.executable).with_name("pcrs-indexer")), *args]
