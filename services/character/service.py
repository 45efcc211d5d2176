"""gRPC surface of the character service."""

from __future__ import annotations

import hashlib
import math

from google.protobuf.timestamp_pb2 import Timestamp

from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.services.runtime.context import caller_id
from eco2.services.runtime.errors import FailedPrecondition, NotFound
from eco2.services.runtime.paging import decode_token, encode_token, page_size
from eco2.services.runtime.validation import Validator, require_set

from .catalog import CatalogCache
from .domain import GrantRecord, decide_reward
from .ports import RewardRepository

MAX_PAGE = 100
MAX_KEY = 128
MAX_LABEL = 200
MAX_TAGS = 32
MAX_TAG_CHARS = 100


def _timestamp(value) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


class CharacterServicer(character_pb2_grpc.CharacterServiceServicer):
    def __init__(self, catalog: CatalogCache, rewards: RewardRepository | None = None) -> None:
        self.catalog = catalog
        self.rewards = rewards

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
            raise NotFound(
                f"no character with code {request.code!r}",
                reason="CHARACTER_NOT_FOUND",
                metadata={"code": request.code},
            )
        return character_pb2.GetCharacterResponse(character=proto)

    async def MatchCharacter(self, request, context):
        v = Validator()
        v.enum("category", request.category, character_pb2.WasteCategory, allow_unspecified=True)
        v.raise_if_invalid()
        snapshot = self.catalog.snapshot
        found, matched = snapshot.match(request.category)
        return character_pb2.MatchCharacterResponse(character=snapshot.protos[found.code], matched=matched)

    # -- rewards -------------------------------------------------------------------------
    def _reward(self, record: GrantRecord) -> character_pb2.GrantRewardResponse:
        reward = character_pb2.Reward(
            outcome=character_pb2.RewardOutcome.Value(f"REWARD_OUTCOME_{record.outcome}"), reason=record.reason
        )
        proto = self.catalog.snapshot.protos.get(record.character_code or "")
        if proto is not None:
            reward.character.CopyFrom(proto)
        return character_pb2.GrantRewardResponse(reward=reward)

    async def GrantReward(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        v.enum("source", request.source, character_pb2.RewardSource)
        v.check(
            request.source != character_pb2.REWARD_SOURCE_DEFAULT,
            "source",
            "DEFAULT is granted by ListCollection, not requested",
        )
        v.text("idempotency_key", request.idempotency_key, min_len=1, max_len=MAX_KEY, single_line=True)
        if require_set(request, "classification", v):
            c = request.classification
            v.enum("classification.category", c.category, character_pb2.WasteCategory, allow_unspecified=True)
            v.text("classification.major", c.major, max_len=MAX_LABEL, single_line=True)
            v.text("classification.item", c.item, max_len=MAX_LABEL, single_line=True)
            v.check(
                math.isfinite(c.confidence) and 0.0 <= c.confidence <= 1.0,
                "classification.confidence",
                "must be between 0 and 1",
            )
            for name, values in (("situation_tags", c.situation_tags), ("insufficiencies", c.insufficiencies)):
                if v.check(
                    len(values) <= MAX_TAGS, f"classification.{name}", f"at most {MAX_TAGS} entries (got {len(values)})"
                ):
                    for i, tag in enumerate(values):
                        v.text(f"classification.{name}[{i}]", tag, min_len=1, max_len=MAX_TAG_CHARS, single_line=True)
        v.raise_if_invalid()

        key = request.idempotency_key
        fingerprint = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        record = await self.rewards.find_grant(user_id, key)
        if record is None:
            c = request.classification
            decision = decide_reward(self.catalog.snapshot, c.category, c.rules_found, list(c.insufficiencies))
            source = character_pb2.RewardSource.Name(request.source).removeprefix("REWARD_SOURCE_")
            record, _ = await self.rewards.grant(user_id, key, fingerprint, source, decision)
        if record.request_sha256 != fingerprint:
            raise FailedPrecondition(
                "idempotency_key was already used for a different request",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"idempotency_key": key},
            )
        return self._reward(record)

    async def ListCollection(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        size = page_size(request.page_size, v, default=MAX_PAGE, maximum=MAX_PAGE)
        cursor = decode_token(request.page_token, v)
        offset = cursor.get("o", 0)
        v.check(
            isinstance(offset, int) and 0 <= offset <= 1_000_000,
            "page_token",
            "is not a page token returned by this API",
        )
        v.raise_if_invalid()
        snapshot = self.catalog.snapshot
        owned, total = await self.rewards.collection(user_id, snapshot.default.code, offset, size)
        items = []
        for o in owned:
            proto = snapshot.protos.get(o.character_code)
            if proto is None:  # removed from the catalog since: not shown
                continue
            items.append(
                character_pb2.OwnedCharacter(
                    character=proto,
                    source=character_pb2.RewardSource.Value(f"REWARD_SOURCE_{o.source}"),
                    acquired_at=_timestamp(o.acquired_at),
                )
            )
        next_offset = offset + len(owned)
        return character_pb2.ListCollectionResponse(
            characters=items, next_page_token=encode_token(o=next_offset) if next_offset < total else ""
        )
