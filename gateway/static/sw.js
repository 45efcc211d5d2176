// The service worker: keeps the page's own files (the shell) so that Eco² opens without a
// network, and says so (the page shows it is offline). The shell is fetched from the network
// first, so a new version shows as soon as it is online, and from the cache when the network
// fails or hangs. Calls to the API, event streams and photos are never cached: they go to the
// network untouched.
const CACHE = "eco2-shell-v1";
const SHELL = [
  "/", "/static/app.js", "/static/api.js", "/static/chat.js", "/static/scan.js", "/static/characters.js", "/static/render.js",
  "/static/stream.js", "/static/pacer.js", "/static/style.css", "/static/manifest.webmanifest", "/static/icon.svg", "/static/icon-192.png",
];
const NETWORK_WAIT_MS = 4000;

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) if (key !== CACHE) await caches.delete(key);
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  const shell = url.origin === self.location.origin && (url.pathname === "/" || url.pathname.startsWith("/static/"));
  if (event.request.method !== "GET" || !shell) return;
  event.respondWith(networkFirst(event.request));
});

async function networkFirst(request) {
  const cache = await caches.open(CACHE);
  try {
    const response = await Promise.race([
      fetch(request),
      new Promise((_, reject) => setTimeout(() => reject(new Error("the network is too slow")), NETWORK_WAIT_MS)),
    ]);
    if (response.ok) await cache.put(request, response.clone());
    return response;
  } catch (err) {
    const cached = await cache.match(request, { ignoreSearch: true });
    if (cached) return cached;
    throw err;
  }
}
