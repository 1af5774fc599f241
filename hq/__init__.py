"""The reference HQ: consumes the stores' up batches idempotently, acknowledges them, detects gaps.

It uses posedge.sync (the wire protocol) and never posedge.agent: an HQ team could write it in any
language from docs/protocol.md alone.
"""
