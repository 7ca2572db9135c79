"""Settings of the indexer, read once from the environment (prefix ``PCRS_INDEXER_``) and ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "pcrs-indexer"


class Settings(BaseSettings):
    """Every tunable of the indexer. Core functions take values, only entry points read this."""

    model_config = SettingsConfigDict(env_prefix="PCRS_INDEXER_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir, description="Where the state store lives.")
    db_url: str | None = Field(default=None, description="SQLAlchemy URL; default a SQLite file in data_dir.")
    concurrency: int = Field(default=16, ge=1, le=256, description="Header reads in flight at once.")
    header_bytes: int = Field(
        default=65536, ge=4096, description="Bytes fetched from the start of each dalle in one request."
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of every network call.")
    retries: int = Field(default=3, ge=0, le=10, description="Retries of a transient network failure.")
    user_agent: str = "pcrs-indexer/0.1 (+https://pcrs.beta.gouv.fr)"

    def database_url(self) -> str:
        """The state store URL: ``db_url`` when set, else a SQLite file in ``data_dir``."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{self.data_dir / 'pcrs-indexer.sqlite'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests build ``Settings(...)`` directly instead."""
    return Settings()
