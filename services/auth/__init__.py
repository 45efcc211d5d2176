"""Auth service: users, sign-in (OAuth2 code + PKCE, dev), ES256 tokens, JWKS, and the Envoy
ext-authz `Check` that guards the mesh. See docs/services/auth.md."""
