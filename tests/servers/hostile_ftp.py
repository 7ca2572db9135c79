"""An FTP server that misbehaves on purpose, run as a child process by `tests.servers.servers.HostileFTP`.

    python tests/servers/hostile_ftp.py PORT --log FILE --mode MODE [--delay S]

It speaks just enough FTP for ftplib (USER, PASS, FEAT without MLST, PWD, CWD, TYPE, PASV, LIST,
SIZE, REST, RETR, QUIT), every folder and file made up, and misbehaves as MODE says:

- ``silent``: connections are accepted and never answered, not even with a banner (an SSH client
  waits for one as an FTP client does);
- ``trickle-banner``: the greeting comes one byte every `--delay` seconds, without end;
- ``trickle-list``: a LIST answer comes one byte every `--delay` seconds, without end;
- ``endless-list``: a LIST answer of valid file lines, as fast as the client reads, without end;
- ``fanout``: every folder holds four new folders with names never used before, and no file;
- ``echo-password``: the password is refused with a 530 reply that repeats it;
- ``big-retr``: a folder of one ``a.tif`` announced at 1,000 bytes, whose RETR sends 64 MiB whatever
  REST and the client's early close say.

Every command is logged to FILE as ``time|session|COMMAND|argument`` (PASS arguments included:
the test checks the client sent them, not that the server hides them), a connection as CONNECT.
"""

from __future__ import annotations

import argparse
import itertools
import socket
import socketserver
import threading
import time
from pathlib import Path

FILE_LINE = "-rw-r--r--   1 pcrs     pcrs         1000 Jan  1  2024 {name}\r\n"
DIR_LINE = "drwxr-xr-x   2 pcrs     pcrs         4096 Jan  1  2024 {name}\r\n"


class Session(socketserver.StreamRequestHandler):
    """One control connection."""

    mode = ""
    delay = 2.0
    log_path: Path
    lock = threading.Lock()
    sessions = itertools.count(1)
    folders = itertools.count(1)

    def setup(self) -> None:
        super().setup()
        self.session = next(self.sessions)
        self.passive: socket.socket | None = None
        self.rest = 0

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def log(self, command: str, argument: str) -> None:
        with self.lock, open(self.log_path, "a") as log:
            log.write(f"{time.time()}|{self.session}|{command}|{argument}\n")

    def trickle(self, out: socket.socket | None, text: bytes) -> None:
        """Send `text` again and again, one byte every `delay` seconds."""
        for byte in itertools.cycle(text):
            if out is None:
                self.wfile.write(bytes([byte]))
            else:
                out.sendall(bytes([byte]))
            time.sleep(self.delay)

    def handle(self) -> None:
        self.log("CONNECT", "")
        try:
            if self.mode == "silent":
                self.rfile.read()  # until the client gives up
                return
            if self.mode == "trickle-banner":
                self.trickle(None, b"220-Welcome, please wait for the end of this greeting\r\n")
            self.reply("220 hostile test server")
            for raw in self.rfile:
                command, _, argument = raw.decode("utf-8", "replace").strip().partition(" ")
                self.log(command.upper(), argument)
                if not self.dispatch(command.upper(), argument):
                    return
        except OSError:
            return

    def dispatch(self, command: str, argument: str) -> bool:  # noqa: C901 - one branch per command
        """Answer one command; False once the session is over."""
        if command == "USER":
            self.reply("331 password please")
        elif command == "PASS":
            if self.mode == "echo-password":
                self.reply(f"530 Login incorrect: password {argument} refused")
            else:
                self.reply("230 logged in")
        elif command == "FEAT":
            self.reply("211-Features:\r\n SIZE\r\n REST STREAM\r\n211 End")
        elif command in ("TYPE", "OPTS"):
            self.reply("200 ok")
        elif command == "PWD":
            self.reply('257 "/"')
        elif command == "CWD":
            self.reply("250 ok")
        elif command == "SIZE":
            self.reply("213 1000")
        elif command == "REST":
            self.rest = int(argument or 0)
            self.reply("350 restarting")
        elif command == "PASV":
            self.passive = socket.create_server(("127.0.0.1", 0))
            port = self.passive.getsockname()[1]
            self.reply(f"227 Entering Passive Mode (127,0,0,1,{port >> 8},{port & 255})")
        elif command in ("LIST", "NLST", "RETR"):
            self.transfer(command)
        elif command == "QUIT":
            self.reply("221 bye")
            return False
        else:
            self.reply("502 not implemented")
        return True

    def transfer(self, command: str) -> None:
        if self.passive is None:
            self.reply("425 use PASV first")
            return
        self.reply("150 here it comes")
        data, _ = self.passive.accept()
        self.passive.close()
        self.passive = None
        try:
            with data:
                self.send_data(command, data)
            self.reply("226 done")
        except OSError:
            self.reply("426 transfer aborted")

    def send_data(self, command: str, data: socket.socket) -> None:
        if command == "RETR":
            block = b"\0" * 65536
            for _ in range(1024):
                data.sendall(block)
        elif self.mode == "trickle-list":
            self.trickle(data, FILE_LINE.format(name="a.tif").encode())
        elif self.mode == "endless-list":
            for start in itertools.count(0, 1000):
                data.sendall("".join(FILE_LINE.format(name=f"f{n:012d}.tif")
                                     for n in range(start, start + 1000)).encode())
        elif self.mode == "fanout":
            data.sendall("".join(DIR_LINE.format(name=f"d{next(self.folders)}") for _ in range(4)).encode())
        else:
            data.sendall(FILE_LINE.format(name="a.tif").encode())


def main() -> None:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--mode", required=True, choices=["silent", "trickle-banner", "trickle-list", "endless-list",
                                                          "fanout", "echo-password", "big-retr"])
    parser.add_argument("--delay", type=float, default=2.0)
    args = parser.parse_args()
    args.log.touch()
    Session.mode = args.mode
    Session.delay = args.delay
    Session.log_path = args.log
    server = socketserver.ThreadingTCPServer(("127.0.0.1", args.port), Session)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
