// Drives the gateway's browser UI in headless Chromium (playwright-core, the Debian chromium) as
// two users at once: one on a 1280 px desktop, one on a 390 px phone. Prints one JSON object
// {desktop: {...}, phone: {...}} of what each saw; tests/test_gateway_browser.py judges it.
//   node ui.mjs '{"url": "http://127.0.0.1:PROXY/", "dropUrl": "http://127.0.0.1:CTRL/drop", "phoneUrl": "http://127.0.0.1:PORT/", "photo": "/path.png", "artifacts": "/dir"}'
// desktop: signed out (no chat controls), sign in, a streamed answer (typing indicator, paced
// growth) reloaded and cut off mid-answer, its sources, character and stages; a question needing
// a location (shared); a photo; reload → the same conversation; the shell offline; axe.
// phone: signed out, sign in, a location question declined, an answer stopped mid-way (멈추기)
// and reopened, a scan (photo → stages → question
// → result → character), the collection (13), axe; no horizontal overflow anywhere.
import { chromium } from "playwright-core";
import { createRequire } from "node:module";

const args = JSON.parse(process.argv[2]);
const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
const SEOUL = { latitude: 37.5665, longitude: 126.978 };
const T = { timeout: 30000 };
const browser = await chromium.launch({
  executablePath: args.chromium || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});

async function newPage(out, options) {
  const context = await browser.newContext({ locale: "ko-KR", geolocation: SEOUL, permissions: ["geolocation"], ...options });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") out.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => out.consoleErrors.push(`pageerror: ${e.message}`));
  out.failedRequests = [];
  page.on("response", async (r) => {
    if (r.status() >= 400) out.failedRequests.push(`${r.status()} ${new URL(r.url()).pathname} ${(await r.text().catch(() => "")).slice(0, 200)}`);
  });
  // every length the live answer's text took: a paced answer grows in many small steps
  await page.addInitScript(() => {
    window.__growth = [];
    window.__typingFirst = false; // the typing indicator showed while the answer had no text yet
    new MutationObserver(() => {
      const busy = document.querySelector("li.assistant[aria-busy]");
      if (busy?.querySelector(".typing") && !busy.querySelector(".answer").textContent) window.__typingFirst = true;
      const el = busy?.querySelector(".answer");
      const n = el ? el.textContent.length : -1;
      if (n > 0 && window.__growth[window.__growth.length - 1] !== n) window.__growth.push(n);
    }).observe(document, { subtree: true, childList: true, characterData: true });
  });
  return { context, page };
}

const visible = (page, selector) => page.locator(selector).first().isVisible();
const overflow = (page) => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
const record = (page) => page.evaluate(() => JSON.parse(sessionStorage.getItem("eco2.job") || "null"));
/** What the user sees: the viewport, scrolled to `target` (a selector or a locator) when given. */
async function shot(page, name, target) {
  if (target) await (typeof target === "string" ? page.locator(target).first() : target).evaluate((el) => el.scrollIntoView({ block: "start" }));
  await page.screenshot({ path: `${args.artifacts}/${name}.png` });
}

async function axe(page) {
  await page.addScriptTag({ path: AXE });
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  return result.violations.filter((v) => ["serious", "critical"].includes(v.impact))
    .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
}

async function signedOut(page, out, url) {
  await page.goto(url, { waitUntil: "load" });
  out.title = await page.title();
  out.signInVisible = await visible(page, "#sign-in-form");
  out.chatControlsVisible = {};
  for (const selector of ["#composer", "#message", "#send", "#conversations", "label[for=photo]", "#nav", "#scanner"]) {
    out.chatControlsVisible[selector] = await visible(page, selector);
  }
  out.overflowSignedOut = await overflow(page);
  out.axeSignedOut = await axe(page);
}

async function signIn(page, name) {
  await page.fill("#display-name", name);
  await page.click("#sign-in-form button[type=submit]");
  await page.waitForSelector("#composer", { state: "visible", timeout: 10000 });
}

async function ask(page, text) {
  const before = await page.locator("li.assistant[data-finished]").count();
  await page.fill("#message", text);
  await page.click("#send");
  return before;
}

/** What a turn shows: its text and which cards it has. */
const turns = (page) => page.$$eval("#messages > li", (lis) => lis.map((li) => ({
  role: li.classList.contains("user") ? "user" : "assistant",
  text: (li.querySelector(".bubble p, .answer")?.innerText || "").slice(0, 60),
  characters: li.querySelectorAll(".character-card").length,
  places: li.querySelectorAll(".places li").length,
  sources: li.querySelectorAll(".sources details").length,
  thumbLoaded: [...li.querySelectorAll("img.thumb")].some((img) => img.complete && img.naturalWidth > 0),
})));

async function desktop() {
  const out = { consoleErrors: [], eventRequests: [] };
  const { context, page } = await newPage(out, { viewport: { width: 1280, height: 800 } });
  page.on("request", (r) => { if (r.url().includes("/v1/jobs/")) out.eventRequests.push({ lastEventId: r.headers()["last-event-id"] ?? null }); });
  page.on("response", async (r) => { if (r.url().endsWith("/v1/chat/messages") && r.status() === 200 && !out.jobId) out.jobId = (await r.json()).jobId; });
  try {
    await signedOut(page, out, args.url);
    await signIn(page, "브라우저");
    out.who = await page.textContent("#who-name");
    out.focusAfterSignIn = await page.evaluate(() => document.activeElement?.id);
    out.photoPicker = await page.evaluate(() => ({ label: document.querySelector("label[for=photo]").textContent, inputWidth: document.getElementById("photo").getBoundingClientRect().width }));

    // 1. a streamed answer: the typing indicator first, then the text growing; reload mid-answer
    await ask(page, "페트병 어떻게 버려?");
    await page.waitForFunction(() => window.__typingFirst, null, { timeout: 10000 });
    out.typingBeforeFirstToken = true;
    await page.waitForFunction(() => (JSON.parse(sessionStorage.getItem("eco2.job") || "{}").answer || "").split(" ").filter(Boolean).length >= 4, null, T);
    out.beforeReload = await record(page);
    await shot(page, "desktop-streaming");
    await page.reload({ waitUntil: "load" });
    await page.waitForSelector("li.assistant[aria-busy]", T);
    out.afterReloadVisible = await page.textContent("li.assistant[aria-busy] .answer");
    if (args.dropUrl) {
      const seen = (await record(page)).answer.length;
      await page.waitForFunction((n) => JSON.parse(sessionStorage.getItem("eco2.job")).answer.length > n + 10, seen, T);
      await context.setOffline(true);
      await fetch(args.dropUrl); // the test's proxy cuts every connection and refuses new ones for a while
      out.atOffline = (await record(page)).answer;
      out.finishedWhileOffline = (await record(page)).finished;
      await page.waitForFunction(() => !document.getElementById("offline").hidden, null, T);
      out.offlineBanner = await page.textContent("#offline");
      await context.setOffline(false);
    }
    await page.waitForSelector("li.assistant[data-finished]", { timeout: 60000 });
    out.growthSteps = await page.evaluate(() => window.__growth.length);
    out.record = await record(page);
    const first = page.locator("li.assistant").first();
    out.answerText = await first.locator(".answer").innerText();
    out.turnText = await first.innerText();
    out.card = await first.locator(".character-card strong").allTextContents();
    out.stagesOpen = await first.locator("details.stages").evaluate((d) => d.open);
    out.stagesSummary = await first.locator("details.stages summary").textContent();
    out.sourceTitles = await first.locator(".sources summary").allTextContents();
    await first.locator(".sources summary").first().click();
    out.sourceLines = await first.locator(".sources details[open] .source-lines li").allTextContents();
    out.offlineBannerAfter = await visible(page, "#offline");
    await shot(page, "desktop-answer", first);

    // 2. a question that needs a location: the page asks, the user shares it
    await ask(page, "근처 수거함 알려줘");
    await page.click("li.assistant .ask button:text-is('위치 공유하기')", T);
    await page.waitForFunction(() => document.querySelectorAll("li.assistant[data-finished]").length >= 2, null, T);
    const second = page.locator("li.assistant").nth(1);
    out.placeNames = await second.locator(".places li a").evaluateAll((as) => as.map((a) => a.firstChild.textContent));
    out.placeLinks = await second.locator(".places li a").evaluateAll((as) => as.map((a) => a.href));
    out.placeDistances = await second.locator(".places .distance").allTextContents();
    out.placesTurnText = await second.innerText();
    await shot(page, "desktop-places", second);

    // 3. a photo: the picker in Korean, a preview before sending, a thumbnail in the question
    await page.setInputFiles("#photo", args.photo);
    await page.waitForSelector("#attachment:not([hidden]) img", T);
    await ask(page, "이거 어떻게 버려?");
    await page.waitForFunction(() => [...document.querySelectorAll("li.user img.thumb")].some((i) => i.complete && i.naturalWidth > 0), null, T);
    await page.waitForFunction(() => document.querySelectorAll("li.assistant[data-finished]").length >= 3, null, T);
    out.photoAnswer = await page.locator("li.assistant").nth(2).locator(".answer").innerText();
    out.overflowChat = await overflow(page);
    await shot(page, "desktop-photo", "li.user:has(img.thumb)");

    // 4. reload: the same conversation, in order, with its cards; the stages read again
    await page.reload({ waitUntil: "load" });
    await page.waitForFunction(() => document.querySelectorAll("li.assistant[data-finished]").length >= 3, null, T);
    await page.waitForFunction(() => [...document.querySelectorAll("li.user img.thumb")].some((i) => i.complete && i.naturalWidth > 0), null, T);
    out.reopened = await turns(page);
    const reopened = page.locator("li.assistant").first();
    await reopened.locator("details.stages summary").click();
    await page.waitForFunction(() => document.querySelectorAll("li.assistant details.stages[open] li.done").length >= 3, null, T);
    out.reopenedStages = await reopened.locator("details.stages li").allTextContents();
    out.axeChat = await axe(page);
    out.overflowReopened = await overflow(page);
    await shot(page, "desktop-reopened");

    // 5. offline: the service worker's shell opens the page, which says it is offline
    out.serviceWorker = await page.evaluate(async () => { await navigator.serviceWorker.ready; return Boolean(navigator.serviceWorker.controller); });
    out.manifest = await page.evaluate(async () => {
      const m = await (await fetch(document.querySelector("link[rel=manifest]").href)).json();
      const icons = await Promise.all(m.icons.map(async (i) => { const r = await fetch(i.src); return `${i.sizes} ${r.status} ${r.headers.get("content-type")}`; }));
      return { name: m.name, display: m.display, startUrl: m.start_url, icons };
    });
    await context.setOffline(true);
    await page.reload({ waitUntil: "load" });
    await page.waitForFunction(() => !document.getElementById("offline").hidden, null, T);
    out.offlineShell = { title: await page.title(), banner: await page.textContent("#offline"), turns: (await turns(page)).length };
    await shot(page, "desktop-offline");
    await context.setOffline(false);
  } catch (err) {
    out.error = String(err).slice(0, 2000);
    out.lastHtml = (await page.innerHTML("#messages").catch(() => ""))?.slice(-3000);
    await shot(page, "desktop-error").catch(() => {});
  }
  await context.close();
  return out;
}

async function phone() {
  const out = { consoleErrors: [] };
  const { context, page } = await newPage(out, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  try {
    await signedOut(page, out, args.phoneUrl);
    await shot(page, "phone-sign-in");
    await signIn(page, "휴대폰");
    const layout = () => page.evaluate(() => {
      const header = document.querySelector("header.top").getBoundingClientRect();
      const main = document.getElementById("main").getBoundingClientRect();
      const send = document.getElementById("send");
      return { headerBottom: header.bottom, mainTop: main.top, sendHeight: send.getBoundingClientRect().height, sendWraps: send.scrollWidth > send.clientWidth };
    });
    out.layout = await layout();

    // a question that needs a location: declined
    await ask(page, "근처 수거함 알려줘");
    await page.click("li.assistant .ask button:text-is('공유하지 않기')", T);
    await page.waitForSelector("li.assistant[data-finished]", T);
    out.declinedAnswer = await page.locator("li.assistant .answer").innerText();
    out.declinedPlaces = await page.locator("li.assistant .places").count();
    out.overflowChat = await overflow(page);
    out.axeChat = await axe(page);
    await shot(page, "phone-chat", "li.user");

    // an answer stopped mid-way: 멈추기 in 보내기's place, the text so far stays, marked stopped
    await ask(page, "페트병 어떻게 버려?");
    await page.waitForSelector("#stop:not([hidden])", T);
    out.sendHiddenWhileAnswering = !(await visible(page, "#send"));
    await page.waitForFunction(() => (JSON.parse(sessionStorage.getItem("eco2.job") || "{}").answer || "").split(" ").filter(Boolean).length >= 3, null, T);
    await page.click("#stop");
    await page.waitForFunction(() => document.querySelectorAll("li.assistant[data-finished]").length >= 2, null, T);
    const stopped = page.locator("li.assistant").nth(1);
    out.stopped = {
      answer: await stopped.locator(".answer").innerText(), note: await stopped.locator(".stopped").allTextContents(), errors: await stopped.locator(".error").count(),
      cards: await stopped.locator(".character-card, .sources, .places").count(), stopVisible: await visible(page, "#stop"), sendVisible: await visible(page, "#send"),
      record: await record(page), focus: await page.evaluate(() => document.activeElement?.id),
    };
    await shot(page, "phone-stopped", stopped);
    await page.reload({ waitUntil: "load" });
    await page.waitForFunction(() => document.querySelectorAll("li.assistant[data-finished]").length >= 2, null, T);
    const reopened = page.locator("li.assistant").nth(1);
    out.stoppedReopened = { answer: await reopened.locator(".answer").innerText(), note: await reopened.locator(".stopped").allTextContents(),
      cards: await reopened.locator(".character-card, .sources, .places").count() };

    // a scan: photo → stages → the scan's question → the result → the character earned
    await page.click("#nav a[data-view=scan]");
    await page.waitForSelector("#scanner", { state: "visible" });
    out.scanPicker = await page.textContent("label[for=scan-photo]");
    await page.setInputFiles("#scan-photo", args.photo);
    await page.waitForSelector("#scan-preview:not([hidden])", T);
    await page.click("#scan");
    await page.waitForSelector("#scan-result .ask .choices button", T);
    out.scanStepsWhileAsking = await page.locator("#scan-result .steps li").evaluateAll((lis) => lis.map((li) => `${li.firstChild.textContent}:${li.className}`));
    out.scanPrompt = await page.textContent("#scan-result .ask p");
    out.scanChoices = await page.locator("#scan-result .ask .choices button").count();
    out.axeScanAsking = await axe(page);
    await shot(page, "phone-scan-question", "#scan-result");
    await page.click("#scan-result .ask .choices button:text-is('무색페트병')");
    await page.waitForSelector("#scan-result[data-finished]", T);
    out.scanSteps = await page.locator("#scan-result .steps li").evaluateAll((lis) => lis.map((li) => `${li.firstChild.textContent}:${li.className}`));
    out.scanAnswer = await page.locator("#scan-result .answer").innerText();
    out.scanCard = await page.locator("#scan-result .character-card strong").allTextContents();
    out.scanReward = await page.locator("#scan-result .reward").allTextContents();
    out.overflowScan = await overflow(page);
    await shot(page, "phone-scan", "#scan-result");

    // an expired access token: the page renews it with the refresh token and carries on
    out.tokenBefore = await page.evaluate(() => { const t = localStorage.getItem("eco2.token"); localStorage.setItem("eco2.token", "expired"); return t; });
    // the collection: 13 characters, the owned ones first-class, the others greyed
    await page.click("#scan-result a[href='#characters']");
    await page.waitForFunction(() => document.querySelectorAll("#character-grid li").length === 13, null, T);
    out.owned = await page.locator("#character-grid li.owned h2").allTextContents();
    out.locked = await page.locator("#character-grid li.locked").count();
    out.collectionSummary = await page.textContent("#collection-summary");
    out.axeCharacters = await axe(page);
    out.overflowCharacters = await overflow(page);
    out.tokenRenewed = await page.evaluate((before) => !["expired", before].includes(localStorage.getItem("eco2.token")), out.tokenBefore);
    await shot(page, "phone-characters");
    // signing out leaves nothing of the user in the page
    await page.click("#sign-out");
    await page.waitForSelector("#sign-in-form", { state: "visible" });
    out.afterSignOut = { composer: await visible(page, "#composer"), token: await page.evaluate(() => localStorage.getItem("eco2.token")), turns: await page.locator("#messages > li").count() };
  } catch (err) {
    out.error = String(err).slice(0, 2000);
    await shot(page, "phone-error").catch(() => {});
  }
  await context.close();
  return out;
}

let result;
try {
  const [d, p] = await Promise.all([desktop(), phone()]);
  result = { desktop: d, phone: p };
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
