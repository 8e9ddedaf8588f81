//! What the live loop hands its sinks for each frame: the result and where the time went.
//! Here, below both the loop ([`crate::live`]) and the sinks, so that each imports it.

use serde::Serialize;

use crate::classify::Prediction;

/// Milliseconds spent in each stage for one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimes {
    /// Waiting for the frame after the previous one was done.
    pub wait: f32,
    /// Decoding or converting the frame to RGB.
    pub decode: f32,
    /// Resizing and normalising it for the model.
    pub preprocess: f32,
    /// The inference.
    pub infer: f32,
    /// Drawing the result on the frame.
    pub overlay: f32,
    /// Sinks of the previous frame (this frame's are not done when the report is made).
    pub sinks: f32,
}

/// The result of one processed frame, as sinks and callers see it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FrameReport {
    /// The frame's number in its source.
    pub frame: u64,
    /// How many frames were processed before this one.
    pub index: u64,
    /// Wall-clock time of the result, ms since the Unix epoch.
    pub unix_ms: u64,
    /// From capture to result.
    pub latency_ms: f32,
    /// False when `every` > 1 and the previous result is shown again.
    pub classified: bool,
    /// The top classes, most probable first.
    pub top: Vec<Prediction>,
    /// Time in each stage.
    pub stages_ms: StageTimes,
    /// Processed frames per second (moving average).
    pub fps: f32,
    /// Frames dropped so far because a newer one arrived first.
    pub dropped: u64,
    /// Corrupt frames skipped so far (by the source or in decoding).
    pub corrupt: u64,
    /// Times the source was reopened so far.
    pub reconnects: u64,
    /// Sinks that failed so far (and were dropped).
    pub sink_errors: u64,
    /// The file the frame came from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}
