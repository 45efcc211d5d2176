// The conversation: questions and answers in order, the answer in progress streamed (paced) with
// its stages, then folded to its text, sources, character card and places. The answer in
// progress is recorded in sessionStorage (its last seq included), so a reload or a network drop
// resumes it where it was; finished answers come back from the server (GetConversation returns
// each answer's ChatResult), so a reopened conversation looks as it did live. While an answer is
// streamed, 멈추기 takes the place of 보내기: it cancels the run (ChatService.CancelRun,
// interrupt), whose stream then ends with ERROR RUN_CANCELLED; what was answered until then
// stays, on the page and in the history (ChatResult.cancelled).

import { api, imageUrl, newId, Offline, SignedOut } from "./api.js";
import { Pacer } from "./pacer.js";
import { addStage, characterCard, duplicatesOf, endStages, h, placesBox, renderAnswer, sourcesBox, stagesBox, typingIndicator } from "./render.js";
import { follow, replayStages } from "./stream.js";

const $ = (id) => document.getElementById(id);
const DEFAULT_PHOTO_QUESTION = "이 사진 속 물건은 어떻게 버려?";
const STOPPED = "답변을 멈췄어요.";
/** The terminal ERROR reasons of a cancelled run (CancelRun): not a failure. */
const CANCELLED = new Set(["RUN_CANCELLED", "RUN_ROLLED_BACK"]);

const saved = {
  get job() { try { return JSON.parse(sessionStorage.getItem("eco2.job")); } catch { return null; } },
  set job(v) { v ? sessionStorage.setItem("eco2.job", JSON.stringify(v)) : sessionStorage.removeItem("eco2.job"); },
  get conversation() { return sessionStorage.getItem("eco2.conversation") || ""; },
  set conversation(v) { v ? sessionStorage.setItem("eco2.conversation", v) : sessionStorage.removeItem("eco2.conversation"); },
  // the last conversation shown, to show it again when the page opens offline
  get copy() { try { return JSON.parse(localStorage.getItem("eco2.conversation-copy")); } catch { return null; } },
  set copy(v) { v ? localStorage.setItem("eco2.conversation-copy", JSON.stringify(v)) : localStorage.removeItem("eco2.conversation-copy"); },
};

export function createChat({ onError, announce }) {
  let attachment = null; // the File the next message sends
  let live = null; // {record, li, pacer} of the answer being streamed

  function status(text) { $("status").textContent = text || ""; }
  function showEmpty() { $("empty").hidden = $("messages").children.length > 0; }

  // --- turns ---------------------------------------------------------------------------------

  function userTurn({ text, jobId, imageKey, localImage }) {
    const bubble = h("div", { className: "bubble" });
    if (localImage || imageKey) {
      const img = h("img", { className: "thumb", alt: "보낸 사진", width: 160, height: 120 });
      if (localImage) img.src = localImage;
      else imageUrl(imageKey).then((url) => { img.src = url; }).catch(() => { img.alt = "사진을 불러오지 못했어요"; });
      bubble.append(img);
    }
    bubble.append(h("p", { lang: /[가-힣]/.test(text) ? "ko" : "en" }, text));
    const li = h("li", { className: "turn user", "data-job": jobId || "" }, h("span", { className: "visually-hidden" }, "내 질문: "), bubble);
    $("messages").append(li);
    showEmpty();
    return li;
  }

  function assistantTurn(jobId, after) {
    const li = h("li", { className: "turn assistant", "data-job": jobId || "" },
      h("span", { className: "visually-hidden" }, "Eco²의 답변: "),
      h("div", { className: "slot-stages" }), h("div", { className: "slot-typing" }), h("div", { className: "answer" }),
      h("div", { className: "slot-ask" }), h("div", { className: "slot-extras" }));
    if (after) after.after(li);
    else $("messages").append(li);
    showEmpty();
    return li;
  }

  /** A finished answer: text without what the cards show, then sources, character, places. */
  function paintFinished(li, { text, result, stages, totalMs, jobId, error, stopped }) {
    li.querySelector(".slot-typing").replaceChildren();
    li.querySelector(".slot-ask").replaceChildren();
    const answer = li.querySelector(".answer");
    answer.lang = /[가-힣]/.test(text) || !text ? "ko" : "en"; // an English question gets an English answer
    renderAnswer(answer, text, duplicatesOf(result));
    const box = stages?.length
      ? stagesBox(endStages(stages), { running: false, totalMs })
      : stagesBox([], { running: false, onFirstOpen: jobId ? (details) => loadStages(details, jobId) : null });
    li.querySelector(".slot-stages").replaceChildren(box);
    li.querySelector(".slot-extras").replaceChildren(...[
      error ? h("p", { className: "error" }, error) : null,
      stopped ? h("p", { className: "hint stopped" }, STOPPED) : null,
      sourcesBox(result?.citations),
      result?.character?.code ? characterCard(result.character) : null,
      placesBox(result?.places),
    ].filter(Boolean));
    li.removeAttribute("aria-busy");
    li.dataset.finished = "true";
  }

  async function loadStages(details, jobId) {
    const list = details.querySelector("ol");
    list.replaceChildren(h("li", {}, "불러오는 중…"));
    try {
      const stages = [];
      for (const data of await replayStages(jobId)) addStage(stages, data);
      const box = stagesBox(endStages(stages), { running: false });
      box.open = true;
      details.replaceWith(box);
      box.querySelector("summary").focus();
    } catch {
      list.replaceChildren(h("li", {}, "진행 기록이 더 이상 남아 있지 않아요 (하루 동안 보관해요)."));
    }
  }

  // --- the conversation -----------------------------------------------------------------------

  function renderConversation(data) {
    $("messages").replaceChildren();
    // the server pages from the newest message backwards: show them oldest first
    for (const m of [...(data.messages || [])].reverse()) {
      if (m.role === "MESSAGE_ROLE_USER") userTurn({ text: m.text, jobId: m.jobId, imageKey: m.imageKey });
      // a stopped answer shows as it did when it was stopped: its text, no cards
      else paintFinished(assistantTurn(m.jobId), { text: m.text, result: m.result?.cancelled ? null : m.result, jobId: m.jobId, stopped: m.result?.cancelled });
    }
    showEmpty();
  }

  async function open(id) {
    saved.conversation = id;
    markCurrent();
    if (!id) { $("messages").replaceChildren(); saved.copy = null; showEmpty(); return; }
    try {
      const data = await api(`/v1/conversations/${encodeURIComponent(id)}`);
      saved.copy = { id, data };
      renderConversation(data);
    } catch (err) {
      const copy = saved.copy;
      if (err instanceof Offline && copy?.id === id) renderConversation(copy.data);
      else if (!(err instanceof Offline)) { saved.conversation = ""; saved.copy = null; }
      throw err;
    }
  }

  async function loadList() {
    const data = await api("/v1/conversations?page_size=30");
    const list = $("conversations");
    list.replaceChildren(...(data.conversations || []).map((c) => h("li", {},
      h("button", { type: "button", className: "conversation", "data-id": c.id, onclick: () => select(c.id) }, c.title || c.lastMessagePreview || "대화"))));
    $("history").querySelector("summary").textContent = `지난 대화 (${list.children.length})`;
    markCurrent();
  }

  function markCurrent() {
    for (const b of $("conversations").querySelectorAll("button")) {
      if (b.dataset.id === saved.conversation) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    }
  }

  const BUSY = "답변이 끝나면 다른 대화를 열 수 있어요.";

  async function select(id) {
    if (live) { status(BUSY); return; } // one answer at a time: the list waits for it
    try {
      await open(id);
      if (window.matchMedia("(max-width: 760px)").matches) $("history").open = false;
      $("message").focus();
    } catch (err) {
      onError(err);
    }
  }

  // --- the answer in progress -------------------------------------------------------------------

  /** 멈추기 instead of 보내기 while an answer streams (one answer at a time). */
  function answering(on) {
    const sendFocused = document.activeElement === $("send");
    $("send").hidden = on;
    $("send").disabled = on;
    $("stop").hidden = !on;
    $("stop").removeAttribute("aria-disabled");
    if (on && sendFocused) $("stop").focus();
  }

  async function stop() {
    const button = $("stop");
    // aria-disabled, not disabled: the button keeps the focus until the answer has stopped
    if (!live || live.record.finished || button.getAttribute("aria-disabled") === "true") return;
    const { record } = live;
    button.setAttribute("aria-disabled", "true");
    status("멈추는 중…");
    try {
      await api("/v1/chat/cancel", { method: "POST", body: { jobId: record.jobId } });
    } catch (err) {
      // the answer ended meanwhile (the server says it finished): its stream brings the end anyway
      if (!record.finished) { status(err.message); button.removeAttribute("aria-disabled"); }
    }
  }

  async function stream(record, li) {
    const pacer = new Pacer((text) => {
      renderAnswer(li.querySelector(".answer"), text, record.result ? duplicatesOf(record.result) : undefined);
      if (text) li.querySelector(".slot-typing").replaceChildren();
    });
    live = { record, li, pacer };
    answering(true);
    li.setAttribute("aria-busy", "true");
    pacer.restore(record.answer); // what this page already showed before a reload
    paintRunning(record, li);
    if (record.ask) showAsk(record, li);
    try {
      await follow(record.jobId, record.lastSeq, (kind, data, seq) => {
        apply(record, li, pacer, kind, data);
        record.lastSeq = seq;
        saved.job = record;
      }, status);
    } catch (err) {
      if (err instanceof SignedOut) { live = null; answering(false); throw err; }
      record.error = err.message;
      record.finished = true;
      saved.job = record;
    }
    await pacer.drained();
    paintFinished(li, { text: record.answer || record.result?.answer || "", result: record.result, stages: record.stages, totalMs: record.totalMs, error: record.error, stopped: record.stopped });
    status("");
    live = null;
    const stopFocused = document.activeElement === $("stop");
    answering(false);
    if (stopFocused) $("message").focus(); // the button that had the focus is gone
    announce(record.stopped ? STOPPED : record.error ? "답변을 마치지 못했어요." : "답변이 도착했어요.");
    loadList().catch(() => {});
  }

  function paintRunning(record, li) {
    li.querySelector(".slot-stages").replaceChildren(stagesBox(record.stages, { running: true }));
    li.querySelector(".slot-typing").replaceChildren(record.answer || record.ask ? "" : typingIndicator());
  }

  function apply(record, li, pacer, kind, data) {
    record.startedAt ??= data.time;
    if (kind === "stage") {
      addStage(record.stages, data);
      const wasOpen = li.querySelector("details.stages")?.open ?? true;
      const box = stagesBox(record.stages, { running: true });
      box.open = wasOpen; // the user may have folded it
      li.querySelector(".slot-stages").replaceChildren(box);
    } else if (kind === "token") {
      record.answer += data.delta || "";
      pacer.push(data.delta || "");
    } else if (kind === "needs_input") {
      record.ask = data.needsInput || {};
      showAsk(record, li);
    } else if (kind === "done") {
      record.result = data.done?.result || {};
      record.finished = true;
      if (record.startedAt && data.time) record.totalMs = Date.parse(data.time) - Date.parse(record.startedAt);
    } else if (kind === "error" && CANCELLED.has(data.error?.reason)) {
      record.stopped = true;
      record.ask = null;
      li.querySelector(".slot-ask").replaceChildren();
      record.finished = true;
    } else if (kind === "error") {
      record.error = data.error?.message || "답변을 만들지 못했어요.";
      record.finished = true;
    }
  }

  function showAsk(record, li) {
    const ask = record.ask;
    const slot = li.querySelector(".slot-ask");
    li.querySelector(".slot-typing").replaceChildren();
    const note = h("p", { className: "hint", role: "status" });
    const answer = async (body, done) => {
      for (const b of slot.querySelectorAll("button")) b.disabled = true;
      try {
        await api("/v1/chat/input", { method: "POST", body: { jobId: record.jobId, inputId: ask.inputId, ...body } });
        record.ask = null;
        saved.job = record;
        slot.replaceChildren(h("p", { className: "hint" }, done));
        if (!record.answer) li.querySelector(".slot-typing").replaceChildren(typingIndicator());
      } catch (err) {
        note.textContent = err.message;
        for (const b of slot.querySelectorAll("button")) b.disabled = false;
      }
    };
    const share = h("button", { type: "button", onclick: () => {
      if (!navigator.geolocation) { note.textContent = "이 브라우저는 위치를 알려 줄 수 없어요."; return; }
      note.textContent = "위치를 확인하는 중…";
      navigator.geolocation.getCurrentPosition(
        (pos) => answer({ location: { latitude: pos.coords.latitude, longitude: pos.coords.longitude } }, "위치를 보냈어요."),
        () => { note.textContent = "위치를 가져오지 못했어요. 브라우저의 위치 권한을 확인해 주세요."; },
        { timeout: 10000, maximumAge: 60000 },
      );
    } }, "위치 공유하기");
    const decline = h("button", { type: "button", className: "secondary", onclick: () => answer({ declined: true }, "위치를 보내지 않았어요.") }, "공유하지 않기");
    slot.replaceChildren(h("div", { className: "ask", role: "group", "aria-label": "위치 공유" },
      h("p", {}, ask.prompt || "위치를 알려 주시면 가까운 수거 장소를 찾아 드릴게요."), h("div", { className: "actions" }, share, decline), note));
    share.focus();
  }

  // --- sending ----------------------------------------------------------------------------------

  async function send(text) {
    if (live) { status("답변이 끝나면 보낼 수 있어요."); return; }
    const file = attachment;
    text = text.trim() || (file ? DEFAULT_PHOTO_QUESTION : "");
    if (!text) return;
    $("send").disabled = true;
    const localImage = file ? URL.createObjectURL(file) : null;
    const question = userTurn({ text, localImage });
    const li = assistantTurn("", question);
    li.querySelector(".slot-typing").replaceChildren(typingIndicator());
    li.setAttribute("aria-busy", "true");
    $("message").value = "";
    attach(null);
    question.scrollIntoView({ block: "start", behavior: "smooth" });
    try {
      let imageKey = "";
      if (file) {
        status("사진을 올리는 중…");
        const form = new FormData();
        form.append("file", file, file.name);
        imageKey = (await api("/v1/images", { method: "POST", body: form })).image.key;
      }
      const reply = await api("/v1/chat/messages", { method: "POST", body: { message: text, conversationId: saved.conversation, imageKey, clientMessageId: newId() } });
      saved.conversation = reply.conversationId || saved.conversation;
      question.dataset.job = li.dataset.job = reply.jobId;
      const record = { jobId: reply.jobId, lastSeq: 0, answer: "", stages: [], ask: null, result: null, finished: false, error: "" };
      saved.job = record;
      status("");
      await stream(record, li);
    } catch (err) {
      question.remove();
      li.remove();
      showEmpty();
      $("message").value = text;
      if (file) attach(file);
      onError(err);
    } finally {
      if (!live) answering(false);
    }
  }

  function attach(file) {
    attachment = file;
    $("attachment").hidden = !file;
    $("photo").value = "";
    const thumb = $("attachment-thumb");
    if (thumb.src) URL.revokeObjectURL(thumb.src);
    thumb.removeAttribute("src");
    if (file) {
      thumb.src = URL.createObjectURL(file);
      $("attachment-name").textContent = file.name;
    }
  }

  $("composer").addEventListener("submit", (event) => { event.preventDefault(); send($("message").value); });
  $("stop").addEventListener("click", () => { stop(); });
  $("photo").addEventListener("change", () => attach($("photo").files[0] || null));
  $("attachment-remove").addEventListener("click", () => { attach(null); $("message").focus(); });
  $("new-chat").addEventListener("click", () => {
    if (live) { status(BUSY); return; }
    open("");
    $("message").focus();
  });
  for (const chip of document.querySelectorAll("#empty .chip")) chip.addEventListener("click", () => send(chip.textContent));

  return {
    /** Shows the current conversation, then resumes its answer in progress, if any. */
    async start() {
      if (window.matchMedia("(min-width: 761px)").matches) $("history").open = true;
      loadList().catch(onError);
      if (live) return; // back online mid-answer: the answer's own stream reconnects
      try {
        await open(saved.conversation);
      } catch (err) {
        onError(err);
        return; // offline: the answer in progress resumes when the page is back online
      }
      const record = saved.job;
      if (record && !record.finished && !live) {
        const question = document.querySelector(`li.user[data-job="${CSS.escape(record.jobId)}"]`);
        if (question) await stream(record, assistantTurn(record.jobId, question)).catch(onError);
        else saved.job = null; // its conversation is not the one shown (deleted, or another tab's)
      }
    },
    /** Sign-out: nothing of this user stays in the page or the browser. */
    reset() {
      saved.job = null;
      saved.conversation = "";
      saved.copy = null;
      $("messages").replaceChildren();
      $("conversations").replaceChildren();
      attach(null);
      showEmpty();
    },
  };
}
