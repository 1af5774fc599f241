"""The diagnostics bundle (agent/commands/diagnostics.py) and the log ring (agent/logs.py): secrets redacted by key
and scrubbed by value, parts under the cap that reassemble, the oldest log lines dropped when it is too big, and
the ring's lines masked as the journal's are."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import random
from pathlib import Path

from posedge.agent.commands import diagnostics
from posedge.agent.config import validate_config
from posedge.agent.logs import RingHandler
from posedge.agent.token import fingerprint, rotate_token
from posedge.sync.down import MAX_DIAGNOSTICS_PART_CHARS


def config(tmp_path: Path) -> object:
    return validate_config({"scanners": [], "storage": {"path": str(tmp_path / "db" / "posedge.db")},
                            "api": {"token_file": str(tmp_path / "token")},
                            "mqtt": {"enabled": False, "url": "mqtt://hq:pw-in-url@broker:1883",
                                     "password": "s3cret-password"},
                            "receipt": {"key_path": str(tmp_path / "claim-key.pem")},
                            "members": {"phone_hash_key": "phone-hash-secret"}})


def test_secrets_are_redacted_by_key_and_scrubbed_by_value(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    secrets = diagnostics.secret_values(cfg, ["the-api-token-value"])  # type: ignore[arg-type]
    status = {"note": f"key at {tmp_path / 'claim-key.pem'}", "url": "mqtt://hq:pw-in-url@broker:1883"}
    logs = ["INFO x event=api_token_rotated token=the-api-token-value", "INFO x password s3cret-password"]
    bundle = diagnostics.build(cfg, status, {"store": {"members": 3}}, logs)  # type: ignore[arg-type]
    encoded = diagnostics.encode(bundle, secrets)
    text = gzip.decompress(base64.b64decode("".join(encoded.parts))).decode()
    for secret in ("s3cret-password", "phone-hash-secret", "the-api-token-value", "claim-key.pem", "pw-in-url",
                   str(tmp_path / "token")):
        assert secret not in text, secret
    back = json.loads(text)
    assert back["config"]["mqtt"]["password"] == "<redacted>" and back["config"]["receipt"]["key_path"] == "<redacted>"
    assert back["config"]["members"]["phone_hash_key"] == "<redacted>"
    assert back["config"]["mqtt"]["url"] == "mqtt://hq:***@broker:1883"
    assert back["versions"]["down"] == {"store": {"members": 3}} and len(back["logs"]) == 2


def test_a_big_bundle_goes_in_parts_and_drops_its_oldest_lines_past_the_cap(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    noise = [hashlib.sha256(str(i).encode()).hexdigest() * 4 for i in range(12_000)]  # hardly compressible
    encoded = diagnostics.encode(diagnostics.build(cfg, {}, {}, noise), [])  # type: ignore[arg-type]
    assert len(encoded.parts) > 1 and all(len(p) <= MAX_DIAGNOSTICS_PART_CHARS for p in encoded.parts)
    packed = base64.b64decode("".join(encoded.parts))
    assert hashlib.sha256(packed).hexdigest() == encoded.sha256
    assert json.loads(gzip.decompress(packed))["logs"] == noise

    rng = random.Random(1)
    flood = [base64.b64encode(rng.randbytes(750)).decode() for _ in range(8000)]  # 8 MB that gzip cannot shrink
    capped = diagnostics.encode(diagnostics.build(cfg, {}, {}, flood), [])  # type: ignore[arg-type]
    kept = json.loads(gzip.decompress(base64.b64decode("".join(capped.parts))))["logs"]
    assert 0 < len(kept) < len(flood) and kept == flood[-len(kept):]  # the newest lines, in order
    assert capped.log_lines == len(kept)


def test_the_ring_keeps_the_last_lines_masked() -> None:
    ring = RingHandler(capacity=3)
    logger = logging.getLogger("posedge.test.ring")
    logger.addHandler(ring)
    logger.setLevel(logging.INFO)
    try:
        for number in range(5):
            logger.info("event=test n=%d phone=13812345678", number)
    finally:
        logger.removeHandler(ring)
    lines = ring.lines(10)
    assert len(lines) == 3 and "n=4" in lines[-1] and "n=2" in lines[0]
    assert all("138****5678" in line and "13812345678" not in line for line in lines)
    assert ring.lines(1) == lines[-1:] and ring.lines(0) == []


def test_rotate_token_replaces_the_file_whole_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "var" / "api-token"
    first = rotate_token(path)
    second = rotate_token(path)
    assert first != second and path.read_text().strip() == second
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["api-token"]  # no temp file left
    assert len(fingerprint(second)) == 16 and fingerprint(second) != fingerprint(first)
