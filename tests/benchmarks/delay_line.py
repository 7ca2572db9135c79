"""A TCP delay line for the benchmark: a loopback proxy that models a distant link.

Every byte, each way, is delivered half the round-trip latency after it arrived, in order, and
without serialising: bytes sent while earlier ones are still on the line travel beside them, so
pipelined requests overlap as they do on a real link (a delay inside a server's request handler
would answer them in turn and hide what pipelining gains). A new connection is handed to the
server 1.5 round trips after the client connected (SYN, SYN-ACK, ACK), so the first answer comes
two round trips after the connect, as on a real link. Bandwidth is not limited.

``ftp=True`` also carries FTP's data connections: a ``227`` (PASV) or ``229`` (EPSV) answer on a
control connection gets a delay line of its own to the port it names, and the answer is rewritten
to that line's port, so data connections cross the same latency.

The line counts what it carries (connections, bytes each way); each server counts its own
requests. It runs in the server's event loop (`DelayLine`) or as its own process
(``python -m tests.benchmarks.delay_line HOST:PORT``, which prints ``PORT n`` once listening).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

MAX_QUEUED = 8 << 20
"""Bytes on the line in one direction of one connection before the sender is paused."""
_PASV = re.compile(rb"^227 [^(]*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)")
_EPSV = re.compile(rb"^229 [^(]*\(\|\|\|(\d+)\|\)")
_MAX_LINE = 4096


@dataclass(slots=True)
class LineCounters:
    """What a delay line (and the lines it opened for FTP data) carried."""

    connections: int = 0
    bytes_up: int = 0
    """Client to server."""
    bytes_down: int = 0
    """Server to client."""

    def as_dict(self) -> dict[str, int]:
        """The counters as JSON values."""
        return {"connections": self.connections, "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}


class _Pipe:
    """One direction of one connection: chunks queued with the time they are due, written in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, source: _Side, dest: _Side,
                 count: Callable[[int], None]) -> None:
        self.loop = loop
        self.delay = delay
        self.source = source
        self.dest = dest
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        """(due, bytes); None is the end of the stream."""
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.count = count
        self.not_before = 0.0
        """No byte is delivered before this time (the handshake of a new connection)."""
        self.rewrite: _FtpRewriter | None = None

    def push(self, data: bytes | None) -> None:
        if data is not None:
            self.count(len(data))
            self.queued += len(data)
            if self.queued > MAX_QUEUED:
                self.source.pause_reading()
        self.queue.append((max(self.loop.time() + self.delay, self.not_before), data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        self.timer = None
        transport = self.dest.transport
        if transport is None:
            if self.dest.lost:
                self.queue.clear()
            return  # not connected to the server yet: the connection's callback flushes
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                if self.rewrite is not None and self.rewrite.partial:
                    transport.write(self.rewrite.partial)
                self.dest.end()
                self.queue.clear()
                break
            self.queued -= len(data)
            transport.write(self.rewrite.feed(data) if self.rewrite is not None else data)
        if self.queued <= MAX_QUEUED // 2:
            self.source.resume_reading()
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def drop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection, the client's or the server's; what it receives goes to `out`."""

    def __init__(self, sides: set[_Side]) -> None:
        self.sides = sides
        self.transport: asyncio.Transport | None = None
        self.out: _Pipe | None = None
        self.inbound: _Pipe | None = None
        """The pipe writing into this side."""
        self.reading = True
        self.received_eof = False
        self.sent_eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sides.add(self)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.out is not None:
            self.out.push(data)

    def eof_received(self) -> bool:
        self.received_eof = True
        if self.out is not None:
            self.out.push(None)
        self._close_when_done()
        return True  # half-closed: the other way may still carry bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost = True
        self.sides.discard(self)
        if self.out is not None and not self.received_eof:
            self.received_eof = True
            self.out.push(None)
        if self.inbound is not None:
            self.inbound.drop()

    def pause_writing(self) -> None:
        if self.inbound is not None:
            self.inbound.source.pause_reading()

    def resume_writing(self) -> None:
        if self.inbound is not None:
            self.inbound.source.resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and self.reading:
            self.reading = False
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.reading:
            self.reading = True
            self.transport.resume_reading()

    def end(self) -> None:
        """The other side's stream has ended and all its bytes are delivered: end this one's (half-close)."""
        self.sent_eof = True
        if self.transport is not None:
            try:
                self.transport.write_eof()
            except OSError:  # the socket is gone already
                self.transport.close()
        self._close_when_done()

    def _close_when_done(self) -> None:
        if self.received_eof and self.sent_eof and self.transport is not None:
            self.transport.close()


class _FtpRewriter:
    """Rewrites the PASV and EPSV answers of an FTP control connection to ports of delay lines."""

    def __init__(self, line: DelayLine) -> None:
        self.line = line
        self.partial = b""

    def feed(self, data: bytes) -> bytes:
        data = self.partial + data
        last = data.rfind(b"\n") + 1
        if last == 0 and len(data) < _MAX_LINE:
            self.partial = data
            return b""
        if last == 0:
            last = len(data)
        self.partial = data[last:]
        return b"".join(self._rewrite(line) for line in data[:last].splitlines(keepends=True))

    def _rewrite(self, line: bytes) -> bytes:
        if (match := _PASV.match(line)) is not None:
            numbers = [int(n) for n in match.groups()]
            port = self.line.data_line(numbers[4] * 256 + numbers[5])
            host = self.line.host.replace(".", ",")
            return f"227 Entering Passive Mode ({host},{port >> 8},{port & 255}).\r\n".encode()
        if (match := _EPSV.match(line)) is not None:
            port = self.line.data_line(int(match.group(1)))
            return f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode()
        return line


class DelayLine:
    """A listening socket whose connections are proxied to `target` across `latency_s` of round trip.

    Args:
        target: the server's (host, port).
        latency_s: the round trip; each way takes half of it.
        ftp: rewrite PASV/EPSV answers so that FTP data connections cross the line too.
        host: where the line listens; port 0 picks a free port.
        counters: shared with the lines this one opens for FTP data.
    """

    def __init__(self, target: tuple[str, int], latency_s: float, *, ftp: bool = False, host: str = "127.0.0.1",
                 port: int = 0, counters: LineCounters | None = None) -> None:
        self.target = target
        self.latency_s = latency_s
        self.ftp = ftp
        self.host = host
        self.port = port
        self.counters = counters if counters is not None else LineCounters()
        self._servers: list[asyncio.Server] = []
        self._data_lines: dict[int, DelayLine] = {}
        self._sides: set[_Side] = set()

    def listen(self) -> int:
        """Listen now (connections wait in the backlog until the loop serves them); return the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(4096)
        self.port = sock.getsockname()[1]
        asyncio.get_running_loop().create_task(self._serve(sock))
        return self.port

    async def start(self) -> int:
        """Listen and serve; return the port."""
        port = self.listen()
        await asyncio.sleep(0)
        return port

    async def _serve(self, sock: socket.socket) -> None:
        self._servers.append(await asyncio.get_running_loop().create_server(self._accepted, sock=sock))

    def data_line(self, target_port: int) -> int:
        """The port of the delay line to an FTP data port, opened on first use."""
        line = self._data_lines.get(target_port)
        if line is None:
            line = DelayLine((self.target[0], target_port), self.latency_s, host=self.host,
                             counters=self.counters)
            line.listen()
            self._data_lines[target_port] = line
        return line.port

    def _accepted(self) -> _Side:
        loop = asyncio.get_running_loop()
        half = self.latency_s / 2
        counters = self.counters
        counters.connections += 1
        client, server = _Side(self._sides), _Side(self._sides)

        def up_count(n: int) -> None:
            counters.bytes_up += n

        def down_count(n: int) -> None:
            counters.bytes_down += n

        up = _Pipe(loop, half, client, server, up_count)
        down = _Pipe(loop, half, server, client, down_count)
        if self.ftp:
            down.rewrite = _FtpRewriter(self)
        client.out, client.inbound = up, down
        server.out, server.inbound = down, up
        handshake = 3 * half  # SYN, SYN-ACK, ACK: the server accepts 1.5 round trips after the connect
        up.not_before = loop.time() + handshake
        loop.call_later(handshake, lambda: loop.create_task(self._connect(client, server, up)))
        return client

    async def _connect(self, client: _Side, server: _Side, up: _Pipe) -> None:
        if client.transport is None:
            return
        try:
            await asyncio.get_running_loop().create_connection(lambda: server, *self.target)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        if up.timer is None and up.queue:
            up.flush()

    def close(self) -> None:
        """Stop listening and close every connection."""
        for line in self._data_lines.values():
            line.close()
        for server in self._servers:
            server.close()
        for side in list(self._sides):
            if side.transport is not None:
                side.transport.close()

    async def aclose(self) -> None:
        """`close`, then wait until every socket is closed."""
        self.close()
        for line in self._data_lines.values():
            await line.aclose()
        for server in self._servers:
            await server.wait_closed()
        for _ in range(2):  # closed transports let go of their sockets on the next turns of the loop
            await asyncio.sleep(0)


async def _serve(target: tuple[str, int], latency_s: float, ftp: bool, port: int) -> None:
    line = DelayLine(target, latency_s, ftp=ftp, port=port)
    sys.stdout.write(f"PORT {await line.start()}\n")
    sys.stdout.flush()
    try:
        await until_stopped()
    finally:
        await line.aclose()


async def until_stopped() -> None:
    """Return once the process gets SIGTERM or SIGINT: a server process's main coroutine waits on it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Proxy 127.0.0.1:PORT to TARGET across the latency until SIGTERM; print ``PORT n`` once listening."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("target", help="HOST:PORT of the server.")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="Round trip added.")
    parser.add_argument("--ftp", action="store_true", help="Carry FTP data connections too (PASV/EPSV).")
    parser.add_argument("--port", type=int, default=0, help="Where to listen; 0 picks a free port.")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    asyncio.run(_serve((host, int(port)), args.latency_ms / 1000.0, args.ftp, args.port))


if __name__ == "__main__":
    main()
