"""Seeing what is going on: Prometheus metrics (GET /metrics), the status page's read-only view and its
recent problems. `feature.py` holds `Metrics`, the class the agent wires in; the routes are agent/api/observe.py."""
