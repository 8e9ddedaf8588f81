//! YUYV / NV12 / I420 / RGB24 frames of any declared size and any byte count.
#![no_main]

use convnext_edge::camera::{convert, Frame, PixelFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let format = [
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::I420,
        PixelFormat::Rgb24,
    ][data[0] as usize % 4];
    let width = u16::from_le_bytes([data[1], data[2]]) as u32;
    let height = u16::from_le_bytes([data[3], data[4]]) as u32;
    let frame = Frame::new(data[5..].to_vec(), format, (width, height), 0);
    if let Ok(rgb) = convert::to_rgb(&frame) {
        assert_eq!(rgb.dimensions(), (width, height));
    }
});
