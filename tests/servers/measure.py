"""Run a command as a child process and measure it: exit code, wall time and peak RSS.

The peak RSS is the command's own: Linux carries a process's peak over ``fork`` and ``exec``, so
the command is started by a small Python process (about 10 MB) rather than by the test's (often
300 MB), and that starter reads the command's ``wait4`` resource usage. A command going past
`kill_after_s` or `kill_above_mb` is killed, so a runaway scan cannot take the machine down; the
`Run` then says why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_STARTER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
with open(sys.argv[1] + ".pid", "w") as out:
    out.write(str(pid))
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
"""


@dataclass(frozen=True, slots=True)
class Run:
    """What a measured command did."""

    code: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float
    killed: str | None
    """Why the command was killed (``"time"``, ``"memory"``), None when it ended by itself."""
    first_stderr_at: float | None = None
    """Wall-clock time (``time.time()``) the first byte on stderr came, None without any."""
    cpu_s: float = 0.0
    """CPU seconds the command used (user and system)."""


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
    with tempfile.TemporaryDirectory(prefix="measure-") as folder:
        result = Path(folder, "result")
        started = time.monotonic()
        starter = subprocess.Popen([sys.executable, "-c", _STARTER, str(result), *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, cwd=cwd)
        killed: list[str] = []
        ended = threading.Event()

        def watch() -> None:
            pid_file = Path(f"{result}.pid")
            while not ended.wait(0.05):
                if not pid_file.exists() or not pid_file.read_text():
                    continue
                pid = int(pid_file.read_text())
                if time.monotonic() - started > kill_after_s:
                    killed.append("time")
                elif _rss_mb(pid) > kill_above_mb:
                    killed.append("memory")
                if killed:
                    os.kill(pid, signal.SIGKILL)
                    return

        errors: list[bytes] = []
        first_stderr_at: list[float] = []

        def read_stderr() -> None:
            assert starter.stderr is not None
            first = starter.stderr.read(1)
            first_stderr_at.extend([time.time()] if first else [])
            errors.append(first + starter.stderr.read())

        watcher = threading.Thread(target=watch)
        watcher.start()
        reader = threading.Thread(target=read_stderr)
        reader.start()
        assert starter.stdout is not None
        stdout = starter.stdout.read()
        starter.wait()
        reader.join()
        ended.set()
        wall = time.monotonic() - started
        watcher.join()
        starter.stdout.close()
        assert starter.stderr is not None
        starter.stderr.close()
        code, peak_kb, cpu = result.read_text().split()
    return Run(int(code), stdout.decode(errors="replace"), errors[0].decode(errors="replace"), wall,
               int(peak_kb) / 1024, killed[0] if killed else None, first_stderr_at[0] if first_stderr_at else None,
               float(cpu))



def pcrs_indexer(*args: str) -> list[str]:
    """The command line of the installed ``pcrs-indexer`` of this interpreter's environment."""
    return [str(Path(sys.executable).with_name("pcrs-indexer")), *args]
