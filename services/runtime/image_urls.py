"""Expiring HMAC-signed image URLs, shared by the images service (signs) and the edge (verifies).

A URL is ``{prefix}/{sha256-hex}?exp={unix seconds}&sig={base64url(HMAC-SHA256)}`` where the MAC
covers ``"eco2-image-url/v1\\n{sha256-hex}\\n{exp}"``. Verification is constant-time and
rejects expired links. The secret is ECO2_IMAGES_URL_SECRET; in embedded mode, when unset, one is
generated once and kept in ``<data dir>/images/url-secret`` (mode 0600) so every process on the
machine (images service, gateway) reads the same one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from eco2.services.runtime.validation import ascii_digits

_CONTEXT = b"eco2-image-url/v1"
_HEX = re.compile(r"^[0-9a-f]{64}$")
SECRET_FILE = Path("images") / "url-secret"
MIN_SECRET_BYTES = 16


def _mac(secret: bytes, sha256_hex: str, expires_at: int) -> str:
    digest = hmac.new(
        secret, b"\n".join((_CONTEXT, sha256_hex.encode(), str(expires_at).encode())), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(secret: bytes, sha256_hex: str, expires_at: int) -> str:
    """The signature of one image link."""
    if not _HEX.match(sha256_hex):
        raise ValueError("sha256_hex must be 64 lowercase hex digits")
    return _mac(secret, sha256_hex, int(expires_at))


def signed_path(secret: bytes, sha256_hex: str, expires_at: int, prefix: str = "/images") -> str:
    return f"{prefix.rstrip('/')}/{sha256_hex}?exp={int(expires_at)}&sig={sign(secret, sha256_hex, expires_at)}"


def verify(secret: bytes, sha256_hex: str, expires_at: int | str, signature: str, *, now: float | None = None) -> bool:
    """True when `signature` is ours for this image and `expires_at` has not passed."""
    if isinstance(expires_at, str):  # from a URL: ASCII digits only, as signed_path wrote them
        if not ascii_digits(expires_at):
            return False
    try:
        exp = int(expires_at)
    except (TypeError, ValueError):
        return False
    if not _HEX.match(sha256_hex or "") or exp < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(_mac(secret, sha256_hex, exp), signature or "")


def verify_path(secret: bytes, path_and_query: str, *, prefix: str = "/images", now: float | None = None) -> str | None:
    """The sha256 hex of a signed link that verifies, else None (for the edge's handler)."""
    parts = urlsplit(path_and_query)
    head = prefix.rstrip("/") + "/"
    if not parts.path.startswith(head):
        return None
    sha = parts.path[len(head) :]
    query = parse_qs(parts.query)
    exp, sig = query.get("exp", [""])[0], query.get("sig", [""])[0]
    return sha if verify(secret, sha, exp, sig, now=now) else None


def resolve_secret(configured: str, data_dir: Path, *, embedded: bool) -> bytes:
    """The URL secret: the configured one, else (embedded only) the one persisted under data_dir."""
    if configured:
        if len(configured.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"ECO2_IMAGES_URL_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        return configured.encode()
    if not embedded:
        raise ValueError("ECO2_IMAGES_URL_SECRET is required outside embedded mode")
    path = data_dir / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
            f.flush()
            os.fsync(f.fileno())
    for _ in range(50):  # another process may be writing it right now
        value = path.read_text().strip()
        if value:
            return value.encode()
        time.sleep(0.01)
    raise ValueError(f"{path} is empty: delete it to generate a new secret")
