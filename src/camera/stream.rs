//! Sources that read bytes: a stream (stdin, a command's stdout, a recording) split into frames,
//! and a list of files, one frame each.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::mjpeg::{Split, Splitter};
use super::{
    ErrorKind, Frame, FrameSource, Pacer, PixelFormat, SourceError, SourceOptions,
    DEFAULT_MAX_FRAME_BYTES,
};

/// Where a stream's bytes come from, and so how it is reopened.
enum Origin {
    Stdin,
    Command { cmd: String, child: Option<Child> },
    File(PathBuf),
}

/// An MJPEG or raw YUV/RGB byte stream cut into frames: `pipe:-`, `pipe:CMD`, `replay:FILE`.
pub struct StreamSource {
    name: String,
    origin: Origin,
    reader: Option<Box<dyn Read + Send>>,
    format: PixelFormat,
    size: (u32, u32),
    splitter: Splitter,
    pacer: Pacer,
    looped: bool,
    seq: u64,
}

impl StreamSource {
    /// Frames on standard input.
    pub fn stdin(name: &str, opts: &SourceOptions) -> Result<Self, SourceError> {
        let mut s = Self::new(name, Origin::Stdin, opts.format, opts)?;
        s.reader = Some(Box::new(std::io::stdin()));
        Ok(s)
    }

    /// Frames on the standard output of `sh -c cmd`; the command is restarted on reopen.
    pub fn command(name: &str, cmd: &str, opts: &SourceOptions) -> Result<Self, SourceError> {
        let origin = Origin::Command {
            cmd: cmd.to_owned(),
            child: None,
        };
        let mut s = Self::new(name, origin, opts.format, opts)?;
        s.reopen()?;
        Ok(s)
    }

    /// A recording played back at `opts.fps` (default 30; 0 = as fast as it is read).
    pub fn replay(name: &str, path: &Path, opts: &SourceOptions) -> Result<Self, SourceError> {
        let format = opts.format.or(Some(PixelFormat::from_extension(path)));
        let mut s = Self::new(name, Origin::File(path.to_owned()), format, opts)?;
        s.pacer = Pacer::new(Some(opts.fps.unwrap_or(30.0)));
        s.reopen()?;
        Ok(s)
    }

    fn new(
        name: &str,
        origin: Origin,
        format: Option<PixelFormat>,
        opts: &SourceOptions,
    ) -> Result<Self, SourceError> {
        let format = format.unwrap_or(PixelFormat::Mjpeg);
        let size =
            match (format, opts.size) {
                (PixelFormat::Mjpeg, _) => (0, 0),
                (PixelFormat::Encoded, _) => return Err(SourceError::new(
                    ErrorKind::Config,
                    name,
                    "a stream must carry MJPEG or raw frames (--format mjpeg|yuyv|nv12|i420|rgb24)",
                )),
                (_, Some(size)) => size,
                (raw, None) => {
                    return Err(SourceError::new(
                        ErrorKind::Config,
                        name,
                        format!("raw {raw:?} frames need their size (--size WxH)"),
                    ))
                }
            };
        let max = if opts.max_frame_bytes > 0 {
            opts.max_frame_bytes
        } else {
            DEFAULT_MAX_FRAME_BYTES
        };
        Ok(StreamSource {
            name: name.to_owned(),
            origin,
            reader: None,
            format,
            size,
            splitter: Splitter::new(max),
            pacer: Pacer::new(None),
            looped: opts.looped,
            seq: 0,
        })
    }

    fn err(&self, kind: ErrorKind, message: impl Into<String>) -> SourceError {
        SourceError::new(kind, &self.name, message)
    }

    fn frame(&mut self, data: Vec<u8>) -> Frame {
        self.pacer.wait();
        self.seq += 1;
        Frame::new(data, self.format, self.size, self.seq - 1)
    }

    /// What the end of the bytes means for this origin.
    fn at_end(&mut self) -> Result<(), SourceError> {
        self.reader = None;
        match &mut self.origin {
            Origin::Stdin => Err(self.err(ErrorKind::EndOfStream, "end of input")),
            Origin::File(_) if self.looped => self.reopen(),
            Origin::File(_) => Err(self.err(ErrorKind::EndOfStream, "end of recording")),
            Origin::Command { child, .. } => {
                let status = child
                    .as_mut()
                    .and_then(|c| c.wait().ok())
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown status".into());
                Err(self.err(
                    ErrorKind::Disconnected,
                    format!("command output ended ({status})"),
                ))
            }
        }
    }

    fn next_mjpeg(&mut self) -> Result<Frame, SourceError> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match self.splitter.pop() {
                Some(Split::Frame(jpeg)) => return Ok(self.frame(jpeg)),
                Some(Split::Corrupt(why)) => return Err(self.err(ErrorKind::Corrupt, why)),
                None => {}
            }
            let reader = self.reader.as_mut().ok_or_else(|| {
                SourceError::new(ErrorKind::Disconnected, &self.name, "stream is closed")
            })?;
            match reader.read(&mut chunk) {
                Ok(0) => {
                    if let Some(Split::Corrupt(why)) = self.splitter.finish() {
                        self.reader = None;
                        return Err(self.err(ErrorKind::Corrupt, why));
                    }
                    self.at_end()?;
                }
                Ok(n) => self.splitter.push(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.reader = None;
                    return Err(self.err(ErrorKind::Disconnected, format!("read failed: {e}")));
                }
            }
        }
    }

    fn next_raw(&mut self) -> Result<Frame, SourceError> {
        let len = self
            .format
            .frame_len(self.size.0, self.size.1)
            .expect("raw format");
        let mut data = vec![0u8; len];
        loop {
            let reader = self.reader.as_mut().ok_or_else(|| {
                SourceError::new(ErrorKind::Disconnected, &self.name, "stream is closed")
            })?;
            let mut filled = 0;
            while filled < len {
                match reader.read(&mut data[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.reader = None;
                        return Err(self.err(ErrorKind::Disconnected, format!("read failed: {e}")));
                    }
                }
            }
            match filled {
                n if n == len => return Ok(self.frame(data)),
                0 => self.at_end()?,
                n => {
                    self.reader = None;
                    return Err(self.err(
                        ErrorKind::Corrupt,
                        format!("stream ended inside a frame ({n} of {len} bytes)"),
                    ));
                }
            }
        }
    }
}

impl FrameSource for StreamSource {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        if self.reader.is_none() && matches!(self.origin, Origin::Stdin) {
            return Err(self.err(ErrorKind::EndOfStream, "end of input"));
        }
        match self.format {
            PixelFormat::Mjpeg => self.next_mjpeg(),
            _ => self.next_raw(),
        }
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        self.splitter = Splitter::new(self.splitter.max_frame());
        let name = self.name.clone();
        let reader: Box<dyn Read + Send> = match &mut self.origin {
            Origin::Stdin => {
                return Err(SourceError::new(
                    ErrorKind::EndOfStream,
                    name,
                    "standard input cannot be reopened",
                ))
            }
            Origin::File(path) => Box::new(std::io::BufReader::new(
                std::fs::File::open(&*path).map_err(|e| {
                    let kind = if e.kind() == std::io::ErrorKind::NotFound {
                        ErrorKind::Missing
                    } else {
                        ErrorKind::Config
                    };
                    SourceError::new(kind, &name, format!("{}: {e}", path.display()))
                })?,
            )),
            Origin::Command { cmd, child } => {
                if let Some(mut old) = child.take() {
                    let _ = old.kill();
                    let _ = old.wait();
                }
                let mut c = Command::new("sh")
                    .arg("-c")
                    .arg(&*cmd)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()
                    .map_err(|e| {
                        SourceError::new(
                            ErrorKind::Disconnected,
                            &name,
                            format!("cannot start: {e}"),
                        )
                    })?;
                let out = c.stdout.take().expect("piped stdout");
                *child = Some(c);
                Box::new(out)
            }
        };
        self.reader = Some(reader);
        Ok(())
    }

    fn is_live(&self) -> bool {
        !matches!(self.origin, Origin::File(_)) || self.pacer.is_paced()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for StreamSource {
    fn drop(&mut self) {
        if let Origin::Command {
            child: Some(child), ..
        } = &mut self.origin
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Image files or raw frame files, one frame each, in name order: `files:GLOB`, `files:DIR`.
pub struct FileSource {
    name: String,
    files: Vec<PathBuf>,
    next: usize,
    size: Option<(u32, u32)>,
    format: Option<PixelFormat>,
    pacer: Pacer,
    looped: bool,
    seq: u64,
}

impl FileSource {
    /// Lists the files of a directory or a glob pattern; `opts.fps` paces them (and makes the
    /// source live), `opts.size` gives the size of raw frame files.
    pub fn open(name: &str, pattern: &str, opts: &SourceOptions) -> Result<Self, SourceError> {
        let config = |msg: String| SourceError::new(ErrorKind::Config, name, msg);
        let mut files: Vec<PathBuf> = if Path::new(pattern).is_dir() {
            std::fs::read_dir(pattern)
                .map_err(|e| config(format!("{pattern}: {e}")))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        } else {
            glob::glob(pattern)
                .map_err(|e| config(format!("bad pattern: {e}")))?
                .flatten()
                .filter(|p| p.is_file())
                .collect()
        };
        files.sort();
        if files.is_empty() {
            return Err(SourceError::new(
                ErrorKind::Missing,
                name,
                format!("no files match '{pattern}'"),
            ));
        }
        let raw = |p: &PathBuf| {
            let f = opts.format.unwrap_or(PixelFormat::from_extension(p));
            f.frame_len(1, 1).is_some()
        };
        if opts.size.is_none() {
            if let Some(p) = files.iter().find(|p| raw(p)) {
                return Err(config(format!(
                    "{}: raw frames need their size (--size WxH)",
                    p.display()
                )));
            }
        }
        Ok(FileSource {
            name: name.to_owned(),
            files,
            next: 0,
            size: opts.size,
            format: opts.format,
            pacer: Pacer::new(opts.fps),
            looped: opts.looped,
            seq: 0,
        })
    }
}

impl FrameSource for FileSource {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        if self.next == self.files.len() {
            if !self.looped {
                return Err(SourceError::new(
                    ErrorKind::EndOfStream,
                    &self.name,
                    "no more files",
                ));
            }
            self.next = 0;
        }
        let path = self.files[self.next].clone();
        self.next += 1;
        self.pacer.wait();
        let data = std::fs::read(&path).map_err(|e| {
            SourceError::new(
                ErrorKind::Corrupt,
                &self.name,
                format!("{}: {e}", path.display()),
            )
        })?;
        let format = self
            .format
            .unwrap_or_else(|| PixelFormat::from_extension(&path));
        let (width, height) = self
            .size
            .filter(|_| format.frame_len(1, 1).is_some())
            .unwrap_or((0, 0));
        self.seq += 1;
        let mut frame = Frame::new(data, format, (width, height), self.seq - 1);
        frame.origin = Some(path);
        Ok(frame)
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    fn is_live(&self) -> bool {
        self.pacer.is_paced()
    }

    fn name(&self) -> &str {
        &self.name
    }
}
