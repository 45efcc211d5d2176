"""What the disposal rules say about one asked item: the passages an answer quotes, and the
direct answer they give.

For an item ("귤 껍질", "생선뼈", "가위") the knowledge base's passages (kb.about: what a file
covers, each common line, each detail line, each refused item) are ranked; the best file is the
item's category, and from it only what concerns the item is kept:

    basis       the passage that says what the item is (its scope, or its refused-item line)
    refused     the item is one of the file's refused items: it goes elsewhere (`dest`)
    steps       the file's common lines, minus lines about other items ("공기구, 철사 … 고철은
                고철 수거함에 배출" is not about a tuna can), and the detail lines about the item
    exceptions  refused items and conditions that concern the item
    verdict     for a yes/no question: "yes"/"no" when the rules decide it (the proposed
                category is or is not where the item goes; the step asked for is or is not in
                the rules), "" when they do not

A line's subject is what it is about ("종이컵은 …", "리튬전지는 …"): the nouns before its topic
particle, read once per line with the analyser. Lines without one apply to every item of the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

from eco2.services.knowledge import kb as K
from eco2.services.knowledge.morph import analyse

from . import question as Q

#: Of a passage's score, what a second passage needs to be quoted too.
KEEP = 0.5
#: Below this BM25 score an item's best passage is chance, not support.
MIN_SUPPORT = 2.0


@dataclass
class Finding:
    item: str
    file: str
    name: str  # the category's name ("무색페트병", "발포합성수지(스티로폼 등)")
    score: float
    basis: dict
    refused: bool = False
    dest: str = ""  # where the item goes, as the rules say it ("일반종량제폐기물로 배출")
    dest_files: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # [{source_id, title, lines}]
    exceptions: list[dict] = field(default_factory=list)
    category_level: bool = False  # the item is the category itself ("플라스틱", "음쓰")
    verdict: str = ""  # "yes" | "no" | ""
    answer_line: str = ""  # the rule line that answers a yes/no about a step or part
    proposed: str = ""  # the proposed category's name
    brief: bool = False  # the question asks something else about it (a collection day): the direct answer only
    nearest: bool = False  # found by the fallback chain's retry: the nearest rule, not the item's own
    mentioned: bool = (
        False  # a part the rules name only as removed from another item ("빨대", "라벨"): no category of its own
    )

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _doc(p: K.Passage, lines: list[str] | tuple[str, ...]) -> dict:
    return {"source_id": p.doc.source_id, "title": p.doc.title, "lines": list(lines)}


def _merge(blocks: list[dict]) -> list[dict]:
    """Lines of one section together, in the section's order, each once."""
    out: dict[str, dict] = {}
    for b in blocks:
        got = out.setdefault(b["source_id"], {**b, "lines": []})
        got["lines"] += [line for line in b["lines"] if line not in got["lines"]]
    return list(out.values())


@cache
def _category_words() -> frozenset[str]:
    """Words that name a category rather than an item: synonyms add them, selection ignores them."""
    base = K.load()
    words = {K.normalise(w).replace(" ", "") for r in base.rules for w in (r.name, r.key, r.category, r.file)}
    words |= {w[len("재활용폐기물_") :] for w in words if w.startswith("재활용폐기물_")}
    return frozenset(words | {"재활용폐기물", "재활용", "일반종량제폐기물", "대형", "용기", "배출"})


def specific(item: str, kb: K.KnowledgeBase) -> str:
    """The item with its synonyms' words that are not category names ("샴푸통" → "샴푸통 펌프")."""
    extra = kb.expand(item)[len(item) :].split()
    return " ".join([item, *(w for w in extra if K.normalise(w).replace(" ", "") not in _category_words())])


@cache
def subject(line: str) -> str:
    """What a rule line is about: the words before its topic particle ("종이컵은 압착하여 …" →
    "종이컵"), or "" for a line about every item of its file."""
    a = analyse(line)
    for i, t in enumerate(a.tokens):
        if t.tag == "JX" and t.form in ("은", "는", "ᆫ") and i > 0:
            head = line[: t.start].strip()
            return head if "(" not in head and len(head) <= 40 else ""
        if (
            t.tag in ("JKO", "JKB", "EC", "EF", "SS")
            or t.tag.startswith(("VV", "VA"))
            and not (i + 1 < len(a.tokens) and a.tokens[i + 1].tag == "ETM")
        ):
            return ""
    return ""


@cache
def _about_items(line: str) -> bool:
    """A line whose subject lists items ("가위, 칼, 송곳 등 날카로운 금속은 …"), not one that
    names a whole category ("농약, 락카, 광택제 등 생활계 유해폐기물은 제외")."""
    head = subject(line).split()[-1:] if subject(line) else []
    word = K.normalise(head[0]) if head else ""
    return (
        bool(head)
        and word not in _category_words()
        and not any(word in w for w in _category_words() if len(head[0]) >= 3)
    )


def _matches(text: str, query: str) -> bool:
    """The query shares a word (two letters or more, or one letter standing alone: "칼") or a
    trigram with the text."""
    normal = K.normalise(text)
    compact = normal.replace(" ", "")
    words = K.normalise(query).split()
    if any(w in compact for w in words if len(w) >= 2) or any(w in normal.split() for w in words if len(w) == 1):
        return True
    return any(g in compact for g in K.ngrams(query) if len(g) == 3)


def dest_files(kb: K.KnowledgeBase, text: str) -> list[str]:
    """The rule files a destination phrase names ("일반종량제폐기물 또는 대형폐기물로 배출",
    "불연성종량제봉투로 배출", "플라스틱류로 배출")."""
    compact = K.normalise(text).replace(" ", "")
    out = list(dict.fromkeys(file for file, words in kb.destination_words if any(w in compact for w in words)))
    if "불연성종량제봉투" in compact or "불연성특수규격" in compact:
        out = ["불연성종량제폐기물", *[f for f in out if f != "불연성종량제폐기물"]]
    if "일반종량제" in compact and "일반종량제폐기물" not in out:
        out.append("일반종량제폐기물")
    return out


def _line_dest(line: str) -> str:
    """Where a rule line sends its subject ("깨진 유리병은 불연성종량제봉투로 배출하거나 …" →
    "불연성종량제봉투"): the first "… (으)로/에 배출" after the subject."""
    rest = re.sub(r"^\s*[은는]\s", "", line[len(subject(line)) :])
    for m in re.finditer(r"([가-힣A-Za-z·]+?(?:\s[가-힣]+?)?)(?:으로|로|에)\s*배출(하지 않|하지 말|불가)?", rest):
        if not m.group(2):  # "… 배출하지 않도록" says where it must not go
            words = [w for w in m.group(1).split() if w not in ("또는", "및", "혹은")]
            while len(words) > 1 and re.search(
                r"(여|고|서|며|거나)$", words[0]
            ):  # "이용하여 불연성종량제폐기물로": how, then where
                words.pop(0)
            return " ".join(words)
    return ""


def _rank(kb: K.KnowledgeBase, item: str) -> list[tuple[K.Passage, float]]:
    """kb.about, with lines whose subject is the item counted twice ("가위, 칼, 송곳 등 날카로운
    금속은 …" is about scissors; "… 칼이나 가위로 잘라서 배출" only mentions them)."""
    ranked = []
    own = K.normalise(item.split()[0]).replace(" ", "") if item else ""
    for p, score in kb.about(item):
        if p.kind in ("step", "detail") and any(
            _about_items(line) and _matches(subject(line), item) for line in p.lines
        ):
            score *= 2
        if (
            p.kind in ("exception", "scope")
            and len(own) >= 3
            and own in {K.normalise(n).replace(" ", "") for n in re.split(r"[,·()]", p.names)}
        ):
            score *= 3  # the item by its own name ("종이호일"), whatever its synonyms add ("호일" → 알루미늄)
        ranked.append((p, score))
    return sorted(ranked, key=lambda ps: -ps[1])


def find(kb: K.KnowledgeBase, item: str, part: Q.Part | None = None) -> Finding | None:
    """What the rules say about `item`; None when nothing supports an answer."""
    files = {r.file: r for r in kb.rules}
    spec = specific(item, kb)
    ranked = _rank(
        kb, spec
    )  # passages by the item's own words: category names would favour any line naming the category
    hits = kb.search(item, limit=2)  # files by every synonym: good at the category, not at the line
    known = kb.expand(item) != item  # an everyday word synonyms.yaml maps ("드라이기" → 전기전자제품)
    if (not ranked or ranked[0][1] < MIN_SUPPORT) and not (hits and known):
        return None  # a chance bigram ("요가매트" ↔ "식탁매트") is no support
    named = Q.destination(item)  # a category word ("음쓰", "플라스틱") is that category
    if named in files:
        rule = files[named]
    elif not ranked or ranked[0][1] < MIN_SUPPORT:
        rule = hits[0].rule
    elif hits and ranked[0][0].file != hits[0].rule.file and ranked[0][0].kind == "step":
        rule = (
            hits[0].rule
        )  # a common line naming the item in passing ("TV, 컴퓨터 … 발포합성수지는") does not make it that file's item
    else:
        rule = files[ranked[0][0].file]  # an item named by a file's items, details or refused items is about that file
    # an everyday word synonyms.yaml gives a category ("피아노" → 대형폐기물) is in that category
    # when no passage names the word itself: passages naming the category word in passing
    # ("대형폐기물로 배출: … 장판 등 대형폐기물" of 공사장 생활폐기물) are not about it
    by_synonym = dest_files(kb, kb.expand(item)[len(item) :]) if known and named not in files else []
    if (
        len(by_synonym) == 1
        and not (ranked and _matches(ranked[0][0].names or " ".join(ranked[0][0].lines), item))
        and by_synonym[0] in {h.rule.file for h in hits}
    ):
        rule = files[by_synonym[0]]
    situated = _situation(kb, part, spec) if part is not None else None
    if situated is not None:  # "집수리하고 나온 폐벽돌": the file of where it comes from, when it names the item
        rule = files[situated]
    made_of = _material(item, rule, files) if situated is None and named not in files else ""
    if made_of:  # "갈색 약병 유리": a glass bottle, whatever it held
        rule = files[made_of]
    score = ranked[0][1] if ranked else hits[0].score
    narrow = {id(p): s for p, s in kb.about(spec, files={rule.file})}
    compact = K.normalise(item).replace(" ", "")
    category_level = compact in {K.normalise(w).replace(" ", "") for w in (rule.name, rule.key)} or named == rule.file
    scope = next(p for p in rule.passages if p.kind == "scope")
    scope_score = narrow.get(id(scope), 0.0)
    related = sorted(
        (
            (p, narrow[id(p)])
            for p in rule.passages
            if p.kind == "exception" and id(p) in narrow and _matches(p.about, spec)
        ),
        key=lambda ps: -ps[1],
    )
    # a refused item is the asked item when the item's own words name it: a part its synonyms add
    # ("샴푸통" → 펌프) is an exception that applies to it, not what it is
    parts = set(K.lexicon()["parts"])
    own = " ".join(w for w in spec.split() if w not in parts or w in K.normalise(item).split())
    # a word before the item's head naming the file's own category says what the item is made of,
    # not which refused item it is ("종이 도시락 용기" is no 종이호일; "파란색 페트병" keeps its head)
    made_of_words = {w for w in K.normalise(item).split()[:-1] if Q.destination(w) == rule.file}
    own = " ".join(w for w in own.split() if w not in made_of_words) or own
    refused = next((p for p, _ in related if is_named(p.names, own)), None) if not category_level else None
    if (
        refused is None and not category_level and K.normalise(item) in parts
    ):  # a bare part a refused item is named by ("송장" ↔ "택배 송장")
        refused = next((p for p, _ in related if _matches(p.names, item)), None)
    # what the item is: the scope lines that name it (the file's own targets first), else its targets
    naming = [line for line in scope.lines if _matches(line, spec)][:2] or list(
        scope.lines[: max(1, len(rule.targets))]
    )
    f = Finding(
        item=item,
        file=rule.file,
        name=rule.name,
        score=round(score, 2),
        basis=_doc(scope, naming),
        category_level=category_level,
    )
    cut = max([scope_score, *(s for _, s in related[:1])]) * KEEP
    f.exceptions = _merge([_doc(p, p.lines) for p, s in related if s >= cut and p is not refused])
    if category_level:
        f.exceptions = _merge([_doc(p, p.lines) for p in rule.passages if p.kind == "exception"])
    if refused is not None:  # it goes elsewhere: the steps are those of where it goes
        f.refused, f.dest, f.basis = True, refused.dest, _doc(refused, refused.lines)
        f.dest_files = dest_files(kb, refused.dest)
        there = files.get(f.dest_files[0]) if f.dest_files else None
        f.steps = (
            _steps(there, specific(item, kb), item, generic_only=True)[0]
            if there is not None and there.file != rule.file
            else []
        )
    else:
        f.steps, specific_dest = _steps(rule, spec, item, category_level=category_level)
        named_dest = dest_files(kb, specific_dest) if specific_dest else []
        f.dest_files = [d for d in named_dest if d != rule.file][:1] or [rule.file]
        f.dest = specific_dest if named_dest and named_dest[0] != rule.file else rule.name
    if _only_mentioned(rule, item, f) and not (
        part is not None and part.steps
    ):  # "라벨 안 떼고 버려도 돼?" asks a step about it
        f.mentioned = True
        f.steps = [{**d, "lines": [line for line in d["lines"] if _matches(line, item)]} for d in f.steps]
        f.steps = [d for d in f.steps if d["lines"]]
        f.exceptions = []
        return f  # no yes/no: the rules do not say where it goes
    if part is not None:
        _decide(kb, f, part)
    return f


def _material(item: str, rule: K.RuleFile, files: dict[str, K.RuleFile]) -> str:
    """The rule file a material word says of a container ("갈색 약병 유리", "플라스틱 약통"): a word
    of the item naming a category, beside a container noun that names none; "" when there is none
    or the container holds what `rule` names by its own name ("유리 농약병": the 농약 stays)."""
    words = K.normalise(item).split()
    containers = tuple(K.lexicon()["containers"])
    held = [w for w in words if w.endswith(containers) and Q.destination(w) not in files]
    made_of = [d for d in (Q.destination(w) for w in words if w not in held) if d in files and d != rule.file]
    if not held or not made_of:
        return ""
    names = {K.normalise(n).replace(" ", "") for p in rule.passages for n in re.split(r"[,·()]", p.names)}
    contents = {w[: -len(c)] for w in held for c in containers if w.endswith(c) and len(w) > len(c)}
    return "" if contents & names else made_of[0]


def _only_mentioned(rule: K.RuleFile, item: str, f: Finding) -> bool:
    """A part of other items ("빨대", "뚜껑", "테이프") that the file's lists never name: its lines
    only say to remove it ("내용물, 빨대, 비닐을 제거하고 …"), not where it goes."""
    if f.refused or f.category_level or K.normalise(item) not in set(K.lexicon()["parts"]):
        return False
    return not any(
        _matches(p.names or " ".join(p.lines), item) for p in rule.passages if p.kind in ("scope", "exception")
    )


def _situation(kb: K.KnowledgeBase, part: Q.Part, spec: str) -> str | None:
    """The rule file a situation word of the question selects (lexicon.yaml situations: 집수리,
    인테리어 → 공사장생활폐기물), when one of that file's detail lists names the item."""
    compact = part.text.replace(" ", "")
    for file, words in (K.lexicon().get("situations") or {}).items():
        if any(w in compact for w in words):
            rule = next((r for r in kb.rules if r.file == file), None)
            if rule is not None and any(
                p.kind == "detail" and any(_matches(line, spec) for line in p.lines) for p in rule.passages
            ):
                return file
    return None


def is_named(names: str, spec: str) -> bool:
    """Whether a refused item's name covers the asked item: every part of the name matches one
    of the item's words, a "·" list being alternatives ("소·돼지 등의 뼈" covers "돼지 뼈";
    "바퀴 달린 가방" does not cover a plain "가방", which is only related)."""
    words = set(K.normalise(spec).split())

    def hit(alternative: str) -> bool:
        a = K.normalise(alternative).replace(" ", "")
        return any(a == w or len(a) >= 2 and len(w) >= 2 and (a in w or w in a) for w in words)

    groups = [g.removesuffix("의") or g for g in re.split(r"\s+", re.sub(r"\(.*?\)|등의|등", " ", names).strip()) if g]
    inner = re.findall(
        r"\((.*?)\)", names
    )  # "복합재질 가공식품(티백·육수팩 등)": its examples name it too ("(먹는샘물, 음료 외)" does not)
    if (
        inner
        and "외" not in inner[0].split()
        and any(hit(x) for x in re.split(r"[·,\s]+", re.sub(r"등", "", inner[0])) if x)
    ):
        return True
    return bool(groups) and all(any(hit(x) for x in g.split("·") if x) for g in groups)


def _steps(
    rule: K.RuleFile, spec: str, item: str, *, category_level: bool = False, generic_only: bool = False
) -> tuple[list[dict], str]:
    """The file's common lines (those about other items left out) and its detail lines about
    the item; and where the most specific line about the item sends it."""
    narrow = {}
    details = {id(p): 0.0 for p in rule.passages if p.kind == "detail" and _matches(p.names, spec)}
    if details:
        narrow = (
            {id(p): s for p, s in K.load().about(spec, files={rule.file}) if id(p) in details}
            if rule in K.load().rules
            else {}
        )
    detail_cut = max(narrow.values(), default=0.0) * KEEP
    steps, candidates = [], []  # (priority, where a line about the item sends it)
    for p in rule.passages:
        if p.kind not in ("step", "detail") or generic_only and p.kind == "detail":
            continue
        chosen = p.kind == "detail" and id(p) in details and narrow.get(id(p), 0.0) >= detail_cut
        lines = []
        for line in p.lines:
            about = subject(line)
            mentions = (
                _matches(line, item) or p.kind == "detail" and _matches(line, spec)
            )  # a detail's list naming the item by its other name ("쇼파" → 소파)
            if category_level:
                keep = True
            elif about:  # a line about some items: kept when they are the asked item (or the whole category)
                keep = _matches(about, spec) or _matches(about, rule.name) and not generic_only
            else:
                keep = p.kind == "step" or chosen or mentions
            if not keep:
                continue
            lines.append(line)
            if not category_level and _line_dest(line):
                if about and _matches(about, spec) and _state_fits(about, item):
                    candidates.append((0, 0, _line_dest(line)))
                elif (
                    not about and mentions
                ):  # of two such lines, the one naming more of the item ("깨진 형광등": "조명이 깨진 경우에는 …")
                    candidates.append((1 if p.kind == "detail" else 2, -_shared_words(line, item), _line_dest(line)))
        key_dest = _line_dest(p.doc.section.split("/", 1)[-1]) if p.kind == "detail" else ""
        if (
            key_dest and lines and not category_level
        ):  # a detail named by where its items go ("대형폐기물로 배출": 싱크대, 가구류 …)
            candidates.append((1, 0, key_dest))
        if lines:
            steps.append(_doc(p, lines))
    return _merge(steps), min(candidates)[-1] if candidates else ""


@cache
def _state_of(subject_: str) -> str:
    """The state a line's subject starts with ("깨진 유리병" → "깨진"), or ""."""
    tokens = analyse(subject_).tokens
    if len(tokens) >= 3 and tokens[0].tag.startswith(("VV", "VA")) and tokens[1].tag == "ETM":
        return subject_[: tokens[1].end].strip()
    return ""


def _state_fits(subject_: str, item: str) -> bool:
    """A line about items in a state ("깨진 유리병은 …") sends only items in that state there."""
    state = _state_of(subject_)
    return not state or state in item


def _shared_words(line: str, item: str) -> int:
    """How much of the item a line names: its state words as written count twice ("깨진 형광등":
    "조명이 깨진 경우에는 …" over "형광등과 LED를 깨지지 않도록 …"), its head once."""
    words = K.normalise(line).split()
    compact = "".join(words)
    *states, head = K.normalise(item).split() or [""]
    return 2 * sum(1 for w in states if w in words) + (head in compact)


def _decide(kb: K.KnowledgeBase, f: Finding, part: Q.Part) -> None:
    """The yes/no of a yes/no question, when the rules decide it."""
    if not part.yes_no:
        return
    negated = any(t.form in ("안", "못") and t.tag == "MAG" for t in part.analysis.tokens) or part.has("않다")
    if part.proposed:
        names = {r.file: r.name for r in kb.rules}
        if part.proposed == "재활용":
            f.proposed = "재활용품"
            recyclable = any(d.startswith("재활용폐기물_") for d in f.dest_files)
            f.verdict = "yes" if recyclable else "no"
        else:
            f.proposed = names.get(part.proposed, part.proposed)
            f.verdict = "yes" if part.proposed in f.dest_files else "no"
        return
    words = [*part.parts, *part.steps]
    if not words:
        return
    lines = [line for block in f.steps + f.exceptions for line in block["lines"]]
    said = next((line for line in lines if all(any(w2 in line for w2 in _forms(w)) for w in words)), "") or next(
        (line for line in lines if any(any(w2 in line for w2 in _forms(w)) for w in words)), ""
    )
    if said:
        f.answer_line = said
        f.verdict = "no" if negated else "yes"


def _forms(word: str) -> tuple[str, ...]:
    """A step word as the rules write it ("헹구" → "헹군", "헹구고"; "제거" → "제거", "떼")."""
    return {
        "헹구": ("헹구", "헹군", "헹굴"),
        "닫": ("닫",),
        "압착": ("압착",),
        "펼": ("펼",),
        "묶": ("묶",),
        "비우": ("비우", "비운"),
        "제거": ("제거",),
    }.get(word, (word,))


def shown(f: Finding) -> list[dict]:
    """The rule sections an answer about `f` quotes (its citations), in the answer's order."""
    if f.brief:
        return [{**f.basis, "lines": f.basis["lines"][:1]}]
    docs = [f.basis] if f.refused or not f.steps or f.proposed else []
    return _merge(docs + f.steps + f.exceptions)


def search_key(item: str) -> str:
    """What an item is searched by: as written, plus the food a compound names before a food
    part ("사과껍질" → "사과껍질 사과": "=사과" is fruit) — not before anything else ("사과박스",
    "커피컵" are a box and a cup) and not at a compound's end ("약국")."""
    whole = {k[1:] for k in K.load().synonyms if k.startswith("=")}
    food_parts = set(K.lexicon().get("food_parts") or ())
    tokens = analyse(item).tokens
    inside = [
        t.form
        for t, head in zip(tokens, tokens[1:])
        if t.form in whole and head.form in food_parts and head.start == t.end
    ]
    return " ".join([item, *inside])


def head(item: str) -> str:
    """A compound's head, its last noun ("커터칼" → 칼, "곰인형" → 인형, "실리콘 주방장갑" → 장갑):
    a Korean compound names a kind of its head. "" for an item of one noun."""
    nouns = [t for t in analyse(item).tokens if t.tag in ("NNG", "NNP")]
    if len(nouns) < 2:
        return ""
    last = nouns[-1].form
    return last if len(last) >= 2 or last in Q._single_letter_items() else ""


def gather(kb: K.KnowledgeBase, text: str, *, previous: list[str] = ()) -> dict:
    """The waste branch's context for `text`: a Finding per asked item (as dicts), the items
    the rules do not cover, a local fact asked for, and whether to ask what the item is.
    `previous` are earlier user turns, newest first: a follow-up that names no item ("그럼
    뚜껑은?", "그건 어디에 내놔?") is about the item they asked about."""
    from . import bulk_waste as BW

    question = Q.read(text)
    lex = K.lexicon()
    findings: list[dict] = []
    unknown: list[str] = []
    local: dict | None = None
    named = False
    for part in question.parts:
        items = [i for i in part.items if i not in lex["parts"]] or list(part.items)
        if not items or all(i in lex["parts"] for i in items):
            earlier = next((q.items for q in (Q.read(t) for t in previous) if q.items), ())
            if earlier:
                items = list(earlier)
                part = Q.Part(**{**part.__dict__, "parts": tuple(dict.fromkeys([*part.parts, *part.items]))})
        elif previous and all(K.normalise(i).replace(" ", "") in set(lex.get("attributes") or ()) for i in items):
            earlier = next(
                (q.items for q in (Q.read(t) for t in previous) if q.items), ()
            )  # "그럼 초록색은?": a green one of the last item
            items = [f"{i} {e}" for i in items for e in earlier[:1]] or items
        named = named or bool(items)
        for item in items:
            f = find(kb, search_key(item), part)
            if f is None and head(item):  # "커터칼" is a 칼, "곰인형" an 인형: what the rules say of the head
                f = find(kb, head(item), part)
            if f is not None:
                f.item = item
                f.brief = bool(part.local)
            if f is None:
                unknown.append(item)
            elif not any(
                g["item"] == f.item or (g["file"] == f.file and g["basis"] == f.basis and g["steps"] == f.steps)
                for g in findings
            ):
                findings.append(f.as_dict())
            for piece in (
                part.parts
            ):  # a part that is itself a refused item ("택배 송장", "샴푸통 펌프"): the answer is about it first
                g = find(kb, f"{search_key(item)} {piece}", part)
                if (
                    g is not None
                    and g.refused
                    and _matches(g.basis["lines"][0].split(":")[0], piece)
                    and not any(x["basis"] == g.basis for x in findings)
                ):
                    g.item = f"{item} {piece}"
                    at = next((i for i, x in enumerate(findings) if x["item"] == item), len(findings))
                    if at < len(findings):
                        findings[at].update(verdict="", proposed="", answer_line="")
                    findings.insert(at, g.as_dict())
        phone = re.compile(r"\d{3,4}-\d{4}")
        said = [
            line
            for f in findings
            for d in shown(Finding(**{**f, "brief": False}))
            for line in d["lines"]
            if phone.search(line)
        ]
        answers = (lex["local"].get(part.local) or {}).get("answers") or ()
        answering = [
            f
            for f in findings
            if answers
            and any(w in line for d in shown(Finding(**{**f, "brief": False})) for line in d["lines"] for w in answers)
        ]
        if part.local == "contact" and said:  # the rules give this number (폐가전 무상수거 1599-0903)
            for f in findings:
                f["brief"] = False
        elif (
            answering
        ):  # the rules say it for this item ("특수규격마대는 지자체가 지정한 판매소에서 구매"): that answer, whole
            line_of = {
                f["item"]: next(
                    line
                    for d in shown(Finding(**{**f, "brief": False}))
                    for line in d["lines"]
                    if any(w in line for w in answers)
                )
                for f in answering
            }
            findings[:] = [
                {**f, "brief": False, "verdict": "", "proposed": "", "answer_line": line_of[f["item"]]}
                for f in answering
            ]
        elif part.local and local is None:
            if answers:  # a question about the bag itself ("음쓰 봉투 어디서 사"): no disposal answer about it
                findings[:] = [
                    f
                    for f in findings
                    if not any(w in f["item"] for w in lex["local"][part.local]["words"])
                    and not Q.destination(f["item"])
                ]
            local = dict(lex["local"][part.local], kind=part.local)
    region, _ = BW.find_region(text)
    ctx = {
        "findings": findings,
        "unknown": unknown,
        "local": local,
        "region": region.sigungu if region else "",
        "clarify": not named and local is None,
    }
    return ctx


def context_docs(ctx: dict) -> tuple[list[dict], list[dict]]:
    """The sections quoted (`disposal_rules`, the grader's and the remote model's view) and their citations."""
    from eco2.chat.v1 import chat_pb2

    docs: list[dict] = []
    for f in ctx.get("findings") or []:
        finding = Finding(**f)
        docs += [{**d, "name": finding.name} for d in shown(finding)]
    docs = _merge(docs)
    cites = [
        {
            "source_id": d["source_id"],
            "kind": chat_pb2.CITATION_KIND_RULE,
            "title": d["title"],
            "snippet": " / ".join(d["lines"])[:200],
        }
        for d in docs
    ]
    return docs, cites


def retry(kb: K.KnowledgeBase, ctx: dict, previous: list[str] = ()) -> dict | None:
    """The fallback chain's rewritten query for the items the rules did not cover: each word of
    the item on its own, longest first ("캠핑용 가스통" → "가스통"), then with the previous
    turn's items. What it finds is the nearest rule, not the item's own: the answer says so."""
    missing = list(ctx.get("unknown") or [])
    if not missing:
        return None
    earlier = next((q.items for q in (Q.read(t) for t in previous) if q.items), ())
    found, still = [], []
    for item in missing:
        words = sorted(
            {w for w in K.normalise(item).split() if len(w) >= 2 and w != K.normalise(item)}, key=len, reverse=True
        )
        tries = [(w, item) for w in words] + [
            (f"{e} {item}", f"{item} {e}") for e in earlier
        ]  # with the previous item: "충전식" → "충전식 건전지"
        f, named = next(
            (
                (g, name)
                for g, name in ((find(kb, w), name) for w, name in tries)
                if g is not None and g.score >= 2 * MIN_SUPPORT
            ),
            (None, item),
        )
        if f is None:
            still.append(item)
        else:
            found.append({**f.as_dict(), "item": named, "nearest": True})
    if not found:
        return None
    return {**ctx, "findings": [*(ctx.get("findings") or []), *found], "unknown": still}
