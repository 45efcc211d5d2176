"""Compose a grounded Korean answer from the aggregated sub-agent contexts (the offline provider's voice)."""

from __future__ import annotations

import re

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


def josa(word: str, with_final: str, without: str) -> str:
    """The particle that follows `word`: 은/는, 이/가, 을/를, 으로/로 (ㄹ takes 로)."""
    word = re.sub(r"\s*\([^()]*\)$", "", word) or word  # "발포합성수지(스티로폼 등)" takes the particle of 발포합성수지
    last = next((ch for ch in reversed(word) if "가" <= ch <= "힣" or ch.isalnum()), "")
    if not ("가" <= last <= "힣"):
        # Latin letters as read: acronyms by the letter's name ("TV" 티비, "LED" 엘이디: no final;
        # "PVC" no final, "HDMI" no final; L, M, N, R end in a consonant), words by their last letter
        tail = re.search(r"[A-Za-z]+$", word)
        acronym = last.isupper() or bool(tail) and len(tail.group()) <= 3  # "cd", "tv" are read as letters too
        latin_final = last.upper() in "LMNR" if acronym else last.lower() not in "aeiouy"
        final = latin_final if last.isalpha() else last not in "2459"
        if with_final == "으로":
            return "로" if not final or last in "Ll" or last in "17" else "으로"
        return with_final if final else without
    final = (ord(last) - 0xAC00) % 28
    if with_final == "으로":
        return "로" if final in (0, 8) else "으로"
    return with_final if final else without


def _block(label: str, doc: dict, skip: tuple[str, ...] = ()) -> list[str]:
    lines = [line for line in doc["lines"] if line not in skip]
    return [f"{label}[{doc['title']}]", *(f"- {line}" for line in lines)] if lines else []


def _grouped_exceptions(doc: dict) -> list[str]:
    """A category's refused items by where they go: "일반종량제폐기물로 배출: 동물의 뼈, 생선뼈, …"."""
    by_dest: dict[str, list[str]] = {}
    for line in doc["lines"]:
        name, _, dest = line.partition(": ")
        by_dest.setdefault(dest or "배출 방법 별도", []).append(name)
    return [
        f"주의 · 이건 {doc['title'].split(':')[0]}{josa(doc['title'].split(':')[0], '으로', '로')} 배출하지 않아요 [{doc['title']}]",
        *(f"- {dest}: {', '.join(names)}" for dest, names in by_dest.items()),
    ]


def _lead(f: dict) -> str:
    """The direct answer: yes/no when the rules decide it, then where the item goes."""
    item, name = f["item"], f["name"]
    eun = josa(item, "은", "는")
    recyclable = f["file"].startswith("재활용폐기물_")
    where = f["dest"] if f["dest"] else name
    goes = f"{where}{josa(where, '으로', '로')} {'분리배출' if recyclable and where == name else '배출'}해요."
    if f["refused"]:
        goes = f"{f['dest']}해요."
    if f["verdict"] and f.get("proposed"):
        proposed = f["proposed"]
        if f["verdict"] == "yes":
            if proposed == "재활용품":
                return f"네, {item}{eun} 재활용돼요. {goes}"
            return f"네, {item}{eun} {proposed}{josa(proposed, '이', '가')} 맞아요. {goes}"
        if proposed == "재활용품":
            return f"아니요, {item}{eun} 재활용품으로 배출하지 않아요. {goes}"
        return f"아니요, {item}{eun} {proposed}{josa(proposed, '이', '가')} 아니에요. {goes}"
    if f["verdict"] and f.get("answer_line"):
        return f"{'네' if f['verdict'] == 'yes' else '아니요'}, 규정에 이렇게 나와 있어요: {f['answer_line']}"
    if f.get("answer_line"):  # the line that answers what was asked of the item (where a bag is sold)
        return f"규정에 이렇게 나와 있어요: {f['answer_line']}"
    if f["refused"]:
        return f"{item}{eun} {goes[:-1]} ({name}{josa(name, '으로', '로')}는 배출하지 않아요)."
    if item.replace(" ", "") == where.replace(" ", ""):  # "유리병은 유리병으로" says nothing
        return f"{item}{eun} 이렇게 {'분리배출' if recyclable else '배출'}해요."
    return f"{item}{eun} {goes}"


def waste_lines(ctx: dict) -> list[str]:
    """The answer about each asked item: the direct answer first, then the steps, then the
    exceptions that apply, each block under its citation ([title] of the rule section)."""
    out: list[str] = []
    if ctx.get("clarify") and not ctx.get("findings") and not ctx.get("unknown"):
        return [CLARIFY]
    for f in ctx.get("findings") or []:
        if f.get("mentioned"):  # a part the rules only say to remove: where it goes is not in them
            it = f["item"]
            out.append(
                f"'{it}'{josa(it, '을', '를')} 따로 배출하는 방법은 분리배출 규정에 나오지 않아요. {f['name']} 규정에는 {it}에 대해 이렇게만 나와 있어요."
            )
            for doc in f["steps"]:
                out += _block("", doc)
            out.append(
                f"{it}의 재질(플라스틱, 금속, 종이 등)을 알려주시면 그 규정으로 안내해 드릴게요. 확실하지 않으면 사시는 구청·주민센터에 문의해 주세요."
            )
            continue
        if f.get("nearest"):  # the fallback chain's retry: the item itself is not in the rules
            out.append(
                f"'{f['item']}'{josa(f['item'], '은', '는')} 분리배출 규정에 그대로 나오지 않아요. 가장 가까운 규정은 {f['name']}{josa(f['name'], '이에요', '예요')}. 재질이 맞는지 확인해 주시고, 확실하지 않으면 사시는 구청·주민센터에 문의해 주세요."
            )
        else:
            out.append(_lead(f))
        if f.get("brief"):
            out += _block("근거 ", {**f["basis"], "lines": f["basis"]["lines"][:1]})
            continue
        skip = (f["answer_line"],) if f.get("answer_line") else ()
        if f["refused"] or not f["steps"] or f.get("proposed"):  # the same condition as rules.shown
            out += _block("근거 ", f["basis"])
        for doc in f["steps"]:
            out += _block("배출 방법 ", doc, skip)
        for doc in f["exceptions"]:
            out += _grouped_exceptions(doc) if f["category_level"] else _block("주의 ", doc)
        if not f["steps"] and not f["refused"]:
            out.append(
                f"{f['name']}{josa(f['name'], '을', '를')} 담는 봉투·용기와 배출 요일은 지자체마다 달라요. 사시는 구청·주민센터 누리집에서 확인해 주세요."
            )
    for item in ctx.get("unknown") or []:
        out.append(
            f"'{item}'에 대한 분리배출 규정은 제가 가진 자료(분리배출 규정 18종)에서 찾지 못했어요. 재질(플라스틱, 금속, 종이, 유리 등)을 알려주시면 그 규정으로 안내해 드릴게요."
            " 정확한 배출 방법은 사시는 구청·주민센터에 문의해 주세요."
        )
    local = ctx.get("local")
    if local:
        region = f"{ctx['region']}의 " if ctx.get("region") else ""
        out.append(
            f"{region}{local['what']}{josa(local['what'], '은', '는')} 지역마다 달라서 제가 가진 자료에는 없어요. {local['where']}에서 확인해 주세요."
        )
    return out


def _vision(v: dict) -> list[str]:
    """What the photo showed, or plainly why it was not looked at (services/chat/media.py)."""
    if not v:
        return []
    if not v.get("configured"):
        return [
            '사진 인식에는 비전 모델 설정이 필요한데, 지금은 설정되어 있지 않아 사진을 볼 수 없어요. 어떤 물건인지 글로 설명해 주시겠어요? (예: "투명 페트병", "건전지")'
        ]
    if v.get("failed"):
        return ["사진을 분석하지 못해서 보내주신 글을 바탕으로 답할게요."]
    what = (
        v["item"]
        + (f", 분류: {v['category_name']}" if v.get("category_name") else "")
        + f", 확신도 {v['confidence']:.0%}"
    )
    if v.get("unsure"):
        out = [
            f"사진만으로는 확실하지 않아요 (추정: {what}). 이 물건이 맞는지 확인해 주시고, 아니라면 어떤 물건인지 알려주세요."
        ]
    else:
        out = [f"사진 속 물건: {what}"]
    if v.get("situation_tags"):
        out.append(
            "사진에서 보이는 상태: " + ", ".join(t.replace("_OR", "/").replace("_", " ") for t in v["situation_tags"])
        )
    return out


CLARIFY = "어떤 물건인지 알려주시겠어요? 물건 이름(예: 투명 페트병, 우유팩, 건전지)이나 재질을 알려주시면 분리배출 방법을 알려드릴게요."


def compose(g: Grounding) -> str:
    c = g.contexts
    parts: list[str] = _vision(c.get("vision_context") or {})
    if (
        g.clarify and "waste" not in g.intents
    ):  # the waste branch asks what the item is itself (waste_lines); other parts are answered
        return "\n".join([*parts, CLARIFY])
    language = c.get("language_context") or {}
    if language.get("language") == "en":
        parts += _english(language, c, g.question)
        if not language.get("understood"):
            return "\n".join(parts)
    for intent in g.intents:
        if intent == "waste":
            parts.extend(waste_lines(c.get("waste_answers") or {}))
        elif intent == "character" and c.get("character_context"):
            ch = c["character_context"]
            if ch.get("cast"):
                parts.append(
                    f"Eco² 캐릭터는 모두 {len(ch['cast'])}종이에요: "
                    + ", ".join(f"{x['name']}({x['match_label']})" for x in ch["cast"])
                    + "."
                )
            else:
                parts.extend(_character_line(x) for x in (ch, *ch.get("others", ())))
        elif intent in ("collection_point", "location"):
            ctx = c.get(f"{intent}_context") or {}
            places = ctx.get("places") or []
            label = "가까운 수거함" if intent == "collection_point" else "가까운 재활용 장소"
            if places:
                parts.append(f"{label}이에요:")
                parts.extend(
                    f"{i}. {p['name']} ({p.get('distance_text', '')}) {p.get('address', '')}".rstrip()
                    for i, p in enumerate(places, 1)
                )
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
                parts.append(
                    f"재활용품 시세 ({info.get('source', '한국환경공단')} {info.get('date', '')}, {info.get('unit', '원/kg')}):"
                )
                kg = (c.get("price_context") or {}).get("kg") or 0
                for it in items:
                    worth = f" → {kg:g}kg이면 약 {round(it['price'] * kg):,}원" if kg and it["price"] else ""
                    parts.append(f"- {it['name']}: {it['region_name']} {it['price']}원/kg{worth}")
                if kg:
                    parts.append("조사 지역의 평균 시세라서 실제 매입가는 업체마다 달라요.")
            else:
                parts.append(
                    "말씀하신 품목의 시세 정보는 가격 조사표에 없어요. 신문지, 골판지, 페트, 캔, 유리병처럼 품목을 알려주세요."
                )
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
    if (
        ch and "waste" in g.intents and "character" not in g.intents and c.get("disposal_rules") and not g.unsure
    ):  # attached by nodes.waste
        label = ch.get("match_label") or ch.get("description")
        parts.append(f"이 품목을 맡은 Eco² 캐릭터: {ch['name']}" + (f" ({label})" if label else ""))
    if c.get("weather_context", {}).get("tip") and "weather" not in g.intents:
        parts.append(c["weather_context"]["tip"])
    if not parts:
        parts.append(INTRO)
    return "\n".join(parts)


def _character_line(ch: dict) -> str:
    label = ch.get("match_label", "")
    what = f"{label} 담당 캐릭터예요" if label and label != "대표 캐릭터" else "Eco²의 대표 캐릭터예요"
    return f"{ch['name']}{josa(ch['name'], '은', '는')} {what}." + (
        f" {ch['description']}" if ch.get("description") else ""
    )


INTRO = "저는 분리배출 도우미 이코예요. 버리려는 물건(예: 페트병, 건전지, 우유팩)이나 근처 수거함, 재활용품 시세를 물어봐 주시면 규정에 따라 알려드릴게요."


def _english(language: dict, c: dict, question: str = "") -> list[str]:
    """The English first lines: what was understood, and that the rules quoted are Korean."""
    from .english import asks_disposal, category

    if not language.get("understood") and asks_disposal(question):  # an item the vocabulary does not know
        return [
            "I could not find that item in the Korean disposal rules I answer from (18 rule files), so I cannot say how to throw it away."
            " Please tell me what it is made of (plastic, metal, paper, glass ...) or ask in Korean; your district office (구청·주민센터) has the local rules."
        ]
    if not language.get("understood"):
        return [
            "Sorry, I can only answer questions about recycling and waste disposal in Korea, and I could not tell which item you mean."
            ' Please name the item (for example "glass bottle", "battery", "milk carton") or ask in Korean.'
        ]
    terms = ", ".join(f"{en} = {ko}" for en, ko in language.get("terms") or [])
    out = [
        f"I answer from Korea's official disposal rules, which are in Korean, so the rules below are quoted in Korean ({terms})."
    ]
    for f in (c.get("waste_answers") or {}).get("findings") or []:
        dest = (f.get("dest_files") or [f["file"]])[0]
        where = category(dest) or category(f["file"])
        if where:
            out.append(f"In short: {f['item']} goes out as {where}.")
    return out
