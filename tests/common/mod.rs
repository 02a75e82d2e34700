//! Shared set-up for the native tests: a real relay in-process on 127.0.0.1, port 0, and
//! real clients over real QUIC.
#![allow(dead_code)]

pub mod cluster;
pub mod simulcast;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use synapse_sfu::client::media::synthetic_payload;
use synapse_sfu::client::{Client, ClientOptions, Incoming, ReceivedFrame, Verification, now_us};
use synapse_sfu::server::{Server, ServerConfig, SessionLimits};
use synapse_sfu::wire::{FrameHeader, JoinResult, ProducerId, ServerMessage};

/// Waits for events are given three times the time a test names: a wait ends as soon as
/// its event happens, so the allowance costs nothing on a fast machine and keeps a slow or
/// busy one (CI shares its cores) from failing a correct relay.
pub fn patient(timeout: Duration) -> Duration {
    timeout * 3
}

/// A temporary directory unique to this test process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "synapse-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn test_config() -> ServerConfig {
    ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        certs_dir: temp_dir("certs"),
        http: true,
        limits: SessionLimits {
            idle_timeout: Duration::from_secs(2),
            consumer_write_timeout: Duration::from_millis(500),
            ..SessionLimits::default()
        },
        ..ServerConfig::default()
    }
}

pub async fn start_relay() -> Server {
    start_relay_with(test_config()).await
}

pub async fn start_relay_with(config: ServerConfig) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    Server::start(config).await.expect("relay starts")
}

pub fn options(server: &Server) -> ClientOptions {
    ClientOptions::new(
        server.url(),
        Verification::Pin(server.certificate_sha256().to_owned()),
    )
}

pub struct Peer {
    pub client: Client,
    pub incoming: Incoming,
    pub joined: JoinResult,
}

pub async fn join(server: &Server, room: &str, name: &str, auto_subscribe: bool) -> Peer {
    join_with(options(server), room, name, auto_subscribe).await
}

pub async fn join_with(
    options: ClientOptions,
    room: &str,
    name: &str,
    auto_subscribe: bool,
) -> Peer {
    let (client, incoming) = Client::connect(options).await.expect("connects");
    let joined = client
        .join(room, name, auto_subscribe)
        .await
        .expect("joins");
    Peer {
        client,
        incoming,
        joined,
    }
}

/// Size of synthetic video frame `seq`: keyframes ten times a delta.
pub fn video_size(seq: u64, keyframe: bool) -> usize {
    (if keyframe { 20_000 } else { 2_000 }) + (seq as usize * 7) % 500
}

pub fn audio_size(seq: u64) -> usize {
    100 + (seq as usize % 40)
}

pub async fn send_video(client: &Client, producer: ProducerId, seq: u64, keyframe: bool) {
    let header = FrameHeader {
        seq,
        capture_us: now_us(),
        keyframe,
        audio_level: None,
    };
    client
        .send_video(
            producer,
            header,
            synthetic_payload(seq, video_size(seq, keyframe)),
        )
        .await
        .expect("video frame sent");
}

pub fn send_audio(client: &Client, producer: ProducerId, seq: u64) {
    client
        .send_audio(
            producer,
            seq,
            now_us(),
            &synthetic_payload(seq, audio_size(seq)),
        )
        .expect("audio frame sent");
}

/// Frames received per producer, in arrival order.
pub type Received = HashMap<ProducerId, Vec<ReceivedFrame>>;

/// Collects frames until `done` says so or `timeout` passes.
pub async fn collect_until(
    incoming: &mut Incoming,
    timeout: Duration,
    mut done: impl FnMut(&Received) -> bool,
) -> Received {
    let mut received = Received::new();
    let deadline = tokio::time::Instant::now() + patient(timeout);
    while !done(&received) {
        match tokio::time::timeout_at(deadline, incoming.frames.recv()).await {
            Ok(Some(frame)) => received.entry(frame.producer_id).or_default().push(frame),
            _ => break,
        }
    }
    received
}

/// Waits for an event matching `pred`, returning it (others are dropped).
pub async fn wait_event(
    incoming: &mut Incoming,
    timeout: Duration,
    mut pred: impl FnMut(&ServerMessage) -> bool,
) -> Option<ServerMessage> {
    let deadline = tokio::time::Instant::now() + patient(timeout);
    loop {
        match tokio::time::timeout_at(deadline, incoming.events.recv()).await {
            Ok(Some(event)) if pred(&event) => return Some(event),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

/// Polls the relay until `pred` holds on its map sizes, or fails after `timeout`.
pub async fn wait_for_relay(
    server: &Server,
    timeout: Duration,
    pred: impl Fn(synapse_sfu::core::RelayCounts) -> bool,
) {
    let deadline = tokio::time::Instant::now() + patient(timeout);
    loop {
        let counts = server.rooms().counts();
        if pred(counts) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay state never settled: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP GET against the relay's HTTP side; returns the body.
pub async fn http_get(server: &Server, path: &str) -> String {
    http_request(server, "GET", path, None).await.1
}

/// One HTTP/1.1 request (optionally with a bearer token); returns status and body.
pub async fn http_request(
    server: &Server,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.http_addr().expect("HTTP side enabled");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn expected_video(seq: u64, keyframe: bool) -> Bytes {
    synthetic_payload(seq, video_size(seq, keyframe))
}
