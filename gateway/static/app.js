// Eco² browser UI: plain JavaScript, no build step. Talks to the gateway's JSON routes and
// follows a job's events over SSE (fetch + ReadableStream, so the Authorization header and
// Last-Event-ID can be set). The answer in progress is kept in sessionStorage: after a network
// drop or a page reload the stream resumes after the last seq seen, so nothing is shown twice.
"use strict";

const $ = (id) => document.getElementById(id);
const store = {
  get token() { return localStorage.getItem("eco2.token"); },
  set token(v) { v ? localStorage.setItem("eco2.token", v) : localStorage.removeItem("eco2.token"); },
  get name() { return localStorage.getItem("eco2.name") || ""; },
  set name(v) { localStorage.setItem("eco2.name", v); },
  get job() { try { return JSON.parse(sessionStorage.getItem("eco2.job")); } catch { return null; } },
  set job(v) { v ? sessionStorage.setItem("eco2.job", JSON.stringify(v)) : sessionStorage.removeItem("eco2.job"); },
};
let conversationId = sessionStorage.getItem("eco2.conversation") || "";

const STAGE_NAMES = {
  STAGE_QUEUED: "대기", STAGE_INTENT: "의도 파악", STAGE_VISION: "사진 분석", STAGE_ROUTER: "경로 선택",
  STAGE_SUBAGENT: "정보 찾기", STAGE_AGGREGATE: "정리", STAGE_ANSWER: "답변 작성", STAGE_EVALUATE: "검토",
  STAGE_FALLBACK: "대체 답변", STAGE_SUMMARIZE: "요약", STAGE_RULE: "배출 규칙", STAGE_REWARD: "보상", STAGE_PERSIST: "저장",
};

function authHeaders(extra = {}) {
  return { authorization: `Bearer ${store.token}`, ...extra };
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: authHeaders(headers) };
  if (body !== undefined) {
    if (body instanceof FormData) init.body = body;
    else { init.body = JSON.stringify(body); init.headers["content-type"] = "application/json"; }
  }
  const res = await fetch(path, init);
  const data = await res.json().catch(() => ({}));
  if (res.status === 401) { signOut(); throw new Error("다시 로그인해 주세요."); }
  if (!res.ok) throw new Error(data?.error?.message || `요청 실패 (${res.status})`);
  return data;
}

function status(text) { $("status").textContent = text || ""; }

// --- sign in ----------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  $("sign-in-error").textContent = "";
  const displayName = $("display-name").value.trim();
  try {
    const res = await fetch("/v1/auth/dev-sign-in", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ displayName }) });
    const data = await res.json();
    if (!res.ok) throw new Error(data?.error?.message || "로그인에 실패했어요.");
    store.token = data.tokens.accessToken;
    store.name = data.user?.displayName || displayName;
    show();
  } catch (err) {
    $("sign-in-error").textContent = err.message;
  }
}

function signOut() {
  store.token = null;
  store.job = null;
  show();
}

function show() {
  const signedIn = Boolean(store.token);
  $("sign-in").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("who").hidden = !signedIn;
  $("who-name").textContent = signedIn ? `${store.name} 님` : "";
  if (signedIn) {
    loadConversations();
    const job = store.job;
    if (job && !job.finished) resume(job);
  }
}

// --- conversations ----------------------------------------------------------------------------

async function loadConversations() {
  try {
    const data = await api("/v1/conversations?page_size=20");
    const list = $("conversations");
    list.replaceChildren();
    for (const c of data.conversations || []) {
      const li = document.createElement("li");
      li.textContent = c.title || c.lastMessagePreview || "대화";
      li.onclick = () => openConversation(c.id);
      list.append(li);
    }
  } catch (err) {
    status(`대화 목록을 불러오지 못했어요: ${err.message}`);
  }
}

async function openConversation(id) {
  conversationId = id;
  sessionStorage.setItem("eco2.conversation", id);
  $("messages").replaceChildren();
  try {
    const data = await api(`/v1/conversations/${encodeURIComponent(id)}`);
    for (const m of data.messages || []) addMessage(m.role === "MESSAGE_ROLE_USER" ? "user" : "assistant", m.text);
  } catch (err) {
    status(err.message);
  }
}

// --- messages ---------------------------------------------------------------------------------

function addMessage(role, text, imageUrl) {
  const li = document.createElement("li");
  li.className = role;
  if (imageUrl) {
    const img = document.createElement("img");
    img.src = imageUrl;
    img.alt = "첨부한 사진";
    li.append(img);
  }
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text || "";
  li.append(body);
  $("messages").append(li);
  return li;
}

function assistantBubble(job) {
  let li = document.querySelector(`li.assistant[data-job="${job.jobId}"]`);
  if (!li) {
    if (job.userText) addMessage("user", job.userText);
    li = addMessage("assistant", "");
    li.dataset.job = job.jobId;
    const stages = document.createElement("div");
    stages.className = "stages";
    li.prepend(stages);
  }
  li.querySelector(".text").textContent = job.answer;
  li.querySelector(".stages").textContent = job.stages.join(" → ");
  if (job.finished) li.dataset.finished = "true"; // the answer is complete (done or error)
  return li;
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  $("send").disabled = true;
  try {
    let imageKey = "";
    const file = $("photo").files[0];
    if (file) {
      status("사진을 올리는 중…");
      const form = new FormData();
      form.append("file", file, file.name);
      const up = await api("/v1/images", { method: "POST", body: form });
      imageKey = up.image.key;
    }
    const clientMessageId = crypto.randomUUID ? crypto.randomUUID() : String(Date.now());
    const reply = await api("/v1/chat/messages", { method: "POST", body: { message: text, conversationId, imageKey, clientMessageId } });
    conversationId = reply.conversationId || conversationId;
    sessionStorage.setItem("eco2.conversation", conversationId);
    $("message").value = "";
    $("photo").value = "";
    const job = { jobId: reply.jobId, lastSeq: 0, answer: "", stages: [], userText: text, finished: false };
    store.job = job;
    await resume(job);
  } catch (err) {
    status(err.message);
  } finally {
    $("send").disabled = false;
  }
}

// --- scans: a photo (and a hint) → stages → the result card with the character earned ----------

async function scan(event) {
  event.preventDefault();
  const file = $("scan-photo").files[0];
  if (!file) return;
  const hint = $("scan-hint").value.trim();
  $("scan").disabled = true;
  try {
    status("사진을 올리는 중…");
    const form = new FormData();
    form.append("file", file, file.name);
    const up = await api("/v1/images?channel=scan", { method: "POST", body: form });
    const clientScanId = crypto.randomUUID ? crypto.randomUUID() : String(Date.now());
    const reply = await api("/v1/scans", { method: "POST", body: { imageKey: up.image.key, hint, clientScanId } });
    $("scan-photo").value = "";
    $("scan-hint").value = "";
    const job = { jobId: reply.jobId, lastSeq: 0, answer: "", stages: [], userText: `사진 스캔: ${file.name}${hint ? ` — ${hint}` : ""}`, finished: false };
    store.job = job;
    await resume(job);
  } catch (err) {
    status(err.message);
  } finally {
    $("scan").disabled = false;
  }
}

async function showCollection() {
  try {
    const data = await api("/v1/collection?page_size=100");
    const list = $("collection");
    list.replaceChildren();
    for (const owned of data.characters || []) {
      const li = document.createElement("li");
      li.textContent = `${owned.character?.name || ""} (${owned.character?.matchLabel || ""})`;
      list.append(li);
    }
  } catch (err) {
    status(`도감을 불러오지 못했어요: ${err.message}`);
  }
}

// --- the event stream -------------------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function resume(job) {
  assistantBubble(job);
  let failures = 0;
  while (!job.finished) {
    try {
      status(job.lastSeq ? "이어서 받는 중…" : "답변을 기다리는 중…");
      const res = await fetch(`/v1/jobs/${encodeURIComponent(job.jobId)}/events`, {
        headers: authHeaders({ "last-event-id": String(job.lastSeq), accept: "text/event-stream" }),
        cache: "no-store",
      });
      if (res.status === 401) { signOut(); return; }
      if (!res.ok) {
        const data = await res.json().catch(() => ({}));
        throw Object.assign(new Error(data?.error?.message || `스트림 오류 (${res.status})`), { fatal: res.status < 500 });
      }
      failures = 0;
      await readEvents(res.body, job);
    } catch (err) {
      if (err.fatal) { status(err.message); job.finished = true; store.job = job; return; }
      failures += 1;
      status("연결이 끊겼어요. 다시 연결하는 중…");
      await sleep(Math.min(5000, 500 * failures));
    }
  }
}

async function readEvents(body, job) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const ev = { id: null, event: "message", data: "" };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const i = line.indexOf(":");
        const key = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (key === "id") ev.id = val;
        else if (key === "event") ev.event = val;
        else if (key === "data") ev.data += val;
      }
      if (ev.id === null || !ev.data) {
        if (ev.event === "error") throw new Error("스트림 오류");
        continue;
      }
      const seq = Number(ev.id);
      if (seq <= job.lastSeq) continue; // exactly once, whatever the network did
      apply(job, ev.event, JSON.parse(ev.data));
      job.lastSeq = seq;
      store.job = job;
      if (job.finished) { await reader.cancel().catch(() => {}); return; }
    }
  }
}

function apply(job, kind, data) {
  const li = assistantBubble(job);
  if (kind === "stage") {
    const name = STAGE_NAMES[data.stage] || data.node || "진행";
    const msg = data.stageInfo?.message;
    if (!job.stages.includes(name)) job.stages.push(name);
    status(msg || `${name} 중…`);
  } else if (kind === "token") {
    job.answer += data.delta || "";
  } else if (kind === "tool") {
    const places = data.tool?.result?.places;
    if (Array.isArray(places)) renderPlaces(li, places);
  } else if (kind === "needs_input") {
    askInput(job, data.needsInput || {});
  } else if (kind === "done") {
    job.finished = true;
    const result = data.done?.result || {};
    if (!job.answer && (result.answer || result.explanation)) job.answer = result.answer || result.explanation;
    if (result.character) renderCharacter(li, result.character);
    if (result.reward) renderReward(li, result.reward);
    if (Array.isArray(result.places) && result.places.length) renderPlaces(li, result.places.map((p) => ({ name: p.place?.name, address: p.place?.roadAddress || p.place?.address, distance: p.distanceText })));
    status("");
    loadConversations();
  } else if (kind === "error") {
    job.finished = true;
    status(data.error?.message || "답변을 만들지 못했어요.");
  }
  assistantBubble(job);
}

function renderCharacter(li, c) {
  li.querySelector(".character-card")?.remove();
  const card = document.createElement("div");
  card.className = "character-card";
  card.innerHTML = "<strong></strong> <span class=\"label\"></span><p></p>";
  card.querySelector("strong").textContent = c.name || "";
  card.querySelector(".label").textContent = c.matchLabel ? `(${c.matchLabel})` : "";
  card.querySelector("p").textContent = c.description || "";
  li.append(card);
}

function renderReward(li, reward) {
  // a scan's reward: the character earned (or already owned), else why not
  if (reward.character?.code && reward.outcome !== "REWARD_OUTCOME_NOT_ELIGIBLE") renderCharacter(li, reward.character);
  const line = document.createElement("p");
  line.className = "reward";
  line.textContent = reward.reason || "";
  (li.querySelector(".character-card") || li).append(line);
}

function renderPlaces(li, places) {
  li.querySelector(".places")?.remove();
  const box = document.createElement("div");
  box.className = "places";
  box.textContent = "가까운 수거 장소: ";
  const ul = document.createElement("ul");
  for (const p of places.slice(0, 5)) {
    const item = document.createElement("li");
    item.textContent = [p.name, p.address, p.distance].filter(Boolean).join(" · ");
    ul.append(item);
  }
  box.append(ul);
  li.append(box);
}

function askInput(job, req) {
  $("needs-input").hidden = false;
  const choosing = req.kind === "INPUT_KIND_CHOICE";
  $("share-location").hidden = $("decline-location").hidden = choosing;
  $("choices").replaceChildren();
  if (choosing) { // a scan asks which item it is: one button per candidate category
    $("needs-input-prompt").textContent = req.prompt || "";
    for (const choice of req.choices || []) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = choice.label;
      button.onclick = async () => {
        $("needs-input").hidden = true;
        await api("/v1/scans/input", { method: "POST", body: { jobId: job.jobId, inputId: req.inputId, category: choice.value } }).catch((e) => status(e.message));
      };
      $("choices").append(button);
    }
    return;
  }
  $("needs-input-prompt").textContent = req.prompt || "위치를 공유해 주시면 가까운 수거 장소를 알려드릴게요.";
  const done = () => { $("needs-input").hidden = true; };
  $("share-location").onclick = () => {
    if (!navigator.geolocation) { status("이 브라우저는 위치를 지원하지 않아요."); return; }
    navigator.geolocation.getCurrentPosition(
      async (pos) => {
        done();
        await api("/v1/chat/input", { method: "POST", body: { jobId: job.jobId, inputId: req.inputId, location: { latitude: pos.coords.latitude, longitude: pos.coords.longitude } } }).catch((e) => status(e.message));
      },
      () => status("위치를 가져오지 못했어요."),
      { timeout: 10000 },
    );
  };
  $("decline-location").onclick = async () => {
    done();
    await api("/v1/chat/input", { method: "POST", body: { jobId: job.jobId, inputId: req.inputId, declined: true } }).catch((e) => status(e.message));
  };
}

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);
$("composer").addEventListener("submit", send);
$("scanner").addEventListener("submit", scan);
$("show-collection").addEventListener("click", showCollection);
$("new-chat").addEventListener("click", () => { conversationId = ""; sessionStorage.removeItem("eco2.conversation"); $("messages").replaceChildren(); });
show();
