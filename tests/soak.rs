//! Soak test of the live loop (not in default CI; about 5 minutes on 2 cores):
//!
//!     cargo test --release --test soak -- --ignored --nocapture
//!
//! 100,000 frames from the synthetic source through the loop with the small digits model, the
//! overlay, a JSON-lines sink and the HTTP live view; resident memory at the end must be within
//! 5% of what it was after warm-up. `SOAK_FRAMES` changes the count.

mod common;

use std::sync::atomic::AtomicBool;

use convnext_edge::display;
use convnext_edge::live::{self, Event, LiveOptions};
use convnext_edge::machine::{rss_bytes, Sysfs};

#[test]
#[ignore = "long: run with --ignored"]
fn memory_stays_flat_over_100k_frames() {
    let frames: u64 = std::env::var("SOAK_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let warmup = 1_000.min(frames / 10);
    let mut classifier = common::digits_classifier();
    let source = common::test_camera((320, 240), 0.0);
    let sinks = vec![
        display::open("jsonl:/dev/null").unwrap(),
        display::open("http:0").unwrap(),
    ];
    let opts = LiveOptions {
        top: 3,
        frames: Some(frames),
        ..Default::default()
    };
    let sys = Sysfs::default();
    let mut after_warmup = 0;
    let mut peak_after_warmup = 0;
    let stats = live::run(
        source,
        &mut classifier,
        sinks,
        &opts,
        &AtomicBool::new(false),
        &mut |e| {
            if let Event::Frame(r) = e {
                if r.index >= warmup && r.index % 1000 == 0 {
                    let rss = rss_bytes(&sys).unwrap().0;
                    if r.index == warmup {
                        after_warmup = rss;
                    }
                    peak_after_warmup = peak_after_warmup.max(rss);
                }
            }
        },
    )
    .unwrap();
    let end = rss_bytes(&sys).unwrap().0;
    let growth = end as f64 / after_warmup as f64 - 1.0;
    println!(
        "soak: {} frames in {:.0} s ({:.0} fps), {} dropped, RSS after warm-up {:.1} MiB, \
         at the end {:.1} MiB ({:+.2}%), highest sample {:.1} MiB",
        stats.processed,
        stats.seconds,
        stats.fps,
        stats.dropped,
        after_warmup as f64 / 1048576.0,
        end as f64 / 1048576.0,
        growth * 100.0,
        peak_after_warmup as f64 / 1048576.0
    );
    assert_eq!(stats.processed, frames);
    assert!(growth.abs() <= 0.05, "RSS grew {:.2}%", growth * 100.0);
}
