"""Compose a grounded Korean answer from the aggregated sub-agent contexts (the offline provider's voice)."""

from __future__ import annotations

from eco2.services.llm.ports import Grounding

_UNCONFIGURED = {
    "weather": "날씨 조회 기능이 설정되어 있지 않아 날씨는 알려드릴 수 없어요.",
    "web_search": "웹 검색 기능이 설정되어 있지 않아 인터넷 검색 결과는 드릴 수 없어요.",
    "image_generation": "이미지 생성 기능이 설정되어 있지 않아 그림을 만들어 드릴 수 없어요.",
    "bulk_waste_fee": "품목별 수수료 조회 기능이 설정되어 있지 않아 정확한 수수료는 구청·주민센터 누리집에서 확인해 주세요.",
}


def _rules(ctx: dict) -> list[str]:
    out: list[str] = []
    for doc in ctx:
        out.append(f"[{doc['title']}]")
        out.extend(f"- {line}" for line in doc["lines"][:8])
    return out


def _vision(v: dict) -> list[str]:
    """What the photo showed, or plainly why it was not looked at (services/chat/media.py)."""
    if not v:
        return []
    if not v.get("configured"):
        return ["사진 인식에는 비전 모델 설정이 필요한데, 지금은 설정되어 있지 않아 사진을 볼 수 없어요. 어떤 물건인지 글로 설명해 주시겠어요? (예: \"투명 페트병\", \"건전지\")"]
    if v.get("failed"):
        return ["사진을 분석하지 못해서 보내주신 글을 바탕으로 답할게요."]
    what = v["item"] + (f", 분류: {v['category_name']}" if v.get("category_name") else "") + f", 확신도 {v['confidence']:.0%}"
    if v.get("unsure"):
        out = [f"사진만으로는 확실하지 않아요 (추정: {what}). 이 물건이 맞는지 확인해 주시고, 아니라면 어떤 물건인지 알려주세요."]
    else:
        out = [f"사진 속 물건: {what}"]
    if v.get("situation_tags"):
        out.append("사진에서 보이는 상태: " + ", ".join(t.replace("_OR", "/").replace("_", " ") for t in v["situation_tags"]))
    return out


def compose(g: Grounding) -> str:
    c = g.contexts
    parts: list[str] = _vision(c.get("vision_context") or {})
    if g.clarify:
        return "\n".join([*parts, "어떤 물건을 어떻게 버리려는지 조금 더 자세히 알려주시겠어요? 예: \"투명 페트병은 어떻게 버려?\""])
    for intent in g.intents:
        if intent == "waste" and c.get("disposal_rules"):
            parts.append("분리배출 방법을 알려드릴게요.")
            parts.extend(_rules(c["disposal_rules"]))
        elif intent == "character" and c.get("character_context"):
            ch = c["character_context"]
            parts.append(f"{ch['name']}: {ch.get('description') or ch.get('match_label', '')}".rstrip(": "))
        elif intent in ("collection_point", "location"):
            ctx = c.get(f"{intent}_context") or {}
            places = ctx.get("places") or []
            label = "가까운 수거함" if intent == "collection_point" else "가까운 재활용 장소"
            if places:
                parts.append(f"{label}이에요:")
                parts.extend(f"{i}. {p['name']} ({p.get('distance_text', '')}) {p.get('address', '')}".rstrip() for i, p in enumerate(places, 1))
            elif ctx.get("declined"):
                parts.append(f"위치를 알려주지 않으셔서 {label}은 찾지 못했어요.")
            elif ctx.get("unavailable"):
                parts.append(f"지금은 {label} 검색을 할 수 없어요. 잠시 후 다시 물어봐 주세요.")
            else:
                parts.append(f"반경 안에서 {label}을 찾지 못했어요.")
        elif intent == "recyclable_price":
            items = (c.get("price_context") or {}).get("items") or []
            if items:
                info = (c.get("price_context") or {}).get("survey", {})
                parts.append(f"재활용품 시세 ({info.get('source', '한국환경공단')} {info.get('date', '')}, {info.get('unit', '원/kg')}):")
                parts.extend(f"- {it['name']}: {it['region_name']} {it['price']}원/kg" for it in items)
            else:
                parts.append("말씀하신 품목의 시세 정보는 가격 조사표에 없어요. 신문지, 골판지, 페트, 캔, 유리병처럼 품목을 알려주세요.")
        elif intent == "bulk_waste":  # fees (or why there are none) first, then the general rule
            from .bulk_waste import answer_lines

            ctx = c.get("bulk_waste_context") or {}
            parts.extend(answer_lines(ctx, _UNCONFIGURED["bulk_waste_fee"]))
            parts.append("대형폐기물은 이렇게 버려요.")
            parts.extend(_rules(ctx.get("rules") or []))
        elif intent in ("weather", "web_search", "image_generation"):
            ctx = c.get(f"{intent}_context") or {}
            if not ctx.get("configured"):
                parts.append(_UNCONFIGURED[intent])
            elif intent == "weather" and ctx.get("summary"):
                parts.append(f"현재 날씨: {ctx['summary']}")
            elif intent == "web_search" and ctx.get("results"):
                parts.append("검색 결과예요:")
                parts.extend(f"- {r['title']}: {r.get('snippet', '')}" for r in ctx["results"][:3])
            elif intent == "image_generation" and ctx.get("image_key"):
                parts.append(f"그림을 만들었어요 (이미지 {ctx['image_key']}).")
            elif intent == "image_generation" and ctx.get("failed"):
                parts.append("그림을 만드는 중에 문제가 생겨 이번에는 만들지 못했어요. 잠시 후 다시 부탁해 주세요.")
            else:
                parts.append("요청하신 정보를 가져오지 못했어요.")
    ch = c.get("character_context")
    if ch and "waste" in g.intents and "character" not in g.intents and c.get("disposal_rules"):  # attached by graph.waste_rag
        label = ch.get("match_label") or ch.get("description")
        parts.append(f"이 품목을 맡은 Eco² 캐릭터: {ch['name']}" + (f" ({label})" if label else ""))
    if c.get("weather_context", {}).get("tip") and "weather" not in g.intents:
        parts.append(c["weather_context"]["tip"])
    if not parts or g.unsure:
        prefix = "확실하지 않지만, " if g.unsure else ""
        parts.append(
            f"{prefix}저는 분리배출 도우미 이코예요. 버리려는 물건(예: 페트병, 건전지, 우유팩)이나 근처 수거함, 재활용품 시세를 물어봐 주시면 규정에 따라 알려드릴게요."
        )
    return "\n".join(parts)
