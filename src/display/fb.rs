//! `fb:/dev/fbN` — the Linux framebuffer (HDMI or DSI screen without a desktop).
//!
//! The geometry comes from sysfs (`/sys/class/graphics/fbN/{virtual_size,bits_per_pixel,
//! stride}`) rather than ioctls, so the sink is tested against an ordinary file standing in for
//! the device and a fake sysfs tree. Frames are scaled to fit, centred, and written with
//! positioned writes: 16-bit RGB565, 24-bit BGR and 32-bit XRGB8888, the layouts of the Pi's
//! and Jetson's console framebuffers.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{fit, Sink, SinkError, SinkErrorKind, View};
use crate::machine::Sysfs;

/// A framebuffer's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FbGeometry {
    /// Visible width in pixels.
    pub width: u32,
    /// Visible height in pixels.
    pub height: u32,
    /// Bits per pixel (16 or 32 are drawn).
    pub bits_per_pixel: u32,
    /// Bytes per line.
    pub stride: u32,
}

impl FbGeometry {
    /// Reads the geometry of framebuffer `fb` (e.g. `fb0`) from sysfs.
    pub fn from_sysfs(sys: &Sysfs, fb: &str) -> Result<Self, String> {
        let dir = sys.sys.join("class/graphics").join(fb);
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("{}: {e}", dir.join(f).display()))
        };
        let size = read("virtual_size")?;
        let (w, h) = size
            .split_once(',')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .ok_or_else(|| format!("{}: bad virtual_size '{size}'", dir.display()))?;
        let bpp: u32 = read("bits_per_pixel")?
            .parse()
            .map_err(|_| format!("{}: bad bits_per_pixel", dir.display()))?;
        let stride = match read("stride") {
            Ok(s) => s
                .parse()
                .map_err(|_| format!("{}: bad stride", dir.display()))?,
            Err(_) => w * bpp.div_ceil(8),
        };
        let g = FbGeometry {
            width: w,
            height: h,
            bits_per_pixel: bpp,
            stride,
        };
        if ![16, 24, 32].contains(&bpp) || w == 0 || h == 0 || stride < w * bpp / 8 {
            return Err(format!("{}: unsupported framebuffer {g:?}", dir.display()));
        }
        Ok(g)
    }

    fn len(&self) -> usize {
        self.stride as usize * self.height as usize
    }
}

/// Draws frames on a framebuffer device.
pub struct FbSink {
    name: String,
    file: File,
    geometry: FbGeometry,
    buf: Vec<u8>,
}

impl FbSink {
    /// Opens `path` (e.g. `/dev/fb0`) with the geometry sysfs gives for its name.
    pub fn open(name: &str, path: &Path, sys: &Sysfs) -> Result<Self, SinkError> {
        let unavailable = |m: String| SinkError::new(SinkErrorKind::Unavailable, name, m);
        let fb = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| unavailable(format!("{}: not a framebuffer path", path.display())))?;
        let geometry = FbGeometry::from_sysfs(sys, &fb).map_err(unavailable)?;
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        Ok(FbSink {
            name: name.to_owned(),
            file,
            geometry,
            buf: vec![0; geometry.len()],
        })
    }

    /// The geometry in use.
    pub fn geometry(&self) -> FbGeometry {
        self.geometry
    }
}

/// Stores one RGB pixel in the framebuffer's layout.
fn put(dst: &mut [u8], bpp: u32, [r, g, b]: [u8; 3]) {
    match bpp {
        16 => {
            let v = (u16::from(r) >> 3) << 11 | (u16::from(g) >> 2) << 5 | u16::from(b) >> 3;
            dst[..2].copy_from_slice(&v.to_le_bytes());
        }
        24 => dst[..3].copy_from_slice(&[b, g, r]),
        _ => dst[..4].copy_from_slice(&[b, g, r, 0xFF]),
    }
}

impl Sink for FbSink {
    fn show(&mut self, view: &View) -> Result<(), SinkError> {
        let g = self.geometry;
        let (img, (ox, oy)) = fit(view.annotated, g.width, g.height);
        let bytes = (g.bits_per_pixel / 8) as usize;
        self.buf.fill(0);
        for (y, row) in img.rows().enumerate() {
            let start = (oy as usize + y) * g.stride as usize + ox as usize * bytes;
            for (x, p) in row.enumerate() {
                put(&mut self.buf[start + x * bytes..], g.bits_per_pixel, p.0);
            }
        }
        self.file
            .write_all_at(&self.buf, 0)
            .map_err(|e| SinkError::new(SinkErrorKind::Write, &self.name, e.to_string()))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb565_packs_high_bits() {
        let mut d = [0u8; 2];
        put(&mut d, 16, [0xFF, 0x00, 0xFF]);
        assert_eq!(u16::from_le_bytes(d), 0xF81F);
        let mut d = [0u8; 4];
        put(&mut d, 32, [1, 2, 3]);
        assert_eq!(d, [3, 2, 1, 0xFF]);
    }
}
