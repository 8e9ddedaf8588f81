//! `camera --config FILE`: the `camera` command's flags as a TOML file, one key per flag under
//! the flag's own name (`source-timeout = "forever"`, `sink = ["http:8080"]`, `loop = true`).
//! Flags given on the command line win over the file. Unknown keys and bad values are refused
//! with the file, the line and the key; relative paths are read from the file's folder, so that
//! a service's configuration does not depend on its working directory.
//!
//! ```
//! let cfg = convnext_edge::config::CameraConfig::parse(
//!     "model = 'digits.onnx'\nsource = 'test'\nsize = '320x240'\nsource-timeout = 'forever'\n",
//!     "/etc/convnext-edge/camera.toml".as_ref(),
//! )?;
//! assert_eq!(cfg.model.unwrap(), std::path::Path::new("/etc/convnext-edge/digits.onnx"));
//! assert_eq!(cfg.size, Some((320, 240)));
//! assert_eq!(cfg.source_timeout.unwrap().0, None);
//! # Ok::<(), convnext_edge::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::camera::{PixelFormat, SourceTimeout};
use crate::display::trigger::{Action, Trigger};
use crate::error::{Error, Result};
use crate::preprocess::Preset;

/// Every key is optional; absent keys leave the command's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CameraConfig {
    /// `--model`.
    pub model: Option<PathBuf>,
    /// `--source`.
    pub source: Option<String>,
    #[serde(default, deserialize_with = "parsed")]
    /// `--size WxH`.
    pub size: Option<Size>,
    /// `--fps`.
    pub fps: Option<f32>,
    #[serde(default, deserialize_with = "parsed")]
    /// `--format`.
    pub format: Option<PixelFormat>,
    #[serde(rename = "loop")]
    /// `--loop` (the key is `loop`).
    pub looped: Option<bool>,
    /// `--frames`.
    pub frames: Option<u64>,
    /// `--sink`, one entry per sink.
    pub sink: Option<Vec<String>>,
    /// `--top`.
    pub top: Option<usize>,
    /// `--every`.
    pub every: Option<usize>,
    /// `--labels`.
    pub labels: Option<PathBuf>,
    #[serde(default, deserialize_with = "parsed")]
    /// `--preprocess`.
    pub preprocess: Option<Preset>,
    /// `--stats`.
    pub stats: Option<PathBuf>,
    #[serde(default, deserialize_with = "parsed_list")]
    /// `--on`, one entry per trigger.
    pub on: Option<Vec<Trigger>>,
    /// `--on-interval`, seconds.
    pub on_interval: Option<f64>,
    #[serde(default, deserialize_with = "parsed")]
    /// `--source-timeout`.
    pub source_timeout: Option<SourceTimeout>,
    /// `--threads`.
    pub threads: Option<usize>,
    /// `--input-size`.
    pub input_size: Option<usize>,
    /// `--float-only`.
    pub float_only: Option<bool>,
}

/// A frame size `WxH`.
pub type Size = (u32, u32);

impl CameraConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Checks configuration text read from `path` (which names it in errors and anchors
    /// relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut cfg: CameraConfig = toml::from_str(text).map_err(|e| {
            Error::Config(format!("{}: {}", path.display(), e.to_string().trim_end()))
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        for p in [&mut cfg.model, &mut cfg.labels].into_iter().flatten() {
            *p = dir.join(&*p);
        }
        for t in cfg.on.iter_mut().flatten() {
            if let Action::Save(folder) = &mut t.action {
                *folder = dir.join(&*folder);
            }
        }
        // `-` (standard output) is not a file.
        if let Some(p) = cfg.stats.as_mut().filter(|p| p.as_os_str() != "-") {
            *p = dir.join(&*p);
        }
        Ok(cfg)
    }
}

/// A value written as a string or a number, parsed the way its flag is.
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    Str(String),
    Int(i64),
    Float(f64),
}

fn parsed<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Parse,
{
    let text = match Text::deserialize(d)? {
        Text::Str(s) => s,
        Text::Int(i) => i.to_string(),
        Text::Float(f) => f.to_string(),
    };
    T::parse(&text).map(Some).map_err(serde::de::Error::custom)
}

fn parsed_list<'de, D, T>(d: D) -> std::result::Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Parse,
{
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| T::parse(s).map_err(serde::de::Error::custom))
        .collect::<std::result::Result<Vec<T>, _>>()
        .map(Some)
}

/// The flag's own parser for each parsed key.
trait Parse: Sized {
    fn parse(s: &str) -> std::result::Result<Self, String>;
}

impl Parse for Size {
    fn parse(s: &str) -> std::result::Result<Self, String> {
        crate::camera::parse_size(s)
    }
}

/// Types whose flag parses them with `FromStr`.
macro_rules! parse_via_from_str {
    ($($t:ty),*) => {$(
        impl Parse for $t {
            fn parse(s: &str) -> std::result::Result<Self, String> {
                s.parse().map_err(|e: <$t as FromStr>::Err| e.to_string())
            }
        }
    )*};
}

parse_via_from_str!(PixelFormat, Preset, Trigger, SourceTimeout);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CameraConfig> {
        CameraConfig::parse(text, Path::new("/etc/cam/camera.toml"))
    }

    #[test]
    fn every_key_reads_and_paths_are_anchored() {
        let cfg = parse(
            "model = 'm.onnx'\nsource = 'v4l2:/dev/video2'\nsize = '640x480'\nfps = 15\n\
             format = 'yuyv'\nloop = true\nframes = 9\nsink = ['http:8080', 'jsonl:-']\ntop = 2\n\
             every = 3\nlabels = '/l.txt'\npreprocess = 'torchvision'\nstats = '-'\n\
             source-timeout = 30\nthreads = 4\ninput-size = 160\nfloat-only = false\n\
             on = ['cat:0.7=save:cats']\non-interval = 2.5\n",
        )
        .unwrap();
        assert_eq!(cfg.model.unwrap(), Path::new("/etc/cam/m.onnx"));
        assert_eq!(cfg.labels.unwrap(), Path::new("/l.txt"));
        assert_eq!(cfg.stats.unwrap(), Path::new("-"));
        assert_eq!(cfg.size, Some((640, 480)));
        assert_eq!(cfg.format, Some(PixelFormat::Yuyv));
        assert_eq!(cfg.preprocess, Some(Preset::Torchvision));
        assert_eq!(cfg.source_timeout.unwrap().0.unwrap().as_secs(), 30);
        assert_eq!(cfg.sink.unwrap(), ["http:8080", "jsonl:-"]);
        assert_eq!(
            (cfg.fps, cfg.looped, cfg.frames),
            (Some(15.0), Some(true), Some(9))
        );
        assert_eq!(
            (cfg.top, cfg.every, cfg.threads),
            (Some(2), Some(3), Some(4))
        );
        assert_eq!((cfg.input_size, cfg.float_only), (Some(160), Some(false)));
        let on = cfg.on.unwrap();
        assert_eq!(on[0].label, "cat");
        assert_eq!(on[0].action, Action::Save("/etc/cam/cats".into()));
        assert_eq!(cfg.on_interval, Some(2.5));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_line_and_key() {
        let msg = |text: &str| parse(text).unwrap_err().to_string();
        let m = msg("source = 'test'\n\nframe-rate = 30\n");
        assert!(
            m.contains("/etc/cam/camera.toml") && m.contains("line 3"),
            "{m}"
        );
        assert!(m.contains("unknown field `frame-rate`"), "{m}");
        let m = msg("size = '640'\n");
        assert!(m.contains("line 1") && m.contains("WxH"), "{m}");
        let m = msg("top = 'three'\n");
        assert!(m.contains("line 1") && m.contains("top"), "{m}");
        let m = msg("source-timeout = -5\n");
        assert!(m.contains("'forever'"), "{m}");
        let m = msg("on = ['cat=mail:me']\n");
        assert!(m.contains("line 1") && m.contains("exec:CMD"), "{m}");
        let m = msg("source = \n");
        assert!(m.contains("line 1"), "{m}");
    }
}
