//! `convnext-edge bench`: latency of one or more configurations (model × precision × threads),
//! measured round-robin so that their ratios survive machine drift.
//!
//! For each configuration, in turn: cool down (optional), load and optimise (timed), the first
//! inference (timed), warm-up runs. Then all configurations run interleaved, A B A B …, for
//! `--iters` rounds or about `--duration` seconds each; a configuration that fails is marked
//! failed and the others go on. Per configuration the report holds latency statistics,
//! throughput, peak resident memory during its runs, the tract kernels of its plan, and the
//! board's temperature and clock around the runs, with a warning when the clock dropped or the
//! Raspberry Pi firmware reports throttling.

pub mod report;
pub mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tract_onnx::prelude::Tensor;

use crate::classify::{preprocess_for, top_k};
use crate::labels::Labels;
use crate::machine::{self, Sysfs, ThermalSample};
use crate::model::{inspect, LoadOptions, Model};
use crate::precision::Precision;
use crate::preprocess::Preprocess;
use report::{ConfigResult, Machine, Report, Settings, Status};
use stats::Summary;

/// Which CPUs to pin the worker threads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cpus {
    /// These CPUs, by number.
    List(Vec<usize>),
    /// The biggest cores by `cpu_capacity` (big.LITTLE SoCs).
    Big,
}

impl std::str::FromStr for Cpus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "big" {
            Ok(Cpus::Big)
        } else {
            machine::parse_cpu_list(s).map(Cpus::List)
        }
    }
}

/// When the measured phase ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// This many rounds (runs per configuration).
    Iters(usize),
    /// About this long per configuration: rounds go on until configurations × duration passed.
    Duration(Duration),
}

/// What to benchmark and how.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// The models, in order.
    pub models: Vec<PathBuf>,
    /// Precisions to run each model in.
    pub precisions: Vec<Precision>,
    /// Thread counts to run each in.
    pub threads: Vec<usize>,
    /// When to stop measuring.
    pub stop: Stop,
    /// Warm-up runs per configuration after the first.
    pub warmup: usize,
    /// Pause between configurations.
    pub cooldown: Duration,
    /// CPUs to pin the worker threads to.
    pub cpus: Option<Cpus>,
    /// Images per inference.
    pub batch: usize,
    /// The input side, for models whose size is not fixed.
    pub input_size: Option<usize>,
    /// [`IntegerPath::Never`](crate::IntegerPath::Never) for every configuration.
    pub float_only: bool,
    /// Measure decode → preprocess → infer → top-K on this image instead of inference alone.
    pub pipeline_image: Option<PathBuf>,
}

/// One measured run: its total time and, in pipeline mode, each stage's.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The whole run, ms.
    pub total_ms: f64,
    /// Each stage's time, ms, in pipeline mode.
    pub stages: Vec<(&'static str, f64)>,
}

/// Progress of the measured phase, for a progress bar.
pub trait Progress {
    /// Called as runs complete: the fraction done and what runs.
    fn update(&mut self, done_fraction: f64, message: &str);
    /// Called once, when the runs are done.
    fn finish(&mut self);
}

/// No progress output.
pub struct Quiet;

impl Progress for Quiet {
    fn update(&mut self, _: f64, _: &str) {}
    fn finish(&mut self) {}
}

/// Runs configurations `0..n` round-robin until `stop`: each round runs every configuration
/// still alive once, in order. A configuration whose run fails drops out with its error.
pub fn interleave(
    n: usize,
    stop: Stop,
    run: &mut dyn FnMut(usize) -> Result<Sample, String>,
    progress: &mut dyn Progress,
) -> Vec<Result<Vec<Sample>, String>> {
    let mut out: Vec<Result<Vec<Sample>, String>> = (0..n).map(|_| Ok(vec![])).collect();
    let start = Instant::now();
    let mut round = 0usize;
    loop {
        let alive: Vec<usize> = (0..n).filter(|&i| out[i].is_ok()).collect();
        let fraction = match stop {
            Stop::Iters(k) => round as f64 / k.max(1) as f64,
            Stop::Duration(d) => {
                start.elapsed().as_secs_f64() / (d.as_secs_f64() * n as f64).max(1e-9)
            }
        };
        if alive.is_empty() || fraction >= 1.0 {
            break;
        }
        progress.update(fraction, &format!("round {}", round + 1));
        for i in alive {
            match run(i) {
                Ok(sample) => out[i].as_mut().expect("alive").push(sample),
                Err(e) => out[i] = Err(e),
            }
        }
        round += 1;
    }
    progress.finish();
    out
}

/// A configuration being measured.
struct Live {
    result: ConfigResult,
    model: Option<Model>,
    input: Option<Tensor>,
    pipeline: Option<(Vec<u8>, Preprocess, Labels)>,
    peak_rss: u64,
}

impl Live {
    fn run_once(&self, sys: &Sysfs) -> Result<Sample, String> {
        let model = self.model.as_ref().ok_or("not loaded")?;
        machine::reset_peak_rss(sys);
        let sample = match &self.pipeline {
            None => {
                let input = self.input.clone().ok_or("no input")?;
                let t = Instant::now();
                model.run(input).map_err(|e| e.to_string())?;
                Sample {
                    total_ms: ms(t),
                    stages: vec![],
                }
            }
            Some((bytes, pre, labels)) => {
                let name = PathBuf::from(&self.result.label);
                let t = Instant::now();
                let img =
                    crate::preprocess::decode_bytes(&name, bytes).map_err(|e| e.to_string())?;
                let decode = ms(t);
                let t = Instant::now();
                let x = pre.to_tensor(&img).map_err(|e| e.to_string())?;
                let preprocess = ms(t);
                let t = Instant::now();
                let logits = model.run(x).map_err(|e| e.to_string())?;
                let infer = ms(t);
                let t = Instant::now();
                let row = logits
                    .to_plain_array_view::<f32>()
                    .map_err(|e| e.to_string())?;
                let row: Vec<f32> = row.iter().copied().collect();
                std::hint::black_box(top_k(&row, 5, labels));
                let topk = ms(t);
                Sample {
                    total_ms: decode + preprocess + infer + topk,
                    stages: vec![
                        ("decode", decode),
                        ("preprocess", preprocess),
                        ("infer", infer),
                        ("topk", topk),
                    ],
                }
            }
        };
        Ok(sample)
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The machine section of the report.
pub fn machine_info(sys: &Sysfs) -> Machine {
    Machine {
        cpu_model: sys.cpu_model(),
        logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        physical_cores: sys.physical_cores(),
        simd: machine::simd_features()
            .into_iter()
            .map(String::from)
            .collect(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
    }
}

/// A deterministic input with ImageNet-normalised-like values.
fn synthetic_input(batch: usize, h: usize, w: usize) -> Tensor {
    let n = batch * 3 * h * w;
    let data: Vec<f32> = (0..n)
        .map(|i| ((i.wrapping_mul(2654435761) >> 7) % 512) as f32 / 128.0 - 2.0)
        .collect();
    Tensor::from_shape(&[batch, 3, h, w], &data).expect("shape matches data")
}

/// `file precision Nthr`, how configurations are named in reports.
fn label(path: &std::path::Path, precision: Precision, threads: usize) -> String {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    format!("{file} {precision} {threads}thr")
}

/// Prepares one configuration: load, first run, warm-up. Failures are recorded in the result.
fn prepare(
    spec: &BenchSpec,
    sys: &Sysfs,
    model_path: &std::path::Path,
    precision: Precision,
    threads: usize,
) -> Live {
    let label = label(model_path, precision, threads);
    let mut result = ConfigResult::new(
        label,
        model_path.display().to_string(),
        precision.to_string(),
        threads,
        spec.batch,
    );
    result.model_bytes = std::fs::metadata(model_path).ok().map(|m| m.len());
    let mut live = Live {
        result,
        model: None,
        input: None,
        pipeline: None,
        peak_rss: 0,
    };
    if let Err(e) = load(spec, sys, model_path, precision, threads, &mut live) {
        live.result.fail(e);
    }
    live
}

fn load(
    spec: &BenchSpec,
    sys: &Sysfs,
    path: &std::path::Path,
    precision: Precision,
    threads: usize,
    live: &mut Live,
) -> Result<(), String> {
    if threads == 0 {
        return Err("thread count must be at least 1".into());
    }
    if spec.batch == 0 {
        return Err("batch must be at least 1".into());
    }
    let cpus = match &spec.cpus {
        None => None,
        Some(Cpus::Big) => Some(sys.big_cores()),
        Some(Cpus::List(list)) => {
            let online = sys.online_cpus();
            if let Some(bad) = list.iter().find(|c| !online.contains(c)) {
                return Err(format!("--cpus names CPU {bad}, which does not exist or is offline (online: {online:?})"));
            }
            Some(list.clone())
        }
    };
    live.result.cpus = cpus.clone();
    if !spec.cooldown.is_zero() {
        std::thread::sleep(spec.cooldown);
    }
    let options = LoadOptions {
        threads: Some(threads),
        input_size: spec.input_size,
        integer: crate::IntegerPath::float_only(spec.float_only),
        precision,
        cpus,
        ..Default::default()
    };
    let t = Instant::now();
    let model = Model::load(path, &options).map_err(|e| e.to_string())?;
    live.result.load_ms = Some(ms(t));
    live.result.precision = model.precision().to_string();
    live.result.label = label(path, model.precision(), threads);
    let (h, w) = model.input_hw();
    live.result.input_size = Some([h, w]);
    live.result.kernels = inspect::kernels(model.typed_model());
    live.result
        .warnings
        .extend(model.integer_coverage().warning());
    if let Some(b) = model.batch().filter(|&b| b != spec.batch) {
        return Err(format!(
            "the model has a fixed batch of {b}; asked for {}",
            spec.batch
        ));
    }
    if let Some(image) = &spec.pipeline_image {
        let bytes = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
        let pre = preprocess_for(&model, None).map_err(|e| e.to_string())?;
        let labels = Labels::default_for(model.metadata("convnext_edge.labels"), model.classes());
        live.pipeline = Some((bytes, pre, labels));
    } else {
        live.input = Some(synthetic_input(spec.batch, h, w));
    }
    live.model = Some(model);
    let first = live.run_once(sys)?;
    live.result.first_ms = Some(first.total_ms);
    for _ in 0..spec.warmup {
        live.run_once(sys)?;
    }
    Ok(())
}

/// Runs the whole benchmark.
pub fn run(spec: &BenchSpec, sys: &Sysfs, progress: &mut dyn Progress) -> Report {
    let mut lives = vec![];
    for model in &spec.models {
        for &precision in &spec.precisions {
            for &threads in &spec.threads {
                lives.push(prepare(spec, sys, model, precision, threads));
            }
        }
    }
    let runnable: Vec<usize> = (0..lives.len())
        .filter(|&i| lives[i].result.status == Status::Ok)
        .collect();
    let mut thermal: Vec<Vec<ThermalSample>> = vec![vec![]; lives.len()];
    for &i in &runnable {
        lives[i].result.thermal_before = Some(sys.thermal());
    }
    let outcomes = interleave(
        runnable.len(),
        spec.stop,
        &mut |k| {
            let i = runnable[k];
            thermal[i].push(sys.thermal());
            let sample = lives[i].run_once(sys)?;
            if let Some((_, peak)) = machine::rss_bytes(sys) {
                lives[i].peak_rss = lives[i].peak_rss.max(peak);
            }
            Ok(sample)
        },
        progress,
    );
    for (k, outcome) in outcomes.into_iter().enumerate() {
        let i = runnable[k];
        let live = &mut lives[i];
        let after = sys.thermal();
        match outcome {
            Ok(samples) => finish(
                &mut live.result,
                &samples,
                live.peak_rss,
                &thermal[i],
                after,
            ),
            Err(e) => live.result.fail(e),
        }
    }
    let mut results: Vec<ConfigResult> = lives.into_iter().map(|l| l.result).collect();
    report::fill_ratios(&mut results);
    Report {
        schema: report::SCHEMA.into(),
        schema_version: report::SCHEMA_VERSION,
        machine: machine_info(sys),
        settings: Settings {
            iters: match spec.stop {
                Stop::Iters(n) => Some(n),
                Stop::Duration(_) => None,
            },
            duration_s: match spec.stop {
                Stop::Duration(d) => Some(d.as_secs_f64()),
                Stop::Iters(_) => None,
            },
            warmup: spec.warmup,
            cooldown_s: spec.cooldown.as_secs_f64(),
            interleaved: true,
            pipeline_image: spec
                .pipeline_image
                .as_ref()
                .map(|p| p.display().to_string()),
        },
        results,
    }
}

/// Statistics, throughput, memory and thermal warnings of a configuration that ran.
fn finish(
    r: &mut ConfigResult,
    samples: &[Sample],
    peak_rss: u64,
    thermal: &[ThermalSample],
    after: ThermalSample,
) {
    let totals: Vec<f64> = samples.iter().map(|s| s.total_ms).collect();
    r.latency = Summary::of(&totals);
    r.throughput_ips = r
        .latency
        .as_ref()
        .map(|l| r.batch as f64 * 1000.0 / l.mean_ms);
    r.peak_rss_bytes = (peak_rss > 0).then_some(peak_rss);
    if samples.iter().any(|s| !s.stages.is_empty()) {
        let mut stages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for s in samples {
            for (name, v) in &s.stages {
                stages.entry((*name).to_owned()).or_default().push(*v);
            }
        }
        r.stages = Some(
            stages
                .into_iter()
                .filter_map(|(k, v)| Some((k, Summary::of(&v)?)))
                .collect(),
        );
    }
    r.max_temp_c = thermal
        .iter()
        .chain([&after])
        .filter_map(|t| t.temp_c)
        .reduce(f32::max);
    r.min_freq_mhz = thermal
        .iter()
        .chain([&after])
        .filter_map(|t| t.freq_mhz)
        .reduce(f32::min);
    let thermal = thermal_warnings(r.thermal_before.as_ref(), r.min_freq_mhz, &after);
    r.warnings.extend(thermal);
    r.thermal_after = Some(after);
}

/// Warnings for a clock that dropped by more than 5% during the runs, or throttling reported by
/// the Raspberry Pi firmware (bits 0–3 now, bits 16–19 since boot, newly set during the run).
pub fn thermal_warnings(
    before: Option<&ThermalSample>,
    min_freq: Option<f32>,
    after: &ThermalSample,
) -> Vec<String> {
    let mut w = vec![];
    if let (Some(start), Some(min)) = (before.and_then(|b| b.freq_mhz), min_freq) {
        if min < 0.95 * start {
            w.push(format!(
                "CPU clock dropped from {start:.0} MHz to {min:.0} MHz during the runs"
            ));
        }
    }
    if let Some(flags) = after.throttled {
        let earlier = before.and_then(|b| b.throttled).unwrap_or(0);
        if flags & 0xF != 0 {
            w.push(format!(
                "the board is throttling now (firmware flags {flags:#x})"
            ));
        } else if (flags & !earlier) & 0xF_0000 != 0 {
            w.push(format!(
                "the board throttled during the runs (firmware flags {flags:#x})"
            ));
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_robin_and_drops_failures() {
        let mut order = vec![];
        let out = interleave(
            3,
            Stop::Iters(3),
            &mut |i| {
                order.push(i);
                if i == 1 && order.iter().filter(|&&k| k == 1).count() == 2 {
                    return Err("boom".into());
                }
                Ok(Sample {
                    total_ms: i as f64,
                    stages: vec![],
                })
            },
            &mut Quiet,
        );
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2, 0, 2]);
        assert_eq!(out[0].as_ref().unwrap().len(), 3);
        assert_eq!(out[1].as_ref().unwrap_err(), "boom");
        assert_eq!(out[2].as_ref().unwrap().len(), 3);
    }

    #[test]
    fn duration_stops_after_configurations_times_duration() {
        let start = Instant::now();
        let out = interleave(
            2,
            Stop::Duration(Duration::from_millis(20)),
            &mut |_| {
                std::thread::sleep(Duration::from_millis(2));
                Ok(Sample {
                    total_ms: 2.0,
                    stages: vec![],
                })
            },
            &mut Quiet,
        );
        let n0 = out[0].as_ref().unwrap().len();
        assert_eq!(n0, out[1].as_ref().unwrap().len());
        // Each round takes at least 4 ms and rounds stop once 40 ms have passed.
        assert!((1..=11).contains(&n0), "{n0} rounds");
        assert!(start.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn warns_on_clock_drop_and_throttling() {
        let before = ThermalSample {
            temp_c: Some(50.0),
            freq_mhz: Some(2400.0),
            throttled: Some(0),
        };
        let calm = ThermalSample {
            temp_c: Some(55.0),
            freq_mhz: Some(2400.0),
            throttled: Some(0),
        };
        assert!(thermal_warnings(Some(&before), Some(2390.0), &calm).is_empty());
        let w = thermal_warnings(Some(&before), Some(1500.0), &calm);
        assert_eq!(
            w,
            vec!["CPU clock dropped from 2400 MHz to 1500 MHz during the runs".to_owned()]
        );
        let hot = ThermalSample {
            throttled: Some(0x20000),
            ..calm.clone()
        };
        assert!(
            thermal_warnings(Some(&before), None, &hot)[0].contains("throttled during the runs")
        );
        let now = ThermalSample {
            throttled: Some(0x4),
            ..calm
        };
        assert!(thermal_warnings(None, None, &now)[0].contains("throttling now"));
    }
}
