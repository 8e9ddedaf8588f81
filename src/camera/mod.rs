//! Camera frames: where they come from ([`FrameSource`]) and how they become RGB
//! ([`convert`]).
//!
//! Every source sits behind one small trait, in the manner of embedded-hal: a source yields
//! [`Frame`]s in the pixel format the device produced, and reports failures with an
//! [`ErrorKind`] that tells the live loop what to do — skip a corrupt frame, reopen a camera
//! that disappeared, stop at the end of a recording. This is what lets the loop be tested on a
//! machine without a camera: recorded frames and pipes stand in for devices.
//!
//! Source specs (`--source`):
//! - `v4l2:/dev/videoN` — USB/UVC cameras (YUYV or MJPEG), with the `v4l2` feature;
//! - `pipe:-` or `pipe:CMD` — an MJPEG or raw YUV stream on stdin or from a command
//!   (`rpicam-vid … --codec mjpeg -o -`, GStreamer `… ! fdsink`);
//! - `files:GLOB` or `files:DIR` — image files (JPEG, PNG) or raw frames (`.yuyv`, `.nv12`,
//!   `.i420`, needing a size), in name order;
//! - `replay:FILE` — a recorded stream (concatenated MJPEG, or raw frames) played at `--fps`;
//! - `test` — a moving synthetic pattern.
//!
//! ```
//! use convnext_edge::camera::{self, convert, SourceOptions};
//! let opts = SourceOptions { size: Some((64, 48)), fps: Some(0.0), ..Default::default() };
//! let mut source = camera::open("test", &opts)?;
//! let frame = source.next_frame()?;
//! let rgb = convert::to_rgb(&frame)?;
//! assert_eq!(rgb.dimensions(), (64, 48));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod convert;
pub mod mjpeg;
mod pattern;
mod stream;
#[cfg(feature = "v4l2")]
mod v4l2;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use pattern::TestPattern;
pub use stream::{FileSource, StreamSource};

/// How a frame's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PixelFormat {
    /// One JPEG image (Motion-JPEG frame), possibly without Huffman tables.
    Mjpeg,
    /// An encoded still image of any format the `image` crate reads (PNG, ...).
    Encoded,
    /// Packed 4:2:2, Y0 U Y1 V.
    Yuyv,
    /// Planar Y then interleaved UV, 4:2:0.
    Nv12,
    /// Planar Y, U, V, 4:2:0 (also called YUV420 / YU12).
    I420,
    /// Packed 8-bit RGB.
    Rgb24,
}

impl PixelFormat {
    /// Bytes of one frame of a raw format; `None` for compressed formats.
    pub fn frame_len(self, width: u32, height: u32) -> Option<usize> {
        let (w, h) = (width as usize, height as usize);
        let chroma = w.div_ceil(2) * h.div_ceil(2);
        match self {
            PixelFormat::Yuyv => Some(w.div_ceil(2) * 4 * h),
            PixelFormat::Nv12 | PixelFormat::I420 => Some(w * h + 2 * chroma),
            PixelFormat::Rgb24 => Some(w * h * 3),
            PixelFormat::Mjpeg | PixelFormat::Encoded => None,
        }
    }

    /// The raw format a file extension names (`yuyv`, `nv12`, `i420`/`yuv`, `rgb`) or the
    /// compressed one (`jpg`, `jpeg`, `mjpg`, `mjpeg`); other extensions are `Encoded`.
    pub fn from_extension(path: &Path) -> PixelFormat {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "yuyv" | "yuy2" => PixelFormat::Yuyv,
            "nv12" => PixelFormat::Nv12,
            "i420" | "yuv" | "yu12" => PixelFormat::I420,
            "rgb" => PixelFormat::Rgb24,
            "jpg" | "jpeg" | "mjpg" | "mjpeg" => PixelFormat::Mjpeg,
            _ => PixelFormat::Encoded,
        }
    }
}

impl std::str::FromStr for PixelFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mjpeg" | "mjpg" | "jpeg" => Ok(PixelFormat::Mjpeg),
            "yuyv" | "yuy2" => Ok(PixelFormat::Yuyv),
            "nv12" => Ok(PixelFormat::Nv12),
            "i420" | "yuv420" | "yu12" => Ok(PixelFormat::I420),
            "rgb" | "rgb24" => Ok(PixelFormat::Rgb24),
            other => Err(format!(
                "unknown pixel format '{other}' (expected mjpeg, yuyv, nv12, i420 or rgb24)"
            )),
        }
    }
}

/// Parses a frame size `WxH` (e.g. `640x480`).
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    s.split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .filter(|&(w, h): &(u32, u32)| w > 0 && h > 0)
        .ok_or_else(|| format!("expected WxH, e.g. 640x480, got '{s}'"))
}

/// One captured frame, as the device produced it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The bytes as the device produced them.
    pub data: Vec<u8>,
    /// How the bytes encode the pixels.
    pub format: PixelFormat,
    /// Pixel size; 0 for compressed frames until decoded.
    pub width: u32,
    /// Pixel height; 0 for compressed frames until decoded.
    pub height: u32,
    /// Number of the frame within its source, from 0.
    pub seq: u64,
    /// When the frame was captured (or read).
    pub captured: Instant,
    /// The file the frame was read from, for messages about it.
    pub origin: Option<PathBuf>,
}

impl Frame {
    /// A frame captured now, from no file.
    pub fn new(data: Vec<u8>, format: PixelFormat, (width, height): (u32, u32), seq: u64) -> Self {
        Frame {
            data,
            format,
            width,
            height,
            seq,
            captured: Instant::now(),
            origin: None,
        }
    }
}

/// What went wrong with a source, and so what the live loop does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// This frame is damaged; skip it and read the next.
    Corrupt,
    /// The device or stream went away (unplugged, command exited); reopen with backoff.
    Disconnected,
    /// A finite source (files, a recording, stdin) has no more frames.
    EndOfStream,
    /// The source cannot work as asked (bad spec, unsupported format).
    Config,
    /// The device or file is not there (yet): a USB camera that has not enumerated at boot,
    /// a recording not yet written. [`open_waiting`] waits for it; the live loop retries it as
    /// a disconnection.
    Missing,
}

/// A failure of a frame source, naming the source.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct SourceError {
    /// What kind of failure, for the loop to decide whether to reconnect.
    pub kind: ErrorKind,
    /// The source, as given (`v4l2:/dev/video0`, …).
    pub source_name: String,
    /// What went wrong.
    pub message: String,
}

impl SourceError {
    /// An error of `kind` from the source named `source_name`.
    pub fn new(
        kind: ErrorKind,
        source_name: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        SourceError {
            kind,
            source_name: source_name.into(),
            message: message.into(),
        }
    }
}

/// A camera or anything standing in for one.
pub trait FrameSource: Send {
    /// Blocks until the next frame is available.
    fn next_frame(&mut self) -> Result<Frame, SourceError>;
    /// Reopens the device or stream after [`ErrorKind::Disconnected`].
    fn reopen(&mut self) -> Result<(), SourceError>;
    /// Whether frames keep coming in real time (a camera, a paced replay), so that the live loop
    /// drops old frames when it falls behind; a non-live source (files) is read losslessly.
    fn is_live(&self) -> bool;
    /// The spec the source was opened from, for messages.
    fn name(&self) -> &str;
}

/// How to open a source: options from the command line.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// Requested frame size (V4L2), or the size of raw frames (pipes, raw files).
    pub size: Option<(u32, u32)>,
    /// Requested frame rate (V4L2) or playback rate (replay, files, test pattern).
    pub fps: Option<f32>,
    /// Pixel format of pipes and raw files, or the one to ask a V4L2 camera for.
    pub format: Option<PixelFormat>,
    /// Start again at the end of files and recordings.
    pub looped: bool,
    /// Largest compressed frame accepted from a stream before it is declared corrupt.
    pub max_frame_bytes: usize,
}

/// Default [`SourceOptions::max_frame_bytes`]: a 4K MJPEG frame at high quality is ~4 MB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Opens a source from its spec (see the module docs).
pub fn open(spec: &str, opts: &SourceOptions) -> Result<Box<dyn FrameSource>, SourceError> {
    let config = |msg: String| SourceError::new(ErrorKind::Config, spec, msg);
    let (scheme, arg) = spec.split_once(':').unwrap_or((spec, ""));
    match scheme {
        "test" => Ok(Box::new(TestPattern::new(
            opts.size.unwrap_or((640, 480)),
            opts.fps,
        ))),
        "files" => Ok(Box::new(FileSource::open(spec, arg, opts)?)),
        "replay" => Ok(Box::new(StreamSource::replay(spec, Path::new(arg), opts)?)),
        "pipe" if arg == "-" => Ok(Box::new(StreamSource::stdin(spec, opts)?)),
        "pipe" if !arg.is_empty() => Ok(Box::new(StreamSource::command(spec, arg, opts)?)),
        "v4l2" => open_v4l2(spec, arg, opts),
        _ if spec.starts_with("/dev/video") => open_v4l2(spec, spec, opts),
        _ => Err(config(
            "unknown source (expected v4l2:/dev/videoN, pipe:-, pipe:CMD, files:GLOB, \
             replay:FILE or test)"
                .into(),
        )),
    }
}

/// How long [`open_waiting`] waits for a missing source: seconds (`0`: not at all) or
/// `forever`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceTimeout(pub Option<Duration>);

impl std::str::FromStr for SourceTimeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "forever" {
            return Ok(SourceTimeout(None));
        }
        s.parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .map(|d| SourceTimeout(Some(d)))
            .ok_or_else(|| format!("expected seconds (>= 0) or 'forever', got '{s}'"))
    }
}

/// Waits between attempts to reach a source: `first`, then twice as long each time up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits that start at `first` and double up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

impl Default for Backoff {
    /// 0.25 s doubling to 5 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(5))
    }
}

/// [`open`], waiting for a source that is [`ErrorKind::Missing`] with `backoff` between tries,
/// for at most `timeout` (`None`: for ever), or until `stop` is set. `on_wait` sees each miss
/// and the wait before the next try. The last error is returned when the time is up; `Ok(None)`
/// when `stop` ended the wait.
///
/// ```
/// use std::sync::atomic::AtomicBool;
/// use std::time::Duration;
/// use convnext_edge::camera::{self, Backoff, ErrorKind, SourceOptions};
/// let stop = AtomicBool::new(false);
/// let mut misses = 0;
/// let err = camera::open_waiting(
///     "replay:/nonexistent/capture.mjpeg",
///     &SourceOptions::default(),
///     Some(Duration::from_millis(30)),
///     Backoff::new(Duration::from_millis(10), Duration::from_millis(10)),
///     &stop,
///     &mut |_, _| misses += 1,
/// )
/// .err()
/// .unwrap();
/// assert_eq!(err.kind, ErrorKind::Missing);
/// assert!(misses >= 2);
/// ```
pub fn open_waiting(
    spec: &str,
    opts: &SourceOptions,
    timeout: Option<Duration>,
    mut backoff: Backoff,
    stop: &AtomicBool,
    on_wait: &mut dyn FnMut(&SourceError, Duration),
) -> Result<Option<Box<dyn FrameSource>>, SourceError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let err = match open(spec, opts) {
            Ok(source) => return Ok(Some(source)),
            Err(e) if e.kind == ErrorKind::Missing => e,
            Err(e) => return Err(e),
        };
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Err(err);
        }
        let wait = backoff.next_wait().min(left.unwrap_or(Duration::MAX));
        on_wait(&err, wait);
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
    }
}

#[cfg(feature = "v4l2")]
fn open_v4l2(
    spec: &str,
    device: &str,
    opts: &SourceOptions,
) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(Box::new(v4l2::V4l2Source::open(
        spec,
        PathBuf::from(device),
        opts,
    )?))
}

#[cfg(not(feature = "v4l2"))]
fn open_v4l2(
    spec: &str,
    _device: &str,
    _opts: &SourceOptions,
) -> Result<Box<dyn FrameSource>, SourceError> {
    Err(SourceError::new(
        ErrorKind::Config,
        spec,
        "this build has no V4L2 support (rebuild with the `v4l2` feature)",
    ))
}

/// Sleeps so that successive calls are `1/fps` apart; no pacing without a rate.
#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    pub(crate) fn new(fps: Option<f32>) -> Self {
        let interval = fps
            .filter(|f| *f > 0.0 && f.is_finite())
            .map(|f| Duration::from_secs_f64(1.0 / f as f64));
        Pacer {
            interval,
            next: None,
        }
    }

    pub(crate) fn is_paced(&self) -> bool {
        self.interval.is_some()
    }

    pub(crate) fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        if due > now {
            std::thread::sleep(due - now);
        }
        // A late frame does not make the following ones come in a burst.
        self.next = Some(due.max(now) + interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frame_sizes() {
        assert_eq!(PixelFormat::Yuyv.frame_len(640, 480), Some(614_400));
        assert_eq!(PixelFormat::Nv12.frame_len(640, 480), Some(460_800));
        assert_eq!(PixelFormat::I420.frame_len(5, 3), Some(15 + 2 * 6));
        assert_eq!(PixelFormat::Mjpeg.frame_len(640, 480), None);
    }

    #[test]
    fn source_timeouts_parse() {
        let t = |s: &str| s.parse::<SourceTimeout>().map(|t| t.0);
        assert_eq!(t("forever"), Ok(None));
        assert_eq!(t("2.5"), Ok(Some(Duration::from_millis(2500))));
        assert_eq!(t("0"), Ok(Some(Duration::ZERO)));
        assert!(t("-1").unwrap_err().contains("'forever'"));
        assert!(t("soon").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(250), ms(1000));
        let waits: Vec<_> = (0..4).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [ms(250), ms(500), ms(1000), ms(1000)]);
    }

    #[test]
    fn open_waiting_stops_on_the_flag_and_fails_fast_on_config_errors() {
        let stop = AtomicBool::new(true);
        let opts = SourceOptions::default();
        let r = open_waiting(
            "files:/nonexistent/*.png",
            &opts,
            None,
            Backoff::default(),
            &stop,
            &mut |_, _| {},
        );
        assert!(matches!(r, Ok(None)));
        let r = open_waiting(
            "usb0",
            &opts,
            None,
            Backoff::default(),
            &stop,
            &mut |_, _| {},
        );
        assert_eq!(r.err().unwrap().kind, ErrorKind::Config);
    }

    #[test]
    fn unknown_specs_are_config_errors() {
        let err = open("usb0", &SourceOptions::default()).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.to_string().contains("unknown source"), "{err}");
    }
}
