"""`eco2 location import FILE.csv`: load the national recycling-centre standard data
(전국재활용센터표준데이터, data.go.kr) into location_place with idempotent upserts.

Column mapping (header names as published; the first present alias wins):

| CSV column                                   | Place field        | notes |
|----------------------------------------------|--------------------|-------|
| 재활용센터명 / 시설명 / 명칭                   | name               | required |
| 위도                                          | latitude           | required, -90..90 |
| 경도                                          | longitude          | required, -180..180 |
| 소재지도로명주소                               | road_address       | |
| 소재지지번주소                                 | address            | |
| 전화번호 / 운영기관전화번호 / 관리기관전화번호    | phone              | |
| 평일운영시작시각 + 평일운영종료시각              | opening_hours      | "평일 09:00-18:00"; 토요일/공휴일 likewise |
| 홈페이지주소                                   | url                | |
| 수거품목 (not in the standard; optional)        | pickup_categories  | Korean labels split on , / · |

Every row becomes store category RECYCLING_CENTER, source PUBLIC_DATA, id
`pd-<sha256(name|address)[:20]>` so a re-import updates rows instead of duplicating them.
Rows that cannot be used are reported (line number and reason), never silently dropped.
The file may be UTF-8 (with or without BOM) or CP949, the encoding data.go.kr often uses.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .domain import Place, coordinate

NAME = ("재활용센터명", "시설명", "명칭", "name")
LAT = ("위도", "latitude", "lat")
LNG = ("경도", "longitude", "lng", "lon")
ROAD = ("소재지도로명주소", "도로명주소", "road_address")
ADDR = ("소재지지번주소", "지번주소", "address")
PHONE = ("전화번호", "운영기관전화번호", "관리기관전화번호", "phone")
URL = ("홈페이지주소", "url")
PICKUP = ("수거품목", "pickup")
HOURS = (
    ("평일", "평일운영시작시각", "평일운영종료시각"),
    ("토요일", "토요일운영시작시각", "토요일운영종료시각"),
    ("공휴일", "공휴일운영시작시각", "공휴일운영종료시각"),
)

PICKUP_LABELS = {
    "투명페트": "CLEAR_PET",
    "무색페트": "CLEAR_PET",
    "무색페트병": "CLEAR_PET",
    "투명페트병": "CLEAR_PET",
    "유색페트": "COLORED_PET",
    "유색페트병": "COLORED_PET",
    "캔": "CAN",
    "금속": "CAN",
    "금속류": "CAN",
    "고철": "CAN",
    "종이": "PAPER",
    "종이류": "PAPER",
    "종이팩": "PAPER",
    "플라스틱": "PLASTIC",
    "플라스틱류": "PLASTIC",
    "유리": "GLASS",
    "유리병": "GLASS",
    "의류": "TEXTILE",
    "섬유": "TEXTILE",
    "원단": "TEXTILE",
    "헌옷": "TEXTILE",
    "전자제품": "ELECTRONICS",
    "가전": "ELECTRONICS",
    "폐가전": "ELECTRONICS",
    "소형가전": "ELECTRONICS",
    "일반": "GENERAL",
    "기타": "GENERAL",
}
MAX_FIELD = 500


@dataclass
class ImportReport:
    read: int = 0
    upserted: int = 0
    rejected: list[dict[str, object]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"read": self.read, "upserted": self.upserted, "rejected": self.rejected}, ensure_ascii=False)


def _first(row: dict[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        value = row.get(name)
        if value is not None and value.strip():
            return value.strip()
    return ""


def decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "cp949"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ValueError("the file is neither UTF-8 nor CP949 text")


def parse_row(row: dict[str, str]) -> Place:
    """One CSV row → Place, or ValueError saying what is wrong."""
    name = _first(row, NAME)
    if not name:
        raise ValueError("no name (재활용센터명)")
    for key, value in row.items():
        if value is not None and len(value) > MAX_FIELD:
            raise ValueError(f"column {key!r} is longer than {MAX_FIELD} characters")
    try:
        lat, lng = float(_first(row, LAT)), float(_first(row, LNG))
    except ValueError:
        raise ValueError("latitude/longitude (위도/경도) missing or not numbers") from None
    if not (math.isfinite(lat) and math.isfinite(lng) and -90 <= lat <= 90 and -180 <= lng <= 180):
        raise ValueError(f"latitude/longitude out of range ({lat}, {lng})")
    lat, lng = coordinate(lat), coordinate(lng)  # stored as searched: a subnormal would underflow in ll_to_earth
    if lat == 0 and lng == 0:
        raise ValueError("latitude/longitude are 0,0 (not geocoded)")
    road, addr = _first(row, ROAD), _first(row, ADDR)
    hours = []
    for label, start, end in HOURS:
        a, b = _first(row, (start,)), _first(row, (end,))
        if a and b:
            hours.append(f"{label} {a}-{b}")
    pickups: list[str] = []
    for label in _first(row, PICKUP).replace("/", ",").replace("·", ",").split(","):
        code = PICKUP_LABELS.get(label.strip().replace(" ", ""))
        if code and code not in pickups:
            pickups.append(code)
    digest = hashlib.sha256(f"{name}|{road or addr}".encode()).hexdigest()[:20]
    return Place(
        id=f"pd-{digest}",
        source="PUBLIC_DATA",
        name=name,
        latitude=lat,
        longitude=lng,
        store_category="RECYCLING_CENTER",
        pickup_categories=tuple(pickups),
        address=addr,
        road_address=road,
        phone=_first(row, PHONE),
        opening_hours=", ".join(hours),
        url=_first(row, URL),
    )


def parse_csv(text: str) -> tuple[list[Place], ImportReport]:
    report = ImportReport()
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not any(n in reader.fieldnames for n in NAME):
        raise ValueError(f"not the recycling-centre standard data: no name column ({' / '.join(NAME)}) in the header")
    places: dict[str, Place] = {}
    for row in reader:
        report.read += 1
        line = reader.line_num
        try:
            place = parse_row(row)
        except ValueError as exc:
            report.rejected.append({"line": line, "reason": str(exc)})
            continue
        places[place.id] = place  # a repeated row in one file: the last one wins
    return list(places.values()), report


async def import_csv(path: Path, repository) -> ImportReport:
    places, report = parse_csv(decode(path.read_bytes()))
    report.upserted = await repository.upsert(places)
    return report


def sample_places() -> list[Place]:
    """The shipped SAMPLE dataset: illustrative places, never real ones (names say [샘플])."""
    raw = json.loads((resources.files(__package__) / "sample_places.json").read_text(encoding="utf-8"))
    return [
        Place(
            id=p["id"],
            source="SAMPLE",
            name=p["name"],
            latitude=p["latitude"],
            longitude=p["longitude"],
            store_category=p["store_category"],
            pickup_categories=tuple(p.get("pickup_categories", ())),
            address=p.get("address", ""),
            road_address=p.get("road_address", ""),
            phone="",
            opening_hours=p.get("opening_hours", ""),
            url="",
        )
        for p in raw["places"]
    ]


async def run_import(path: str, database_url: str) -> int:
    """The body of `eco2 location import`: migrate, import, print the JSON report."""
    import sys

    from eco2.services.dataplane.migrations import apply_migrations
    from eco2.services.dataplane.urls import create_pg_pool

    from .postgres import PostgresPlaceRepository

    if not database_url:
        print("eco2 location import: set DATABASE_URL (or pass --database-url)", file=sys.stderr)
        return 2
    file = Path(path)
    if not file.is_file():
        print(f"eco2 location import: no such file {file}", file=sys.stderr)
        return 2
    await apply_migrations(database_url, "location", resources.files(__package__) / "migrations")
    pool = await create_pg_pool(database_url, max_size=2, application_name="eco2-location-import")
    try:
        report = await import_csv(file, PostgresPlaceRepository(pool))
    except ValueError as exc:
        print(f"eco2 location import: {exc}", file=sys.stderr)
        return 1
    finally:
        await pool.close()
    print(report.to_json())
    return 0 if report.upserted or not report.read else 1


def main(args) -> int:
    """`eco2 location import FILE.csv [--database-url URL]` (wired in services/cli.py)."""
    import asyncio
    import os

    return asyncio.run(run_import(args.file, args.database_url or os.environ.get("DATABASE_URL", "")))
