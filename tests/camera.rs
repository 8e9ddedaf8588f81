//! The camera loop without a camera: recorded frames against OpenCV's and libjpeg-turbo's
//! decodes (tests/data/camera, made by models/make_camera_fixtures.py), the MJPEG splitter, the
//! live loop over replayed and synthetic sources, and every sink that can run here.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use convnext_edge::camera::mjpeg::{Split, Splitter};
use convnext_edge::camera::{
    self, convert, ErrorKind, Frame, FrameSource, PixelFormat, SourceError, SourceOptions,
};
use convnext_edge::display::overlay::{self, Layout};
use convnext_edge::display::{self, Sink, SinkError, SinkErrorKind, View};
use convnext_edge::live::{self, Event, LiveOptions, LiveStats, Recognizer, StageTimes};
use convnext_edge::{Classifier, Prediction};
use image::RgbImage;

fn data(name: &str) -> PathBuf {
    common::root().join("tests/data/camera").join(name)
}

fn png(name: &str) -> RgbImage {
    image::open(data(name)).unwrap().to_rgb8()
}

fn classifier() -> Classifier {
    common::digits_classifier()
}

fn frame(format: PixelFormat, data: Vec<u8>, (width, height): (u32, u32)) -> Frame {
    Frame {
        data,
        format,
        width,
        height,
        seq: 0,
        captured: Instant::now(),
        origin: None,
    }
}

/// (max, mean) absolute difference per channel value.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d: Vec<u8> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    let mean = d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64;
    (*d.iter().max().unwrap(), mean)
}

#[test]
fn fixtures_match_their_manifest() {
    let text = std::fs::read_to_string(data("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = manifest["sha256"].as_object().unwrap();
    assert!(files.len() >= 12);
    for (name, sha) in files {
        assert_eq!(
            common::sha256_hex(&data(name)),
            sha.as_str().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn raw_yuv_frames_decode_like_opencv() {
    for (file, format) in [
        ("frame.yuyv", PixelFormat::Yuyv),
        ("frame.nv12", PixelFormat::Nv12),
        ("frame.i420", PixelFormat::I420),
    ] {
        let bytes = std::fs::read(data(file)).unwrap();
        let rgb = convert::to_rgb(&frame(format, bytes, (160, 120))).unwrap();
        let ext = file.split('.').nth(1).unwrap();
        let (max, mean) = diff(&rgb, &png(&format!("expected_{ext}.png")));
        eprintln!("{file}: max {max}, mean {mean:.3}");
        assert!(max <= 2 && mean <= 1.0, "{file}: max {max}, mean {mean:.3}");
    }
}

#[test]
fn mjpeg_frames_decode_like_libjpeg_with_and_without_huffman_tables() {
    let with = convert::decode_jpeg(&std::fs::read(data("frame.jpg")).unwrap()).unwrap();
    let (max, mean) = diff(&with, &png("expected_jpeg.png"));
    assert!(max <= 3 && mean <= 0.5, "max {max}, mean {mean:.3}");
    let without = convert::decode_jpeg(&std::fs::read(data("frame_nodht.jpg")).unwrap()).unwrap();
    assert_eq!(
        with, without,
        "the inserted tables must be the standard ones"
    );
}

#[test]
fn the_splitter_cuts_a_chunked_stream_where_the_encoder_did() {
    let stream = std::fs::read(data("stream.mjpeg")).unwrap();
    let lens: Vec<usize> =
        serde_json::from_str(&std::fs::read_to_string(data("stream_frames.json")).unwrap())
            .unwrap();
    for chunk in [1, 2, 100, 4096, stream.len()] {
        let mut s = Splitter::new(1 << 20);
        let mut got = vec![];
        for c in stream.chunks(chunk) {
            s.push(c);
            while let Some(x) = s.pop() {
                got.push(x);
            }
        }
        assert_eq!(s.finish(), None);
        let got: Vec<usize> = got
            .into_iter()
            .map(|x| match x {
                Split::Frame(f) => f.len(),
                Split::Corrupt(why) => panic!("chunk {chunk}: {why}"),
            })
            .collect();
        assert_eq!(got, lens, "chunk {chunk}");
    }
}

#[test]
fn replay_and_pipe_sources_give_the_recorded_frames() {
    let opts = SourceOptions {
        fps: Some(0.0),
        ..Default::default()
    };
    let path = data("stream.mjpeg");
    let mut replay = camera::open(&format!("replay:{}", path.display()), &opts).unwrap();
    assert!(!replay.is_live(), "an unpaced replay is read losslessly");
    for _ in 0..3 {
        let f = replay.next_frame().unwrap();
        assert_eq!(convert::to_rgb(&f).unwrap().dimensions(), (160, 120));
    }
    assert_eq!(
        replay.next_frame().unwrap_err().kind,
        ErrorKind::EndOfStream
    );

    let mut pipe = camera::open(&format!("pipe:cat '{}'", path.display()), &opts).unwrap();
    assert!(pipe.is_live());
    for _ in 0..3 {
        pipe.next_frame().unwrap();
    }
    let e = pipe.next_frame().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Disconnected, "{e}");
    pipe.reopen().unwrap();
    assert_eq!(pipe.next_frame().unwrap().seq, 3);

    // Raw frames on a pipe need their size and are cut by it.
    let yuyv = data("frame.yuyv");
    let raw = SourceOptions {
        format: Some(PixelFormat::Yuyv),
        size: Some((160, 120)),
        ..Default::default()
    };
    let mut pipe = camera::open(&format!("pipe:cat '{0}' '{0}'", yuyv.display()), &raw).unwrap();
    let f = pipe.next_frame().unwrap();
    assert_eq!((f.width, f.height, f.data.len()), (160, 120, 38400));
    pipe.next_frame().unwrap();
    assert_eq!(pipe.next_frame().unwrap_err().kind, ErrorKind::Disconnected);
    let no_size = SourceOptions {
        format: Some(PixelFormat::Yuyv),
        ..Default::default()
    };
    let e = camera::open("pipe:-", &no_size).err().unwrap();
    assert!(e.to_string().contains("--size"), "{e}");
}

/// Runs the loop, collecting events as strings and reports.
fn run_loop(
    source: Box<dyn FrameSource>,
    recognizer: &mut dyn Recognizer,
    sinks: Vec<Box<dyn Sink>>,
    opts: &LiveOptions,
) -> (
    Result<LiveStats, live::LiveError>,
    Vec<live::FrameReport>,
    Vec<String>,
) {
    let mut reports = vec![];
    let mut incidents = vec![];
    let result = live::run(
        source,
        recognizer,
        sinks,
        opts,
        &AtomicBool::new(false),
        &mut |e| match e {
            Event::Frame(r) => reports.push(r.clone()),
            Event::Skipped(why) => incidents.push(format!("skipped: {why}")),
            Event::Reconnecting(e, _) => incidents.push(format!("reconnecting: {e}")),
            Event::Reconnected => incidents.push("reconnected".into()),
            Event::SinkFailed(e) => incidents.push(format!("sink failed: {e}")),
        },
    );
    (result, reports, incidents)
}

/// The pixels of `text` as drawn by the overlay font at `at`, as a set of coordinates.
fn text_mask(text: &str, layout: &Layout, at: (i32, i32), size: (u32, u32)) -> Vec<(u32, u32)> {
    use embedded_graphics::mono_font::MonoTextStyle;
    use embedded_graphics::prelude::*;
    use embedded_graphics::text::{Baseline, Text};
    let mut img = RgbImage::new(size.0, size.1);
    let style = MonoTextStyle::new(layout.font, overlay::TEXT);
    let mut canvas = overlay::RgbCanvas(&mut img);
    Text::with_baseline(text, Point::new(at.0, at.1), style, Baseline::Top)
        .draw(&mut canvas)
        .unwrap();
    img.enumerate_pixels()
        .filter(|(_, _, p)| p.0 == [255, 255, 255])
        .map(|(x, y, _)| (x, y))
        .collect()
}

#[test]
fn the_loop_over_a_recording_draws_the_right_labels_on_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SourceOptions {
        fps: Some(0.0),
        ..Default::default()
    };
    let source =
        camera::open(&format!("replay:{}", data("digits.mjpeg").display()), &opts).unwrap();
    let sinks = vec![
        display::open(&format!("png:{}", dir.path().join("png").display())).unwrap(),
        display::open(&format!("jsonl:{}", dir.path().join("out.jsonl").display())).unwrap(),
    ];
    let live_opts = LiveOptions {
        top: 2,
        ..Default::default()
    };
    let (stats, reports, incidents) = run_loop(source, &mut classifier(), sinks, &live_opts);
    let stats = stats.unwrap();
    assert!(incidents.is_empty(), "{incidents:?}");
    assert_eq!(
        (stats.captured, stats.processed, stats.dropped),
        (10, 10, 0)
    );
    let labels: Vec<&str> = reports.iter().map(|r| r.top[0].label.as_str()).collect();
    assert_eq!(labels, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);

    let lines = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 10);
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["top"][0]["label"], "0");
    assert!(first["stages_ms"]["infer"].as_f64().unwrap() > 0.0);

    let files: Vec<_> = std::fs::read_dir(dir.path().join("png"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(
        files.len(),
        10,
        "one annotated image per frame, no partial files"
    );
    for r in &reports {
        let img = image::open(dir.path().join(format!("png/frame-{:06}.png", r.index)))
            .unwrap()
            .to_rgb8();
        let layout = Layout::new(img.width(), 2);
        for (p, (text, bar)) in r.top.iter().zip(&layout.rows) {
            let line = overlay::class_line(p, layout.columns);
            let want = text_mask(
                &line,
                &layout,
                (text.top_left.x, text.top_left.y),
                img.dimensions(),
            );
            assert!(!want.is_empty());
            for &(x, y) in &want {
                assert_eq!(
                    img.get_pixel(x, y).0,
                    [255, 255, 255],
                    "frame {} '{line}' at {x},{y}",
                    r.index
                );
            }
            // No other white in the text row: the line drawn is exactly this one.
            let white = (text.top_left.y as u32..text.top_left.y as u32 + text.size.height)
                .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 == [255, 255, 255])
                .count();
            assert_eq!(white, want.len(), "frame {}: '{line}'", r.index);
            let green = (0..img.width())
                .filter(|&x| img.get_pixel(x, bar.top_left.y as u32).0 == [46, 204, 64])
                .count() as f32;
            let expect = (bar.size.width as f32 * p.prob).round();
            assert!((green - expect).abs() <= 1.0, "bar {green} vs {expect}");
        }
    }
}

/// A recognizer that takes its time, to make the camera outrun it.
struct Slow(Classifier, Duration);

impl Recognizer for Slow {
    fn recognize(
        &mut self,
        img: &RgbImage,
        k: usize,
        t: &mut StageTimes,
    ) -> convnext_edge::Result<Vec<Prediction>> {
        std::thread::sleep(self.1);
        self.0.recognize(img, k, t)
    }
}

#[test]
fn a_slow_model_drops_old_frames_and_counts_them() {
    let source = common::test_camera((160, 120), 200.0);
    let opts = LiveOptions {
        top: 1,
        frames: Some(8),
        ..Default::default()
    };
    let mut slow = Slow(classifier(), Duration::from_millis(40));
    let (stats, reports, _) = run_loop(source, &mut slow, vec![], &opts);
    let stats = stats.unwrap();
    assert_eq!(stats.processed, 8);
    // 8 frames x 40 ms at 200 fps: about 8 frames arrive per inference; all but one are dropped.
    assert!(stats.dropped >= 20, "{stats:?}");
    let pending = stats.captured - stats.processed - stats.dropped;
    assert!(
        pending <= 1,
        "captured = processed + dropped (+ one waiting): {stats:?}"
    );
    // The newest frame wins: consecutive processed frames skip the dropped ones.
    let gaps: Vec<u64> = reports
        .windows(2)
        .map(|w| w[1].frame - w[0].frame)
        .collect();
    assert!(gaps.iter().all(|&g| g >= 2), "{gaps:?}");
    let seen: Vec<u64> = reports.iter().map(|r| r.dropped).collect();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]) && seen[7] <= stats.dropped,
        "{seen:?}"
    );
}

#[test]
fn a_corrupt_frame_mid_stream_is_skipped_and_the_rest_classified() {
    let digits = std::fs::read(data("digits.mjpeg")).unwrap();
    let mut s = Splitter::new(1 << 20);
    s.push(&digits);
    let frames: Vec<Vec<u8>> = std::iter::from_fn(|| s.pop())
        .map(|x| match x {
            Split::Frame(f) => f,
            Split::Corrupt(w) => panic!("{w}"),
        })
        .collect();
    let mut stream = vec![];
    stream.extend_from_slice(&frames[3]);
    stream.extend_from_slice(b"line noise");
    // Well-formed markers, undecodable picture: the splitter passes it, the decoder refuses it.
    stream.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0xD9]);
    // A frame cut short in its picture data by the next one.
    stream.extend_from_slice(&frames[5][..frames[5].len() - 40]);
    stream.extend_from_slice(&frames[7]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.mjpeg");
    std::fs::write(&path, &stream).unwrap();
    let source = camera::open(
        &format!("replay:{}", path.display()),
        &SourceOptions {
            fps: Some(0.0),
            ..Default::default()
        },
    )
    .unwrap();
    let opts = LiveOptions {
        top: 1,
        ..Default::default()
    };
    let (stats, reports, incidents) = run_loop(source, &mut classifier(), vec![], &opts);
    let stats = stats.unwrap();
    let labels: Vec<&str> = reports.iter().map(|r| r.top[0].label.as_str()).collect();
    assert_eq!(labels, ["3", "7"], "{incidents:?}");
    assert_eq!(stats.corrupt, 3, "{incidents:?}");
    assert_eq!(incidents.len(), 3, "{incidents:?}");
    assert!(
        incidents.iter().any(|i| i.contains("non-JPEG data")),
        "{incidents:?}"
    );
    assert!(
        incidents.iter().any(|i| i.contains("bad JPEG frame")),
        "{incidents:?}"
    );
    assert!(
        incidents.iter().any(|i| i.contains("cut short")),
        "{incidents:?}"
    );
}

/// A camera that is unplugged after some frames and comes back after failed reopen attempts.
struct Flaky {
    inner: Box<dyn FrameSource>,
    frames_before_unplug: u32,
    failed_reopens: u32,
    log: Arc<Mutex<Vec<&'static str>>>,
}

impl FrameSource for Flaky {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        if self.frames_before_unplug == 0 {
            return Err(SourceError::new(
                ErrorKind::Disconnected,
                "flaky",
                "unplugged",
            ));
        }
        self.frames_before_unplug -= 1;
        self.inner.next_frame()
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        if self.failed_reopens > 0 {
            self.failed_reopens -= 1;
            self.log.lock().unwrap().push("reopen failed");
            return Err(SourceError::new(
                ErrorKind::Disconnected,
                "flaky",
                "no such device",
            ));
        }
        self.log.lock().unwrap().push("reopened");
        self.frames_before_unplug = 100;
        Ok(())
    }

    fn is_live(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        "flaky"
    }
}

#[test]
fn a_camera_that_disappears_is_reopened_with_backoff() {
    let log = Arc::new(Mutex::new(vec![]));
    let source = Flaky {
        inner: common::test_camera((64, 48), 100.0),
        frames_before_unplug: 3,
        failed_reopens: 2,
        log: Arc::clone(&log),
    };
    let opts = LiveOptions {
        top: 1,
        frames: Some(6),
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(50),
        ..Default::default()
    };
    let start = Instant::now();
    let (stats, _, incidents) = run_loop(Box::new(source), &mut classifier(), vec![], &opts);
    let stats = stats.unwrap();
    assert_eq!(stats.processed, 6);
    assert_eq!(stats.reconnects, 1);
    assert_eq!(
        *log.lock().unwrap(),
        ["reopen failed", "reopen failed", "reopened"]
    );
    let waits = incidents
        .iter()
        .filter(|i| i.starts_with("reconnecting"))
        .count();
    assert_eq!(waits, 3, "{incidents:?}");
    assert!(incidents.contains(&"reconnected".to_string()));
    // Backoff 20 + 40 + 50 ms before the three attempts.
    assert!(start.elapsed() >= Duration::from_millis(110));

    // A real process: `cat` ends after ten frames and is restarted.
    let source = camera::open(
        &format!("pipe:cat '{}'", data("digits.mjpeg").display()),
        &SourceOptions::default(),
    )
    .unwrap();
    let opts = LiveOptions {
        top: 1,
        frames: Some(3),
        backoff: Duration::from_millis(10),
        ..Default::default()
    };
    let (stats, _, _) = run_loop(source, &mut classifier(), vec![], &opts);
    assert_eq!(stats.unwrap().processed, 3);
}

/// A sink that fails on its second frame.
struct Failing(u32);

impl Sink for Failing {
    fn show(&mut self, _: &View) -> Result<(), SinkError> {
        self.0 += 1;
        if self.0 >= 2 {
            return Err(SinkError::new(
                SinkErrorKind::Write,
                "failing",
                "No space left on device",
            ));
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "failing"
    }
}

fn files_source() -> Box<dyn FrameSource> {
    let samples = common::root().join("models/digits/samples");
    camera::open(&format!("files:{}", samples.display()), &Default::default()).unwrap()
}

#[test]
fn a_failing_sink_is_dropped_and_the_others_go_on_unless_it_was_the_only_one() {
    let dir = tempfile::tempdir().unwrap();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(Failing(0)),
        display::open(&format!("jpeg:{}", dir.path().display())).unwrap(),
    ];
    let opts = LiveOptions::default();
    let (stats, _, incidents) = run_loop(files_source(), &mut classifier(), sinks, &opts);
    let stats = stats.unwrap();
    assert_eq!((stats.processed, stats.sinks_failed), (10, 1));
    assert_eq!(incidents, ["sink failed: failing: No space left on device"]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 10);

    let (result, reports, _) = run_loop(
        files_source(),
        &mut classifier(),
        vec![Box::new(Failing(0))],
        &opts,
    );
    let e = result.unwrap_err();
    assert!(e.to_string().contains("the only sink failed"), "{e}");
    assert_eq!(reports.len(), 1);
}

#[test]
fn the_framebuffer_sink_letterboxes_into_a_file_standing_in_for_dev_fb0() {
    let root = tempfile::tempdir().unwrap();
    let sys = root.path().join("sys");
    let fbdir = sys.join("class/graphics/fb0");
    std::fs::create_dir_all(&fbdir).unwrap();
    for bpp in [32u32, 16] {
        let (w, h) = (200u32, 120u32);
        let stride = w * bpp / 8 + 16;
        std::fs::write(fbdir.join("virtual_size"), format!("{w},{h}\n")).unwrap();
        std::fs::write(fbdir.join("bits_per_pixel"), format!("{bpp}\n")).unwrap();
        std::fs::write(fbdir.join("stride"), format!("{stride}\n")).unwrap();
        let dev = root.path().join("fb0");
        std::fs::write(&dev, vec![0x55u8; (stride * h) as usize]).unwrap();
        let sysfs = convnext_edge::machine::Sysfs {
            sys: sys.clone(),
            proc: root.path().join("proc"),
        };
        let mut sink = display::fb::FbSink::open("fb", &dev, &sysfs).unwrap();
        // A 160x120 red frame on a 200x120 screen: 20 columns of black each side.
        let red = RgbImage::from_pixel(160, 120, image::Rgb([255, 0, 0]));
        let report = dummy_report();
        sink.show(&View {
            frame: &red,
            annotated: &red,
            report: &report,
        })
        .unwrap();
        let bytes = std::fs::read(&dev).unwrap();
        assert_eq!(
            bytes.len(),
            (stride * h) as usize,
            "the device is not resized"
        );
        let px = |x: u32, y: u32| {
            let o = (y * stride + x * bpp / 8) as usize;
            bytes[o..o + (bpp / 8) as usize].to_vec()
        };
        let (red_px, black_px) = if bpp == 32 {
            (vec![0, 0, 255, 255], vec![0, 0, 0, 0])
        } else {
            (0xF800u16.to_le_bytes().to_vec(), vec![0, 0])
        };
        assert_eq!(px(100, 60), red_px, "{bpp} bpp");
        assert_eq!(px(20, 0), red_px);
        assert_eq!(px(19, 60), black_px);
        assert_eq!(px(180, 119), black_px);
    }
    let sysfs = convnext_edge::machine::Sysfs {
        sys: root.path().join("nothing"),
        proc: root.path().join("proc"),
    };
    let e = display::fb::FbSink::open("fb:/dev/fb1", Path::new("/dev/fb1"), &sysfs)
        .err()
        .unwrap();
    assert_eq!(e.kind, SinkErrorKind::Unavailable);
    assert!(e.to_string().contains("virtual_size"), "{e}");
}

fn dummy_report() -> live::FrameReport {
    live::FrameReport {
        latency_ms: 1.0,
        classified: true,
        top: vec![Prediction {
            index: 7,
            label: "seven".into(),
            prob: 0.5,
            logit: 1.0,
        }],
        fps: 30.0,
        ..Default::default()
    }
}

#[test]
fn the_http_sink_serves_the_page_the_stream_and_the_latest_result() {
    use std::io::{BufRead, BufReader, Read};
    let mut sink = display::http::HttpSink::bind("http", "0").unwrap();
    let base = format!("http://{}", sink.addr());
    assert!(
        sink.addr().ip().is_loopback(),
        "a bare port binds to loopback"
    );
    let page = ureq::get(&format!("{base}/"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(page.contains("/stream.mjpg") && page.contains("/result.json"));
    let json = ureq::get(&format!("{base}/result.json"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert_eq!(json, "null");

    let mut stream = std::net::TcpStream::connect(sink.addr()).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let img = RgbImage::from_pixel(64, 48, image::Rgb([0, 0, 255]));
    let mut report = dummy_report();
    // Keep showing frames until the stream client is registered and gets one.
    let feeder = std::thread::spawn(move || {
        for i in 0..200 {
            report.frame = i;
            sink.show(&View {
                frame: &img,
                annotated: &img,
                report: &report,
            })
            .unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mut line = String::new();
    let mut length = 0;
    while !line.starts_with("--frame") {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "stream ended");
    }
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut jpeg = vec![0; length];
    reader.read_exact(&mut jpeg).unwrap();
    let decoded = convert::decode_jpeg(&jpeg).unwrap();
    assert_eq!(decoded.dimensions(), (64, 48));
    assert!(decoded.get_pixel(32, 24).0[2] > 200);
    let result = || -> serde_json::Value {
        let body = ureq::get(&format!("{base}/result.json"))
            .call()
            .unwrap()
            .into_body()
            .read_to_string();
        serde_json::from_str(&body.unwrap()).unwrap()
    };
    let first = result();
    std::thread::sleep(Duration::from_millis(200));
    let later = result();
    assert_eq!(later["top"][0]["label"], "seven");
    assert!(
        later["frame"].as_u64() > first["frame"].as_u64(),
        "the result updates"
    );
    drop(reader);
    feeder.join().unwrap();
}

#[test]
fn panels_draw_the_result() {
    use embedded_graphics::mock_display::MockDisplay;
    use embedded_graphics::pixelcolor::{BinaryColor, Rgb565};
    use embedded_graphics::prelude::*;

    // Monochrome: the drawing logic on a mock, then the driver on a recording bus.
    let report = dummy_report();
    let mut mock: MockDisplay<BinaryColor> = MockDisplay::new();
    mock.set_allow_overdraw(true);
    mock.set_allow_out_of_bounds_drawing(true);
    display::panel::draw_mono(&mut mock, &report).unwrap();
    // The bar is half full: 2 + 30 pixels lit at y=31 on a 64-wide mock.
    let lit = (0..64)
        .filter(|&x| mock.get_pixel(Point::new(x, 31)) == Some(BinaryColor::On))
        .count();
    assert!((30..=34).contains(&lit), "{lit}");

    let bus = Recorder::default();
    let writes = Arc::clone(&bus.0);
    let interface = ssd1306::I2CDisplayInterface::new(bus);
    let mut sink = display::panel::Ssd1306Sink::new("oled", interface).unwrap();
    let img = RgbImage::new(8, 8);
    sink.show(&View {
        frame: &img,
        annotated: &img,
        report: &report,
    })
    .unwrap();
    let writes = writes.lock().unwrap();
    assert!(writes.iter().all(|(addr, _)| *addr == 0x3c));
    // Data transfers (control byte 0x40) carry the 128x64/8 = 1024-byte frame buffer.
    let data: usize = writes
        .iter()
        .filter(|(_, w)| w[0] == 0x40)
        .map(|(_, w)| w.len() - 1)
        .sum();
    assert!(data >= 1024, "{data}");

    // Colour: a 240x240 panel gets the letterboxed frame with the overlay redrawn on it.
    let mut panel = Screen(vec![Rgb565::new(1, 1, 1); 240 * 240]);
    let frame = RgbImage::from_pixel(320, 240, image::Rgb([0, 0, 255]));
    display::panel::draw_color(
        &mut panel,
        &View {
            frame: &frame,
            annotated: &frame,
            report: &report,
        },
    )
    .unwrap();
    assert_eq!(panel.0[5], Rgb565::BLACK, "letterbox above the picture");
    assert_eq!(panel.0[200 * 240 + 200], Rgb565::BLUE, "the picture");
}

/// (address, bytes) of each write on a bus.
type Writes = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;

/// An I2C bus that records every write.
#[derive(Default)]
struct Recorder(Writes);

impl embedded_hal::i2c::ErrorType for Recorder {
    type Error = std::convert::Infallible;
}

impl embedded_hal::i2c::I2c for Recorder {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [embedded_hal::i2c::Operation<'_>],
    ) -> Result<(), Self::Error> {
        for op in operations {
            if let embedded_hal::i2c::Operation::Write(bytes) = op {
                self.0.lock().unwrap().push((address, bytes.to_vec()));
            }
        }
        Ok(())
    }
}

/// A 240x240 RGB565 screen in memory.
struct Screen(Vec<embedded_graphics::pixelcolor::Rgb565>);

impl embedded_graphics::prelude::OriginDimensions for Screen {
    fn size(&self) -> embedded_graphics::prelude::Size {
        embedded_graphics::prelude::Size::new(240, 240)
    }
}

impl embedded_graphics::draw_target::DrawTarget for Screen {
    type Color = embedded_graphics::pixelcolor::Rgb565;
    type Error = std::convert::Infallible;
    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = embedded_graphics::Pixel<Self::Color>>,
    {
        for embedded_graphics::Pixel(p, c) in pixels {
            if (0..240).contains(&p.x) && (0..240).contains(&p.y) {
                self.0[(p.y * 240 + p.x) as usize] = c;
            }
        }
        Ok(())
    }
}
