"""The character catalog: immutable records and the matching rule."""

from __future__ import annotations

from dataclasses import dataclass

from eco2.character.v1 import character_pb2


@dataclass(frozen=True, slots=True)
class Character:
    code: str
    name: str
    aliases: tuple[str, ...]
    category: int  # character_pb2.WasteCategory value
    match_label: str
    image_code: str
    description: str
    is_default: bool
    sort_order: int

    def to_proto(self) -> character_pb2.Character:
        return character_pb2.Character(
            code=self.code,
            name=self.name,
            aliases=self.aliases,
            category=self.category,
            match_label=self.match_label,
            image_code=self.image_code,
            description=self.description,
            is_default=self.is_default,
        )


class Catalog:
    """An immutable snapshot of the catalog with the lookups the service needs."""

    def __init__(self, characters: list[Character]) -> None:
        ordered = sorted(characters, key=lambda c: (not c.is_default, c.sort_order, c.code))
        defaults = [c for c in ordered if c.is_default]
        if len(defaults) != 1:
            raise ValueError(f"the catalog needs exactly one default character, found {len(defaults)}")
        self.characters: tuple[Character, ...] = tuple(ordered)
        self.default: Character = defaults[0]
        self.by_category = {c.category: c for c in ordered if not c.is_default}
        # Protos are built once per snapshot: the read path only copies references.
        self.protos = {c.code: c.to_proto() for c in ordered}

    def match(self, category: int) -> tuple[Character, bool]:
        """The character of a waste category, or the default one (matched=False)."""
        found = self.by_category.get(category)
        return (found, True) if found is not None else (self.default, False)


# -- rewards ---------------------------------------------------------------------------
RECEIVED = "RECEIVED"
ALREADY_OWNED = "ALREADY_OWNED"
NOT_ELIGIBLE = "NOT_ELIGIBLE"


@dataclass(frozen=True, slots=True)
class RewardDecision:
    """What a classification deserves before looking at the user's collection."""

    eligible: bool
    character: Character | None
    reason: str


def decide_reward(
    catalog: Catalog, category: int, rules_found: bool, insufficiencies: list[str] | tuple[str, ...]
) -> RewardDecision:
    """The original system's rule: a character only for a complete classification, i.e.
    disposal rules were found and nothing was insufficient; the character is the one of
    the waste category (no reward when the category has no character of its own)."""
    found, matched = catalog.match(category)
    character = found if matched else None
    if not rules_found:
        return RewardDecision(False, character, "분리배출 규칙을 찾지 못해 보상을 드릴 수 없어요.")
    if insufficiencies:
        return RewardDecision(False, character, "부족한 점이 있어 보상을 드릴 수 없어요: " + ", ".join(insufficiencies))
    if character is None:
        return RewardDecision(False, None, "이 분류에 해당하는 캐릭터가 없어요.")
    return RewardDecision(True, character, "")


def outcome_reason(outcome: str, character: Character | None, decision_reason: str) -> str:
    if outcome == RECEIVED and character is not None:
        return f"'{character.name}' 캐릭터를 획득했어요!"
    if outcome == ALREADY_OWNED and character is not None:
        return f"이미 '{character.name}' 캐릭터를 가지고 있어요."
    return decision_reason


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """The answer stored for one (user, idempotency key)."""

    request_sha256: str
    outcome: str  # RECEIVED / ALREADY_OWNED / NOT_ELIGIBLE
    character_code: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Ownership:
    character_code: str
    source: str  # RewardSource name without prefix
    acquired_at: object  # datetime
