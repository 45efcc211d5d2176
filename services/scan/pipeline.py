"""The scan pipeline: vision → rule → answer → reward, each stage a STAGE event, then DONE.

vision: with a vision model configured and a photo, the photo (read from ImageService as the
scan's user) is classified into the knowledge base's taxonomy through the LLM port; a failure or
"미분류" falls back (policy table) to the user's hint. Offline, the hint is all there is: a hint
that clearly names one category classifies the scan, else the scan asks (NEEDS_INPUT with the
candidate categories) and the job ends until ProvideScanInput queues its continuation.
rule: the category's disposal rules from the knowledge base. answer: the structured answer and
its text, composed from the rules and streamed as TOKEN events. reward: GrantReward once per scan
(idempotency key = the scan id), only when decide_reward allows it.

Re-runs are exact: every stage stores its outcome before emitting what depends on it, and a
re-run reuses what is stored, so it re-emits the same events with the same seqs (emitter.py)
and never asks for a second reward with a different request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from google.protobuf import any_pb2
from prometheus_client import Counter

from eco2.character.v1 import character_pb2
from eco2.events.v1 import events_pb2
from eco2.scan.v1 import scan_pb2
from eco2.services.knowledge.categories import CATEGORY_OF_RULE, RULE_OF_CATEGORY
from eco2.services.knowledge.kb import KnowledgeBase, RuleFile
from eco2.services.llm.ports import LLM
from eco2.services.llm.vision import UNKNOWN, vision_messages, vision_schema
from eco2.services.runtime.errors import NotFound, ResourceExhausted, Unavailable

from . import domain as D
from .emitter import Emitter
from .policy import StageFailed, StagePolicy, run_stage
from .postgres import FAILED, WAITING_INPUT, ScanRecord, ScanStore

log = logging.getLogger("eco2.scan.pipeline")

E = events_pb2
STARTED, PROGRESS, FINISHED, FAILED_PHASE, SKIPPED = (
    E.STAGE_PHASE_STARTED,
    E.STAGE_PHASE_PROGRESS,
    E.STAGE_PHASE_FINISHED,
    E.STAGE_PHASE_FAILED,
    E.STAGE_PHASE_SKIPPED,
)

#: How a scan run ended: DONE stored and published; waiting for an answer; DONE with the reward
#: still to be granted (the worker queues its retry); ERROR published.
FINISHED_RUN, WAITING, REWARD_PENDING, ERRORED = "done", "waiting", "reward_pending", "error"

#: A scan's reward by how it ended: the character service's outcome (REWARD_OUTCOME_RECEIVED,
#: ..._ALREADY_OWNED, ...), NOT_ELIGIBLE (not confident, or no rules) or POSTPONED (retried later).
REWARDS = Counter(
    "eco2_scan_rewards_total",
    "Scan rewards by outcome: the grant's RewardOutcome, NOT_ELIGIBLE or POSTPONED",
    ["outcome"],
)

REWARD_DELAYED = "보상 지급이 잠시 지연되고 있어요. 자동으로 다시 시도하니 나중에 도감에서 확인해 주세요."


@dataclass(frozen=True, slots=True)
class ScanLimits:
    min_confidence: float = 0.6  # a vision classification below it is a guess: said so, no reward
    hint_min_share: float = 0.7  # a hint names the item when its best category has this share of the retrieval score
    image_max_bytes: int = 10 * 1024 * 1024
    max_questions: int = 3  # unusable answers before the scan ends unclassified
    tokens_per_event: int = 4


@dataclass
class ScanDeps:
    kb: KnowledgeBase
    store: ScanStore
    images: Any  # grpc_clients.GrpcImages
    rewards: Any  # grpc_clients.GrpcRewards
    vision_llm: LLM | None  # None: no vision model configured (offline)
    policies: dict[str, StagePolicy]
    limits: ScanLimits


class ImageUnusable(Exception):
    """The photo is gone, not the user's, or too large: retrying will not help."""

    retryable = False


def _failure(cause: str) -> str:
    if cause == "timeout":
        return "응답 시간 초과"
    if cause.startswith("ImageUnusable"):
        return "사진을 읽을 수 없음"
    if cause.startswith("LLMError"):
        return "모델 응답 오류"
    return "오류"


def _describe(kb: KnowledgeBase, c: D.Classification) -> str:
    rule = D.rule_by_file(kb, c.rule_file)
    if rule is None:
        return "어떤 물건인지 알 수 없어요"
    if c.basis == D.VISION:
        return f"{c.item} → {rule.name} (확신도 {c.confidence:.0%})"
    return f"'{c.item}' → {rule.name} ({'힌트' if c.basis == D.HINT else '답변'})"


class ScanPipeline:
    def __init__(self, deps: ScanDeps) -> None:
        self.deps = deps

    async def run(self, scan: ScanRecord, em: Emitter) -> str:
        d = self.deps
        await d.store.started(scan.id)
        seeing = bool(scan.image_key and d.vision_llm is not None)
        em.stage(
            E.STAGE_VISION,
            "vision",
            STARTED,
            "사진을 살펴보고 있어요" if seeing else "알려주신 설명으로 분류하고 있어요",
        )
        await em.flush()
        started = time.monotonic()
        outcome = (
            scan.vision if scan.vision is not None else await d.store.save_vision(scan.id, await self._vision(scan))
        )
        note = outcome.get("note", "")
        if note:
            em.stage(E.STAGE_VISION, "vision", PROGRESS, note)
        classification, questions = self._resolve(outcome, scan.answers)
        for question in questions:  # the questions answered so far (re-emitted: same seqs), then the open one
            em.put(E.EVENT_KIND_NEEDS_INPUT, stage=E.STAGE_VISION, node="vision", needs_input=question)
        if classification is None:
            await d.store.set_status(
                scan.id, WAITING_INPUT, pending_input=questions[-1].input_id
            )  # before the question is out: its answer finds it waiting
            await em.flush()
            return WAITING
        em.stage(
            E.STAGE_VISION, "vision", FINISHED, _describe(d.kb, classification), elapsed_s=time.monotonic() - started
        )

        rule = await self._rule(classification, em)
        try:
            answer = await run_stage(d.policies, "answer", lambda: self._answer(classification, rule, note, em))
        except StageFailed as failed:
            log.error("scan answer failed", extra={"scan_id": scan.id, "error": failed.cause[:300]})
            em.stage(E.STAGE_ANSWER, "answer", FAILED_PHASE, "안내를 만들지 못했어요")
            em.put(
                E.EVENT_KIND_ERROR,
                stage=E.STAGE_ANSWER,
                node="error",
                error=E.JobError(
                    code=13,
                    reason="ANSWER_FAILED",
                    message="안내를 만들지 못했어요. 잠시 후 다시 시도해 주세요.",
                    retryable=True,
                ),
            )
            await d.store.set_status(scan.id, FAILED, error=failed.cause[:500])
            await em.flush()
            return ERRORED
        await em.flush()
        reward, pending = await self._reward(scan, classification, rule is not None, em)

        result = scan_pb2.ScanResult(
            scan_id=scan.id,
            image_key=scan.image_key,
            classification=D.classification_pb(classification, d.kb, rules_found=rule is not None),
            recyclable=answer.recyclable,
            rules=answer.rules,
            instructions=answer.instructions,
            explanation=answer.text,
            reward=reward,
            basis=D.BASIS[classification.basis],
            warnings=answer.warnings,
            vision_model=classification.model,
        )
        result.completed_at.GetCurrentTime()
        stored = scan_pb2.ScanResult.FromString(
            await d.store.finish(scan.id, result.SerializeToString())
        )  # a re-run publishes the first result
        packed = any_pb2.Any()
        packed.Pack(stored)
        summary = _describe(d.kb, classification) + (f" · {stored.reward.reason}" if stored.reward.reason else "")
        em.put(
            E.EVENT_KIND_DONE,
            stage=E.STAGE_PERSIST,
            node="done",
            done=E.JobResult(result=packed, summary=summary[:200]),
        )
        await em.flush()
        return REWARD_PENDING if pending else FINISHED_RUN

    # ---------------------------------------------------------------- vision

    async def _vision(self, scan: ScanRecord) -> dict:
        """The vision stage's outcome: {"classification"} or {"choices"} (a question to ask), with a
        "note" when the photo was not seen as configured."""
        d = self.deps
        note = ""
        if scan.image_key and d.vision_llm is not None:
            try:
                found = await run_stage(d.policies, "vision", lambda: self._see(scan.image_key, scan.hint))
            except StageFailed as failed:
                log.warning("scan vision fell back", extra={"scan_id": scan.id, "cause": failed.cause[:300]})
                note = f"사진을 분석하지 못했어요({_failure(failed.cause)})."
            else:
                rule = next((r for r in d.kb.rules if r.key == found.category), None)
                if found.category != UNKNOWN and rule is not None:
                    seen = D.Classification(
                        D.VISION,
                        found.item,
                        rule.file,
                        round(float(found.confidence), 3),
                        tuple(found.situation_tags),
                        d.vision_llm.info.name,
                    )
                    return {"classification": seen.to_dict()}
                note = "사진에서 분리배출할 물건을 알아보지 못했어요."
        classification, choices = D.classify_text(d.kb, scan.hint, basis=D.HINT, min_share=d.limits.hint_min_share)
        if classification is not None:
            return {"classification": classification.to_dict(), "note": note}
        return {"choices": [asdict(c) for c in choices], "note": note}

    async def _see(self, image_key: str, hint: str):
        """The vision model's reading of the photo, read from ImageService as the current caller."""
        d = self.deps
        try:
            data, mime = await d.images.read(image_key, max_bytes=d.limits.image_max_bytes)
        except (NotFound, ResourceExhausted) as exc:
            raise ImageUnusable(str(exc)) from exc
        return await d.vision_llm.classify_image(vision_messages(d.kb, hint), data, mime, vision_schema(d.kb))

    async def classify_photo(self, image_key: str, hint: str) -> scan_pb2.ClassifyPhotoResponse:
        """The vision stage alone (ClassifyPhoto): under the stage's policy, the photo read as the
        caller; nothing stored, no reward. NotFound / ResourceExhausted for a photo that cannot be
        used, Unavailable (VISION_FAILED) when every attempt of the model failed."""
        d = self.deps
        if d.vision_llm is None:
            return scan_pb2.ClassifyPhotoResponse(configured=False)
        try:
            found = await run_stage(d.policies, "vision", lambda: self._see(image_key, hint))
        except StageFailed as failed:
            unusable = failed.__cause__
            if isinstance(unusable, ImageUnusable) and isinstance(unusable.__cause__, (NotFound, ResourceExhausted)):
                raise unusable.__cause__ from None
            raise Unavailable(
                f"the vision model did not classify the photo ({_failure(failed.cause)})",
                reason="VISION_FAILED",
                retry_after_s=1.0,
            ) from None
        rule = next((r for r in d.kb.rules if r.key == found.category), None)
        known = found.category != UNKNOWN and rule is not None
        seen = D.Classification(
            D.VISION,
            found.item,
            rule.file if known else "",
            round(float(found.confidence), 3),
            tuple(found.situation_tags),
            d.vision_llm.info.name,
        )
        return scan_pb2.ClassifyPhotoResponse(
            configured=True, classification=D.classification_pb(seen, d.kb, rules_found=known), vision_model=seen.model
        )

    def _resolve(
        self, outcome: dict, answers: list[dict]
    ) -> tuple[D.Classification | None, list[events_pb2.InputRequest]]:
        """The classification (None while a question is open) and every question asked: from the
        stored outcome and the user's answers in order (a category, or words that name one)."""
        d = self.deps
        if "classification" in outcome:
            return D.Classification.from_dict(outcome["classification"]), []
        choices = [D.Choice(**c) for c in outcome["choices"]]
        prompt = "사진 속 물건이 무엇인가요? 아래에서 고르거나 물건 이름을 알려주세요."
        questions: list[events_pb2.InputRequest] = []
        for n in range(d.limits.max_questions):
            questions.append(
                E.InputRequest(
                    input_id=f"q{n + 1}",
                    kind=E.INPUT_KIND_CHOICE,
                    prompt=prompt,
                    choices=[
                        E.InputChoice(
                            value=character_pb2.WasteCategory.Name(CATEGORY_OF_RULE[c.rule_file]), label=c.label
                        )
                        for c in choices
                    ],
                )
            )
            if n == len(answers):
                return None, questions
            answer = answers[n]
            if "category" in answer:
                rule = D.rule_by_file(d.kb, RULE_OF_CATEGORY[answer["category"]])
                return D.Classification(D.ANSWER, rule.name, rule.file, 1.0), questions
            found, choices = D.classify_text(d.kb, answer["text"], basis=D.ANSWER, min_share=d.limits.hint_min_share)
            if found is not None:
                return found, questions
            prompt = f"'{' '.join(answer['text'].split())[:40]}'(으)로는 분류를 정하지 못했어요. 아래에서 골라 주세요."
        return D.NOT_CLASSIFIED, questions

    # ---------------------------------------------------------------- rule, answer, reward

    async def _rule(self, c: D.Classification, em: Emitter) -> RuleFile | None:
        d = self.deps
        em.stage(E.STAGE_RULE, "rule", STARTED, "분리배출 규정을 찾고 있어요")
        if not c.rule_file:
            em.stage(E.STAGE_RULE, "rule", SKIPPED, "분류가 없어 규정을 찾지 않았어요")
            return None

        async def lookup():
            return D.rule_by_file(d.kb, c.rule_file)

        try:
            rule = await run_stage(d.policies, "rule", lookup)
        except StageFailed:
            rule = None
        if rule is None:
            em.stage(E.STAGE_RULE, "rule", FAILED_PHASE, "분리배출 규정을 찾지 못했어요")
            return None
        em.stage(E.STAGE_RULE, "rule", FINISHED, f"{rule.name} 규정")
        return rule

    async def _answer(self, c: D.Classification, rule: RuleFile | None, note: str, em: Emitter) -> D.Answer:
        d = self.deps
        em.stage(E.STAGE_ANSWER, "answer", STARTED, "안내를 쓰고 있어요")
        answer = D.answer(
            c,
            rule,
            min_confidence=d.limits.min_confidence,
            vision_configured=d.vision_llm is not None,
            vision_note=note,
        )
        em.tokens(answer.text)
        em.stage(E.STAGE_ANSWER, "answer", FINISHED)
        return answer

    async def _reward(
        self, scan: ScanRecord, c: D.Classification, rules_found: bool, em: Emitter
    ) -> tuple[character_pb2.Reward, bool]:
        """(the reward, whether it is still to be granted)."""
        d = self.deps
        em.stage(E.STAGE_REWARD, "reward", STARTED, "보상을 확인하고 있어요")
        decision = D.decide_reward(
            c,
            rules_found=rules_found,
            min_confidence=d.limits.min_confidence,
            vision_configured=d.vision_llm is not None,
        )
        if not decision.ask:
            if scan.reward is None and not scan.reward_pending:  # the first run of this scan, not a re-run
                REWARDS.labels("NOT_ELIGIBLE").inc()
            em.stage(E.STAGE_REWARD, "reward", SKIPPED, decision.reason)
            return character_pb2.Reward(
                outcome=character_pb2.REWARD_OUTCOME_NOT_ELIGIBLE, reason=decision.reason
            ), False
        reward = character_pb2.Reward.FromString(scan.reward) if scan.reward is not None else None
        pending = scan.reward_pending
        if reward is None and not pending:
            classification = D.classification_pb(c, d.kb, rules_found=rules_found)
            try:
                reward = await run_stage(d.policies, "reward", lambda: d.rewards.grant(scan.id, classification))
                REWARDS.labels(character_pb2.RewardOutcome.Name(reward.outcome)).inc()
            except StageFailed as failed:
                log.warning("scan reward postponed", extra={"scan_id": scan.id, "cause": failed.cause[:300]})
                REWARDS.labels("POSTPONED").inc()
                pending = True
            await d.store.save_reward(
                scan.id, reward.SerializeToString() if reward is not None else None, pending=pending
            )
        if reward is None:
            em.stage(E.STAGE_REWARD, "reward", FAILED_PHASE, REWARD_DELAYED)
            return character_pb2.Reward(outcome=character_pb2.REWARD_OUTCOME_UNSPECIFIED, reason=REWARD_DELAYED), True
        em.stage(E.STAGE_REWARD, "reward", FINISHED, reward.reason)
        return reward, False

    async def retry_reward(self, scan: ScanRecord) -> None:
        """The reward job: grant a postponed reward (the same request as the scan's own attempt,
        so the same answer if that attempt did reach CharacterService) and put it in the stored
        result. Raises when GrantReward still fails: the job queue retries it."""
        d = self.deps
        if not scan.reward_pending or scan.reward is not None or scan.result is None:
            return
        result = scan_pb2.ScanResult.FromString(scan.result)
        reward = await d.rewards.grant(scan.id, result.classification)
        REWARDS.labels(character_pb2.RewardOutcome.Name(reward.outcome)).inc()
        await d.store.save_reward(scan.id, reward.SerializeToString(), pending=False)
        result.reward.CopyFrom(reward)
        await d.store.update_result(scan.id, result.SerializeToString())

    async def give_up_reward(self, scan: ScanRecord, reason: str) -> None:
        """The reward job's last attempt failed: the stored result says so (no reward)."""
        d = self.deps
        await d.store.save_reward(scan.id, None, pending=False)
        if scan.result is not None:
            result = scan_pb2.ScanResult.FromString(scan.result)
            result.reward.reason = reason
            await d.store.update_result(scan.id, result.SerializeToString())
