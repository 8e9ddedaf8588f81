//! The live loop: capture → decode/convert → preprocess → infer → overlay → sinks.
//!
//! Capture runs on its own thread and hands frames over through a one-frame slot: from a live
//! source (a camera) the newest frame wins and older ones are dropped and counted, so latency
//! and memory stay bounded when inference is slower than the camera; from a non-live source
//! (files) the capture thread waits instead, so every file is classified. Corrupt frames are
//! skipped and counted, a source that disconnects is reopened with backoff, and a failing sink
//! is reported and dropped while the others go on.
//!
//! ```
//! use std::sync::atomic::AtomicBool;
//! use convnext_edge::{camera, live, Classifier, LoadOptions, Model};
//! let model = Model::load("models/digits/convnext_digits_int8.onnx".as_ref(), &LoadOptions::default())?;
//! let mut classifier = Classifier::new(model, None, None)?;
//! let source = camera::open("files:models/digits/samples", &Default::default())?;
//! let opts = live::LiveOptions { top: 1, ..Default::default() };
//! let mut labels = vec![];
//! let stats = live::run(source, &mut classifier, vec![], &opts, &AtomicBool::new(false), &mut |e| {
//!     if let live::Event::Frame(r) = e { labels.push(r.top[0].label.clone()) }
//! })?;
//! assert_eq!(stats.processed, 10);
//! assert_eq!(labels, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;
use serde::Serialize;

use crate::camera::{convert, Backoff, ErrorKind, Frame, FrameSource, SourceError};
use crate::classify::{Classifier, Prediction};
use crate::display::{overlay, Sink, SinkError, SinkErrorKind, View};
pub use crate::display::{FrameReport, StageTimes};

/// Something that turns an RGB frame into top-K predictions; [`Classifier`] is the real one.
pub trait Recognizer: Send {
    /// Top `k` classes of `img`, recording preprocessing and inference time in `times`.
    fn recognize(
        &mut self,
        img: &RgbImage,
        k: usize,
        times: &mut StageTimes,
    ) -> crate::Result<Vec<Prediction>>;
}

impl Recognizer for Classifier {
    fn recognize(
        &mut self,
        img: &RgbImage,
        k: usize,
        times: &mut StageTimes,
    ) -> crate::Result<Vec<Prediction>> {
        let t = Instant::now();
        let x = self.preprocess().to_tensor(img)?;
        times.preprocess = ms(t.elapsed());
        let t = Instant::now();
        let top = self.predict(x, k)?;
        times.infer = ms(t.elapsed());
        Ok(top)
    }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Classes per result.
    pub top: usize,
    /// Classify every N-th processed frame; the frames between show the last result.
    pub every: usize,
    /// Stop after this many processed frames.
    pub frames: Option<u64>,
    /// Wait before the first reopen of a disconnected source; doubles up to `backoff_max`.
    pub backoff: Duration,
    /// The longest wait between attempts to reopen a lost source.
    pub backoff_max: Duration,
    /// Draw the result over the frame before handing it to sinks.
    pub overlay: bool,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            top: 3,
            every: 1,
            frames: None,
            backoff: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            overlay: true,
        }
    }
}

/// What happened, for the caller to print or collect.
#[derive(Debug)]
pub enum Event<'a> {
    /// A frame was processed and shown.
    Frame(&'a FrameReport),
    /// A frame was corrupt and skipped (why).
    Skipped(&'a str),
    /// The source went away; reopening after the given wait.
    Reconnecting(&'a SourceError, Duration),
    /// The source is back.
    Reconnected,
    /// A sink failed and was dropped.
    SinkFailed(&'a SinkError),
}

/// Mean and worst of one stage over a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageStat {
    /// Mean over the processed frames.
    pub mean_ms: f32,
    /// The worst frame.
    pub max_ms: f32,
}

/// Counts and timings of a whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveStats {
    /// Frames the source delivered.
    pub captured: u64,
    /// Frames processed (classified or shown with the previous result).
    pub processed: u64,
    /// Frames classified.
    pub classified: u64,
    /// Frames dropped for a newer one.
    pub dropped: u64,
    /// Corrupt frames skipped.
    pub corrupt: u64,
    /// Times the source was reopened.
    pub reconnects: u64,
    /// Sinks that failed and were dropped.
    pub sinks_failed: u64,
    /// Wall time of the run.
    pub seconds: f32,
    /// Processed frames per second.
    pub fps: f32,
    /// Waiting for frames.
    pub wait: StageStat,
    /// Decoding frames.
    pub decode: StageStat,
    /// Preprocessing.
    pub preprocess: StageStat,
    /// Inference.
    pub infer: StageStat,
    /// Drawing the overlay.
    pub overlay: StageStat,
    /// Sinks.
    pub sinks: StageStat,
}

/// Why the loop stopped early (a model error stops it after it failed on
/// ten frames in a row; single failures are skipped like corrupt frames).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    /// The source failed and could not be reopened.
    Source(#[from] SourceError),
    #[error("the only sink failed: {0}")]
    /// The only sink failed.
    Sinks(#[from] SinkError),
    #[error(transparent)]
    /// The model failed on ten frames in a row.
    Model(#[from] crate::Error),
}

/// State shared between the capture thread and the loop.
#[derive(Default)]
struct Slot {
    frame: Option<Frame>,
    captured: u64,
    dropped: u64,
    corrupt: u64,
    reconnects: u64,
    /// Messages for the loop to report: skipped frames, reconnect attempts.
    notes: Vec<Note>,
    /// The source is finished: `Some(None)` at its end, `Some(Some(e))` on a fatal error.
    ended: Option<Option<SourceError>>,
    /// The loop is finished; capture must stop.
    closed: bool,
}

enum Note {
    Skipped(String),
    Reconnecting(SourceError, Duration),
    Reconnected,
}

struct Shared {
    slot: Mutex<Slot>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // A panic elsewhere must not turn into a second one here.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the loop until the source ends, `opts.frames` are processed, `stop` is set, or a fatal
/// error; `on_event` sees every processed frame and every incident.
pub fn run(
    source: Box<dyn FrameSource>,
    recognizer: &mut dyn Recognizer,
    mut sinks: Vec<Box<dyn Sink>>,
    opts: &LiveOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(Event),
) -> Result<LiveStats, LiveError> {
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot::default()),
        cv: Condvar::new(),
    });
    let capture = {
        let shared = Arc::clone(&shared);
        let opts = opts.clone();
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture_loop(source, &shared, &opts))
            .expect("spawning the capture thread")
    };
    let mut looper = Looper::new(opts, sinks.len());
    let result = looper.run(&shared, recognizer, &mut sinks, stop, on_event);
    shared.lock().closed = true;
    shared.cv.notify_all();
    // A source blocked in a read returns at its next frame; do not wait for a silent one.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !capture.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if capture.is_finished() {
        let _ = capture.join();
    }
    let slot = shared.lock();
    let mut stats = looper.stats;
    stats.captured = slot.captured;
    stats.dropped = slot.dropped;
    stats.corrupt += slot.corrupt;
    stats.reconnects = slot.reconnects;
    stats.seconds = looper.start.elapsed().as_secs_f32();
    stats.fps = stats.processed as f32 / stats.seconds.max(1e-6);
    result.map(|()| stats)
}

fn capture_loop(mut source: Box<dyn FrameSource>, shared: &Shared, opts: &LiveOptions) {
    let live = source.is_live();
    loop {
        if shared.lock().closed {
            return;
        }
        match source.next_frame() {
            Ok(frame) => {
                let mut slot = shared.lock();
                if !live {
                    while slot.frame.is_some() && !slot.closed {
                        slot = shared.cv.wait(slot).unwrap_or_else(|p| p.into_inner());
                    }
                }
                slot.captured += 1;
                if slot.frame.replace(frame).is_some() {
                    slot.dropped += 1;
                }
                shared.cv.notify_all();
            }
            Err(e) => match e.kind {
                ErrorKind::Corrupt => {
                    let mut slot = shared.lock();
                    slot.corrupt += 1;
                    slot.notes.push(Note::Skipped(e.to_string()));
                }
                ErrorKind::Disconnected | ErrorKind::Missing => {
                    if !reconnect(source.as_mut(), e, shared, opts) {
                        return;
                    }
                }
                ErrorKind::EndOfStream | ErrorKind::Config => {
                    let fatal = (e.kind == ErrorKind::Config).then_some(e);
                    shared.lock().ended = Some(fatal);
                    shared.cv.notify_all();
                    return;
                }
            },
        }
    }
}

/// Reopens the source with exponential backoff until it works or the loop closes; false when
/// capture must end.
fn reconnect(
    source: &mut dyn FrameSource,
    mut error: SourceError,
    shared: &Shared,
    opts: &LiveOptions,
) -> bool {
    let mut backoff = Backoff::new(opts.backoff, opts.backoff_max);
    loop {
        let wait = backoff.next_wait();
        {
            let mut slot = shared.lock();
            slot.notes.push(Note::Reconnecting(error.clone(), wait));
            let (slot, _) = shared
                .cv
                .wait_timeout_while(slot, wait, |s| !s.closed)
                .unwrap_or_else(|p| p.into_inner());
            if slot.closed {
                return false;
            }
        }
        match source.reopen() {
            Ok(()) => {
                let mut slot = shared.lock();
                slot.reconnects += 1;
                slot.notes.push(Note::Reconnected);
                return true;
            }
            Err(e) if matches!(e.kind, ErrorKind::Disconnected | ErrorKind::Missing) => error = e,
            Err(e) => {
                let fatal = (e.kind == ErrorKind::Config).then_some(e);
                shared.lock().ended = Some(fatal);
                shared.cv.notify_all();
                return false;
            }
        }
    }
}

/// Per-stage accumulator: sum and max.
#[derive(Default)]
struct Acc {
    sum: f64,
    max: f32,
}

impl Acc {
    fn add(&mut self, ms: f32) {
        self.sum += ms as f64;
        self.max = self.max.max(ms);
    }

    fn stat(&self, n: u64) -> StageStat {
        StageStat {
            mean_ms: (self.sum / n.max(1) as f64) as f32,
            max_ms: self.max,
        }
    }
}

/// The consuming side of the loop.
struct Looper<'a> {
    opts: &'a LiveOptions,
    had_sinks: bool,
    /// The last sink's reader went away (a closed pipe): the run ends as if stopped.
    readers_gone: bool,
    /// Corrupt frames the capture thread skipped so far (added to the stats at the end).
    source_corrupt: u64,
    start: Instant,
    stats: LiveStats,
    acc: [Acc; 6],
    fps: f32,
    last_done: Option<Instant>,
    last_top: Vec<Prediction>,
    last_infer_ms: f32,
    last_sinks_ms: f32,
    failures_in_a_row: u32,
}

/// Consecutive frames the model may fail on before the loop gives up.
const MAX_FAILURES_IN_A_ROW: u32 = 10;

impl<'a> Looper<'a> {
    fn new(opts: &'a LiveOptions, sinks: usize) -> Self {
        Looper {
            opts,
            had_sinks: sinks > 0,
            readers_gone: false,
            source_corrupt: 0,
            start: Instant::now(),
            stats: LiveStats::default(),
            acc: Default::default(),
            fps: 0.0,
            last_done: None,
            last_top: vec![],
            last_infer_ms: 0.0,
            last_sinks_ms: 0.0,
            failures_in_a_row: 0,
        }
    }

    fn run(
        &mut self,
        shared: &Shared,
        recognizer: &mut dyn Recognizer,
        sinks: &mut Vec<Box<dyn Sink>>,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), LiveError> {
        loop {
            if self.opts.frames.is_some_and(|n| self.stats.processed >= n) {
                return Ok(());
            }
            let waited = Instant::now();
            let (frame, notes, ended) = {
                let slot = shared.lock();
                let (mut slot, _) = shared
                    .cv
                    .wait_timeout_while(slot, Duration::from_millis(100), |s| {
                        s.frame.is_none() && s.ended.is_none() && s.notes.is_empty()
                    })
                    .unwrap_or_else(|p| p.into_inner());
                let frame = slot.frame.take();
                self.stats.dropped = slot.dropped;
                self.source_corrupt = slot.corrupt;
                self.stats.reconnects = slot.reconnects;
                let notes = std::mem::take(&mut slot.notes);
                let ended = if frame.is_none() {
                    slot.ended.clone()
                } else {
                    None
                };
                shared.cv.notify_all();
                (frame, notes, ended)
            };
            for note in &notes {
                match note {
                    Note::Skipped(why) => on_event(Event::Skipped(why)),
                    Note::Reconnecting(e, wait) => on_event(Event::Reconnecting(e, *wait)),
                    Note::Reconnected => on_event(Event::Reconnected),
                }
            }
            if stop.load(Ordering::Relaxed) || self.readers_gone {
                return Ok(());
            }
            match (frame, ended) {
                (Some(frame), _) => {
                    let wait = ms(waited.elapsed());
                    self.process(frame, wait, recognizer, sinks, on_event)?;
                }
                (None, Some(None)) => return Ok(()),
                (None, Some(Some(fatal))) => return Err(fatal.into()),
                (None, None) => {}
            }
        }
    }

    fn process(
        &mut self,
        frame: Frame,
        wait: f32,
        recognizer: &mut dyn Recognizer,
        sinks: &mut Vec<Box<dyn Sink>>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), LiveError> {
        let mut times = StageTimes {
            wait,
            sinks: self.last_sinks_ms,
            ..Default::default()
        };
        let t = Instant::now();
        let img = match convert::to_rgb(&frame) {
            Ok(img) => img,
            Err(why) => {
                self.stats.corrupt += 1;
                let origin = frame
                    .origin
                    .as_ref()
                    .map(|p| format!(" ({})", p.display()))
                    .unwrap_or_default();
                on_event(Event::Skipped(&format!(
                    "frame {}{origin}: {why}",
                    frame.seq
                )));
                return Ok(());
            }
        };
        times.decode = ms(t.elapsed());
        let every = self.opts.every.max(1) as u64;
        let classify = self.stats.processed.is_multiple_of(every) || self.last_top.is_empty();
        if classify {
            match recognizer.recognize(&img, self.opts.top.max(1), &mut times) {
                Ok(top) => {
                    self.last_top = top;
                    self.failures_in_a_row = 0;
                }
                // One bad frame is skipped; a model that keeps failing stops the loop.
                Err(e) if self.failures_in_a_row + 1 < MAX_FAILURES_IN_A_ROW => {
                    self.failures_in_a_row += 1;
                    self.stats.corrupt += 1;
                    on_event(Event::Skipped(&format!("frame {}: {e}", frame.seq)));
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
            self.last_infer_ms = times.infer;
            self.stats.classified += 1;
        }
        let done = Instant::now();
        if let Some(prev) = self.last_done {
            let inst = 1.0 / (done - prev).as_secs_f32().max(1e-6);
            self.fps = if self.fps == 0.0 {
                inst
            } else {
                0.9 * self.fps + 0.1 * inst
            };
        }
        self.last_done = Some(done);
        let t = Instant::now();
        let mut annotated = img.clone();
        if self.opts.overlay {
            overlay::draw(&mut annotated, &self.last_top, self.fps, self.last_infer_ms);
        }
        times.overlay = ms(t.elapsed());
        let report = FrameReport {
            frame: frame.seq,
            index: self.stats.processed,
            unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            latency_ms: ms(frame.captured.elapsed()),
            classified: classify,
            top: self.last_top.clone(),
            stages_ms: times,
            fps: self.fps,
            dropped: self.stats.dropped,
            corrupt: self.stats.corrupt + self.source_corrupt,
            reconnects: self.stats.reconnects,
            sink_errors: self.stats.sinks_failed,
            origin: frame.origin.as_ref().map(|p| p.display().to_string()),
        };
        let t = Instant::now();
        let view = View {
            frame: &img,
            annotated: &annotated,
            report: &report,
        };
        self.show(&view, sinks, on_event)?;
        self.last_sinks_ms = ms(t.elapsed());
        for (acc, v) in self.acc.iter_mut().zip([
            times.wait,
            times.decode,
            times.preprocess,
            times.infer,
            times.overlay,
            self.last_sinks_ms,
        ]) {
            acc.add(v);
        }
        self.stats.processed += 1;
        let n = self.stats.processed;
        let c = self.stats.classified;
        let s = &mut self.stats;
        [s.wait, s.decode] = [self.acc[0].stat(n), self.acc[1].stat(n)];
        [s.preprocess, s.infer] = [self.acc[2].stat(c), self.acc[3].stat(c)];
        [s.overlay, s.sinks] = [self.acc[4].stat(n), self.acc[5].stat(n)];
        on_event(Event::Frame(&report));
        Ok(())
    }

    fn show(
        &mut self,
        view: &View,
        sinks: &mut Vec<Box<dyn Sink>>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), LiveError> {
        let mut i = 0;
        while i < sinks.len() {
            match sinks[i].show(view) {
                Ok(()) => i += 1,
                Err(e) => {
                    self.stats.sinks_failed += 1;
                    sinks.remove(i);
                    if sinks.is_empty() && self.had_sinks {
                        if e.kind != SinkErrorKind::Closed {
                            return Err(e.into());
                        }
                        self.readers_gone = true;
                        return Ok(());
                    }
                    on_event(Event::SinkFailed(&e));
                }
            }
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f32 {
    d.as_secs_f32() * 1000.0
}
