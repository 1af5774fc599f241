"""Codes rendered as images and degraded the way a webcam sees a phone screen.

Used by the camera tests, `bench/scanners.py` and `posedge scan-test --render`: QR codes from the
`qrcode` package and 1D codes (EAN-13, Code 128) from `python-barcode`, both independent of the
decoders under test. Everything is deterministic for a given `seed`.
"""

from __future__ import annotations

import math
from typing import Any

DEGRADATIONS = ("clean", "rotation", "tilt", "small", "blur", "noise", "jpeg", "glare")


def render_qr(text: str, module_px: int = 6) -> Any:
    """Gray uint8 image of a QR code with a 4-module quiet zone."""
    import numpy as np
    import qrcode

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=1, border=4)
    qr.add_data(text)
    qr.make(fit=True)
    matrix = np.array(qr.get_matrix(), dtype=bool)
    image = np.where(matrix, 0, 255).astype(np.uint8)
    return np.kron(image, np.ones((module_px, module_px), dtype=np.uint8))


def render_linear(text: str, kind: str = "ean13", module_px: int = 3, height_px: int = 120) -> Any:
    """Gray uint8 image of an EAN-13 (12 or 13 digits) or Code 128 symbol, quiet zones included."""
    import barcode
    import numpy as np

    symbol = barcode.get(kind, text)
    modules = symbol.build()[0]  # "1010..." one character per module
    row = np.array([0 if m == "1" else 255 for m in modules], dtype=np.uint8)
    quiet = np.full(10, 255, dtype=np.uint8)
    row = np.concatenate([quiet, row, quiet])
    row = np.repeat(row, module_px)
    return np.tile(row, (height_px, 1))


def ean13_full(digits12: str) -> str:
    """12 digits -> the 13-digit EAN with its check digit."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits12))
    return digits12 + str((10 - total % 10) % 10)


def place(code: Any, size: tuple[int, int] = (640, 480), angle_deg: float = 0.0, scale: float = 1.0,
          tilt: float = 0.0, background: int = 235, seed: int = 0) -> Any:
    """The code on a phone-screen-like panel in a frame: rotated, scaled, perspective-tilted."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    width, height = size
    counter = np.full((height, width), background, dtype=np.uint8)
    frame = cv2.add(counter, rng.integers(0, 12, size=(height, width), dtype=np.uint8))  # counter texture
    panel = cv2.copyMakeBorder(code, 24, 24, 24, 24, cv2.BORDER_CONSTANT, value=255)
    if scale != 1.0:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        panel = cv2.resize(panel, None, fx=scale, fy=scale, interpolation=interpolation)
    ph, pw = panel.shape
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], dtype=np.float32)
    cx, cy = width / 2 + rng.uniform(-30, 30), height / 2 + rng.uniform(-20, 20)
    corners = src - [pw / 2, ph / 2]
    if tilt:
        # the far edge of the phone appears shorter: shrink the top edge, like a tilted screen
        corners[0, 0] *= 1 - tilt
        corners[1, 0] *= 1 - tilt
        corners[0, 1] *= 1 - tilt / 2
        corners[1, 1] *= 1 - tilt / 2
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    dst = (corners @ rot.T + [cx, cy]).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    mask = cv2.warpPerspective(np.full_like(panel, 255), matrix, (width, height))
    warped = cv2.warpPerspective(panel, matrix, (width, height))
    frame[mask > 0] = warped[mask > 0]
    return frame


def degrade(frame: Any, kind: str, level: float = 1.0, seed: int = 0) -> Any:
    """One webcam-like degradation applied to a gray frame."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "blur":
        return cv2.GaussianBlur(frame, (0, 0), 0.6 + 1.2 * level)
    if kind == "noise":
        noise = rng.normal(0, 12 + 18 * level, frame.shape)
        return np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if kind == "jpeg":
        quality = int(max(5, 30 - 20 * level))
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if kind == "glare":
        h, w = frame.shape
        yy, xx = np.mgrid[0:h, 0:w]
        gx, gy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        spot = np.exp(-(((xx - gx) ** 2) + ((yy - gy) ** 2)) / (2 * (0.12 * w) ** 2))
        out = frame.astype(np.float32) * (1 - 0.45 * level * spot) + 255 * 0.45 * level * spot
        return np.clip(out, 0, 255).astype(np.uint8)
    return frame


def scene(code: Any, degradation: str, seed: int, linear: bool) -> Any:
    """A 640x480 gray frame of `code` under one named degradation (see DEGRADATIONS)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    angle = float(rng.uniform(-8, 8))
    scale, tilt = 1.0, 0.0
    if degradation == "rotation":
        angle = float(rng.uniform(20, 45) * rng.choice([-1, 1]))
    elif degradation == "tilt":
        tilt = float(rng.uniform(0.15, 0.3))
    elif degradation == "small":
        scale = float(rng.uniform(0.45, 0.6)) if linear else float(rng.uniform(0.35, 0.5))
    frame = place(code, angle_deg=angle, scale=scale, tilt=tilt, seed=seed)
    if degradation in ("blur", "noise", "jpeg", "glare"):
        frame = degrade(frame, degradation, float(rng.uniform(0.5, 1.0)), seed)
    return frame


def empty_frame(seed: int = 0, size: tuple[int, int] = (640, 480)) -> Any:
    """A frame with no code: a counter with a few shapes and some text-like noise."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    width, height = size
    counter = np.full((height, width), int(rng.integers(150, 230)), dtype=np.uint8)
    frame = cv2.add(counter, rng.integers(0, 20, size=(height, width), dtype=np.uint8))
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.rectangle(frame, (x, y), (x + int(rng.integers(20, 160)), y + int(rng.integers(20, 120))),
                      int(rng.integers(0, 255)), -1)
    for i in range(3):
        cv2.putText(frame, "posedge 2026 total", (int(rng.integers(0, 300)), 60 + 150 * i),
                    cv2.FONT_HERSHEY_SIMPLEX, 1.0, int(rng.integers(0, 100)), 2)
    return cv2.GaussianBlur(frame, (3, 3), 0)
