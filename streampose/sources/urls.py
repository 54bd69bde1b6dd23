"""Camera URLs as they may be shown (logs, /health, status/ messages, errors): without the
user and password they carry."""

from __future__ import annotations

import re

# A URL inside text: a scheme, ://, then everything up to whitespace or a quote (FFmpeg's
# errors quote the URL they failed on).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")


def mask_credentials(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by ***: user and password
    (rtsp://user:pass@host), or a user part alone (rtsp://token@host)."""
    return _URL.sub(lambda match: _masked(match.group()), text)


def _masked(url: str) -> str:
    scheme, _, rest = url.partition("://")
    # urllib.parse ends the credentials at the first '/', '?' or '#', but cameras take
    # passwords holding them (and '@') unescaped: the credentials run to the last '@'.
    # A URL with an '@' in its path only loses its host too; a password is never shown.
    _, at, host = rest.rpartition("@")
    return f"{scheme}://***@{host}" if at else url
