"""Location search over real gRPC and real Postgres (earthdistance, cube, GiST, pg_trgm); the
importer as a real `eco2` process; Kakao Local through a local fake speaking its wire format."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import uuid

import asyncpg
import grpc
import pytest
from aiohttp import web

from eco2.location.v1 import location_pb2 as pb
from eco2.location.v1 import location_pb2_grpc
from eco2.services.runtime.errors import status_details, unpack_details
from support.servers import env, running

CITY_HALL = pb.GeoPoint(latitude=37.5665, longitude=126.9780)


@pytest.fixture(scope="module")
async def location(service_env):
    from eco2.services.location.app import create

    with env({**service_env, "ECO2_LOCATION_MAX_RADIUS_M": "20000", "ECO2_LOCATION_MAX_LIMIT": "50"}):
        app = create()
    async with running(app) as server:
        yield server


@pytest.fixture(scope="module")
async def stub(location):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{location.port}") as ch:
        yield location_pb2_grpc.LocationServiceStub(ch)


@pytest.fixture(scope="module")
async def db(dataplane):
    conn = await asyncpg.connect(dataplane.database_url)
    yield conn
    await conn.close()


def sphere_m(a: pb.GeoPoint, b: pb.GeoPoint) -> float:
    # earthdistance's sphere: earth() = 6378168 m
    p1, p2 = math.radians(a.latitude), math.radians(b.latitude)
    dl = math.radians(b.longitude - a.longitude)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6378168 * math.asin(math.sqrt(h))


async def bad(call, request, *fields: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    got = [v.field for v in unpack_details(status_details(err.value))["BadRequest"].field_violations]
    for field in fields:
        assert field in got


# -- SearchNearby ----------------------------------------------------------------------
async def test_nearby_sorted_by_distance_and_sample_is_marked(stub):
    reply = await stub.SearchNearby(pb.SearchNearbyRequest(center=CITY_HALL, radius_m=3000, limit=50))
    assert len(reply.places) >= 4
    distances = [h.distance_m for h in reply.places]
    assert distances == sorted(distances) and distances[-1] <= 3000
    for hit in reply.places:
        assert abs(hit.distance_m - sphere_m(CITY_HALL, hit.place.location)) < 1.0
        if hit.place.id.startswith("sample-"):
            assert hit.place.source == pb.PLACE_SOURCE_SAMPLE and hit.place.name.startswith("[샘플]")
    nearest = reply.places[0]
    assert nearest.place.id == "sample-001" and nearest.distance_text.endswith("m")
    assert any(h.distance_text.endswith("km") for h in reply.places)
    # Busan is far away: not in a 3 km circle around Seoul City Hall
    assert "sample-012" not in {h.place.id for h in reply.places}


async def test_nearby_default_radius_and_limit(stub):
    reply = await stub.SearchNearby(pb.SearchNearbyRequest(center=CITY_HALL))
    assert 1 <= len(reply.places) <= 10
    assert all(h.distance_m <= 5000 for h in reply.places)


async def test_nearby_filters_by_store_and_pickup_category(stub):
    boxes = await stub.SearchNearby(
        pb.SearchNearbyRequest(center=CITY_HALL, radius_m=20000, store_categories=[pb.STORE_CATEGORY_PUBLIC_DROP_BOX])
    )
    assert boxes.places and {h.place.store_category for h in boxes.places} == {pb.STORE_CATEGORY_PUBLIC_DROP_BOX}
    textile = await stub.SearchNearby(
        pb.SearchNearbyRequest(center=CITY_HALL, radius_m=20000, pickup_categories=[pb.PICKUP_CATEGORY_TEXTILE])
    )
    assert textile.places and all(pb.PICKUP_CATEGORY_TEXTILE in h.place.pickup_categories for h in textile.places)
    assert "sample-005" in {h.place.id for h in textile.places}


async def test_distance_text():
    from eco2.services.location.domain import distance_text

    assert [distance_text(m) for m in (4.2, 349.0, 994.0, 995.0, 1234.0, 15_049.0)] == [
        "4m",
        "350m",
        "990m",
        "1.0km",
        "1.2km",
        "15.0km",
    ]


@pytest.mark.parametrize(
    "center,field",
    [
        (pb.GeoPoint(latitude=90.5, longitude=127), "center.latitude"),
        (pb.GeoPoint(latitude=-91, longitude=127), "center.latitude"),
        (pb.GeoPoint(latitude=37, longitude=180.01), "center.longitude"),
        (pb.GeoPoint(latitude=37, longitude=-200), "center.longitude"),
        (pb.GeoPoint(latitude=float("nan"), longitude=127), "center.latitude"),
        (pb.GeoPoint(latitude=37, longitude=float("inf")), "center.longitude"),
    ],
)
async def test_latitude_longitude_out_of_range(stub, center, field):
    await bad(stub.SearchNearby, pb.SearchNearbyRequest(center=center), field)


TINY = [5e-324, -5e-324, 2.2250738585072014e-308, 1e-200]  # subnormals, the smallest normal, a tiny normal


@pytest.mark.parametrize("tiny", TINY)
async def test_a_tiny_coordinate_is_answered_as_the_point_it_rounds_to(stub, tiny):
    # PostgreSQL's float8 arithmetic raises "value out of range: underflow" on such values:
    # the domain keeps coordinates to 1e-7 degree, so they search the point they round to
    for lat, lng in ((tiny, tiny), (tiny, 126.9780), (37.5665, tiny)):
        reply = await stub.SearchNearby(
            pb.SearchNearbyRequest(center=pb.GeoPoint(latitude=lat, longitude=lng), radius_m=20000)
        )
        rounded = await stub.SearchNearby(
            pb.SearchNearbyRequest(center=pb.GeoPoint(latitude=round(lat, 7), longitude=round(lng, 7)), radius_m=20000)
        )
        assert reply == rounded
        near = pb.GeoPoint(latitude=lat, longitude=lng)
        reply = await stub.SearchText(pb.SearchTextRequest(query="재활용센터", near=near, limit=5))
        assert reply.places and all(h.distance_text for h in reply.places)
        rounded = await stub.SearchText(
            pb.SearchTextRequest(
                query="재활용센터", near=pb.GeoPoint(latitude=round(lat, 7), longitude=round(lng, 7)), limit=5
            )
        )
        assert reply == rounded


async def test_missing_center(stub):
    await bad(stub.SearchNearby, pb.SearchNearbyRequest(radius_m=100), "center")


async def test_radius_over_the_maximum(stub):
    await bad(stub.SearchNearby, pb.SearchNearbyRequest(center=CITY_HALL, radius_m=20001), "radius_m")


async def test_limit_over_the_maximum(stub):
    await bad(stub.SearchNearby, pb.SearchNearbyRequest(center=CITY_HALL, limit=51), "limit")
    await bad(stub.SearchText, pb.SearchTextRequest(query="재활용", limit=51), "limit")


@pytest.mark.parametrize(
    "request_,field",
    [
        (pb.SearchNearbyRequest(center=CITY_HALL, store_categories=[99]), "store_categories[0]"),
        (pb.SearchNearbyRequest(center=CITY_HALL, store_categories=[pb.STORE_CATEGORY_CAFE, 0]), "store_categories[1]"),
        (pb.SearchNearbyRequest(center=CITY_HALL, pickup_categories=[42]), "pickup_categories[0]"),
        (pb.SearchNearbyRequest(center=CITY_HALL, pickup_categories=[1] * 17), "pickup_categories"),
    ],
)
async def test_unknown_category(stub, request_, field):
    await bad(stub.SearchNearby, request_, field)


# -- SearchText ------------------------------------------------------------------------
async def test_text_search_in_korean(stub):
    reply = await stub.SearchText(pb.SearchTextRequest(query="재활용센터"))
    ids = [h.place.id for h in reply.places]
    assert {"sample-001", "sample-010", "sample-012"} <= set(ids)
    assert all(h.distance_text == "" for h in reply.places)


async def test_text_search_near_a_point_ranks_by_distance(stub):
    busan = pb.GeoPoint(latitude=35.16, longitude=129.16)
    reply = await stub.SearchText(pb.SearchTextRequest(query="재활용센터", near=busan, limit=3))
    assert reply.places[0].place.id == "sample-012"
    assert [h.distance_m for h in reply.places] == sorted(h.distance_m for h in reply.places)
    assert reply.places[0].distance_text


async def test_text_search_tolerates_a_typo_by_trigrams(stub):
    reply = await stub.SearchText(pb.SearchTextRequest(query="업사이클 공방들"))
    assert "sample-007" in [h.place.id for h in reply.places]


async def test_a_10kb_text_query_is_invalid_argument(stub):
    await bad(stub.SearchText, pb.SearchTextRequest(query="가" * 10_240), "query")


@pytest.mark.parametrize("query", ["", "   ", "a\nb", "a\x00b"])
async def test_empty_or_control_text_query(stub, query):
    await bad(stub.SearchText, pb.SearchTextRequest(query=query), "query")


@pytest.mark.parametrize(
    "query", ["'; DROP TABLE location_place; --", "' OR '1'='1", "%", "_", "\\", "x%' UNION SELECT id FROM pg_user --"]
)
async def test_sql_looking_text_is_just_text(stub, db, query):
    before = await db.fetchval("SELECT count(*) FROM location_place")
    reply = await stub.SearchText(pb.SearchTextRequest(query=query))
    assert reply.places == []  # nothing is named like that: no wildcard, no injection
    assert await db.fetchval("SELECT count(*) FROM location_place") == before


async def test_bad_near_point(stub):
    await bad(
        stub.SearchText,
        pb.SearchTextRequest(query="재활용", near=pb.GeoPoint(latitude=100, longitude=0)),
        "near.latitude",
    )


# -- GetPlace --------------------------------------------------------------------------
async def test_get_place(stub):
    reply = await stub.GetPlace(pb.GetPlaceRequest(id="sample-003"))
    assert reply.place.name == "[샘플] 을지로 리필 스테이션"
    assert reply.place.source == pb.PLACE_SOURCE_SAMPLE
    assert reply.place.store_category == pb.STORE_CATEGORY_REFILL_ZERO_WASTE
    assert reply.place.updated_at.seconds > 0


async def test_get_unknown_place_is_not_found(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetPlace(pb.GetPlaceRequest(id="nope-404"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("place_id", ["", "../etc/passwd", "x" * 101, "a b"])
async def test_get_place_bad_id(stub, place_id):
    await bad(stub.GetPlace, pb.GetPlaceRequest(id=place_id), "id")


# -- importer --------------------------------------------------------------------------
HEADER = "재활용센터명,소재지도로명주소,소재지지번주소,위도,경도,전화번호,평일운영시작시각,평일운영종료시각,홈페이지주소,수거품목\n"


async def _import(path, database_url: str) -> tuple[int, dict | None, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eco2.services.cli",
        "location",
        "import",
        str(path),
        "--database-url",
        database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = out.decode().strip()
    return proc.returncode, (json.loads(text) if text else None), err.decode()


async def test_import_csv_is_idempotent_and_reports_rejected_rows(stub, db, dataplane, session_dir):
    tag = uuid.uuid4().hex[:8]
    rows = [
        f"테스트재활용센터 {tag} 가,서울특별시 종로구 테스트로 1,종로1가 1,37.5700,126.9800,02-000-0001,09:00,18:00,,투명페트/캔·의류\n",
        f"테스트재활용센터 {tag} 나,,서울특별시 중구 무교동 2,37.5680,126.9790,,,,http://example.invalid,\n",
        ",서울특별시 중구 이름없음로,,37.56,126.97,,,,,\n",  # no name
        f"테스트재활용센터 {tag} 다,주소,,95.0,126.97,,,,,\n",  # latitude out of range
        f"테스트재활용센터 {tag} 라,주소,,abc,126.97,,,,,\n",  # not a number
    ]
    path = session_dir / f"centres-{tag}.csv"
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    code, report, err = await _import(path, dataplane.database_url)
    assert code == 0, err
    assert report["read"] == 5 and report["upserted"] == 2
    assert [r["line"] for r in report["rejected"]] == [4, 5, 6]
    assert "name" in report["rejected"][0]["reason"] and "range" in report["rejected"][1]["reason"]

    count = "SELECT count(*) FROM location_place WHERE name LIKE $1"
    assert await db.fetchval(count, f"%{tag}%") == 2
    # again, as CP949 (data.go.kr's usual encoding), with one phone number changed
    path.write_bytes((HEADER + "".join(rows).replace("02-000-0001", "02-000-9999")).encode("cp949"))
    code, report, err = await _import(path, dataplane.database_url)
    assert code == 0 and report["upserted"] == 2, err
    assert await db.fetchval(count, f"%{tag}%") == 2

    found = await stub.SearchText(pb.SearchTextRequest(query=f"테스트재활용센터 {tag} 가"))
    place = found.places[0].place
    assert place.source == pb.PLACE_SOURCE_PUBLIC_DATA and place.phone == "02-000-9999"
    assert place.store_category == pb.STORE_CATEGORY_RECYCLING_CENTER
    assert list(place.pickup_categories) == [
        pb.PICKUP_CATEGORY_CLEAR_PET,
        pb.PICKUP_CATEGORY_CAN,
        pb.PICKUP_CATEGORY_TEXTILE,
    ]
    assert place.opening_hours == "평일 09:00-18:00"
    got = await stub.GetPlace(pb.GetPlaceRequest(id=place.id))
    assert got.place.name == place.name


async def test_import_stores_a_tiny_coordinate_as_the_point_it_rounds_to(db, dataplane, session_dir):
    tag = uuid.uuid4().hex[:8]
    path = session_dir / f"tiny-{tag}.csv"
    path.write_text(HEADER + f"테스트재활용센터 {tag},주소,,37.5690,5e-324,,,,,\n", encoding="utf-8")
    code, report, err = await _import(path, dataplane.database_url)
    assert code == 0 and report["upserted"] == 1 and report["rejected"] == [], err
    row = await db.fetchrow("SELECT latitude, longitude FROM location_place WHERE name = $1", f"테스트재활용센터 {tag}")
    assert (row["latitude"], row["longitude"]) == (37.569, 0.0)


async def test_import_refuses_a_file_that_is_not_the_standard_data(dataplane, session_dir):
    path = session_dir / "other.csv"
    path.write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    code, report, err = await _import(path, dataplane.database_url)
    assert code == 1 and report is None and "name column" in err
    code, report, err = await _import(session_dir / "missing.csv", dataplane.database_url)
    assert code == 2 and "no such file" in err


# -- Kakao Local -----------------------------------------------------------------------
class FakeKakao:
    """Speaks Kakao Local's keyword-search wire format on loopback."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200

    async def keyword(self, request: web.Request) -> web.Response:
        self.requests.append({"auth": request.headers.get("Authorization"), **request.query})
        if request.headers.get("Authorization") != "KakaoAK test-rest-key":
            return web.json_response({"errorType": "AccessDeniedError", "message": "wrong appKey"}, status=401)
        if self.status != 200:
            return web.json_response({"errorType": "InternalError", "message": "boom"}, status=self.status)
        docs = [
            {
                "id": "26338954",
                "place_name": "카카오 제로웨이스트샵",
                "category_name": "가정,생활 > 생활용품점",
                "category_group_code": "",
                "category_group_name": "",
                "phone": "02-111-2222",
                "address_name": "서울 중구 태평로1가 31",
                "road_address_name": "서울 중구 세종대로 110",
                "x": "126.97843",
                "y": "37.56668",
                "place_url": "http://place.map.kakao.com/26338954",
                "distance": "120" if "x" in request.query else "",
            },
            {
                "id": "11",
                "place_name": "카카오 카페",
                "category_group_code": "CE7",
                "phone": "",
                "address_name": "서울 중구",
                "road_address_name": "",
                "x": "126.99",
                "y": "37.57",
                "place_url": "",
                "distance": "1500" if "x" in request.query else "",
            },
        ]
        size = int(request.query.get("size", 15))
        return web.json_response(
            {"meta": {"total_count": 2, "pageable_count": 2, "is_end": True}, "documents": docs[:size]}
        )


@pytest.fixture(scope="module")
async def kakao():
    fake = FakeKakao()
    app = web.Application()
    app.router.add_get("/v2/local/search/keyword.json", fake.keyword)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield fake
    await runner.cleanup()


@pytest.fixture(scope="module")
async def kakao_stub(service_env, kakao):
    from eco2.services.location.app import create

    with env(
        {
            **service_env,
            "KAKAO_API_KEY": "test-rest-key",
            "ECO2_KAKAO_LOCAL_URL": kakao.url,
            "ECO2_LOCATION_LOAD_SAMPLE": "false",
        }
    ):
        app = create()
    async with running(app) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield location_pb2_grpc.LocationServiceStub(ch)


async def test_kakao_keyword_search_is_merged_when_a_key_is_set(kakao_stub, kakao):
    reply = await kakao_stub.SearchText(pb.SearchTextRequest(query="제로웨이스트", near=CITY_HALL, limit=10))
    sent = kakao.requests[-1]
    assert sent["auth"] == "KakaoAK test-rest-key" and sent["query"] == "제로웨이스트" and sent["sort"] == "distance"
    assert abs(float(sent["x"]) - CITY_HALL.longitude) < 1e-6 and abs(float(sent["y"]) - CITY_HALL.latitude) < 1e-6
    kakao_hits = [h for h in reply.places if h.place.source == pb.PLACE_SOURCE_KAKAO]
    assert [h.place.id for h in kakao_hits] == ["kakao-26338954", "kakao-11"]
    assert kakao_hits[0].distance_m == 120 and kakao_hits[0].distance_text == "120m"
    assert kakao_hits[1].place.store_category == pb.STORE_CATEGORY_CAFE
    assert [h.distance_m for h in reply.places] == sorted(h.distance_m for h in reply.places)
    assert any(h.place.source == pb.PLACE_SOURCE_SAMPLE for h in reply.places)  # local results too


async def test_kakao_failure_degrades_to_local_results(kakao_stub, kakao):
    kakao.status = 500
    try:
        reply = await kakao_stub.SearchText(pb.SearchTextRequest(query="재활용센터"))
    finally:
        kakao.status = 200
    assert reply.places and all(h.place.source != pb.PLACE_SOURCE_KAKAO for h in reply.places)
