"""Event bus of the mesh: the router (shard streams → replay streams + Pub/Sub) and EventService
(resumable Subscribe), on the bus library `eco2.services.bus`. See docs/services/events.md."""
