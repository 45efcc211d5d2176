"""PostgreSQL adapter of the location service (earthdistance + cube + GiST, pg_trgm)."""

from __future__ import annotations

import asyncpg

from .domain import Hit, NearbyQuery, Place

_COLUMNS = (
    "p.id, p.source, p.name, p.address, p.road_address, p.phone, p.latitude, p.longitude,"
    " p.store_category, p.pickup_categories, p.opening_hours, p.url, p.updated_at"
)


def _place(r: asyncpg.Record) -> Place:
    return Place(
        id=r["id"],
        source=r["source"],
        name=r["name"],
        latitude=r["latitude"],
        longitude=r["longitude"],
        store_category=r["store_category"],
        pickup_categories=tuple(r["pickup_categories"]),
        address=r["address"],
        road_address=r["road_address"],
        phone=r["phone"],
        opening_hours=r["opening_hours"],
        url=r["url"],
        updated_at=r["updated_at"],
    )


def like_pattern(text: str) -> str:
    """`%text%` with LIKE's wildcards escaped: user text is matched literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class PostgresPlaceRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def nearby(self, q: NearbyQuery) -> list[Hit]:
        # earth_box(...) @> earth is the GiST-indexed prefilter (a cube around the circle),
        # earth_distance keeps the exact circle, and `earth <-> centre` walks the same index
        # nearest first, so only about `limit` rows are read however dense the area is.
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS}, earth_distance(c.e, p.earth) AS d"
            " FROM location_place p, (SELECT ll_to_earth($1, $2) AS e) c"
            " WHERE earth_box(c.e, $3) @> p.earth"
            "   AND earth_distance(c.e, p.earth) <= $3"
            "   AND (cardinality($4::text[]) = 0 OR p.store_category = ANY($4::text[]))"
            "   AND (cardinality($5::text[]) = 0 OR p.pickup_categories && $5::text[])"
            " ORDER BY p.earth <-> c.e LIMIT $6",
            q.latitude,
            q.longitude,
            float(q.radius_m),
            list(q.store_categories),
            list(q.pickup_categories),
            q.limit,
        )
        return [Hit(_place(r), r["d"]) for r in rows]

    async def search_text(self, text: str, near: tuple[float, float] | None, limit: int) -> list[Hit]:
        # Both predicates are served by the trigram GIN index; the text is always a bound
        # parameter and LIKE wildcards are escaped, so SQL-looking input is just text.
        match = "(p.search_text ILIKE $2 OR $1 <% p.search_text)"
        score = "word_similarity($1, p.search_text)"
        if near is None:
            rows = await self.pool.fetch(
                f"SELECT {_COLUMNS}, {score} AS s, NULL::float8 AS d FROM location_place p WHERE {match}"
                " ORDER BY s DESC, p.name, p.id LIMIT $3",
                text,
                like_pattern(text),
                limit,
            )
        else:
            rows = await self.pool.fetch(
                f"SELECT {_COLUMNS}, {score} AS s, earth_distance(ll_to_earth($4, $5), p.earth) AS d"
                f" FROM location_place p WHERE {match} ORDER BY d, p.id LIMIT $3",
                text,
                like_pattern(text),
                limit,
                near[0],
                near[1],
            )
        return [Hit(_place(r), r["d"], r["s"]) for r in rows]

    async def get(self, place_id: str) -> Place | None:
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM location_place p WHERE p.id = $1", place_id)
        return None if row is None else _place(row)

    async def upsert(self, places: list[Place]) -> int:
        if not places:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO location_place (id, source, name, address, road_address, phone, latitude, longitude,"
                " store_category, pickup_categories, opening_hours, url)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                " ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source, name = EXCLUDED.name,"
                " address = EXCLUDED.address, road_address = EXCLUDED.road_address, phone = EXCLUDED.phone,"
                " latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude, store_category = EXCLUDED.store_category,"
                " pickup_categories = EXCLUDED.pickup_categories, opening_hours = EXCLUDED.opening_hours,"
                " url = EXCLUDED.url, updated_at = now()"
                " WHERE (location_place.source, location_place.name, location_place.address, location_place.road_address,"
                "  location_place.phone, location_place.latitude, location_place.longitude, location_place.store_category,"
                "  location_place.pickup_categories, location_place.opening_hours, location_place.url)"
                " IS DISTINCT FROM (EXCLUDED.source, EXCLUDED.name, EXCLUDED.address, EXCLUDED.road_address,"
                "  EXCLUDED.phone, EXCLUDED.latitude, EXCLUDED.longitude, EXCLUDED.store_category,"
                "  EXCLUDED.pickup_categories, EXCLUDED.opening_hours, EXCLUDED.url)",
                [
                    (
                        p.id,
                        p.source,
                        p.name,
                        p.address,
                        p.road_address,
                        p.phone,
                        p.latitude,
                        p.longitude,
                        p.store_category,
                        list(p.pickup_categories),
                        p.opening_hours,
                        p.url,
                    )
                    for p in places
                ],
            )
        return len(places)
