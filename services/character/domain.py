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
        self.by_code = {c.code: c for c in ordered}
        self.by_category = {c.category: c for c in ordered if not c.is_default}
        # Protos are built once per snapshot: the read path only copies references.
        self.protos = {c.code: c.to_proto() for c in ordered}

    def match(self, category: int) -> tuple[Character, bool]:
        """The character of a waste category, or the default one (matched=False)."""
        found = self.by_category.get(category)
        return (found, True) if found is not None else (self.default, False)
