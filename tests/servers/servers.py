"""Real servers on loopback for the tests, each started in its own process with a generated config.

Every server serves a folder of the test's own and logs each request, so tests count what the
indexer really asked for on the server side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def find_binary(name: str, *candidates: str) -> str:
    """The path of a server binary, on PATH or in the sbin folders Debian uses."""
    for candidate in (shutil.which(name), *candidates):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} is not installed: run the README's test command (make test)")


@dataclass(frozen=True, slots=True)
class Request:
    """One request seen by a server."""

    method: str
    path: str
    status: int
    bytes_sent: int
    range: str


class Nginx:
    """nginx serving `root` with autoindex on 127.0.0.1, one access-log line per request."""

    def __init__(self, root: Path, workdir: Path, directives: str = "") -> None:
        self.root = root
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "access.log"
        self.directives = directives
        """Extra ``http`` block directives: another access log, rate or connection limits…"""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        """Write the config and start nginx in the foreground of a child process."""
        binary = find_binary("nginx", "/usr/sbin/nginx")
        self.workdir.mkdir(parents=True, exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.workdir / "nginx.conf"
        conf.write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format counted '$request_method|$request_uri|$status|$bytes_sent|$http_range';
    access_log {self.log} counted;
    client_body_temp_path {self.workdir}/body;
    proxy_temp_path {self.workdir}/proxy;
    fastcgi_temp_path {self.workdir}/fastcgi;
    uwsgi_temp_path {self.workdir}/uwsgi;
    scgi_temp_path {self.workdir}/scgi;
    types {{ image/tiff tif tiff; image/jp2 jp2; text/plain tfw j2w wld prj; }}
    default_type application/octet-stream;
    {self.directives}
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        autoindex on;
        autoindex_exact_size on;
        charset utf-8;
    }}
}}
""")
        self.process = subprocess.Popen([binary, "-c", str(conf), "-p", str(self.workdir)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop nginx and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def requests(self) -> list[Request]:
        """Every request logged so far."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            method, path, status, sent, rng = line.split("|", 4)
            out.append(Request(method, path, int(status), int(sent), "" if rng == "-" else rng))
        return out

    def reset_log(self) -> None:
        """Forget the requests logged so far (nginx keeps appending to the same file)."""
        if self.log.exists():
            self.log.write_text("")


def public_folder(prefix: str = "pcrs-served-") -> Path:
    """A new folder every user can read: servers that drop root privileges serve from here.

    pytest's own temporary folders are private to root, so Apache's workers, the FTP and SFTP
    sessions (which run as unprivileged users) could not read them. The caller removes it.
    """
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


S = TypeVar("S")


def settled(read: Callable[[], S], still_s: float = 0.2, timeout_s: float = 5.0) -> S:
    """What `read` returns once it stayed the same for `still_s` (a server's log being written), bounded."""
    seen = read()
    still_since = time.monotonic()
    deadline = still_since + timeout_s
    while time.monotonic() - still_since < still_s and time.monotonic() < deadline:
        time.sleep(0.05)
        again = read()
        if again != seen:
            seen, still_since = again, time.monotonic()
    return seen


def _access_log(path: Path) -> list[Request]:
    """Requests of a ``method|path|status|bytes|range`` access log (nginx, Apache, lighttpd)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        method, target, status, sent, rng = line.split("|", 4)
        out.append(Request(method, target, int(status), 0 if sent in ("-", "") else int(sent),
                           "" if rng in ("-", "") else rng))
    return out


class _Process:
    """A server run as a child process in the foreground, on a free port of 127.0.0.1."""

    stop_signal = signal.SIGTERM
    host_address = "127.0.0.1"
    """The loopback address listened on (Linux answers on all of 127.0.0.0/8)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr = workdir / "stderr.log"

    def _spawn(self, command: list[str], env: dict[str, str] | None = None, timeout: float = 15.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.stderr, "ab") as err:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err,
                                            env=env, start_new_session=True)
        try:
            wait_for_port(self.port, timeout, self.host_address)
        except TimeoutError as exc:
            self.stop()
            logs = "".join(p.read_text(errors="replace") for p in (self.stderr, self.workdir / "error.log")
                           if p.exists())
            raise RuntimeError(f"{command[0]} did not start: {logs[-2000:]}") from exc

    def stop(self) -> None:
        """Stop the server and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class _HTTPProcess(_Process):
    """An HTTP server process serving `root`, its requests logged to `log` in the ``counted`` form."""

    def __init__(self, root: Path, workdir: Path, log_name: str = "access.log") -> None:
        super().__init__(workdir)
        self.root = root
        self.log = workdir / log_name

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host_address}:{self.port}"

    def requests(self) -> list[Request]:
        """Every request logged so far."""
        return _access_log(self.log)


class Apache(_HTTPProcess):
    """Apache httpd with mod_autoindex serving `root` three ways, one access-log line per request.

    ``/fancy/`` is FancyIndexing (a ``<pre>`` with sort links), ``/table/`` FancyIndexing with
    HTMLTable, ``/plain/`` the plain list.
    """

    stop_signal = signal.SIGWINCH  # graceful stop

    def start(self) -> Apache:
        """Write the config and start httpd in the foreground."""
        binary = find_binary("apache2", "/usr/sbin/apache2")
        modules = "/usr/lib/apache2/modules"
        self.workdir.mkdir(parents=True, exist_ok=True)
        aliases = {"fancy": "FancyIndexing", "table": "FancyIndexing HTMLTable", "plain": ""}
        blocks = "\n".join(f"""
Alias /{name}/ "{self.root}/"
<Location /{name}/>
    IndexOptions {options} Charset=UTF-8
</Location>""" for name, options in aliases.items())
        conf = self.workdir / "httpd.conf"
        conf.write_text(f"""
ServerRoot "{self.workdir}"
ServerName 127.0.0.1
Listen 127.0.0.1:{self.port}
PidFile "{self.workdir}/httpd.pid"
DefaultRuntimeDir "{self.workdir}"
Mutex file:{self.workdir} default
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule alias_module {modules}/mod_alias.so
LoadModule dir_module {modules}/mod_dir.so
LoadModule autoindex_module {modules}/mod_autoindex.so
LoadModule mime_module {modules}/mod_mime.so
TypesConfig /dev/null
User www-data
Group www-data
ErrorLog "{self.workdir}/error.log"
LogLevel warn
LogFormat "%m|%U|%>s|%B|%{{Range}}i" counted
CustomLog "{self.log}" counted
AddType image/tiff .tif .tiff
AddType image/jp2 .jp2
AddType text/plain .tfw .txt
DocumentRoot "{self.root}"
<Directory "{self.root}">
    Options +Indexes +FollowSymLinks
    Require all granted
</Directory>
{blocks}
""")
        self._spawn([binary, "-f", str(conf), "-DFOREGROUND"])
        return self


class Lighttpd(_HTTPProcess):
    """lighttpd with mod_dirlisting serving `root`, one access-log line per request.

    lighttpd buffers a log file, so it logs through a pipe to ``cat``, which writes each line.
    """

    def start(self) -> Lighttpd:
        """Write the config and start lighttpd in the foreground."""
        binary = find_binary("lighttpd", "/usr/sbin/lighttpd")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "lighttpd.conf"
        conf.write_text(f"""
server.modules = ("mod_dirlisting", "mod_accesslog")
server.document-root = "{self.root}"
server.bind = "127.0.0.1"
server.port = {self.port}
server.errorlog = "{self.workdir}/error.log"
server.pid-file = "{self.workdir}/lighttpd.pid"
dir-listing.activate = "enable"
dir-listing.encoding = "utf-8"
accesslog.filename = "|/bin/cat >> {self.log}"
accesslog.format = "%m|%U|%s|%b|%{{Range}}i"
mimetype.assign = (".tif" => "image/tiff", ".jp2" => "image/jp2", ".txt" => "text/plain",
                   "" => "application/octet-stream")
""")
        self._spawn([binary, "-D", "-f", str(conf)])
        return self

    def requests(self) -> list[Request]:
        """Every request logged so far, once the log pipe has settled."""
        return settled(lambda: _access_log(self.log))


_HTTP_SERVER_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PythonHTTP(_HTTPProcess):
    """Python's ``http.server`` serving `root`: a bare list of links, no sizes, no ranges.

    It logs to its stderr, not to `log`.
    """

    def start(self) -> PythonHTTP:
        """Start ``python -m http.server``."""
        self._spawn([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                     "--directory", str(self.root)])
        return self

    def requests(self) -> list[Request]:
        """Every request logged so far (its log has no byte counts nor ranges)."""
        out = []
        for line in _ANSI.sub("", self.stderr.read_text(errors="replace")).splitlines():
            match = _HTTP_SERVER_LINE.search(line)
            if match:
                out.append(Request(match["method"], match["path"], int(match["status"]), 0, ""))
        return out


class FaultyHTTP(_HTTPProcess):
    """An HTTP server failing on purpose (see `tests/fault_server.py`), each request logged."""

    def __init__(self, root: Path, workdir: Path, *, fail_first: int = 0, stall: str | None = None,
                 redirect: str | None = None, redirect_status: int = 302, silent: bool = False,
                 hostile: str | None = None, down_while: Path | None = None,
                 hold_while: Path | None = None) -> None:
        super().__init__(root, workdir, "requests.log")
        self.options = ["--fail-first", str(fail_first), "--redirect-status", str(redirect_status)]
        if down_while is not None:
            self.options += ["--down-while", str(down_while)]
        if hold_while is not None:
            self.options += ["--hold-while", str(hold_while)]
        if stall is not None:
            self.options += ["--stall", stall]
        if redirect is not None:
            self.options += ["--redirect", redirect]
        if silent:
            self.options.append("--silent")
        if hostile is not None:
            self.options += ["--hostile", hostile]

    def start(self) -> FaultyHTTP:
        """Start the server script."""
        script = Path(__file__).with_name("fault_server.py")
        self._spawn([sys.executable, str(script), str(self.root), str(self.port), "--log", str(self.log),
                     "--host", self.host_address, *self.options])
        return self


class HostileFTP(_Process):
    """An FTP server misbehaving as `mode` says (see `tests/servers/hostile_ftp.py`), each command logged."""

    def __init__(self, workdir: Path, mode: str, delay: float = 2.0) -> None:
        super().__init__(workdir)
        self.mode = mode
        self.delay = delay
        self.log = workdir / "commands.log"

    @property
    def host(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> HostileFTP:
        """Start the server script."""
        script = Path(__file__).with_name("hostile_ftp.py")
        self._spawn([sys.executable, str(script), str(self.port), "--log", str(self.log), "--mode", self.mode,
                     "--delay", str(self.delay)])
        return self

    def commands(self) -> list[tuple[int, str, str, float]]:
        """Every command logged so far: (session, command, argument, time.time() when it came)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            when, session, command, argument = line.split("|", 3)
            out.append((int(session), command, argument, float(when)))
        return out


class HostileSFTP(HostileFTP):
    """An SFTP server misbehaving as `mode` says (see `tests/servers/hostile_sftp.py`), each request logged."""

    def start(self) -> HostileSFTP:
        """Start the server script."""
        script = Path(__file__).with_name("hostile_sftp.py")
        self._spawn([sys.executable, str(script), str(self.port), "--log", str(self.log), "--mode", self.mode])
        return self

    def requests(self) -> list[tuple[str, str, float]]:
        """Every SFTP request logged so far: (request, path, time.time() when it came)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            when, request, path = line.split("|", 2)
            out.append((request, path, float(when)))
        return out


@dataclass(frozen=True, slots=True)
class FTPCommand:
    """One command an FTP session sent, as ProFTPD logged it."""

    session: int
    command: str
    argument: str
    status: str


class ProFTPD(_Process):
    """ProFTPD on 127.0.0.1: a user with a password and an anonymous area, both over `root`.

    At most `max_clients` connections from one host, as public servers do. Every command is
    logged with its session's process id, so tests count logins, connections and transfers.
    `mlsd=False` stops advertising MLSD (clients fall back to LIST); `tls=True` requires
    explicit TLS (AUTH TLS), with `cert`/`key` as the server's certificate.
    """

    stop_signal = signal.SIGTERM

    def __init__(self, root: Path, workdir: Path, *, user: str = "pcrs", password: str = "ftp-secret",
                 max_clients: int = 2, mlsd: bool = True, tls: tuple[Path, Path] | None = None) -> None:
        super().__init__(workdir)
        self.root = root
        self.user = user
        self.password = password
        self.max_clients = max_clients
        self.mlsd = mlsd
        self.tls = tls
        self.log = workdir / "commands.log"

    @property
    def host(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> ProFTPD:
        """Write the config and the user file, then start proftpd in the foreground."""
        binary = find_binary("proftpd", "/usr/sbin/proftpd")
        self.workdir.mkdir(parents=True, exist_ok=True)
        hashed = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=self.password.encode(),
                                capture_output=True, check=True).stdout.decode().strip()
        users = self.workdir / "ftpd.passwd"
        users.write_text(f"{self.user}:{hashed}:65534:65534::{self.root}:/bin/false\n"
                         f"ftp:*:65534:65534::{self.root}:/bin/false\n")
        users.chmod(0o600)
        groups = self.workdir / "ftpd.group"
        groups.write_text("nogroup:x:65534:\n")
        groups.chmod(0o600)
        tls = ""
        if self.tls:
            cert, key = self.tls
            tls = f"""
ModulePath /usr/lib/proftpd
LoadModule mod_tls.c
TLSEngine on
TLSRequired on
TLSProtocol TLSv1.2 TLSv1.3
TLSRSACertificateFile {cert}
TLSRSACertificateKeyFile {key}
TLSVerifyClient off
TLSLog {self.workdir}/tls.log
"""
        conf = self.workdir / "proftpd.conf"
        conf.write_text(f"""
ServerType standalone
ServerName "pcrs-test"
DefaultServer on
DefaultAddress 127.0.0.1
Port {self.port}
UseIPv6 off
User nobody
Group nogroup
PidFile {self.workdir}/proftpd.pid
ScoreboardFile {self.workdir}/proftpd.scoreboard
DelayEngine off
WtmpLog off
UseReverseDNS off
SystemLog {self.workdir}/system.log
TransferLog {self.workdir}/xferlog
AuthOrder mod_auth_file.c
AuthUserFile {users}
AuthGroupFile {groups}
RequireValidShell off
DefaultRoot ~
MaxInstances 50
MaxClientsPerHost {self.max_clients} "Sorry, the maximum number of clients (%m) from your host are already connected."
TimeoutIdle 120
FactsAdvertise {"on" if self.mlsd else "off"}
LogFormat counted "%P|%m|%s|%r"
ExtendedLog {self.log} ALL counted
{tls}
<Anonymous {self.root}>
    User ftp
    Group nogroup
    UserAlias anonymous ftp
    RequireValidShell off
    <Limit WRITE>
        DenyAll
    </Limit>
</Anonymous>
""")
        self._spawn([binary, "-n", "-c", str(conf)])
        return self

    def commands(self) -> list[FTPCommand]:
        """Every command logged so far, in order, once the log has settled.

        ProFTPD logs a command after its reply (``221`` before the ``QUIT`` line): a client that
        saw the reply may read the log before the line is there.
        """
        return settled(self._commands)

    def _commands(self) -> list[FTPCommand]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            pid, command, status, request = line.split("|", 3)
            argument = request.partition(" ")[2]
            out.append(FTPCommand(int(pid), command, argument, status))
        return out

    def logins(self) -> list[int]:
        """The sessions that logged in successfully, one entry per login."""
        return [c.session for c in self.commands() if c.command == "PASS" and c.status == "230"]


SFTP_USER = "pcrs-sftp"
"""The system user the SFTP tests log in as; created by `SSHD.start` when missing."""


class SSHD(_Process):
    """OpenSSH's sshd with only the internal-sftp subsystem, for the test user (password or key).

    Runs as root in the foreground (``-D -e``); its log, on stderr, shows every login.
    """

    def __init__(self, workdir: Path, password: str = "sftp-Secret-4242") -> None:
        super().__init__(workdir)
        self.password = password
        self.client_key = workdir / "client_key"
        self._keys_folder: Path | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    def _ensure_user(self) -> None:
        if subprocess.run(["getent", "passwd", SFTP_USER], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", SFTP_USER], check=True, capture_output=True)
        subprocess.run(["chpasswd"], input=f"{SFTP_USER}:{self.password}".encode(), check=True, capture_output=True)

    def start(self) -> SSHD:
        """Create the user and keys, write the config and start sshd."""
        binary = find_binary("sshd", "/usr/sbin/sshd")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._ensure_user()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        host_key = self.workdir / "host_key"
        for key in (host_key, self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        # sshd reads the authorized keys as the user, who cannot enter pytest's private folders.
        self._keys_folder = public_folder("pcrs-sshd-keys-")
        authorized = self._keys_folder / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o644)
        conf = self.workdir / "sshd_config"
        conf.write_text(f"""
Port {self.port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {self.workdir}/sshd.pid
AuthorizedKeysFile {authorized}
StrictModes no
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowUsers {SFTP_USER}
LogLevel VERBOSE
MaxStartups 20:30:60
Subsystem sftp internal-sftp -l INFO
ForceCommand internal-sftp -l INFO
""")
        self._spawn([binary, "-D", "-e", "-f", str(conf)])
        return self

    def stop(self) -> None:
        """Stop sshd and remove the authorized keys."""
        super().stop()
        if self._keys_folder is not None:
            shutil.rmtree(self._keys_folder, ignore_errors=True)

    def logins(self) -> list[str]:
        """How each successful login authenticated: ``password`` or ``publickey``."""
        text = self.stderr.read_text(errors="replace")
        return re.findall(rf"Accepted (\w+) for {SFTP_USER} ", text)


class MotoS3(_Process):
    """moto's S3 server: buckets filled from folders, anonymous-readable or not."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1") -> None:
        super().__init__(workdir)
        self.host_address = host

    @property
    def url(self) -> str:
        """The endpoint URL."""
        return f"http://{self.host_address}:{self.port}"

    def start(self) -> MotoS3:
        """Start ``moto_server`` in a child process."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._spawn([sys.executable, "-m", "moto.server", "-H", self.host_address, "-p", str(self.port)], env=env,
                    timeout=30.0)
        return self

    def upload(self, folder: Path, bucket: str, prefix: str, *, public: bool) -> None:
        """Create `bucket` and copy `folder` under `prefix`; `public` lets anyone list and read it."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                              aws_access_key_id="moto-key", aws_secret_access_key="moto-secret")
        client.create_bucket(Bucket=bucket)
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
        if public:
            client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
                               "Action": ["s3:GetObject", "s3:ListBucket"],
                               "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}],
            }))

    def requests(self) -> list[Request]:
        """Every request logged so far (method, path and status)."""
        out = []
        for line in _ANSI.sub("", self.stderr.read_text(errors="replace")).splitlines():
            match = _HTTP_SERVER_LINE.search(line)
            if match:
                out.append(Request(match["method"], match["path"], int(match["status"]), 0, ""))
        return out


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key; the certificate doubles as the CA file."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key
