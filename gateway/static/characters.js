// "내 캐릭터": the 13 characters of the catalog, the ones the user owns in colour with when they
// came, the others greyed with how to meet them (scan an item of their category).

import { api } from "./api.js";
import { avatar, h } from "./render.js";

const $ = (id) => document.getElementById(id);
const SOURCES = { REWARD_SOURCE_SCAN: "스캔으로 얻음", REWARD_SOURCE_CHAT: "대화로 얻음", REWARD_SOURCE_DEFAULT: "처음부터 함께" };

export async function showCharacters() {
  const [catalog, collection] = await Promise.all([api("/v1/characters?page_size=100"), api("/v1/collection?page_size=100")]);
  const owned = new Map((collection.characters || []).map((o) => [o.character?.code, o]));
  const all = catalog.characters || [];
  $("collection-summary").textContent = `${all.length}개 중 ${all.filter((c) => owned.has(c.code)).length}개를 모았어요.`;
  $("character-grid").replaceChildren(...all.map((c) => {
    const mine = owned.get(c.code);
    const when = mine?.acquiredAt ? new Date(mine.acquiredAt).toLocaleDateString("ko-KR") : "";
    return h("li", { className: mine ? "owned" : "locked", "data-code": c.code },
      avatar(c, Boolean(mine)),
      h("h2", {}, c.name),
      h("p", { className: "label" }, c.matchLabel),
      mine
        ? h("p", {}, c.description, h("span", { className: "when" }, [SOURCES[mine.source], when].filter(Boolean).join(" · ")))
        : h("p", { className: "hint" }, c.isDefault ? "아직 함께하지 않아요." : `아직 만나지 못했어요. ${c.matchLabel}을(를) 스캔해 보세요.`));
  }));
}
