"""Receipts: document model, layout (CJK width), ESC/POS and PNG renderers, the durable print queue."""

# The config module is imported first so that `[receipt]` (receipts/config.py) and `Config`
# (agent/config.py, which names ReceiptConfig) load in one order whichever is imported first.
import posedge.agent.config  # noqa: F401
