"""What a message asks, read from its morphology (services/knowledge/morph.py).

A message is split into parts (sentences, "그리고", a clause ending in "-고"); each part is read
for what routing and the answer need:

    items      the things it is about ("귤 껍질", "알루미늄 호일"): noun phrases that are not
               question words, bins, places or categories
    proposed   a category or bin the user proposes for them ("음쓰 맞아?", "캔 수거함에 넣어도
               돼?", "일반쓰레기로 버려도 돼?"): a rule file, or "재활용" for any recyclable
    yes_no     a yes/no question ("맞아?", "버려도 돼?", "떼야 돼?") rather than how/where
    parts      parts of the item it asks about ("라벨", "뚜껑") and steps (씻다 → "헹구")
    place      "collection_point" / "location" when it asks where a bin or place is — a bin
               named as where the item goes ("캔 수거함에") is not a place question
    local      a fact that differs by 시·군·구 and that the knowledge base does not hold
               (collection days, bag prices, phone numbers)
    quantity   numbers with units ("10kg", "2리터", "3개")

Words are compared by what they are (a noun, a verb's lemma), so "버릴라면", "버리는법좀" and
"쇼파버릴라면" read like "버리려면"; the vocabulary is in knowledge/lexicon.yaml and synonyms.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

from eco2.services.knowledge import kb as K
from eco2.services.knowledge import morph, turn
from eco2.services.knowledge.morph import Analysis, Token, analyse

#: Verbs that mean putting something out as waste.
DISPOSE = frozenset(
    {
        "버리다",
        "배출하다",
        "분리하다",
        "분리수거하다",
        "분리배출하다",
        "넣다",
        "내놓다",
        "내다놓다",
        "처리하다",
        "처분하다",
        "재활용하다",
        "재활용되다",
        "분리수거되다",
        "수거하다",
        "수거되다",
        "폐기하다",
        "모으다",
        "치우다",
        "정리하다",
        "배출되다",
        "담다",
        "버려지다",
    }
)
#: Nouns of disposal itself: they make a question about waste but name no item.
DISPOSAL_NOUNS = frozenset(
    {
        "분리수거",
        "분리배출",
        "배출",
        "재활용",
        "쓰레기",
        "폐기",
        "처리",
        "수거",
        "분리",
        "버리기",
        "배출법",
        "처리법",
        "분류",
        "폐기물",
    }
)
#: Nouns that are never an item: question words, people, time, quantity words.
NOT_ITEMS = frozenset(
    {
        "방법",
        "법",
        "거",
        "것",
        "곳",
        "데",
        "뭐",
        "무엇",
        "어디",
        "언제",
        "얼마",
        "이거",
        "저거",
        "그거",
        "이것",
        "저것",
        "그것",
        "좀",
        "때",
        "경우",
        "종류",
        "차이",
        "질문",
        "정도",
        "요즘",
        "오늘",
        "내일",
        "어제",
        "집",
        "우리",
        "저",
        "나",
        "제",
        "너",
        "날",
        "번",
        "개",
        "뭘",
        "건",
        "게",
        "애",
        "근처",
        "주변",
        "주위",
        "인근",
        "동네",
        "위치",
        "가까이",
        "여기",
        "거기",
        "저기",
        "이번",
        "다음",
        "처음",
        "전부",
        "다",
        "모두",
        "그냥",
        "진짜",
        "정말",
        "혹시",
        "이건",
        "저건",
        "그건",
        "얘",
        "걔",
        "뭔가",
        "부분",
        "상태",
        "기준",
        "규정",
        "안내",
        "정보",
        "설명",
        "도움",
        "감사",
        "확인",
        "시세",
        "가격",
        "값",
        "단가",
        "매입",
        "매입가",
        "수수료",
        "캐릭터",
        "이름",
        "날씨",
        "그림",
        "이미지",
        "사진",
        "검색",
        "뉴스",
        "최신",
        "kg",
        "키로",
        "킬로",
        "그램",
        "리터",
        "장",
        "박스째",
        "통째",
        "이상",
        "이하",
        "미만",
        "정리",
        "요일",
        "시간",
        "수거일",
        "배출일",
        "전화번호",
        "연락처",
        "번호",
        "지역",
        "구청",
        "주민센터",
        "동사무소",
        "아파트",
        "빌라",
        "주택",
        "사람",
        "이웃",
        "약국",
        "보건소",
        "매장",
        "마트",
        "편의점",
        "대리점",
        "우체통",
        "신청",
        "예약",
        "문의",
        "무상",
        "무료",
        "유료",
        "서비스",
    }
)
#: Question words: a question with one of them is not a yes/no question.
WH = frozenset(
    {
        "어떻게",
        "어디",
        "언제",
        "뭐",
        "무엇",
        "얼마",
        "어느",
        "무슨",
        "왜",
        "누구",
        "몇",
        "어떤",
        "어딨다",
        "어떡하다",
        "어떻다",
        "어쩌다",
    }
)
#: Verbs and nouns that ask where something is or to find it.
FIND = frozenset({"찾다", "알리다", "보이다", "알려주다", "안내하다", "추천하다", "어딨다", "가깝다"})
NEAR = frozenset({"근처", "주변", "주위", "인근", "동네", "위치", "가까이"})
#: Verbs that make a yes/no question of "can I / is it": "버려도 돼?", "맞아?", "가능해?".
YES_NO = frozenset({"되다", "맞다", "가능하다", "괜찮다", "이다", "하다", "상관없다", "안되다", "아니다"})
#: Units of the quantities people mention ("10kg", "2리터", "3개"), normalised.
UNITS = {
    "kg": "kg",
    "키로": "kg",
    "킬로": "kg",
    "킬로그램": "kg",
    "g": "g",
    "그램": "g",
    "t": "톤",
    "톤": "톤",
    "l": "리터",
    "리터": "리터",
    "ml": "ml",
    "미리": "ml",
    "개": "개",
    "장": "장",
    "병": "병",
    "박스": "박스",
    "봉지": "봉지",
    "대": "대",
    "권": "권",
    "캔": "캔",
}
_HANGUL = re.compile(r"[가-힣]")
_LATIN = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Part:
    """One request of a message (see the module docstring for the fields)."""

    text: str
    analysis: Analysis
    items: tuple[str, ...] = ()
    proposed: str = ""
    yes_no: bool = False
    parts: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()
    place: str = ""
    local: str = ""
    quantity: tuple[tuple[float, str], ...] = ()
    disposal: bool = False  # a verb or noun of disposal ("버려", "분리수거")
    demonstrative: bool = False  # "이거", "이건": an item the text does not name
    wh: frozenset[str] = frozenset()

    @property
    def nouns(self) -> tuple[str, ...]:
        return self.analysis.nouns

    def has(self, *lemmas: str) -> bool:
        return self.analysis.has(*lemmas)

    def mentions(self, *words: str) -> bool:
        compact = self.text.replace(" ", "")
        return any(w.replace(" ", "") in compact for w in words)


@dataclass(frozen=True)
class Question:
    text: str
    language: str  # "ko" or "en"
    parts: tuple[Part, ...] = field(default_factory=tuple)

    @property
    def items(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i for p in self.parts for i in p.items))


@cache
def _lexicon() -> dict:
    lex = K.lexicon()
    return {
        "destinations": {K.normalise(k).replace(" ", ""): v for k, v in lex["destinations"].items()},
        "bins": sorted({b.replace(" ", "") for b in lex["bins"]}, key=len, reverse=True),
        "places": sorted({p.replace(" ", "") for p in lex["places"]}, key=len, reverse=True),
        "parts": frozenset(lex["parts"]),
        "steps": dict(lex["steps"]),
        "local": lex["local"],
        "food_parts": frozenset(lex.get("food_parts") or ()),
    }


def language(text: str) -> str:
    return "en" if len(_HANGUL.findall(text)) <= 1 and len(_LATIN.findall(text)) >= 3 else "ko"


def split(text: str) -> list[str]:
    """The message's requests: sentences, and clauses joined by 그리고/또 or a "-고" ending
    followed by another request ("페트병 어떻게 버리고 근처 수거함도 알려줘")."""
    a = analyse(text)
    cuts: list[int] = []
    tokens = a.tokens
    for i, t in enumerate(tokens):
        rest = tokens[i + 1 :]
        if not rest:
            break
        has_more = any(r.tag in ("VV", "VA", "VCP", "VX") for r in rest) and any(r.tag.startswith("NN") for r in rest)
        if (
            t.tag in ("SF",)
            or (t.tag == "MAJ" and t.form in ("그리고", "또한", "그리고요", "아울러", "그리구"))
            and i > 0
        ):
            cuts.append(t.end if t.tag == "SF" else t.start)
        elif t.tag == "MAG" and t.form == "또" and i > 0 and has_more:
            cuts.append(t.start)
        elif (
            t.tag == "EC"
            and t.form in ("고", "구")
            and tokens[i - 1].tag in ("VV", "VA", "VX", "XSV", "VCP")
            and _ends_request(tokens[: i + 1], rest)
        ):  # "누구고"
            cuts.append(t.end)
    pieces, start = [], 0
    for cut in cuts:
        piece = a.text[start:cut].strip(" ,")
        if piece and re.search(r"[가-힣A-Za-z0-9]", piece):
            pieces.append(piece)
        start = cut
    tail = a.text[start:].strip(" ,")
    if tail and re.search(r"[가-힣A-Za-z0-9]", tail):
        pieces.append(tail)
    merged: list[str] = []
    for piece in pieces:  # a piece with nothing but a conjunction or a question word joins the previous one
        words = re.sub(r"^(그리고요?|또한?|아울러|그리구)\s*", "", piece)
        if merged and len(re.findall(r"[가-힣A-Za-z0-9]", words)) < 2:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(words or piece)
    return merged or [text.strip()]


def _ends_request(tokens: tuple[Token, ...], rest: tuple[Token, ...]) -> bool:
    """A "-고" clause that is a request of its own ("페트병 어떻게 버리고", "헌옷은 어디다 버리고"),
    not a step of one ("라벨 떼고 버려도 돼?", "랩 쓰고 난 거"): it names something, asks how or
    where, or ends in a verb of disposal, and what follows names something else."""
    verb = tokens[-2] if len(tokens) >= 2 else tokens[-1]
    asks = any(t.form in WH or t.lemma in WH for t in tokens) or verb.lemma in DISPOSE
    return (
        asks
        and any(t.tag.startswith("NN") for t in tokens)
        and any(t.tag.startswith("NN") and t.form not in NOT_ITEMS or t.tag == "NP" for t in rest)
    )


def read(text: str) -> Question:
    lang = language(text)
    return Question(text, lang, tuple(read_part(p) for p in split(text)))


def _compact(tokens) -> str:
    return "".join(t.form for t in tokens)


def _contains_any(compact: str, words: list[str]) -> str:
    return next((w for w in words if w in compact), "")


def read_part(text: str) -> Part:
    """What one request asks; read once per text within a turn (turn.one_turn): the intent reads
    the message's parts, and the waste branch reads the part it was sent again."""
    return turn.once("parts", text, _read_part)


def _read_part(text: str) -> Part:
    lex = _lexicon()
    a = analyse(text)
    lemmas = a.lemmas
    wh = frozenset(w for w in WH if w in lemmas or any(t.form == w for t in a.tokens))
    compact_all = a.text.replace(" ", "")
    disposal = (
        bool(lemmas & DISPOSE)
        or any(t.form in DISPOSAL_NOUNS for t in a.tokens)
        or "분리수거" in compact_all
        or "분리배출" in compact_all
    )
    predicates = [
        t for t in a.tokens if t.tag in ("VV", "VA", "VX", "VCP", "XSV", "XSA", "VV-I", "VA-I", "VV-R", "VA-R")
    ]
    find = (
        bool(lemmas & FIND)
        or "어디" in wh
        and bool(lemmas & {"있다", "이다", "가다", "어딨다"})
        or "어딨" in compact_all
    )
    near = any(t.form in NEAR for t in a.tokens) or "가깝다" in lemmas

    items: list[str] = []
    parts: list[str] = []
    proposed = ""
    place = ""
    demonstrative = any(
        t.form in ("이거", "이건", "저거", "그거", "이것", "저것", "그것", "얘", "이") and t.tag == "NP"
        for t in a.tokens
    )
    phrases = [_without_verb(a, p) for p in a.phrases if not _modifies_next(a, p)]
    phrases = [p for p in phrases if p]
    region_words = _regions()
    situations = _situations()  # "인테리어 하고 남은 타일": where the waste comes from, not an item
    characters = _character_names()
    if any(t.form in GENERIC_PLACES | PLACE_NOUNS and t.tag.startswith("NN") for t in a.tokens) and (
        near or find or "어디" in wh and not lemmas & DISPOSE
    ):
        place = "collection_point" if lemmas & DISPOSE else "location"  # "근처에 건전지 버릴 곳 있어?"
    for n, phrase in enumerate(phrases):
        nxt = a.after(phrase[-1])
        phrase = tuple(
            t
            for t in _without_compounds(phrase, NOT_ITEMS | situations)
            if t.form not in region_words and t.form not in characters and t.form not in NOT_ITEMS | situations
        )
        if not phrase:
            continue
        words = [t.form for t in phrase if t.tag not in ("XSN",) or t.form in ("류",)]
        compact = "".join(words)
        # a bin or place in the phrase: where the item goes ("캔 수거함에 … 넣어도 돼?"), or a place asked for
        bin_word = _contains_any(compact, lex["bins"])
        place_word = "" if bin_word else _contains_any(compact, lex["places"])
        if bin_word or place_word:
            item_tokens, category, own_item = _split_bin(phrase, bin_word or place_word)
            item_tokens = [t for t in item_tokens if t.form not in NOT_ITEMS and t.form not in DISPOSAL_NOUNS]
            rest = _surface(a, phrase, [t.form for t in item_tokens]) if item_tokens else ""
            as_destination = nxt is not None and (
                nxt.tag in ("JKB",) and nxt.form in ("에", "에다", "에다가", "로", "으로") and bool(lemmas & DISPOSE)
            )
            missing = _followed_by(a, phrase, "없다")  # "유리병 수거함 없으면 어떡해": a condition of the rules
            if missing:
                item = rest or category or own_item
                if item:
                    items.append(_with_modifier(a, phrase, item))
                continue
            verb_like = (
                bin_word.endswith("함")
                and not find
                and not near
                and not any(p.start > phrase[-1].end for p in predicates)
                and not as_destination
            )
            # "전기장판 의류수거함 되나요?": whether the item may go in it, not where the bin is
            allowed = (
                bool(bin_word)
                and (n > 0 or bool(item_tokens))
                and not find
                and not near
                and "어디" not in wh
                and any(
                    p.start > phrase[-1].end and p.lemma in ("되다", "가능하다", "괜찮다", "맞다", "안되다")
                    for p in predicates
                )
            )
            as_destination = as_destination or allowed and not verb_like
            if as_destination or verb_like:  # "캔 수거함에 넣어도 돼?" / "플라스틱 분리수거함?" (= 분리수거 함?)
                if verb_like:  # the bin is the verb: "is it 분리수거'd?", and a category before it is the item
                    rest = rest or category
                    dest = "재활용"
                else:
                    dest = destination(category) or _file_of(own_item) or ("재활용" if "분리" in bin_word else "")
                proposed = proposed or dest
                if rest:
                    items.append(_with_modifier(a, phrase, rest))
                continue
            # a bin or place ending a question asks where it is ("분리수거함?", "재활용센터 어디야"),
            # not when the question asks something else of it ("고물상 얼마", "분리수거장 몇시에 열어")
            if (
                find
                or near
                or n == len(phrases) - 1
                and a.is_question
                and not lemmas & DISPOSE
                and (not wh or "어디" in wh)
            ):
                place = "collection_point" if bin_word else "location"
            item = rest or own_item or category
            if item and item not in NOT_ITEMS and not destination(item) or item and rest:
                items.append(_with_modifier(a, phrase, item))
            continue
        # a bag or bin of a category named as where the item goes ("음식물 쓰레기 봉투에 뼈 넣어도
        # 돼?", "일반쓰레기 봉투에 건전지"): that category is proposed, the whole phrase is no item
        if len(words) > 1 and words[-1] in CONTAINERS and nxt is not None and nxt.tag == "JKB" and lemmas & DISPOSE:
            held = destination("".join(w for w in words[:-1] if w not in ("쓰레기",))) or destination(
                "".join(words[:-1])
            )
            if held:
                proposed = proposed or held
                continue
        # a category the user proposes ("음쓰 맞아?", "일반쓰레기로 버려?"), possibly after the item ("치킨 뼈 음쓰임?")
        head, dest = _splitdestination(words)
        marks_destination = (
            nxt is None
            and a.is_question
            or nxt is not None
            and (
                nxt.tag in ("VCP", "JKB", "SF")
                or nxt.form in ("맞", "아니", "인가", "야", "되", "안")
                or nxt.tag == "JX"
                and _yes_no_after(a, nxt)
            )
        )
        if dest and marks_destination:  # "치킨 뼈 음쓰임?", "음쓰 맞아?": the category is proposed, not the item
            proposed = proposed or dest
            if not head:
                continue
            words = head
        content = [w for w in words if w not in NOT_ITEMS and w not in DISPOSAL_NOUNS]
        if not content:
            continue
        part_words = [w for w in content if w in lex["parts"]]
        others = [w for w in content if w not in lex["parts"]]
        if part_words and others:
            parts.extend(part_words)
            content = others
        elif part_words and len(phrases) > 1:
            parts.extend(part_words)
            continue
        elif part_words:
            parts.extend(part_words)
        items.append(_with_modifier(a, phrase, _surface(a, phrase, content)))
    if not items:  # "인테리어 공사하고 남은 폐기물": with nothing else named, the waste is that situation's category
        items = [_situation_file(t.form) for t in a.tokens if t.form in situations][:1]
    # a lone category word is the item itself ("음쓰 어디다 버려?", "페트병에 라벨 붙은 채로 내놔도 돼?")
    steps_asked = any(k in lemmas for k in lex["steps"])
    if not items and proposed and (not a.is_question or wh or parts or steps_asked):
        items = (
            [next(k for k, v in _lexicon()["destinations"].items() if v == proposed)] if proposed != "재활용" else []
        )
        if items:
            items = [_surface_of(a, proposed) or items[0]]
            proposed = ""
    steps = tuple(dict.fromkeys(v for k, v in lex["steps"].items() if k in lemmas))
    local = next(
        (
            kind
            for kind, spec in lex["local"].items()
            if any(w.replace(" ", "") in compact_all for w in spec["words"])
            and (not spec.get("with") or any(w in compact_all for w in spec["with"]))
        ),
        "",
    )
    if local == "schedule" and not (disposal or items or "수거" in compact_all):
        local = ""
    if local == "contact" and not (
        "전화" in compact_all
        or "연락" in compact_all
        or "콜센터" in compact_all
        or "번호" in compact_all
        and any(w in compact_all for w in OFFICES)
    ):
        local = ""
    yes_no = (
        a.is_question and not wh or bool(proposed and not wh)
    )  # Korean asks yes/no by a question without a question word
    # Latin words are an item only when the rules know them ("PET", "LED", "CD"), not any English
    # in the text; a single letter only when it is a word of the synonyms ("캔", "옷", "귤")
    items = [i for i in items if not i.isascii() or set(K.normalise(i).split()) <= _latin_words()]
    # a one-letter noun the rules do not name is kept when it is all the message names, to be
    # said unknown ("흙 버리는 법") rather than asked about
    kept = [i for i in items if len(i) > 1 or i in _single_letter_items()]
    counted = {t.form for p_, t in zip(a.tokens, a.tokens[1:]) if p_.tag == "SN"}  # "3층", "2개": a count, not a thing
    items = kept or [
        i for i in items if i in {t.form for t in a.tokens if t.tag == "NNG"} - counted and lemmas & DISPOSE
    ]
    if local:  # the fact asked for is no item ("과태료", "전화번호")
        items = [
            i
            for i in items
            if i.replace(" ", "") not in {w.replace(" ", "") for w in lex["local"][local]["words"]}
            or local.startswith("bag")
        ]
    if local == "bag_price":  # the bag is what is asked about, not something to throw away
        items = [i for i in items if destination(i) != "일반종량제폐기물" and "봉투" not in i and "마대" not in i]
    state = _state_said(a)
    if state and len(items) == 1 and state not in items[0]:  # "형광등 깨졌는데 어떡해" asks about a broken one
        items = [f"{state} {items[0]}"]
    return Part(
        text=text,
        analysis=a,
        items=tuple(dict.fromkeys(i for i in items if i)),
        proposed=proposed,
        yes_no=yes_no,
        parts=tuple(dict.fromkeys(parts)),
        steps=steps,
        place=place,
        local=local,
        quantity=_quantities(a),
        disposal=disposal,
        demonstrative=demonstrative,
        wh=wh,
    )


#: What a category's waste is put in ("음식물 쓰레기 봉투", "재활용 통").
CONTAINERS = frozenset({"봉투", "봉지", "통", "마대", "수거함", "수거통", "바구니", "함"})
#: Offices whose number a "번호" asks for ("구청 번호"); a number of anything else ("로또 번호",
#: "송장 번호") is no contact.
OFFICES = ("구청", "군청", "시청", "주민센터", "동사무소", "행정복지센터", "청소과", "센터", "관리사무소")


def _without_compounds(phrase: tuple[Token, ...], words: frozenset[str]) -> tuple[Token, ...]:
    """The phrase without runs of tokens that spell one of `words` ("주민/센터" is 주민센터)."""
    forms = [t.form for t in phrase]
    drop: set[int] = set()
    for i in range(len(forms)):
        for j in range(i + 2, len(forms) + 1):
            if "".join(forms[i:j]) in words:
                drop.update(range(i, j))
    return tuple(t for k, t in enumerate(phrase) if k not in drop)


#: States of an item the rules treat apart (깨진 유리병, 오염된 비닐), as the verb that says them →
#: the modifier the rules write.
STATES = {
    "깨지다": "깨진",
    "찢어지다": "찢어진",
    "오염되다": "오염된",
    "젖다": "젖은",
    "녹슬다": "녹슨",
    "상하다": "상한",
}


def _state_said(a: Analysis) -> str:
    """The state a predicate says of the item ("형광등 깨졌는데" → 깨진), not a modifier ("깨진
    유리병" is read with the item) and not a negated one ("깨지지 않게")."""
    for i, t in enumerate(a.tokens):
        lemma = (
            t.lemma
            if t.tag.startswith("VV")
            else a.tokens[i - 1].form + "되다"
            if t.tag == "XSV" and t.form == "되" and i > 0
            else ""
        )
        if lemma not in STATES:
            continue
        after = a.tokens[i + 1 : i + 4]
        if after and after[0].tag == "ETM" or any(x.form in ("않", "말", "못") for x in after):
            continue
        return STATES[lemma]
    return ""


#: Nouns for "a place" in general ("버릴 곳", "버릴 데", "수거 장소").
GENERIC_PLACES = frozenset({"곳", "데", "장소", "수거장소", "배출장소"})
#: Places that take some waste back ("근처 약국 알려줘" for medicine): a place question with a
#: word of nearness or finding.
PLACE_NOUNS = frozenset({"약국", "보건소", "주민센터", "행정복지센터", "동사무소", "마트", "대리점"})


@cache
def _regions() -> frozenset[str]:
    from . import bulk_waste as BW

    v = BW.vocabulary()
    return frozenset(
        [
            *v.regions,
            *v.sido_words,
            *v.aliases,
            "서울",
            "부산",
            "대구",
            "인천",
            "광주",
            "대전",
            "울산",
            "세종",
            "경기",
            "제주",
        ]
    )


@cache
def _situations() -> frozenset[str]:
    return frozenset(w for words in (K.lexicon().get("situations") or {}).values() for w in words)


def _situation_file(word: str) -> str:
    """The name of the rule file a situation word selects ("인테리어" → "공사장 생활폐기물")."""
    file = next(f for f, words in K.lexicon()["situations"].items() if word in words)
    return next(r.name for r in K.load().rules if r.file == file)


@cache
def _single_letter_items() -> frozenset[str]:
    """One-letter words that are items: the synonyms' ("캔", "옷", "귤") and the rules' ("칼", "철")."""
    base = K.load()
    rules = {w for p in base.passages for w in re.split(r"[^가-힣]+", p.names) if len(w) == 1}
    return frozenset({k.lstrip("^=") for k in base.synonyms if len(k.lstrip("^=")) == 1} | rules)


@cache
def _latin_words() -> frozenset[str]:
    """The Latin words of the rules and synonyms ("pet", "led", "cd", "tv")."""
    base = K.load()
    text = " ".join([*(r.index_text for r in base.rules), *base.synonyms.values()])
    return frozenset(w for w in re.findall(r"[a-z]+", K.normalise(text)) if len(w) >= 2)


def _character_names() -> frozenset[str]:
    """The Eco² characters' names (morph.add_names: chat learns them from CharacterService)."""
    return frozenset(morph.names())


#: Verbs that make a state of the noun before them ("고장나다", "구멍나다", "녹슬다"): that noun says
#: what happened to the item, it is not part of its name.
STATE_VERBS = frozenset({"나다", "슬다"})


def _without_verb(a: Analysis, phrase: tuple[Token, ...]) -> tuple[Token, ...]:
    """The phrase without a last noun that is a verb with 하다/되다 ("집수리하고" → 집,
    "페트병분리수거함?" → 페트병) or a state with 나다 ("우산 고장났는데" → 우산): that noun is
    what is done or what happened, not an item."""
    nxt = a.after(phrase[-1])
    if nxt is not None and nxt.tag in ("XSV", "XSA") and nxt.start == phrase[-1].end:
        return phrase[:-1]
    if (
        nxt is not None
        and nxt.tag.startswith("VV")
        and nxt.lemma in STATE_VERBS
        and nxt.start == phrase[-1].end
        and len(phrase) > 1
    ):
        return phrase[:-1]
    return phrase


def _modifies_next(a: Analysis, phrase: tuple[Token, ...]) -> bool:
    """A noun that belongs to the next phrase's modifier ("기름 묻은 피자박스": 기름; "딸기 담겨
    있던 트레이", "티비 살 때 들어있던 스티로폼": 딸기, 티비 are what it held or came with)."""
    i = a.tokens.index(phrase[-1])
    rest = a.tokens[i + 1 : i + 4]
    if (
        len(rest) >= 3
        and rest[0].tag.startswith(("VV", "VA"))
        and rest[0].lemma not in DISPOSE
        and rest[1].tag == "ETM"
        and rest[2].tag in ("NNG", "NNP", "XPN")
        and rest[2].form not in NOT_ITEMS
    ):  # "수거함 없는 아파트": 아파트 is no item
        return True
    j = i + 1
    while j < len(a.tokens) and a.tokens[j].tag == "JKS":
        j += 1
    chain = 0
    while j < len(a.tokens) and (
        a.tokens[j].tag.startswith(("VV", "VA", "VX", "EC", "EP", "ETM"))
        or a.tokens[j].form == "때"
        and a.tokens[j - 1].tag == "ETM"
    ):
        if a.tokens[j].tag.startswith(("VV", "VA")) and a.tokens[j].lemma in DISPOSE:
            return False
        chain += 1
        j += 1
    return (
        chain >= 3
        and j < len(a.tokens)
        and a.tokens[j - 1].tag == "ETM"
        and a.tokens[j].tag in ("NNG", "NNP", "XPN")
        and a.tokens[j].form not in NOT_ITEMS
        and a.tokens[j].form not in _lexicon()["food_parts"]
    )  # "치킨 먹고 남은 뼈": the food's bone


def _surface(a: Analysis, phrase: tuple[Token, ...], content: list[str]) -> str:
    """The item as the user wrote it ("종이컵", not "종이 컵"), from its first to its last content word."""
    inside = [t for t in phrase if t.form in content]
    if not inside:
        return " ".join(content)
    return a.text[inside[0].start : inside[-1].end].strip()


def _file_of(word: str) -> str:
    """The rule file a bin's own word names by retrieval ("형광등" → 재활용폐기물_조명제품)."""
    hits = K.load().search(word, limit=1) if word else []
    return hits[0].rule.file if hits else ""


def _split_bin(phrase: tuple[Token, ...], bin_word: str) -> tuple[list[Token], str, str]:
    """A phrase naming a bin: (the item's tokens before it, the bin's category word, an item the
    bin's own name carries). "이불 의류수거함" → ([이불], "의류", ""); "캔 수거함" → ([], "캔", "");
    "폐의약품수거함" → ([], "", "폐의약품"); "폐건전지 수거함" → ([폐, 건전지], "", "")."""
    forms = [t.form for t in phrase]
    for i in range(len(phrase)):
        if bin_word in "".join(forms[i:]) and bin_word not in "".join(forms[i + 1 :]):
            own = "".join(forms[i:]).replace(bin_word, "") or re.sub(
                r"(분리|전용)?수거함$|함$|통$|수거통$", "", bin_word
            )
            before = list(phrase[:i])
            if not destination(own) and before and destination(before[-1].form):
                return before[:-1], before[-1].form, ""
            if destination(own):
                return before, own, ""
            return before, "", own if own not in ("분리", "전용", "", bin_word) else ""  # a place's own name is no item
    return [], "", ""


def _followed_by(a: Analysis, phrase: tuple[Token, ...], lemma: str) -> bool:
    """The phrase's next predicate (after its particles) is `lemma` ("수거함이 없으면")."""
    i = a.tokens.index(phrase[-1]) + 1
    while i < len(a.tokens) and a.tokens[i].tag.startswith(("J", "X")):
        i += 1
    return i < len(a.tokens) and a.tokens[i].lemma == lemma


def _yes_no_after(a: Analysis, tok: Token) -> bool:
    nxt = a.after(tok)
    return nxt is not None and nxt.form in ("맞", "아니", "이")


def destination(word: str) -> str:
    """The rule file a category word names ("음쓰" → 음식물류폐기물), or ""."""
    return _lexicon()["destinations"].get(K.normalise(word).replace(" ", ""), "")


def _surface_of(a: Analysis, dest: str) -> str:
    for phrase in a.phrases:
        word = "".join(t.form for t in phrase)
        if destination(word) == dest:
            return word
    return ""


def _splitdestination(words: list[str]) -> tuple[list[str], str]:
    """A phrase ending in a category word: (the words before it, the category)."""
    for k in range(len(words)):
        tail = "".join(words[k:])
        dest = destination(tail)
        if dest:
            return words[:k], dest
    return words, ""


#: Verbs whose modifier says nothing about the item's state ("다 쓴", "나온", "남은").
PLAIN_MODIFIERS = frozenset(
    {
        "쓰다",
        "있다",
        "하다",
        "되다",
        "나오다",
        "생기다",
        "남다",
        "모으다",
        "사다",
        "받다",
        "먹다",
        "마시다",
        "모이다",
        "들다",
    }
)


def _with_modifier(a: Analysis, phrase: tuple[Token, ...], core: str) -> str:
    """The item with the state a modifier names, before it ("깨진 유리병", "기름 묻은 배달용기")
    or after it ("배달 용기 기름 묻은 거")."""
    i = a.tokens.index(phrase[0])
    if (
        i >= 2
        and a.tokens[i - 1].tag == "ETM"
        and a.tokens[i - 2].tag.startswith(("VV", "VA"))
        and a.tokens[i - 2].lemma not in DISPOSE | PLAIN_MODIFIERS
    ):
        start = a.tokens[i - 2].start
        if i >= 3 and a.tokens[i - 3].tag in ("NNG",) and a.tokens[i - 3].end >= start - 1:
            start = a.tokens[i - 3].start  # "기름 묻은"
        return f"{a.text[start : a.tokens[i - 1].end].strip()} {core}".strip()
    j = a.tokens.index(phrase[-1])
    after = a.tokens[j + 1 : j + 4]
    if (
        len(after) >= 3
        and after[0].tag.startswith(("VV", "VA"))
        and after[1].tag == "ETM"
        and after[2].form in ("거", "것", "건", "게")
        and after[0].lemma not in DISPOSE | PLAIN_MODIFIERS
    ):
        state = a.text[after[0].start : after[1].end].strip()
        words = core.split()
        if len(words) > 1 and words[-1] == phrase[-1].form:  # "용기 기름 묻은 거": 기름 goes with 묻은
            return f"{words[-1]} {state} {' '.join(words[:-1])}"
        return f"{state} {core}"
    return core


def _quantities(a: Analysis) -> tuple[tuple[float, str], ...]:
    out = []
    for tok in a.tokens:
        if tok.tag != "SN":
            continue
        nxt = a.after(tok)
        unit = UNITS.get((nxt.form if nxt is not None else "").lower())
        if unit:
            try:
                out.append((float(tok.form.replace(",", "")), unit))
            except ValueError:
                continue
    return tuple(out)
