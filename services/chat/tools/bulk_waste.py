"""Bulk-waste fee adapter over the public data portal's standard-data OpenAPI (httpx).

Dataset: 전국대형폐기물수거수수료정보표준데이터 (data.go.kr standard data, 15114146; rows are
supplied by each 시·군·구). The wire format implemented here (ADR 0066):

    GET {base}/openapi/tn_pubr_public_lar_was_fee_api
        ?serviceKey=KEY&pageNo=1&numOfRows=N&type=json&CTPV_NM=서울특별시&SGG_NM=강남구
    200 {"response": {"header": {"resultCode": "00", "resultMsg": "NORMAL_SERVICE"},
                      "body": {"items": [{"ctpvNm", "sggNm", "larWasNm", "larWasSeNm", "larWasSpcfct",
                                          "paidFreeYn", "fee", "mngInstNm", "crtrYmd", "insttCode", "insttNm"}],
                               "totalCount": "160", "numOfRows": "1000", "pageNo": "1"}}}

Field names, the endpoint and `type=json` are what published clients of this API use; the filter
parameter names (CTPV_NM, SGG_NM) are those of the portal's generated sample request. Not
verifiable offline: whether the gateway honours those filters (some clients send ctpvNm/sggNm),
whether `items` may also arrive as {"item": [...]} (both accepted), the exact no-data code (03
is treated as "no rows"), and the meaning of paidFreeYn (a row is free when it says 무료 or its
fee is 0). Rows are therefore filtered again here by 시·도/시·군·구 and matched to the item
locally, so a gateway that ignores a filter can never put another region's fee in an answer.
Gateway errors: resultCode != "00" in the JSON header, or an XML `OpenAPI_ServiceResponse` with
a `returnReasonCode` (unregistered key, quota, ...) even when JSON was asked for.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import unquote

import httpx

from eco2.services.llm.ports import LLMError

PATH = "/openapi/tn_pubr_public_lar_was_fee_api"
DATASET_URL = "https://www.data.go.kr/data/15114146/standard.do"
#: Gateway codes worth a retry (application error, HTTP error upstream, upstream timeout).
_RETRYABLE = {"01", "04", "05"}
_NO_DATA = "03"
_XML_CODE = re.compile(r"<returnReasonCode>\s*(\d+)\s*</returnReasonCode>")
_XML_MSG = re.compile(r"<returnAuthMsg>\s*([^<]*)</returnAuthMsg>")


class PublicDataError(LLMError):
    """The data.go.kr gateway or the dataset's API answered with an error."""


def _compact(text: str) -> str:
    return re.sub(r"\s+", "", text or "")


def fee_text(row: dict) -> str:
    if row.get("free"):
        return "무료"
    return f"{row['fee']:,}원" if row.get("fee") is not None else (row.get("fee_raw") or "금액 미상")


def _row(item: dict) -> dict[str, Any]:
    raw = str(item.get("fee") or "").strip()
    digits = raw.replace(",", "").replace("원", "")
    fee = int(float(digits)) if re.fullmatch(r"\d+(\.\d+)?", digits) else None
    row = {
        "sido": str(item.get("ctpvNm") or "").strip(),
        "sigungu": str(item.get("sggNm") or "").strip(),
        "item": str(item.get("larWasNm") or "").strip(),
        "category": str(item.get("larWasSeNm") or "").strip(),
        "spec": str(item.get("larWasSpcfct") or "").strip(),
        "fee": fee,
        "fee_raw": raw,
        "free": str(item.get("paidFreeYn") or "").strip() == "무료" or fee == 0,
        "agency": str(item.get("mngInstNm") or item.get("insttNm") or "").strip(),
        "date": str(item.get("crtrYmd") or "").strip(),
    }
    row["fee_text"] = fee_text(row)
    return row


class DataGoKrBulkWasteFees:
    """`BulkWasteFees` over the real API. One request per region; concurrent lookups of the same
    region (search_fee + collection_info of one turn) share that request."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout_s: float = 5.0, rows: int = 1000, max_results: int = 5
    ) -> None:
        # The portal hands out the key both URL-encoded and decoded; httpx encodes it once more.
        self.api_key = unquote(api_key) if "%" in api_key else api_key
        self.rows, self.max_results = rows, max_results
        self.client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, headers={"Accept": "application/json"})
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}

    async def _fetch(self, sido: str, sigungu: str) -> list[dict]:
        params = {"serviceKey": self.api_key, "pageNo": 1, "numOfRows": self.rows, "type": "json", "SGG_NM": sigungu}
        if sido:
            params["CTPV_NM"] = sido
        try:
            r = await self.client.get(PATH, params=params)
        except httpx.HTTPError as exc:
            raise PublicDataError(f"bulk waste fees: {type(exc).__name__}", retryable=True) from exc
        if r.status_code != 200:
            raise PublicDataError(
                f"bulk waste fees: HTTP {r.status_code}",
                retryable=r.status_code == 429 or r.status_code >= 500,
                status=r.status_code,
            )
        text = r.text.lstrip()
        if text.startswith("<"):  # the gateway's own errors come as XML whatever `type` asked for
            code = (_XML_CODE.search(text) or [None, "99"])[1].zfill(2)
            msg = (_XML_MSG.search(text) or [None, "SERVICE ERROR"])[1].strip()
            raise PublicDataError(f"bulk waste fees: gateway {code} {msg}"[:200], retryable=code in _RETRYABLE)
        try:
            response = r.json()["response"]
            header = response["header"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PublicDataError("bulk waste fees: not a data.go.kr response", retryable=False) from exc
        code = str(header.get("resultCode", "")).zfill(2)
        if code == _NO_DATA:
            return []
        if code != "00":
            raise PublicDataError(
                f"bulk waste fees: resultCode {code} {header.get('resultMsg', '')}"[:200], retryable=code in _RETRYABLE
            )
        items = (response.get("body") or {}).get("items") or []
        if isinstance(items, dict):  # XML-style {"item": [...]} or {"item": {...}}
            items = items.get("item") or []
        if isinstance(items, dict):
            items = [items]
        rows = [_row(i) for i in items if isinstance(i, dict)]
        # again here: a gateway that ignored a filter must not put another region's fee in an answer
        return [
            x for x in rows if _compact(x["sigungu"]).startswith(_compact(sigungu)) and (not sido or x["sido"] == sido)
        ]

    async def _region_rows(self, sido: str, sigungu: str) -> list[dict]:
        key = (sido, sigungu)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(sido, sigungu))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def search_fee(
        self, sigungu: str, item: str, *, sido: str = "", aliases: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        names = [n for n in (_compact(item), *map(_compact, aliases)) if n]
        rows = [r for r in await self._region_rows(sido, sigungu) if any(n in _compact(r["item"]) for n in names)]
        rows.sort(key=lambda r: _compact(r["item"]) not in names)  # exact names first, else the table's order
        return rows[: self.max_results]

    async def collection_info(self, sigungu: str, *, sido: str = "") -> dict[str, Any]:
        rows = await self._region_rows(sido, sigungu)
        if not rows:
            return {"found": False, "sido": sido, "sigungu": sigungu}
        first = rows[0]
        categories = list(dict.fromkeys(r["category"] for r in rows if r["category"]))
        return {
            "found": True,
            "sido": first["sido"],
            "sigungu": first["sigungu"],
            "agency": first["agency"],
            "date": max(r["date"] for r in rows),
            "items": len(rows),
            "categories": categories[:10],
        }

    async def aclose(self) -> None:
        await self.client.aclose()
