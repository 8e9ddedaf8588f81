//! Camera frame → 8-bit RGB.
//!
//! YUV frames are taken as BT.601 limited range, which is what UVC cameras, `rpicam-vid` and
//! Jetson's `nvvidconv` produce by default. JPEG frames are decoded with zune-jpeg (identical
//! output on x86 and NEON) after restoring missing Huffman tables.

use image::RgbImage;
use yuv::{YuvRange, YuvStandardMatrix};

use super::{mjpeg, Frame, PixelFormat};

/// Largest frame side accepted, so a corrupt header cannot ask for a huge allocation.
pub const MAX_SIDE: u32 = crate::preprocess::MAX_IMAGE_SIDE;

/// Converts a frame to RGB; the error says what is wrong with it (the frame is then skipped).
pub fn to_rgb(frame: &Frame) -> Result<RgbImage, String> {
    crate::error::catch_panic(|| to_rgb_unguarded(frame))?
}

fn to_rgb_unguarded(frame: &Frame) -> Result<RgbImage, String> {
    let (w, h) = (frame.width, frame.height);
    match frame.format {
        PixelFormat::Mjpeg => decode_jpeg(&frame.data),
        PixelFormat::Encoded => {
            crate::preprocess::decode_limited(&frame.data).map_err(|e| format!("bad image: {e}"))
        }
        raw => {
            let need = raw
                .frame_len(w, h)
                .filter(|_| w > 0 && h > 0 && w <= MAX_SIDE && h <= MAX_SIDE)
                .ok_or_else(|| format!("invalid {raw:?} frame size {w}x{h}"))?;
            if frame.data.len() < need {
                return Err(format!(
                    "{raw:?} frame of {w}x{h} needs {need} bytes, got {}",
                    frame.data.len()
                ));
            }
            raw_to_rgb(raw, &frame.data[..need], w, h)
        }
    }
}

fn raw_to_rgb(format: PixelFormat, data: &[u8], w: u32, h: u32) -> Result<RgbImage, String> {
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    let (range, matrix) = (YuvRange::Limited, YuvStandardMatrix::Bt601);
    let chroma_w = w.div_ceil(2);
    let y_len = (w * h) as usize;
    let result = match format {
        PixelFormat::Yuyv => {
            let img = yuv::YuvPackedImage {
                yuy: data,
                yuy_stride: chroma_w * 4,
                width: w,
                height: h,
            };
            yuv::yuyv422_to_rgb(&img, &mut rgb, w * 3, range, matrix)
        }
        PixelFormat::Nv12 => {
            let img = yuv::YuvBiPlanarImage {
                y_plane: &data[..y_len],
                y_stride: w,
                uv_plane: &data[y_len..],
                uv_stride: chroma_w * 2,
                width: w,
                height: h,
            };
            yuv::yuv_nv12_to_rgb(&img, &mut rgb, w * 3, range, matrix, Default::default())
        }
        PixelFormat::I420 => {
            let c_len = (chroma_w * h.div_ceil(2)) as usize;
            let img = yuv::YuvPlanarImage {
                y_plane: &data[..y_len],
                y_stride: w,
                u_plane: &data[y_len..y_len + c_len],
                u_stride: chroma_w,
                v_plane: &data[y_len + c_len..y_len + 2 * c_len],
                v_stride: chroma_w,
                width: w,
                height: h,
            };
            yuv::yuv420_to_rgb(&img, &mut rgb, w * 3, range, matrix)
        }
        PixelFormat::Rgb24 => {
            rgb.copy_from_slice(data);
            Ok(())
        }
        PixelFormat::Mjpeg | PixelFormat::Encoded => unreachable!("compressed formats"),
    };
    result.map_err(|e| format!("{format:?} conversion failed: {e}"))?;
    RgbImage::from_raw(w, h, rgb).ok_or_else(|| "frame buffer size mismatch".into())
}

/// Decodes one JPEG (camera MJPEG frame), inserting the standard Huffman tables if it has none.
pub fn decode_jpeg(jpeg: &[u8]) -> Result<RgbImage, String> {
    crate::error::catch_panic(|| decode_jpeg_unguarded(jpeg))?
}

fn decode_jpeg_unguarded(jpeg: &[u8]) -> Result<RgbImage, String> {
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let data = mjpeg::with_huffman_tables(jpeg);
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(MAX_SIDE as usize)
        .set_max_height(MAX_SIDE as usize);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(&data[..]),
        options,
    );
    let pixels = dec.decode().map_err(|e| format!("bad JPEG frame: {e:?}"))?;
    let info = dec.info().ok_or("bad JPEG frame: no header")?;
    let (w, h) = (info.width as u32, info.height as u32);
    RgbImage::from_raw(w, h, pixels).ok_or_else(|| format!("bad JPEG frame: {w}x{h} size mismatch"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn frame(format: PixelFormat, data: Vec<u8>, w: u32, h: u32) -> Frame {
        Frame {
            data,
            format,
            width: w,
            height: h,
            seq: 0,
            captured: Instant::now(),
            origin: None,
        }
    }

    #[test]
    fn grey_yuv_is_grey_in_every_layout() {
        // Limited range: Y=126 → (126-16)*255/219 ≈ 128.
        for format in [PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::I420] {
            let len = format.frame_len(6, 4).unwrap();
            let data = if format == PixelFormat::Yuyv {
                [126u8, 128].repeat(len / 2)
            } else {
                let mut d = vec![126u8; 24];
                d.resize(len, 128);
                d
            };
            let rgb = to_rgb(&frame(format, data, 6, 4)).unwrap();
            assert!(
                rgb.pixels()
                    .all(|p| p.0.iter().all(|&c| c.abs_diff(128) <= 1)),
                "{format:?}"
            );
        }
    }

    #[test]
    fn short_and_bad_frames_are_errors() {
        let err = to_rgb(&frame(PixelFormat::Yuyv, vec![0; 10], 640, 480)).unwrap_err();
        assert!(err.contains("needs 614400 bytes, got 10"), "{err}");
        assert!(to_rgb(&frame(PixelFormat::Nv12, vec![], 0, 480)).is_err());
        assert!(to_rgb(&frame(PixelFormat::Mjpeg, vec![0xFF, 0xD8, 0xFF], 0, 0)).is_err());
        assert!(to_rgb(&frame(PixelFormat::Encoded, b"not an image".to_vec(), 0, 0)).is_err());
    }
}
