"""Helpers of the storage tests: one sample livrable served by every kind of real server.

The fixtures using them live in the test modules (the shared conftest belongs to the whole suite).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from indexer.pipeline import index_livrable
from indexer.sample import SampleSpec, make_sample_livrable
from indexer.settings import Settings
from tests.servers.servers import (
    SFTP_USER,
    SSHD,
    Apache,
    Lighttpd,
    MotoS3,
    Nginx,
    ProFTPD,
    PythonHTTP,
    make_certificate,
    public_folder,
)

SPEC = SampleSpec(cols=4, rows=4, pixels=400, resolution_m=0.5, hole=(1, 1))
"""4×4 dalles of 400 px with a hole, in two lots (one with a space and an accent), and the bad
files; several dalles are larger than the 64 KiB header read, so reads stop before the end."""

FTP_PASSWORD = "ftp-Pass-7319"
SFTP_PASSWORD = "sftp-Pass-4242"
S3_KEY, S3_SECRET = "moto-key-id", "moto-Secret-2718"
PUBLIC_BUCKET, KEYED_BUCKET = "pcrs-public", "pcrs-keyed"


@dataclass
class Served:
    """The sample livrable (``root/livrable``) and the servers publishing it."""

    root: Path
    cert: Path
    nginx: Nginx
    apache: Apache
    lighttpd: Lighttpd
    pyhttp: PythonHTTP
    ftp: ProFTPD
    ftp_list: ProFTPD
    ftps: ProFTPD
    sshd: SSHD
    s3: MotoS3

    def stop(self) -> None:
        """Stop every server and remove the published folder."""
        for server in (self.nginx, self.apache, self.lighttpd, self.pyhttp, self.ftp, self.ftp_list, self.ftps,
                       self.sshd, self.s3):
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def livrable(self) -> Path:
        """The livrable's folder on disk."""
        return self.root / "livrable"

    def sources(self) -> dict[str, str]:
        """Every way the same livrable is published, by name."""
        return {
            "nginx": f"{self.nginx.url}/livrable/",
            "apache-fancy": f"{self.apache.url}/fancy/livrable/",
            "apache-table": f"{self.apache.url}/table/livrable/",
            "apache-plain": f"{self.apache.url}/plain/livrable/",
            "lighttpd": f"{self.lighttpd.url}/livrable/",
            "http.server": f"{self.pyhttp.url}/livrable/",
            "ftp-user": f"ftp://pcrs:{FTP_PASSWORD}@{self.ftp.host}/livrable",
            "ftp-anonymous": f"ftp://{self.ftp.host}/livrable",
            "ftp-list": f"ftp://pcrs:{FTP_PASSWORD}@{self.ftp_list.host}/livrable",
            "ftps": f"ftps://pcrs:{FTP_PASSWORD}@{self.ftps.host}/livrable",
            "sftp-password": f"sftp://{SFTP_USER}:{SFTP_PASSWORD}@{self.sshd.host}{self.livrable}",
            "sftp-key": f"sftp://{SFTP_USER}@{self.sshd.host}{self.livrable}",
            "s3-anonymous": f"s3://{PUBLIC_BUCKET}/pcrs/livrable",
            "s3-keyed": f"s3://{KEYED_BUCKET}/livrable",
        }


def start_served(work: Path) -> Served:
    """Publish the sample livrable with every server; `Served.stop` stops them and removes it."""
    root = public_folder()
    make_sample_livrable(root / "livrable", SPEC)
    cert, key = make_certificate(work / "tls")
    started: list[Any] = []

    def start(server: Any) -> Any:
        started.append(server)
        return server.start()

    try:
        bundle = Served(
            root=root, cert=cert,
            nginx=start(Nginx(root, work / "nginx")),
            apache=start(Apache(root, work / "apache")),
            lighttpd=start(Lighttpd(root, work / "lighttpd")),
            pyhttp=start(PythonHTTP(root, work / "pyhttp")),
            ftp=start(ProFTPD(root, work / "ftp", password=FTP_PASSWORD)),
            ftp_list=start(ProFTPD(root, work / "ftp-list", password=FTP_PASSWORD, mlsd=False)),
            ftps=start(ProFTPD(root, work / "ftps", password=FTP_PASSWORD, tls=(cert, key))),
            sshd=start(SSHD(work / "sshd", password=SFTP_PASSWORD)),
            s3=start(MotoS3(work / "moto")),
        )
        bundle.s3.upload(bundle.livrable, PUBLIC_BUCKET, "pcrs/livrable", public=True)
        bundle.s3.upload(bundle.livrable, KEYED_BUCKET, "livrable", public=False)
    except BaseException:
        for server in started:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return bundle


def clear_aws(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """No AWS keys anywhere (environment, files, profile): S3 requests go unsigned."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(folder / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def settings_for(served: Served, data_dir: Path, **overrides: Any) -> Settings:
    """Settings reaching the test servers: loopback allowed, the test CA trusted, moto as S3."""
    values: dict[str, Any] = {
        "data_dir": data_dir, "allowed_networks": ["127.0.0.0/8"], "tls_ca_file": served.cert,
        "s3_endpoint_url": served.s3.url, "retries": 2, "timeout_s": 10.0, "concurrency": 8,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def index_to(settings: Settings, source: str, out: Path) -> dict[str, Any]:
    """Index `source` into `out` with a fresh state store; returns the summary."""
    return index_livrable(settings, source, out, db_url=f"sqlite:///{out}.sqlite").summary()


def outputs(out: Path) -> dict[str, Any]:
    """The two GeoJSON files as bytes, and report.json without the fields that name the source."""
    report = json.loads((out / "report.json").read_text())
    report.pop("source", None)
    report.pop("duration_s", None)
    return {"dalles": (out / "dalles.geojson").read_bytes(), "livrables": (out / "livrables.geojson").read_bytes(),
            "report": report}
