//! The live loop's counters and stage latencies in Prometheus' text format (version 0.0.4),
//! served by the http sink at `/metrics`: what a Prometheus server or Home Assistant scrapes to
//! graph a camera's frame rate, latency and failures.
//!
//! ```
//! use convnext_edge::display::metrics::Metrics;
//! let text = Metrics::default().render();
//! assert!(text.contains("# TYPE convnext_edge_frames_processed_total counter"));
//! ```

use std::fmt::Write;

use super::FrameReport;

/// Upper bounds of the latency buckets, in seconds: 0.5 ms (a decode) to 2.5 s (an inference
/// on a Pi Zero).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The loop's stages, in the order of [`super::StageTimes`].
const STAGES: [&str; 6] = ["wait", "decode", "preprocess", "infer", "overlay", "sinks"];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`] (not cumulative).
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", l.trim_end_matches(','))
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// Running totals over the reports of one run.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    processed: u64,
    classified: u64,
    dropped: u64,
    corrupt: u64,
    reconnects: u64,
    sink_errors: u64,
    fps: f32,
    stages: [Histogram; STAGES.len()],
    latency: Histogram,
}

impl Metrics {
    /// Counts one processed frame. Preprocessing and inference are observed on classified
    /// frames only (with `--every N` the others reuse the last result).
    pub fn observe(&mut self, r: &FrameReport) {
        self.processed += 1;
        self.classified += u64::from(r.classified);
        (self.dropped, self.corrupt, self.reconnects) = (r.dropped, r.corrupt, r.reconnects);
        self.sink_errors = r.sink_errors;
        self.fps = r.fps;
        let s = &r.stages_ms;
        let times = [s.wait, s.decode, s.preprocess, s.infer, s.overlay, s.sinks];
        for (i, (h, ms)) in self.stages.iter_mut().zip(times).enumerate() {
            let inference = STAGES[i] == "preprocess" || STAGES[i] == "infer";
            if r.classified || !inference {
                h.observe(f64::from(ms) / 1e3);
            }
        }
        self.latency.observe(f64::from(r.latency_ms) / 1e3);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "frames_processed_total",
                "Frames through the loop.",
                self.processed,
            ),
            (
                "frames_classified_total",
                "Frames the model ran on.",
                self.classified,
            ),
            (
                "frames_dropped_total",
                "Frames replaced by a newer one unprocessed.",
                self.dropped,
            ),
            (
                "sink_errors_total",
                "Sinks that failed and were dropped.",
                self.sink_errors,
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "convnext_edge_{name} {value}");
        }
        header(
            &mut out,
            "source_errors_total",
            "counter",
            "Corrupt frames and reconnects.",
        );
        for (kind, value) in [("corrupt", self.corrupt), ("reconnect", self.reconnects)] {
            let _ = writeln!(
                out,
                "convnext_edge_source_errors_total{{kind=\"{kind}\"}} {value}"
            );
        }
        header(
            &mut out,
            "fps",
            "gauge",
            "Processed frames per second (moving average).",
        );
        let _ = writeln!(out, "convnext_edge_fps {}", self.fps);
        header(
            &mut out,
            "stage_seconds",
            "histogram",
            "Time per frame in each stage.",
        );
        for (stage, h) in STAGES.iter().zip(&self.stages) {
            h.render(
                &mut out,
                "convnext_edge_stage_seconds",
                &format!("stage=\"{stage}\","),
            );
        }
        header(
            &mut out,
            "latency_seconds",
            "histogram",
            "From capture to result.",
        );
        self.latency
            .render(&mut out, "convnext_edge_latency_seconds", "");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP convnext_edge_{name} {help}");
    let _ = writeln!(out, "# TYPE convnext_edge_{name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::StageTimes;
    use prometheus_parse::{Scrape, Value};

    fn report(classified: bool, infer_ms: f32) -> FrameReport {
        FrameReport {
            latency_ms: 30.0,
            classified,
            stages_ms: StageTimes {
                decode: 2.0,
                infer: infer_ms,
                ..Default::default()
            },
            fps: 12.5,
            dropped: 4,
            corrupt: 2,
            reconnects: 1,
            sink_errors: 1,
            ..Default::default()
        }
    }

    fn scrape(m: &Metrics) -> Scrape {
        let text = m.render();
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    fn sample<'a>(s: &'a Scrape, name: &str, label: Option<(&str, &str)>) -> &'a Value {
        &s.samples
            .iter()
            .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {label:?}"))
            .value
    }

    #[test]
    fn a_prometheus_parser_reads_the_counters_and_histograms() {
        let mut m = Metrics::default();
        m.observe(&report(true, 3.0));
        m.observe(&report(true, 40.0));
        m.observe(&report(false, 0.0));
        let s = scrape(&m);
        let counter = |name: &str, label| match sample(&s, name, label) {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            v => panic!("{name}: {v:?}"),
        };
        assert_eq!(counter("convnext_edge_frames_processed_total", None), 3.0);
        assert_eq!(counter("convnext_edge_frames_classified_total", None), 2.0);
        assert_eq!(counter("convnext_edge_frames_dropped_total", None), 4.0);
        assert_eq!(counter("convnext_edge_sink_errors_total", None), 1.0);
        let kind = |k| Some(("kind", k));
        assert_eq!(
            counter("convnext_edge_source_errors_total", kind("corrupt")),
            2.0
        );
        assert_eq!(
            counter("convnext_edge_source_errors_total", kind("reconnect")),
            1.0
        );
        assert_eq!(counter("convnext_edge_fps", None), 12.5);
        let Value::Histogram(infer) =
            sample(&s, "convnext_edge_stage_seconds", Some(("stage", "infer")))
        else {
            panic!("infer is not a histogram");
        };
        // Classified frames only: 3 ms and 40 ms; cumulative buckets.
        let at = |le: f64| infer.iter().find(|b| b.less_than == le).unwrap().count;
        assert_eq!(
            (at(0.0025), at(0.005), at(0.025), at(0.05)),
            (0.0, 1.0, 1.0, 2.0)
        );
        assert_eq!(at(f64::INFINITY), 2.0);
        let Value::Histogram(decode) =
            sample(&s, "convnext_edge_stage_seconds", Some(("stage", "decode")))
        else {
            panic!("decode is not a histogram");
        };
        assert_eq!(decode.last().unwrap().count, 3.0);
        let Value::Histogram(latency) = sample(&s, "convnext_edge_latency_seconds", None) else {
            panic!("latency is not a histogram");
        };
        assert_eq!(
            latency.iter().find(|b| b.less_than == 0.05).unwrap().count,
            3.0
        );
        let sum = counter("convnext_edge_latency_seconds_sum", None);
        assert!((sum - 0.09).abs() < 1e-6, "{sum}");
        assert_eq!(counter("convnext_edge_latency_seconds_count", None), 3.0);
    }
}
