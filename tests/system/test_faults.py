"""Faults under load: PostgreSQL, Valkey, events, chat and auth each killed (SIGKILL) while
chat turns stream, on a private `eco2 up` (its own data dir and data plane: the session's is
shared by every test and never killed). `eco2 up` brings each back; then every service is
SERVING, a new turn completes, and, over the whole run: every message sent ended in exactly one
DONE or a clear ERROR, no client got a seq twice or missed one, and no stored user message is
left without its job's end. Bounded: about a minute on a loaded 2-core machine.

The figures of docs/benchmarks.md come from the same code: bench/faults.py.
"""

from __future__ import annotations

import pytest

from support.faults import Load, UpStack, account, fault

VICTIMS = ("postgres", "valkey", "events", "chat", "auth")


@pytest.fixture(scope="module")
async def stack(session_dir):
    async with UpStack(session_dir / "faults") as stack:
        yield stack


@pytest.mark.timeout(240)
async def test_killing_each_part_under_load_loses_and_duplicates_nothing(stack):
    recoveries = []
    async with Load(stack, clients=4) as load:
        for victim in VICTIMS:
            recoveries.append(await fault(stack, load, victim))
    audit = await account(stack, load.turns)
    report = "\n".join(
        f"{r.victim}: SERVING {r.to_serving_s} s, first DONE {r.to_first_done_s} s, in flight {r.in_flight} "
        f"({r.streaming} streaming), probe errors {r.probe_errors}"
        for r in recoveries
    )
    print(report, audit, sep="\n")
    assert [r.victim for r in recoveries] == list(VICTIMS)
    assert all(r.streaming >= 1 for r in recoveries), report  # each kill hit a turn mid-stream
    assert audit.unfinished == [], audit  # every message sent ended...
    assert audit.terminals_not_one == [], audit  # ...in exactly one DONE or ERROR
    assert audit.duplicated == 0 and audit.lost == 0 and audit.gaps == 0, audit
    assert audit.orphans == [] and audit.messages_not_one == [], audit
    assert audit.send_failed == [], audit  # a send is retried until the mesh takes it
    assert audit.bugs_logged == [], "\n".join(audit.bugs_logged)  # no INTERNAL, no unhandled exception
    assert audit.done >= audit.turns // 2, audit  # most turns answer; an ERROR is a clear end
    assert set(audit.error_reasons) <= {"JOB_FAILED", "NODE_FAILED"}, audit
