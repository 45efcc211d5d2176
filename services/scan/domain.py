"""The scan pipeline's pure core: categories, the classification a scan rests on, the rules of a
category, the composed answer and who deserves a reward. No I/O here.

A classification has a *basis*: what the photo showed a vision model, the user's hint, or the
user's answer to the scan's question. Offline (no vision model) the photo is never looked at, so
a scan is classified only by what the user said, and the answer says so.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from eco2.character.v1 import character_pb2
from eco2.scan.v1 import scan_pb2
from eco2.services.knowledge.categories import CATEGORY_OF_RULE
from eco2.services.knowledge.kb import KnowledgeBase, RuleFile

C = character_pb2

RECYCLABLE_MAJOR = "재활용폐기물"

VISION, HINT, ANSWER, UNCLASSIFIED = "vision", "hint", "answer", "unclassified"
BASIS = {
    VISION: scan_pb2.SCAN_BASIS_VISION,
    HINT: scan_pb2.SCAN_BASIS_HINT,
    ANSWER: scan_pb2.SCAN_BASIS_ANSWER,
    UNCLASSIFIED: scan_pb2.SCAN_BASIS_UNCLASSIFIED,
}


@dataclass(frozen=True, slots=True)
class Classification:
    """What the scan decided the item is. `rule_file` empty = not classified."""

    basis: str  # VISION | HINT | ANSWER | UNCLASSIFIED
    item: str = ""
    rule_file: str = ""
    confidence: float = 0.0
    situation_tags: tuple[str, ...] = ()
    model: str = ""  # the vision model that saw the photo (basis VISION)

    @property
    def category(self) -> int:
        return CATEGORY_OF_RULE.get(self.rule_file, C.WASTE_CATEGORY_UNSPECIFIED)

    def to_dict(self) -> dict:
        return {**asdict(self), "situation_tags": list(self.situation_tags)}

    @classmethod
    def from_dict(cls, d: dict) -> Classification:
        return cls(
            d["basis"],
            d.get("item", ""),
            d.get("rule_file", ""),
            float(d.get("confidence", 0.0)),
            tuple(d.get("situation_tags") or ()),
            d.get("model", ""),
        )


NOT_CLASSIFIED = Classification(UNCLASSIFIED)


@dataclass(frozen=True, slots=True)
class Choice:
    """A candidate category offered in the scan's question."""

    rule_file: str
    label: str


def rule_by_file(kb: KnowledgeBase, rule_file: str) -> RuleFile | None:
    return next((r for r in kb.rules if r.file == rule_file), None)


def all_choices(kb: KnowledgeBase) -> list[Choice]:
    """Every category, recyclables first (the knowledge base's order within each group)."""
    ordered = sorted(kb.rules, key=lambda r: (r.category != RECYCLABLE_MAJOR, list(CATEGORY_OF_RULE).index(r.file)))
    return [Choice(r.file, r.name) for r in ordered]


def classify_text(
    kb: KnowledgeBase, text: str, *, basis: str, min_share: float, max_choices: int = 5
) -> tuple[Classification | None, list[Choice]]:
    """What the user's words name: a classification when the best category clearly wins the
    retrieval (at least `min_share` of the hits' score), else None with the candidate categories
    to ask about (the hits, or every category when nothing matched)."""
    words = " ".join(text.split())
    hits = kb.search(words, limit=max_choices) if words else []
    if not hits:
        return None, all_choices(kb)
    share = hits[0].score / sum(h.score for h in hits)
    if share >= min_share:
        return Classification(basis, words[:80], hits[0].rule.file, round(share, 3)), []
    return None, [Choice(h.rule.file, h.rule.name) for h in hits]


# ---------------------------------------------------------------- rules and answer


def disposal_rule(rule: RuleFile) -> scan_pb2.DisposalRule:
    """One category's rules: every disposal step in order (detail sections prefixed with their
    name), and the items refused with where they go instead."""
    steps: list[str] = []
    exceptions: list[str] = []
    for doc in rule.docs:
        if doc.section == "배출불가_품목_안내":
            exceptions.extend(doc.lines)
        elif doc.section.startswith("배출방법_세부/"):
            steps.extend(f"{doc.section.split('/', 1)[1]}: {line}" for line in doc.lines)
        else:
            steps.extend(doc.lines)
    return scan_pb2.DisposalRule(document_id=rule.file, title=rule.name, steps=steps, exceptions=exceptions)


def instructions(rule: RuleFile) -> list[str]:
    """The short version: the common disposal steps, else the first detail section's."""
    docs = [d for d in rule.docs if d.section != "배출불가_품목_안내"]
    return list(docs[0].lines) if docs else []


#: What a situation tag the vision model saw asks of the user (tags without a consequence for
#: disposal, e.g. the material, imply nothing).
TAG_WARNINGS: tuple[tuple[frozenset[str], str], ...] = tuple(
    (frozenset(tags.split()), warning)
    for tags, warning in (
        ("내용물_있음 내용물_일부_남음", "내용물을 깨끗이 비우고 배출하세요."),
        (
            "오염_경미 오염_중간 음식물_오염 기름기_오염 건조된_오염 이물질_부착 세척_필요 음식물_잔여물_많음",
            "물로 헹궈 이물질을 없앤 뒤 배출하세요.",
        ),
        (
            "오염_심함 기름기_심함 오염된_배달용기 음식물과_섞임 세척_불가_구조",
            "씻어도 오염이 지워지지 않으면 재활용되지 않으니 일반종량제봉투에 넣어 배출하세요.",
        ),
        (
            "세제_OR화학물질_오염 위험물질_의심 유해화학제품_용기_의심",
            "화학물질이 묻었거나 담겼던 용기는 일반 재활용품과 섞지 말고 지자체 안내에 따라 따로 배출하세요.",
        ),
        ("건조_필요", "물기를 말린 뒤 배출하세요."),
        ("비닐_라벨_부착 비닐_라벨_부분_제거됨 비닐_라벨_제거_필요", "비닐 라벨을 떼어 내고 배출하세요."),
        ("뚜껑_분리_필요 펌프형_용기", "뚜껑이나 펌프는 분리해 재질에 맞게 따로 배출하세요."),
        (
            "부속품_있음 부속품_여럿_있음 부속품_분리_필요 스티로폼_부착물_있음 스티로폼_테이프_부착 스티로폼_부착물_제거_필요",
            "테이프·부속품 같은 다른 재질은 떼어 내고 배출하세요.",
        ),
        (
            "복합재질_의심 복합재질_확정 혼합재질_고정형",
            "여러 재질이 붙어 분리할 수 없으면 일반종량제봉투에 넣어 배출하세요.",
        ),
        (
            "깨짐 유리병_깨짐 깨진_조명기기 날카로운_모서리",
            "깨진 조각은 신문지 등에 싸서 불연성 종량제봉투(특수규격마대)로 배출하세요. 다치지 않게 조심하세요.",
        ),
        ("압착_필요", "부피를 줄이도록 눌러서 배출하세요."),
        ("펼침_필요 접힘_OR팩구조", "펼쳐서 배출하세요."),
        ("가스_용기_의심 가스_잔존_의심 가스제거_필요", "가스를 완전히 뺀 뒤 배출하세요."),
        ("배터리_포함", "배터리는 빼서 전지 전용수거함에 따로 배출하세요."),
        ("발열_OR탄화_흔적", "열이 나거나 탄 흔적이 있으면 화재 위험이 있으니 다른 쓰레기와 섞지 마세요."),
        (
            "대형_폐기물_의심 대형가전_의심",
            "크기가 크면 대형폐기물 신고 후 배출하세요(대형 가전은 무상 방문수거를 이용할 수 있어요).",
        ),
    )
)


def warnings(tags: tuple[str, ...]) -> list[str]:
    seen = set(tags)
    return [warning for group, warning in TAG_WARNINGS if group & seen]


@dataclass(frozen=True, slots=True)
class Answer:
    recyclable: bool
    rules: list[scan_pb2.DisposalRule]
    instructions: list[str]
    warnings: list[str]
    text: str


def answer(
    c: Classification, rule: RuleFile | None, *, min_confidence: float, vision_configured: bool, vision_note: str
) -> Answer:
    """The structured answer and its Korean text (what TOKEN events stream), from the category's
    rules only (None: none found): every fact is the knowledge base's, never a model's."""
    lines: list[str] = []
    if c.basis == VISION:
        if c.confidence < min_confidence:
            lines.append(
                f"사진만으로는 확실하지 않아요. 추정: {c.item} (확신도 {c.confidence:.0%}). 맞는지 확인해 주세요."
            )
        else:
            lines.append(f"사진 속 물건: {c.item} (확신도 {c.confidence:.0%})")
    elif c.basis in (HINT, ANSWER):
        if vision_note:
            lines.append(vision_note)
        elif not vision_configured:
            lines.append("사진 인식 모델이 설정되어 있지 않아 사진은 보지 못했어요.")
        said = "알려주신" if c.basis == HINT else "답해 주신"
        lines.append(f"{said} '{c.item}'(으)로 분류했어요." if c.item else "답해 주신 분류로 안내할게요.")
    if rule is None:
        if vision_note and c.basis == UNCLASSIFIED:
            lines.append(vision_note)
        lines.append(
            "분리배출 규정을 찾지 못해 방법을 안내하지 못했어요."
            if c.rule_file
            else "어떤 물건인지 알 수 없어 분리배출 방법을 안내하지 못했어요. 물건 이름을 알려주시면 다시 찾아볼게요."
        )
        return Answer(False, [], [], [], "\n".join(lines))
    recyclable = rule.category == RECYCLABLE_MAJOR
    pb = disposal_rule(rule)
    found_warnings = warnings(c.situation_tags)
    lines.append(f"분류: {rule.category} › {rule.name}" if rule.category != rule.name else f"분류: {rule.name}")
    lines.append("재활용할 수 있어요." if recyclable else "재활용품이 아니에요. 아래 방법으로 배출하세요.")
    if pb.steps:
        lines.append("버리는 방법:")
        lines.extend(f"{i}. {step}" for i, step in enumerate(pb.steps, 1))
    if pb.exceptions:
        lines.append("이건 함께 버리지 마세요:")
        lines.extend(f"- {line}" for line in pb.exceptions)
    if found_warnings:
        lines.append("사진에서 보인 상태로는:")
        lines.extend(f"- {w}" for w in found_warnings)
    return Answer(recyclable, [pb], instructions(rule), found_warnings, "\n".join(lines))


_PIECE = re.compile(r"\S+\s*|\s+")


def pieces(text: str) -> list[str]:
    """Word-sized tokens that concatenate back to `text` exactly."""
    return _PIECE.findall(text)


# ---------------------------------------------------------------- reward


@dataclass(frozen=True, slots=True)
class RewardDecision:
    ask: bool  # whether to ask CharacterService.GrantReward
    reason: str  # why not (Korean), when not


def decide_reward(
    c: Classification, *, rules_found: bool, min_confidence: float, vision_configured: bool
) -> RewardDecision:
    """A character only for a confident classification with rules. When a vision model is
    configured, only what it saw counts: a hint or an answer is not a check of the photo. Offline
    nothing can check the photo, so the user's word is the classification (docs/adr/0076)."""
    if not c.rule_file:
        return RewardDecision(False, "어떤 물건인지 알 수 없어 보상을 드릴 수 없어요.")
    if not rules_found:
        return RewardDecision(False, "분리배출 규칙을 찾지 못해 보상을 드릴 수 없어요.")
    if c.basis == VISION and c.confidence < min_confidence:
        return RewardDecision(False, f"사진 판별 확신도({c.confidence:.0%})가 낮아 보상을 드릴 수 없어요.")
    if c.basis != VISION and vision_configured:
        return RewardDecision(False, "사진으로 확인된 분류가 아니어서 보상을 드릴 수 없어요.")
    return RewardDecision(True, "")


def classification_pb(c: Classification, kb: KnowledgeBase, *, rules_found: bool) -> character_pb2.Classification:
    rule = rule_by_file(kb, c.rule_file) if c.rule_file else None
    return character_pb2.Classification(
        category=c.category,
        major=rule.category if rule else "",
        item=c.item,
        situation_tags=list(c.situation_tags),
        rules_found=rules_found,
        confidence=c.confidence,
    )
