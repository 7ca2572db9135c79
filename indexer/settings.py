"""Settings of the indexer, read once from the environment (prefix ``PCRS_INDEXER_``) and ``.env``."""

from __future__ import annotations

import json
from datetime import timedelta
from functools import lru_cache
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from indexer.secrets import SecretBox


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "pcrs-indexer"


class Settings(BaseSettings):
    """The core's settings: where the store is, how storages are reached and dalles read.

    Core functions take values; only the doors (CLI, tasks) read the settings.
    """

    model_config = SettingsConfigDict(env_prefix="PCRS_INDEXER_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir, description="Where the state store lives.")
    db_url: str | None = Field(default=None, description="SQLAlchemy URL; default a SQLite file in data_dir.")
    concurrency: int = Field(
        default=32, ge=1, le=256, description="Header reads in flight at once, and connections to one HTTP server.")
    header_bytes: int = Field(
        default=16384, ge=4096, description="Bytes fetched from the start of each dalle in one request."
    )
    timeout_s: float = Field(
        default=30.0, gt=0, description="Timeout of every network call; a call and its retries end within "
                                        "timeout_s × (retries + 1).")
    retries: int = Field(default=3, ge=0, le=10, description="Retries of a transient network failure.")
    retry_after_max_s: float = Field(
        default=30.0, ge=0, description="Longest wait a server's Retry-After may impose before a retry.")
    max_listing_bytes: int = Field(
        default=16 * 1024 * 1024, ge=64 * 1024,
        description="Largest listing response read (an HTTP listing page, decoded; an S3 listing page).")
    max_document_bytes: int = Field(
        default=4 * 1024 * 1024, ge=64 * 1024, description="Largest projet document read (file or URL, decoded).")
    max_document_depth: int = Field(
        default=64, ge=8, le=1000, description="Deepest nesting of arrays and objects in a projet document.")
    scan_lease_s: float = Field(
        default=60.0, gt=0, description="A scan of `pcrs-indexer index` whose heartbeat (renewed every quarter of "
                                        "this) is older counts as abandoned, its process gone.")
    max_unreadable_share: float = Field(
        default=0.02, ge=0, le=1, description="Share of a scan's dalles that may be unreadable (the storage "
                                              "failing): above it, and from 3 dalles, the scan fails and the "
                                              "last good result stays.")
    max_failures_in_a_row: int = Field(
        default=32, ge=1, description="Dalles read in a row whose reads failed (unreadable) after which a scan "
                                      "stops reading and fails as the storage unreachable, instead of waiting "
                                      "out every other dalle's deadline.")
    user_agent: str = "pcrs-indexer/0.1 (+https://pcrs.beta.gouv.fr)"
    allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR, comma-separated or a JSON list) a storage may resolve to besides public "
                    "addresses; loopback, private, link-local and multicast ones are refused otherwise.")
    max_depth: int = Field(default=32, ge=0, le=1000, description="Folder levels crawled below a storage's root.")
    max_entries: int = Field(default=2_000_000, ge=1, description="Files listed in one storage before giving up.")
    max_folders: int = Field(
        default=10_000, ge=1, description="Folders visited in one storage, its root included, before giving up.")
    ftp_max_connections: int = Field(
        default=2, ge=1, le=32, description="Logged-in connections to one FTP server; public servers refuse more.")
    tls_ca_file: Path | None = Field(
        default=None, description="Extra CA certificates (PEM) trusted for https:// and ftps:// storages.")
    sftp_key_file: Path | None = Field(default=None, description="Private key for sftp:// storages.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (OVH, Scaleway, MinIO…); default AWS.")
    s3_region: str | None = Field(default=None, description="S3 region; default the AWS configuration's.")
    secret_key: SecretStr | None = Field(
        default=None, description="Fernet key(s), comma-separated, the first encrypting: storage credentials "
                                  "are stored only encrypted with it (`pcrs-indexer db new-key`).")
    projet_api_url: str = Field(
        default="https://pcrs.beta.gouv.fr/",
        description="The PCRS site's API: projet URLs below it are fetched with projet_api_token.")
    projet_api_token: SecretStr | None = Field(
        default=None, description="A token of the PCRS site (admin, or the projet's editor key) for the "
                                  "private stockages' parameters; sent only to projet_api_url.")

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        """Accept ``10.0.0.0/8,127.0.0.1`` as well as a JSON list, and check each network."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v for v in text.replace(",", " ").split() if v]
        if isinstance(value, list):
            for network in value:
                ip_network(str(network), strict=False)
            return [str(network) for network in value]
        return value

    def projet_token(self, location: str) -> str | None:
        """The token to fetch a projet URL with: `projet_api_token` for a URL below `projet_api_url`, else None."""
        base = self.projet_api_url.rstrip("/") + "/"
        if self.projet_api_token is None or not location.startswith(base):
            return None
        return self.projet_api_token.get_secret_value()

    def secret_box(self) -> SecretBox:
        """What seals and opens storage credentials with `secret_key`."""
        return SecretBox(self.secret_key.get_secret_value() if self.secret_key else None)

    def database_url(self) -> str:
        """The state store URL: ``db_url`` when set, else a SQLite file in ``data_dir``."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{self.data_dir / 'pcrs-indexer.sqlite'}"


class FleetSettings(Settings):
    """The settings of the distributed service (`tasks/`): the core's, and the fleet's own."""

    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker (Redis).")
    result_backend: str | None = Field(default=None, description="Celery result backend; default the broker.")
    celery_config: Path | None = Field(
        default=None, description="A Celery settings module applied over the package's (tasks.celeryconfig).")
    output_dir: Path | None = Field(
        default=None, description="Where workers publish each storage's files, in a folder named by its id; "
                                  "default data_dir/outputs.")
    chunk_size: int = Field(default=300, ge=1, le=100_000, description="Dalles whose headers one task reads.")
    host_connection_cap: int = Field(
        default=4, ge=0, description="Connections to one storage host at once, all workers together; 0: no cap.")
    host_lease_s: float = Field(
        default=10.0, gt=0, description="Life of a host connection slot whose worker stopped renewing it.")
    host_wait_s: float = Field(
        default=1800.0, gt=0, description="Longest wait for a host connection slot before the task is retried.")
    reindex_every: timedelta = Field(
        default=timedelta(days=7), description="Age of a storage's last scan that makes it due (seconds or P7D).")
    reindex_batch: int = Field(
        default=50, ge=1, description="Most scans one tick of the schedule queues, the longest-waiting first: "
                                      "storages published together are re-indexed spread over several ticks.")
    reindex_check_every_s: float = Field(default=300.0, gt=0, description="How often beat looks for due storages.")
    watchdog_every_s: float = Field(default=60.0, gt=0, description="How often beat looks for stalled scans.")
    stale_after: timedelta = Field(
        default=timedelta(minutes=15), description="A scan whose heartbeat is older than this is requeued.")
    heartbeat_every_s: float = Field(default=30.0, gt=0, description="How often a busy task records its heartbeat.")
    task_max_retries: int = Field(default=5, ge=0, description="Retries of a task failing transiently.")
    task_retry_backoff_s: float = Field(default=10.0, ge=0, description="First retry delay, doubled each time.")
    task_retry_backoff_max_s: float = Field(default=600.0, ge=0, description="Longest retry delay.")
    visibility_timeout_s: int = Field(
        default=30, ge=4, description="Seconds before a message a lost worker took is delivered again; a live "
                                      "worker renews its own every quarter of this (tasks.visibility).")
    broker_restore_every_s: int = Field(
        default=5, ge=1, description="How often workers look for messages of lost workers to deliver again.")

    @field_validator("reindex_every", "stale_after", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        """Accept a number of seconds (``604800``) as well as an ISO 8601 duration (``P7D``)."""
        if isinstance(value, str):
            try:
                return timedelta(seconds=float(value))
            except ValueError:
                return value
        return value

    def outputs_dir(self) -> Path:
        """Where workers publish each storage's files: ``output_dir``, else ``data_dir/outputs``."""
        return self.output_dir or self.data_dir / "outputs"

    def results_url(self) -> str:
        """The Celery result backend: ``result_backend`` when set, else the broker."""
        return self.result_backend or self.broker_url


class ApiSettings(FleetSettings):
    """The settings of the HTTP API (`pcrs-indexer serve`): the fleet's, and the API's own."""

    admin_token: SecretStr | None = Field(
        default=None, description="The token of the admin routes (`Authorization: Token …`); without it they "
                                  "answer 503: never open by default.")
    download_token_secret: SecretStr | None = Field(
        default=None, description="The secret signing download tokens (HMAC); without it no token is issued "
                                  "nor accepted.")
    download_token_ttl_s: int = Field(
        default=48 * 3600, ge=24 * 3600, le=72 * 3600,
        description="How long a download token is valid, in seconds: 24 to 72 hours.")
    scan_threads: int = Field(
        default=2, ge=1, le=16, description="Scans an API without broker runs at once, in threads of its process.")

    def broker_mode(self) -> bool:
        """Whether a broker is configured (``PCRS_INDEXER_BROKER_URL``): then the API only queues, the fleet scans."""
        return "broker_url" in self.model_fields_set

    def mode(self) -> str:
        """``broker`` when the fleet scans what the API queues, ``in-process`` when the API scans itself."""
        return "broker" if self.broker_mode() else "in-process"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests build ``Settings(...)`` directly instead."""
    return Settings()


@lru_cache(maxsize=1)
def get_fleet_settings() -> FleetSettings:
    """The process-wide settings of the distributed service, read once."""
    return FleetSettings()


@lru_cache(maxsize=1)
def get_api_settings() -> ApiSettings:
    """The process-wide settings of the HTTP API, read once."""
    return ApiSettings()
