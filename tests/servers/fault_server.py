"""An HTTP server that fails on purpose, run as a child process by `tests.servers.FaultyHTTP`.

    python tests/fault_server.py ROOT PORT --log FILE [--fail-first N] [--stall PREFIX] [--redirect URL]
                                 [--silent]

It serves ROOT like ``python -m http.server`` (a bare list of links), except that:

- ``--fail-first N``: the first N requests of every path get ``503 Service Unavailable``;
- ``--stall PREFIX``: requests whose path starts with PREFIX never get an answer;
- ``--redirect URL``: every request is redirected (302) to URL followed by its path;
- ``--silent``: connections are accepted and never answered at all, not even an FTP or SSH banner.

Every request is logged as ``method|path|status|0|`` to FILE, 0 as the status of a stalled one.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FaultyHandler(SimpleHTTPRequestHandler):
    """Serves files and listings, failing as the command line asks."""

    fail_first = 0
    stall: str | None = None
    redirect: str | None = None
    log_path: Path
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def _record(self, status: int) -> None:
        with self.lock, open(self.log_path, "a") as log:
            log.write(f"{self.command}|{self.path}|{status}|0|{self.headers.get('Range', '')}\n")

    def _fault(self) -> bool:
        with self.lock:
            self.seen[self.path] += 1
            count = self.seen[self.path]
        if self.stall is not None and self.path.startswith(self.stall):
            self._record(0)
            time.sleep(3600)
            return True
        if self.redirect is not None:
            self._record(302)
            self.send_response(302)
            self.send_header("Location", self.redirect + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        if count <= self.fail_first:
            self._record(503)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if not self._fault():
            self._record(200)
            super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
        if not self._fault():
            self._record(200)
            super().do_HEAD()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: the log file says it all."""


def silent(port: int, log_path: Path) -> None:
    """Accept connections and never say a word."""
    held = []
    with socket.create_server(("127.0.0.1", port)) as server:
        while True:
            conn, _ = server.accept()
            held.append(conn)
            with open(log_path, "a") as log:
                log.write("CONNECT||0|0|\n")


def main() -> None:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--stall")
    parser.add_argument("--redirect")
    parser.add_argument("--silent", action="store_true")
    args = parser.parse_args()
    args.log.touch()
    if args.silent:
        silent(args.port, args.log)
        return
    FaultyHandler.fail_first = args.fail_first
    FaultyHandler.stall = args.stall
    FaultyHandler.redirect = args.redirect
    FaultyHandler.log_path = args.log
    server = ThreadingHTTPServer(("127.0.0.1", args.port), partial(FaultyHandler, directory=str(args.root)))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
