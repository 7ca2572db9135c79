"""The credentials a scan needs, kept only encrypted in the store (Fernet, keys from the environment).

``PCRS_INDEXER_SECRET_KEY`` holds one Fernet key, or several separated by commas: the first
encrypts, every one decrypts (rotate by putting the new key first). Without a key nothing with a
credential can be stored: publishing such a livrable is refused, and a scan of a storage whose
credentials are stored fails, each with one line saying so.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from indexer.errors import ConfigError

NO_KEY = ("PCRS_INDEXER_SECRET_KEY is not set: storage credentials are kept only encrypted; make a key with "
          "`pcrs-indexer db new-key` and give it to every worker and command of the fleet")


def new_key() -> str:
    """A new Fernet key, for ``PCRS_INDEXER_SECRET_KEY``."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Seals and opens credentials with the keys given (see the module's docstring)."""

    def __init__(self, keys: str | None) -> None:
        parts = [k.strip() for k in (keys or "").split(",") if k.strip()]
        try:
            self._fernet = MultiFernet([Fernet(k) for k in parts]) if parts else None
        except ValueError:
            raise ConfigError("PCRS_INDEXER_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes): "
                              "make one with `pcrs-indexer db new-key`") from None

    @property
    def ready(self) -> bool:
        """Whether a key is configured."""
        return self._fernet is not None

    def seal(self, text: str) -> str:
        """`text` encrypted; raises `ConfigError` without a key."""
        if self._fernet is None:
            raise ConfigError(NO_KEY)
        return self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def open(self, token: str) -> str:
        """What `seal` sealed; raises `ConfigError` without a key, or with none of the keys that sealed it."""
        if self._fernet is None:
            raise ConfigError(NO_KEY)
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise ConfigError("the stored credentials do not open with PCRS_INDEXER_SECRET_KEY: "
                              "was the key that sealed them removed?") from None
