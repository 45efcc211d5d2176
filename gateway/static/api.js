// The gateway's JSON routes as the page calls them: the signed-in user's tokens (localStorage),
// an access token refreshed once when it has expired (refresh tokens rotate, so one refresh runs
// at a time), and errors turned into messages a user can read.

const KEYS = { access: "eco2.token", refresh: "eco2.refresh", name: "eco2.name" };

export const session = {
  get token() { return localStorage.getItem(KEYS.access); },
  get name() { return localStorage.getItem(KEYS.name) || ""; },
  save(tokens, name) {
    localStorage.setItem(KEYS.access, tokens.accessToken);
    localStorage.setItem(KEYS.refresh, tokens.refreshToken || "");
    if (name !== undefined) localStorage.setItem(KEYS.name, name);
  },
  clear() { for (const key of Object.values(KEYS)) localStorage.removeItem(key); },
};

/** A request that could not reach the server (offline, server down): the page says so. */
export class Offline extends Error {}
/** The session ended (expired and not renewable, or revoked): the page signs out. */
export class SignedOut extends Error {}

let refreshing = null;

async function refresh() {
  const refreshToken = localStorage.getItem(KEYS.refresh);
  if (!refreshToken) return false;
  refreshing ??= (async () => {
    try {
      const res = await fetch("/eco2.auth.v1.AuthService/Refresh", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ refreshToken }),
      });
      if (!res.ok) return false;
      session.save((await res.json()).tokens);
      return true;
    } catch {
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** Tells the page whether the server answers: "eco2:reachable" / "eco2:unreachable" on window. */
function reachable(yes) {
  window.dispatchEvent(new Event(yes ? "eco2:reachable" : "eco2:unreachable"));
}

/** fetch with the access token; one refresh and retry on 401. Raises Offline or SignedOut. */
export async function authorized(path, init = {}) {
  for (let attempt = 0; ; attempt += 1) {
    let res;
    try {
      res = await fetch(path, { ...init, headers: { ...init.headers, authorization: `Bearer ${session.token}` } });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      reachable(false);
      throw new Offline("서버에 연결할 수 없어요. 연결되면 다시 시도해 주세요.");
    }
    reachable(true);
    if (res.status !== 401) return res;
    if (attempt > 0 || !(await refresh())) throw new SignedOut("로그인이 끝났어요. 다시 로그인해 주세요.");
  }
}

/** A JSON route: the parsed reply, or an Error with the server's message. */
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: {} };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["content-type"] = "application/json"; }
  const res = await authorized(path, init);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data?.error?.message || `요청이 실패했어요 (${res.status}).`);
  return data;
}

export async function devSignIn(displayName) {
  let res;
  try {
    res = await fetch("/v1/auth/dev-sign-in", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ displayName }) });
  } catch {
    throw new Offline("서버에 연결할 수 없어요. 연결되면 다시 시도해 주세요.");
  }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data?.error?.message || "로그인하지 못했어요.");
  session.save(data.tokens, data.user?.displayName || displayName);
}

/** Ends the session on the server too (its refresh token revoked); never fails the sign-out. */
export async function signOutRemote() {
  const refreshToken = localStorage.getItem(KEYS.refresh);
  if (!session.token) return;
  await fetch("/eco2.auth.v1.AuthService/SignOut", {
    method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${session.token}` }, body: JSON.stringify({ refreshToken }),
  }).catch(() => {});
}

/** A unique id for retried sends (the server answers a repeated id once). */
export const newId = () => (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`);

/** An uploaded image's bytes as an object URL for <img> (the read is authorized like any call). */
export async function imageUrl(key) {
  if (!/^sha256:[0-9a-f]{64}$/.test(key)) throw new Error("사진 키가 올바르지 않아요.");
  const meta = await api(`/v1/images/meta/${key}`); // the edge refuses escapes in paths: the key is sent as it is
  const res = await authorized(meta.signedUrl);
  if (!res.ok) throw new Error(`사진을 불러오지 못했어요 (${res.status}).`);
  return URL.createObjectURL(await res.blob());
}
