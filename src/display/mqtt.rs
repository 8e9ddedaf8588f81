//! `mqtt://[USER:PASS@]HOST[:PORT]/TOPIC` — each classified frame's report (the `jsonl:` line)
//! published to an MQTT broker with QoS 1, for Home Assistant, Node-RED or any subscriber.
//!
//! The camera loop must never wait for the network: a report is handed to the client's bounded
//! queue with `try_publish`, and when the queue is full (the broker is away, or slower than the
//! camera) the message is dropped and counted, never the frame. A thread of its own drives the
//! connection (rumqttc's) and reconnects with backoff, logging once per outage. On every
//! (re)connection it publishes, retained, a Home Assistant MQTT-discovery config, so that a
//! sensor showing the top-1 label (with the whole report as attributes) appears by itself.
//! No TLS: `mqtts://` is refused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};

use super::{Sink, SinkError, SinkErrorKind, View};
use crate::camera::Backoff;

/// Reports waiting to be sent; more are dropped (and counted) rather than wait.
const QUEUE: usize = 64;
const DEFAULT_PORT: u16 = 1883;

/// What `mqtt://` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTarget {
    /// The broker's host name or address.
    pub host: String,
    /// The broker's port (1883 unless given).
    pub port: u16,
    /// User name and password, if the broker asks for them.
    pub credentials: Option<(String, String)>,
    /// The topic results are published to.
    pub topic: String,
}

impl MqttTarget {
    /// Parses `mqtt://[USER:PASS@]HOST[:PORT]/TOPIC` (the part after `mqtt:` included).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let rest = spec
            .strip_prefix("mqtt://")
            .ok_or("expected mqtt://[USER:PASS@]HOST[:PORT]/TOPIC (mqtts:// is not supported)")?;
        let (authority, topic) = rest
            .split_once('/')
            .filter(|(_, t)| !t.is_empty())
            .ok_or("no topic: expected mqtt://HOST[:PORT]/TOPIC")?;
        if topic.contains(['+', '#']) {
            return Err(format!(
                "'{topic}' has a wildcard; a topic to publish to has none"
            ));
        }
        let (credentials, hostport) = match authority.rsplit_once('@') {
            Some((userpass, hp)) => {
                let (u, p) = userpass.split_once(':').unwrap_or((userpass, ""));
                (Some((u.to_owned(), p.to_owned())), hp)
            }
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => {
                let port = p.parse().map_err(|_| format!("bad port '{p}'"))?;
                (h, port)
            }
            None => (hostport, DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(MqttTarget {
            host: host.to_owned(),
            port,
            credentials,
            topic: topic.to_owned(),
        })
    }
}

/// Counts shared between the sink and its connection thread.
#[derive(Default)]
struct Counts {
    queued: AtomicU64,
    acked: AtomicU64,
    dropped: AtomicU64,
}

/// Publishes each classified frame's result to an MQTT broker (see the module docs).
pub struct MqttSink {
    name: String,
    topic: String,
    client: Client,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    driver: Option<JoinHandle<()>>,
}

impl MqttSink {
    /// Starts the client; the broker need not be up yet (it is connected to, and reconnected
    /// to, in the background).
    pub fn connect(name: &str, spec: &str) -> Result<Self, SinkError> {
        let target =
            MqttTarget::parse(spec).map_err(|m| SinkError::new(SinkErrorKind::Config, name, m))?;
        let client_id = format!("convnext-edge-{}", std::process::id());
        let mut options = MqttOptions::new(client_id, &target.host, target.port);
        options.set_keep_alive(Duration::from_secs(15));
        // Unacknowledged QoS 1 messages are sent again after a reconnection.
        options.set_clean_session(false);
        if let Some((user, pass)) = &target.credentials {
            options.set_credentials(user, pass);
        }
        let (client, connection) = Client::new(options, QUEUE);
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let driver = {
            let (client, counts, stop) = (client.clone(), Arc::clone(&counts), Arc::clone(&stop));
            let (owner, topic) = (name.to_owned(), target.topic.clone());
            std::thread::Builder::new()
                .name("mqtt".into())
                .spawn(move || drive(connection, &client, &owner, &topic, &counts, &stop))
                .map_err(|e| SinkError::new(SinkErrorKind::Unavailable, name, e.to_string()))?
        };
        Ok(MqttSink {
            name: name.to_owned(),
            topic: target.topic,
            client,
            counts,
            stop,
            driver: Some(driver),
        })
    }

    /// Reports accepted into the queue, acknowledged by the broker, and dropped (queue full).
    pub fn counts(&self) -> (u64, u64, u64) {
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (get(&c.queued), get(&c.acked), get(&c.dropped))
    }
}

/// Home Assistant's MQTT discovery topic and config for a sensor of the top-1 label.
fn discovery(topic: &str) -> (String, String) {
    let id: String = topic
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let config = serde_json::json!({
        "name": "Top class",
        "unique_id": format!("convnext_edge_{id}_top1"),
        "state_topic": topic,
        "value_template": "{{ value_json.top[0].label }}",
        "json_attributes_topic": topic,
        "icon": "mdi:camera",
        "device": {
            "identifiers": [format!("convnext_edge_{id}")],
            "name": format!("convnext-edge {topic}"),
            "model": "convnext-edge camera",
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
    });
    (
        format!("homeassistant/sensor/convnext_edge_{id}/top1/config"),
        config.to_string(),
    )
}

/// Runs the connection until `stop`: counts acknowledgements, announces the sensor on every
/// connection, waits with backoff after errors.
fn drive(
    mut connection: Connection,
    client: &Client,
    name: &str,
    topic: &str,
    counts: &Counts,
    stop: &AtomicBool,
) {
    let mut backoff = Backoff::default();
    let mut down_since: Option<Instant> = None;
    // The discovery config goes out after each connection, as soon as the queue (full of
    // reports held back during an outage) has room for it.
    let mut announce = false;
    let (config_topic, config) = discovery(topic);
    while !stop.load(Ordering::Relaxed) {
        if announce {
            announce = client
                .try_publish(&config_topic, QoS::AtLeastOnce, true, config.as_bytes())
                .is_err();
        }
        match connection.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                match down_since.take() {
                    Some(t) => log::info!(
                        "{name}: reconnected after {:.1} s",
                        t.elapsed().as_secs_f32()
                    ),
                    None => log::debug!("{name}: connected"),
                }
                backoff = Backoff::default();
                announce = true;
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                counts.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let wait = backoff.next_wait();
                if down_since.is_none() {
                    down_since = Some(Instant::now());
                    log::warn!(
                        "{name}: {e}; reconnecting (reports are dropped and counted meanwhile)"
                    );
                } else {
                    log::debug!("{name}: {e}; next try in {:.2} s", wait.as_secs_f32());
                }
                let until = Instant::now() + wait;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            // Nothing within the timeout: look at `stop` again.
            Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Err(rumqttc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Sink for MqttSink {
    fn show(&mut self, view: &View) -> Result<(), SinkError> {
        if !view.report.classified {
            return Ok(());
        }
        let payload = serde_json::to_vec(view.report).expect("reports serialise");
        let counter = match self
            .client
            .try_publish(&self.topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => &self.counts.queued,
            Err(_) => &self.counts.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for MqttSink {
    /// Gives queued reports up to a second to go out, then stops the connection thread.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.counts.acked.load(Ordering::Relaxed) < self.counts.queued.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.client.try_disconnect();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
        let (queued, acked, dropped) = self.counts();
        log::info!(
            "{}: {queued} reports queued, {acked} acknowledged, {dropped} dropped (queue full)",
            self.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_why() {
        let t = MqttTarget::parse("mqtt://broker.lan/home/cam1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.topic.as_str()),
            ("broker.lan", 1883, "home/cam1")
        );
        assert_eq!(t.credentials, None);
        let t = MqttTarget::parse("mqtt://ha:s3:cret@10.0.0.2:1884/cam").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.2", 1884));
        assert_eq!(t.credentials, Some(("ha".into(), "s3:cret".into())));
        let err = |s: &str| MqttTarget::parse(s).unwrap_err();
        assert!(err("mqtts://h/t").contains("mqtts"));
        assert!(err("mqtt://h").contains("no topic"));
        assert!(err("mqtt://h:x/t").contains("bad port"));
        assert!(err("mqtt://h/a/#").contains("wildcard"));
        assert!(err("mqtt://:1883/t").contains("no host"));
    }

    #[test]
    fn discovery_names_the_state_topic() {
        let (topic, config) = discovery("home/cam 1");
        assert_eq!(
            topic,
            "homeassistant/sensor/convnext_edge_home_cam_1/top1/config"
        );
        let v: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(v["state_topic"], "home/cam 1");
        assert_eq!(v["value_template"], "{{ value_json.top[0].label }}");
    }
}
