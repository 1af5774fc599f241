"""Fixtures for the till tests: a test HQ that mints codes, and a clock the tests move."""

from __future__ import annotations

import pytest

from posedge.agent.codes import CodeMinter, CodeVerifier, Keyring

STORE = "store-001"
NOW = 1_790_000_000  # a fixed instant (2026-09-21), so expiry tests need no sleeping


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hq(clock: Clock) -> CodeMinter:
    return CodeMinter.generate("hq-2026a", clock)


@pytest.fixture
def verifier(hq: CodeMinter, clock: Clock) -> CodeVerifier:
    return CodeVerifier(Keyring({hq.kid: hq.public_key_b64}), STORE, skew_s=30, clock=clock)
