"""PostgreSQL adapters: users and identities, refresh-token families, embedded signing keys."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from .domain import Claims, OAuthProfile, SigningKey, generate_key, load_key
from .ports import UserRecord

_USER_SQL = """
SELECT u.id::text AS id, u.display_name, u.email, u.profile_image_url, u.roles, u.created_at,
       coalesce(array_agg(i.provider ORDER BY i.created_at) FILTER (WHERE i.provider IS NOT NULL), '{}') AS providers
FROM auth_users u LEFT JOIN auth_identities i ON i.user_id = u.id
WHERE u.id = $1::uuid
GROUP BY u.id
"""


def _record(row) -> UserRecord:
    return UserRecord(
        id=row["id"],
        display_name=row["display_name"],
        email=row["email"],
        profile_image_url=row["profile_image_url"],
        roles=tuple(row["roles"]),
        linked_providers=tuple(dict.fromkeys(row["providers"])),
        created_at=row["created_at"],
    )


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class PostgresUsers:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def sign_in(self, provider: str, subject: str, profile: OAuthProfile) -> tuple[UserRecord, bool]:
        async with self.pool.acquire() as conn, conn.transaction():
            user_id = await conn.fetchval(
                "SELECT user_id::text FROM auth_identities WHERE provider = $1 AND subject = $2", provider, subject
            )
            created = False
            if user_id is None:
                user_id = await conn.fetchval(
                    "INSERT INTO auth_users (display_name, email, profile_image_url) VALUES ($1, $2, $3) RETURNING id::text",
                    profile.display_name or f"{provider} user",
                    profile.email,
                    profile.picture,
                )
                inserted = await conn.fetchval(
                    "INSERT INTO auth_identities (provider, subject, user_id, email) VALUES ($1, $2, $3::uuid, $4) "
                    "ON CONFLICT (provider, subject) DO NOTHING RETURNING user_id::text",
                    provider,
                    subject,
                    user_id,
                    profile.email,
                )
                if inserted is None:  # a concurrent first sign-in of the same identity won
                    await conn.execute("DELETE FROM auth_users WHERE id = $1::uuid", user_id)
                    user_id = await conn.fetchval(
                        "SELECT user_id::text FROM auth_identities WHERE provider = $1 AND subject = $2",
                        provider,
                        subject,
                    )
                else:
                    created = True
            row = await conn.fetchrow(_USER_SQL, user_id)
        return _record(row), created

    async def get(self, user_id: str) -> UserRecord | None:
        if not _is_uuid(user_id):
            return None
        row = await self.pool.fetchrow(_USER_SQL, user_id)
        return None if row is None else _record(row)

    async def update(self, user_id: str, changes: dict[str, str]) -> UserRecord | None:
        if not _is_uuid(user_id):
            return None
        allowed = {"display_name", "profile_image_url"}
        cols = [c for c in changes if c in allowed]
        if cols:
            sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(cols))
            await self.pool.execute(
                f"UPDATE auth_users SET {sets}, updated_at = now() WHERE id = $1::uuid",
                user_id,
                *(changes[c] for c in cols),
            )
        return await self.get(user_id)

    async def delete(self, user_id: str) -> bool:
        if not _is_uuid(user_id):
            return False
        status = await self.pool.execute("DELETE FROM auth_users WHERE id = $1::uuid", user_id)
        return status.endswith(" 1")


def _ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class PostgresRefreshTokens:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add(self, claims: Claims) -> None:
        await self.pool.execute(
            "INSERT INTO auth_refresh_tokens (jti, family_id, user_id, issued_at, expires_at) VALUES ($1, $2, $3::uuid, $4, $5)",
            claims.jti,
            claims.fam,
            claims.sub,
            _ts(claims.iat),
            _ts(claims.exp),
        )

    async def rotate(self, old: Claims, new: Claims) -> str:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT rotated_at, revoked_at FROM auth_refresh_tokens WHERE jti = $1 FOR UPDATE", old.jti
            )
            if row is None:
                return "unknown"
            if row["revoked_at"] is not None:
                return "revoked"
            if row["rotated_at"] is not None:
                await conn.execute(
                    "UPDATE auth_refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
                    old.fam,
                )
                return "reused"
            await conn.execute("UPDATE auth_refresh_tokens SET rotated_at = now() WHERE jti = $1", old.jti)
            await conn.execute(
                "INSERT INTO auth_refresh_tokens (jti, family_id, user_id, issued_at, expires_at) VALUES ($1, $2, $3::uuid, $4, $5)",
                new.jti,
                new.fam,
                new.sub,
                _ts(new.iat),
                _ts(new.exp),
            )
            return "ok"

    async def revoke_family(self, family: str) -> None:
        await self.pool.execute(
            "UPDATE auth_refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL", family
        )

    async def revoke_user(self, user_id: str) -> None:
        if _is_uuid(user_id):
            await self.pool.execute(
                "UPDATE auth_refresh_tokens SET revoked_at = now() WHERE user_id = $1::uuid AND revoked_at IS NULL",
                user_id,
            )


_KEYS_LOCK = int.from_bytes(hashlib.sha256(b"auth_signing_keys").digest()[:8], "big", signed=True)


class PostgresKeyStore:
    """Embedded deployments: keys generated once and kept in Postgres, so tokens survive restarts
    and every replica signs and verifies with the same keys."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load(self) -> list[SigningKey]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _KEYS_LOCK)
            rows = await conn.fetch(
                "SELECT kid, private_pem, extract(epoch FROM created_at) AS created FROM auth_signing_keys"
            )
            if not rows:
                key = generate_key()
                await conn.execute(
                    "INSERT INTO auth_signing_keys (kid, private_pem, created_at) VALUES ($1, $2, $3)",
                    key.kid,
                    key.private_pem(),
                    _ts(int(key.created_at)),
                )
                return [key]
        return [load_key(r["kid"], r["private_pem"], float(r["created"])) for r in rows]

    async def add(self, key: SigningKey) -> None:
        """Rotation: a new key signs from the next reload on; older keys keep verifying."""
        await self.pool.execute(
            "INSERT INTO auth_signing_keys (kid, private_pem, created_at) VALUES ($1, $2, $3)",
            key.kid,
            key.private_pem(),
            _ts(int(key.created_at)),
        )


class DirectoryKeyStore:
    """Production: `*.pem` files (EC P-256 PKCS#8/SEC1) in a directory, kid = file name stem,
    e.g. a Kubernetes Secret mounted as a volume. Never writes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def load(self) -> list[SigningKey]:
        if not self.directory.is_dir():
            raise RuntimeError(f"ECO2_AUTH_KEYS_DIR {self.directory} is not a directory")
        keys = [load_key(p.stem, p.read_bytes(), p.stat().st_mtime) for p in sorted(self.directory.glob("*.pem"))]
        if not keys:
            raise RuntimeError(f"no *.pem signing keys in ECO2_AUTH_KEYS_DIR {self.directory}")
        return keys
