//! The `convnext-edge` command line: parses arguments, calls the library, prints.
//!
//! Exit status: 0 on success, also when standard output is closed early (`| head -n1`) and when
//! `camera` is stopped by SIGINT, SIGTERM or SIGHUP; 1 when the command failed (for `classify`
//! and `bench`: when any image or configuration failed); 2 for a usage error (a bad flag or
//! value, a bad `--config` file).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
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
    /// More log detail on stderr (-v debug, -vv trace); RUST_LOG, when set, replaces -v/-q.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less log detail on stderr: errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify JPEG/PNG images (folders: every image under them, sorted) and print the top-K
    /// classes.
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
    /// The model (or `model` in --config).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Read the flags from a TOML file, one key per flag (`source-timeout = 30`); flags given
    /// here win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// v4l2:/dev/videoN, pipe:-, pipe:CMD, files:GLOB, replay:FILE or test.
    #[arg(long, default_value = "v4l2:/dev/video0")]
    source: String,
    /// Wait this many seconds (or `forever`) for a source that is not there yet, such as a USB
    /// camera still enumerating at boot.
    #[arg(long, value_name = "SECONDS|forever", default_value = "0")]
    source_timeout: convnext_edge::camera::SourceTimeout,
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
    /// Stop after N processed frames (default: until the source ends or a stop signal).
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
    /// Write the run's counts and stage timings as JSON to FILE (`-` = stdout, which then
    /// carries nothing else) at the end.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// When LABEL is the top class with at least MIN_PROB (default 0.5), run a command or save
    /// the annotated frame (repeatable), e.g. 'cat:0.8=save:/var/lib/cats'.
    #[arg(long, value_name = "LABEL[:MIN_PROB]=exec:CMD|save:DIR")]
    on: Vec<convnext_edge::display::trigger::Trigger>,
    /// Seconds between two firings of one --on trigger.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    on_interval: f64,
}

#[derive(serde::Serialize)]
struct ImageResult<'a> {
    image: String,
    top: &'a [convnext_edge::Prediction],
    latency_ms: f64,
}

/// A mistake in how the program was called: exit status 2, as for clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.verbose, cli.quiet);
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output is gone (`| head -n1`): nothing more to say, to anyone.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            if e.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Logs go to stderr: `error:`/`warning:`-prefixed lines, or under systemd (stderr connected to
/// the journal) with the `<N>` priority prefixes journald reads, since it stamps the time itself.
fn init_logging(verbose: u8, quiet: bool) {
    use log::LevelFilter;
    let ours = match (quiet, verbose) {
        (true, _) => LevelFilter::Error,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    };
    let journald = stderr_is_journal();
    let mut builder = env_logger::Builder::new();
    match std::env::var("RUST_LOG") {
        // As set, like any Rust program: `RUST_LOG=warn` or `RUST_LOG=convnext_edge=debug`.
        Ok(filters) => builder.parse_filters(&filters),
        // Other crates (tract) only warn; ours at the level -v/-q ask for.
        Err(_) => builder
            .filter_level(ours.min(LevelFilter::Warn))
            .filter_module("convnext_edge", ours),
    }
    .format(move |buf, record| {
        use log::Level;
        if journald {
            let priority = match record.level() {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            return writeln!(buf, "<{priority}>{}", record.args());
        }
        let prefix = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
            Level::Trace => "trace: ",
        };
        writeln!(buf, "{prefix}{}", record.args())
    })
    .init();
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for a service whose stderr is the journal; the
/// check against stderr's own device and inode keeps a child whose stderr was redirected plain.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = var.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let meta = std::fs::File::from(fd).metadata();
    meta.is_ok_and(|m| dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()))
}

/// Writes a line to stdout; an error (a closed pipe) ends the command through `?`.
fn out(line: std::fmt::Arguments) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(line)?;
    stdout.write_all(b"\n")
}

macro_rules! outln {
    ($($arg:tt)*) => {
        out(format_args!($($arg)*))
    };
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    if let Command::Bench(args) = cli.command {
        return run_bench(args, cli.threads, cli.input_size, cli.float_only);
    }
    let mut cli = cli;
    if let Command::Camera(args) = &mut cli.command {
        let sub = matches.subcommand_matches("camera").unwrap_or(matches);
        apply_config(
            args,
            &mut cli.threads,
            &mut cli.input_size,
            &mut cli.float_only,
            sub,
        )?;
    }
    if cli.threads.len() > 1 {
        return Err(usage(
            "--threads takes one number here (lists are for bench)",
        ));
    }
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
            let model_path = model;
            let model = Model::load(&model_path, &options)?;
            if cli.verbose > 0 {
                if let Some(w) = model.integer_coverage().warning() {
                    log::warn!("{}: {w}", model_path.display());
                }
            }
            let labels = labels
                .map(|p| Labels::from_file(&p, model.classes()))
                .transpose()?;
            let classifier = Classifier::new(model, preprocess, labels)?;
            let images = convnext_edge::classify::image_files(&images)?;
            anyhow::ensure!(!images.is_empty(), "no JPEG or PNG images found");
            let mut failed = 0;
            for image in images {
                let start = std::time::Instant::now();
                match classifier.classify_file(&image, top) {
                    Ok(preds) => {
                        let latency_ms = start.elapsed().as_secs_f64() * 1e3;
                        print_predictions(&image, &preds, latency_ms, json)?;
                    }
                    Err(e) => {
                        log::error!("{e}");
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
                outln!("{}", serde_json::to_string_pretty(&p)?)?;
            } else {
                outln!("{}", p.render(top).trim_end())?;
            }
        }
        Command::Info { model, json } => {
            let info = Info::gather(&model, &options)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&info)?)?;
            } else {
                outln!("{info}")?;
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
        outln!("{line}")?;
    } else {
        outln!("{name} ({latency_ms:.1} ms)")?;
        for p in preds {
            outln!("  {:>6.2}%  {:<5} {}", p.prob * 100.0, p.index, p.label)?;
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
    let json_to_stdout = args.json.as_deref() == Some(Path::new("-"));
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
        let text = if args.markdown {
            report.markdown()
        } else {
            report.table()
        };
        outln!("{}", text.trim_end())?;
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

/// Fills the camera flags not given on the command line from `--config`.
fn apply_config(
    args: &mut CameraArgs,
    threads: &mut Vec<usize>,
    input_size: &mut Option<usize>,
    float_only: &mut bool,
    matches: &ArgMatches,
) -> Result<()> {
    let Some(path) = &args.config else {
        return Ok(());
    };
    let cfg = convnext_edge::config::CameraConfig::load(path).map_err(|e| usage(e.to_string()))?;
    let unset = |id: &str| matches.value_source(id) != Some(ValueSource::CommandLine);
    macro_rules! fill {
        ($($key:ident => $arg:expr, $wrap:expr);* $(;)?) => {$(
            if let Some(v) = cfg.$key {
                if unset(stringify!($key)) {
                    $arg = $wrap(v);
                }
            }
        )*};
    }
    fill! {
        model => args.model, Some;
        source => args.source, std::convert::identity;
        source_timeout => args.source_timeout, std::convert::identity;
        size => args.size, Some;
        fps => args.fps, Some;
        format => args.format, Some;
        looped => args.looped, std::convert::identity;
        frames => args.frames, Some;
        sink => args.sink, std::convert::identity;
        top => args.top, std::convert::identity;
        every => args.every, std::convert::identity;
        labels => args.labels, Some;
        preprocess => args.preprocess, Some;
        stats => args.stats, Some;
        on => args.on, std::convert::identity;
        on_interval => args.on_interval, std::convert::identity;
        threads => *threads, |n| vec![n];
        input_size => *input_size, Some;
        float_only => *float_only, std::convert::identity;
    }
    Ok(())
}

fn run_camera(args: CameraArgs, options: &LoadOptions) -> Result<()> {
    use convnext_edge::{camera, display, live};
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    let model_path = args
        .model
        .ok_or_else(|| usage("no model: give --model, or `model` in the --config file"))?;
    if args.every == 0 {
        return Err(usage("--every must be at least 1"));
    }
    if args.top == 0 {
        return Err(usage("--top must be at least 1"));
    }
    let stats_to_stdout = args.stats.as_deref() == Some(Path::new("-"));
    if stats_to_stdout && args.sink.iter().any(|s| s == "jsonl:-") {
        return Err(usage(
            "--stats - and --sink jsonl:- both want standard output; send one to a file",
        ));
    }
    // SIGINT, SIGTERM and SIGHUP: the loop finishes its frame, the sinks flush, stats are written.
    ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed))
        .context("installing the signal handler")?;
    let start = std::time::Instant::now();
    let model = Model::load(&model_path, options)?;
    log::debug!(
        "{} loaded in {:.0} ms",
        model_path.display(),
        start.elapsed().as_secs_f64() * 1e3
    );
    let labels = args
        .labels
        .map(|p| Labels::from_file(&p, model.classes()))
        .transpose()?;
    let mut classifier = Classifier::new(model, args.preprocess, labels)?;
    let interval = std::time::Duration::try_from_secs_f64(args.on_interval).map_err(|_| {
        usage(format!(
            "--on-interval must be >= 0, got {}",
            args.on_interval
        ))
    })?;
    let mut sinks = args
        .sink
        .iter()
        .map(|s| display::open(s))
        .collect::<Result<Vec<_>, _>>()?;
    for trigger in args.on {
        sinks.push(Box::new(display::trigger::TriggerSink::new(
            trigger, interval,
        )?));
    }
    let source_opts = camera::SourceOptions {
        size: args.size,
        fps: args.fps,
        format: args.format,
        looped: args.looped,
        max_frame_bytes: camera::DEFAULT_MAX_FRAME_BYTES,
    };
    let source = camera::open_waiting(
        &args.source,
        &source_opts,
        args.source_timeout.0,
        camera::Backoff::default(),
        &STOP,
        &mut |e, wait| log::warn!("{e}; trying again in {:.2} s", wait.as_secs_f32()),
    )?;
    let Some(source) = source else {
        log::info!("stopped while waiting for {}", args.source);
        return Ok(());
    };
    log::debug!("{} opened", source.name());
    let opts = live::LiveOptions {
        top: args.top,
        every: args.every,
        frames: args.frames,
        ..Default::default()
    };
    // With no sink, results are printed (on stderr when stdout carries the stats); otherwise a
    // status line once a second.
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
                let line = format!(
                    "frame {:>6}  {:>6.1} ms  {}",
                    r.frame,
                    r.stages_ms.infer,
                    top.join(", ")
                );
                if stats_to_stdout {
                    eprintln!("{line}");
                } else if outln!("{line}").is_err() {
                    // The reader is gone: end as if stopped.
                    STOP.store(true, Ordering::Relaxed);
                }
            }
            live::Event::Frame(r) => {
                if last_status.elapsed().as_secs_f32() >= 1.0 {
                    last_status = std::time::Instant::now();
                    let top = r.top.first().map_or("", |p| p.label.as_str());
                    log::info!(
                        "frame {:>6}  {:>5.1} fps  infer {:>6.1} ms  dropped {}  {top}",
                        r.frame,
                        r.fps,
                        r.stages_ms.infer,
                        r.dropped
                    );
                }
            }
            live::Event::Skipped(why) => log::warn!("skipped {why}"),
            live::Event::Reconnecting(e, wait) => {
                log::warn!("{e}; reopening in {:.2} s", wait.as_secs_f32())
            }
            live::Event::Reconnected => log::info!("source reopened"),
            live::Event::SinkFailed(e) => log::error!("{e} (sink dropped, others go on)"),
        },
    )?;
    log::info!(
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
    log::info!(
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

fn write_output(path: &Path, text: &str) -> Result<()> {
    if path == Path::new("-") {
        Ok(outln!("{text}")?)
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
