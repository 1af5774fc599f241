"""Write docs/openapi.json from the code: the published description of the local API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from posedge.agent.api.app import build_app
from posedge.agent.config import load_config


def openapi() -> dict:
    agent = SimpleNamespace(config=load_config(None), token="unused")
    return build_app(agent).app.openapi()


if __name__ == "__main__":
    target = Path(__file__).parents[1] / "docs" / "openapi.json"
    target.write_text(json.dumps(openapi(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
