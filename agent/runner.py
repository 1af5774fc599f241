"""`posedge run`: the asyncio loop that owns the agent and the API server."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
from typing import Iterator

import uvicorn

from posedge.agent.api.app import build_app
from posedge.agent.config import Config
from posedge.agent.service import Agent

log = logging.getLogger("posedge.agent")


class AgentServer(uvicorn.Server):
    """uvicorn, but a stop signal ends `serve()` normally so the agent can stop in order and the
    process exits 0 (uvicorn itself re-raises the signal after shutdown, which would kill the
    process before the agent's own shutdown ran)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def run_agent(config: Config, sock: socket.socket) -> int:
    try:
        agent = Agent(config)
    except (OSError, ValueError) as exc:
        print(f"posedge: cannot start: {exc}", file=sys.stderr)
        return 1
    await agent.start()
    server = AgentServer(uvicorn.Config(
        build_app(agent), log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=3, server_header=False,
    ))
    _banner(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        await agent.stop()
    return 0


def _banner(config: Config) -> None:
    api = config.api
    token_from = "the environment/config" if api.token is not None else str(api.token_file.resolve())
    print(
        f"posedge is running for store {config.store.tenant}/{config.store.id}\n"
        f"  local API:  http://{api.listen}/v1/health   (token: {token_from})\n"
        f"  database:   {config.storage.path.resolve()}\n"
        f"  MQTT:       {config.mqtt.url if config.mqtt.enabled else 'disabled'} (optional; sales are buffered offline)\n"
        f"  stop it with Ctrl-C (or SIGTERM)",
        file=sys.stderr, flush=True,
    )
