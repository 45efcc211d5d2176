"""The character sub-agent, and the character card a waste answer carries."""

from __future__ import annotations

import re

from langgraph.runtime import Runtime

from eco2.chat.v1 import chat_pb2
from eco2.events.v1 import events_pb2

from .. import rules as R
from ..deps import ChatDeps, JobContext
from ..emitter import Emitter
from ..state import Branch
from .run import run_node


def _category_label(name: str) -> str:
    """A waste category as the characters' match labels spell it: "발포합성수지(스티로폼 등)" and
    "의류 및 원단" are the rule files' names of the labels "발포합성수지" and "의류및원단"."""
    return re.sub(r"\(.*?\)|\s+", "", name)


def character_of(kb, category: str) -> dict | None:
    label = _category_label(category)
    return next((c for c in kb.characters if label and _category_label(c.get("match_label", "")) == label), None)


async def character_context(deps: ChatDeps, entry: dict, emitter: Emitter | None) -> dict:
    """The character's context and citation: CharacterService's record (TOOL events when an
    emitter is given), else the knowledge base's entry."""
    found = None
    if deps.characters is not None:
        if emitter is not None:
            await emitter.tool("character", "character.get", f"character-{entry['code']}", events_pb2.TOOL_PHASE_STARTED)
        found = await deps.characters.get(entry["code"])
        if emitter is not None:
            await emitter.tool("character", "character.get", f"character-{entry['code']}", events_pb2.TOOL_PHASE_RESULT)
    ctx = {k: found[k] for k in ("code", "name", "description", "match_label")} if found else {"code": entry["code"], "name": entry["name"], "match_label": entry.get("match_label", ""), "description": ""}
    cite = {"source_id": f"character:{ctx['code']}", "kind": chat_pb2.CITATION_KIND_CHARACTER, "title": ctx["name"], "snippet": ctx.get("description", "")[:200]}
    return {"contexts": {"character_context": ctx}, "citations": [cite], **({"card": found} if found else {})}


async def character(branch: Branch, runtime: Runtime[JobContext]) -> dict:
    deps = runtime.context.deps

    async def body() -> dict:
        text = branch.get("query") or branch["message"]
        entry = next((c for c in deps.kb.characters if c["name"] in text), None)
        if entry is None:  # "페트병 버리면 어떤 캐릭터?" → the character of the item's category
            found = R.gather(deps.kb, text)["findings"]
            names = {r.file: r.name for r in deps.kb.rules}
            entry = character_of(deps.kb, names[(found[0]["dest_files"] or [found[0]["file"]])[0]]) if found else None
        if entry is None:  # "캐릭터 몇 개야?", "캐릭터 다 알려줘": the whole cast, from the knowledge base
            cast = [{"code": c["code"], "name": c["name"], "match_label": c.get("match_label", "")} for c in deps.kb.characters]
            cite = {"source_id": "character:catalog", "kind": chat_pb2.CITATION_KIND_CHARACTER, "title": "Eco² 캐릭터", "snippet": ", ".join(c["name"] for c in cast)}
            return {"contexts": {"character_context": {"cast": cast}}, "citations": [cite]}
        return await character_context(deps, entry, runtime.context.emitter)

    return await run_node("character", runtime, body)
