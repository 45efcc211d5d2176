"""Call metadata that acts as a user, the way the edge does after ext-authz allowed a call.

The tests' wristbands are signed by a key of this test session; `TEST_JWKS` (in the
`service_env` fixture as ECO2_IDENTITY_JWKS) makes every service under test trust it, as a
deployment may pin keys. A service whose test also runs a real auth server trusts auth's
own keys as well (fetched with GetJwks), so both kinds of wristband verify.
"""

from __future__ import annotations

import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from eco2.services.runtime.identity import ALGORITHM, IDENTITY_KEY, IDENTITY_TYP

KID = "tests-identity"
KEY = ec.generate_private_key(ec.SECP256R1())
AUDIENCE = "eco2-mesh"
ISSUER = "eco2-auth"


def _jwk() -> dict[str, str]:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key()))
    return {**jwk, "kid": KID, "alg": ALGORITHM, "use": "sig"}


TEST_JWKS = json.dumps({"keys": [_jwk()]})


def wristband(
    user_id: str, *, roles=("user",), provider: str = "dev", ttl_s: int = 600, key=None, kid: str = KID, **claims
) -> str:
    """A wristband for `user_id` signed with the test key (or `key`); `claims` override."""
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "typ": IDENTITY_TYP,
        "sub": user_id,
        "roles": list(roles),
        "provider": provider,
        "iat": now,
        "exp": now + ttl_s,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key or KEY, algorithm=ALGORITHM, headers={"kid": kid})


def as_user(user_id: str, **kwargs) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that identifies `user_id` to a service."""
    return ((IDENTITY_KEY, wristband(user_id, **kwargs)),)
