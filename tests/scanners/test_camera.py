"""The camera scanner on real video files the tests write with OpenCV's VideoWriter.

Codes are rendered by `qrcode` and `python-barcode` (not by the decoders under test), placed on a
phone-screen-like panel, rotated, tilted, blurred, noised and JPEG-compressed, between empty frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from posedge.drivers.base import DeviceState
from posedge.drivers.scanners import synthetic
from posedge.drivers.scanners.camera import CameraScanner, CameraScannerConfig, FrameSlot
from posedge.drivers.scanners.decoders import FrameDecoder, build_chain

from .conftest import wait_state

FPS = 30


def write_video(path: Path, frames: list[np.ndarray], fps: int = FPS) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame)
    writer.release()
    return path


def held(code: np.ndarray, degradation: str, n: int, linear: bool, seed: int = 0) -> list[np.ndarray]:
    """A code held in front of the camera for n frames, moving a little."""
    return [synthetic.scene(code, degradation, seed * 100 + i, linear) for i in range(n)]


def empties(n: int, seed: int = 0) -> list[np.ndarray]:
    return [synthetic.empty_frame(seed + i) for i in range(n)]


MEMBER_QR = "https://m.example.cn/q/7Hk2pQ9x"
EAN = synthetic.ean13_full("690123456789")


@pytest.fixture(scope="module")
def shop_video(tmp_path_factory) -> Path:
    frames = (empties(8) + held(synthetic.render_qr(MEMBER_QR, 5), "noise", 12, False, 1) + empties(30, 50)
              + held(synthetic.render_linear(EAN, "ean13", 3), "rotation", 12, True, 2) + empties(8, 90)
              + held(synthetic.render_qr(MEMBER_QR, 5), "jpeg", 10, False, 3) + empties(20, 120))
    return write_video(tmp_path_factory.mktemp("video") / "counter.avi", frames)


def start(drivers, sink, **config) -> CameraScanner:
    driver = CameraScanner(CameraScannerConfig(name="cam", **config), sink)
    driver.start()
    drivers.append(driver)
    return driver


def test_codes_held_in_view_are_one_scan_each_and_rotated_1d_is_read(shop_video, sink, drivers) -> None:
    """GIVEN a QR held 12 frames, a 1D code rotated 20-45 degrees, the QR again after a pause
    WHEN the camera plays them THEN exactly three scans, in order, each once."""
    start(drivers, sink, source=str(shop_video))
    texts = sink.wait_texts(3, deadline_s=20)
    assert texts[:3] == [MEMBER_QR, EAN, MEMBER_QR]
    assert sink.scans[1].symbology == "]E0"
    assert not sink.rejections


def test_empty_frames_give_no_scan_and_file_end_is_reported(tmp_path, sink, drivers) -> None:
    video = write_video(tmp_path / "empty.avi", empties(20))
    driver = start(drivers, sink, source=str(video))
    wait_state(driver, DeviceState.CONNECTED)
    wait_state(driver, DeviceState.DISCONNECTED)
    assert "ended" in driver.status().last_error
    assert driver.status().counters["frames"] >= 1
    assert sink.scans == []


def test_frames_are_dropped_not_queued_when_decoding_falls_behind(tmp_path, sink, drivers) -> None:
    video = write_video(tmp_path / "fast.avi", empties(120))
    driver = start(drivers, sink, source=str(video), realtime=False, max_fps=20)
    wait_state(driver, DeviceState.DISCONNECTED)
    counters = driver.status().counters
    assert counters["frames_dropped"] > 0
    assert counters["frames"] + counters["frames_dropped"] <= 120


def test_frame_slot_keeps_only_the_newest() -> None:
    slot = FrameSlot()
    for i in range(3):
        slot.put(i)
    assert slot.take(0.1) == 2 and slot.dropped == 2
    assert slot.take(0.01) is None
    slot.end("gone")
    assert slot.take(1.0) is None and slot.ended == "gone"


def test_missing_source_waits_then_resumes_when_it_appears(tmp_path, sink, drivers) -> None:
    path = tmp_path / "later.avi"
    driver = start(drivers, sink, source=str(path))
    wait_state(driver, DeviceState.DISCONNECTED)
    assert "does not exist" in driver.status().last_error
    frames = held(synthetic.render_qr("PICKUP-42", 6), "clean", 6, False) + empties(4)
    write_video(tmp_path / "tmp.avi", frames).rename(path)
    assert sink.wait_texts(1, deadline_s=20)[0] == "PICKUP-42"


def test_a_file_that_is_not_a_video_is_an_error_not_a_crash(tmp_path, sink, drivers) -> None:
    bogus = tmp_path / "not-video.avi"
    bogus.write_bytes(b"\x00garbage" * 1000)
    driver = start(drivers, sink, source=str(bogus))
    wait_state(driver, DeviceState.DISCONNECTED)
    assert "cannot open" in driver.status().last_error or "ended" in driver.status().last_error
    assert driver.is_alive()


def test_a_frame_that_is_not_an_image_is_a_counted_rejection(sink) -> None:
    driver = CameraScanner(CameraScannerConfig(name="cam", source=0), sink)
    decoder = driver._decoder()
    for bad in (np.zeros((0, 0), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4), np.float32), "frame"):
        driver._decode(decoder, bad)
    assert sink.reasons() == ["bad_frame"] * 4
    assert driver.status().counters["rejected"] == 4


@pytest.mark.parametrize("degradation", synthetic.DEGRADATIONS)
def test_pipeline_reads_degraded_codes_and_nothing_on_empty_frames(degradation) -> None:
    chain, problems = build_chain(("zxing", "pyzbar"), ("qr", "ean13", "code128"))
    assert not problems
    decoder = FrameDecoder(chain, ("qr", "ean13", "code128"))
    read = 0
    for seed in range(4):
        qr_text, ean = f"C{seed:04d}-coupon", synthetic.ean13_full(f"69{seed:010d}")
        qr_scene = synthetic.scene(synthetic.render_qr(qr_text, 5), degradation, seed, False)
        ean_scene = synthetic.scene(synthetic.render_linear(ean, "ean13", 3), degradation, seed, True)
        read += any(d.text == qr_text for d in decoder.decode(qr_scene))
        read += any(d.text == ean for d in decoder.decode(ean_scene))
    assert read >= 6, f"{degradation}: read {read} of 8"
    assert all(decoder.decode(synthetic.empty_frame(seed)) == [] for seed in range(5))


def test_config_accepts_index_path_and_url_sources() -> None:
    assert CameraScannerConfig(name="c", source="2").source == 2
    assert CameraScannerConfig(name="c", source="rtsp://10.0.0.5/stream").source == "rtsp://10.0.0.5/stream"
    with pytest.raises(ValueError):
        CameraScannerConfig(name="c", source=99)
    with pytest.raises(ValueError):
        CameraScannerConfig(name="c", decoder=[])
    with pytest.raises(ValueError):
        CameraScannerConfig(name="c", decoder=["wechat"])


def test_1d_reads_need_two_frames_2d_one_and_each_viewing_emits_once(sink) -> None:
    from posedge.drivers.scanners.decoders import Decoded

    driver = CameraScanner(CameraScannerConfig(name="cam", source=0, repeat_gap_ms=500), sink)
    ean, misread, qr = (Decoded("6901234567892", b"6901234567892", "]E0", "zxing"),
                        Decoded("0966600060021", b"0966600060021", "]E0", "zxing"),
                        Decoded("MEMBER-1", b"MEMBER-1", "]Q1", "zxing"))
    ms = 1_000_000
    frames = [(0, [ean, misread, qr]), (33, [ean, qr]), (66, [ean, qr]), (100, [qr]), (1000, [ean]), (1033, [ean])]
    emitted = [(t, item.text) for t, items in frames for item in items if driver._sighted(item, t * ms)]
    assert emitted == [(0, "MEMBER-1"), (33, "6901234567892"), (1033, "6901234567892")]


class MjpegCamera:
    """An IP camera on a real socket: HTTP multipart MJPEG. The first connection sends a few frames of
    one code, then stalls (a camera that stops delivering); later connections show another code."""

    def __init__(self) -> None:
        import socket
        import threading

        import cv2

        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.frames = [cv2.imencode(".jpg", synthetic.place(synthetic.render_qr(text, 5)))[1].tobytes()
                       for text in ("IPCAM-1", "IPCAM-2")]
        self.stop = threading.Event()
        self.peers: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while not self.stop.is_set():
            try:
                peer, _ = self.server.accept()
            except OSError:
                return
            self.peers.append(peer)
            self.connections += 1
            threading.Thread(target=self._stream, args=(peer, self.connections), daemon=True).start()

    def _stream(self, peer, n: int) -> None:
        try:
            peer.recv(4096)
            peer.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            jpg = self.frames[0 if n == 1 else 1]
            for _ in range(8 if n == 1 else 10_000):
                if self.stop.is_set():
                    return
                part_head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                peer.sendall(part_head + jpg + b"\r\n")
                self.stop.wait(0.03)
            self.stop.wait()  # stalls with the connection open, like a hung camera
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        for sock in [self.server, *self.peers]:
            sock.close()


def test_a_camera_that_stops_delivering_frames_is_reopened(sink, drivers) -> None:
    camera = MjpegCamera()
    try:
        driver = start(drivers, sink, source=f"http://127.0.0.1:{camera.port}/stream.mjpg", frame_timeout_s=1.0)
        sink.wait_texts(1)
        wait_state(driver, DeviceState.DISCONNECTED)
        assert "no frame for 1 s" in driver.status().last_error
        assert sink.wait_texts(2, deadline_s=20) == ["IPCAM-1", "IPCAM-2"]
        wait_state(driver, DeviceState.CONNECTED)
        assert camera.connections >= 2
    finally:
        camera.close()


def test_opencv_decoders_read_a_clean_qr_and_skip_1d() -> None:
    from posedge.drivers.scanners.decoders import OpenCvQrDecoder

    frame = synthetic.place(synthetic.render_qr("CV-QR-1", 6))
    for aruco in (False, True):
        assert [d.text for d in OpenCvQrDecoder(("qr",), aruco=aruco).decode(frame)] == ["CV-QR-1"]
    assert OpenCvQrDecoder(("ean13",)).decode(frame) == []


def test_the_empty_frame_gate_loses_no_read_and_turns_empty_counters_away() -> None:
    """GIVEN the synthetic degraded codes (every degradation, QR and 1D, as bench/scanners.py makes them)
    WHEN  the pipeline decodes each frame with its gate and without it (everything on every frame)
    THEN  both read the same codes, and the gate sends the empty counters home after the first decoder."""
    symbologies = ("qr", "ean13", "code128")
    # A budget no frame reaches: what is compared is what the gate lets through, not this machine's speed.
    gated = FrameDecoder(build_chain(("zxing", "pyzbar"), symbologies)[0], symbologies, budget_s=60)
    ungated = FrameDecoder(build_chain(("zxing", "pyzbar"), symbologies)[0], symbologies, budget_s=60, gate=False)
    for d_index, degradation in enumerate(synthetic.DEGRADATIONS):
        for seed in range(1000 * d_index, 1000 * d_index + 4):
            ean = synthetic.ean13_full(f"69{seed:010d}")
            for frame in (synthetic.scene(synthetic.render_qr(f"https://m.example.cn/c/{seed:05d}", 4), degradation,
                                          seed, False),
                          synthetic.scene(synthetic.render_linear(ean, "ean13", 2), degradation, seed, True),
                          synthetic.scene(synthetic.render_linear(f"PO{seed:08d}", "code128", 2), degradation, seed,
                                          True)):
                assert {d.text for d in gated.decode(frame)} == {d.text for d in ungated.decode(frame)}, degradation
    assert ungated.stats["read_extra"] > 0  # the set holds codes only the extra effort reads
    empties = [synthetic.empty_frame(seed) for seed in range(20)]
    assert all(gated.decode(frame) == [] for frame in empties)
    assert gated.stats["gated_out"] >= 18, gated.stats
