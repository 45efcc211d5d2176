"""The event bus's client library, shared by every process that uses the bus: the producer
(`EventPublisher`), the job queue (`JobQueue`), the key layout and Lua scripts they agree on, and
their settings. The events service (router, EventService) runs on top of it.
See docs/services/events.md."""
