// Eco² in the browser: plain ES modules, no build step. This file is the page's frame: signed out
// it shows only the sign-in; signed in, three views chosen by the address's #hash (대화, 사진
// 스캔, 내 캐릭터). It says when the page is offline, and registers the service worker (sw.js)
// that keeps the page's files so that it opens without a network.

import { devSignIn, Offline, session, SignedOut, signOutRemote } from "./api.js";
import { showCharacters } from "./characters.js";
import { createChat } from "./chat.js";
import { createScan } from "./scan.js";

const $ = (id) => document.getElementById(id);
const VIEWS = ["chat", "scan", "characters"];

function announce(text) {
  $("announce").textContent = "";
  setTimeout(() => { $("announce").textContent = text; }, 50); // a change the screen reader notices
}

/** The banner: offline (the browser says so) or the server not answering; hidden once it does. */
function setOffline(offline) {
  const text = navigator.onLine ? "서버에 연결할 수 없어요. 연결되면 이어서 받아요." : "오프라인이에요. 저장된 화면을 보여 드려요 — 연결되면 이어서 받아요.";
  $("offline").hidden = !offline;
  $("offline").textContent = offline ? text : "";
}

/** What a failed call means to the user: offline, signed out, or the server's message. */
function onError(err, where = $("status")) {
  if (err instanceof SignedOut) { signOut(err.message); return; }
  if (err instanceof Offline) setOffline(true);
  where.textContent = err.message || String(err);
}

const chat = createChat({ onError, announce });
const scan = createScan({ onError, announce, onReward: () => { if (currentView() === "characters") showCharacters().catch(onError); } });

function currentView() {
  const name = location.hash.slice(1);
  return VIEWS.includes(name) ? name : "chat";
}

function route({ focus = true } = {}) {
  const signedIn = Boolean(session.token);
  $("sign-in").hidden = signedIn;
  $("nav").hidden = $("who").hidden = !signedIn;
  $("who-name").textContent = signedIn ? `${session.name} 님` : "";
  const view = currentView();
  for (const name of VIEWS) $(`view-${name}`).hidden = !signedIn || name !== view;
  for (const link of $("nav").querySelectorAll("a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!signedIn) return;
  if (view === "characters") showCharacters().catch(onError);
  if (focus) (view === "chat" ? $("message") : $(`${view}-title`)).focus();
}

async function start() {
  route({ focus: false });
  if (!session.token) return;
  await Promise.all([chat.start(), scan.start()]);
}

async function signIn(event) {
  event.preventDefault();
  $("sign-in-error").textContent = "";
  try {
    await devSignIn($("display-name").value.trim());
    $("display-name").value = "";
    route();
    await Promise.all([chat.start(), scan.start()]);
  } catch (err) {
    $("sign-in-error").textContent = err.message;
  }
}

async function signOut(message = "") {
  await signOutRemote();
  session.clear();
  chat.reset();
  scan.reset();
  route({ focus: false });
  $("sign-in-error").textContent = message;
  $("display-name").focus();
}

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => route());
window.addEventListener("offline", () => setOffline(true));
window.addEventListener("online", () => { setOffline(false); start().catch(onError); });
window.addEventListener("eco2:unreachable", () => setOffline(true));
window.addEventListener("eco2:reachable", () => {
  if ($("offline").hidden) return;
  setOffline(false);
  $("status").textContent = "";
  start().catch(onError); // what failed while the server was away (the list, the conversation)
});
if (!navigator.onLine) setOffline(true);

if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("/static/sw.js", { scope: "/" }).catch((err) => console.warn("service worker not registered:", err));
}

start().catch(onError);
