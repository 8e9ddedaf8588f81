//! The HTTP live view end to end in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver): the page loads, the MJPEG stream shows frames, and
//! the JSON result shown on the page updates.
//!
//! `.ci/run` installs Chromium and sets `CONVNEXT_EDGE_BROWSER_TESTS=1`, which makes a missing
//! browser a failure; elsewhere the test says it is skipped.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use convnext_edge::display::http::HttpSink;
use convnext_edge::live::{self, LiveOptions};
use serde_json::{json, Value};

struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn post(url: &str, body: &Value) -> Value {
    let text = ureq::post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
        .into_body()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn start_driver() -> Option<Driver> {
    let required = std::env::var("CONVNEXT_EDGE_BROWSER_TESTS").is_ok_and(|v| v == "1");
    let port = free_port();
    let child = match Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if !required => {
            eprintln!("skipped: chromedriver not available ({e}); set CONVNEXT_EDGE_BROWSER_TESTS=1 to require it");
            return None;
        }
        Err(e) => panic!("chromedriver: {e}"),
    };
    let driver = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(&format!("{}/status", driver.base))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(driver)
}

#[test]
fn the_live_view_shows_the_stream_and_updating_results_in_chromium() {
    let Some(driver) = start_driver() else {
        return;
    };
    // The live loop: synthetic camera at 15 fps, the digits model, the HTTP sink on a free port.
    let sink = HttpSink::bind("http", "0").unwrap();
    let page = format!("http://{}/", sink.addr());
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut classifier = common::digits_classifier();
            let source = common::test_camera((320, 240), 15.0);
            let opts = LiveOptions {
                top: 3,
                ..Default::default()
            };
            live::run(
                source,
                &mut classifier,
                vec![Box::new(sink)],
                &opts,
                &stop,
                &mut |_| {},
            )
            .unwrap()
        })
    };

    let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    }}}});
    let session = post(&format!("{}/session", driver.base), &caps);
    let id = session["value"]["sessionId"]
        .as_str()
        .expect("a session")
        .to_owned();
    let s = format!("{}/session/{id}", driver.base);
    post(&format!("{s}/url"), &json!({ "url": page }));
    let script = |js: &str| {
        post(
            &format!("{s}/execute/sync"),
            &json!({"script": js, "args": []}),
        )["value"]
            .clone()
    };

    let title = script("return document.title");
    assert_eq!(title, "convnext-edge live view");
    // Wait for the stream to show a frame and the page to show a result.
    let state = "const img = document.getElementById('stream');
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const px = new Set();
        if (img.naturalWidth > 0) {
          const g = c.getContext('2d'); g.drawImage(img, 0, 0);
          for (let i = 0; i < 8; i++) {
            const d = g.getImageData((i + 0.5) * c.width / 8, c.height - 20, 1, 1).data;
            px.add([d[0], d[1], d[2]].map(v => v > 128 ? 1 : 0).join(''));
          }
        }
        return { size: document.getElementById('size').textContent,
                 frame: Number(document.getElementById('status').dataset.frame || -1),
                 rows: document.querySelectorAll('#top tr').length, colours: px.size };";
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let v = script(state);
        if v["size"] == "320x240" && v["frame"].as_i64().unwrap_or(-1) >= 0 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "page never showed stream and result: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(first["rows"], 3, "{first}");
    // Eight colour bars across the bottom of the test pattern: the picture itself is drawn.
    assert!(first["colours"].as_u64().unwrap() >= 6, "{first}");
    std::thread::sleep(Duration::from_secs(1));
    let later = script(state);
    assert!(
        later["frame"].as_i64() > first["frame"].as_i64(),
        "result updates: {first} -> {later}"
    );

    let _ = ureq::delete(&s).call();
    stop.store(true, Ordering::Relaxed);
    let stats = looper.join().unwrap();
    assert!(stats.processed >= 10, "{stats:?}");
}
