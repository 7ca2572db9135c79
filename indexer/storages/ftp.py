"""FTP and FTPS (explicit TLS) storages, on Python's ftplib, made for a crawler.

What a plain FTP client lacks, and `FTPConnection` adds:

- the address check (`indexer.addresses`) before connecting, and data connections to that same
  checked address whatever PASV says;
- explicit TLS with the data connections reusing the control connection's TLS session, which
  ProFTPD and vsftpd require by default, and a CA file for self-signed servers;
- MLSD when the server's FEAT advertises it, else LIST, whose Unix and DOS/IIS lines are parsed
  by `indexer.storages.ftp_listing`; no listing cache, and transient errors left to the caller to retry;
- a read that costs one round trip for its commands and one for its data, on a connection that
  stays logged in: EPSV (or PASV), REST for an offset and RETR are sent in one write, without
  waiting for each answer (servers queue a RETR until its data connection comes); as soon as the
  bytes asked for are in, the data connection is closed, and the ABOR ending that transfer goes
  out in the same write as the next read's commands (`FTPConnection.cat_file`).

`FTPStorage` keeps a small pool of such logged-in connections, at most ``ftp_max_connections``
(default 2, as public servers refuse more): one login per connection for the whole scan, never
one per read. A server refusing a connection because of its own cap shrinks the pool to the
connections it has.
"""

from __future__ import annotations

import ftplib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeVar
from urllib.parse import unquote

from indexer.errors import ForbiddenAddress, NotFound, ReadError
from indexer.models import FileEntry
from indexer.storages.access import (
    AccessOptions,
    Failure,
    ResponseTooLarge,
    RetryPolicy,
    describe_os_error,
    parse_location,
    retry_sync,
)
from indexer.storages.addresses import AddressPolicy
from indexer.storages.base import Storage
from indexer.storages.crawl import Child, Crawl, CrawlLimits, crawl_in_threads
from indexer.storages.ftp_listing import mlsd_child, parse_list_line

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_REPLY_LINES = 1000
"""The most lines one reply may have (a multi-line ``211-`` answer)."""
_SERVER_FULL = re.compile(r"too many|maximum number of|max(imum)? (clients|connections|users)", re.IGNORECASE)
"""How servers word a refusal because they have too many connections (vsftpd 421, ProFTPD 530)."""


def classify_ftp(exc: BaseException) -> Failure:
    """Transient: 4xx replies (421 included), timeouts, refused, reset or closed connections."""
    if isinstance(exc, ftplib.error_temp):
        return Failure(True, f"FTP {exc}")
    if isinstance(exc, ftplib.error_perm):
        # ProFTPD answers 530 to a login beyond its connection cap: that one is worth waiting for.
        return Failure(_SERVER_FULL.search(str(exc)) is not None, f"FTP {exc}")
    if isinstance(exc, ftplib.error_reply | ftplib.error_proto):
        return Failure(True, f"unexpected FTP reply {exc}")
    if isinstance(exc, EOFError):
        return Failure(True, "the server closed the connection")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure(False, f"TLS certificate not trusted: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return Failure(False, f"TLS error: {exc.reason or exc}")
    if isinstance(exc, TimeoutError):
        return Failure(True, "timed out")
    if isinstance(exc, OSError):
        return Failure(True, describe_os_error(exc))
    return Failure(False, str(exc) or type(exc).__name__)


def _broken(exc: BaseException) -> bool:
    """Whether the connection that raised `exc` cannot be used again."""
    if isinstance(exc, ftplib.error_temp):
        return str(exc).startswith("421")
    if isinstance(exc, ftplib.error_perm):
        return False
    return True


class _TLSSessionReuse(ftplib.FTP_TLS):
    """Explicit FTPS whose data connections resume the control connection's TLS session."""

    protected = False
    """Whether data connections are in TLS (after `prot_p`)."""

    def prot_p(self) -> str:
        """Ask for data connections in TLS."""
        reply = super().prot_p()
        self.protected = True
        return reply

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self.protected:
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


@dataclass(frozen=True, slots=True)
class FTPServer:
    """Where and how to log in."""

    host: str
    port: int = 21
    username: str = ""
    password: str = field(default="", repr=False)
    tls: bool = False
    timeout_s: float = 30.0
    addresses: AddressPolicy = field(default_factory=AddressPolicy)
    ssl_context: ssl.SSLContext | None = None
    max_listing_bytes: int = 16 * 1024 * 1024
    """The most bytes one folder's listing may send."""
    max_listing_entries: int = CrawlLimits().max_listing_entries
    """The most lines one folder's listing may send."""


class FTPConnection:
    """One logged-in FTP or FTPS connection (see the module's docstring for what it adds).

    Every exchange runs under a total deadline (`deadline`), logging in included: a server
    trickling its replies a byte at a time never resets an idle timeout for long.
    """

    def __init__(self, server: FTPServer, seconds: float) -> None:
        """Connect and log in, within `seconds` in all."""
        self.server = server
        self.use_mlsd = False
        self.use_epsv = False
        self._binary = False
        self._data: socket.socket | None = None
        self._owed = 0
        """Replies the server owes to commands sent earlier, read before the next command's."""
        self._abort_owed = False
        """A transfer was left unfinished: ABOR goes out before the next command."""
        self.in_sync = True
        """False once a pipelined exchange broke off before its replies were all read: the
        connection cannot be used again."""
        self._expired = False
        self.ftp: ftplib.FTP
        if server.tls:
            self.ftp = _TLSSessionReuse(context=server.ssl_context or ssl.create_default_context(),
                                        timeout=server.timeout_s, encoding="utf-8")
        else:
            self.ftp = ftplib.FTP(timeout=server.timeout_s, encoding="utf-8")
        with self.deadline(seconds):
            self._connect()

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """End the block's exchanges after `seconds` in all, raising `TimeoutError`.

        When the time is up, the control and data sockets are shut down, which ends any read
        blocked on them; the connection is then unusable (the pool discards it).
        """
        self._expired = False
        timer = threading.Timer(max(0.0, seconds), self._expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception as exc:
            if self._expired:
                raise TimeoutError(f"no complete answer within {seconds:g} s") from exc
            raise
        finally:
            timer.cancel()
        if self._expired:
            raise TimeoutError(f"no complete answer within {seconds:g} s")

    def _expire(self) -> None:
        self._expired = True
        for sock in (self.ftp.sock, self._data):
            if sock is not None:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _connect(self) -> None:
        server = self.server
        ftp = self.ftp
        address = server.addresses.resolve(server.host, server.port)[0]
        try:
            ftp.connect(address, server.port)
            ftp.host = server.host  # the certificate names the host, not its address
            ftp.set_pasv(True)  # data connections go to the checked address, whatever PASV answers
            ftp.login(server.username, server.password)
            try:
                features = ftp.sendcmd("FEAT").upper()
            except ftplib.error_perm:
                features = ""
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()  # data connections in TLS too, as servers require by default
        except BaseException:
            ftp.close()
            raise
        self._binary = False
        self.use_mlsd = "MLST" in features
        self.use_epsv = "EPSV" in features or ftp.af != socket.AF_INET
        if "UTF8" in features:
            with suppress(ftplib.error_perm):
                ftp.sendcmd("OPTS UTF8 ON")

    def ls(self, path: str) -> list[Child]:
        """A folder's entries, never cached: MLSD, or LIST when the server lacks it.

        Raises `FileNotFoundError` for a missing folder (550); other errors pass through.
        """
        self._settle()
        try:
            return self._list(path.rstrip("/") or "/")
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):
                raise NotFound(f"FTP {exc}", path) from exc
            raise

    def _list(self, path: str) -> list[Child]:
        if self.use_mlsd:
            try:
                return [child for line in self._lines(f"MLSD {path}")
                        if (child := mlsd_child(*_mlsd_facts(line))) is not None]
            except ftplib.error_perm as exc:
                if not str(exc).startswith(("500", "501", "502", "504")):
                    raise
                self.use_mlsd = False
        # LIST's arguments are not portable (options, globbing, spaces): list the current folder.
        self.ftp.cwd(path)
        now = datetime.now()
        return [child for line in self._lines("LIST") if (child := parse_list_line(line, now)) is not None]

    def _lines(self, command: str) -> list[str]:
        """The lines of a listing command's answer, read up to the server's listing caps.

        Bound: at most ``max_listing_bytes`` bytes and ``max_listing_entries`` lines, each of at
        most ftplib's ``maxline``; past them `ResponseTooLarge` is raised and the connection is
        left to be discarded (its reply is still pending).
        """
        ftp = self.ftp
        self._binary = False
        ftp.voidcmd("TYPE A")
        lines: list[str] = []
        received = 0
        conn = ftp.transfercmd(command)
        self._data = conn
        try:
            with conn, conn.makefile("rb") as data:
                while line := data.readline(ftp.maxline + 1):
                    received += len(line)
                    if received > self.server.max_listing_bytes or len(line) > ftp.maxline:
                        raise ResponseTooLarge(self.server.max_listing_bytes, "max_listing_bytes")
                    if len(lines) >= self.server.max_listing_entries:
                        raise ResponseTooLarge(self.server.max_listing_entries, "max_entries and max_folders",
                                               "entries")
                    lines.append(line.decode(ftp.encoding, "replace").rstrip("\r\n"))
                if isinstance(conn, ssl.SSLSocket):
                    conn.unwrap()
        finally:
            self._data = None
        ftp.voidresp()
        return lines

    def _ensure_binary(self) -> None:
        """TYPE I once, and again only after a listing switched to ASCII: REST and SIZE need it."""
        if not self._binary:
            self.ftp.voidcmd("TYPE I")
            self._binary = True

    def size(self, path: str) -> int:
        """The file's size, by the SIZE command."""
        self._settle()
        self._ensure_binary()
        size = self.ftp.size(path)
        if size is None:
            raise ftplib.error_perm(f"550 no size for {path}")
        return int(size)

    def cat_file(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file, in two round trips: the commands, then the data.

        EPSV (PASV where the server lacks it), REST when `start` > 0, and RETR go out in one
        write, after the ABOR of the previous transfer if it was left unfinished (and TYPE I
        once). The server answers EPSV, then queues RETR until the data connection comes;
        ProFTPD, vsftpd and pyftpdlib all do. Once ``end - start`` bytes are in, the data
        connection is closed and ABOR is owed: the server stops sending at once (a closed data
        connection fails its writes), and the next command waits for no reply of this transfer.

        Bound: ``end - start`` bytes are read, whatever the server sends; each reply at most
        `MAX_REPLY_LINES` lines of ftplib's ``maxline``.
        """
        wanted = max(0, end - start)
        commands = [] if self._binary else ["TYPE I"]
        commands += ["EPSV" if self.use_epsv else "PASV", *([f"REST {start}"] if start else []), f"RETR {path}"]
        self.in_sync = False  # until every reply of this exchange is read
        self._send(commands)
        if not self._binary:
            self._reply("2")
            self._binary = True
        port = self._passive_port(self._reply("2"))
        conn = socket.create_connection((self._control.getpeername()[0], port), self.server.timeout_s)
        try:
            self._data = conn
            if start:
                self._reply("3")
            self._reply("1", final_is_error=True)
            conn = self._protected(conn)
            self._data = conn
            chunks, finished = _receive(conn, wanted)
        finally:
            self._data = None
            conn.close()
        self._owed += 1  # the transfer's own end: 226, or 426 once aborted
        self._abort_owed = not finished
        self.in_sync = True
        return b"".join(chunks)

    @property
    def _control(self) -> socket.socket:
        """The control connection's socket (`EOFError` once closed)."""
        if self.ftp.sock is None:
            raise EOFError
        return self.ftp.sock

    def _passive_port(self, reply: str) -> int:
        """The port of an EPSV or PASV answer; its address is never used (see the module's docstring)."""
        if self.use_epsv:
            return ftplib.parse229(reply, ("", 0))[1]
        return ftplib.parse227(reply)[1]

    def _protected(self, conn: socket.socket) -> socket.socket:
        """The data connection in TLS, resuming the control connection's session, after PROT P."""
        ftp = self.ftp
        if isinstance(ftp, _TLSSessionReuse) and ftp.protected:
            session = ftp.sock.session if isinstance(ftp.sock, ssl.SSLSocket) else None
            return ftp.context.wrap_socket(conn, server_hostname=ftp.host, session=session)
        return conn

    def _send(self, commands: list[str]) -> None:
        """Send `commands` in one write, after ABOR when a transfer was left unfinished; then read
        the replies owed to earlier commands, whatever they say (an aborted RETR's 426, ABOR's 226
        or 225, a 502 from a server without ABOR)."""
        if self._abort_owed:
            commands = ["ABOR", *commands]
            self._owed += 1
            self._abort_owed = False
        for command in commands:
            if any(c in command for c in "\r\n"):
                raise ValueError("an FTP command cannot hold a line break")
        self._control.sendall("".join(f"{c}\r\n" for c in commands).encode(self.ftp.encoding))
        while self._owed:
            self._owed -= 1
            self._read_reply()

    def _settle(self) -> None:
        """Read what the server owes (after an ABOR if one is owed) before a plain ftplib exchange."""
        if self._abort_owed or self._owed:
            self._send([])

    def _reply(self, expected: str, final_is_error: bool = False) -> str:
        """The next reply, which must start with `expected`: 4xx raise `error_temp`, 5xx
        `error_perm`, anything else `error_reply`. A refused RETR (`final_is_error`) ends the
        exchange with the connection in sync."""
        reply = self._read_reply()
        if reply.startswith(expected):
            return reply
        if final_is_error and reply[:1] in "45":
            self.in_sync = True
        if reply[:1] == "4":
            raise ftplib.error_temp(reply)
        if reply[:1] == "5":
            raise ftplib.error_perm(reply)
        raise ftplib.error_reply(reply)

    def _read_reply(self) -> str:
        """One reply, multi-line ones included. Bound: `MAX_REPLY_LINES` lines."""
        line = self.ftp.getline()
        if line[3:4] == "-":
            code, lines = line[:3], 1
            while True:
                nextline = self.ftp.getline()
                lines += 1
                if lines > MAX_REPLY_LINES:
                    raise ftplib.error_proto(f"a reply of more than {MAX_REPLY_LINES} lines")
                line += "\n" + nextline
                if nextline[:3] == code and nextline[3:4] != "-":
                    break
        return line

    def quit(self) -> None:
        """Say goodbye politely (after ABOR if a transfer was left unfinished), then close."""
        try:
            self._send(["QUIT"])
            self._read_reply()
        except (ftplib.Error, OSError, EOFError):
            pass
        self.ftp.close()


def _receive(conn: socket.socket, wanted: int) -> tuple[list[bytes], bool]:
    """Up to `wanted` bytes from a data connection, and whether it ended first (the whole file)."""
    chunks: list[bytes] = []
    received = 0
    while received < wanted:
        block = conn.recv(min(65536, wanted - received))
        if not block:
            return chunks, True
        chunks.append(block)
        received += len(block)
    return chunks, False


def _mlsd_facts(line: str) -> tuple[str, dict[str, str]]:
    """The name and facts of one MLSD line (``type=file;size=10; name``), as ftplib's ``mlsd`` reads them."""
    facts, _, name = line.partition(" ")
    return name, {key.lower(): value for key, _, value in (f.partition("=") for f in facts[:-1].split(";"))}


class ConnectionPool:
    """At most `limit` logged-in connections, each used by one thread at a time, reused by all.

    A connection that failed at the socket or protocol level is closed and replaced on demand.
    When the server refuses a new connection because it is full while this pool already holds
    some, the pool shrinks to what it holds instead of failing.
    """

    def __init__(self, connect: Callable[[float], FTPConnection], limit: int) -> None:
        self._connect = connect
        self.limit = limit
        self._idle: list[FTPConnection] = []
        self._open = 0
        self._cond = threading.Condition()

    @contextmanager
    def connection(self, seconds: float) -> Iterator[FTPConnection]:
        """A logged-in connection for the duration of the block, logging in and the block's
        exchanges taking `seconds` at most in all (the wait for a free connection apart)."""
        started = time.monotonic()
        conn = self._acquire(seconds)
        try:
            with conn.deadline(seconds - (time.monotonic() - started)):
                yield conn
        except BaseException as exc:
            if _broken(exc) or not conn.in_sync:
                self._discard(conn)
            else:
                self._release(conn)
            raise
        self._release(conn)

    def _acquire(self, seconds: float) -> FTPConnection:
        while True:
            with self._cond:
                while not self._idle and self._open >= self.limit:
                    self._cond.wait()
                if self._idle:
                    return self._idle.pop()
                self._open += 1
            try:
                return self._connect(seconds)
            except ftplib.Error as exc:
                with self._cond:
                    self._open -= 1
                    full = str(exc)[:1] in "45" and _SERVER_FULL.search(str(exc)) is not None
                    if full and self._open > 0:
                        self.limit = self._open
                        log.warning("FTP server full: using fewer connections", extra={"connections": self._open})
                        continue
                    self._cond.notify()
                raise
            except BaseException:
                with self._cond:
                    self._open -= 1
                    self._cond.notify()
                raise

    def _release(self, conn: FTPConnection) -> None:
        with self._cond:
            self._idle.append(conn)
            self._cond.notify()

    def _discard(self, conn: FTPConnection) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify()
        conn.ftp.close()

    def close(self) -> None:
        """Log out of the idle connections; the pool connects again when asked for one."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.quit()


class FTPStorage(Storage):
    """A livrable on an FTP or FTPS server, read through a small pool of logged-in connections."""

    def __init__(self, server: FTPServer, root: str, url: str, policy: RetryPolicy, max_connections: int = 2,
                 limits: CrawlLimits | None = None) -> None:
        """`url` is the form shown (`Location.shown`), without the password."""
        self.server = server
        self.root = "/" + root.strip("/") if root.strip("/") else ""
        self.url = url
        self.policy = policy
        self.limits = limits or CrawlLimits()
        self.pool = ConnectionPool(lambda seconds: FTPConnection(server, seconds), max_connections)

    @classmethod
    def from_url(cls, url: str, options: AccessOptions) -> FTPStorage:
        """The storage of an ``ftp://[user[:password]@]host[:port]/path`` or ``ftps://…`` URL."""
        location = parse_location(url)
        tls = location.scheme == "ftps"
        server = FTPServer(
            host=location.host, port=location.port or 21, username=location.username,
            password=location.password or "", tls=tls, timeout_s=options.retry.timeout_s,
            addresses=options.addresses, ssl_context=options.ssl_context() if tls else None,
            max_listing_bytes=options.max_listing_bytes, max_listing_entries=options.crawl.max_listing_entries)
        return cls(server, unquote(location.path), location.shown, options.retry, options.ftp_max_connections,
                   options.crawl)

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}"

    def _call(self, what: str, operation: Callable[[FTPConnection], T]) -> T:
        def attempt() -> T:
            with self.pool.connection(self.policy.timeout_s) as conn:
                return operation(conn)

        return retry_sync(self.policy, what, attempt, classify_ftp)

    def list_files(self) -> list[FileEntry]:
        """List the folders level by level, as many at once as the pool has connections."""
        return crawl_in_threads(Crawl(self.url, self.limits), self._list_folder, self.pool.limit)

    def _list_folder(self, folder: str) -> list[Child]:
        path = self._full(folder.rstrip("/")) if folder else (self.root or "/")
        return self._call(folder or "/", lambda conn: conn.ls(path))

    def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """One RETR, aborted after `length` bytes; the size comes from the listing (else SIZE)."""
        full = self._full(entry.path)

        def read(conn: FTPConnection) -> tuple[bytes, FileEntry]:
            size = entry.size if entry.size is not None else conn.size(full)
            data = conn.cat_file(full, 0, min(length, size)) if size else b""
            return data, replace(entry, size=size)

        return self._read(entry.path, read)

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """REST `start`, then RETR aborted after ``end - start`` bytes."""
        full = self._full(path)
        return self._read(path, lambda conn: conn.cat_file(full, start, end))

    def _read(self, path: str, operation: Callable[[FTPConnection], T]) -> T:
        try:
            return self._call(path, operation)
        except FileNotFoundError as exc:
            raise ReadError(path, exc.how if isinstance(exc, NotFound) else "not found") from exc
        except ForbiddenAddress as exc:
            raise ReadError(path, str(exc)) from exc

    def close(self) -> None:
        """Log out of every idle connection."""
        self.pool.close()
