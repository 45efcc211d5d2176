"""The character sub-agent, and the character card a waste answer carries. CharacterService owns
the catalog and which character stands for which waste category: chat asks it (ports.Characters)
for the cast and for the character of a category, and keeps no copy of its own."""

from __future__ import annotations

from langgraph.runtime import Runtime

from eco2.chat.v1 import chat_pb2
from eco2.events.v1 import events_pb2
from eco2.services.knowledge.categories import CATEGORY_OF_RULE

from .. import intents as I
from .. import rules as R
from ..deps import ChatDeps, JobContext
from ..emitter import Emitter
from ..ports import Character
from ..state import Branch
from .run import run_node


def _context(c: Character) -> dict:
    return {"code": c["code"], "name": c["name"], "description": c["description"], "match_label": c["match_label"]}


def _citation(c: Character) -> dict:
    return {
        "source_id": f"character:{c['code']}",
        "kind": chat_pb2.CITATION_KIND_CHARACTER,
        "title": c["name"],
        "snippet": c["description"][:200],
    }


def card(c: Character, *others: Character) -> dict:
    """The update that shows a character: its context (what the answer and the model read), its
    citation, and the record itself for the result. Other characters the message names too are
    described beside it ("others", each cited); the result's card stays the first one."""
    ctx = _context(c)
    if others:
        ctx["others"] = [_context(o) for o in others]
    return {"contexts": {"character_context": ctx}, "citations": [_citation(x) for x in (c, *others)], "card": c}


def named_in(cast: list[Character], text: str) -> list[Character]:
    """The characters a message names, in the order it names them ("페티랑 메탈리 누구야?")."""
    spots = {c["code"]: text.find(c["name"]) for c in cast}
    return sorted((c for c in cast if spots[c["code"]] >= 0), key=lambda c: spots[c["code"]])


def rule_file_of(finding: dict) -> str:
    """The rule file an item goes to (its destination when the rules send it elsewhere)."""
    return (finding["dest_files"] or [finding["file"]])[0]


async def category_card(deps: ChatDeps, rule_file: str, emitter: Emitter | None = None) -> dict:
    """The card of the character of a rule file's category (CharacterService.MatchCharacter; TOOL
    events when an emitter is given); {} when the category has no character of its own."""
    category = CATEGORY_OF_RULE.get(rule_file)
    if category is None or deps.characters is None:
        return {}
    if emitter is not None:
        await emitter.tool(
            "character", "character.match", "character-match", events_pb2.TOOL_PHASE_STARTED, message=rule_file
        )
    found = await deps.characters.match(category)
    if emitter is not None:
        await emitter.tool(
            "character",
            "character.match",
            "character-match",
            events_pb2.TOOL_PHASE_RESULT,
            message=found["code"] if found else "",
        )
    return card(found) if found else {}


async def character(branch: Branch, runtime: Runtime[JobContext]) -> dict:
    deps = runtime.context.deps
    em = runtime.context.emitter

    async def body() -> dict:
        if deps.characters is None:  # no CharacterService: nothing to answer from (the aggregator's contract says so)
            return {}
        text = branch.get("query") or branch["message"]
        await em.tool("character", "character.list", "character-cast", events_pb2.TOOL_PHASE_STARTED)
        cast = await deps.characters.cast()
        await em.tool(
            "character",
            "character.list",
            "character-cast",
            events_pb2.TOOL_PHASE_RESULT,
            message=f"{len(cast)} characters",
        )
        named = named_in(cast, text) if not I.asks_cast(text) else []
        if named:  # "페티가 누구야?", "페티랑 메탈리 누구야?"
            return card(*named)
        found = R.gather(deps.kb, text)["findings"]
        if found:  # "페트병 버리면 어떤 캐릭터?" → the character of the item's category
            update = await category_card(deps, rule_file_of(found[0]), em)
            if update:
                return update
        # "캐릭터 몇 개야?", "캐릭터 다 알려줘": the whole cast
        names = [{"code": c["code"], "name": c["name"], "match_label": c["match_label"]} for c in cast]
        cite = {
            "source_id": "character:catalog",
            "kind": chat_pb2.CITATION_KIND_CHARACTER,
            "title": "Eco² 캐릭터",
            "snippet": ", ".join(c["name"] for c in names),
        }
        return {"contexts": {"character_context": {"cast": names}}, "citations": [cite]}

    return await run_node("character", runtime, body)
