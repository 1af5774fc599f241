"""Retention: prunes what the store no longer needs (acknowledged outbox events, old sales, done print
jobs) in small batches through the single writer, off the sale's path. `feature.Retention` is what the
agent wires in; `rules` holds what may go and what must stay; `config` the `[retention]` table.
Nothing is imported at package import, so `agent/config.py` can load `retention.config` in its order.
"""
