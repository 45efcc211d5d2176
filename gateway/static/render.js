// DOM pieces of an answer: its text as structure, the stages it went through, its sources, the
// character card and the nearby places. Everything user- or model-written goes in as text
// (textContent), never as HTML.

/** `h("p", {className: "x"}, "text", child)`: an element with properties and children. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") el.setAttribute(key, value);
    else el[key] = value;
  }
  el.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// --- the answer text ---------------------------------------------------------------------------

// The answer is plain text, one statement per line, with a few conventions the composer (and a
// model told to follow them) uses: "[제목]" opens a section (a rule), "- " is an item of it,
// "1. " a numbered step, a short line ending in ":" heads the lines after it; any other line is
// a paragraph, and the first paragraph is the direct answer. A section about what must not go
// with the item is marked as the exceptions.
const EXCEPTIONS = /(배출할 수 없는|안 되는|버리지 마세요|예외|주의|제외)/;

/** Renders `text` into `el`; `hidden(line)` drops lines a card or list shows instead. */
export function renderAnswer(el, text, hidden = () => false) {
  el.replaceChildren();
  let container = el;
  let list = null;
  let lead = true;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || hidden(line)) continue;
    let m;
    if ((m = line.match(/^\[(.+)\]$/)) || (m = line.match(/^(.{1,40})[:：]$/))) {
      container = el.appendChild(h("section", { className: EXCEPTIONS.test(m[1]) ? "rule exceptions" : "rule" }, h("h3", {}, m[1])));
      list = null;
    } else if ((m = line.match(/^[-•]\s+(.*)$/))) {
      if (list?.tagName !== "UL") list = container.appendChild(h("ul"));
      list.append(h("li", {}, m[1]));
    } else if ((m = line.match(/^(\d+)[.)]\s+(.*)$/))) {
      if (list?.tagName !== "OL") list = container.appendChild(h("ol"));
      list.append(h("li", {}, m[2]));
    } else {
      container.append(h("p", { className: lead && container === el ? "lead" : "" }, line));
      lead = false;
      list = null;
    }
  }
}

/** What the answer text repeats of the cards below it: the character line, the places' lines. */
export function duplicatesOf(result) {
  const character = result?.character;
  const places = (result?.places || []).map((p) => p.place?.name).filter(Boolean);
  return (line) => {
    if (character?.name && line.includes(character.name) && (line.includes("캐릭터") || line.startsWith(`${character.name}:`))) return true;
    if (places.length && /^\d+[.)]\s/.test(line) && places.some((name) => line.includes(name))) return true;
    return places.length > 0 && /(수거함|재활용 장소)이에요:$/.test(line); // the list's own heading replaces it
  };
}

// --- stages ------------------------------------------------------------------------------------

const NODE_NAMES = {
  queue: "접수", summarize: "대화 요약", intent: "질문 이해", vision: "사진 분석", router: "정보 고르기", waste_rag: "배출 규정 찾기",
  character: "캐릭터 찾기", location: "장소 찾기", collection_point: "수거함 찾기", bulk_waste: "대형폐기물 수수료", recyclable_price: "재활용품 시세",
  weather: "날씨", web_search: "웹 검색", image_generation: "그림 만들기", general: "일반 답변", aggregator: "정리", answer: "답변 쓰기",
  evaluate: "답변 점검", rule: "배출 규칙", reward: "보상",
};
const STAGE_NAMES = {
  STAGE_QUEUED: "접수", STAGE_INTENT: "질문 이해", STAGE_VISION: "사진 분석", STAGE_ROUTER: "정보 고르기", STAGE_SUBAGENT: "정보 찾기",
  STAGE_AGGREGATE: "정리", STAGE_ANSWER: "답변 쓰기", STAGE_EVALUATE: "답변 점검", STAGE_FALLBACK: "대체 답변", STAGE_SUMMARIZE: "대화 요약",
  STAGE_RULE: "배출 규칙", STAGE_REWARD: "보상", STAGE_PERSIST: "저장",
};

/** Adds one STAGE event to `stages` (a list of {key, name, message, done, ms}), in order. */
export function addStage(stages, data) {
  const key = data.node || data.stage;
  const phase = data.stageInfo?.phase || "";
  let stage = stages.find((s) => s.key === key);
  if (!stage) {
    stage = { key, name: NODE_NAMES[data.node] || STAGE_NAMES[data.stage] || data.node || "진행", message: "", done: false, ms: 0 };
    for (const queued of stages.filter((s) => s.key === "queue")) queued.done = true; // 접수 never reports its end: the next stage does
    stages.push(stage);
  }
  if (data.stageInfo?.message) stage.message = data.stageInfo.message;
  if (["STAGE_PHASE_FINISHED", "STAGE_PHASE_SKIPPED", "STAGE_PHASE_FAILED"].includes(phase)) stage.done = true;
  if (phase === "STAGE_PHASE_FAILED") stage.failed = true;
  if (data.stageInfo?.elapsed) stage.ms = Math.round(parseFloat(data.stageInfo.elapsed) * 1000);
  return stage;
}

/** The job ended: every stage it reached is over (some, such as 접수, never report their end). */
export function endStages(stages) {
  for (const stage of stages) stage.done = true;
  return stages;
}

/** The stages as a <details>: open with the current step while running, folded after. */
export function stagesBox(stages, { running, totalMs, onFirstOpen } = {}) {
  const current = [...stages].reverse().find((s) => !s.done) || stages[stages.length - 1];
  const summary = running
    ? `${current?.message || current?.name || "준비하는 중"}…`
    : stages.length ? `답변 과정 ${stages.length}단계${totalMs ? ` · ${(totalMs / 1000).toFixed(1)}초` : ""}` : "답변 과정";
  const box = h("details", { className: "stages", open: Boolean(running) }, h("summary", {}, summary),
    h("ol", {}, ...stages.map((s) => h("li", { className: s.failed ? "done failed" : s.done ? "done" : "running" }, s.name, s.ms ? h("span", { className: "ms" }, ` ${(s.ms / 1000).toFixed(1)}초`) : null))));
  if (onFirstOpen) box.addEventListener("toggle", () => { if (box.open && !box.dataset.loaded) { box.dataset.loaded = "1"; onFirstOpen(box); } });
  return box;
}

export function typingIndicator() {
  return h("div", { className: "typing", role: "img", "aria-label": "답변을 준비하고 있어요" }, h("span"), h("span"), h("span"));
}

// --- sources, character, places -----------------------------------------------------------------

const SOURCE_KINDS = { CITATION_KIND_RULE: "규정", CITATION_KIND_PRICE: "시세", CITATION_KIND_WEB: "웹", CITATION_KIND_WEATHER: "날씨", CITATION_KIND_BULK_WASTE_FEE: "수수료" };

/** One line per source (its title), each expandable to the source's lines. */
export function sourcesBox(citations) {
  const shown = (citations || []).filter((c) => SOURCE_KINDS[c.kind]);
  if (!shown.length) return null;
  return h("section", { className: "sources", "aria-label": "출처" }, h("h3", {}, "출처"),
    h("ul", {}, ...shown.map((c) => {
      const lines = (c.snippet || "").split(" / ").map((l) => l.trim()).filter(Boolean);
      const link = c.url ? h("a", { href: c.url, target: "_blank", rel: "noopener" }, "원문 열기") : null;
      return h("li", {}, h("details", {}, h("summary", {}, h("span", { className: "kind" }, SOURCE_KINDS[c.kind]), " ", c.title || c.sourceId),
        h("ul", { className: "source-lines" }, ...lines.map((l) => h("li", {}, l))), link));
    })));
}

const AVATAR_COLOURS = {
  eco: "#2f7d32", pet: "#1565c0", metal: "#546e7a", paper: "#8d6e63", plastic: "#c2185b", vinyl: "#6a1b9a", styrofoam: "#00838f",
  glass: "#00796b", paper_products: "#ad5700", battery: "#c62828", lighting: "#8a6d00", clothes: "#4527a0", monitor: "#37474f",
};

/** A character's round badge: the first syllable of its name on its colour (grey when not owned). */
export function avatar(character, owned = true) {
  return h("span", { className: owned ? "avatar" : "avatar locked", "aria-hidden": "true", style: owned ? `background:${AVATAR_COLOURS[character.imageCode] || "#2f7d32"}` : "" },
    owned ? (character.name || "?").slice(0, 1) : "?");
}

export function characterCard(character, note) {
  return h("aside", { className: "character-card", "aria-label": "캐릭터" }, avatar(character),
    h("div", {}, h("strong", {}, character.name || ""), character.matchLabel ? h("span", { className: "label" }, ` ${character.matchLabel}`) : null,
      h("p", {}, character.description || ""), note ? h("p", { className: "note" }, note) : null));
}

/** The places as a compact list: name (a link to the place on OpenStreetMap), distance, address. */
export function placesBox(places) {
  if (!places?.length) return null;
  return h("section", { className: "places", "aria-label": "가까운 수거 장소" }, h("h3", {}, "가까운 수거 장소"),
    h("ol", {}, ...places.map((hit) => {
      const p = hit.place || {};
      const { latitude: lat, longitude: lon } = p.location || {};
      const name = p.name || "이름 없는 장소";
      const title = lat !== undefined && lon !== undefined
        ? h("a", { href: `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lon}#map=18/${lat}/${lon}`, target: "_blank", rel: "noopener" }, name,
          h("span", { className: "visually-hidden" }, " (지도 열기)"))
        : h("span", {}, name);
      return h("li", {}, title, hit.distanceText ? h("span", { className: "distance" }, hit.distanceText) : null,
        h("span", { className: "address" }, p.roadAddress || p.address || ""));
    })));
}
