// A scan in the page: a photo (and/or a hint) → the stages as they run → the scan's question,
// when it has one, as buttons → the answer → the character earned. The scan in progress is
// recorded in sessionStorage like the chat's answer, so a reload resumes it.

import { api, imageUrl, newId, SignedOut } from "./api.js";
import { Pacer } from "./pacer.js";
import { addStage, characterCard, endStages, h, renderAnswer } from "./render.js";
import { follow } from "./stream.js";

const $ = (id) => document.getElementById(id);
// the pipeline's stages in order (docs/services/scan.md), shown before they start
const STAGES = [["vision", "사진 분석"], ["rule", "배출 규칙"], ["answer", "답변 쓰기"], ["reward", "보상"]];
// the outcomes that leave the user with the character (its card is shown)
const OWNED = new Set(["REWARD_OUTCOME_RECEIVED", "REWARD_OUTCOME_ALREADY_OWNED"]);

const saved = {
  get scan() { try { return JSON.parse(sessionStorage.getItem("eco2.scan")); } catch { return null; } },
  set scan(v) { v ? sessionStorage.setItem("eco2.scan", JSON.stringify(v)) : sessionStorage.removeItem("eco2.scan"); },
};

export function createScan({ onError, announce, onReward }) {
  let picked = null;
  let running = false;

  function pick(file) {
    picked = file;
    const preview = $("scan-preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.hidden = !file;
    if (file) preview.src = URL.createObjectURL(file);
    else preview.removeAttribute("src");
    $("scan-photo-name").textContent = file ? file.name : "고른 사진이 없어요";
  }

  // --- the result card ---------------------------------------------------------------------------

  function card(record) {
    const article = $("scan-result");
    article.hidden = false;
    article.dataset.scan = record.scanId;
    const photo = h("img", { className: "thumb", alt: "스캔한 사진", width: 160, height: 120 });
    if (record.localImage) photo.src = record.localImage;
    else if (record.imageKey) imageUrl(record.imageKey).then((url) => { photo.src = url; }).catch(() => photo.remove());
    else photo.hidden = true;
    article.replaceChildren(
      h("h2", {}, "스캔 결과"),
      h("div", { className: "scan-head" }, photo, record.hint ? h("p", {}, `알려 준 설명: ${record.hint}`) : null),
      h("ol", { className: "steps", "aria-label": "진행 단계" }),
      h("p", { className: "step-note hint" }),
      h("div", { className: "slot-ask" }),
      h("div", { className: "slot-extras" }), // the character earned first, then how to dispose of it
      h("div", { className: "answer" }),
    );
    paintSteps(record);
    return article;
  }

  /** The four stages (done, running, asking the user, not yet), and what the latest one said. */
  function paintSteps(record) {
    const list = $("scan-result").querySelector(".steps");
    list.replaceChildren(...STAGES.map(([key, name]) => {
      const stage = record.stages.find((s) => s.key === key);
      const state = stage?.done ? "done" : stage && record.ask ? "asking" : stage ? "running" : "waiting";
      const label = { done: "완료", running: "진행 중", asking: "답을 기다려요", waiting: "대기" }[state];
      return h("li", { className: state }, name, h("span", { className: "visually-hidden" }, ` (${label})`));
    }));
    const latest = record.stages[record.stages.length - 1];
    $("scan-result").querySelector(".step-note").textContent = record.ask ? "" : latest?.message || ""; // while asking, the question speaks
  }

  function showAsk(record) {
    const ask = record.ask;
    const slot = $("scan-result").querySelector(".slot-ask");
    const note = h("p", { className: "hint", role: "status" });
    const answer = async (body, label) => {
      for (const b of slot.querySelectorAll("button, input")) b.disabled = true;
      try {
        await api("/v1/scans/input", { method: "POST", body: { jobId: record.jobId, inputId: ask.inputId, ...body } });
        record.ask = null;
        saved.scan = { ...record, localImage: undefined };
        slot.replaceChildren(h("p", { className: "hint" }, `답: ${label}`));
        paintSteps(record);
      } catch (err) {
        note.textContent = err.message;
        for (const b of slot.querySelectorAll("button, input")) b.disabled = false;
      }
    };
    const other = h("input", { id: "scan-other", maxLength: 200, autocomplete: "off", placeholder: "예: 우유팩" });
    const otherForm = h("form", { className: "other", onsubmit: (e) => { e.preventDefault(); if (other.value.trim()) answer({ text: other.value.trim() }, other.value.trim()); } },
      h("label", { htmlFor: "scan-other" }, "목록에 없으면 직접 적어 주세요"), h("div", { className: "row" }, other, h("button", { type: "submit", className: "secondary" }, "보내기")));
    const choices = (ask.choices || []).map((c) => h("button", { type: "button", className: "chip", onclick: () => answer({ category: c.value }, c.label) }, c.label));
    slot.replaceChildren(h("div", { className: "ask", role: "group", "aria-labelledby": "scan-question" },
      h("p", { id: "scan-question" }, ask.prompt || "사진 속 물건이 무엇인가요?"), h("div", { className: "choices" }, ...choices), otherForm, note));
    choices[0]?.focus();
  }

  function paintResult(record) {
    const article = $("scan-result");
    const result = record.result || {};
    renderAnswer(article.querySelector(".answer"), record.answer || result.explanation || "");
    const reward = result.reward;
    const extras = [];
    if (record.error) extras.push(h("p", { className: "error" }, record.error));
    if (reward?.reason) extras.push(h("p", { className: "reward" }, reward.reason)); // earned, already owned, or why not
    if (reward?.character?.code && OWNED.has(reward.outcome)) extras.push(characterCard(reward.character));
    if (reward) extras.push(h("p", {}, h("a", { href: "#characters" }, "내 캐릭터 보기")));
    article.querySelector(".slot-extras").replaceChildren(...extras);
    article.querySelector(".step-note").textContent = ""; // the stages are over: the result speaks
    article.dataset.finished = "true";
  }

  // --- running a scan ------------------------------------------------------------------------------

  async function stream(record) {
    running = true;
    $("scan").disabled = true;
    const article = card(record);
    const pacer = new Pacer((text) => renderAnswer(article.querySelector(".answer"), text));
    pacer.restore(record.answer);
    if (record.ask) { showAsk(record); paintSteps(record); }
    try {
      await follow(record.jobId, record.lastSeq, (kind, data, seq) => {
        if (kind === "stage") { addStage(record.stages, data); paintSteps(record); }
        else if (kind === "token") { record.answer += data.delta || ""; pacer.push(data.delta || ""); }
        else if (kind === "needs_input") { record.ask = data.needsInput || {}; showAsk(record); paintSteps(record); }
        else if (kind === "done") { record.result = data.done?.result || {}; record.finished = true; }
        else if (kind === "error") { record.error = data.error?.message || "스캔하지 못했어요."; record.finished = true; }
        record.lastSeq = seq;
        saved.scan = { ...record, localImage: undefined };
      }, (text) => { $("scan-error").textContent = text; });
    } catch (err) {
      if (err instanceof SignedOut) throw err;
      record.error = err.message;
      record.finished = true;
      saved.scan = { ...record, localImage: undefined };
    } finally {
      running = false;
      $("scan").disabled = false;
    }
    await pacer.drained();
    if (!record.error) { endStages(record.stages); paintSteps(record); }
    paintResult(record);
    announce(record.error ? "스캔을 마치지 못했어요." : "스캔 결과가 나왔어요.");
    if (record.result?.reward?.outcome === "REWARD_OUTCOME_RECEIVED") onReward();
  }

  async function submit(event) {
    event.preventDefault();
    if (running) return;
    $("scan-error").textContent = "";
    const hint = $("scan-hint").value.trim();
    const file = picked;
    if (!file && !hint) { $("scan-error").textContent = "사진을 고르거나 무엇인지 적어 주세요."; return; }
    $("scan").disabled = true;
    try {
      let imageKey = "";
      if (file) {
        $("scan-error").textContent = "";
        const form = new FormData();
        form.append("file", file, file.name);
        imageKey = (await api("/v1/images?channel=scan", { method: "POST", body: form })).image.key;
      }
      const reply = await api("/v1/scans", { method: "POST", body: { imageKey, hint, clientScanId: newId() } });
      const record = { jobId: reply.jobId, scanId: reply.scanId, lastSeq: 0, answer: "", stages: [], ask: null, result: null, finished: false, error: "", hint, imageKey,
                       localImage: file ? URL.createObjectURL(file) : null };
      saved.scan = { ...record, localImage: undefined };
      pick(null);
      $("scan-hint").value = "";
      $("scan-photo").value = "";
      await stream(record);
    } catch (err) {
      $("scan").disabled = false;
      onError(err, $("scan-error"));
    }
  }

  $("scanner").addEventListener("submit", submit);
  $("scan-photo").addEventListener("change", () => pick($("scan-photo").files[0] || null));

  return {
    /** Shows the last scan of this tab again, resuming it when it was still running. */
    async start() {
      const record = saved.scan;
      if (!record || running) return;
      if (record.finished) {
        if (!record.error) endStages(record.stages);
        card(record);
        paintResult(record);
      }
      else await stream(record).catch((err) => onError(err, $("scan-error")));
    },
    reset() {
      saved.scan = null;
      pick(null);
      $("scan-result").hidden = true;
      $("scan-result").replaceChildren();
    },
  };
}
