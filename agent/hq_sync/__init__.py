"""Feature: the sync with HQ over MQTT (docs/protocol.md). The wire, the link and the drainer live in sync/."""
