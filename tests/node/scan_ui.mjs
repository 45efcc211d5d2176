// Drives the gateway's scan UI in headless Chromium (playwright-core, the Debian chromium): sign
// in, scan a photo with no hint, pick the item among the scan's choices, read the result card
// and the collection. Prints one JSON object.
//   node scan_ui.mjs '{"url": "http://127.0.0.1:PORT", "photo": "/path/photo.png", "screenshot": "/path/shot.png"}'
import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: args.chromium || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const out = { consoleErrors: [], failed: [] };
try {
  const page = await (await browser.newContext({ locale: "ko-KR" })).newPage();
  page.on("console", (m) => { if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) out.consoleErrors.push(m.text()); });
  page.on("response", (r) => { if (r.status() >= 400) out.failed.push(new URL(r.url()).pathname); });
  await page.goto(args.url, { waitUntil: "load" });
  await page.fill("#display-name", "스캔하는 사람");
  await page.click("#sign-in-form button[type=submit]");
  await page.waitForSelector("#app:not([hidden])", { timeout: 10000 });
  await page.setInputFiles("#scan-photo", args.photo);
  await page.click("#scan");
  await page.waitForSelector("#needs-input:not([hidden]) #choices button", { timeout: 30000 });
  out.prompt = await page.textContent("#needs-input-prompt");
  out.choices = await page.$$eval("#choices button", (bs) => bs.map((b) => b.textContent));
  out.locationButtonsHidden = await page.$eval("#share-location", (b) => b.hidden);
  await page.click("#choices button:text-is('무색페트병')");
  await page.waitForSelector("li.assistant[data-finished]", { timeout: 30000 });
  out.answer = await page.textContent("li.assistant .text");
  out.stages = await page.textContent("li.assistant .stages");
  out.card = await page.textContent("li.assistant .character-card strong");
  out.reward = await page.textContent("li.assistant .reward");
  await page.click("#show-collection");
  await page.waitForFunction(() => document.querySelectorAll("#collection li").length >= 2, null, { timeout: 10000 });
  out.collection = await page.$$eval("#collection li", (lis) => lis.map((li) => li.textContent));
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
} catch (err) {
  out.error = String(err).slice(0, 2000);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
