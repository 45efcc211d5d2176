"""Event bus of the mesh: producer library, router, EventService (resumable Subscribe) and the
job queue workers claim from. See docs/services/events.md."""
