//! The `convnext-edge` command line: parses arguments, calls the library, prints.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::IsTerminal;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use convnext_edge::bench::{self, BenchSpec, Cpus, Stop};
use convnext_edge::machine::Sysfs;
use convnext_edge::model::inspect::Info;
use convnext_edge::{npy, Classifier, IntegerPath, Labels, LoadOptions, Model, Precision, Preset};

#[derive(Parser)]
#[command(
    name = "convnext-edge",
    version,
    about = "Run ConvNeXt ONNX classifiers (f32, f16, int8) with tract"
)]
struct Cli {
    /// Worker threads per inference (default: the physical cores available to the process);
    /// `bench` takes a list, e.g. 1,2,4.
    #[arg(long, global = true, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Input height and width for models with dynamic spatial axes (or to override them).
    #[arg(long, global = true)]
    input_size: Option<usize>,
    /// Run quantized models on tract's float path, not our integer kernels (for comparison).
    #[arg(long, global = true)]
    float_only: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify JPEG/PNG images and print the top-K classes.
    Classify {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Class names, one per line (default: the model's own, or ImageNet-1k).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// timm, torchvision, hf or squash (default: recorded in the model, else timm).
        #[arg(long)]
        preprocess: Option<Preset>,
        /// One JSON object per image instead of text.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Run raw tensors: f32/f16 .npy in, f32 .npy out (for parity checks).
    Run {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// Describe a model: exporter, variant, precision, input, size, cost, kernels.
    Info {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Measure latency of models x precisions x thread counts, interleaved round-robin.
    Bench(BenchArgs),
    /// Classify a camera (or a stand-in) continuously and show the results on sinks.
    Camera(CameraArgs),
    /// Time per node and per op type of one inference (where the time goes).
    Profile {
        #[arg(long)]
        model: PathBuf,
        /// Runs to average over (after one warm-up run).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// How many of the slowest nodes to list.
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// Precision to run in: auto (as stored), f32, f16, int8.
        #[arg(long, default_value = "auto")]
        precision: Precision,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Model files (repeat --model for several).
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// Precisions to run each model in: auto (as stored), f32, f16, int8.
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    precision: Vec<Precision>,
    /// Measured runs per configuration (default 50 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    iters: Option<usize>,
    /// Measure about S seconds per configuration instead of a number of runs.
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up runs per configuration after the first (timed) one.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Seconds of idle before loading each configuration, to let the board cool.
    #[arg(long, default_value_t = 0.0)]
    cooldown: f64,
    /// Pin worker threads to these CPUs (e.g. 0-3 or 4,5), or `big` for the biggest cores.
    #[arg(long)]
    cpus: Option<Cpus>,
    /// Images per inference.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Write the JSON report to FILE (`-` = stdout, and no table or progress).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one CSV row per configuration to FILE (`-` = stdout).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Print a Markdown table instead of the plain one.
    #[arg(long)]
    markdown: bool,
    /// Time decode -> preprocess -> infer -> top-K per stage on this image.
    #[arg(long, value_name = "IMAGE")]
    pipeline: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CameraArgs {
    #[arg(long)]
    model: PathBuf,
    /// v4l2:/dev/videoN, pipe:-, pipe:CMD, files:GLOB, replay:FILE or test.
    #[arg(long, default_value = "v4l2:/dev/video0")]
    source: String,
    /// Frame size to ask the camera for, or the size of raw frames on a pipe (WxH).
    #[arg(long, value_parser = convnext_edge::camera::parse_size)]
    size: Option<(u32, u32)>,
    /// Frame rate to ask the camera for, or to play files and recordings at (0 = unpaced).
    #[arg(long)]
    fps: Option<f32>,
    /// Pixel format: mjpeg, yuyv, nv12, i420 or rgb24 (pipes and raw files; V4L2 preference).
    #[arg(long)]
    format: Option<convnext_edge::camera::PixelFormat>,
    /// Start files and recordings again at their end.
    #[arg(long = "loop")]
    looped: bool,
    /// Stop after N processed frames (default: until the source ends or Ctrl-C).
    #[arg(long)]
    frames: Option<u64>,
    /// Where results go: png:DIR, jpeg:DIR, jsonl:FILE|-, http:[ADDR:]PORT, fb:/dev/fbN,
    /// ssd1306:/dev/i2c-N, st7789:/dev/spidevX.Y?dc=N (repeatable).
    #[arg(long)]
    sink: Vec<String>,
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Classify every N-th frame; frames between show the last result.
    #[arg(long, default_value_t = 1)]
    every: usize,
    #[arg(long)]
    labels: Option<PathBuf>,
    #[arg(long)]
    preprocess: Option<Preset>,
    /// Write the run's counts and stage timings as JSON to FILE (`-` = stdout) at the end.
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct ImageResult<'a> {
    image: String,
    top: &'a [convnext_edge::Prediction],
    latency_ms: f64,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Bench(args) = cli.command {
        return run_bench(args, cli.threads, cli.input_size, cli.float_only);
    }
    anyhow::ensure!(
        cli.threads.len() <= 1,
        "--threads takes one number here (lists are for bench)"
    );
    let options = LoadOptions {
        threads: cli.threads.first().copied(),
        input_size: cli.input_size,
        integer: IntegerPath::float_only(cli.float_only),
        ..Default::default()
    };
    match cli.command {
        Command::Classify {
            model,
            top,
            labels,
            preprocess,
            json,
            images,
        } => {
            let model = Model::load(&model, &options)?;
            let labels = labels
                .map(|p| Labels::from_file(&p, model.classes()))
                .transpose()?;
            let classifier = Classifier::new(model, preprocess, labels)?;
            let mut failed = 0;
            for image in images {
                let start = std::time::Instant::now();
                match classifier.classify_file(&image, top) {
                    Ok(preds) => {
                        let latency_ms = start.elapsed().as_secs_f64() * 1e3;
                        print_predictions(&image, &preds, latency_ms, json)?;
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed += 1;
                    }
                }
            }
            anyhow::ensure!(failed == 0, "{failed} image(s) could not be classified");
        }
        Command::Run {
            model,
            input,
            output,
        } => {
            let model = Model::load(&model, &options)?;
            let x = npy::read(&input)?;
            let y = model.run(x)?;
            npy::write_f32(&output, &y)?;
        }
        Command::Bench(_) => unreachable!("handled above"),
        Command::Camera(args) => run_camera(args, &options)?,
        Command::Profile {
            model,
            runs,
            top,
            precision,
            json,
        } => {
            let options = LoadOptions {
                precision,
                ..options
            };
            let model = Model::load(&model, &options)?;
            let (h, w) = model.input_hw();
            let x = tract_onnx::prelude::Tensor::zero::<f32>(&[1, 3, h, w])?;
            let p = convnext_edge::profile::profile(&model, x, runs)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                print!("{}", p.render(top));
            }
        }
        Command::Info { model, json } => {
            let info = Info::gather(&model, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{info}");
            }
        }
    }
    Ok(())
}

fn print_predictions(
    image: &std::path::Path,
    preds: &[convnext_edge::Prediction],
    latency_ms: f64,
    json: bool,
) -> Result<()> {
    let name = image.display().to_string();
    if json {
        let line = serde_json::to_string(&ImageResult {
            image: name,
            top: preds,
            latency_ms,
        })
        .context("encoding JSON")?;
        println!("{line}");
    } else {
        println!("{name} ({latency_ms:.1} ms)");
        for p in preds {
            println!("  {:>6.2}%  {:<5} {}", p.prob * 100.0, p.index, p.label);
        }
    }
    Ok(())
}

fn run_bench(
    args: BenchArgs,
    threads: Vec<usize>,
    input_size: Option<usize>,
    float_only: bool,
) -> Result<()> {
    let stop = match (args.iters, args.duration) {
        (_, Some(s)) if s > 0.0 && s.is_finite() => {
            Stop::Duration(std::time::Duration::from_secs_f64(s))
        }
        (_, Some(s)) => anyhow::bail!("--duration must be a positive number of seconds, got {s}"),
        (Some(0), None) => anyhow::bail!("--iters must be at least 1"),
        (n, None) => Stop::Iters(n.unwrap_or(50)),
    };
    anyhow::ensure!(
        args.cooldown >= 0.0 && args.cooldown.is_finite(),
        "--cooldown must be >= 0"
    );
    let threads = if threads.is_empty() {
        vec![convnext_edge::model::default_threads()]
    } else {
        threads
    };
    let spec = BenchSpec {
        models: args.models,
        precisions: args.precision,
        threads,
        stop,
        warmup: args.warmup,
        cooldown: std::time::Duration::from_secs_f64(args.cooldown),
        cpus: args.cpus,
        batch: args.batch,
        input_size,
        float_only,
        pipeline_image: args.pipeline,
    };
    let json_to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    let report = if json_to_stdout || !std::io::stderr().is_terminal() {
        bench::run(&spec, &Sysfs::default(), &mut bench::Quiet)
    } else {
        bench::run(&spec, &Sysfs::default(), &mut ProgressBar::default())
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        write_output(path, &json)?;
    }
    if let Some(path) = &args.csv {
        write_output(path, &report.csv())?;
    }
    if !json_to_stdout {
        print!(
            "{}",
            if args.markdown {
                report.markdown()
            } else {
                report.table()
            }
        );
    }
    let failed = report
        .results
        .iter()
        .filter(|r| r.status == bench::report::Status::Failed)
        .count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} configuration(s) failed",
        report.results.len()
    );
    Ok(())
}

fn run_camera(args: CameraArgs, options: &LoadOptions) -> Result<()> {
    use convnext_edge::{camera, display, live};
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    anyhow::ensure!(args.every >= 1, "--every must be at least 1");
    anyhow::ensure!(args.top >= 1, "--top must be at least 1");
    let model = Model::load(&args.model, options)?;
    let labels = args
        .labels
        .map(|p| Labels::from_file(&p, model.classes()))
        .transpose()?;
    let mut classifier = Classifier::new(model, args.preprocess, labels)?;
    let sinks = args
        .sink
        .iter()
        .map(|s| display::open(s))
        .collect::<Result<Vec<_>, _>>()?;
    let source_opts = camera::SourceOptions {
        size: args.size,
        fps: args.fps,
        format: args.format,
        looped: args.looped,
        max_frame_bytes: camera::DEFAULT_MAX_FRAME_BYTES,
    };
    let source = camera::open(&args.source, &source_opts)?;
    ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed))
        .context("installing Ctrl-C handler")?;
    let opts = live::LiveOptions {
        top: args.top,
        every: args.every,
        frames: args.frames,
        ..Default::default()
    };
    // With no sink, results are printed; otherwise a status line once a second on stderr.
    let print_results = args.sink.is_empty();
    let mut last_status = std::time::Instant::now();
    let stats = live::run(
        source,
        &mut classifier,
        sinks,
        &opts,
        &STOP,
        &mut |event| match event {
            live::Event::Frame(r) if print_results => {
                let top: Vec<String> = r
                    .top
                    .iter()
                    .map(|p| format!("{} {:.1}%", p.label, p.prob * 100.0))
                    .collect();
                println!(
                    "frame {:>6}  {:>6.1} ms  {}",
                    r.frame,
                    r.stages_ms.infer,
                    top.join(", ")
                );
            }
            live::Event::Frame(r) => {
                if last_status.elapsed().as_secs_f32() >= 1.0 {
                    last_status = std::time::Instant::now();
                    let top = r.top.first().map_or("", |p| p.label.as_str());
                    eprintln!(
                        "frame {:>6}  {:>5.1} fps  infer {:>6.1} ms  dropped {}  {top}",
                        r.frame, r.fps, r.stages_ms.infer, r.dropped
                    );
                }
            }
            live::Event::Skipped(why) => eprintln!("warning: skipped {why}"),
            live::Event::Reconnecting(e, wait) => {
                eprintln!("warning: {e}; reopening in {:.2} s", wait.as_secs_f32())
            }
            live::Event::Reconnected => eprintln!("source reopened"),
            live::Event::SinkFailed(e) => eprintln!("error: {e} (sink dropped, others go on)"),
        },
    )?;
    eprintln!(
        "{} frames processed in {:.1} s ({:.1} fps): {} classified, {} dropped, {} corrupt, \
         {} reconnects",
        stats.processed,
        stats.seconds,
        stats.fps,
        stats.classified,
        stats.dropped,
        stats.corrupt,
        stats.reconnects
    );
    eprintln!(
        "mean ms: decode {:.2}  preprocess {:.2}  infer {:.2}  overlay {:.2}  sinks {:.2}",
        stats.decode.mean_ms,
        stats.preprocess.mean_ms,
        stats.infer.mean_ms,
        stats.overlay.mean_ms,
        stats.sinks.mean_ms
    );
    if let Some(path) = &args.stats {
        write_output(path, &serde_json::to_string_pretty(&stats)?)?;
    }
    Ok(())
}

fn write_output(path: &std::path::Path, text: &str) -> Result<()> {
    if path == std::path::Path::new("-") {
        println!("{text}");
        Ok(())
    } else {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// A one-line progress bar on stderr, shown once the measured phase has run for 2 seconds.
#[derive(Default)]
struct ProgressBar {
    start: Option<std::time::Instant>,
    shown: bool,
}

impl bench::Progress for ProgressBar {
    fn update(&mut self, done: f64, message: &str) {
        let start = *self.start.get_or_insert_with(std::time::Instant::now);
        if start.elapsed().as_secs_f64() < 2.0 {
            return;
        }
        let filled = (done.clamp(0.0, 1.0) * 30.0) as usize;
        eprint!(
            "\r[{}{}] {:>3.0}% {message}   ",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            done * 100.0
        );
        self.shown = true;
    }

    fn finish(&mut self) {
        if self.shown {
            eprintln!();
        }
    }
}
