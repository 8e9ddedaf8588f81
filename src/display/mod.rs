//! Where live results go: annotated frames and result records, behind one small [`Sink`]
//! trait with an error kind (as embedded-hal does for devices), so that a panel that is absent
//! or a full disk is reported and dropped without stopping the other sinks.
//!
//! Sink specs (`--sink`, repeatable):
//! - `png:DIR`, `jpeg:DIR` — annotated frames written to files (`frame-000001.png`, ...);
//! - `jsonl:-`, `jsonl:FILE` — one JSON line per classified frame;
//! - `http:ADDR:PORT` — a live view page with an MJPEG stream and a JSON result endpoint;
//! - `fb:/dev/fbN` — the Linux framebuffer, frame scaled to fit;
//! - `ssd1306:/dev/i2c-N` — a 128x64 monochrome I2C OLED (top-1 result);
//! - `st7789:/dev/spidevX.Y?dc=PIN&rst=PIN` — a 240x240 SPI TFT (frame and result).
//!
//! ```
//! use convnext_edge::display::{self, overlay, View};
//! # use convnext_edge::{display::FrameReport, Prediction};
//! # let top = vec![Prediction { index: 7, label: "7".into(), prob: 0.9, logit: 3.0 }];
//! # let report = FrameReport { classified: true, top, fps: 30.0, ..Default::default() };
//! let dir = tempfile::tempdir()?;
//! let mut sink = display::open(&format!("png:{}", dir.path().display()))?;
//! let frame = image::RgbImage::new(320, 240);
//! let mut annotated = frame.clone();
//! overlay::draw(&mut annotated, &report.top, report.fps, report.stages_ms.infer);
//! sink.show(&View { frame: &frame, annotated: &annotated, report: &report })?;
//! assert!(dir.path().join("frame-000000.png").exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod fb;
mod files;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod overlay;
pub mod panel;
mod report;
pub mod trigger;

use image::RgbImage;

pub use files::{ImageDirSink, ImageFormat, JsonlSink};

pub use report::{FrameReport, StageTimes};

/// What went wrong with a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// The device is not there or cannot be opened (panel absent, no framebuffer).
    Unavailable,
    /// Writing failed (disk full, bus error).
    Write,
    /// The reader went away (the pipe a `jsonl:-` sink writes to was closed): when it was the
    /// last sink the run ends normally.
    Closed,
    /// The spec is wrong.
    Config,
}

/// A failure of a sink, naming the sink.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    /// What kind of failure: whether the sink can go on.
    pub kind: SinkErrorKind,
    /// The sink, as given (`jpeg:DIR`, …).
    pub sink: String,
    /// What went wrong.
    pub message: String,
}

impl SinkError {
    /// An error of `kind` from the sink named `sink`.
    pub fn new(kind: SinkErrorKind, sink: impl Into<String>, message: impl Into<String>) -> Self {
        SinkError {
            kind,
            sink: sink.into(),
            message: message.into(),
        }
    }
}

/// One processed frame, as handed to every sink.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The frame as captured (for sinks that draw their own overlay at their own scale).
    pub frame: &'a RgbImage,
    /// The frame with the result drawn over it.
    pub annotated: &'a RgbImage,
    /// The result and timings of the frame.
    pub report: &'a FrameReport,
}

/// Somewhere annotated frames or results are shown.
pub trait Sink: Send {
    /// Shows one processed frame.
    fn show(&mut self, view: &View) -> Result<(), SinkError>;
    /// The spec the sink was opened from, for messages.
    fn name(&self) -> &str;
}

/// Opens a sink from its spec (see the module docs).
pub fn open(spec: &str) -> Result<Box<dyn Sink>, SinkError> {
    let (scheme, arg) = spec.split_once(':').unwrap_or((spec, ""));
    let config = |m: &str| SinkError::new(SinkErrorKind::Config, spec, m);
    if arg.is_empty() {
        return Err(config("missing argument after ':'"));
    }
    match scheme {
        "png" => Ok(Box::new(ImageDirSink::create(
            spec,
            arg.as_ref(),
            ImageFormat::Png,
        )?)),
        "jpeg" | "jpg" => Ok(Box::new(ImageDirSink::create(
            spec,
            arg.as_ref(),
            ImageFormat::Jpeg,
        )?)),
        "jsonl" => Ok(Box::new(JsonlSink::create(spec, arg)?)),
        "http" => Ok(Box::new(http::HttpSink::bind(spec, arg)?)),
        "mqtt" | "mqtts" => Ok(Box::new(mqtt::MqttSink::connect(spec, spec)?)),
        "fb" => Ok(Box::new(fb::FbSink::open(
            spec,
            arg.as_ref(),
            &Default::default(),
        )?)),
        "ssd1306" => panel::open_ssd1306(spec, arg),
        "st7789" => panel::open_st7789(spec, arg),
        _ => Err(config(
            "unknown sink (expected png:DIR, jpeg:DIR, jsonl:FILE, http:ADDR:PORT, \
             mqtt://HOST[:PORT]/TOPIC, fb:/dev/fbN, ssd1306:/dev/i2c-N or st7789:/dev/spidevX.Y)",
        )),
    }
}

/// JPEG bytes of an RGB image (live view, `jpeg:` sink).
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 8);
    let (w, h) = img.dimensions();
    if w > u16::MAX as u32 || h > u16::MAX as u32 {
        return Err(format!("{w}x{h} is too large for JPEG"));
    }
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(
            img.as_raw(),
            w as u16,
            h as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Nearest-neighbour scale of `img` into a `w` x `h` box, keeping its aspect ratio; returns the
/// scaled image and its offset in the box (letterboxing for screens and panels).
pub fn fit(img: &RgbImage, w: u32, h: u32) -> (RgbImage, (u32, u32)) {
    let (sw, sh) = img.dimensions();
    let scale = (w as f64 / sw as f64).min(h as f64 / sh as f64);
    let dw = ((sw as f64 * scale).round() as u32).clamp(1, w.max(1));
    let dh = ((sh as f64 * scale).round() as u32).clamp(1, h.max(1));
    let out = RgbImage::from_fn(dw, dh, |x, y| {
        let sx = ((x as u64 * sw as u64) / dw as u64) as u32;
        let sy = ((y as u64 * sh as u64) / dh as u64) as u32;
        *img.get_pixel(sx, sy)
    });
    (out, ((w - dw) / 2, (h - dh) / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_aspect_and_centres() {
        let img = RgbImage::from_pixel(640, 480, image::Rgb([1, 2, 3]));
        let (out, off) = fit(&img, 800, 480);
        assert_eq!(out.dimensions(), (640, 480));
        assert_eq!(off, (80, 0));
        let (out, off) = fit(&img, 240, 240);
        assert_eq!(out.dimensions(), (240, 180));
        assert_eq!(off, (0, 30));
    }

    #[test]
    fn bad_specs_name_the_problem() {
        assert_eq!(open("png:").err().unwrap().kind, SinkErrorKind::Config);
        let e = open("vga:0").err().unwrap();
        assert!(e.to_string().contains("unknown sink"), "{e}");
    }
}
