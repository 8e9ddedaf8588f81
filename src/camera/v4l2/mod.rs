//! `v4l2:/dev/videoN`: USB/UVC cameras through V4L2 memory-mapped streaming, on ioctl
//! definitions of our own ([`sys`]) so that no build needs libclang.
//!
//! Format negotiation: the format asked for with `--format`, else MJPEG (least USB bandwidth,
//! highest frame rates on UVC cameras), else YUYV, else NV12 or I420. The driver may adjust
//! the size; the frame size it reports is the one used.

mod sys;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sys::Zeroed;

use crate::camera::{ErrorKind, Frame, FrameSource, PixelFormat, SourceError, SourceOptions};

/// How long to wait for a frame before declaring the camera gone.
const FRAME_TIMEOUT: Duration = Duration::from_secs(3);
/// Buffers the driver fills in turn: one being read, the others filling meanwhile.
const BUFFERS: u32 = 4;

pub struct V4l2Source {
    name: String,
    path: PathBuf,
    opts: SourceOptions,
    stream: Option<Stream>,
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

    /// `first`: a missing device is not there yet when opening, but an unplugged camera when
    /// reopening.
    fn start(&mut self, first: bool) -> Result<(), (ErrorKind, String)> {
        let gone = |e: std::io::Error| {
            (
                ErrorKind::Disconnected,
                format!("{}: {e}", self.path.display()),
            )
        };
        let config = |m: String| (ErrorKind::Config, format!("{}: {m}", self.path.display()));
        let dev = Device::open(&self.path).map_err(|e| {
            if first && e.kind() == io::ErrorKind::NotFound {
                let path = self.path.display();
                (ErrorKind::Missing, format!("{path}: no such device"))
            } else {
                gone(e)
            }
        })?;
        dev.check_capture().map_err(config)?;
        let offered = dev.formats().map_err(gone)?;
        let fourcc = choose(&offered, self.opts.format).map_err(config)?;
        let (w, h) = self.opts.size.unwrap_or((640, 480));
        let fmt = dev.set_format(w, h, fourcc).map_err(gone)?;
        let got = fmt.pixelformat.to_le_bytes();
        let format = format_of(&got).ok_or_else(|| {
            config(format!(
                "driver switched to unsupported format {}",
                String::from_utf8_lossy(&got)
            ))
        })?;
        if let Some(fps) = self.opts.fps.filter(|f| *f >= 1.0) {
            // Not every driver supports frame intervals; the camera's own rate is kept then.
            let _ = dev.set_fps(fps.round() as u32);
        }
        let stream = Stream::start(dev, BUFFERS).map_err(gone)?;
        let (size, stride) = ((fmt.width, fmt.height), fmt.bytesperline);
        self.format = format;
        self.size = size;
        self.stride = stride;
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
        let (format, size, stride) = (self.format, self.size, self.stride);
        let captured = stream.next(FRAME_TIMEOUT, |buf| packed(format, size, stride, buf));
        let data = match captured {
            Ok(Some(data)) => data,
            Ok(None) => {
                return Err(SourceError::new(
                    ErrorKind::Corrupt,
                    &self.name,
                    "empty or damaged frame",
                ))
            }
            Err(e) => {
                self.stream = None;
                return Err(SourceError::new(
                    ErrorKind::Disconnected,
                    &self.name,
                    format!("capture failed: {e}"),
                ));
            }
        };
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

/// An open V4L2 device node, before streaming.
struct Device {
    file: File,
}

impl Device {
    fn open(path: &Path) -> io::Result<Device> {
        // Non-blocking, so that a dequeue never waits past the poll's deadline.
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Device { file })
    }

    /// Refuses nodes that cannot stream video frames (a UVC camera's second node carries only
    /// metadata, a codec or a radio is not a camera).
    fn check_capture(&self) -> Result<(), String> {
        let mut cap = sys::Capability::zeroed();
        sys::VIDIOC_QUERYCAP
            .call(self.file.as_fd(), &mut cap)
            .map_err(|e| format!("not a V4L2 device ({e})"))?;
        let caps = if cap.capabilities & sys::CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        let needed = sys::CAP_VIDEO_CAPTURE | sys::CAP_STREAMING;
        if caps & needed != needed {
            let card = String::from_utf8_lossy(&cap.card);
            return Err(format!(
                "{} is not a streaming video capture node (capabilities {caps:#x})",
                card.trim_end_matches('\0')
            ));
        }
        Ok(())
    }

    /// The FourCCs the device offers for capture, in its order.
    fn formats(&self) -> io::Result<Vec<[u8; 4]>> {
        let mut offered = Vec::new();
        for index in 0.. {
            let mut desc = sys::FmtDesc::zeroed();
            desc.index = index;
            desc.type_ = sys::BUF_TYPE_VIDEO_CAPTURE;
            match sys::VIDIOC_ENUM_FMT.call(self.file.as_fd(), &mut desc) {
                Ok(()) => offered.push(desc.pixelformat.to_le_bytes()),
                // The end of the list.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(offered)
    }

    /// Asks for a size and format; returns what the driver chose.
    fn set_format(&self, width: u32, height: u32, fourcc: [u8; 4]) -> io::Result<sys::PixFormat> {
        let mut fmt = sys::Format::zeroed();
        fmt.type_ = sys::BUF_TYPE_VIDEO_CAPTURE;
        // SAFETY: the union is zeroed, and `pix` is the member a capture format uses.
        let pix = unsafe { &mut fmt.fmt.pix };
        pix.width = width;
        pix.height = height;
        pix.pixelformat = sys::fourcc(fourcc);
        pix.field = sys::FIELD_ANY;
        sys::VIDIOC_S_FMT.call(self.file.as_fd(), &mut fmt)?;
        // SAFETY: the kernel fills `pix` for a capture format.
        Ok(unsafe { fmt.fmt.pix })
    }

    fn set_fps(&self, fps: u32) -> io::Result<()> {
        let mut parm = sys::StreamParm::zeroed();
        parm.type_ = sys::BUF_TYPE_VIDEO_CAPTURE;
        // SAFETY: the union is zeroed, and `capture` is the member a capture stream uses.
        let capture = unsafe { &mut parm.parm.capture };
        capture.capability = sys::CAP_TIMEPERFRAME;
        capture.timeperframe = sys::Fract {
            numerator: 1,
            denominator: fps,
        };
        sys::VIDIOC_S_PARM.call(self.file.as_fd(), &mut parm)
    }
}

/// A device streaming into buffers mapped from the driver.
struct Stream {
    file: File,
    maps: Vec<Mapping>,
}

/// One driver buffer mapped into our memory.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mappings belong to this stream alone, are read only through `&mut Stream`, and
// stay valid until `Drop` unmaps them; moving the stream to another thread changes none of that.
unsafe impl Send for Stream {}

impl Stream {
    /// Asks for `count` mmap buffers, maps and queues each, and starts streaming.
    fn start(dev: Device, count: u32) -> io::Result<Stream> {
        let fd = dev.file.as_fd();
        let mut req = sys::RequestBuffers::zeroed();
        req.count = count;
        req.type_ = sys::BUF_TYPE_VIDEO_CAPTURE;
        req.memory = sys::MEMORY_MMAP;
        sys::VIDIOC_REQBUFS.call(fd, &mut req)?;
        if req.count == 0 {
            return Err(io::Error::other("the driver gave no capture buffers"));
        }
        // Built before mapping, so that a failure part way unmaps what was mapped.
        let mut stream = Stream {
            file: dev.file,
            maps: Vec::with_capacity(req.count as usize),
        };
        for index in 0..req.count {
            let mut buf = stream.buffer(index);
            sys::VIDIOC_QUERYBUF.call(stream.file.as_fd(), &mut buf)?;
            #[allow(clippy::unnecessary_fallible_conversions)] // off_t is 32-bit on armv7
            // SAFETY: QUERYBUF of an mmap buffer fills `offset`.
            let offset = libc::off_t::try_from(unsafe { buf.m.offset })
                .map_err(|_| io::Error::other("buffer offset out of range"))?;
            let len = buf.length as usize;
            // SAFETY: a fresh shared mapping of the driver's buffer at the offset and length
            // it gave; nothing else refers to this range of our address space.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    stream.file.as_raw_fd(),
                    offset,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            stream.maps.push(Mapping { ptr, len });
            sys::VIDIOC_QBUF.call(stream.file.as_fd(), &mut buf)?;
        }
        let mut kind = sys::BUF_TYPE_VIDEO_CAPTURE as i32;
        sys::VIDIOC_STREAMON.call(stream.file.as_fd(), &mut kind)?;
        Ok(stream)
    }

    fn buffer(&self, index: u32) -> sys::Buffer {
        let mut buf = sys::Buffer::zeroed();
        buf.index = index;
        buf.type_ = sys::BUF_TYPE_VIDEO_CAPTURE;
        buf.memory = sys::MEMORY_MMAP;
        buf
    }

    /// Waits up to `timeout` for a filled buffer and hands its bytes to `read`; `None` for a
    /// frame the driver marked damaged or left empty. A dequeue alone would wait for ever on a
    /// camera that stops sending without going away.
    fn next<T>(
        &mut self,
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> T,
    ) -> io::Result<Option<T>> {
        let deadline = Instant::now() + timeout;
        let mut buf = self.buffer(0);
        loop {
            match sys::VIDIOC_DQBUF.call(self.file.as_fd(), &mut buf) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !self.wait_readable(left)? {
                        let secs = timeout.as_secs_f32();
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no frame in {secs} s"),
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let map = self.maps.get(buf.index as usize).ok_or_else(|| {
            io::Error::other(format!("driver returned unknown buffer {}", buf.index))
        })?;
        let used = (buf.bytesused as usize).min(map.len);
        let result = (buf.flags & sys::BUF_FLAG_ERROR == 0 && used > 0).then(|| {
            // SAFETY: the mapping is `map.len` bytes long and `used` is at most that; the driver
            // does not write to a dequeued buffer until it is queued again below.
            read(unsafe { std::slice::from_raw_parts(map.ptr as *const u8, used) })
        });
        sys::VIDIOC_QBUF.call(self.file.as_fd(), &mut buf)?;
        Ok(result)
    }

    /// Polls for a filled buffer; `false` when `timeout` passed without one.
    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call, and the count says one.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            // A signal: the caller dequeues again and, if still empty, polls what is left.
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(true)
            } else {
                Err(e)
            };
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Err(io::Error::other("the device reported an error or hang-up"));
        }
        Ok(n > 0)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut kind = sys::BUF_TYPE_VIDEO_CAPTURE as i32;
        let _ = sys::VIDIOC_STREAMOFF.call(self.file.as_fd(), &mut kind);
        for map in &self.maps {
            // SAFETY: each mapping was made by `start` with this length and is unmapped once.
            unsafe { libc::munmap(map.ptr, map.len) };
        }
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
