// A job's events over the gateway's SSE route, read with fetch (EventSource cannot send the
// Authorization header). Each event is handed over once, in seq order: the caller keeps the last
// seq it applied and every reconnect (a network drop, a reload) resumes after it with
// Last-Event-ID, and anything at or below it is skipped, whatever the network did.

import { authorized, Offline, SignedOut } from "./api.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follows job `jobId` from after `lastSeq` until DONE or ERROR.
 * `onEvent(kind, data, seq)` applies one event ("stage", "token", "tool", "needs_input", "done",
 * "error"); `onState(text)` tells the page about the connection ("" when all is well).
 * Resolves when a terminal event was applied; rejects with SignedOut, or with an Error when the
 * job cannot be streamed (not found, expired).
 */
export async function follow(jobId, lastSeq, onEvent, onState = () => {}) {
  let failures = 0;
  for (;;) {
    let res;
    try {
      res = await authorized(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
        headers: { "last-event-id": String(lastSeq), accept: "text/event-stream" }, cache: "no-store",
      });
    } catch (err) {
      if (err instanceof SignedOut) throw err;
      if (!(err instanceof Offline)) throw err;
      res = null;
    }
    if (res && !res.ok && res.status < 500) {
      const data = await res.json().catch(() => ({}));
      throw new Error(data?.error?.message || `답변을 받을 수 없어요 (${res.status}).`);
    }
    if (res && res.ok) {
      try {
        failures = 0;
        onState("");
        const end = await read(res.body, (seq, kind, data) => {
          if (seq <= lastSeq) return false; // already applied: exactly once
          lastSeq = seq;
          onEvent(kind, data, seq);
          return kind === "done" || kind === "error";
        });
        if (end) return;
      } catch {
        // the connection broke mid-stream: reconnect below
      }
    }
    failures += 1;
    onState("연결이 끊겼어요. 다시 연결하는 중…");
    await sleep(Math.min(5000, 400 * failures));
  }
}

/** Parses the SSE body; `apply` returns true on a terminal event (the read stops there). */
async function read(body, apply) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const ev = { id: null, event: "message", data: "" };
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // keepalive comment
          const i = line.indexOf(":");
          const key = i < 0 ? line : line.slice(0, i);
          const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
          if (key === "id") ev.id = val;
          else if (key === "event") ev.event = val;
          else if (key === "data") ev.data += val;
        }
        if (ev.id === null || !ev.data) continue;
        if (apply(Number(ev.id), ev.event, JSON.parse(ev.data))) return true;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** The stages of a finished job, read again from its event replay (kept for a day by default). */
export async function replayStages(jobId) {
  const stages = [];
  await follow(jobId, 0, (kind, data) => { if (kind === "stage") stages.push(data); });
  return stages;
}
