"""Camera scanner: OpenCV VideoCapture (device index, V4L2 path, RTSP/HTTP URL or video file) -> codes.

Two threads: a grabber reads frames as fast as the source gives them and keeps only the newest in
a one-frame slot; the driver thread decodes whatever is newest. When decoding falls behind, frames
are dropped (counted), never queued, so a code shown now is read now. A code seen in consecutive
frames is one scan: it is emitted again only after it has been out of sight for `repeat_gap_ms`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from posedge.drivers.registry import SCANNERS, DriverConfig
from posedge.drivers.scanners.base import ScannerDriver, log
from posedge.drivers.scanners.decoders import DECODERS, DEFAULT_SYMBOLOGIES, SYMBOLOGIES, FrameDecoder, build_chain
from posedge.drivers.scanners.framing import Line, check_line

Symbology = Literal[SYMBOLOGIES]  # type: ignore[valid-type]
DecoderName = Literal[DECODERS]  # type: ignore[valid-type]


def _usable() -> tuple[bool, str]:
    try:
        import cv2  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as exc:
        return False, f"OpenCV is not installed ({exc}); pip install opencv-python-headless"
    return True, ""


class CameraScannerConfig(DriverConfig):
    type: Literal["camera"] = "camera"
    source: int | str = Field(
        0, description="device index (0), V4L2 path (/dev/video0), rtsp:// or http:// URL, or a video file"
    )
    decoder: list[DecoderName] = Field(default_factory=lambda: ["zxing", "pyzbar"],
                                       description="decoders tried in order on each frame: zxing, pyzbar, opencv")
    symbologies: list[Symbology] = Field(default_factory=lambda: list(DEFAULT_SYMBOLOGIES),
                                         description="codes to look for (fewer is faster)")
    width: int = Field(640, ge=160, le=3840, description="frame width asked of the camera")
    height: int = Field(480, ge=120, le=2160, description="frame height asked of the camera")
    max_fps: float = Field(30.0, gt=0, le=120, description="most frames decoded per second")
    extra_effort: bool = Field(True, description="straighten and sharpen barcode-like regions the decoders missed")
    budget_ms: int = Field(30, ge=5, le=1000, description="time per frame for the extra effort")
    repeat_gap_ms: int = Field(600, ge=0, le=60000,
                               description="a code must be out of sight this long to be read again")
    confirm_1d_frames: int = Field(2, ge=1, le=10,
                                   description="1D codes (weak checksums) must be read in this many frames")
    frame_timeout_s: float = Field(5.0, gt=0, le=120,
                                   description="no frame for this long: the camera is lost, reopen it")
    realtime: bool = Field(True, description="video files: play at their own frame rate, as a camera would")

    @field_validator("source")
    @classmethod
    def _source(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if not 0 <= value <= 63:
                raise ValueError("a device index is 0..63")
            return value
        if not value:
            raise ValueError("empty source; give an index, a /dev/video path, a URL or a file")
        if value.isdigit():
            return int(value)
        return value

    @field_validator("decoder", "symbologies")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one")
        return list(dict.fromkeys(value))


@dataclass
class Sighting:
    last_ns: int = 0
    frames: int = 0
    emitted: bool = False


class FrameSlot:
    """The newest frame, replaced by each grab: a one-element queue that drops what was not taken."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Any = None
        self._seq = 0
        self.dropped = 0
        self.ended: str | None = None  # why the source stopped

    def put(self, frame: Any) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._seq += 1
            self._cond.notify()

    def end(self, reason: str) -> None:
        with self._cond:
            self.ended = reason
            self._cond.notify()

    def take(self, timeout: float) -> Any:
        """The newest frame, or None on timeout or when the source ended (check `ended`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self.ended is not None, timeout)
            frame, self._frame = self._frame, None
            return frame


def is_linear(symbology: str | None) -> bool:
    """AIM ids of 1D symbologies: ]A Code 39, ]C Code 128, ]E EAN/UPC, ]F Codabar, ]G Code 93, ]I ITF, ]e DataBar."""
    return symbology is not None and symbology[:2] in ("]A", "]C", "]E", "]F", "]G", "]I", "]e")


@SCANNERS.register("camera", CameraScannerConfig, _usable)
class CameraScanner(ScannerDriver):
    config: CameraScannerConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._capture: Any = None
        self._seen: dict[str, Sighting] = {}  # text -> its current viewing
        self.decoder: FrameDecoder | None = None
        self.decoder_problems: list[str] = []

    def read_device(self) -> None:
        cfg = self.config
        decoder = self._decoder()
        capture = self._open()
        slot = FrameSlot()
        stop_grab = threading.Event()
        grabber = threading.Thread(target=self._grab, args=(capture, slot, stop_grab), name=f"{self.name}-grab",
                                   daemon=True)
        grabber.start()
        self.connected()
        min_interval = 1.0 / cfg.max_fps
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                frame = slot.take(cfg.frame_timeout_s)
                if frame is None:
                    raise OSError(slot.ended or f"the camera delivered no frame for {cfg.frame_timeout_s:g} s")
                self._decode(decoder, frame)
                self.status_cell.count("frames")
                rest = min_interval - (time.monotonic() - started)
                if rest > 0:
                    self.stopping.wait(rest)
        finally:
            stop_grab.set()
            self.status_cell.count("frames_dropped", slot.dropped)
            grabber.join(1.0)
            if not grabber.is_alive():  # a grab stuck in a dead RTSP stream keeps its capture; it exits later
                self._release(capture)

    def close_device(self) -> None:
        pass  # the grabber checks the stop flag between frames; release happens on its thread's exit

    # -- frames ----------------------------------------------------------------------------
    def _decoder(self) -> FrameDecoder:
        if self.decoder is None:
            cfg = self.config
            chain, problems = build_chain(tuple(cfg.decoder), tuple(cfg.symbologies))
            self.decoder_problems = problems
            for problem in problems:
                log.warning("event=camera_decoder_unavailable scanner=%s problem=%r", cfg.name, problem)
            if not chain:
                raise OSError("no decoder can be loaded: " + "; ".join(problems))
            self.decoder = FrameDecoder(chain, tuple(cfg.symbologies), cfg.extra_effort, cfg.budget_ms / 1000.0)
        return self.decoder

    def _decode(self, decoder: FrameDecoder, frame: Any) -> None:
        try:
            found = decoder.decode(frame)
        except ValueError as exc:  # not an image
            self.reject("bad_frame", str(exc))
            return
        now = time.monotonic_ns()
        for item in found:
            if self._sighted(item, now):
                raw = item.raw or item.text.encode("utf-8")
                line = check_line(raw, b"", self.limits.max_line_bytes, parse_aim=False)
                if isinstance(line, Line):
                    self.emit(item.text, item.raw, item.symbology)
                else:
                    self.emit_frames([line])
        if len(self._seen) > 256:
            gap_ns = self.config.repeat_gap_ms * 1_000_000
            self._seen = {t: s for t, s in self._seen.items() if now - s.last_ns <= gap_ns}

    def _sighted(self, item: Any, now: int) -> bool:
        """True once per viewing of a code: when it has been read in enough frames.

        A viewing ends when the code is out of sight for repeat_gap_ms. 2D codes carry error
        correction, so one frame is enough; a 1D misread passes its check digit now and then
        (JPEG blocks, tiny modules), the same text in `confirm_1d_frames` frames does not.
        """
        sighting = self._seen.get(item.text)
        if sighting is None or now - sighting.last_ns > self.config.repeat_gap_ms * 1_000_000:
            sighting = self._seen[item.text] = Sighting()
        sighting.last_ns = now
        sighting.frames += 1
        needed = self.config.confirm_1d_frames if is_linear(item.symbology) else 1
        if sighting.emitted or sighting.frames < needed:
            return False
        sighting.emitted = True
        return True

    # -- capture ---------------------------------------------------------------------------
    def _open(self) -> Any:
        import cv2

        source = self.config.source
        is_url = isinstance(source, str) and source.startswith(("rtsp:", "http:", "https:"))
        if isinstance(source, str) and not is_url and not Path(source).exists():
            raise FileNotFoundError(f"{source} does not exist (camera unplugged?)")
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            capture.release()
            raise OSError(f"cannot open camera source {source!r}")
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        self._capture = capture
        return capture

    def _grab(self, capture: Any, slot: FrameSlot, stop: threading.Event) -> None:
        import cv2

        is_file = self._is_file()
        fps = capture.get(cv2.CAP_PROP_FPS) if is_file and self.config.realtime else 0
        interval = 1.0 / fps if fps and fps > 0 else 0.0
        next_at = time.monotonic()
        try:
            while not stop.is_set() and not self.stopping.is_set():
                ok, frame = capture.read()
                if not ok:
                    slot.end("the video file ended" if is_file else "the camera stopped delivering frames (unplugged?)")
                    return
                slot.put(frame)
                if interval:
                    next_at += interval
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        stop.wait(delay)
        except Exception as exc:  # a backend error ends this capture; the driver reopens it
            slot.end(f"camera read failed: {exc.__class__.__name__}: {exc}")

    def _is_file(self) -> bool:
        source = self.config.source
        return isinstance(source, str) and Path(source).is_file()

    def _release(self, capture: Any) -> None:
        try:
            capture.release()
        except Exception:
            pass
        if self._capture is capture:
            self._capture = None
