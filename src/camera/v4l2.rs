//! `v4l2:/dev/videoN`: USB/UVC cameras through V4L2 memory-mapped streaming (the `v4l` crate).
//!
//! Format negotiation: the format asked for with `--format`, else MJPEG (least USB bandwidth,
//! highest frame rates on UVC cameras), else YUYV, else NV12 or I420. The driver may adjust
//! the size; the frame size it reports is the one used.

use std::path::PathBuf;
use std::time::Duration;

use v4l::buffer::Type;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::{ErrorKind, Frame, FrameSource, PixelFormat, SourceError, SourceOptions};

/// How long to wait for a frame before declaring the camera gone.
const FRAME_TIMEOUT: Duration = Duration::from_secs(3);

pub struct V4l2Source {
    name: String,
    path: PathBuf,
    opts: SourceOptions,
    stream: Option<MmapStream<'static>>,
    format: PixelFormat,
    size: (u32, u32),
    stride: u32,
    seq: u64,
}

/// The pixel format a V4L2 FourCC carries, if we decode it.
pub(crate) fn format_of(fourcc: &[u8; 4]) -> Option<PixelFormat> {
    match fourcc {
        b"MJPG" | b"JPEG" => Some(PixelFormat::Mjpeg),
        b"YUYV" => Some(PixelFormat::Yuyv),
        b"NV12" => Some(PixelFormat::Nv12),
        b"YU12" => Some(PixelFormat::I420),
        b"RGB3" => Some(PixelFormat::Rgb24),
        _ => None,
    }
}

/// Picks the FourCC to ask for among those the device offers.
pub(crate) fn choose(offered: &[[u8; 4]], want: Option<PixelFormat>) -> Result<[u8; 4], String> {
    let preference = [
        PixelFormat::Mjpeg,
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::I420,
        PixelFormat::Rgb24,
    ];
    let order: Vec<PixelFormat> = match want {
        Some(w) => vec![w],
        None => preference.to_vec(),
    };
    order
        .iter()
        .find_map(|f| offered.iter().find(|o| format_of(o) == Some(*f)).copied())
        .ok_or_else(|| {
            let list: Vec<String> = offered
                .iter()
                .map(|o| String::from_utf8_lossy(o).into_owned())
                .collect();
            let asked = want.map_or("MJPEG, YUYV, NV12, YU12 or RGB3".to_owned(), |w| {
                format!("{w:?}")
            });
            format!(
                "device offers {} but not {asked}",
                if list.is_empty() {
                    "no formats".into()
                } else {
                    list.join(", ")
                }
            )
        })
}

impl V4l2Source {
    pub fn open(name: &str, path: PathBuf, opts: &SourceOptions) -> Result<Self, SourceError> {
        let mut s = V4l2Source {
            name: name.to_owned(),
            path,
            opts: opts.clone(),
            stream: None,
            format: PixelFormat::Mjpeg,
            size: (0, 0),
            stride: 0,
            seq: 0,
        };
        s.start(true)
            .map_err(|(kind, msg)| SourceError::new(kind, name, msg))?;
        Ok(s)
    }

    /// `first`: a missing device is a configuration error when opening, but an unplugged camera
    /// when reopening.
    fn start(&mut self, first: bool) -> Result<(), (ErrorKind, String)> {
        let gone = |e: std::io::Error| {
            (
                ErrorKind::Disconnected,
                format!("{}: {e}", self.path.display()),
            )
        };
        let config = |m: String| (ErrorKind::Config, format!("{}: {m}", self.path.display()));
        let dev = Device::with_path(&self.path).map_err(|e| {
            if first && e.kind() == std::io::ErrorKind::NotFound {
                config("no such device".into())
            } else {
                gone(e)
            }
        })?;
        let offered: Vec<[u8; 4]> = dev
            .enum_formats()
            .map_err(gone)?
            .into_iter()
            .map(|d| d.fourcc.repr)
            .collect();
        let fourcc = choose(&offered, self.opts.format).map_err(config)?;
        let mut fmt = dev.format().map_err(gone)?;
        let (w, h) = self.opts.size.unwrap_or((640, 480));
        fmt.width = w;
        fmt.height = h;
        fmt.fourcc = FourCC::new(&fourcc);
        let fmt = dev.set_format(&fmt).map_err(gone)?;
        let format = format_of(&fmt.fourcc.repr).ok_or_else(|| {
            config(format!(
                "driver switched to unsupported format {}",
                String::from_utf8_lossy(&fmt.fourcc.repr)
            ))
        })?;
        if let Some(fps) = self.opts.fps.filter(|f| *f >= 1.0) {
            // Not every driver supports frame intervals; the camera's own rate is kept then.
            let _ = dev.set_params(&Parameters::with_fps(fps.round() as u32));
        }
        let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, 4).map_err(gone)?;
        stream.set_timeout(FRAME_TIMEOUT);
        self.format = format;
        self.size = (fmt.width, fmt.height);
        self.stride = fmt.stride;
        self.stream = Some(stream);
        Ok(())
    }
}

/// Copies a frame without the driver's row padding (packed formats only; planar drivers pad
/// rarely and are passed through).
fn packed(format: PixelFormat, (w, h): (u32, u32), stride: u32, buf: &[u8]) -> Vec<u8> {
    let row = match format {
        PixelFormat::Yuyv => w.div_ceil(2) * 4,
        PixelFormat::Rgb24 => w * 3,
        _ => w,
    } as usize;
    let stride = stride as usize;
    if stride <= row || format != PixelFormat::Yuyv && format != PixelFormat::Rgb24 {
        return buf.to_vec();
    }
    buf.chunks(stride)
        .take(h as usize)
        .flat_map(|r| &r[..row.min(r.len())])
        .copied()
        .collect()
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        let stream = self.stream.as_mut().ok_or_else(|| {
            SourceError::new(ErrorKind::Disconnected, &self.name, "camera is closed")
        })?;
        let (buf, meta) = match stream.next() {
            Ok(x) => x,
            Err(e) => {
                self.stream = None;
                return Err(SourceError::new(
                    ErrorKind::Disconnected,
                    &self.name,
                    format!("capture failed: {e}"),
                ));
            }
        };
        let used = (meta.bytesused as usize).min(buf.len());
        if used == 0 {
            return Err(SourceError::new(
                ErrorKind::Corrupt,
                &self.name,
                "empty frame",
            ));
        }
        let data = packed(self.format, self.size, self.stride, &buf[..used]);
        self.seq += 1;
        Ok(Frame::new(data, self.format, self.size, self.seq - 1))
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        self.stream = None;
        self.start(false)
            .map_err(|(kind, msg)| SourceError::new(kind, &self.name, msg))
    }

    fn is_live(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_mjpeg_and_lists_offers() {
        assert_eq!(choose(&[*b"YUYV", *b"MJPG"], None).unwrap(), *b"MJPG");
        assert_eq!(
            choose(&[*b"YUYV", *b"MJPG"], Some(PixelFormat::Yuyv)).unwrap(),
            *b"YUYV"
        );
        let err = choose(&[*b"GREY", *b"H264"], None).unwrap_err();
        assert!(err.contains("offers GREY, H264"), "{err}");
        let err = choose(&[*b"YUYV"], Some(PixelFormat::Mjpeg)).unwrap_err();
        assert!(err.contains("offers YUYV but not Mjpeg"), "{err}");
    }
}
