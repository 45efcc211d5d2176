"""A fake of the data.go.kr standard-data OpenAPI `tn_pubr_public_lar_was_fee_api`
(전국대형폐기물수거수수료정보표준데이터) on loopback, in its wire format (see
services/chat/tools/bulk_waste.py and ADR 0066):

    GET /openapi/tn_pubr_public_lar_was_fee_api?serviceKey&pageNo&numOfRows&type=json[&CTPV_NM][&SGG_NM][&LAR_WAS_NM]
    → {"response": {"header": {"resultCode": "00", "resultMsg": "NORMAL_SERVICE"},
                    "body": {"items": [{ctpvNm, sggNm, larWasNm, ...}], "totalCount": "3", "numOfRows": "1000", "pageNo": "1"}}}

An unknown service key gets the gateway's XML error (returnReasonCode 30), as the real gateway
answers whatever `type` asked for; no rows → resultCode 03. Faults (`faults`, one consumed per
request): an int → that HTTP status with a plain body; ("code", "22", "LIMITED_...") → a JSON
header with that resultCode; ("xml", "30", "SERVICE_KEY_IS_NOT_REGISTERED_ERROR") → the XML error.
Requests are recorded (`requests`: the query parameters of each). Unverified variants of the real
API (ADR 0066) can be switched on: `honour_filters = False` (the gateway ignores CTPV_NM/SGG_NM),
`wrap_items = True` (`items` as {"item": [...]}, as many other data.go.kr APIs send).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .http_fake import LocalHttpFake

PATH = "/openapi/tn_pubr_public_lar_was_fee_api"


def row(
    sido: str, sigungu: str, item: str, spec: str, fee: str, category: str = "가구류", paid: str = "유료"
) -> dict[str, str]:
    return {
        "ctpvNm": sido,
        "sggNm": sigungu,
        "larWasNm": item,
        "larWasSeNm": category,
        "larWasSpcfct": spec,
        "paidFreeYn": paid,
        "fee": fee,
        "mngInstNm": f"{sido} {sigungu}청",
        "crtrYmd": "2025-06-30",
        "insttCode": "3220000",
        "insttNm": f"{sido} {sigungu}",
    }


#: Fake fee tables (made-up amounts, real shape). 중구 exists in several 시·도 on purpose.
ROWS = [
    row("서울특별시", "강남구", "소파", "1인용", "4000"),
    row("서울특별시", "강남구", "소파", "3인용 이상", "12000"),
    row("서울특별시", "강남구", "침대", "더블 이상", "15000"),
    row("서울특별시", "강남구", "장롱", "폭 120cm 이상", "18000"),
    row("서울특별시", "강남구", "냉장고", "500L 이상", "0", category="가전제품류", paid="무료"),
    row("서울특별시", "송파구", "소파", "1인용", "5000"),
    row("서울특별시", "중구", "소파", "1인용", "6000"),
    row("부산광역시", "중구", "소파", "1인용", "7000"),
]


def xml_error(code: str, msg: str) -> str:
    return (
        "<OpenAPI_ServiceResponse><cmmMsgHeader><errMsg>SERVICE ERROR</errMsg>"
        f"<returnAuthMsg>{msg}</returnAuthMsg><returnReasonCode>{code}</returnReasonCode></cmmMsgHeader></OpenAPI_ServiceResponse>"
    )


class FakeBulkWasteApi(LocalHttpFake):
    def __init__(self, *, service_key: str = "test-key", rows: list[dict] | None = None) -> None:
        self.service_key = service_key
        self.rows = list(ROWS if rows is None else rows)
        self.faults: list[Any] = []
        self.honour_filters, self.wrap_items = True, False
        self.requests: list[dict[str, str]] = []

    async def fees(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.requests.append(q)
        if self.faults:
            fault = self.faults.pop(0)
            if isinstance(fault, int):
                return web.Response(status=fault, text="Internal Server Error")
            kind, code, msg = fault
            if kind == "xml":
                return web.Response(text=xml_error(code, msg), content_type="text/xml")
            return web.json_response({"response": {"header": {"resultCode": code, "resultMsg": msg}}})
        if q.get("serviceKey") != self.service_key:
            return web.Response(text=xml_error("30", "SERVICE_KEY_IS_NOT_REGISTERED_ERROR"), content_type="text/xml")
        try:
            page, size = int(q.get("pageNo", "1")), int(q.get("numOfRows", "10"))
        except ValueError:
            return web.json_response(
                {"response": {"header": {"resultCode": "10", "resultMsg": "INVALID_REQUEST_PARAMETER_ERROR"}}}
            )
        filters = (
            (("CTPV_NM", "ctpvNm"), ("SGG_NM", "sggNm"), ("LAR_WAS_NM", "larWasNm")) if self.honour_filters else ()
        )
        found = [r for r in self.rows if all(not q.get(p) or r[f] == q[p] for p, f in filters)]
        if not found:
            return web.json_response({"response": {"header": {"resultCode": "03", "resultMsg": "NODATA_ERROR"}}})
        items = found[(page - 1) * size : page * size]
        body = {
            "items": {"item": items} if self.wrap_items else items,
            "totalCount": str(len(found)),
            "numOfRows": str(size),
            "pageNo": str(page),
        }
        return web.json_response(
            {"response": {"header": {"resultCode": "00", "resultMsg": "NORMAL_SERVICE"}, "body": body}}
        )

    def routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.fees)
