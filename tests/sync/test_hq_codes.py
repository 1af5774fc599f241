"""`posedge-hq keygen` and `posedge-hq mint` (docs/codes.md): real processes on both ends.

A store configured with nothing but the line keygen printed accepts what mint signs.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import AgentProcess
from posedge.sync.codes import b64url_decode

STORE = "store-1"  # the store id of the root conftest's agents


def hq(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posedge.hq", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def claims_of(token: str) -> dict[str, Any]:
    return json.loads(b64url_decode(token.split(".")[1]))


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hq-keys")


@pytest.fixture(scope="module")
def public_line(key_dir: Path) -> str:
    done = hq("keygen", "--out", str(key_dir), "--kid", "hq-2026a")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, public_line: str) -> Iterator[AgentProcess]:
    process = AgentProcess(tmp_path_factory.mktemp("mint-agent"), f"[hq.public_keys]\n{public_line}\n").start()
    yield process
    process.stop()


def mint(key_dir: Path, kind: str, *args: str, kid: str = "hq-2026a") -> str:
    done = hq("mint", kind, "--key", str(key_dir / "hq-2026a.pem"), "--kid", kid, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_keygen_writes_a_private_ed25519_pem_and_prints_its_public_key_line(key_dir: Path, public_line: str) -> None:
    path = key_dir / "hq-2026a.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid, value = public_line.split(" = ")
    assert (kid, b64url_decode(json.loads(value))) == ('"hq-2026a"', raw)


def test_keygen_never_overwrites_a_key_and_refuses_a_bad_kid(key_dir: Path, public_line: str) -> None:
    before = (key_dir / "hq-2026a.pem").read_bytes()
    again = hq("keygen", "--out", str(key_dir), "--kid", "hq-2026a")
    assert again.returncode == 2 and "exists already" in again.stderr and again.stdout == ""
    assert (key_dir / "hq-2026a.pem").read_bytes() == before
    bad = hq("keygen", "--out", str(key_dir), "--kid", "has space")
    assert bad.returncode == 2 and "--kid" in bad.stderr


def test_keygen_without_kid_names_the_key_after_today(tmp_path: Path) -> None:
    done = hq("keygen", "--out", str(tmp_path / "new"))
    assert done.returncode == 0, done.stderr
    (written,) = (tmp_path / "new").iterdir()
    assert done.stdout.startswith(f'"{written.stem}" = "') and written.stem.startswith("hq-20")


def test_a_minted_member_code_scanned_at_a_real_agent_resolves_to_the_member(agent: AgentProcess,
                                                                             key_dir: Path) -> None:
    token = mint(key_dir, "member", "--member-id", "M-MINT", "--tier", "gold")
    assert claims_of(token).keys() == {"k", "sub", "tier", "iat", "exp"}
    with agent.client() as api:
        event = api.post("/v1/scans", json={"text": token}).json()["event"]
    assert (event["resolved"]["kind"], event["resolved"]["valid"]) == ("member", True)
    assert event["resolved"]["member"]["member_id"] == "M-MINT"


def test_a_minted_coupon_validates_at_a_real_agent_with_the_documented_claims(agent: AgentProcess,
                                                                              key_dir: Path) -> None:
    token = mint(key_dir, "coupon", "--coupon-id", "C-MINT", "--campaign", "winter", "--off-fen", "500",
                 "--min-fen", "3000", "--stores", STORE, "store-2", "--valid-from", "2026-01-01T00:00:00+08:00",
                 "--valid-until", "2099-01-01T00:00:00Z")
    assert claims_of(token) == {"k": "c", "jti": "C-MINT", "cmp": "winter", "off": 500, "min": 3000,
                                "st": [STORE, "store-2"], "nbf": 1767196800, "exp": 4070908800}
    with agent.client() as api:
        valid = api.get("/v1/coupons/validate", params={"code": token}).json()
    assert valid["valid"] is True and valid["claims"]["off"] == 500


def test_percent_gift_and_member_bound_coupons_carry_their_claims(agent: AgentProcess, key_dir: Path) -> None:
    pct = mint(key_dir, "coupon", "--coupon-id", "C-P", "--campaign", "w", "--pct", "15", "--cap-fen", "2000",
               "--ttl-s", "600")
    gift = mint(key_dir, "coupon", "--coupon-id", "C-G", "--campaign", "w", "--gift-sku", "SKU-CUP",
                "--member-id", "M-A")
    assert {k: claims_of(pct)[k] for k in ("pct", "cap")} == {"pct": 15, "cap": 2000}
    assert "st" not in claims_of(pct) and "min" not in claims_of(pct)
    assert {k: claims_of(gift)[k] for k in ("gift", "sub")} == {"gift": "SKU-CUP", "sub": "M-A"}
    with agent.client() as api:
        assert api.get("/v1/coupons/validate", params={"code": pct}).json()["valid"] is True
        bound = api.get("/v1/coupons/validate", params={"code": gift, "member_id": "M-Z"}).json()
    assert (bound["valid"], bound["reason"]) == (False, "wrong_member")


def test_a_minted_pickup_code_verifies_and_names_its_order(agent: AgentProcess, key_dir: Path) -> None:
    token = mint(key_dir, "pickup", "--order-id", "O-MINT", "--store", STORE)
    assert claims_of(token)["oid"] == "O-MINT" and claims_of(token)["st"] == STORE
    with agent.client() as api:
        resolved = api.post("/v1/scans", json={"text": token}).json()["event"]["resolved"]
    # Signature and claims verified: what is missing is HQ's order record, not trust in the code.
    assert (resolved["kind"], resolved["reason"], resolved["order_id"]) == ("pickup", "not_found", "O-MINT")


def test_a_code_under_a_kid_the_store_does_not_list_is_refused(agent: AgentProcess, key_dir: Path) -> None:
    token = mint(key_dir, "member", "--member-id", "M-1", kid="hq-other")
    with agent.client() as api:
        resolved = api.post("/v1/scans", json={"text": token}).json()["event"]["resolved"]
    assert (resolved["valid"], resolved["reason"]) == (False, "unknown_kid")


def test_mint_refuses_a_bad_key_file_clearly(tmp_path: Path) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello\n")
    for path, why in ((not_pem, "not an unencrypted PEM private key"), (tmp_path / "absent.pem", "cannot read")):
        done = hq("mint", "member", "--key", str(path), "--kid", "k1", "--member-id", "M1")
        assert (done.returncode, done.stdout) == (2, "")
        assert str(path) in done.stderr and why in done.stderr


@pytest.mark.parametrize("args, said", [
    (["member", "--kid", "k1", "--member-id", "M1"], "--key"),
    (["coupon", "--coupon-id", "C1", "--campaign", "w"], "one of the arguments --off-fen --pct --gift-sku"),
    (["coupon", "--coupon-id", "C1", "--campaign", "w", "--off-fen", "5", "--pct", "5"], "not allowed with"),
    (["coupon", "--coupon-id", "C1", "--campaign", "w", "--pct", "101"], "--pct"),
    (["coupon", "--coupon-id", "C1", "--campaign", "w", "--off-fen", "5", "--cap-fen", "9"], "--cap-fen goes only"),
    (["coupon", "--coupon-id", "C1", "--campaign", "w", "--off-fen", "5", "--valid-from", "2026-01-01"], "offset"),
    (["coupon", "--coupon-id", "C1", "--campaign", "w", "--off-fen", "5", "--valid-until", "1000"], "later than now"),
    (["coupon", "--coupon-id", "C1", "--campaign", "w", "--off-fen", "5", "--valid-from", "4000000000",
      "--ttl-s", "60"], "than --valid-from"),
    (["coupon", "--coupon-id", "x" * 65, "--campaign", "w", "--off-fen", "5"], "at most 64"),
    (["pickup", "--order-id", "O1"], "--store"),
])
def test_mint_refuses_missing_or_bad_options_with_exit_2(key_dir: Path, public_line: str, args: list[str],
                                                         said: str) -> None:
    kind, *rest = args
    key = [] if "--key" == said else ["--key", str(key_dir / "hq-2026a.pem")]
    kid = [] if "--kid" in rest else ["--kid", "hq-2026a"]
    done = hq("mint", kind, *key, *kid, *rest)
    assert (done.returncode, done.stdout) == (2, "") and said in done.stderr, done.stderr
