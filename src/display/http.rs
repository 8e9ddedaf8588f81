//! `http:ADDR:PORT` — a live view for headless boards: a page at `/` showing an MJPEG stream of
//! the annotated frames (`/stream.mjpg`), the latest result (`/result.json`) and the run's
//! counters and latency histograms for Prometheus (`/metrics`, [`super::metrics`]), served by a
//! small std-only HTTP/1.1 server (four fixed routes do not need a web framework).
//!
//! A bare port (`http:8080`) binds to 127.0.0.1: exposing the camera to the network is the
//! user's choice (`http:0.0.0.0:8080`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::metrics::Metrics;
use super::{encode_jpeg, Sink, SinkError, SinkErrorKind, View};

/// Concurrent connections served; more are refused with 503 so memory stays bounded.
const MAX_CLIENTS: usize = 16;
const JPEG_QUALITY: u8 = 80;

const PAGE: &str = include_str!("live_view.html");

#[derive(Default)]
struct Latest {
    seq: u64,
    jpeg: Arc<Vec<u8>>,
    json: Arc<String>,
    metrics: Metrics,
}

struct State {
    latest: Mutex<Latest>,
    cv: Condvar,
    closed: AtomicBool,
    clients: AtomicUsize,
    streams: AtomicUsize,
}

impl State {
    fn latest(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The live view server; frames are JPEG-encoded only while someone watches the stream.
pub struct HttpSink {
    name: String,
    addr: SocketAddr,
    state: Arc<State>,
}

impl HttpSink {
    /// Binds `ADDR:PORT` (or `PORT` on loopback; port 0 picks a free one) and starts serving.
    pub fn bind(name: &str, arg: &str) -> Result<Self, SinkError> {
        let spec = if arg.parse::<u16>().is_ok() {
            format!("127.0.0.1:{arg}")
        } else {
            arg.to_owned()
        };
        let unavailable = |m: String| SinkError::new(SinkErrorKind::Unavailable, name, m);
        let addr = spec
            .to_socket_addrs()
            .map_err(|e| SinkError::new(SinkErrorKind::Config, name, format!("{spec}: {e}")))?
            .next()
            .ok_or_else(|| {
                SinkError::new(SinkErrorKind::Config, name, format!("{spec}: no address"))
            })?;
        let listener = TcpListener::bind(addr).map_err(|e| unavailable(format!("{addr}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| unavailable(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| unavailable(e.to_string()))?;
        let state = Arc::new(State {
            latest: Mutex::new(Latest {
                json: Arc::new("null".into()),
                ..Default::default()
            }),
            cv: Condvar::new(),
            closed: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
        });
        let st = Arc::clone(&state);
        std::thread::Builder::new()
            .name("http".into())
            .spawn(move || accept_loop(listener, st))
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(HttpSink {
            name: name.to_owned(),
            addr,
            state,
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Sink for HttpSink {
    fn show(&mut self, view: &View) -> Result<(), SinkError> {
        let (frame, report) = (view.annotated, view.report);
        let jpeg = if self.state.streams.load(Ordering::Relaxed) > 0 {
            let bytes = encode_jpeg(frame, JPEG_QUALITY)
                .map_err(|e| SinkError::new(SinkErrorKind::Write, &self.name, e))?;
            Some(Arc::new(bytes))
        } else {
            None
        };
        let json = Arc::new(serde_json::to_string(report).expect("reports serialise"));
        let mut latest = self.state.latest();
        latest.seq += 1;
        latest.json = json;
        latest.metrics.observe(report);
        if let Some(j) = jpeg {
            latest.jpeg = j;
        }
        self.state.cv.notify_all();
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Relaxed);
        self.state.cv.notify_all();
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    while !state.closed.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if state.clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
                    state.clients.fetch_sub(1, Ordering::Relaxed);
                    let _ = respond(&stream, "503 Service Unavailable", "text/plain", b"busy\n");
                    continue;
                }
                let st = Arc::clone(&state);
                let spawned = std::thread::Builder::new()
                    .name("http-client".into())
                    .spawn(move || {
                        let _ = serve(stream, &st);
                        st.clients.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    state.clients.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn respond(mut s: &TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)
}

fn serve(stream: TcpStream, state: &State) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(8192));
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Headers are read and ignored; the request line says everything needed.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(
            &stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        );
    }
    match path.split('?').next().unwrap_or("") {
        "/" | "/index.html" => respond(
            &stream,
            "200 OK",
            "text/html; charset=utf-8",
            PAGE.as_bytes(),
        ),
        "/metrics" => {
            let text = state.latest().metrics.render();
            respond(
                &stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                text.as_bytes(),
            )
        }
        "/result.json" => {
            let json = Arc::clone(&state.latest().json);
            respond(&stream, "200 OK", "application/json", json.as_bytes())
        }
        "/stream.mjpg" => {
            state.streams.fetch_add(1, Ordering::Relaxed);
            let r = stream_frames(&stream, state);
            state.streams.fetch_sub(1, Ordering::Relaxed);
            r
        }
        _ => respond(&stream, "404 Not Found", "text/plain", b"not found\n"),
    }
}

fn stream_frames(mut s: &TcpStream, state: &State) -> std::io::Result<()> {
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\
          Cache-Control: no-store\r\nConnection: close\r\n\r\n",
    )?;
    let mut sent = 0;
    loop {
        let jpeg = {
            let latest = state.latest();
            let (latest, _) = state
                .cv
                .wait_timeout_while(latest, Duration::from_millis(500), |l| {
                    (l.seq == sent || l.jpeg.is_empty()) && !state.closed.load(Ordering::Relaxed)
                })
                .unwrap_or_else(|p| p.into_inner());
            if state.closed.load(Ordering::Relaxed) {
                return Ok(());
            }
            if latest.seq == sent || latest.jpeg.is_empty() {
                continue;
            }
            sent = latest.seq;
            Arc::clone(&latest.jpeg)
        };
        write!(
            s,
            "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            jpeg.len()
        )?;
        s.write_all(&jpeg)?;
        s.write_all(b"\r\n")?;
    }
}
