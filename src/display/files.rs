//! File sinks: annotated frames as numbered images (`png:DIR`, `jpeg:DIR`) and results as JSON
//! lines (`jsonl:FILE`, `jsonl:-`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{encode_jpeg, Sink, SinkError, SinkErrorKind, View};

/// Image file format of an [`ImageDirSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// PNG, lossless.
    Png,
    /// JPEG.
    Jpeg,
}

/// Writes each annotated frame to `DIR/frame-NNNNNN.{png,jpg}`, numbered by processed index.
/// Each file is written under a temporary name and renamed, so a full disk never leaves a
/// partial image behind.
pub struct ImageDirSink {
    name: String,
    dir: PathBuf,
    format: ImageFormat,
}

impl ImageDirSink {
    /// Creates `dir` if needed.
    pub fn create(name: &str, dir: &Path, format: ImageFormat) -> Result<Self, SinkError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            SinkError::new(
                SinkErrorKind::Unavailable,
                name,
                format!("{}: {e}", dir.display()),
            )
        })?;
        Ok(ImageDirSink {
            name: name.to_owned(),
            dir: dir.to_owned(),
            format,
        })
    }

    /// The file a frame of this index goes to.
    pub fn path_of(&self, index: u64) -> PathBuf {
        let ext = match self.format {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
        };
        self.dir.join(format!("frame-{index:06}.{ext}"))
    }
}

impl Sink for ImageDirSink {
    fn show(&mut self, view: &View) -> Result<(), SinkError> {
        let frame = view.annotated;
        let path = self.path_of(view.report.index);
        let tmp = path.with_extension("part");
        let write_err = |e: String| {
            SinkError::new(
                SinkErrorKind::Write,
                &self.name,
                format!("{}: {e}", path.display()),
            )
        };
        let bytes = match self.format {
            ImageFormat::Png => {
                let mut out = Vec::new();
                frame
                    .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                    .map_err(|e| write_err(e.to_string()))?;
                out
            }
            ImageFormat::Jpeg => encode_jpeg(frame, 90).map_err(write_err)?,
        };
        let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(write_err(e.to_string()));
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// One JSON object per classified frame ([`FrameReport`](super::FrameReport)), flushed
/// line by line so another program can follow it live.
pub struct JsonlSink {
    name: String,
    out: Box<dyn Write + Send>,
}

impl JsonlSink {
    /// `-` is standard output; anything else a file, created or truncated.
    pub fn create(name: &str, target: &str) -> Result<Self, SinkError> {
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            let f = File::create(target).map_err(|e| {
                SinkError::new(SinkErrorKind::Unavailable, name, format!("{target}: {e}"))
            })?;
            Box::new(BufWriter::new(f))
        };
        Ok(Self::to_writer(name, out))
    }

    /// Lines written to any writer.
    pub fn to_writer(name: &str, out: Box<dyn Write + Send>) -> Self {
        JsonlSink {
            name: name.to_owned(),
            out,
        }
    }
}

impl Sink for JsonlSink {
    fn show(&mut self, view: &View) -> Result<(), SinkError> {
        let report = view.report;
        if !report.classified {
            return Ok(());
        }
        let mut line = serde_json::to_vec(report).expect("reports serialise");
        line.push(b'\n');
        self.out
            .write_all(&line)
            .and_then(|()| self.out.flush())
            .map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::BrokenPipe {
                    SinkErrorKind::Closed
                } else {
                    SinkErrorKind::Write
                };
                SinkError::new(kind, &self.name, e.to_string())
            })
    }

    fn name(&self) -> &str {
        &self.name
    }
}
