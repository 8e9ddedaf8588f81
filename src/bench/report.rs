//! The benchmark report: a versioned JSON schema, and table / CSV / Markdown renderings.
//!
//! JSON schema `convnext-edge-bench`, version 1 (fields in milliseconds unless named otherwise):
//!
//! ```text
//! { "schema": "convnext-edge-bench", "schema_version": 1,
//!   "machine":  { cpu_model, logical_cpus, physical_cores, simd: [..], os, arch },
//!   "settings": { iters, duration_s, warmup, cooldown_s, interleaved, pipeline_image },
//!   "results": [ { label, model, model_bytes, precision, threads, batch, input_size, cpus,
//!                  status: "ok" | "failed", error,
//!                  load_ms, first_ms, runs, min_ms, p50_ms, p90_ms, p99_ms, max_ms, mean_ms,
//!                  stddev_ms, throughput_ips, ratio_p50, peak_rss_bytes, kernels: [..],
//!                  thermal_before, thermal_after: { temp_c, freq_mhz, throttled },
//!                  max_temp_c, min_freq_mhz, warnings: [..],
//!                  stages: { decode|preprocess|infer|topk: { runs, min_ms, p50_ms, ... } } } ] }
//! ```
//! A failed configuration has `status: "failed"`, its `error`, and no latency fields.
//! `ratio_p50` is this configuration's median over the first configuration's (when it ran).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::stats::Summary;
use crate::machine::ThermalSample;

/// The `schema` field of every report.
pub const SCHEMA: &str = "convnext-edge-bench";
/// The `schema_version` this build writes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// A whole `bench` run, as `--json` writes it.
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Always [`SCHEMA_VERSION`]; bumped when a field changes meaning.
    pub schema_version: u32,
    /// The machine it ran on.
    pub machine: Machine,
    /// How it was run.
    pub settings: Settings,
    /// One entry per configuration, in the order given.
    pub results: Vec<ConfigResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// What the machine is.
pub struct Machine {
    /// The CPU's model name.
    pub cpu_model: String,
    /// CPUs the OS shows (hardware threads).
    pub logical_cpus: usize,
    /// Physical cores.
    pub physical_cores: usize,
    /// SIMD features the CPU reports that tract's kernels use.
    pub simd: Vec<String>,
    /// The OS (`linux`, …).
    pub os: String,
    /// The CPU architecture (`x86_64`, `aarch64`, …).
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// The measurement settings.
pub struct Settings {
    /// Measured runs per configuration, when a count was asked for.
    pub iters: Option<usize>,
    /// Seconds of measured runs per configuration, when a duration was asked for.
    pub duration_s: Option<f64>,
    /// Warm-up runs per configuration after the first.
    pub warmup: usize,
    /// Pause between configurations, seconds.
    pub cooldown_s: f64,
    /// Configurations were measured round-robin (A B A B …).
    pub interleaved: bool,
    /// The image timed stage by stage, in pipeline mode.
    pub pipeline_image: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// Whether a configuration ran.
pub enum Status {
    /// It ran: the latency fields are set.
    Ok,
    /// It failed: `error` says why.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// One configuration (model × precision × threads) and what was measured.
pub struct ConfigResult {
    /// `file precision Nthr`.
    pub label: String,
    /// The model's path.
    pub model: String,
    /// The model file's size.
    pub model_bytes: Option<u64>,
    /// The precision it ran in.
    pub precision: String,
    /// Worker threads.
    pub threads: usize,
    /// Images per inference.
    pub batch: usize,
    /// The input's height and width.
    pub input_size: Option<[usize; 2]>,
    /// The CPUs the threads were pinned to.
    pub cpus: Option<Vec<usize>>,
    /// Whether it ran.
    pub status: Status,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Load and optimisation, ms.
    pub load_ms: Option<f64>,
    /// The first inference, ms (not in the statistics).
    pub first_ms: Option<f64>,
    #[serde(flatten)]
    /// Latency statistics of the measured runs.
    pub latency: Option<Summary>,
    /// Images per second at the median latency.
    pub throughput_ips: Option<f64>,
    /// This configuration's median over the first one's.
    pub ratio_p50: Option<f64>,
    /// Peak resident memory of the process after the runs.
    pub peak_rss_bytes: Option<u64>,
    /// The tract matmul kernels the plan uses.
    pub kernels: Vec<String>,
    /// SoC temperature and clock before the runs.
    pub thermal_before: Option<ThermalSample>,
    /// The same after the runs.
    pub thermal_after: Option<ThermalSample>,
    /// The highest temperature seen.
    pub max_temp_c: Option<f32>,
    /// The lowest clock seen.
    pub min_freq_mhz: Option<f32>,
    /// Clock drops and throttling seen during the runs.
    pub warnings: Vec<String>,
    /// Per-stage statistics, in pipeline mode.
    pub stages: Option<BTreeMap<String, Summary>>,
}

impl ConfigResult {
    /// A configuration that has not run yet.
    pub fn new(
        label: String,
        model: String,
        precision: String,
        threads: usize,
        batch: usize,
    ) -> Self {
        ConfigResult {
            label,
            model,
            model_bytes: None,
            precision,
            threads,
            batch,
            input_size: None,
            cpus: None,
            status: Status::Ok,
            error: None,
            load_ms: None,
            first_ms: None,
            latency: None,
            throughput_ips: None,
            ratio_p50: None,
            peak_rss_bytes: None,
            kernels: vec![],
            thermal_before: None,
            thermal_after: None,
            max_temp_c: None,
            min_freq_mhz: None,
            warnings: vec![],
            stages: None,
        }
    }

    /// Marks the configuration failed with `error`, dropping any partial measurements.
    pub fn fail(&mut self, error: impl Into<String>) {
        self.status = Status::Failed;
        self.error = Some(error.into());
        self.latency = None;
        self.throughput_ips = None;
        self.ratio_p50 = None;
        self.stages = None;
    }
}

/// Fills `ratio_p50`: each configuration's median over the first configuration's.
pub fn fill_ratios(results: &mut [ConfigResult]) {
    let base = results
        .first()
        .and_then(|r| r.latency.as_ref())
        .map(|l| l.p50_ms);
    for r in results.iter_mut() {
        r.ratio_p50 = match (base, r.latency.as_ref()) {
            (Some(b), Some(l)) if b > 0.0 => Some(l.p50_ms / b),
            _ => None,
        };
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn mib(v: Option<u64>) -> String {
    v.map_or_else(
        || "-".into(),
        |b| format!("{:.1}", b as f64 / (1024.0 * 1024.0)),
    )
}

const COLUMNS: [&str; 13] = [
    "configuration",
    "status",
    "load ms",
    "first ms",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "min ms",
    "max ms",
    "mean±sd ms",
    "img/s",
    "ratio",
    "peak RSS MiB",
];

fn cells(r: &ConfigResult) -> Vec<String> {
    let l = r.latency.as_ref();
    let status = match r.status {
        Status::Ok => "ok".to_owned(),
        Status::Failed => "FAILED".to_owned(),
    };
    vec![
        r.label.clone(),
        status,
        opt(r.load_ms, 1),
        opt(r.first_ms, 2),
        opt(l.map(|l| l.p50_ms), 2),
        opt(l.map(|l| l.p90_ms), 2),
        opt(l.map(|l| l.p99_ms), 2),
        opt(l.map(|l| l.min_ms), 2),
        opt(l.map(|l| l.max_ms), 2),
        l.map_or_else(
            || "-".into(),
            |l| format!("{:.2}±{:.2}", l.mean_ms, l.stddev_ms),
        ),
        opt(r.throughput_ips, 1),
        r.ratio_p50
            .map_or_else(|| "-".into(), |v| format!("{v:.2}x")),
        mib(r.peak_rss_bytes),
    ]
}

impl Report {
    /// Machine header lines shared by the table and Markdown renderings.
    fn header(&self) -> String {
        let m = &self.machine;
        let how = match (self.settings.iters, self.settings.duration_s) {
            (_, Some(d)) => format!("{d} s per configuration"),
            (Some(n), None) => format!("{n} runs per configuration"),
            (None, None) => String::new(),
        };
        format!(
            "{} ({} logical CPUs, {} physical cores; {} {}; SIMD: {})\n{how}, {} warm-up, interleaved round-robin",
            m.cpu_model,
            m.logical_cpus,
            m.physical_cores,
            m.os,
            m.arch,
            m.simd.join(" "),
            self.settings.warmup
        )
    }

    fn notes(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            if let Some(e) = &r.error {
                let _ = writeln!(s, "failed: {}: {e}", r.label);
            }
            for w in &r.warnings {
                let _ = writeln!(s, "warning: {}: {w}", r.label);
            }
            if let Some(stages) = &r.stages {
                let parts: Vec<String> = stages
                    .iter()
                    .map(|(k, v)| format!("{k} {:.2}", v.p50_ms))
                    .collect();
                let _ = writeln!(s, "{} per-stage p50 ms: {}", r.label, parts.join(", "));
            }
            if !r.kernels.is_empty() {
                let _ = writeln!(s, "{} kernels: {}", r.label, r.kernels.join(", "));
            }
        }
        s
    }

    /// A plain-text table for terminals.
    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self.results.iter().map(cells).collect();
        let widths: Vec<usize> = (0..COLUMNS.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([COLUMNS[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cols: Vec<&str>| {
            let padded: Vec<String> = cols
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let mut out = self.header();
        out.push('\n');
        out.push_str(&line(COLUMNS.to_vec()));
        out.push('\n');
        for r in &rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
            out.push('\n');
        }
        out.push_str(&self.notes());
        out
    }

    /// A Markdown table (for a README or an issue).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for l in self.header().lines() {
            let _ = writeln!(out, "{l}  ");
        }
        out.push('\n');
        let _ = writeln!(out, "| {} |", COLUMNS.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(COLUMNS.len()));
        for r in &self.results {
            let escaped: Vec<String> = cells(r)
                .into_iter()
                .map(|c| c.replace('|', "\\|"))
                .collect();
            let _ = writeln!(out, "| {} |", escaped.join(" | "));
        }
        let notes = self.notes();
        if !notes.is_empty() {
            out.push('\n');
            for l in notes.lines() {
                let _ = writeln!(out, "- {l}");
            }
        }
        out
    }

    /// CSV, one row per configuration, a header row first.
    pub fn csv(&self) -> String {
        const HEADER: &str = "label,model,precision,threads,batch,status,error,load_ms,first_ms,runs,min_ms,p50_ms,p90_ms,p99_ms,max_ms,mean_ms,stddev_ms,throughput_ips,ratio_p50,peak_rss_bytes,max_temp_c,min_freq_mhz,warnings";
        let mut out = format!("{HEADER}\n");
        for r in &self.results {
            let l = r.latency.as_ref();
            let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
            let fields = [
                csv_field(&r.label),
                csv_field(&r.model),
                r.precision.clone(),
                r.threads.to_string(),
                r.batch.to_string(),
                if r.status == Status::Ok {
                    "ok".into()
                } else {
                    "failed".into()
                },
                csv_field(r.error.as_deref().unwrap_or("")),
                num(r.load_ms),
                num(r.first_ms),
                l.map_or(String::new(), |l| l.runs.to_string()),
                num(l.map(|l| l.min_ms)),
                num(l.map(|l| l.p50_ms)),
                num(l.map(|l| l.p90_ms)),
                num(l.map(|l| l.p99_ms)),
                num(l.map(|l| l.max_ms)),
                num(l.map(|l| l.mean_ms)),
                num(l.map(|l| l.stddev_ms)),
                num(r.throughput_ips),
                num(r.ratio_p50),
                r.peak_rss_bytes.map_or(String::new(), |b| b.to_string()),
                num(r.max_temp_c.map(f64::from)),
                num(r.min_freq_mhz.map(f64::from)),
                csv_field(&r.warnings.join("; ")),
            ];
            out.push_str(&fields.join(","));
            out.push('\n');
        }
        out
    }
}

/// RFC 4180 quoting where needed.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_report() -> Report {
        let mut a = ConfigResult::new(
            "a.onnx int8 1thr".into(),
            "a.onnx".into(),
            "int8".into(),
            1,
            1,
        );
        a.latency = Summary::of(&[10.0, 12.0, 11.0]);
        a.throughput_ips = Some(90.9);
        a.load_ms = Some(30.0);
        a.first_ms = Some(15.0);
        a.peak_rss_bytes = Some(50 << 20);
        let mut b = ConfigResult::new(
            "b.onnx, \"f32\" 2thr".into(),
            "b.onnx".into(),
            "f32".into(),
            2,
            1,
        );
        b.latency = Summary::of(&[5.0, 6.0, 5.5]);
        let mut c = ConfigResult::new(
            "c.onnx f16 1thr".into(),
            "c.onnx".into(),
            "f16".into(),
            1,
            1,
        );
        c.latency = Summary::of(&[1.0]);
        c.fail("c.onnx: not a valid ONNX model: truncated | bad");
        let mut results = vec![a, b, c];
        fill_ratios(&mut results);
        Report {
            schema: SCHEMA.into(),
            schema_version: SCHEMA_VERSION,
            machine: Machine {
                cpu_model: "Test CPU".into(),
                logical_cpus: 2,
                physical_cores: 1,
                simd: vec!["avx2".into()],
                os: "linux".into(),
                arch: "x86_64".into(),
            },
            settings: Settings {
                iters: Some(3),
                duration_s: None,
                warmup: 1,
                cooldown_s: 0.0,
                interleaved: true,
                pipeline_image: None,
            },
            results,
        }
    }

    #[test]
    fn ratio_is_relative_to_the_first_configuration() {
        let r = sample_report();
        assert_eq!(r.results[0].ratio_p50, Some(1.0));
        assert!((r.results[1].ratio_p50.unwrap() - 5.5 / 11.0).abs() < 1e-12);
        assert_eq!(r.results[2].ratio_p50, None);
        let mut first_failed = r.results.clone();
        first_failed.swap(0, 2);
        fill_ratios(&mut first_failed);
        assert!(first_failed.iter().all(|c| c.ratio_p50.is_none()));
    }

    #[test]
    fn json_round_trips_and_marks_failures() {
        let r = sample_report();
        let text = serde_json::to_string_pretty(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["results"][0]["p50_ms"], 11.0);
        assert_eq!(v["results"][2]["status"], "failed");
        assert!(v["results"][2].get("p50_ms").is_none());
        assert!(v["results"][2]["error"]
            .as_str()
            .unwrap()
            .contains("truncated"));
    }

    #[test]
    fn csv_quotes_and_marks_failures() {
        let csv = sample_report().csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("label,model,precision"));
        assert!(lines[1].starts_with("a.onnx int8 1thr,a.onnx,int8,1,1,ok,,30,15,3,10,11,"));
        assert!(lines[2].starts_with("\"b.onnx, \"\"f32\"\" 2thr\",b.onnx,f32,2,1,ok"));
        assert!(lines[3].contains(",failed,c.onnx: not a valid ONNX model: truncated | bad,"));
        let columns = lines[0].split(',').count();
        assert_eq!(lines[3].split(',').count(), columns);
    }

    #[test]
    fn markdown_and_table_render_every_configuration() {
        let r = sample_report();
        let md = r.markdown();
        assert!(md.contains("| configuration | status |"));
        assert!(md.contains("| a.onnx int8 1thr | ok | 30.0 | 15.00 | 11.00 |"));
        assert!(md.contains("| c.onnx f16 1thr | FAILED | - |"));
        assert!(md.contains(
            "- failed: c.onnx f16 1thr: c.onnx: not a valid ONNX model: truncated | bad"
        ));
        assert!(md.contains("| 1.00x |"));
        let table = r.table();
        assert!(table.contains("Test CPU"));
        assert!(table
            .lines()
            .any(|l| l.starts_with("c.onnx f16 1thr") && l.contains("FAILED")));
        assert!(table.contains("0.50x"));
    }
}
