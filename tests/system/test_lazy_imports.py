"""What a start imports (docs/architecture.md, "What is imported at start"): a real `posedge run`, asked two ways.

- `/proc/PID/maps`: the shared objects the process has loaded (OpenCV's, numpy's, zbar's, cryptography's,
  Pillow's), without asking the process anything;
- `POSEDGE_DEBUG_MODULES_FILE`: the agent writes the names in `sys.modules` at READY (pure-Python
  packages such as paho, escpos or qrcode have no shared object to see).

Each "absent" check has a twin that configures the thing and sees it loaded, so neither check can pass
by looking in the wrong place.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from posedge.agent.cli.run import DEBUG_MODULES_ENV
from tests.conftest import free_port

# Shared objects, by a part of their file name that no other library's has.
CAMERA_OBJECTS = {"cv2": "/cv2/", "numpy": "_multiarray_umath", "pyzbar": "libzbar"}
RECEIPT_OBJECTS = {"PIL": "/PIL/_imaging"}
CRYPTO_OBJECTS = {"cryptography": "/cryptography/hazmat/bindings/_rust"}
# Python packages that only a configured part, or a first use, may import.
LAZY_PACKAGES = ("cv2", "numpy", "pyzbar", "zxingcpp", "PIL", "escpos", "qrcode", "barcode", "paho",
                 "cryptography", "jwt", "sqlite_utils", "posedge.sync.link")


def started(agent_factory: Any, tmp_path: Path, scanners: str = "[]", mqtt_keys: str = "enabled = false",
            name: str = "agent") -> tuple[Any, set[str], str]:
    """A real agent started on `scanners` (the rest as tests/conftest.py's config: default printers, no
    broker): its modules at READY and its /proc maps."""
    agent = agent_factory(home=tmp_path / name, mqtt_keys=mqtt_keys)
    text = agent.config.read_text(encoding="utf-8")
    agent.config.write_text(text.replace("scanners = []", f"scanners = {scanners}", 1), encoding="utf-8")
    dump = agent.home / "modules.txt"
    dump.unlink(missing_ok=True)  # an earlier start's dump (same home) must not be read as this one's
    agent.env = {**os.environ, DEBUG_MODULES_ENV: str(dump)}
    agent.start()
    deadline = time.monotonic() + 30
    while not dump.exists() or not dump.read_text(encoding="utf-8").endswith("\n"):
        assert time.monotonic() < deadline, agent.log_text()
        time.sleep(0.02)
    modules = set(dump.read_text(encoding="utf-8").split())
    maps = Path(f"/proc/{agent.proc.pid}/maps").read_text(encoding="utf-8")
    return agent, modules, maps


def loaded(modules: set[str], package: str) -> bool:
    return any(name == package or name.startswith(package + ".") for name in modules)


def mapped(maps: str, objects: dict[str, str]) -> list[str]:
    return [name for name, part in objects.items() if part in maps]


def test_a_start_without_camera_or_broker_loads_no_camera_receipt_crypto_or_mqtt_library(
        agent_factory: Any, tmp_path: Path) -> None:
    """GIVEN no camera, no broker, the default printer, and a store key made by an earlier start
    WHEN the agent is started again THEN at READY none of OpenCV, numpy, zbar, zxing-cpp, Pillow, escpos,
    qrcode, paho, cryptography (nor the modules that need them) is loaded, in sys.modules or in /proc maps."""
    first, _, first_maps = started(agent_factory, tmp_path)  # creates the database, token and store key
    assert mapped(first_maps, CRYPTO_OBJECTS) == ["cryptography"]  # a key is generated once, with cryptography
    assert first.stop() == 0
    agent, modules, maps = started(agent_factory, tmp_path)
    assert (tmp_path / "agent" / "var" / "store-key.pem").exists()
    assert [p for p in LAZY_PACKAGES if loaded(modules, p)] == []
    assert mapped(maps, {**CAMERA_OBJECTS, **RECEIPT_OBJECTS, **CRYPTO_OBJECTS}) == []
    assert loaded(modules, "posedge.agent.service") and loaded(modules, "fastapi")  # the dump is the agent's
    # The store key is still reported (status) without cryptography: its JWK is kept beside it.
    status = agent.client().get("/v1/status").json()
    assert status["receipts"]["store_key"]["kid"]


def test_the_first_sale_loads_cryptography_and_signs_its_claim(agent_factory: Any, tmp_path: Path) -> None:
    """GIVEN a restarted agent that has not loaded cryptography WHEN a sale is made THEN its claim code is
    signed with the store key (verifiable with the reported public key) and cryptography is loaded now."""
    from tests.conftest import sale_body

    first, _, _ = started(agent_factory, tmp_path)
    assert first.stop() == 0
    agent, _, maps = started(agent_factory, tmp_path)
    assert mapped(maps, CRYPTO_OBJECTS) == []
    with agent.client() as client:
        jwk = client.get("/v1/status").json()["receipts"]["store_key"]
        answer = client.post("/v1/sales", json=sale_body("sale-lazy-1"))
    assert answer.status_code == 201, answer.text
    token = answer.json()["claim_code"]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from posedge.agent.receipts.claims import verify_claim
    from posedge.sync.codes import b64url_decode

    public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    assert verify_claim(token, public)["sub"] == "sale-lazy-1"
    assert mapped(Path(f"/proc/{agent.proc.pid}/maps").read_text(encoding="utf-8"), CRYPTO_OBJECTS) == ["cryptography"]


def test_a_configured_camera_and_broker_do_load_their_libraries(agent_factory: Any, tmp_path: Path) -> None:
    """GIVEN a camera (its device absent: the driver keeps retrying) and [mqtt] enabled (a closed port)
    WHEN the agent starts THEN OpenCV, numpy, zbar and zxing-cpp are in its maps and modules, and paho is
    imported: the checks above look where these libraries would show."""
    closed = free_port()
    _, modules, maps = started(agent_factory, tmp_path,
                               scanners='[{type = "camera", name = "cam", source = "/dev/video63"}]',
                               mqtt_keys=f'enabled = true\nurl = "mqtt://127.0.0.1:{closed}"')
    assert mapped(maps, CAMERA_OBJECTS) == list(CAMERA_OBJECTS)
    expected = ("cv2", "numpy", "pyzbar", "zxingcpp", "paho", "posedge.sync.link")
    assert [p for p in expected if not loaded(modules, p)] == []
