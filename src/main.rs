//! The `convnext-edge` command line: parses arguments, calls the library, prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use convnext_edge::model::inspect::Info;
use convnext_edge::{npy, Classifier, Labels, LoadOptions, Model, Preset};

#[derive(Parser)]
#[command(
    name = "convnext-edge",
    version,
    about = "Run ConvNeXt ONNX classifiers (f32, f16, int8) with tract"
)]
struct Cli {
    /// Worker threads per inference (default: all cores available to the process).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Input height and width for models with dynamic spatial axes (or to override them).
    #[arg(long, global = true)]
    input_size: Option<usize>,
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
    let options = LoadOptions {
        threads: cli.threads,
        input_size: cli.input_size,
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
