"""The local API: FastAPI routes behind the request guards, with one error mapping."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from posedge import __version__
from posedge.agent.api import events, observe, receipts, sales, system, till
from posedge.agent.api.body import add_body_schemas
from posedge.agent.api.errors import install_error_handlers
from posedge.agent.api.guards import ApiCounters, RequestGuard, allowed_hosts_for
from posedge.agent.api.openapi import complete_openapi

ROUTERS = [system.router, sales.router, till.router, receipts.router, events.router, observe.router]


def build_app(agent: Any) -> Any:
    """The ASGI application for `agent` (anything with .config, .token, .sales, .health(), .status())."""
    api = agent.config.api
    app = FastAPI(
        title="posedge local API",
        version=__version__,
        description="The store agent's API for POS front-ends. See docs/api.md.",
        docs_url=None,  # Swagger UI loads assets from a CDN; stores may be offline
        redoc_url=None,
        openapi_url="/v1/openapi.json",
    )
    app.state.agent = agent
    app.state.api_counters = counters = ApiCounters()
    providers = getattr(agent, "status_providers", None)
    if providers is not None:
        providers["api"] = counters.as_dict
    for router in ROUTERS:
        app.include_router(router)
    install_error_handlers(app)
    _publish_body_schemas(app)
    if api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(api.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            max_age=600,
        )
    allowed_hosts = allowed_hosts_for(api.host, api.port, api.allowed_hosts)
    metrics = getattr(agent, "metrics", None)
    return RequestGuard(
        app,
        allowed_hosts=allowed_hosts,
        # The agent's own origin: the status page (GET /) posting its test print to the agent that served it.
        allowed_origins=set(api.cors_origins) | {f"http://{host}" for host in allowed_hosts},
        max_body_bytes=api.max_body_bytes,
        body_timeout_s=api.body_timeout_s,
        counters=counters,
        activity=getattr(agent, "till_activity", None),  # the sync drain gives way to it
        observe=metrics.api.middleware if metrics is not None else None,
    )


def _publish_body_schemas(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_openapi(add_body_schemas(generate()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
