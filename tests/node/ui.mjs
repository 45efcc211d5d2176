// Drives the gateway's browser UI in headless Chromium (playwright-core, the Debian chromium):
// sign in, ask, watch tokens arrive, reload mid-answer, get the rest. Prints one JSON object.
//   node ui.mjs '{"url": "http://127.0.0.1:PORT", "screenshot": "/path/shot.png"}'
import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: args.chromium || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const out = { consoleErrors: [] };
try {
  const page = await browser.newPage({ locale: "ko-KR" });
  page.on("console", (m) => { if (m.type() === "error") out.consoleErrors.push(m.text()); });
  await page.goto(args.url, { waitUntil: "load" });
  out.title = await page.title();
  await page.fill("#display-name", "브라우저");
  await page.click("#sign-in-form button[type=submit]");
  await page.waitForSelector("#app:not([hidden])", { timeout: 10000 });
  out.who = await page.textContent("#who-name");
  await page.fill("#message", "페트병 어떻게 버려?");
  await page.click("#send");
  // tokens arrive one by one: wait for a few, then reload in the middle of the answer
  await page.waitForFunction(() => (document.querySelector("li.assistant .text")?.textContent || "").split(" ").length >= 4, null, { timeout: 15000 });
  out.beforeReload = await page.textContent("li.assistant .text");
  await page.reload({ waitUntil: "load" });
  out.afterReloadStart = await page.textContent("li.assistant .text");
  await page.waitForSelector("li.assistant .character-card", { timeout: 20000 });
  out.answer = await page.textContent("li.assistant .text");
  out.card = await page.textContent("li.assistant .character-card strong");
  out.stages = await page.textContent("li.assistant .stages");
  out.userBubble = await page.textContent("li.user .text");
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
