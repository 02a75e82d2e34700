//! A webinar larger than one relay: one publisher on relay one, 300 subscribers spread
//! over three relays that share a real redis-server (docs/CLUSTER.md). At least 99.9% of
//! the video frames arrive, every subscriber gets nearly all the audio, and each relay
//! pulls each producer from the origin exactly once.
//! (Alone in its test binary: 300 sessions and three relays take both cores.)

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use futures_util::StreamExt;
use synapse_sfu::client::media::synthetic_payload;
use synapse_sfu::client::now_us;
use synapse_sfu::server::Server;
use synapse_sfu::wire::{FrameHeader, MediaKind, ProducerId, ServerMessage};

const SUBSCRIBERS: usize = 300;
// Three seconds of audio (10 frames a second) and 10 fps video of small frames: what is
// tested is that every frame gets everywhere, not the relays' throughput (a debug build,
// with the 300 subscribers on the same two cores; `bench cluster` measures throughput).
// A datagram the publisher's relay loses costs 300 deliveries, so the load is kept well
// below what makes a starved debug build drop datagrams at its socket.
const AUDIO_FRAMES: u64 = 30;
const VIDEO_FRAMES: u64 = 30;
/// Audio datagrams are not retransmitted, by design: one lost between two relays (a full
/// socket buffer on a busy machine) is missing for all of that relay's ~100 viewers at
/// once. So each subscriber may miss this many; of the video, on streams, 99.9% arrives.
const AUDIO_MAY_MISS: u64 = 2;

async fn consumers_of(server: &Server, producer: ProducerId) -> usize {
    server
        .rooms()
        .room("webinar")
        .and_then(|r| r.lock().producer_consumers(producer))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_300_over_three_relays_delivers_with_one_pull_per_relay() {
    let redis = Redis::start_on(free_port());
    let ttl = Duration::from_secs(5);
    let relays = [
        relay_in(&redis, ttl, true).await,
        relay_in(&redis, ttl, true).await,
        relay_in(&redis, ttl, true).await,
    ];
    let host = join(&relays[0], "webinar", "host", false).await;
    let mic = host.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let cam = host.client.produce(MediaKind::Video, "vp8").await.unwrap();

    // Subscribers join round-robin over the three relays, a few at a time.
    let subscribers: Vec<Peer> = futures_util::stream::iter(0..SUBSCRIBERS)
        .map(|i| {
            let relay = &relays[i % 3];
            async move { join(relay, "webinar", &format!("viewer {i}"), true).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    // Every subscriber consumes both tracks where it is; the origin has one consumer per
    // producer for each of the other two relays on top of its own 100, and each of the
    // other relays' viewers once, as a shadow (joins admitted while a mirror is being set
    // up included).
    let local = SUBSCRIBERS / 3;
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(20));
    loop {
        let mut counts = Vec::new();
        for relay in &relays {
            counts.push((
                consumers_of(relay, mic).await,
                consumers_of(relay, cam).await,
            ));
        }
        let flowing: Vec<u64> = {
            let mut flowing = Vec::new();
            for relay in &relays[1..] {
                let status = health(relay).await;
                flowing.push(
                    status["cluster"]["links"][0]["flowing"]
                        .as_u64()
                        .unwrap_or(0),
                );
            }
            flowing
        };
        let shadows = shadows_on(&relays[0], "webinar", "viewer");
        if counts[0] == (local + 2, local + 2)
            && counts[1..].iter().all(|c| *c == (local, local))
            && flowing == [2, 2]
            && shadows == SUBSCRIBERS - local
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumers never settled: {counts:?}, flowing over links {flowing:?}, \
             {shadows} shadows on the origin"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for relay in &relays[1..] {
        let status = health(relay).await;
        assert_eq!(
            status["cluster"]["links"][0]["pulled_producers"], 2,
            "one pull per producer: {status}"
        );
    }

    // Each subscriber counts what it receives while the host publishes.
    let counters: Vec<_> = subscribers
        .into_iter()
        .map(|mut peer| {
            tokio::spawn(async move {
                let (mut audio, mut video) = (0u64, 0u64);
                let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(10));
                while audio < AUDIO_FRAMES || video < VIDEO_FRAMES {
                    match tokio::time::timeout_at(deadline, peer.incoming.frames.recv()).await {
                        Ok(Some(frame)) if frame.producer_id == mic => audio += 1,
                        Ok(Some(frame)) if frame.producer_id == cam => video += 1,
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
                (audio, video, peer)
            })
        })
        .collect();
    // The host answers keyframe requests with its next frame, as an encoder does (a
    // consumer whose stream stalled restarts at a keyframe).
    let mut host = host;
    let mut video_seq = 0;
    let mut keyframe_due = true;
    for seq in 0..AUDIO_FRAMES {
        while let Ok(event) = host.incoming.events.try_recv() {
            keyframe_due |= matches!(event, ServerMessage::KeyframeRequest { .. });
        }
        send_audio(&host.client, mic, seq);
        // Video beside audio, one frame each, every 100 ms.
        if video_seq < VIDEO_FRAMES {
            let size = if keyframe_due { 4_000 } else { 800 };
            let header = FrameHeader::new(video_seq, now_us(), keyframe_due);
            host.client
                .send_video(cam, header, synthetic_payload(video_seq, size))
                .await
                .unwrap();
            keyframe_due = false;
            video_seq += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut audio_in, mut video_in) = (0, 0);
    let mut short = Vec::new();
    for counter in counters {
        let (audio, video, peer) = counter.await.unwrap();
        audio_in += audio;
        video_in += video;
        if audio + AUDIO_MAY_MISS < AUDIO_FRAMES {
            short.push((peer.joined.name.clone(), audio, video));
        }
    }
    // What each relay dropped on purpose (late for its latency bound, or a consumer too
    // slow), to tell a designed skip from a loss when the counts below fall short.
    let mut dropped = Vec::new();
    for relay in &relays {
        let metrics = http_get(relay, "/metrics").await;
        let counted: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("skipped_late") || l.contains("slow_consumer"))
                    && !l.ends_with(" 0")
            })
            .collect();
        dropped.push(counted.join(", "));
    }
    println!("relays dropped: {dropped:?}");
    let n = SUBSCRIBERS as u64;
    println!(
        "delivered {video_in} of {} video frames, {audio_in} of {} audio frames",
        n * VIDEO_FRAMES,
        n * AUDIO_FRAMES
    );
    assert!(
        short.is_empty(),
        "all but {AUDIO_MAY_MISS} audio frames to everyone; short (name, audio, video): {short:?}; relays dropped: {dropped:?}"
    );
    let video_share = video_in as f64 / (n * VIDEO_FRAMES) as f64;
    assert!(
        video_share >= 0.999,
        "video delivered {video_share:.4}; relays dropped: {dropped:?}"
    );
}
