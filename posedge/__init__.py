"""posedge: the store end of the online/offline retail loop.

The source tree keeps its rooms at the top level (``agent/``, ``drivers/``, ``sync/``); they are
installed as ``posedge.agent``, ``posedge.drivers`` and ``posedge.sync``.
"""

__version__ = "0.1.0"
