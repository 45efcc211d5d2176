"""Mints the mesh identity tokens ("wristbands") that services verify (runtime/identity.py).

A wristband is an ES256 JWT signed with auth's current key: `iss` auth's issuer, `aud` the
mesh audience (never the access tokens' one), `typ` "identity", `sub`/`roles`/`provider` of
the caller, `iat`, `exp`; a job's wristband also names the job (`job`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jwt

from eco2.services.runtime.identity import ALGORITHM, IDENTITY_TYP

from .domain import KeyRing


class Wristbands:
    def __init__(self, ring: KeyRing, *, issuer: str, audience: str, ttl_s: int) -> None:
        self.ring = ring
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s

    def mint(
        self,
        *,
        sub: str,
        roles: Sequence[str],
        provider: str,
        ttl_s: int | None = None,
        job: str = "",
        now: int | None = None,
    ) -> tuple[str, int]:
        """(token, exp) of a wristband for this caller."""
        now = int(time.time()) if now is None else now
        exp = now + (self.ttl_s if ttl_s is None else ttl_s)
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "typ": IDENTITY_TYP,
            "sub": sub,
            "roles": list(roles),
            "provider": provider,
            "iat": now,
            "exp": exp,
        }
        if job:
            payload["job"] = job
        signer = self.ring.signer
        return jwt.encode(payload, signer.private_key, algorithm=ALGORITHM, headers={"kid": signer.kid}), exp
