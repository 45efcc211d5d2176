"""gRPC surface of the character service."""

from __future__ import annotations

from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.services.runtime.errors import NotFound
from eco2.services.runtime.paging import decode_token, encode_token, page_size
from eco2.services.runtime.validation import Validator

from .catalog import CatalogCache

MAX_PAGE = 100


class CharacterServicer(character_pb2_grpc.CharacterServiceServicer):
    def __init__(self, catalog: CatalogCache) -> None:
        self.catalog = catalog

    async def ListCharacters(self, request, context):
        v = Validator()
        size = page_size(request.page_size, v, default=MAX_PAGE, maximum=MAX_PAGE)
        cursor = decode_token(request.page_token, v)
        offset = cursor.get("o", 0)
        v.check(isinstance(offset, int) and offset >= 0, "page_token", "is not a page token returned by this API")
        v.raise_if_invalid()
        snapshot = self.catalog.snapshot
        codes = [c.code for c in snapshot.characters[offset : offset + size]]
        next_offset = offset + len(codes)
        return character_pb2.ListCharactersResponse(
            characters=[snapshot.protos[c] for c in codes],
            next_page_token=encode_token(o=next_offset) if next_offset < len(snapshot.characters) else "",
        )

    async def GetCharacter(self, request, context):
        v = Validator()
        v.text("code", request.code, min_len=1, max_len=64, single_line=True)
        v.raise_if_invalid()
        proto = self.catalog.snapshot.protos.get(request.code)
        if proto is None:
            raise NotFound(f"no character with code {request.code!r}", reason="CHARACTER_NOT_FOUND", metadata={"code": request.code})
        return character_pb2.GetCharacterResponse(character=proto)

    async def MatchCharacter(self, request, context):
        v = Validator()
        v.enum("category", request.category, character_pb2.WasteCategory, allow_unspecified=True)
        v.raise_if_invalid()
        snapshot = self.catalog.snapshot
        found, matched = snapshot.match(request.category)
        return character_pb2.MatchCharacterResponse(character=snapshot.protos[found.code], matched=matched)
