//! `--on LABEL[:MIN_PROB]=exec:CMD|save:DIR` — act when a class is seen: when a classified
//! frame's top-1 label is LABEL with at least MIN_PROB (default 0.5), run `sh -c CMD` or save the
//! annotated frame as `DIR/LABEL-UNIXMS-INDEX.jpg`; at most once per interval (`--on-interval`) for
//! each trigger, so a class that stays in view does not fire at every frame.
//!
//! A command runs in the background with the result in its environment (`CONVNEXT_LABEL`,
//! `CONVNEXT_PROB`, `CONVNEXT_FRAME`, `CONVNEXT_REPORT` with the JSON line): the loop never waits
//! for it.
//!
//! ```
//! use convnext_edge::display::trigger::{Action, Trigger};
//! let t: Trigger = "person:0.8=exec:notify-send person".parse()?;
//! assert_eq!((t.label.as_str(), t.min_prob), ("person", 0.8));
//! assert_eq!(t.action, Action::Exec("notify-send person".into()));
//! # Ok::<(), String>(())
//! ```

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{encode_jpeg, Sink, SinkError, SinkErrorKind, View};

/// What a trigger does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Runs `sh -c` with this command line.
    Exec(String),
    /// Saves the annotated frame as a JPEG into this folder.
    Save(PathBuf),
}

/// A class to watch for and what to do when it is seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// The class that fires it.
    pub label: String,
    /// The least probability that fires it.
    pub min_prob: f32,
    /// What it does.
    pub action: Action,
}

impl std::str::FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let form = "expected LABEL[:MIN_PROB]=exec:CMD or LABEL[:MIN_PROB]=save:DIR";
        let (when, action) = s.split_once('=').ok_or_else(|| format!("'{s}': {form}"))?;
        let (label, min_prob) = match when.rsplit_once(':') {
            Some((label, p)) => {
                let p: f32 = p
                    .parse()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| format!("'{s}': MIN_PROB must be between 0 and 1, got '{p}'"))?;
                (label, p)
            }
            None => (when, 0.5),
        };
        if label.is_empty() {
            return Err(format!("'{s}': no label; {form}"));
        }
        let action = match action.split_once(':') {
            Some(("exec", cmd)) if !cmd.is_empty() => Action::Exec(cmd.to_owned()),
            Some(("save", dir)) if !dir.is_empty() => Action::Save(dir.into()),
            _ => return Err(format!("'{s}': {form}")),
        };
        Ok(Trigger {
            label: label.to_owned(),
            min_prob,
            action,
        })
    }
}

/// A trigger as a sink: it sees every processed frame like the others.
pub struct TriggerSink {
    name: String,
    trigger: Trigger,
    interval: Duration,
    last: Option<Instant>,
    fired: u64,
}

impl TriggerSink {
    /// A save folder is created now, so that a wrong path is reported before the run.
    pub fn new(trigger: Trigger, interval: Duration) -> Result<Self, SinkError> {
        let name = format!("--on {}", trigger.label);
        if let Action::Save(dir) = &trigger.action {
            std::fs::create_dir_all(dir).map_err(|e| {
                SinkError::new(
                    SinkErrorKind::Unavailable,
                    &name,
                    format!("{}: {e}", dir.display()),
                )
            })?;
        }
        Ok(TriggerSink {
            name,
            trigger,
            interval,
            last: None,
            fired: 0,
        })
    }
}

impl Drop for TriggerSink {
    fn drop(&mut self) {
        log::info!("{}: fired {} times", self.name, self.fired);
    }
}

impl Sink for TriggerSink {
    fn show(&mut self, view: &View) -> Result<(), SinkError> {
        let report = view.report;
        let Some(top) = report.top.first() else {
            return Ok(());
        };
        let seen = report.classified && top.label == self.trigger.label;
        if !seen || top.prob < self.trigger.min_prob {
            return Ok(());
        }
        if self.last.is_some_and(|t| t.elapsed() < self.interval) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        self.fired += 1;
        let fail = |m: String| SinkError::new(SinkErrorKind::Write, &self.name, m);
        match &self.trigger.action {
            Action::Exec(cmd) => {
                let json = serde_json::to_string(report).expect("reports serialise");
                let mut child = Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .env("CONVNEXT_LABEL", &top.label)
                    .env("CONVNEXT_PROB", top.prob.to_string())
                    .env("CONVNEXT_FRAME", report.frame.to_string())
                    .env("CONVNEXT_REPORT", json)
                    .stdin(Stdio::null())
                    .spawn()
                    .map_err(|e| fail(format!("running '{cmd}': {e}")))?;
                // Reaped in the background: the loop does not wait for the command.
                std::thread::spawn(move || child.wait());
            }
            Action::Save(dir) => {
                let jpeg = encode_jpeg(view.annotated, 90).map_err(fail)?;
                let name = format!("{}-{}-{}.jpg", top.label, report.unix_ms, report.index);
                let file = dir.join(name);
                // Written whole under a temporary name, so that a watcher never reads half.
                let part = file.with_extension("jpg.part");
                std::fs::write(&part, jpeg)
                    .and_then(|()| std::fs::rename(&part, &file))
                    .map_err(|e| fail(format!("{}: {e}", file.display())))?;
            }
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let t: Trigger = "7=save:/tmp/sevens".parse().unwrap();
        assert_eq!(t.min_prob, 0.5);
        assert_eq!(t.action, Action::Save("/tmp/sevens".into()));
        let t: Trigger = "traffic light:0.25=exec:echo $CONVNEXT_LABEL"
            .parse()
            .unwrap();
        assert_eq!((t.label.as_str(), t.min_prob), ("traffic light", 0.25));
        for (bad, why) in [
            ("cat", "expected LABEL"),
            ("cat:2=save:/x", "between 0 and 1"),
            (":0.5=save:/x", "no label"),
            ("cat=mail:me", "expected LABEL"),
            ("cat=exec:", "expected LABEL"),
        ] {
            let e = bad.parse::<Trigger>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
