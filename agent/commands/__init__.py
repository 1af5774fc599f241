"""HQ's signed commands: reload, resync, diagnostics, rotate_token (docs/protocol.md 8.8)."""
