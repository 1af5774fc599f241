"""The till: members and points, coupons, pickups, stock, refunds, the signed codes they read, HQ's records.

`feature.Till` is what the agent wires in; `config` holds its tables (`[hq]`, `[members]`, `[points]`,
`[coupons]`). Nothing here is imported at package import, so `agent/config.py` can load `till.config`
in its own order.
"""
