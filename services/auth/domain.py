"""The pure core of auth: signing keys, token issuing and verification, PKCE.

No I/O here: keys come in as PEM text, tokens go out as strings. PyJWT does the JOSE work with
the algorithm pinned to ES256 (docs/adr/0030-jwt-library.md).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"
ACCESS = "access"
REFRESH = "refresh"
REQUIRED_CLAIMS = ["sub", "jti", "iat", "nbf", "exp", "iss", "aud", "typ"]


class TokenError(Exception):
    """A token that must be refused. `reason` is a stable machine code (ErrorInfo.reason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# ----------------------------------------------------------------------------- keys
@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    created_at: float

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def jwk(self) -> dict[str, str]:
        numbers = self.public_key.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }


def generate_key(now: float | None = None) -> SigningKey:
    created = time.time() if now is None else now
    kid = time.strftime("%Y%m%d", time.gmtime(created)) + "-" + secrets.token_hex(4)
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), created)


def load_key(kid: str, pem: str | bytes, created_at: float) -> SigningKey:
    key = serialization.load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"signing key {kid!r} is not an EC P-256 private key (ES256 needs one)")
    return SigningKey(kid, key, created_at)


class KeyRing:
    """Every key that verifies tokens; the newest (or the one named) signs new ones."""

    def __init__(self, keys: Iterable[SigningKey], signing_kid: str = "") -> None:
        self.replace(keys, signing_kid)

    def replace(self, keys: Iterable[SigningKey], signing_kid: str = "") -> None:
        ordered = sorted(keys, key=lambda k: (k.created_at, k.kid))
        if not ordered:
            raise ValueError("no signing keys")
        by_kid = {k.kid: k for k in ordered}
        if signing_kid and signing_kid not in by_kid:
            raise ValueError(f"signing kid {signing_kid!r} is not among the keys {sorted(by_kid)}")
        self.signer = by_kid[signing_kid] if signing_kid else ordered[-1]
        self.keys = by_kid
        self.public = {k.kid: k.public_key for k in ordered}

    def jwks(self) -> list[dict[str, str]]:
        return [k.jwk() for k in self.keys.values()]


# ----------------------------------------------------------------------------- tokens
@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    jti: str
    iat: int
    nbf: int
    exp: int
    typ: str
    roles: tuple[str, ...]
    provider: str
    fam: str

    @property
    def roles_header(self) -> str:
        return ",".join(self.roles)


@dataclass(frozen=True)
class TokenPolicy:
    issuer: str
    audience: str
    access_ttl_s: int
    refresh_ttl_s: int
    leeway_s: float


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: Claims


class TokenService:
    """Issues and verifies ES256 JWTs against a KeyRing."""

    def __init__(self, ring: KeyRing, policy: TokenPolicy) -> None:
        self.ring = ring
        self.policy = policy

    def issue(
        self, *, sub: str, typ: str, roles: Sequence[str], provider: str, fam: str, now: int | None = None
    ) -> IssuedToken:
        now = int(time.time()) if now is None else now
        ttl = self.policy.access_ttl_s if typ == ACCESS else self.policy.refresh_ttl_s
        claims = Claims(
            sub=sub,
            jti=uuid.uuid4().hex,
            iat=now,
            nbf=now,
            exp=now + ttl,
            typ=typ,
            roles=tuple(roles),
            provider=provider,
            fam=fam,
        )
        payload = {
            "iss": self.policy.issuer,
            "aud": self.policy.audience,
            "sub": sub,
            "jti": claims.jti,
            "iat": now,
            "nbf": now,
            "exp": claims.exp,
            "typ": typ,
            "roles": list(roles),
            "provider": provider,
            "fam": fam,
        }
        signer = self.ring.signer
        token = jwt.encode(payload, signer.private_key, algorithm=ALGORITHM, headers={"kid": signer.kid})
        return IssuedToken(token, claims)

    def verify(self, token: str, typ: str) -> Claims:
        """Every check, or TokenError: structure, alg pinned, kid known, signature, iss, aud,
        exp/nbf with leeway, typ."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("TOKEN_MALFORMED", f"not a JWT: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise TokenError(
                "TOKEN_ALGORITHM", f"algorithm {str(header.get('alg'))[:16]!r} is not accepted (ES256 only)"
            )
        kid = header.get("kid")
        key = self.ring.public.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("TOKEN_UNKNOWN_KID", "the token's key id is unknown")
        p = self.policy
        try:
            data = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=p.audience,
                issuer=p.issuer,
                leeway=p.leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("TOKEN_EXPIRED", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("TOKEN_NOT_YET_VALID", "the token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise TokenError("TOKEN_ISSUER", "the token was issued by someone else") from None
        except jwt.InvalidAudienceError:
            raise TokenError("TOKEN_AUDIENCE", "the token is meant for another audience") from None
        except jwt.InvalidSignatureError:
            raise TokenError("TOKEN_SIGNATURE", "the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenError("TOKEN_INVALID", f"invalid token: {exc}") from None
        try:
            claims = Claims(
                sub=_str(data["sub"]),
                jti=_str(data["jti"]),
                iat=_numeric_date(data["iat"]),
                nbf=_numeric_date(data["nbf"]),
                exp=_numeric_date(data["exp"]),
                typ=_str(data["typ"]),
                roles=tuple(_str(r) for r in data.get("roles") or ()),
                provider=_str(data.get("provider", "")),
                fam=_str(data.get("fam", "")),
            )
        except (TypeError, ValueError):
            raise TokenError("TOKEN_INVALID", "the token's claims have the wrong types") from None
        if claims.typ != typ:
            raise TokenError("TOKEN_TYPE", f"a {claims.typ or 'untyped'} token cannot be used as an {typ} token")
        return claims


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _numeric_date(value: object) -> int:
    """A NumericDate claim (RFC 7519): a JSON number. PyJWT and int() also take a string of
    digits (or a boolean), which no token of ours carries."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not a JSON number")
    return int(value)


class ClaimsCache:
    """Bounded LRU of verified access tokens → claims, so a token's signature is verified once.

    An entry is only served while the token is inside its own validity window (exp + leeway);
    revocation is checked on every request elsewhere, never cached here.
    """

    def __init__(self, max_entries: int, leeway_s: float) -> None:
        self.max_entries = max_entries
        self.leeway_s = leeway_s
        self._entries: OrderedDict[str, Claims] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> Claims | None:
        claims = self._entries.get(token)
        if claims is None:
            return None
        if now > claims.exp + self.leeway_s:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return claims

    def put(self, token: str, claims: Claims) -> None:
        if self.max_entries <= 0:
            return
        self._entries[token] = claims
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


# ----------------------------------------------------------------------------- PKCE
def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9-_]
    return verifier, pkce_challenge(verifier)


def pkce_challenge(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class OAuthProfile:
    """What a provider says about the user after a successful code exchange."""

    provider: str
    subject: str
    display_name: str = ""
    email: str = ""
    picture: str = ""
    raw: dict = field(default_factory=dict, repr=False)
