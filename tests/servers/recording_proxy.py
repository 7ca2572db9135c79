"""A TCP relay on loopback that records what each client writes, chunk by chunk, for the tests.

A client waiting for answers between its writes shows each write as one chunk here (a few hundred
bytes on loopback arrive in one piece): a test reads from it how many writes a client needed,
and which commands went out together. It adds no delay.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class RecordingProxy:
    """Relays 127.0.0.1:`port` to 127.0.0.1:`target`; `chunks[n]` are the bytes connection n's
    client sent, one entry per chunk received."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.chunks: list[list[bytes]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._sockets += [client, server]
                self.chunks.append([])
                record = self.chunks[-1]
            threading.Thread(target=self._pump, args=(client, server, record), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, record: list[bytes] | None) -> None:
        try:
            while data := source.recv(65536):
                if record is not None:
                    with self._lock:
                        record.append(data)
                dest.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, dest):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def recorded(self) -> list[list[bytes]]:
        """A copy of the chunks recorded so far, per connection."""
        with self._lock:
            return [list(chunks) for chunks in self.chunks]

    def close(self) -> None:
        """Stop listening and close every relayed connection."""
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def __enter__(self) -> RecordingProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
