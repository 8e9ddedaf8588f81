#!/usr/bin/env python3
"""Recorded camera frames and what OpenCV / libjpeg-turbo (through Pillow) decode them to, for
tests/camera.rs.

  python models/make_camera_fixtures.py      # writes tests/data/camera/ and its manifest.json

- frame.{yuyv,nv12,i420}: a 160x120 photo crop in BT.601 limited range as cameras send it; the
  4:2:0 planes come from OpenCV's RGB->I420, YUYV from the same chroma repeated per row pair.
  expected_{yuyv,nv12,i420}.png: OpenCV's YUV->RGB of those bytes (the reference).
- frame.jpg (4:2:2, q85, libjpeg's standard Huffman tables, as UVC cameras encode) and
  frame_nodht.jpg (the same bytes without the DHT segment, as many UVC cameras send);
  expected_jpeg.png: libjpeg-turbo's decode of frame.jpg.
- stream.mjpeg: three JPEGs back to back, the first with an APP1 segment holding FF D9 (an EXIF
  thumbnail's end marker) to catch naive splitters; stream_frames.json lists each frame's length.
- digits.mjpeg: the ten digit samples as an MJPEG recording (q95), for the live loop tests.
"""

import hashlib
import io
import json
import os

import cv2
import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "camera")
W, H = 160, 120


def photo():
    img = Image.open(os.path.join(HERE, "images", "coffee.png")).convert("RGB")
    img = img.resize((W * 2, H * 2), Image.BICUBIC).crop((W // 2, H // 2, W // 2 + W, H // 2 + H))
    return np.asarray(img)


def jpeg_bytes(rgb, quality, subsampling):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling=subsampling, optimize=False)
    return buf.getvalue()


def strip_dht(jpeg):
    out, p = bytearray(jpeg[:2]), 2
    while p < len(jpeg):
        marker, length = jpeg[p + 1], int.from_bytes(jpeg[p + 2:p + 4], "big")
        if marker == 0xDA:
            out += jpeg[p:]
            break
        if marker != 0xC4:
            out += jpeg[p:p + 2 + length]
        p += 2 + length
    return bytes(out)


def with_app1(jpeg, payload):
    seg = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + seg + jpeg[2:]


def save_png(name, rgb):
    Image.fromarray(rgb).save(os.path.join(OUT, name))


def main():
    os.makedirs(OUT, exist_ok=True)
    rgb = photo()
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # (H*3/2, W) uint8
    y = i420[:H]
    u = i420[H:H + H // 4].reshape(H // 2, W // 2)
    v = i420[H + H // 4:].reshape(H // 2, W // 2)
    nv12 = np.concatenate([y.reshape(-1), np.stack([u, v], -1).reshape(-1)]).reshape(H * 3 // 2, W)
    u422, v422 = np.repeat(u, 2, 0), np.repeat(v, 2, 0)
    yuyv = np.stack([y[:, 0::2], u422, y[:, 1::2], v422], -1).reshape(H, W, 2)
    for name, data, code in [("yuyv", yuyv, cv2.COLOR_YUV2RGB_YUYV),
                             ("nv12", nv12, cv2.COLOR_YUV2RGB_NV12),
                             ("i420", i420, cv2.COLOR_YUV2RGB_I420)]:
        open(os.path.join(OUT, "frame." + name), "wb").write(np.ascontiguousarray(data).tobytes())
        save_png(f"expected_{name}.png", cv2.cvtColor(np.ascontiguousarray(data), code))

    jpg = jpeg_bytes(rgb, 85, 1)  # 4:2:2
    nodht = strip_dht(jpg)
    assert b"\xff\xc4" not in nodht[:nodht.index(b"\xff\xda")]
    open(os.path.join(OUT, "frame.jpg"), "wb").write(jpg)
    open(os.path.join(OUT, "frame_nodht.jpg"), "wb").write(nodht)
    save_png("expected_jpeg.png", np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")))

    frames = [with_app1(jpg, b"Exif\x00\x00thumb\xff\xd8\x00\xff\xd9end"),
              jpeg_bytes(rgb[::-1].copy(), 70, 2),
              nodht]
    open(os.path.join(OUT, "stream.mjpeg"), "wb").write(b"".join(frames))
    json.dump([len(f) for f in frames], open(os.path.join(OUT, "stream_frames.json"), "w"))

    digits = os.path.join(HERE, "digits", "samples")
    with open(os.path.join(OUT, "digits.mjpeg"), "wb") as f:
        for d in range(10):
            img = np.asarray(Image.open(os.path.join(digits, f"{d}.png")).convert("RGB"))
            f.write(jpeg_bytes(img, 95, 0))

    manifest = {}
    for name in sorted(os.listdir(OUT)):
        if name != "manifest.json":
            manifest[name] = hashlib.sha256(open(os.path.join(OUT, name), "rb").read()).hexdigest()
    json.dump({"opencv": cv2.__version__, "pillow": Image.__version__, "sha256": manifest},
              open(os.path.join(OUT, "manifest.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
