// Drives the gateway's browser UI in headless Chromium (playwright-core, the Debian chromium):
// sign in, ask, watch tokens arrive, reload mid-answer, (optionally) drop the network
// mid-answer and bring it back, get the rest. Prints one JSON object.
//   node ui.mjs '{"url": "http://127.0.0.1:PORT", "screenshot": "/path/shot.png", "dropUrl": "http://127.0.0.1:CTRL/drop"}'
import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: args.chromium || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const out = { consoleErrors: [], eventRequests: [] };
const words = () => (document.querySelector("li.assistant .text")?.textContent || "").split(" ").filter(Boolean).length;
try {
  const context = await browser.newContext({ locale: "ko-KR" });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") out.consoleErrors.push(m.text()); });
  page.on("request", (r) => {
    if (r.url().includes("/v1/jobs/")) out.eventRequests.push({ lastEventId: r.headers()["last-event-id"] ?? null });
  });
  page.on("response", async (r) => {
    if (r.url().endsWith("/v1/chat/messages") && r.status() === 200) out.jobId = (await r.json()).jobId;
  });
  await page.goto(args.url, { waitUntil: "load" });
  out.title = await page.title();
  await page.fill("#display-name", "브라우저");
  await page.click("#sign-in-form button[type=submit]");
  await page.waitForSelector("#app:not([hidden])", { timeout: 10000 });
  out.who = await page.textContent("#who-name");
  await page.fill("#message", "페트병 어떻게 버려?");
  await page.click("#send");
  // tokens arrive one by one: wait for a few, then reload in the middle of the answer
  await page.waitForFunction((n) => (document.querySelector("li.assistant .text")?.textContent || "").split(" ").filter(Boolean).length >= n, 4, { timeout: 30000 });
  out.beforeReload = await page.textContent("li.assistant .text");
  await page.reload({ waitUntil: "load" });
  out.afterReloadStart = await page.textContent("li.assistant .text");
  if (args.dropUrl) {
    // a few more tokens, then the network goes away mid-answer and comes back
    const seen = await page.evaluate(words);
    await page.waitForFunction((n) => (document.querySelector("li.assistant .text")?.textContent || "").split(" ").filter(Boolean).length >= n, seen + 3, { timeout: 30000 });
    await context.setOffline(true);
    await fetch(args.dropUrl); // the test's proxy cuts every connection and refuses new ones for a while
    out.atOffline = await page.textContent("li.assistant .text");
    out.finishedWhileOffline = (await page.$("li.assistant[data-finished]")) !== null;
    await page.waitForTimeout(2500);
    out.duringOffline = await page.textContent("li.assistant .text");
    await context.setOffline(false);
  }
  await page.waitForSelector("li.assistant[data-finished]", { timeout: 60000 });
  out.answer = await page.textContent("li.assistant .text");
  out.card = (await page.$("li.assistant .character-card strong")) ? await page.textContent("li.assistant .character-card strong") : "";
  out.stages = await page.textContent("li.assistant .stages");
  out.userBubble = await page.textContent("li.user .text");
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
} catch (err) {
  out.error = String(err).slice(0, 2000);
  try {
    const page = browser.contexts()[0]?.pages()[0];
    out.lastText = await page?.textContent("li.assistant .text");
    out.lastStatus = await page?.textContent("#status");
    out.lastHtml = (await page?.innerHTML("li.assistant"))?.slice(0, 3000);
  } catch {}
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
