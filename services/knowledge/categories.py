"""The knowledge base's rule files (one per waste category) as the contract names their categories
(eco2.character.v1.WasteCategory): what chat and scan send CharacterService."""

from __future__ import annotations

from eco2.character.v1 import character_pb2 as C

CATEGORY_OF_RULE: dict[str, int] = {
    "재활용폐기물_종이": C.WASTE_CATEGORY_PAPER,
    "재활용폐기물_종이팩": C.WASTE_CATEGORY_PAPER_PACK,
    "재활용폐기물_무색페트병": C.WASTE_CATEGORY_CLEAR_PET,
    "재활용폐기물_플라스틱류": C.WASTE_CATEGORY_PLASTIC,
    "재활용폐기물_비닐류": C.WASTE_CATEGORY_VINYL,
    "재활용폐기물_발포합성수지": C.WASTE_CATEGORY_STYROFOAM,
    "재활용폐기물_유리병": C.WASTE_CATEGORY_GLASS,
    "재활용폐기물_금속류": C.WASTE_CATEGORY_METAL,
    "재활용폐기물_전지": C.WASTE_CATEGORY_BATTERY,
    "재활용폐기물_조명제품": C.WASTE_CATEGORY_LIGHTING,
    "재활용폐기물_의류및원단": C.WASTE_CATEGORY_CLOTHING,
    "재활용폐기물_전기전자제품": C.WASTE_CATEGORY_ELECTRONICS,
    "일반종량제폐기물": C.WASTE_CATEGORY_GENERAL,
    "불연성종량제폐기물": C.WASTE_CATEGORY_NON_COMBUSTIBLE,
    "음식물류폐기물": C.WASTE_CATEGORY_FOOD,
    "생활계유해폐기물": C.WASTE_CATEGORY_HAZARDOUS,
    "공사장생활폐기물": C.WASTE_CATEGORY_CONSTRUCTION,
    "대형폐기물": C.WASTE_CATEGORY_BULKY,
}
RULE_OF_CATEGORY = {v: k for k, v in CATEGORY_OF_RULE.items()}
