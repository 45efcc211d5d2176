"""OAuth2 authorization-code + PKCE adapters for kakao, google (OIDC) and naver, over httpx.

Endpoints are settings, so tests (and a staging provider) point them at another server.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

import httpx

from .domain import OAuthProfile


class OAuthRejected(Exception):
    """The provider refused the code (reused, expired, wrong PKCE verifier, wrong client)."""

    def __init__(self, error: str, description: str = "") -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description


class OAuthUnavailable(Exception):
    """The provider could not be reached or answered with a server error."""


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    client_id: str
    client_secret: str
    authorize_url: str
    token_url: str
    userinfo_url: str
    scope: str

    @property
    def configured(self) -> bool:
        return bool(self.client_id and self.authorize_url and self.token_url and self.userinfo_url)


def _s(value: object) -> str:
    return "" if value is None else str(value)


def parse_profile(provider: str, data: dict) -> OAuthProfile:
    """The provider's user-info JSON → our profile. Raises OAuthRejected when it has no id."""
    if provider == "kakao":
        account = data.get("kakao_account") or {}
        profile = account.get("profile") or {}
        props = data.get("properties") or {}
        subject = _s(data.get("id"))
        out = OAuthProfile(
            provider,
            subject,
            _s(profile.get("nickname") or props.get("nickname")),
            _s(account.get("email")),
            _s(profile.get("profile_image_url") or props.get("profile_image")),
            data,
        )
    elif provider == "naver":
        if _s(data.get("resultcode")) not in ("00", ""):
            raise OAuthRejected("userinfo_failed", _s(data.get("message")))
        r = data.get("response") or {}
        out = OAuthProfile(
            provider,
            _s(r.get("id")),
            _s(r.get("nickname") or r.get("name")),
            _s(r.get("email")),
            _s(r.get("profile_image")),
            data,
        )
    else:  # google / any OIDC userinfo
        out = OAuthProfile(
            provider,
            _s(data.get("sub")),
            _s(data.get("name") or data.get("given_name")),
            _s(data.get("email")),
            _s(data.get("picture")),
            data,
        )
    if not out.subject:
        raise OAuthRejected("userinfo_failed", "the provider's user info has no user id")
    return out


class HttpOAuthProvider:
    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.name = config.name
        self.client = client

    def authorization_url(self, *, state: str, redirect_uri: str, code_challenge: str) -> str:
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if self.config.scope:
            params["scope"] = self.config.scope
        sep = "&" if "?" in self.config.authorize_url else "?"
        return self.config.authorize_url + sep + urlencode(params)

    async def exchange(self, *, code: str, redirect_uri: str, code_verifier: str, state: str) -> OAuthProfile:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.config.client_id,
            "code_verifier": code_verifier,
            "state": state,
        }
        if self.config.client_secret:
            form["client_secret"] = self.config.client_secret
        token = await self._json("POST", self.config.token_url, data=form, headers={"Accept": "application/json"})
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise OAuthRejected(_s(token.get("error")) or "invalid_token_response", _s(token.get("error_description")))
        info = await self._json(
            "GET", self.config.userinfo_url, headers={"Authorization": f"Bearer {access}", "Accept": "application/json"}
        )
        return parse_profile(self.name, info)

    async def _json(self, method: str, url: str, **kwargs) -> dict:
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise OAuthUnavailable(f"{self.name}: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise OAuthUnavailable(f"{self.name}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise OAuthUnavailable(f"{self.name}: HTTP {response.status_code} with a non-JSON body") from None
        if not isinstance(body, dict):
            raise OAuthUnavailable(f"{self.name}: unexpected JSON")
        if response.status_code >= 400:
            raise OAuthRejected(
                _s(body.get("error")) or f"http_{response.status_code}",
                _s(body.get("error_description") or body.get("msg")),
            )
        return body
