//! The relay end to end: real clients over real QUIC on 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;
use synapse_sfu::client::media::synthetic_payload;
use synapse_sfu::core::RelayCounts;
use synapse_sfu::server::{Server, ServerConfig};
use synapse_sfu::transport::TransportKind;
use synapse_sfu::wire::{LeaveReason, MediaKind, ProducerId, ServerMessage};

const VIDEO_FRAMES: u64 = 60;
const AUDIO_FRAMES: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_receive_each_other_and_nobody_else_does() {
    three_peers_call(start_relay().await, &[]).await;
}

/// The same call with some peers on the WebSocket fallback (docs/PROTOCOL.md section 17):
/// ada and cy (and the two who must hear nothing) over TCP, bo over QUIC. Every frame
/// crosses between the transports both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_call_across_websocket_and_webtransport() {
    three_peers_call(start_relay().await, &["ada", "cy", "dee", "eve"]).await;
}

/// The same call with the relay on two endpoints sharing the port (SO_REUSEPORT): peers
/// of one room land on different endpoints and still hear each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_over_two_endpoints() {
    let server = start_relay_with(ServerConfig {
        endpoints: 2,
        ..test_config()
    })
    .await;
    three_peers_call(server, &[]).await;
}

/// Sessions spread over the endpoints, and no other process can join the port's group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_share_the_port_and_keep_it() {
    let server = start_relay_with(ServerConfig {
        endpoints: 2,
        ..test_config()
    })
    .await;
    let mut peers = Vec::new();
    for i in 0..16 {
        peers.push(join(&server, "spread", &format!("p{i}"), false).await);
    }
    let spread = server.sessions_per_endpoint();
    assert_eq!(spread.iter().sum::<u64>(), 16, "{spread:?}");
    // Each source port hashes to one socket: 16 clients all on one of two endpoints has a
    // chance of 2^-15.
    assert!(spread.iter().all(|n| *n > 0), "{spread:?}");
    let taken = Server::start(ServerConfig {
        bind: server.local_addr(),
        endpoints: 2,
        http: false,
        ..test_config()
    })
    .await;
    let error = format!("{:#}", taken.err().expect("the port is taken"));
    assert!(error.contains("binding UDP"), "{error}");
    assert_eq!(server.rooms().counts().peers, 16);
}

/// One peer leaves with a request while the other's connection drops: the room closes and
/// the directory forgets both (a `leave` request used to leave its peer in the directory
/// when the room closed during its goodbye).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_request_and_a_drop_together_leave_nothing_behind() {
    let server = start_relay().await;
    for _ in 0..3 {
        let p = join(&server, "x", "p", false).await;
        let q = join(&server, "x", "q", false).await;
        let (left, ()) = tokio::join!(p.client.leave(), async { q.client.close() });
        left.unwrap();
        wait_for_relay(&server, Duration::from_secs(5), |c| {
            c.peers == 0 && c.rooms == 0
        })
        .await;
        let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(5));
        while server.rooms().directory_peers() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the directory kept a peer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A call of three, a peer in another room and an unsubscribed one; the peers named in
/// `over_websocket` use the WebSocket fallback.
async fn three_peers_call(server: Server, over_websocket: &[&str]) {
    let join = |room: &'static str, name: &'static str, auto_subscribe: bool| {
        let mut options = options(&server);
        if over_websocket.contains(&name) {
            options.transport = TransportKind::WebSocket;
        }
        async move {
            let peer = join_with(options, room, name, auto_subscribe).await;
            let expected = if over_websocket.contains(&name) {
                TransportKind::WebSocket
            } else {
                TransportKind::WebTransport
            };
            assert_eq!(peer.client.transport(), expected);
            peer
        }
    };
    let mut peers = Vec::new();
    for name in ["ada", "bo", "cy"] {
        peers.push(join("call", name, true).await);
    }
    let mut outsider = join("elsewhere", "dee", true).await;
    let mut bystander = join("call", "eve", false).await;
    assert!(!peers[0].joined.ongoing, "the first peer starts the call");
    assert!(
        peers[1].joined.ongoing,
        "the second is told a call is going on"
    );
    let names: Vec<&str> = peers[2]
        .joined
        .peers
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["ada", "bo"]);
    assert!(!outsider.joined.ongoing);

    let mut tracks = Vec::new();
    for p in &peers {
        let audio = p.client.produce(MediaKind::Audio, "opus").await.unwrap();
        let video = p.client.produce(MediaKind::Video, "vp8").await.unwrap();
        tracks.push((audio, video));
    }
    // Each of the three auto-subscribes to the two others' two tracks.
    wait_for_relay(&server, Duration::from_secs(5), |c| c.consumers == 12).await;

    let mut senders = Vec::new();
    for (p, (audio, video)) in peers.iter().zip(tracks.clone()) {
        let client = p.client.clone();
        senders.push(tokio::spawn(async move {
            for seq in 0..AUDIO_FRAMES {
                send_audio(&client, audio, seq);
                if seq < VIDEO_FRAMES {
                    send_video(&client, video, seq, seq % 30 == 0).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }

    for (i, peer) in peers.iter_mut().enumerate() {
        let others: Vec<(ProducerId, ProducerId)> = tracks
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, t)| *t)
            .collect();
        let expected = others.clone();
        let received = collect_until(&mut peer.incoming, Duration::from_secs(15), |r| {
            expected.iter().all(|(a, v)| {
                r.get(v).map_or(0, Vec::len) as u64 == VIDEO_FRAMES
                    && r.get(a).map_or(0, Vec::len) as u64 == AUDIO_FRAMES
            })
        })
        .await;
        assert_eq!(
            received.len(),
            4,
            "peer {i} hears exactly the two others' tracks"
        );
        for (audio, video) in others {
            let frames = &received[&video];
            let seqs: Vec<u64> = frames.iter().map(|f| f.header.seq).collect();
            assert_eq!(
                seqs,
                (0..VIDEO_FRAMES).collect::<Vec<_>>(),
                "video in order, complete"
            );
            for f in frames {
                assert_eq!(f.kind, MediaKind::Video);
                assert_eq!(f.header.keyframe, f.header.seq % 30 == 0);
                assert_eq!(
                    f.payload,
                    expected_video(f.header.seq, f.header.keyframe),
                    "byte-exact"
                );
            }
            let audio_frames = received.get(&audio).map(Vec::as_slice).unwrap_or_default();
            // Datagrams are unreliable by design; on loopback nearly all arrive.
            assert!(
                audio_frames.len() as u64 >= AUDIO_FRAMES * 95 / 100,
                "peer {i}: {} of {AUDIO_FRAMES} audio frames",
                audio_frames.len()
            );
            for f in audio_frames {
                assert_eq!(f.kind, MediaKind::Audio);
                assert_eq!(
                    f.payload,
                    synthetic_payload(f.header.seq, audio_size(f.header.seq))
                );
            }
        }
        // Nothing of a peer's own tracks comes back to it.
        assert!(!received.contains_key(&tracks[i].0) && !received.contains_key(&tracks[i].1));
    }

    // The relay's own view: every forwarded frame timed, queues never deep.
    let metrics = http_get(&server, "/metrics").await;
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("synapse_forwarding_latency_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        count >= 2 * 3 * (VIDEO_FRAMES + AUDIO_FRAMES) * 95 / 100,
        "{metrics}"
    );
    assert!(metrics.contains("synapse_forwarding_latency_seconds_bucket{le=\"+Inf\"}"));
    assert!(metrics.contains("synapse_consumer_queue_high_water{kind=\"video\"}"));
    assert!(metrics.contains("synapse_peers 5"), "{metrics}");

    // Give stragglers time to arrive, then check the two who must get nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        outsider.incoming.frames.try_recv().is_err(),
        "another room hears nothing"
    );
    assert!(
        bystander.incoming.frames.try_recv().is_err(),
        "an unsubscribed peer hears nothing"
    );
    let relay = server.rooms();
    assert!(relay.peer_consumers(outsider.joined.peer_id).is_empty());
    assert!(relay.peer_consumers(bystander.joined.peer_id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_and_crashing_peers_are_announced_and_freed() {
    let server = start_relay().await;
    let mut ada = join(&server, "r", "ada", true).await;
    let bo = join(&server, "r", "bo", true).await;
    let bo_mic = bo.client.produce(MediaKind::Audio, "opus").await.unwrap();

    // A peer that crashes: its runtime dies without closing the connection, so the relay
    // only learns of it from the silence (idle timeout).
    let options = options(&server);
    let (cy_id, cy_cam) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (peer, cam) = rt.block_on(async {
            let peer = join_with(options, "r", "cy", true).await;
            let cam = peer.client.produce(MediaKind::Video, "vp8").await.unwrap();
            (peer, cam)
        });
        let id = peer.joined.peer_id;
        std::mem::forget(peer); // no close frame, no goodbye
        rt.shutdown_background();
        (id, cam)
    })
    .join()
    .unwrap();

    wait_for_relay(&server, Duration::from_secs(5), |c| {
        c.peers == 3 && c.consumers == 4
    })
    .await;
    bo.client.leave().await.unwrap();
    let left = wait_event(&mut ada.incoming, Duration::from_secs(5), |e| {
        matches!(e, ServerMessage::PeerLeft { .. })
    })
    .await;
    assert_eq!(
        left,
        Some(ServerMessage::PeerLeft {
            peer_id: bo.joined.peer_id,
            reason: LeaveReason::Left
        })
    );
    // Bo's producer closed before Bo was announced gone.
    assert!(
        server
            .rooms()
            .peer_consumers(ada.joined.peer_id)
            .iter()
            .all(|(_, p)| *p != bo_mic)
    );

    let closed = wait_event(&mut ada.incoming, Duration::from_secs(10), |e| {
        matches!(e, ServerMessage::ProducerClosed { producer_id, .. } if *producer_id == cy_cam)
    })
    .await;
    assert!(closed.is_some(), "the crashed peer's producer is closed");
    let gone = wait_event(&mut ada.incoming, Duration::from_secs(5), |e| {
        matches!(e, ServerMessage::PeerLeft { .. })
    })
    .await;
    assert_eq!(
        gone,
        Some(ServerMessage::PeerLeft {
            peer_id: cy_id,
            reason: LeaveReason::Disconnected
        })
    );

    ada.client.leave().await.unwrap();
    wait_for_relay(&server, Duration::from_secs(5), |c| {
        c == RelayCounts::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_slows_nobody() {
    const FRAMES: u64 = 150;
    let server = start_relay().await;
    let mut publisher = join(&server, "r", "pub", false).await;
    let mut fast1 = join(&server, "r", "fast1", true).await;
    let mut fast2 = join(&server, "r", "fast2", true).await;
    // Small windows and a one-frame buffer that is never drained: this consumer stops
    // reading almost at once.
    let mut stalled = options(&server);
    stalled.frame_buffer = 1;
    stalled.stream_receive_window = Some(16 * 1024);
    let slow = join_with(stalled, "r", "slow", true).await;

    let cam = publisher
        .client
        .produce(MediaKind::Video, "vp8")
        .await
        .unwrap();
    wait_for_relay(&server, Duration::from_secs(5), |c| c.consumers == 3).await;
    let requests_before = server.rooms().stats().keyframe_requests;

    let client = publisher.client.clone();
    let sender = tokio::spawn(async move {
        for seq in 0..FRAMES {
            send_video(&client, cam, seq, seq % 25 == 0).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let collect = |mut incoming: synapse_sfu::client::Incoming| async move {
        let r = collect_until(&mut incoming, Duration::from_secs(20), |r| {
            r.get(&cam).map_or(0, Vec::len) as u64 == FRAMES
        })
        .await;
        (r, incoming)
    };
    let (r1, r2) = tokio::join!(
        collect(std::mem::replace(&mut fast1.incoming, dummy_incoming())),
        collect(std::mem::replace(&mut fast2.incoming, dummy_incoming()))
    );
    sender.await.unwrap();
    for (received, _) in [&r1, &r2] {
        let frames = &received[&cam];
        let seqs: Vec<u64> = frames.iter().map(|f| f.header.seq).collect();
        assert_eq!(
            seqs,
            (0..FRAMES).collect::<Vec<_>>(),
            "fast consumers get every frame in order"
        );
        for f in frames {
            assert_eq!(f.payload, expected_video(f.header.seq, f.header.keyframe));
        }
    }
    {
        let relay = server.rooms();
        let slow_consumers = relay.peer_consumers(slow.joined.peer_id);
        assert_eq!(slow_consumers.len(), 1);
        let stats = relay.consumer_stats(slow_consumers[0].0).unwrap();
        assert!(
            stats.dropped > 0,
            "the slow consumer lost frames: {stats:?}"
        );
        for fast in [&fast1, &fast2] {
            let (cid, _) = relay.peer_consumers(fast.joined.peer_id)[0];
            assert_eq!(relay.consumer_stats(cid).unwrap().dropped, 0);
        }
        assert!(
            relay.stats().keyframe_requests > requests_before,
            "the relay asked the producer for a keyframe for the slow consumer"
        );
    }
    let asked = wait_event(
        &mut publisher.incoming,
        Duration::from_secs(2),
        |e| matches!(e, ServerMessage::KeyframeRequest { producer_id, .. } if *producer_id == cam),
    )
    .await;
    assert!(asked.is_some());
}

fn dummy_incoming() -> synapse_sfu::client::Incoming {
    let (_, events) = tokio::sync::mpsc::unbounded_channel();
    let (_, frames) = tokio::sync::mpsc::channel(1);
    let (_, lossy_data) = tokio::sync::mpsc::channel(1);
    synapse_sfu::client::Incoming {
        events,
        frames,
        lossy_data,
    }
}

/// A stream that never sends its header holds up only itself: the publisher's next group
/// arrives at once, not after the 5 s header timeout (headers used to be read one at a
/// time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_holds_up_only_itself() {
    let server = start_relay().await;
    let publisher = join(&server, "s", "pub", false).await;
    let mut viewer = join(&server, "s", "view", true).await;
    let cam = publisher
        .client
        .produce(MediaKind::Video, "vp8")
        .await
        .unwrap();
    wait_for_relay(&server, Duration::from_secs(5), |c| c.consumers == 1).await;
    let _silent = publisher.client.open_uni().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    send_video(&publisher.client, cam, 0, true).await;
    let received = collect_until(&mut viewer.incoming, Duration::from_secs(10), |r| {
        r.get(&cam).is_some_and(|f| !f.is_empty())
    })
    .await;
    assert!(received.contains_key(&cam), "the group never arrived");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(2500),
        "the group waited {waited:?} behind the silent stream"
    );
}
