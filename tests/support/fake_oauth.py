"""A local OAuth2 / OIDC provider speaking the real wire format over HTTP on loopback.

One server plays kakao, google and naver under /<provider>/{authorize,token,userinfo}:
  - authorize: validates client_id / redirect_uri / PKCE S256 params and answers like a real
    provider after consent: 302 to redirect_uri?code=...&state=... (the test picks the user
    with the extra `test_user` query parameter);
  - token: RFC 6749 §4.1.3 form POST; codes are single use, bound to the redirect_uri, and
    RFC 7636 verifier-checked; errors are RFC 6749 §5.2 JSON (400 invalid_grant, ...);
  - userinfo: Bearer access token → the provider's own JSON shape (Kakao /v2/user/me, Google
    OIDC userinfo, Naver /v1/nid/me).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

PROVIDERS = ("kakao", "google", "naver")


@dataclass
class FakeOAuthProvider:
    client_id: str = "eco2-test-client"
    client_secret: str = "eco2-test-secret"
    codes: dict[str, dict] = field(default_factory=dict)
    tokens: dict[str, dict] = field(default_factory=dict)
    token_requests: list[dict] = field(default_factory=list)
    down: bool = False
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self) -> dict[str, str]:
        out = {}
        for p in PROVIDERS:
            out |= {
                f"ECO2_AUTH_{p.upper()}_CLIENT_ID": self.client_id,
                f"ECO2_AUTH_{p.upper()}_CLIENT_SECRET": self.client_secret,
                f"ECO2_AUTH_{p.upper()}_AUTHORIZE_URL": f"{self.base_url}/{p}/authorize",
                f"ECO2_AUTH_{p.upper()}_TOKEN_URL": f"{self.base_url}/{p}/token",
                f"ECO2_AUTH_{p.upper()}_USERINFO_URL": f"{self.base_url}/{p}/userinfo",
            }
        return out

    def start(self) -> FakeOAuthProvider:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if body is not None:
                    self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                parts = urlsplit(self.path)
                provider, _, action = parts.path.strip("/").partition("/")
                if fake.down:
                    return self._send(503, {"error": "temporarily_unavailable"})
                if provider not in PROVIDERS:
                    return self._send(404, {"error": "not_found"})
                if action == "authorize":
                    return self._authorize(provider, {k: v[0] for k, v in parse_qs(parts.query).items()})
                if action == "userinfo":
                    return self._userinfo(provider)
                return self._send(404, {"error": "not_found"})

            def do_POST(self):
                parts = urlsplit(self.path)
                provider, _, action = parts.path.strip("/").partition("/")
                if fake.down:
                    return self._send(503, {"error": "temporarily_unavailable"})
                if provider not in PROVIDERS or action != "token":
                    return self._send(404, {"error": "not_found"})
                if not self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                    return self._send(400, {"error": "invalid_request", "error_description": "form body required"})
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                with fake._lock:
                    fake.token_requests.append(form)
                return self._token(provider, form)

            def _authorize(self, provider: str, q: dict) -> None:
                if q.get("response_type") != "code" or q.get("client_id") != fake.client_id:
                    return self._send(400, {"error": "invalid_request"})
                if q.get("code_challenge_method") != "S256" or len(q.get("code_challenge", "")) != 43:
                    return self._send(400, {"error": "invalid_request", "error_description": "PKCE S256 required"})
                code = secrets.token_urlsafe(24)
                user = q.get("test_user", "user-1")
                with fake._lock:
                    fake.codes[code] = {
                        "provider": provider,
                        "redirect_uri": q["redirect_uri"],
                        "challenge": q["code_challenge"],
                        "user": user,
                        "used": False,
                    }
                sep = "&" if "?" in q["redirect_uri"] else "?"
                self._send(
                    302,
                    None,
                    {"Location": q["redirect_uri"] + sep + urlencode({"code": code, "state": q.get("state", "")})},
                )

            def _token(self, provider: str, form: dict) -> None:
                if form.get("grant_type") != "authorization_code":
                    return self._send(400, {"error": "unsupported_grant_type"})
                if form.get("client_id") != fake.client_id or form.get("client_secret") != fake.client_secret:
                    return self._send(401, {"error": "invalid_client"})
                with fake._lock:
                    grant = fake.codes.get(form.get("code", ""))
                    if grant is None or grant["provider"] != provider:
                        return self._send(
                            400, {"error": "invalid_grant", "error_description": "unknown authorization code"}
                        )
                    if grant["used"]:
                        return self._send(
                            400, {"error": "invalid_grant", "error_description": "authorization code already used"}
                        )
                    grant["used"] = True
                if form.get("redirect_uri") != grant["redirect_uri"]:
                    return self._send(400, {"error": "invalid_grant", "error_description": "redirect_uri mismatch"})
                verifier = form.get("code_verifier", "")
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if challenge != grant["challenge"]:
                    return self._send(400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
                access = secrets.token_urlsafe(24)
                with fake._lock:
                    fake.tokens[access] = {"provider": provider, "user": grant["user"]}
                body = {
                    "access_token": access,
                    "token_type": "bearer",
                    "expires_in": 3600,
                    "refresh_token": secrets.token_urlsafe(24),
                }
                if provider == "google":
                    body |= {"scope": "openid email profile", "id_token": "x.y.z"}
                self._send(200, body, {"Cache-Control": "no-store"})

            def _userinfo(self, provider: str) -> None:
                auth = self.headers.get("Authorization", "")
                token = auth[7:] if auth.startswith("Bearer ") else ""
                with fake._lock:
                    grant = fake.tokens.get(token)
                if grant is None or grant["provider"] != provider:
                    return self._send(
                        401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                    )
                user = grant["user"]
                if provider == "kakao":
                    uid = int(hashlib.sha256(user.encode()).hexdigest()[:12], 16)
                    body = {
                        "id": uid,
                        "connected_at": "2026-01-01T00:00:00Z",
                        "kakao_account": {
                            "profile": {
                                "nickname": f"카카오 {user}",
                                "profile_image_url": f"https://img.example/{user}.png",
                            },
                            "email": f"{user}@kakao.example",
                        },
                    }
                elif provider == "google":
                    body = {
                        "sub": f"g-{user}",
                        "name": f"Google {user}",
                        "email": f"{user}@gmail.example",
                        "email_verified": True,
                        "picture": f"https://img.example/g/{user}.png",
                    }
                else:
                    body = {
                        "resultcode": "00",
                        "message": "success",
                        "response": {
                            "id": f"n-{user}",
                            "nickname": f"네이버 {user}",
                            "email": f"{user}@naver.example",
                            "profile_image": "",
                        },
                    }
                self._send(200, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-oauth", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
