"""Image -> codes: the decoder chain of the camera scanner, and the extra effort where decoders fail.

Each decoder (zxing-cpp, pyzbar, OpenCV's QR detector) is an adapter with one method,
`decode(gray) -> list[Decoded]`, imported lazily so a missing library disables that decoder only.
`FrameDecoder` runs the first decoder on every frame. When it reads nothing, a cheap gate
(`shows_code_like_region`: a few dense patches of strong edges on a half-size image, a fraction of
the first decoder's time) decides whether the frame deserves more: only then do the other decoders
run, and where the frame shows a barcode-like region (strong, single-direction stripes) that region
is straightened (decoders give up on 1D codes rotated past ~20 degrees), enlarged, sharpened and
tried again, within a time budget per frame. An empty counter thus costs about the first decoder
alone (bench/footprint.py); tests/scanners/test_camera.py shows the gate loses no read.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

SYMBOLOGIES = ("qr", "datamatrix", "ean13", "ean8", "upca", "upce", "code128", "code39", "code93", "itf",
               "codabar", "pdf417", "aztec", "databar")
DEFAULT_SYMBOLOGIES = ("qr", "datamatrix", "ean13", "ean8", "upca", "upce", "code128")
LINEAR = frozenset({"ean13", "ean8", "upca", "upce", "code128", "code39", "code93", "itf", "codabar", "databar"})
DECODERS = ("zxing", "pyzbar", "opencv")

ZXING_FORMATS = {
    "qr": "QRCode", "datamatrix": "DataMatrix", "ean13": "EAN13", "ean8": "EAN8", "upca": "UPCA", "upce": "UPCE",
    "code128": "Code128", "code39": "Code39", "code93": "Code93", "itf": "ITF", "codabar": "Codabar",
    "pdf417": "PDF417", "aztec": "Aztec", "databar": "DataBar",
}
ZBAR_SYMBOLS = {
    "qr": "QRCODE", "ean13": "EAN13", "ean8": "EAN8", "upca": "UPCA", "upce": "UPCE", "code128": "CODE128",
    "code39": "CODE39", "code93": "CODE93", "itf": "I25", "codabar": "CODABAR", "pdf417": "PDF417",
    "databar": "DATABAR",
}
# zbar names its symbologies; the pipeline wants AIM identifiers where one is standard.
ZBAR_AIM = {"QRCODE": "]Q1", "EAN13": "]E0", "UPCA": "]E0", "EAN8": "]E4", "UPCE": "]E0", "CODE128": "]C0",
            "CODE39": "]A0", "CODE93": "]G0", "I25": "]I0", "CODABAR": "]F0", "PDF417": "]L0"}


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    raw: bytes
    symbology: str | None
    decoder: str


class Decoder(Protocol):
    name: str

    def decode(self, gray: Any) -> list[Decoded]: ...


class DecoderUnavailable(Exception):
    """The library behind a decoder is not installed; the message says which and how to get it."""


class ZxingDecoder:
    name = "zxing"

    def __init__(self, symbologies: tuple[str, ...] = DEFAULT_SYMBOLOGIES, thorough: bool = False) -> None:
        try:
            import zxingcpp
        except ImportError:
            raise DecoderUnavailable("zxing-cpp is not installed (pip install zxing-cpp)") from None
        self._zx = zxingcpp
        formats = [getattr(zxingcpp.BarcodeFormat, ZXING_FORMATS[s]) for s in symbologies]
        self._formats = zxingcpp.BarcodeFormats(formats)
        # Fast options on live frames; "thorough" (rotation, downscale, inversion) for the second look.
        self._thorough = thorough

    def decode(self, gray: Any) -> list[Decoded]:
        results = self._zx.read_barcodes(gray, formats=self._formats, text_mode=self._zx.TextMode.Plain,
                                         try_rotate=self._thorough, try_downscale=self._thorough,
                                         try_invert=self._thorough)
        out = []
        for r in results:
            if not r.valid:
                continue
            out.append(Decoded(r.text, bytes(r.bytes), r.symbology_identifier or None, self.name))
        return out


class ZbarDecoder:
    name = "pyzbar"

    def __init__(self, symbologies: tuple[str, ...] = DEFAULT_SYMBOLOGIES) -> None:
        try:
            from pyzbar import pyzbar
        except (ImportError, OSError) as exc:  # OSError/ImportError: libzbar0 missing
            raise DecoderUnavailable(f"pyzbar cannot load libzbar ({exc}); install the libzbar0 package") from None
        self._zbar = pyzbar
        self._symbols = [getattr(pyzbar.ZBarSymbol, ZBAR_SYMBOLS[s]) for s in symbologies if s in ZBAR_SYMBOLS]

    def decode(self, gray: Any) -> list[Decoded]:
        if not self._symbols:
            return []
        out = []
        for r in self._zbar.decode(gray, symbols=self._symbols):
            try:
                text = r.data.decode("utf-8")
            except UnicodeDecodeError:
                text = r.data.decode("latin-1")
            out.append(Decoded(text, bytes(r.data), ZBAR_AIM.get(r.type, r.type), self.name))
        return out


class OpenCvQrDecoder:
    name = "opencv"

    def __init__(self, symbologies: tuple[str, ...] = DEFAULT_SYMBOLOGIES, aruco: bool = False) -> None:
        try:
            import cv2
        except ImportError:
            raise DecoderUnavailable("OpenCV is not installed (pip install opencv-python-headless)") from None
        self._detector: cv2.QRCodeDetector | cv2.QRCodeDetectorAruco | None
        if "qr" not in symbologies:
            self._detector = None
        elif aruco and hasattr(cv2, "QRCodeDetectorAruco"):
            self._detector = cv2.QRCodeDetectorAruco()  # finder patterns found like ArUco markers
        else:
            self._detector = cv2.QRCodeDetector()

    def decode(self, gray: Any) -> list[Decoded]:
        if self._detector is None:
            return []
        try:
            text, _points, _straight = self._detector.detectAndDecode(gray)
        except Exception:  # OpenCV raises cv2.error on degenerate detections; that is "nothing read"
            return []
        if not text:
            return []
        return [Decoded(text, text.encode("utf-8"), "]Q1", self.name)]


DECODER_CLASSES: dict[str, Callable[..., Decoder]] = {
    "zxing": ZxingDecoder, "pyzbar": ZbarDecoder, "opencv": OpenCvQrDecoder,
}


def build_chain(names: tuple[str, ...], symbologies: tuple[str, ...]) -> tuple[list[Decoder], list[str]]:
    """The decoders that can be loaded, and a reason for each that cannot."""
    chain, problems = [], []
    for name in names:
        try:
            chain.append(DECODER_CLASSES[name](symbologies))
        except DecoderUnavailable as exc:
            problems.append(f"{name}: {exc}")
    return chain, problems


@dataclass(frozen=True, slots=True)
class Region:
    """A barcode-like area of the frame: centre, size and the angle that makes its bars vertical."""

    cx: float
    cy: float
    width: float
    height: float
    angle_deg: float


def find_stripe_regions(gray: Any, max_regions: int = 2) -> list[Region]:
    """Areas of strong gradient that all points one way: how 1D barcodes look at any rotation.

    Structure tensor on a half-size image: coherence near 1 where all edges are parallel. The
    orientation of the tensor gives the bars' direction; text and textures are incoherent.
    """
    import cv2
    import numpy as np

    scale = 0.5
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)
    k = (9, 9)
    jxx = cv2.boxFilter(gx * gx, -1, k)
    jyy = cv2.boxFilter(gy * gy, -1, k)
    jxy = cv2.boxFilter(gx * gy, -1, k)
    energy = jxx + jyy
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy) / (energy + 1e-3)
    strong = energy > max(2000.0, float(np.percentile(energy, 90)) * 0.5)
    mask = ((coherence > 0.75) & strong).astype(np.uint8) * 255
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (9, 9)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5)))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    regions = []
    for contour in sorted(contours, key=cv2.contourArea, reverse=True)[:max_regions]:
        area = cv2.contourArea(contour)
        if area < 300:  # at half size: under ~35x35 px of the frame cannot hold a readable 1D code
            break
        x, y, w, h = cv2.boundingRect(contour)
        sel = mask[y:y + h, x:x + w] > 0
        sxx, syy, sxy = (float(m[y:y + h, x:x + w][sel].sum()) for m in (jxx, jyy, jxy))
        gradient_angle = 0.5 * math.degrees(math.atan2(2 * sxy, sxx - syy))
        (cx, cy), (rw, rh), _ = cv2.minAreaRect(contour)
        regions.append(Region(cx / scale, cy / scale, max(rw, rh) / scale, min(rw, rh) / scale, gradient_angle))
    return regions


GATE_EDGE_LEVEL = 80  # morphological gradient (3x3, half size) of an edge a printed code makes
GATE_CELL_PX = 16  # cells of 32x32 frame pixels: a few of them lie inside any readable code
GATE_MIN_DENSITY = 200  # of 255: in a code most of a cell is edge; text, shapes, noise stay under ~180
GATE_MIN_CELLS = 4


def shows_code_like_region(gray: Any) -> bool:
    """Whether GATE_MIN_CELLS cells of the frame are nearly all strong edges, as inside a code.

    Measured on drivers/scanners/synthetic.py's frames: every code the extra effort reads past the
    first decoder has 4 cells at 223 or more; empty counters with text and shapes at most 179."""
    import cv2
    import numpy as np

    small = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    gradient = cv2.morphologyEx(small, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    _, edges = cv2.threshold(gradient, GATE_EDGE_LEVEL, 255, cv2.THRESH_BINARY)
    h, w = edges.shape
    density = cv2.resize(edges, (max(1, w // GATE_CELL_PX), max(1, h // GATE_CELL_PX)), interpolation=cv2.INTER_AREA)
    return int(np.count_nonzero(density >= GATE_MIN_DENSITY)) >= GATE_MIN_CELLS


def straighten(gray: Any, region: Region, margin: float = 0.35, upscale: float = 1.0) -> Any:
    """The region cut out and rotated so that its gradient runs horizontally (bars vertical)."""
    import cv2

    side = int(max(region.width, region.height) * (1 + margin)) + 8
    matrix = cv2.getRotationMatrix2D((region.cx, region.cy), region.angle_deg, upscale)
    matrix[0, 2] += side * upscale / 2 - region.cx
    matrix[1, 2] += side * upscale / 2 - region.cy
    size = int(side * upscale)
    return cv2.warpAffine(gray, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def looks_like_bars(view: Any, min_transitions: int = 16) -> bool:
    """A straightened view holds a 1D code if rows across its middle cross many dark/light edges.

    Box edges and shadows are coherent too, but cross two or three edges, not dozens.
    """
    import cv2
    import numpy as np

    h = view.shape[0]
    rows = view[[h * 2 // 5, h // 2, h * 3 // 5], :]
    _, binary = cv2.threshold(rows, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    transitions = np.count_nonzero(np.diff(binary.astype(np.int8), axis=1), axis=1)
    return int(np.median(transitions)) >= min_transitions


def sharpen(gray: Any) -> Any:
    import cv2

    blurred = cv2.GaussianBlur(gray, (0, 0), 2.0)
    return cv2.addWeighted(gray, 1.8, blurred, -0.8, 0)


class FrameDecoder:
    """The decoder chain plus extra effort, for one camera (not thread-safe: one per decode thread)."""

    def __init__(self, decoders: list[Decoder], symbologies: tuple[str, ...] = DEFAULT_SYMBOLOGIES,
                 extra_effort: bool = True, budget_s: float = 0.030, gate: bool = True) -> None:
        self.decoders = decoders
        self.extra_effort = extra_effort and bool(set(symbologies) & LINEAR)
        self.budget_s = budget_s
        self.gate = gate  # False: every frame gets the whole chain and the extra effort (tests compare)
        self.stats = {"frames": 0, "read_plain": 0, "read_extra": 0, "regions": 0, "bar_regions": 0, "over_budget": 0,
                      "gated_out": 0}
        self._linear = self._linear_decoders(decoders, symbologies)

    def decode(self, frame: Any) -> list[Decoded]:
        started = time.perf_counter()
        gray = to_gray(frame)
        self.stats["frames"] += 1
        found = self._chain(gray, self.decoders[:1])
        if not found and len(self.decoders) + self.extra_effort > 1:
            if self.gate and not shows_code_like_region(gray):
                self.stats["gated_out"] += 1
                return []
            found = self._chain(gray, self.decoders[1:])
        if found:
            self.stats["read_plain"] += 1
            return found
        if not self.extra_effort:
            return []
        found = self._extra(gray, started)
        if found:
            self.stats["read_extra"] += 1
        return found

    def _chain(self, gray: Any, decoders: list[Decoder]) -> list[Decoded]:
        for decoder in decoders:
            found = decoder.decode(gray)
            if found:
                return found
        return []

    def _extra(self, gray: Any, started: float) -> list[Decoded]:
        regions = find_stripe_regions(gray)
        self.stats["regions"] += bool(regions)
        for region in regions:
            if not looks_like_bars(straighten(gray, region, margin=0.0)):
                continue
            self.stats["bar_regions"] += 1
            for view in (lambda: straighten(gray, region),
                         # blur and tiny modules: twice the pixels, then unsharp mask (measured in bench/scanners.py)
                         lambda: sharpen(straighten(gray, region, upscale=2.0))):
                if time.perf_counter() - started > self.budget_s:
                    self.stats["over_budget"] += 1
                    return []
                found = self._chain(view(), self._linear)
                if found:
                    return found
        return []

    @staticmethod
    def _linear_decoders(decoders: list[Decoder], symbologies: tuple[str, ...]) -> list[Decoder]:
        linear = tuple(s for s in symbologies if s in LINEAR)
        out: list[Decoder] = []
        for decoder in decoders:
            if decoder.name == "zxing" and linear:
                out.append(ZxingDecoder(linear, thorough=False))
            elif decoder.name == "pyzbar" and linear:
                out.append(ZbarDecoder(linear))
        return out


def to_gray(frame: Any) -> Any:
    """BGR, BGRA or gray uint8 -> gray; anything else raises ValueError (not an image)."""
    import cv2
    import numpy as np

    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.size == 0:
        raise ValueError("frame is not an 8-bit image")
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"frame has an unexpected shape {frame.shape}")
