//! `synapse-sfu bench`: forwarding latency and capacity, measured side by side with a
//! direct QUIC link and a raw UDP baseline on the same load in one run, because on a
//! shared machine absolute numbers swing while ratios measured together hold.

pub mod cluster;
pub mod direct;
pub mod lean;
pub mod relay_path;
pub mod stats;
pub mod udp;
pub mod weak_link;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::client::{Verification, fetch_certificate_hash};
use relay_path::PeerPlan;
use stats::{Latency, Recorder, machine_line, peak_rss_mb, process_cpu_seconds};

/// The synthetic media every publisher sends.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Shape {
    pub video_bitrate: u64,
    pub fps: u32,
    #[serde(serialize_with = "secs")]
    pub keyframe_interval: Duration,
    pub audio_bitrate: u64,
    /// Time between audio frames (20 ms, as Opus in a call; longer thins a smoke test).
    #[serde(serialize_with = "secs")]
    pub audio_frame_interval: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            video_bitrate: 1_000_000,
            fps: 30,
            keyframe_interval: Duration::from_secs(2),
            audio_bitrate: 48_000,
            audio_frame_interval: Duration::from_millis(20),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub enum Scenario {
    /// One publisher (audio + video) to N subscribers.
    Fanout { subscribers: usize },
    /// M peers, each publishing audio + video and consuming all the others; with
    /// `simulcast`, video in three layers; with `thumbnails`, every consumer prefers
    /// 320×180.
    Meeting {
        peers: usize,
        simulcast: bool,
        thumbnails: bool,
    },
    /// R rooms of P audio-only peers, each consuming the others of its room.
    Rooms { rooms: usize, peers: usize },
    /// One publisher to a subscriber on a clean link and one behind a shaper, side by side
    /// ([`weak_link::run`], given the links; it has its own report).
    WeakLink,
}

impl Scenario {
    fn plans(&self) -> Vec<PeerPlan> {
        let peer =
            |room: String, name: String, media: bool, video: bool, subscribe: bool| PeerPlan {
                room,
                name,
                audio: media,
                video,
                subscribe,
                simulcast: false,
                max_resolution: None,
                relay: 0,
            };
        match *self {
            Scenario::Fanout { subscribers } => {
                let mut plans = vec![peer("fanout".into(), "publisher".into(), true, true, false)];
                plans.extend((0..subscribers).map(|i| {
                    peer(
                        "fanout".into(),
                        format!("subscriber-{i}"),
                        false,
                        false,
                        true,
                    )
                }));
                plans
            }
            Scenario::Meeting {
                peers,
                simulcast,
                thumbnails,
            } => (0..peers)
                .map(|i| PeerPlan {
                    simulcast,
                    max_resolution: thumbnails.then_some((320, 180)),
                    ..peer("meeting".into(), format!("peer-{i}"), true, true, true)
                })
                .collect(),
            Scenario::Rooms { rooms, peers } => (0..rooms)
                .flat_map(|r| {
                    (0..peers).map(move |p| {
                        peer(
                            format!("room-{r}"),
                            format!("peer-{r}-{p}"),
                            true,
                            false,
                            true,
                        )
                    })
                })
                .collect(),
            Scenario::WeakLink => Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub scenario: Scenario,
    pub duration: Duration,
    pub shape: Shape,
    /// An external relay; otherwise one is started as a child process.
    pub url: Option<String>,
    pub cert_hash: Option<String>,
    /// The relay binary to start (default: this executable).
    pub relay_bin: Option<PathBuf>,
    /// Appended to the started relay's `serve` arguments (e.g. a congestion controller).
    pub relay_args: Vec<String>,
    /// Run the direct-QUIC and raw-UDP baselines too (fan-out only).
    pub baselines: bool,
    /// What carries every peer's session to the relay (the WebSocket fallback costs more).
    pub transport: crate::transport::TransportKind,
    /// Subscribers that publish nothing, and the direct path's receivers, run in one loop
    /// on quinn-proto (`lean.rs`), not as a full client each: the load generator's own
    /// cost, not the relay's, shrinks.
    pub lean_subscribers: bool,
    /// Print a progress line on stderr.
    pub progress: bool,
}

/// Figures of one path.
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    pub latency_ms: Latency,
    /// Delivered over expected: frames for `relay` and `direct`, packets for `udp`.
    pub delivered_ratio: f64,
    pub delivered: u64,
    pub expected: u64,
    /// Media payload received by all subscribers together.
    pub egress_mbps: f64,
    /// Media payload sent by all publishers together.
    pub ingress_mbps: f64,
    /// Network packets delivered (datagrams, and ⌈size/1200⌉ per video frame).
    pub packets: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_core_s_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_core_s_per_gbit: Option<f64>,
    /// CPU microseconds per packet sent (the relay process, or the UDP sender thread).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_packet: Option<f64>,
    /// Core-seconds per second of the load generator (this process: publishers and
    /// subscribers), beside the relay's: on a shared machine, which of the two saturates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_generator_cpu_core_s_per_s: Option<f64>,
    /// The relay's own drop counters after the run (from its /metrics), by reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_drops: Option<std::collections::BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Paths {
    pub relay: PathReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct: Option<PathReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<PathReport>,
}

/// Ratios of figures measured in the same run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_added_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_added_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_over_direct_p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_over_direct_p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_over_udp_cpu_per_packet: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    #[serde(flatten)]
    pub scenario: Scenario,
    /// What carried the peers' sessions to the relay.
    pub transport: crate::transport::TransportKind,
    /// Whether the subscribers were lean ones (`--lean-subscribers`).
    pub lean_subscribers: bool,
    pub duration_s: f64,
    pub shape: Shape,
    pub machine: String,
    pub note: &'static str,
    pub paths: Paths,
    pub ratios: Ratios,
    /// Simulcast publishers only: what they sent per layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulcast: Option<SimulcastReport>,
}

/// What simulcast publishers sent, per layer, and how soon they stopped unused layers.
#[derive(Debug, Clone, Serialize)]
pub struct SimulcastReport {
    /// Video frames all publishers sent per layer, lowest first.
    pub frames_per_layer: Vec<u64>,
    /// Media bytes the publishers sent, megabits per second (all layers and audio).
    pub publisher_mbps: f64,
    /// The latest time, from the start, at which a publisher sent a frame of a layer it
    /// had been told (by the end) nobody wants; `None` when every layer stayed wanted.
    pub unused_layers_stopped_after_s: Option<f64>,
}

const SHARED_NOTE: &str = "load generator and relay run on the same machine and share its cores";

/// A relay started for the run, killed when dropped.
struct RelayChild {
    child: Child,
    url: String,
    hash: String,
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a relay; with `redis`, as one of a cluster whose rooms span relays.
async fn start_relay(
    bin: Option<&PathBuf>,
    extra_args: &[String],
    redis: Option<&str>,
) -> Result<RelayChild> {
    let bin = match bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("locating this executable")?,
    };
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let certs = std::env::temp_dir().join(format!("synapse-bench-{}-{port}", std::process::id()));
    let child = Command::new(&bin)
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--certs-dir",
        ])
        .arg(&certs)
        // All the load comes from this one address and may fill one room.
        .args([
            "--max-sessions-per-address",
            "0",
            "--max-peers-per-room",
            "0",
        ])
        .args(["--max-rooms", "0", "--max-requests-per-second", "0"])
        .args(match redis {
            Some(redis) => vec![
                "--redis-url".to_owned(),
                redis.to_owned(),
                "--public-url".to_owned(),
                format!("https://127.0.0.1:{port}/"),
                "--span-rooms".to_owned(),
            ],
            None => Vec::new(),
        })
        .args(extra_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting the relay {}", bin.display()))?;
    let url = format!("https://127.0.0.1:{port}/");
    let mut relay = RelayChild {
        child,
        url,
        hash: String::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // A relay that exits at once was most likely given arguments it refuses.
        if let Ok(Some(status)) = relay.child.try_wait() {
            anyhow::bail!(
                "the relay exited at start ({status}); its arguments: serve … {}",
                extra_args.join(" ")
            );
        }
        match fetch_certificate_hash(&relay.url).await {
            Ok(hash) => {
                relay.hash = hash;
                return Ok(relay);
            }
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e).context("the relay did not come up");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn mbps(bytes: u64, seconds: f64) -> f64 {
    ((bytes as f64 * 8.0 / seconds.max(1e-9) / 1e6) * 100.0).round() / 100.0
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        return 0.0;
    }
    (a as f64 / b as f64 * 10_000.0).round() / 10_000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn path_report(received: &Recorder, expected: u64, sent_bytes: u64, seconds: f64) -> PathReport {
    PathReport {
        latency_ms: Latency::of(&received.latency_us),
        delivered_ratio: ratio(received.frames, expected),
        delivered: received.frames,
        expected,
        egress_mbps: mbps(received.bytes, seconds),
        ingress_mbps: mbps(sent_bytes, seconds),
        packets: received.packets,
        cpu_core_s_per_s: None,
        peak_rss_mb: None,
        cpu_core_s_per_gbit: None,
        cpu_us_per_packet: None,
        load_generator_cpu_core_s_per_s: None,
        relay_drops: None,
    }
}

/// The relay's `synapse_frames_dropped_*_total` counters by reason, and its
/// `synapse_frames_skipped_late_total` ones by kind (as `skipped_late_audio`, …).
async fn relay_drops(url: &str) -> Option<std::collections::BTreeMap<String, u64>> {
    let metrics = crate::client::fetch_http(url, "/metrics").await.ok()?;
    Some(metrics.lines().filter_map(drop_counter).collect())
}

/// `synapse_frames_dropped_stale_total 3` → `("stale", 3)`;
/// `synapse_frames_skipped_late_total{kind="video"} 5` → `("skipped_late_video", 5)`.
fn drop_counter(line: &str) -> Option<(String, u64)> {
    let (name, value) = line.strip_prefix("synapse_frames_")?.rsplit_once(' ')?;
    let (base, labels) = name.split_once('{').unwrap_or((name, ""));
    let base = base.strip_suffix("_total")?;
    let mut key = match base.strip_prefix("dropped_") {
        Some(reason) => reason.to_owned(),
        None if base.starts_with("skipped_") => base.to_owned(),
        None => return None,
    };
    for label in labels
        .trim_end_matches('}')
        .split(',')
        .filter(|l| !l.is_empty())
    {
        let (_, v) = label.split_once('=')?;
        key += "_";
        key += v.trim_matches('"');
    }
    Some((key, value.parse().ok()?))
}

fn progress_printer(
    label: String,
    enabled: bool,
    duration: Duration,
) -> impl Fn(u64) + Send + 'static {
    let started = std::time::Instant::now();
    move |frames| {
        if enabled {
            eprint!(
                "\r{label}: {:>4.0} / {:.0} s, {frames} frames delivered   ",
                started.elapsed().as_secs_f64(),
                duration.as_secs_f64()
            );
        }
    }
}

/// Runs the scenario through the relay (and the baselines, for fan-out).
pub async fn run(options: &BenchOptions) -> Result<BenchReport> {
    if let Scenario::WeakLink = options.scenario {
        anyhow::bail!("weak-link has its own report: run it with weak_link::run");
    }
    let started_relay;
    let (url, verification, pid) = match &options.url {
        Some(url) => {
            let verification = match &options.cert_hash {
                Some(h) => Verification::Pin(h.clone()),
                None => Verification::FetchPin,
            };
            (url.clone(), verification, None)
        }
        None => {
            started_relay =
                start_relay(options.relay_bin.as_ref(), &options.relay_args, None).await?;
            let pid = started_relay.child.id();
            (
                started_relay.url.clone(),
                Verification::Pin(started_relay.hash.clone()),
                Some(pid),
            )
        }
    };
    let cpu_at_start = std::sync::Arc::new(std::sync::Mutex::new((None::<f64>, None::<f64>)));
    let mark = cpu_at_start.clone();
    let own_pid = std::process::id();
    let label = format!("relay {}", scenario_label(&options.scenario));
    let mut relay = crate::client::ClientOptions::new(&url, verification);
    relay.transport = options.transport;
    let outcome = relay_path::run(
        vec![relay],
        options.scenario.plans(),
        options.shape,
        options.lean_subscribers,
        options.duration,
        move || {
            *mark.lock().unwrap_or_else(|e| e.into_inner()) = (
                pid.and_then(process_cpu_seconds),
                process_cpu_seconds(own_pid),
            )
        },
        progress_printer(label, options.progress, options.duration),
    )
    .await?;
    if options.progress {
        eprintln!();
    }
    let seconds = options.duration.as_secs_f64();
    let mut relay = path_report(
        &outcome.received,
        outcome.expected_frames,
        outcome.sent_bytes,
        seconds,
    );
    let (relay_cpu_start, own_cpu_start) = *cpu_at_start.lock().unwrap_or_else(|e| e.into_inner());
    if let (Some(start), Some(end)) = (own_cpu_start, process_cpu_seconds(own_pid)) {
        relay.load_generator_cpu_core_s_per_s = Some(round3((end - start) / outcome.wall_s));
    }
    if let Some(pid) = pid {
        if let (Some(start), Some(end)) = (relay_cpu_start, process_cpu_seconds(pid)) {
            let cpu = end - start;
            relay.cpu_core_s_per_s = Some(round3(cpu / outcome.wall_s));
            let gbit = outcome.received.bytes as f64 * 8.0 / 1e9;
            relay.cpu_core_s_per_gbit = (gbit > 0.0).then(|| round3(cpu / gbit));
            relay.cpu_us_per_packet = (outcome.received.packets > 0)
                .then(|| round3(cpu * 1e6 / outcome.received.packets as f64));
        }
        relay.peak_rss_mb = peak_rss_mb(pid);
    }
    relay.relay_drops = relay_drops(&url).await;

    let (mut direct, mut udp) = (None, None);
    if let (true, Scenario::Fanout { subscribers }) = (options.baselines, options.scenario) {
        if options.progress {
            eprintln!("direct QUIC baseline, same load…");
        }
        let d = direct::run_fanout(
            subscribers,
            options.shape,
            options.lean_subscribers,
            options.duration,
        )
        .await?;
        direct = Some(path_report(
            &d.received,
            d.expected_frames,
            d.sent_bytes,
            seconds,
        ));
        if options.progress {
            eprintln!("raw UDP baseline, same load…");
        }
        let u = udp::run_fanout(subscribers, options.shape, options.duration).await?;
        let mut report = path_report(&u.received, u.expected_packets, u.sent_bytes, seconds);
        report.cpu_us_per_packet =
            (u.sent_packets > 0).then(|| round3(u.sender_cpu_s * 1e6 / u.sent_packets as f64));
        report.cpu_core_s_per_s = Some(round3(u.sender_cpu_s / u.wall_s));
        udp = Some(report);
    }
    let mut ratios = Ratios::default();
    if let Some(d) = &direct {
        ratios.relay_added_p50_ms = Some(round3(relay.latency_ms.p50 - d.latency_ms.p50));
        ratios.relay_added_p99_ms = Some(round3(relay.latency_ms.p99 - d.latency_ms.p99));
        if d.latency_ms.p50 > 0.0 && d.latency_ms.p99 > 0.0 {
            ratios.relay_over_direct_p50 = Some(round3(relay.latency_ms.p50 / d.latency_ms.p50));
            ratios.relay_over_direct_p99 = Some(round3(relay.latency_ms.p99 / d.latency_ms.p99));
        }
    }
    if let (Some(r), Some(Some(u))) = (
        relay.cpu_us_per_packet,
        udp.as_ref().map(|u| u.cpu_us_per_packet),
    ) && u > 0.0
    {
        ratios.relay_over_udp_cpu_per_packet = Some(round3(r / u));
    }
    Ok(BenchReport {
        transport: options.transport,
        lean_subscribers: options.lean_subscribers,
        scenario: options.scenario,
        duration_s: seconds,
        shape: options.shape,
        machine: machine_line(),
        note: SHARED_NOTE,
        paths: Paths { relay, direct, udp },
        ratios,
        simulcast: outcome.simulcast.map(|s| SimulcastReport {
            frames_per_layer: s.frames_per_layer,
            publisher_mbps: round3(outcome.sent_bytes as f64 * 8.0 / seconds / 1e6),
            unused_layers_stopped_after_s: s.unused_stopped_after.map(|d| round3(d.as_secs_f64())),
        }),
    })
}

fn scenario_label(s: &Scenario) -> String {
    match s {
        Scenario::Fanout { subscribers } => format!("fanout 1→{subscribers}"),
        Scenario::Meeting {
            peers,
            simulcast,
            thumbnails,
        } => format!(
            "meeting {peers} peers{}",
            match (simulcast, thumbnails) {
                (_, true) => ", simulcast, every consumer at 320x180",
                (true, false) => ", simulcast",
                _ => "",
            }
        ),
        Scenario::Rooms { rooms, peers } => format!("rooms {rooms}×{peers}"),
        Scenario::WeakLink => "weak-link".into(),
    }
}

/// The capacity search's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub p99_bound_ms: f64,
    pub min_delivered_ratio: f64,
    /// Largest subscriber count that met both bounds.
    pub capacity: usize,
    pub trials: Vec<CapacityTrial>,
    pub machine: String,
    pub note: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapacityTrial {
    pub subscribers: usize,
    pub p99_ms: f64,
    pub delivered_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_core_s_per_s: Option<f64>,
    pub passed: bool,
}

/// Finds the largest fan-out whose p99 stays under `p99_bound_ms` with at least 99.9%
/// delivered: doubling from `start`, then bisecting to within `start / 2`.
pub async fn capacity(
    options: &BenchOptions,
    start: usize,
    p99_bound_ms: f64,
) -> Result<CapacityReport> {
    const MIN_DELIVERED: f64 = 0.999;
    let mut trials = Vec::new();
    let trial = async |n: usize, trials: &mut Vec<CapacityTrial>| -> Result<bool> {
        let mut opts = options.clone();
        opts.scenario = Scenario::Fanout { subscribers: n };
        opts.baselines = false;
        let report = run(&opts).await?;
        let relay = &report.paths.relay;
        let passed = relay.latency_ms.p99 <= p99_bound_ms && relay.delivered_ratio >= MIN_DELIVERED;
        if options.progress {
            eprintln!(
                "capacity: {n} subscribers: p99 {:.2} ms, delivered {:.4} → {}",
                relay.latency_ms.p99,
                relay.delivered_ratio,
                if passed { "pass" } else { "fail" }
            );
        }
        trials.push(CapacityTrial {
            subscribers: n,
            p99_ms: relay.latency_ms.p99,
            delivered_ratio: relay.delivered_ratio,
            cpu_core_s_per_s: relay.cpu_core_s_per_s,
            passed,
        });
        Ok(passed)
    };
    let (mut good, mut bad) = (0usize, None::<usize>);
    let mut n = start.max(1);
    while bad.is_none() && n <= 100_000 {
        if trial(n, &mut trials).await? {
            good = n;
            n *= 2;
        } else {
            bad = Some(n);
        }
    }
    if let Some(mut bad) = bad {
        let step = (start / 2).max(1);
        while bad - good > step {
            let mid = good + (bad - good) / 2;
            if trial(mid, &mut trials).await? {
                good = mid;
            } else {
                bad = mid;
            }
        }
    }
    Ok(CapacityReport {
        p99_bound_ms,
        min_delivered_ratio: MIN_DELIVERED,
        capacity: good,
        trials,
        machine: machine_line(),
        note: SHARED_NOTE,
    })
}

/// The human table.
pub fn print_report(report: &BenchReport) {
    println!(
        "{} for {:.0} s — {}; {}",
        scenario_label(&report.scenario),
        report.duration_s,
        report.machine,
        report.note
    );
    println!(
        "{:<7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "path",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "delivered",
        "egress",
        "ingress",
        "cpu",
        "rss MB",
        "µs/packet"
    );
    let row = |name: &str, p: &PathReport| {
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        println!(
            "{:<7} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.2}% {:>5.1} Mb/s {:>4.1} Mb/s {:>9} {:>8} {:>9}",
            name,
            p.latency_ms.p50,
            p.latency_ms.p90,
            p.latency_ms.p99,
            p.latency_ms.p999,
            p.latency_ms.max,
            p.delivered_ratio * 100.0,
            p.egress_mbps,
            p.ingress_mbps,
            opt(p.cpu_core_s_per_s, 3),
            opt(p.peak_rss_mb, 1),
            opt(p.cpu_us_per_packet, 2),
        );
    };
    row("relay", &report.paths.relay);
    if let Some(cpu) = report.paths.relay.load_generator_cpu_core_s_per_s {
        println!("load generator (publishers and subscribers, this process): {cpu:.3} core-s/s");
    }
    if let Some(s) = &report.simulcast {
        println!(
            "simulcast publishers: frames per layer {:?}, {:.2} Mb/s sent; unused layers stopped {}",
            s.frames_per_layer,
            s.publisher_mbps,
            s.unused_layers_stopped_after_s
                .map_or("(none unused)".to_owned(), |t| format!(
                    "{t:.1} s after the start"
                )),
        );
    }
    if let Some(d) = &report.paths.direct {
        row("direct", d);
    }
    if let Some(u) = &report.paths.udp {
        row("udp", u);
    }
    let r = &report.ratios;
    if let (Some(a50), Some(a99)) = (r.relay_added_p50_ms, r.relay_added_p99_ms) {
        println!("relay adds {a50:.3} ms at p50 and {a99:.3} ms at p99 over a direct QUIC link");
    }
    if let Some(x) = r.relay_over_udp_cpu_per_packet {
        println!("relay CPU per packet: {x:.2}× the raw UDP sender's");
    }
    if let Some(g) = report.paths.relay.cpu_core_s_per_gbit {
        println!("relay CPU per forwarded gigabit: {g:.3} core-seconds");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_drop_counters_from_metrics_lines() {
        assert_eq!(
            drop_counter("synapse_frames_dropped_slow_consumer_total 12"),
            Some(("slow_consumer".into(), 12))
        );
        assert_eq!(
            drop_counter("synapse_frames_skipped_late_total{kind=\"video\"} 5"),
            Some(("skipped_late_video".into(), 5))
        );
        assert_eq!(drop_counter("synapse_frames_in_total 100"), None);
        assert_eq!(
            drop_counter("# TYPE synapse_frames_dropped_stale_total counter"),
            None
        );
    }
}
