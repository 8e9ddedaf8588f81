//! The camera loop from Rust: a source, the classifier, two sinks, and a callback per frame.
//!
//!     cargo run --release --example camera_loop -- [SOURCE] [MODEL]
//!
//! SOURCE defaults to the digit samples (`files:models/digits/samples`); try `test`,
//! `v4l2:/dev/video0` or `pipe:rpicam-vid -t 0 -n --codec mjpeg -o -`. Annotated frames go to
//! `target/camera_loop/`, and a live view to http://127.0.0.1:8080/.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use convnext_edge::camera::{self, SourceOptions};
use convnext_edge::live::{self, Event, LiveOptions};
use convnext_edge::{display, Classifier, LoadOptions, Model};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let source = args
        .next()
        .unwrap_or_else(|| "files:models/digits/samples".into());
    let model = args
        .next()
        .unwrap_or_else(|| "models/digits/convnext_digits_int8.onnx".into());

    let mut classifier = Classifier::new(
        Model::load(model.as_ref(), &LoadOptions::default())?,
        None,
        None,
    )?;
    let source = camera::open(&source, &SourceOptions::default())?;
    let sinks = vec![
        display::open("png:target/camera_loop")?,
        display::open("http:8080")?,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))?;

    let opts = LiveOptions {
        top: 3,
        frames: Some(300),
        ..Default::default()
    };
    let stats = live::run(
        source,
        &mut classifier,
        sinks,
        &opts,
        &stop,
        &mut |event| match event {
            Event::Frame(r) => println!(
                "frame {:>4}: {} ({:.0}%)",
                r.frame,
                r.top[0].label,
                r.top[0].prob * 100.0
            ),
            Event::Skipped(why) => eprintln!("skipped {why}"),
            other => eprintln!("{other:?}"),
        },
    )?;
    println!(
        "{} frames, {:.1} fps, mean inference {:.1} ms",
        stats.processed, stats.fps, stats.infer.mean_ms
    );
    Ok(())
}
