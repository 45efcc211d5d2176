"""Static assets of the browser UI (committed; no build step)."""
