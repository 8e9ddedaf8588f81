//! The binary as a service runs it: stop signals, a camera that appears late, a reader that
//! goes away, the configuration file, log levels and exit codes.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::root;

const MODEL: &str = "models/digits/convnext_digits_int8.onnx";
const RECORDING: &str = "tests/data/camera/digits.mjpeg";
/// The ten digits recorded as MJPEG, unpaced.
const REPLAY: [&str; 7] = [
    "camera",
    "--model",
    MODEL,
    "--source",
    "replay:tests/data/camera/digits.mjpeg",
    "--fps",
    "0",
];

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_convnext-edge"));
    c.args(args)
        .args(["--threads", "1"])
        .current_dir(root())
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM");
    c
}

fn run(args: &[&str]) -> Output {
    command(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits for the child to exit, killing it (and failing) after `limit`.
fn wait_for(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the command with its output piped and returns it once it has printed a line, with
/// that line; its stdout is then closed.
fn spawn_until_first_line(mut command: Command) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    (child, first)
}

#[test]
fn stop_signals_finish_the_run_write_stats_and_exit_0() {
    for signal in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let stats = dir.path().join("stats.json");
        let mut c = command(&[
            "camera", "--model", MODEL, "--source", "test", "--fps", "20",
        ]);
        c.args(["--stats", stats.to_str().unwrap()]);
        // Running for real once the first frame is printed.
        let (mut child, first) = spawn_until_first_line(c);
        assert!(first.starts_with("frame"), "{first}");
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let status = wait_for(&mut child, Duration::from_secs(20));
        assert!(status.success(), "signal {signal}: {status:?}");
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
        assert!(s["processed"].as_u64().unwrap() >= 1, "{s}");
    }
}

#[test]
fn a_source_missing_at_start_is_waited_for_and_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("capture.mjpeg");
    let spec = format!("replay:{}", recording.display());
    let mut child = command(&["camera", "--model", MODEL, "--source", &spec, "--fps", "0"])
        .args(["--source-timeout", "30", "--top", "1", "--sink", "jsonl:-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Appears whole, as a camera node does.
    let partial = dir.path().join("capture.part");
    std::fs::copy(root().join(RECORDING), &partial).unwrap();
    std::fs::rename(&partial, &recording).unwrap();
    let status = wait_for(&mut child, Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 10, "{stdout}");
    let tries = stderr.matches("trying again in").count();
    assert!(tries >= 2, "one log line per attempt expected: {stderr}");
    assert!(stderr.contains("capture.mjpeg"), "{stderr}");
}

#[test]
fn a_source_still_missing_after_the_timeout_fails_naming_it() {
    let o = run(&[
        "camera",
        "--model",
        MODEL,
        "--source",
        "replay:/nonexistent/capture.mjpeg",
        "--source-timeout",
        "0.6",
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("trying again in"), "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .contains("/nonexistent/capture.mjpeg"),
        "{err}"
    );
}

#[test]
fn a_closed_stdout_ends_quietly_with_status_0() {
    // More output than a pipe holds, so that writes after the reader left must fail.
    let images = vec!["models/digits/samples/7.png"; 400];
    let mut c = command(&["classify", "--json", "--model", MODEL]);
    c.args(&images);
    let (mut child, first) = spawn_until_first_line(c);
    assert!(first.contains("\"label\":\"7\""), "{first}");
    // The reader is dropped: `| head -n1`.
    let status = wait_for(&mut child, Duration::from_secs(60));
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(text(&out.stderr), "");

    let mut c = command(&["camera", "--model", MODEL, "--source", "test", "--fps", "0"]);
    c.args(["--sink", "jsonl:-"]);
    let (mut child, _) = spawn_until_first_line(c);
    let status = wait_for(&mut child, Duration::from_secs(60));
    let err = text(&child.wait_with_output().unwrap().stderr);
    assert!(status.success(), "{err}");
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn stats_to_stdout_is_the_only_thing_there() {
    let o = run(&[&REPLAY[..], &["--stats", "-"]].concat());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["processed"], 10);
    assert_eq!(text(&o.stderr).matches("frame ").count(), 10);
    let o = run(&[
        "camera", "--model", MODEL, "--source", "test", "--stats", "-", "--sink", "jsonl:-",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("standard output"));
}

#[test]
fn classify_takes_folders_recursively_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    let samples = root().join("models/digits/samples");
    for (rel, digit) in [
        ("b/2.png", 2),
        ("a/z/9.PNG", 9),
        ("a/1.png", 1),
        ("c.png", 3),
    ] {
        let to = dir.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(samples.join(format!("{digit}.png")), to).unwrap();
    }
    std::fs::write(dir.path().join("a/notes.txt"), "not an image").unwrap();
    let o = run(&[
        "classify",
        "--json",
        "--top",
        "1",
        "--model",
        MODEL,
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let seen: Vec<(String, String)> = text(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let image = Path::new(v["image"].as_str().unwrap())
                .strip_prefix(dir.path())
                .unwrap()
                .display()
                .to_string();
            (image, v["top"][0]["label"].as_str().unwrap().to_owned())
        })
        .collect();
    let expected = [
        ("a/1.png", "1"),
        ("a/z/9.PNG", "9"),
        ("b/2.png", "2"),
        ("c.png", "3"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seen, expected);
    let empty = tempfile::tempdir().unwrap();
    let o = run(&["classify", "--model", MODEL, empty.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no JPEG or PNG images"));
}

#[test]
fn the_config_file_sets_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("camera.toml");
    let model = root().join(MODEL);
    let recording = root().join(RECORDING);
    std::fs::write(
        &config,
        format!(
            "model = '{}'\nsource = 'replay:{}'\nfps = 0\nframes = 4\ntop = 1\nsink = ['jsonl:-']\n\
             source-timeout = 'forever'\nthreads = 0\n",
            model.display(),
            recording.display()
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    // `threads = 0` would fail; the `--threads 1` every run here is given wins, global as it is.
    let o = run(&["camera", "--config", c]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 4);
    let o = run(&["camera", "--config", c, "--frames", "2"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 2);

    std::fs::write(&config, "source = 'test'\nframes = 1\nframe-rate = 30\n").unwrap();
    let o = run(&["camera", "--model", MODEL, "--config", c]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("camera.toml") && err.contains("line 3"),
        "{err}"
    );
    assert!(err.contains("frame-rate"), "{err}");
    std::fs::write(&config, "size = 'big'\n").unwrap();
    let o = run(&["camera", "--model", MODEL, "--config", c]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("line 1") && err.contains("WxH"), "{err}");
}

#[test]
fn log_levels_and_the_journal_format() {
    let args = [&REPLAY[..], &["--sink", "jsonl:/dev/null"]].concat();
    let o = run(&args);
    assert!(text(&o.stderr).contains("10 frames processed"));
    let o = run(&[&args[..], &["-q"]].concat());
    assert!(o.status.success());
    assert_eq!(text(&o.stderr), "");
    let o = command(&args).env("RUST_LOG", "warn").output().unwrap();
    assert_eq!(text(&o.stderr), "");
    let o = run(&[&args[..], &["-v"]].concat());
    assert!(text(&o.stderr).contains("debug: "), "{}", text(&o.stderr));

    // Under systemd, stderr is the journal and JOURNAL_STREAM names it.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("journal");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let status = command(&[&args[..3], &["--source", "replay:/nonexistent.mjpeg"]].concat())
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let journal = std::fs::read_to_string(&log).unwrap();
    assert!(journal.starts_with("<3>"), "{journal}");
    assert!(journal.contains("/nonexistent.mjpeg"), "{journal}");
}

#[test]
fn usage_errors_exit_2_and_failures_1() {
    assert_eq!(run(&["classify", "--no-such-flag"]).status.code(), Some(2));
    assert_eq!(run(&["camera", "--source", "test"]).status.code(), Some(2));
    let o = run(&["classify", "--model", "/nonexistent.onnx", "x.png"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn metrics_are_scraped_from_the_http_sink_while_it_runs() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sink = format!("http:127.0.0.1:{port}");
    let mut child = command(&[
        "camera", "--model", MODEL, "--source", "test", "--fps", "30",
    ])
    .args(["--every", "2", "--sink", &sink])
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    let scrape = loop {
        assert!(Instant::now() < deadline, "no metrics from {url}");
        std::thread::sleep(Duration::from_millis(200));
        let Ok(response) = ureq::get(&url).call() else {
            continue;
        };
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        let text = response.into_body().read_to_string().unwrap();
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let processed = scrape
            .samples
            .iter()
            .find(|s| s.metric == "convnext_edge_frames_processed_total");
        if matches!(processed.map(|s| &s.value), Some(prometheus_parse::Value::Counter(n)) if *n >= 6.0)
        {
            break scrape;
        }
    };
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(wait_for(&mut child, Duration::from_secs(20)).success());
    let value = |name: &str, stage: Option<&str>| {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && stage.is_none_or(|st| s.labels.get("stage") == Some(st)))
            .unwrap_or_else(|| panic!("no {name}"));
        match &s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.last().unwrap().count,
            v => panic!("{name}: {v:?}"),
        }
    };
    let processed = value("convnext_edge_frames_processed_total", None);
    let classified = value("convnext_edge_frames_classified_total", None);
    assert_eq!(classified, (processed / 2.0).ceil(), "--every 2");
    assert_eq!(value("convnext_edge_latency_seconds", None), processed);
    assert_eq!(
        value("convnext_edge_stage_seconds", Some("decode")),
        processed
    );
    assert_eq!(
        value("convnext_edge_stage_seconds", Some("infer")),
        classified
    );
}

/// Debian's mosquitto on a loopback port, for as long as it lives.
struct Broker {
    child: Child,
    config: std::path::PathBuf,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        Broker::run(config, port)
    }

    fn run(config: std::path::PathBuf, port: u16) -> Broker {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, config }
    }

    /// Kills it outright, as a crash or a power cut would.
    fn kill(mut self) -> std::path::PathBuf {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.config.clone()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the MQTT test can run: CI installs mosquitto and requires it.
fn have_mosquitto() -> bool {
    let found = ["mosquitto", "mosquitto_sub"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let required = std::env::var_os("CONVNEXT_EDGE_MQTT_TESTS").is_some();
    assert!(
        found || !required,
        "CONVNEXT_EDGE_MQTT_TESTS is set but mosquitto is missing"
    );
    if !found {
        eprintln!("skipped: Debian's mosquitto and mosquitto-clients are not installed");
    }
    found
}

#[test]
fn mqtt_reports_survive_a_broker_that_dies_and_comes_back() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = Broker::start(dir.path(), port);
    let received = dir.path().join("received.txt");
    let mut subscriber = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v", "-q", "1"])
        .args(["-t", "cam/test", "-t", "homeassistant/#"])
        .stdout(std::fs::File::create(&received).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let stats = dir.path().join("stats.json");
    let sink = format!("mqtt://127.0.0.1:{port}/cam/test");
    let frames = 400;
    let mut camera = command(&[
        "camera", "--model", MODEL, "--source", "test", "--fps", "40",
    ])
    .args([
        "--top",
        "1",
        "--frames",
        &frames.to_string(),
        "--sink",
        &sink,
    ])
    .args(["--stats", stats.to_str().unwrap()])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let config = broker.kill();
    std::thread::sleep(Duration::from_secs(3));
    let _broker = Broker::run(config, port);
    let status = wait_for(&mut camera, Duration::from_secs(60));
    let err = text(&camera.wait_with_output().unwrap().stderr);
    std::thread::sleep(Duration::from_millis(500));
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    assert!(status.success(), "{err}");

    // No camera frame was lost while the broker was away.
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(s["processed"], frames, "{s}");
    // The dropped messages are counted, and with the queued ones make up every report.
    let counts = err
        .lines()
        .find(|l| l.contains("reports queued"))
        .unwrap_or_else(|| panic!("no counts in {err}"));
    let numbers: Vec<u64> = counts
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    let (queued, dropped) = (numbers[0], numbers[2]);
    assert!(
        dropped > 0,
        "a 3 s outage at 40 fps overflows the queue: {counts}"
    );
    assert_eq!(queued + dropped, frames, "{counts}");
    assert!(err.contains("reconnected after"), "{err}");

    let got = std::fs::read_to_string(&received).unwrap();
    let indices: Vec<u64> = got
        .lines()
        .filter_map(|l| l.strip_prefix("cam/test "))
        .map(|json| {
            serde_json::from_str::<serde_json::Value>(json).unwrap()["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let announced = got
        .lines()
        .filter(|l| l.starts_with("homeassistant/sensor/convnext_edge_cam_test/top1/config "))
        .count();
    assert!(announced >= 2, "discovery on each connection: {announced}");
    assert!(
        indices.iter().any(|&i| i < 80),
        "published before the outage"
    );
    assert!(indices.iter().any(|&i| i > 300), "published again after it");
    assert!(
        indices.len() as u64 >= queued / 2,
        "{} of {queued} arrived",
        indices.len()
    );
}

#[test]
fn triggers_run_commands_and_save_frames_at_most_once_per_interval() {
    for (interval, fires) in [("0", 3), ("60", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("fired.txt");
        let saves = dir.path().join("threes");
        let exec = format!(
            "7:0.3=exec:echo \"$CONVNEXT_LABEL $CONVNEXT_FRAME\" >> {}",
            log.display()
        );
        let save = format!("3:0.3=save:{}", saves.display());
        let o = run(&[
            &REPLAY[..],
            &[
                "--loop",
                "--frames",
                "30",
                "--top",
                "1",
                "--sink",
                "jsonl:/dev/null",
            ],
            &["--on", &exec, "--on", &save, "--on-interval", interval],
        ]
        .concat());
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains(&format!("--on 7: fired {fires} times")));
        // The commands run in the background: give the last one a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let lines = loop {
            let lines = std::fs::read_to_string(&log).unwrap_or_default();
            if lines.lines().count() >= fires || Instant::now() > deadline {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(lines.lines().count(), fires, "{lines}");
        assert!(lines.lines().all(|l| l.starts_with("7 ")), "{lines}");
        let saved: Vec<_> = std::fs::read_dir(&saves).unwrap().flatten().collect();
        assert_eq!(saved.len(), fires);
        for f in saved {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(name.starts_with("3-") && name.ends_with(".jpg"), "{name}");
            let img = image::open(f.path()).unwrap();
            assert!(img.width() > 0);
        }
    }
    let o = run(&[&REPLAY[..], &["--on", "7=mail:me"]].concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("exec:CMD"));
}
