"""Download tokens: signed per storage, valid 24 to 72 hours, refused with a reason otherwise."""

from __future__ import annotations

import pytest

from indexer.api.auth import TokenRefused, check_download_token, issue_download_token

SECRET = "s3cret-for-tokens"
NOW = 1_800_000_000.0


def test_a_token_opens_its_storage_until_it_expires() -> None:
    token = issue_download_token(7, SECRET, NOW, ttl=24 * 3600)
    assert token.startswith(f"{int(NOW) + 86400}.")
    check_download_token(token, 7, SECRET, NOW)
    check_download_token(token, "7", SECRET, NOW + 86399)
    with pytest.raises(TokenRefused, match="^download token expired$"):
        check_download_token(token, 7, SECRET, NOW + 86400)


@pytest.mark.parametrize(("token", "storage", "secret", "reason"), [
    (None, 7, SECRET, "a download token is required"),
    ("", 7, SECRET, "a download token is required"),
    ("garbage", 7, SECRET, "download token not valid"),
    ("12.", 7, SECRET, "download token not valid"),
    ("x" * 200, 7, SECRET, "download token not valid"),
    ("OTHER", 8, SECRET, "download token not valid for this storage"),
    ("OTHER", 7, "another-secret", "download token not valid for this storage"),
])
def test_refused_tokens_say_why(token: str | None, storage: int, secret: str, reason: str) -> None:
    if token == "OTHER":
        token = issue_download_token(7, SECRET, NOW)
    with pytest.raises(TokenRefused, match=f"^{reason}"):
        check_download_token(token, storage, secret, NOW)


def test_a_token_signed_for_longer_than_72_hours_is_refused_and_none_is_issued() -> None:
    with pytest.raises(ValueError, match="24 to 72 hours"):
        issue_download_token(7, SECRET, NOW, ttl=73 * 3600)
    with pytest.raises(ValueError, match="24 to 72 hours"):
        issue_download_token(7, SECRET, NOW, ttl=3600)
    # Minted with the secret for a later day: valid signature, too far ahead.
    late = issue_download_token(7, SECRET, NOW + 10 * 86400)
    with pytest.raises(TokenRefused, match="^download token not valid$"):
        check_download_token(late, 7, SECRET, NOW)
