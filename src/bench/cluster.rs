//! `bench cluster`: one publisher on relay 1 and N subscribers spread over R relays that
//! span the room (`serve --span-rooms`, docs/CLUSTER.md), sharing a redis-server the bench
//! starts. What a hop costs, measured in one run: the latency of the subscribers on the
//! other relays beside that of the subscribers on the publisher's, and each relay's CPU.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::stats::{Latency, Recorder, machine_line, peak_rss_mb, process_cpu_seconds};
use super::{
    BenchOptions, RelayChild, SHARED_NOTE, Scenario, Shape, mbps, progress_printer, ratio, round3,
    start_relay,
};
use crate::client::{ClientOptions, Verification, fetch_http};

/// A redis-server of the bench's own, on a free port; stopped when dropped.
pub(super) struct RedisChild {
    child: Child,
    pub(super) url: String,
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) async fn start_redis() -> Result<RedisChild> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (Debian's package `redis-server`)")?;
    let redis = RedisChild {
        child,
        url: format!("redis://127.0.0.1:{port}/"),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(redis)
}

/// One relay of the cluster, as the run saw it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRelayReport {
    pub url: String,
    /// `origin` (hosts the room: the publisher is there) or `edge` (mirrors it).
    pub role: &'static str,
    pub subscribers: usize,
    pub latency_ms: Latency,
    pub delivered_ratio: f64,
    /// Media payload its subscribers received.
    pub egress_mbps: f64,
    pub cpu_core_s_per_s: Option<f64>,
    /// CPU per forwarded Gbit (to its own subscribers; an origin also feeds the links).
    pub cpu_core_s_per_gbit: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// Remote producers an edge pulls from the origin (one per producer: 2 here).
    pub pulled_producers: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub scenario: &'static str,
    pub subscribers: usize,
    pub relays: usize,
    pub duration_s: f64,
    pub shape: Shape,
    pub machine: String,
    pub note: &'static str,
    pub delivered_ratio: f64,
    pub per_relay: Vec<ClusterRelayReport>,
    /// Edge subscribers' latency minus the origin's subscribers', same run: what the hop
    /// through the origin's link adds.
    pub hop_added_p50_ms: Option<f64>,
    pub hop_added_p99_ms: Option<f64>,
    /// The load generator's CPU (this process: publisher and every subscriber).
    pub load_generator_cpu_core_s_per_s: Option<f64>,
}

/// Runs the cluster fan-out: `subscribers` spread round-robin over `relays` relays, the
/// publisher on the first.
pub async fn run(
    options: &BenchOptions,
    subscribers: usize,
    relays: usize,
) -> Result<ClusterReport> {
    anyhow::ensure!(relays >= 2, "a cluster has at least two relays");
    anyhow::ensure!(
        options.url.is_none(),
        "bench cluster starts its own relays (no --url)"
    );
    let redis = start_redis().await?;
    let mut children: Vec<RelayChild> = Vec::new();
    for _ in 0..relays {
        children.push(
            start_relay(
                options.relay_bin.as_ref(),
                &options.relay_args,
                Some(&redis.url),
            )
            .await?,
        );
    }
    let clients: Vec<ClientOptions> = children
        .iter()
        .map(|c| {
            let mut client = ClientOptions::new(c.url.clone(), Verification::Pin(c.hash.clone()));
            client.transport = options.transport;
            client
        })
        .collect();
    let mut plans = Scenario::Fanout { subscribers }.plans();
    for (i, plan) in plans.iter_mut().skip(1).enumerate() {
        plan.relay = i % relays;
    }
    // How many producers each relay pulls, sampled while the run goes (the mirrors are
    // taken down once the subscribers leave).
    let pulls = std::sync::Arc::new(std::sync::Mutex::new(vec![None::<u64>; relays]));
    let sampler = tokio::spawn({
        let pulls = pulls.clone();
        let urls: Vec<String> = children.iter().map(|c| c.url.clone()).collect();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                for (i, url) in urls.iter().enumerate() {
                    let Ok(body) = fetch_http(url, "/healthz").await else {
                        continue;
                    };
                    let pulled = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|h| h["cluster"]["links"][0]["pulled_producers"].as_u64());
                    if let Some(pulled) = pulled {
                        let mut pulls = pulls.lock().unwrap_or_else(|e| e.into_inner());
                        pulls[i] = Some(pulls[i].unwrap_or(0).max(pulled));
                    }
                }
            }
        }
    });
    let pids: Vec<u32> = children.iter().map(|c| c.child.id()).collect();
    let own_pid = std::process::id();
    let cpu_at_start = std::sync::Arc::new(std::sync::Mutex::new(
        None::<(Vec<Option<f64>>, Option<f64>)>,
    ));
    let mark = cpu_at_start.clone();
    let marked_pids = pids.clone();
    let outcome = super::relay_path::run(
        clients,
        plans,
        options.shape,
        options.lean_subscribers,
        options.duration,
        move || {
            *mark.lock().unwrap_or_else(|e| e.into_inner()) = Some((
                marked_pids
                    .iter()
                    .map(|p| process_cpu_seconds(*p))
                    .collect(),
                process_cpu_seconds(own_pid),
            ))
        },
        progress_printer(
            format!("cluster 1→{subscribers} over {relays} relays"),
            options.progress,
            options.duration,
        ),
    )
    .await?;
    sampler.abort();
    let pulls = pulls.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if options.progress {
        eprintln!();
    }
    let seconds = options.duration.as_secs_f64();
    let (relay_cpu_start, own_cpu_start) = cpu_at_start
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or((vec![None; relays], None));
    let mut per_relay = Vec::new();
    for (i, (child, (received, expected))) in children.iter().zip(&outcome.by_relay).enumerate() {
        let cpu = match (relay_cpu_start[i], process_cpu_seconds(pids[i])) {
            (Some(start), Some(end)) => Some(end - start),
            _ => None,
        };
        let gbit = received.bytes as f64 * 8.0 / 1e9;
        per_relay.push(ClusterRelayReport {
            url: child.url.clone(),
            role: if i == 0 { "origin" } else { "edge" },
            subscribers: (0..subscribers).filter(|s| s % relays == i).count(),
            latency_ms: Latency::of(&received.latency_us),
            delivered_ratio: ratio(received.frames, *expected),
            egress_mbps: mbps(received.bytes, seconds),
            cpu_core_s_per_s: cpu.map(|c| round3(c / outcome.wall_s)),
            cpu_core_s_per_gbit: cpu.filter(|_| gbit > 0.0).map(|c| round3(c / gbit)),
            peak_rss_mb: peak_rss_mb(pids[i]),
            pulled_producers: pulls[i],
        });
    }
    let mut edges = Recorder::default();
    for (received, _) in &outcome.by_relay[1..] {
        edges.merge(received);
    }
    let origin = Latency::of(&outcome.by_relay[0].0.latency_us);
    let edge = Latency::of(&edges.latency_us);
    let both = !outcome.by_relay[0].0.latency_us.is_empty() && !edges.latency_us.is_empty();
    drop(children);
    drop(redis);
    Ok(ClusterReport {
        scenario: "cluster_fanout",
        subscribers,
        relays,
        duration_s: seconds,
        shape: options.shape,
        machine: machine_line(),
        note: SHARED_NOTE,
        delivered_ratio: ratio(outcome.received.frames, outcome.expected_frames),
        per_relay,
        hop_added_p50_ms: both.then(|| round3(edge.p50 - origin.p50)),
        hop_added_p99_ms: both.then(|| round3(edge.p99 - origin.p99)),
        load_generator_cpu_core_s_per_s: match (own_cpu_start, process_cpu_seconds(own_pid)) {
            (Some(start), Some(end)) => Some(round3((end - start) / outcome.wall_s)),
            _ => None,
        },
    })
}

pub fn print_report(report: &ClusterReport) {
    println!(
        "cluster fan-out: 1 → {} subscribers over {} relays, {:.0} s — {}; {}",
        report.subscribers, report.relays, report.duration_s, report.machine, report.note
    );
    println!(
        "{:<7} {:>5} {:>9} {:>9} {:>10} {:>9} {:>10} {:>8} {:>7}",
        "relay", "subs", "p50 ms", "p99 ms", "delivered", "cpu", "cpu/Gbit", "rss MB", "pulls"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    for (i, r) in report.per_relay.iter().enumerate() {
        println!(
            "{:<7} {:>5} {:>9.3} {:>9.3} {:>9.3}% {:>9} {:>10} {:>8} {:>7}",
            format!("{} {}", i + 1, r.role),
            r.subscribers,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.delivered_ratio * 100.0,
            opt(r.cpu_core_s_per_s),
            opt(r.cpu_core_s_per_gbit),
            opt(r.peak_rss_mb),
            r.pulled_producers.map_or("-".to_owned(), |p| p.to_string()),
        );
    }
    println!(
        "delivered {:.3}%; a hop through the origin adds p50 {} ms, p99 {} ms",
        report.delivered_ratio * 100.0,
        opt(report.hop_added_p50_ms),
        opt(report.hop_added_p99_ms)
    );
}
