"""The delay line delays every byte by half the latency each way, in order, without serialising."""

from __future__ import annotations

import asyncio
import ftplib
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.benchmarks.delay_line import DelayLine

LATENCY = 0.05
SLACK = 0.03
"""What a loaded machine may add to a measured time."""


class _Echo(asyncio.Protocol):
    """Echoes what it receives; with a greeting, speaks first."""

    def __init__(self, greeting: bytes, opened: list[asyncio.Transport]) -> None:
        self.greeting = greeting
        self.opened = opened

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.opened.append(transport)
        if self.greeting:
            transport.write(self.greeting)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.write_eof()
        return True


def _through_line(check: Callable[[int, DelayLine], Awaitable[None]], greeting: bytes = b"") -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        opened: list[asyncio.Transport] = []
        echo = await loop.create_server(lambda: _Echo(greeting, opened), "127.0.0.1", 0)
        line = DelayLine(("127.0.0.1", echo.sockets[0].getsockname()[1]), LATENCY)
        port = await line.start()
        try:
            await check(port, line)
        finally:
            await line.aclose()
            for transport in opened:
                transport.close()
            echo.close()
            await echo.wait_closed()
            await asyncio.sleep(0)

    asyncio.run(main())


async def _read(reader: asyncio.StreamReader, n: int) -> tuple[bytes, float]:
    data = await asyncio.wait_for(reader.readexactly(n), 5)
    return data, time.perf_counter()


def test_a_round_trip_takes_the_latency_and_a_new_connection_two() -> None:
    async def check(port: int, line: DelayLine) -> None:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting, at = await _read(reader, 6)
        assert greeting == b"hello\n"
        # SYN, SYN-ACK, ACK, then the greeting: two round trips after the connect.
        assert 2 * LATENCY <= at - started < 2 * LATENCY + SLACK
        for _ in range(3):
            sent = time.perf_counter()
            writer.write(b"ping")
            echoed, at = await _read(reader, 4)
            assert echoed == b"ping"
            assert LATENCY <= at - sent < LATENCY + SLACK
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the end of the stream crosses the line too
        writer.close()
        assert (line.counters.connections, line.counters.bytes_up, line.counters.bytes_down) == (1, 12, 18)

    _through_line(check, greeting=b"hello\n")


def test_pipelined_requests_overlap_on_the_line() -> None:
    async def check(port: int, line: DelayLine) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"0")
        assert (await _read(reader, 1))[0] == b"0"  # the connection is made
        sent = time.perf_counter()
        writer.write(b"first")
        await asyncio.sleep(0.005)
        writer.write(b"second")
        first, first_at = await _read(reader, 5)
        second, second_at = await _read(reader, 6)
        assert (first, second) == (b"first", b"second")
        # Both answers within one latency of the first request, not one latency each in turn.
        assert LATENCY <= first_at - sent < LATENCY + SLACK
        assert second_at - sent < LATENCY + 0.005 + SLACK < 2 * LATENCY
        writer.close()

    _through_line(check)


def test_bytes_arrive_intact_and_in_order() -> None:
    payload = os.urandom(3 << 20)

    async def check(port: int, line: DelayLine) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def send() -> None:
            for start in range(0, len(payload), 1000):  # many small writes: many chunks on the line
                writer.write(payload[start:start + 1000])
                if start % 100_000 == 0:
                    await writer.drain()
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.read(), 20)
        await sender
        assert echoed == payload
        writer.close()
        assert line.counters.bytes_up == line.counters.bytes_down == len(payload)

    _through_line(check)


@pytest.fixture
def ftp_through_line(tmp_path: Path) -> Iterator[tuple[Path, int, DelayLine]]:
    """ProFTPD serving a public folder, behind a delay line run in a thread."""
    from tests.servers.servers import ProFTPD, public_folder

    root = public_folder()
    server = ProFTPD(root, tmp_path / "ftpd").start()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    line = DelayLine(("127.0.0.1", server.port), LATENCY, ftp=True)
    try:
        port = asyncio.run_coroutine_threadsafe(line.start(), loop).result(5)
        yield root, port, line
    finally:
        asyncio.run_coroutine_threadsafe(line.aclose(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("passive", ["PASV", "EPSV"])
def test_ftp_data_connections_cross_the_line(ftp_through_line: tuple[Path, int, DelayLine], passive: str) -> None:
    root, port, line = ftp_through_line
    payload = os.urandom(200_000)
    (root / "a.tif").write_bytes(payload)
    (root / "a.tif").chmod(0o644)
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=10)
    ftp.login("pcrs", "ftp-secret")
    ftp.voidcmd("TYPE I")
    started = time.perf_counter()
    answer = ftp.sendcmd(passive)
    assert LATENCY <= time.perf_counter() - started < LATENCY + SLACK
    if passive == "PASV":
        host, data_port = ftplib.parse227(answer)
        assert host == "127.0.0.1"
    else:
        data_port = ftplib.parse229(answer, ("127.0.0.1", port))[1]
    assert data_port != port
    data = ftp_data(data_port)
    started = time.perf_counter()
    ftp.sendcmd("REST 100")
    ftp.sendcmd("RETR a.tif")
    assert data.result() == payload[100:]
    # REST and RETR: two round trips; the data connection was made meanwhile, its bytes crossed the line.
    assert time.perf_counter() - started >= 2 * LATENCY
    assert ftp.voidresp().startswith("226")
    ftp.quit()
    assert line.counters.connections == 2
    assert line.counters.bytes_down > len(payload) - 100


class ftp_data:  # noqa: N801 - reads like the call it stands for
    """A data connection to `port`, read to its end in a thread."""

    def __init__(self, port: int) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while chunk := self.sock.recv(65536):
            self.chunks.append(chunk)
        self.sock.close()

    def result(self) -> bytes:
        self.thread.join(10)
        return b"".join(self.chunks)
