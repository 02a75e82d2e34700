//! Measures the two ways of carrying video frames on QUIC streams, side by side in one run:
//! one unidirectional stream per frame, and one per group of pictures (a keyframe and the
//! deltas after it). Same transport (wtransport over loopback), same frames, same pacing.
//!
//! Run: `cargo run --release --example stream_modes [frames] [group]`
//! Prints, per mode: streams opened, per-frame latency (send to fully received) p50/p99,
//! and process CPU time per frame, then the ratios.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use synapse_sfu::client::media::synthetic_payload;
use synapse_sfu::client::now_us;
use synapse_sfu::wire::frame::{self, FrameHeader};
use tokio::io::AsyncReadExt;
use wtransport::{ClientConfig, Endpoint, Identity, ServerConfig};

/// Process CPU seconds (user + system) from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

struct Outcome {
    streams: u64,
    latency_us: Histogram<u64>,
    cpu_per_frame_us: f64,
}

async fn run(per_frame: bool, frames: u64, group: u64) -> anyhow::Result<Outcome> {
    let identity = Identity::self_signed(["localhost", "127.0.0.1"])?;
    let hash = identity.certificate_chain().as_slice()[0].hash();
    let server = Endpoint::server(
        ServerConfig::builder()
            .with_bind_address("127.0.0.1:0".parse()?)
            .with_identity(identity)
            .build(),
    )?;
    let port = server.local_addr()?.port();
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.await?.accept().await?;
        let mut latency = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let mut received = 0;
        while received < frames {
            tokio::select! {
                stream = conn.accept_uni() => {
                    let mut stream = stream?;
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut buf = BytesMut::with_capacity(64 * 1024);
                        let mut header_done = false;
                        loop {
                            if !header_done {
                                header_done = frame::decode_stream_header(&mut buf).ok().flatten().is_some();
                            }
                            if header_done {
                                while let Ok(Some(f)) = frame::decode_stream_frame(&mut buf, 1 << 24) {
                                    let _ = tx.send(now_us().saturating_sub(f.header.capture_us));
                                }
                            }
                            if buf.capacity() - buf.len() < 4096 { buf.reserve(64 * 1024); }
                            if !matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) { return; }
                        }
                    });
                }
                Some(us) = rx.recv() => { latency.record(us.max(1))?; received += 1; }
            }
        }
        anyhow::Ok(latency)
    });

    let client = Endpoint::client(
        ClientConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([hash])
            .build(),
    )?;
    let conn = client.connect(format!("https://127.0.0.1:{port}/")).await?;
    let cpu_start = cpu_seconds();
    let mut stream = None;
    let mut streams = 0;
    let mut next = tokio::time::Instant::now();
    for seq in 0..frames {
        let keyframe = seq % group == 0;
        let payload: Bytes = synthetic_payload(seq, if keyframe { 40_000 } else { 4_000 });
        if per_frame || keyframe || stream.is_none() {
            if let Some(mut old) = stream.take() {
                let _ = wtransport::SendStream::quic_stream_mut(&mut old).finish();
            }
            let mut s = conn.open_uni().await?.await?;
            s.quic_stream_mut()
                .write_chunk(frame::encode_stream_header(
                    synapse_sfu::wire::ProducerId(1),
                    None,
                ))
                .await?;
            stream = Some(s);
            streams += 1;
        }
        let header = FrameHeader {
            seq,
            capture_us: now_us(),
            keyframe,
            audio_level: None,
        };
        let head = frame::encode_stream_frame_head(&header, payload.len());
        stream
            .as_mut()
            .expect("open")
            .quic_stream_mut()
            .write_all_chunks(&mut [head, payload])
            .await?;
        next += Duration::from_millis(1);
        tokio::time::sleep_until(next).await;
    }
    if let Some(mut s) = stream {
        let _ = s.quic_stream_mut().finish();
    }
    let latency_us = receiver.await??;
    let cpu = cpu_seconds() - cpu_start;
    Ok(Outcome {
        streams,
        latency_us,
        cpu_per_frame_us: cpu * 1e6 / frames as f64,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let frames: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(6000);
    let group: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let started = Instant::now();
    // Alternate the modes twice so that machine noise hits both.
    let mut results = Vec::new();
    for round in 0..2 {
        for per_frame in [true, false] {
            let o = run(per_frame, frames, group).await?;
            let name = if per_frame {
                "stream per frame"
            } else {
                "stream per group"
            };
            println!(
                "round {round} {name:<17} streams {:>5}  latency p50 {:>6} us  p99 {:>6} us  cpu/frame {:>6.1} us",
                o.streams,
                o.latency_us.value_at_quantile(0.5),
                o.latency_us.value_at_quantile(0.99),
                o.cpu_per_frame_us
            );
            results.push((per_frame, o));
        }
    }
    let avg = |per_frame: bool, f: &dyn Fn(&Outcome) -> f64| {
        let v: Vec<f64> = results
            .iter()
            .filter(|(p, _)| *p == per_frame)
            .map(|(_, o)| f(o))
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let ratio = |f: &dyn Fn(&Outcome) -> f64| avg(true, f) / avg(false, f);
    println!(
        "per-frame / per-group: cpu per frame x{:.2}, latency p50 x{:.2}, p99 x{:.2} ({} frames, group {group}, {:.0} s)",
        ratio(&|o| o.cpu_per_frame_us),
        ratio(&|o| o.latency_us.value_at_quantile(0.5) as f64),
        ratio(&|o| o.latency_us.value_at_quantile(0.99) as f64),
        frames,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
