"""The recyclable_price sub-agent: the price survey's rows for the items asked."""

from __future__ import annotations

from langgraph.runtime import Runtime

from eco2.chat.v1 import chat_pb2

from .. import question as Q
from ..deps import JobContext
from ..state import Branch
from .run import run_node


def price_context(kb, text: str, found) -> dict:
    """The price survey's rows for the items found, in the text's region, with the quantity asked ("10kg")."""
    region = kb.region_of(text)
    items = [
        {
            "name": p.name + (f"({p.form})" if p.form and p.form not in p.name else ""),
            "price": p.prices.get(region, p.prices.get("nationwide")),
            "region": region,
            "region_name": kb.regions[region],
        }
        for p in found
    ]
    kg = sum(n * {"kg": 1, "g": 0.001, "톤": 1000}[u] for n, u in Q.read_part(text).quantity if u in ("kg", "g", "톤"))
    return {"items": items, "survey": kb.price_info, "kg": kg}


async def recyclable_price(branch: Branch, runtime: Runtime[JobContext]) -> dict:
    deps = runtime.context.deps

    async def body() -> dict:
        text = branch.get("query") or branch["message"]
        ctx = price_context(deps.kb, text, deps.kb.search_prices(text))
        info = deps.kb.price_info
        cites = (
            [
                {
                    "source_id": f"price:{info.get('date')}",
                    "kind": chat_pb2.CITATION_KIND_PRICE,
                    "title": f"{info.get('source')} ({info.get('date')})",
                    "url": info.get("url", ""),
                    "snippet": ", ".join(f"{i['name']} {i['price']}원/kg" for i in ctx["items"]),
                }
            ]
            if ctx["items"]
            else []
        )
        return {"contexts": {"price_context": ctx}, "citations": cites}

    return await run_node("recyclable_price", runtime, body)
