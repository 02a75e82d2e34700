//! The core driven directly: no sockets, simulated time.

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::wire::{
    ClientMessage, ConsumerId, ConsumerInfo, ErrorCode, FrameHeader, LeaveReason, MediaKind,
    PROTOCOL_VERSION, PeerId, ProduceResult, ProducerId, Request, ServerMessage,
};

fn hdr(seq: u64, keyframe: bool) -> FrameHeader {
    FrameHeader {
        seq,
        capture_us: 0,
        keyframe,
        audio_level: None,
    }
}

struct Harness {
    relay: Relay,
    now: Instant,
    next_request: u64,
}

impl Harness {
    fn new() -> Self {
        Self::with(RelayConfig::default())
    }

    fn with(config: RelayConfig) -> Self {
        Self {
            relay: Relay::new(config),
            now: Instant::now(),
            next_request: 0,
        }
    }

    fn join(&mut self, room: &str, name: &str) -> PeerId {
        self.relay
            .join(PROTOCOL_VERSION, room, name, false, self.now)
            .unwrap()
            .0
    }

    /// Sends a request and returns its response (or error), draining other outputs.
    fn request(&mut self, peer: PeerId, request: Request) -> Result<serde_json::Value, ErrorCode> {
        self.next_request += 1;
        let id = self.next_request;
        let reply = self
            .relay
            .handle(peer, ClientMessage { id, request }, self.now)
            .pop();
        let reply = reply.or_else(|| {
            self.drain(peer).into_iter().find_map(|o| match o {
                PeerOutput::Message(m @ ServerMessage::Response { .. })
                | PeerOutput::Message(m @ ServerMessage::Error { id: Some(_), .. }) => Some(m),
                _ => None,
            })
        });
        match reply {
            Some(ServerMessage::Response { id: rid, result }) if rid == id => Ok(result.to_json()),
            Some(ServerMessage::Error {
                id: Some(rid),
                code,
                ..
            }) if rid == id => Err(code),
            other => panic!("no reply to request {id}: {other:?}"),
        }
    }

    fn produce(&mut self, peer: PeerId, kind: MediaKind) -> ProducerId {
        let codec = if kind == MediaKind::Audio {
            "opus"
        } else {
            "vp8"
        };
        let result = self
            .request(
                peer,
                Request::Produce {
                    kind,
                    codec: codec.into(),
                    params: Default::default(),
                    source: None,
                    layers: Vec::new(),
                    producer_id: None,
                },
            )
            .unwrap();
        serde_json::from_value::<ProduceResult>(result)
            .unwrap()
            .producer_id
    }

    fn consume(&mut self, peer: PeerId, producer_id: ProducerId) -> ConsumerId {
        let result = self
            .request(
                peer,
                Request::Consume {
                    producer_id,
                    paused: false,
                    layer: None,
                },
            )
            .unwrap();
        serde_json::from_value::<ConsumerInfo>(result)
            .unwrap()
            .consumer_id
    }

    fn drain(&mut self, peer: PeerId) -> Vec<PeerOutput> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(o)) = self.relay.poll_peer(peer, &mut cx) {
            out.push(o);
        }
        out
    }

    fn messages(&mut self, peer: PeerId) -> Vec<ServerMessage> {
        self.drain(peer)
            .into_iter()
            .filter_map(|o| match o {
                PeerOutput::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn frames(&mut self, consumer: ConsumerId) -> Vec<Bytes> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(f)) = self.relay.poll_consumer(consumer, self.now, &mut cx) {
            match f.frame.data {
                FrameData::Stream { payload, .. } => out.push(payload),
                FrameData::Datagram(d) => out.push(d),
            }
        }
        out
    }

    fn video(&mut self, peer: PeerId, producer: ProducerId, seq: u8, key: bool) {
        let data = FrameData::Stream {
            head: Bytes::from_static(b"h"),
            payload: Bytes::from(vec![seq; 100]),
        };
        self.relay
            .on_frame(
                peer,
                producer,
                MediaKind::Video,
                0,
                &hdr(seq.into(), key),
                data,
                self.now,
            )
            .unwrap();
    }

    fn audio(&mut self, peer: PeerId, producer: ProducerId, seq: u8) {
        let data = FrameData::Datagram(Bytes::from(vec![seq; 10]));
        self.relay
            .on_frame(
                peer,
                producer,
                MediaKind::Audio,
                0,
                &hdr(seq.into(), false),
                data,
                self.now,
            )
            .unwrap();
    }

    fn keyframe_requests(&mut self, peer: PeerId) -> usize {
        self.messages(peer)
            .iter()
            .filter(|m| matches!(m, ServerMessage::KeyframeRequest { .. }))
            .count()
    }
}

#[test]
fn latency_histogram_buckets() {
    let mut h = LatencyHistogram::default();
    h.record(Duration::from_micros(40));
    h.record(Duration::from_micros(50));
    h.record(Duration::from_micros(51));
    h.record(Duration::from_secs(5));
    assert_eq!(h.counts[0], 2, "≤ 50 µs");
    assert_eq!(h.counts[1], 1, "≤ 100 µs");
    assert_eq!(*h.counts.last().unwrap(), 1, "+Inf");
    assert_eq!(h.count, 4);
    assert_eq!(h.sum_us, 5_000_141);
}

#[test]
fn second_peer_is_told_the_call_is_ongoing() {
    let mut h = Harness::new();
    let (a, first) = h
        .relay
        .join(PROTOCOL_VERSION, "standup", "alice", false, h.now)
        .unwrap();
    assert!(!first.ongoing);
    let mic = h.produce(a, MediaKind::Audio);
    let (b, second) = h
        .relay
        .join(PROTOCOL_VERSION, "standup", "bob", false, h.now)
        .unwrap();
    assert!(second.ongoing);
    assert_eq!(second.peers.len(), 1);
    assert_eq!(second.peers[0].name, "alice");
    assert_eq!(second.peers[0].producers[0].producer_id, mic);
    let told = h.messages(a);
    assert!(matches!(&told[..], [ServerMessage::PeerJoined { peer }] if peer.peer_id == b));
}

#[test]
fn frames_go_to_subscribers_only_and_share_the_payload() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let c = h.join("r", "c"); // in the room, not subscribed
    let d = h.join("other", "d"); // another room
    let cam = h.produce(a, MediaKind::Video);
    let cb = h.consume(b, cam);
    // Another room cannot consume it.
    assert_eq!(
        h.request(
            d,
            Request::Consume {
                producer_id: cam,
                paused: false,
                layer: None,
            }
        ),
        Err(ErrorCode::UnknownProducer)
    );
    let payload = Bytes::from(vec![7u8; 1000]);
    h.relay
        .on_frame(
            a,
            cam,
            MediaKind::Video,
            0,
            &hdr(0, true),
            FrameData::Stream {
                head: Bytes::new(),
                payload: payload.clone(),
            },
            h.now,
        )
        .unwrap();
    let got = h.frames(cb);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].as_ptr(), payload.as_ptr(), "shared, not copied");
    assert_eq!(h.relay.peer_consumers(c), vec![]);
    assert_eq!(h.relay.peer_consumers(a), vec![]);
    assert_eq!(h.relay.peer_consumers(d), vec![]);
}

#[test]
fn mid_stream_video_consumer_starts_at_a_keyframe() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let cam = h.produce(a, MediaKind::Video);
    h.video(a, cam, 0, true);
    h.video(a, cam, 1, false);
    h.messages(a);
    let cb = h.consume(b, cam);
    assert_eq!(h.keyframe_requests(a), 1, "consume asks the producer");
    h.video(a, cam, 2, false);
    h.video(a, cam, 3, true);
    h.video(a, cam, 4, false);
    let got: Vec<u8> = h.frames(cb).iter().map(|p| p[0]).collect();
    assert_eq!(got, vec![3, 4]);
}

#[test]
fn keyframe_requests_are_rate_limited() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let c = h.join("r", "c");
    let cam = h.produce(a, MediaKind::Video);
    h.consume(b, cam);
    h.consume(c, cam);
    assert_eq!(
        h.keyframe_requests(a),
        1,
        "two joins 0 ms apart make one request"
    );
    // Deltas keep arriving while consumers wait: re-ask once the interval has passed.
    h.video(a, cam, 0, false);
    assert_eq!(h.keyframe_requests(a), 0);
    h.now += Duration::from_millis(400);
    h.video(a, cam, 1, false);
    assert_eq!(h.keyframe_requests(a), 1);
}

#[test]
fn slow_consumer_loses_its_own_frames_only() {
    // The size policy alone: latency bounds out of the way.
    let mut h = Harness::with(RelayConfig {
        video_latency_bound: Duration::from_secs(60),
        audio_latency_bound: Duration::from_secs(60),
        ..RelayConfig::default()
    });
    let a = h.join("r", "a");
    let fast1 = h.join("r", "f1");
    let fast2 = h.join("r", "f2");
    let slow = h.join("r", "slow");
    let cam = h.produce(a, MediaKind::Video);
    let mic = h.produce(a, MediaKind::Audio);
    let c1 = h.consume(fast1, cam);
    let c2 = h.consume(fast2, cam);
    let cs = h.consume(slow, cam);
    let slow_mic = h.consume(slow, mic);
    h.messages(a);
    let (mut got1, mut got2) = (Vec::new(), Vec::new());
    for seq in 0..100u8 {
        h.now += Duration::from_millis(33);
        h.video(a, cam, seq, seq % 20 == 0);
        h.audio(a, mic, seq);
        got1.extend(h.frames(c1).iter().map(|p| p[0]));
        got2.extend(h.frames(c2).iter().map(|p| p[0]));
    }
    let all: Vec<u8> = (0..100).collect();
    assert_eq!(got1, all);
    assert_eq!(got2, all);
    let stats = h.relay.consumer_stats(cs).unwrap();
    assert!(stats.dropped > 0);
    assert!(stats.queued <= 30);
    assert!(
        h.keyframe_requests(a) >= 1,
        "the slow consumer asks for keyframes"
    );
    // The slow consumer's queue restarts at a keyframe.
    let first = h.frames(cs)[0][0];
    assert_eq!(first % 20, 0, "queue starts at a keyframe, got {first}");
    // Audio keeps the newest half second.
    let audio: Vec<u8> = h.frames(slow_mic).iter().map(|p| p[0]).collect();
    assert_eq!(audio, (75..100).collect::<Vec<u8>>());
    assert!(h.relay.stats().dropped_slow_consumer > 0);
}

#[test]
fn paused_consumers_and_producers_get_nothing() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let mic = h.produce(a, MediaKind::Audio);
    let cb = h.consume(b, mic);
    h.request(b, Request::PauseConsumer { consumer_id: cb })
        .unwrap();
    h.audio(a, mic, 1);
    assert!(h.frames(cb).is_empty());
    h.request(b, Request::ResumeConsumer { consumer_id: cb })
        .unwrap();
    h.request(a, Request::PauseProducer { producer_id: mic })
        .unwrap();
    assert!(
        h.messages(b)
            .contains(&ServerMessage::ProducerPaused { producer_id: mic })
    );
    h.audio(a, mic, 2);
    assert!(h.frames(cb).is_empty());
    h.request(a, Request::ResumeProducer { producer_id: mic })
        .unwrap();
    h.audio(a, mic, 3);
    assert_eq!(h.frames(cb).len(), 1);
}

#[test]
fn auto_subscribe_consumes_existing_and_future_producers() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let mic = h.produce(a, MediaKind::Audio);
    let (b, _) = h
        .relay
        .join(PROTOCOL_VERSION, "r", "b", true, h.now)
        .unwrap();
    let cam = h.produce(a, MediaKind::Video);
    let outputs = h.drain(b);
    let started: Vec<ProducerId> = outputs
        .iter()
        .filter_map(|o| match o {
            PeerOutput::StartConsumer { producer_id, .. } => Some(*producer_id),
            _ => None,
        })
        .collect();
    assert_eq!(started, vec![mic, cam]);
    let added = outputs
        .iter()
        .filter(|o| matches!(o, PeerOutput::Message(ServerMessage::ConsumerAdded { .. })))
        .count();
    assert_eq!(added, 2);
}

#[test]
fn closing_a_producer_closes_its_consumers() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let mic = h.produce(a, MediaKind::Audio);
    let cb = h.consume(b, mic);
    h.messages(b);
    h.request(a, Request::CloseProducer { producer_id: mic })
        .unwrap();
    let told = h.messages(b);
    assert!(told.contains(&ServerMessage::ConsumerClosed {
        consumer_id: cb,
        producer_id: mic
    }));
    assert!(told.contains(&ServerMessage::ProducerClosed {
        producer_id: mic,
        peer_id: a
    }));
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(h.relay.poll_consumer(cb, h.now, &mut cx), Poll::Ready(None));
    assert_eq!(h.relay.counts().consumers, 0);
}

#[test]
fn leaving_frees_everything() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let cam = h.produce(a, MediaKind::Video);
    let mic = h.produce(b, MediaKind::Audio);
    h.consume(b, cam);
    h.consume(a, mic);
    h.messages(b);
    h.relay.leave(a, LeaveReason::Disconnected);
    assert!(h.messages(b).contains(&ServerMessage::PeerLeft {
        peer_id: a,
        reason: LeaveReason::Disconnected
    }));
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(h.relay.poll_peer(a, &mut cx), Poll::Ready(None));
    let reply = h.relay.handle(
        b,
        ClientMessage {
            id: 99,
            request: Request::Leave,
        },
        h.now,
    );
    assert!(matches!(
        reply.last(),
        Some(ServerMessage::Response { id: 99, .. })
    ));
    assert_eq!(h.relay.counts(), RelayCounts::default());
}

#[test]
fn bad_requests_get_typed_errors() {
    let mut h = Harness::new();
    assert_eq!(
        h.relay.join(7, "r", "a", false, h.now).unwrap_err().code,
        ErrorCode::UnsupportedVersion
    );
    for room in ["", "has space", "../x", &"x".repeat(65)] {
        assert_eq!(
            h.relay.join(1, room, "a", false, h.now).unwrap_err().code,
            ErrorCode::InvalidRoom
        );
    }
    assert_eq!(
        h.relay
            .join(1, "r", "\u{7}", false, h.now)
            .unwrap_err()
            .code,
        ErrorCode::InvalidName
    );
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let cam = h.produce(a, MediaKind::Video);
    let join_again = Request::Join {
        resume: None,
        extensions: Vec::new(),
        version: 1,
        room: "r".into(),
        name: "a".into(),
        auto_subscribe: false,
        token: None,
        relay: None,
    };
    assert_eq!(h.request(a, join_again), Err(ErrorCode::AlreadyJoined));
    assert_eq!(
        h.request(
            a,
            Request::Consume {
                producer_id: cam,
                paused: false,
                layer: None,
            }
        ),
        Err(ErrorCode::CannotConsumeOwn)
    );
    h.consume(b, cam);
    assert_eq!(
        h.request(
            b,
            Request::Consume {
                producer_id: cam,
                paused: false,
                layer: None,
            }
        ),
        Err(ErrorCode::AlreadyConsuming)
    );
    assert_eq!(
        h.request(b, Request::CloseProducer { producer_id: cam }),
        Err(ErrorCode::NotOwner)
    );
    assert_eq!(
        h.request(
            b,
            Request::CloseProducer {
                producer_id: ProducerId(999)
            }
        ),
        Err(ErrorCode::UnknownProducer)
    );
    assert_eq!(
        h.request(
            a,
            Request::PauseConsumer {
                consumer_id: ConsumerId(999)
            }
        ),
        Err(ErrorCode::UnknownConsumer)
    );
    // Frames: not yours, unknown, wrong transport. Each reported to the sender only.
    let data = || FrameData::Datagram(Bytes::from_static(b"x"));
    let e = h
        .relay
        .on_frame(b, cam, MediaKind::Video, 0, &hdr(0, true), data(), h.now);
    assert_eq!(e.unwrap_err().code, ErrorCode::NotOwner);
    let e = h.relay.on_frame(
        a,
        ProducerId(999),
        MediaKind::Audio,
        0,
        &hdr(0, false),
        data(),
        h.now,
    );
    assert_eq!(e.unwrap_err().code, ErrorCode::UnknownProducer);
    h.now += Duration::from_secs(2);
    let e = h
        .relay
        .on_frame(a, cam, MediaKind::Audio, 0, &hdr(0, false), data(), h.now);
    assert_eq!(e.unwrap_err().code, ErrorCode::KindMismatch);
    let errors_to_a = h
        .messages(a)
        .into_iter()
        .filter(|m| matches!(m, ServerMessage::Error { id: None, .. }))
        .count();
    assert_eq!(errors_to_a, 2, "rate-limited: one per second");
    assert_eq!(h.relay.counts().peers, 2, "nobody was removed");
}

#[test]
fn a_peer_that_never_reads_is_disconnected_not_buffered_forever() {
    let mut h = Harness::with(RelayConfig {
        max_outbox: 8,
        limits: super::Limits {
            max_producers_per_peer: 0,
            ..Default::default()
        },
        ..RelayConfig::default()
    });
    let deaf = h.join("r", "deaf");
    let chatty = h.join("r", "chatty");
    for _ in 0..20 {
        h.produce(chatty, MediaKind::Audio);
    }
    let outputs = h.drain(deaf);
    assert_eq!(outputs.len(), 9);
    assert!(matches!(
        outputs.last(),
        Some(PeerOutput::Disconnect { error: e, code, notify: false }) if e.code == ErrorCode::SlowControl && *code == crate::wire::close_code::SLOW_CONTROL
    ));
}

#[test]
fn late_video_from_an_earlier_group_is_not_forwarded() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let cam = h.produce(a, MediaKind::Video);
    let cb = h.consume(b, cam);
    h.video(a, cam, 0, true);
    h.video(a, cam, 2, true); // the next group's keyframe overtook frame 1
    h.video(a, cam, 1, false);
    h.video(a, cam, 3, false);
    let got: Vec<u8> = h.frames(cb).iter().map(|p| p[0]).collect();
    assert_eq!(got, vec![0, 2, 3]);
    assert_eq!(h.relay.stats().dropped_stale, 1);
}

#[test]
fn a_response_comes_before_what_its_request_caused() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let (b, _) = h
        .relay
        .join(PROTOCOL_VERSION, "r", "b", true, h.now)
        .unwrap();
    h.messages(a);
    // A's produce makes B consume, which asks A for a keyframe: A hears the produce
    // response first.
    h.relay.handle(
        a,
        ClientMessage {
            id: 1,
            request: Request::Produce {
                kind: MediaKind::Video,
                codec: "vp8".into(),
                params: Default::default(),
                source: None,
                layers: Vec::new(),
                producer_id: None,
            },
        },
        h.now,
    );
    let told = h.messages(a);
    assert!(
        matches!(told[0], ServerMessage::Response { id: 1, .. }),
        "{told:?}"
    );
    assert!(matches!(told[1], ServerMessage::KeyframeRequest { .. }));
    // B asks for a consumer explicitly after turning auto-subscribe off: the response
    // precedes the consumer's start-up.
    h.relay.handle(
        b,
        ClientMessage {
            id: 2,
            request: Request::SetAutoSubscribe { enabled: false },
        },
        h.now,
    );
    h.drain(b);
    let cam2 = h.produce(a, MediaKind::Audio);
    h.relay.handle(
        b,
        ClientMessage {
            id: 3,
            request: Request::Consume {
                producer_id: cam2,
                paused: false,
                layer: None,
            },
        },
        h.now,
    );
    let outputs = h.drain(b);
    assert!(
        matches!(
            outputs
                .iter()
                .find(|o| !matches!(o, PeerOutput::Message(ServerMessage::ProducerAdded { .. }))),
            Some(PeerOutput::Message(ServerMessage::Response { id: 3, .. }))
        ),
        "{outputs:?}"
    );
}

#[test]
fn leave_returns_what_was_still_waiting() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    h.produce(b, MediaKind::Audio);
    let last = h.relay.handle(
        a,
        ClientMessage {
            id: 5,
            request: Request::Leave,
        },
        h.now,
    );
    assert!(matches!(last[0], ServerMessage::PeerJoined { .. }));
    assert!(matches!(last[1], ServerMessage::ProducerAdded { .. }));
    assert!(matches!(last[2], ServerMessage::Response { id: 5, .. }));
}

#[test]
fn grants_are_enforced_on_every_produce_and_consume() {
    use crate::wire::Grants;
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let mic = h.produce(a, MediaKind::Audio);
    let listener = Grants {
        can_publish: false,
        can_subscribe: true,
        kinds: vec![],
        ..Grants::default()
    };
    let (l, joined) = h
        .relay
        .join_with(
            "r",
            &Joining {
                grants: listener.clone(),
                ..Joining::new("listener")
            },
            h.now,
        )
        .unwrap();
    assert_eq!(joined.grants, listener);
    let produce = |kind| Request::Produce {
        kind,
        codec: "opus".into(),
        params: Default::default(),
        source: None,
        layers: Vec::new(),
        producer_id: None,
    };
    assert_eq!(
        h.request(l, produce(MediaKind::Audio)),
        Err(ErrorCode::Forbidden)
    );
    h.consume(l, mic);
    let audio_only = Grants {
        can_publish: true,
        can_subscribe: false,
        kinds: vec![MediaKind::Audio],
        ..Grants::default()
    };
    let (s, _) = h
        .relay
        .join_with(
            "r",
            &Joining {
                grants: audio_only.clone(),
                ..Joining::new("speaker")
            },
            h.now,
        )
        .unwrap();
    h.produce(s, MediaKind::Audio);
    assert_eq!(
        h.request(s, produce(MediaKind::Video)),
        Err(ErrorCode::Forbidden)
    );
    let consume = Request::Consume {
        producer_id: mic,
        paused: false,
        layer: None,
    };
    assert_eq!(h.request(s, consume), Err(ErrorCode::Forbidden));
    assert_eq!(
        h.request(s, Request::SetAutoSubscribe { enabled: true }),
        Err(ErrorCode::Forbidden)
    );
    let refused = h.relay.join_with(
        "r",
        &Joining {
            auto_subscribe: true,
            grants: audio_only,
            ..Joining::new("x")
        },
        h.now,
    );
    assert_eq!(refused.unwrap_err().code, ErrorCode::Forbidden);
}

#[test]
fn going_away_reaches_every_peer() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("other", "b");
    h.messages(a);
    h.relay
        .announce_going_away("maintenance", Duration::from_secs(5));
    for p in [a, b] {
        assert_eq!(
            h.messages(p),
            vec![ServerMessage::GoingAway {
                reason: "maintenance".into(),
                deadline_ms: 5000
            }]
        );
    }
}

#[test]
fn limits_refuse_the_offender_only() {
    use super::Limits;
    let mut h = Harness::with(RelayConfig {
        limits: Limits {
            max_peers_per_room: 2,
            max_rooms: 2,
            max_producers_per_peer: 2,
            max_requests_per_second: 5,
            max_producer_bitrate: 80_000, // 10 kB/s
        },
        max_frame_size: 4_000,
        ..RelayConfig::default()
    });
    let a = h.join("r", "a");
    h.join("r", "b");
    let full = h.relay.join(PROTOCOL_VERSION, "r", "c", false, h.now);
    assert_eq!(full.unwrap_err().code, ErrorCode::RoomFull);
    h.join("s", "d");
    let many = h.relay.join(PROTOCOL_VERSION, "t", "e", false, h.now);
    assert_eq!(many.unwrap_err().code, ErrorCode::TooManyRooms);

    // Producers per peer.
    h.now += Duration::from_secs(1);
    let mic = h.produce(a, MediaKind::Audio);
    h.produce(a, MediaKind::Video);
    let third = Request::Produce {
        kind: MediaKind::Audio,
        codec: "opus".into(),
        params: Default::default(),
        source: None,
        layers: Vec::new(),
        producer_id: None,
    };
    assert_eq!(h.request(a, third), Err(ErrorCode::TooManyProducers));

    // Request rate: a burst of 10 (twice the rate) passes, the next is refused, and after
    // a second there is room again.
    h.now += Duration::from_secs(10);
    let ping = || Request::SetAutoSubscribe { enabled: false };
    let results: Vec<_> = (0..11).map(|_| h.request(a, ping())).collect();
    assert!(results[..10].iter().all(Result::is_ok));
    assert_eq!(results[10], Err(ErrorCode::RateLimited));
    h.now += Duration::from_secs(1);
    assert!(h.request(a, ping()).is_ok());

    // Bitrate: 10 kB/s, burst max(10 kB, 4 kB) = 10 kB. Twelve 1 kB frames at once: ten pass.
    let dropped_before = h.relay.stats().dropped_bitrate;
    for seq in 0..12u64 {
        let data = FrameData::Datagram(Bytes::from(vec![0u8; 1000]));
        h.relay
            .on_frame(a, mic, MediaKind::Audio, 0, &hdr(seq, false), data, h.now)
            .unwrap();
    }
    assert_eq!(h.relay.stats().dropped_bitrate - dropped_before, 2);
    // The error names the producer it is about.
    assert!(h.messages(a).iter().any(|m| matches!(
        m,
        ServerMessage::Error {
            id: None,
            code: ErrorCode::BitrateExceeded,
            producer_id: Some(p),
            ..
        } if *p == mic
    )));
}

#[test]
fn oversized_params_are_refused() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let mut params = crate::wire::Params::new();
    params.insert("description".into(), "x".repeat(5000).into());
    let produce = Request::Produce {
        source: None,
        kind: MediaKind::Video,
        codec: "vp8".into(),
        params,
        layers: Vec::new(),
        producer_id: None,
    };
    assert_eq!(h.request(a, produce), Err(ErrorCode::BadRequest));
    assert_eq!(h.relay.counts().producers, 0);
}

/// Frames popped for `consumer` at `h.now`, with their time in the relay.
fn popped_ages(h: &mut Harness, consumer: ConsumerId) -> Vec<(u8, bool, Duration)> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    while let Poll::Ready(Some(f)) = h.relay.poll_consumer(consumer, h.now, &mut cx) {
        let f = f.frame;
        let tag = match &f.data {
            FrameData::Stream { payload, .. } => payload[0],
            FrameData::Datagram(d) => d[0],
        };
        out.push((tag, f.keyframe, h.now - f.arrived));
    }
    out
}

#[test]
fn a_lagging_consumer_never_gets_video_older_than_the_bound() {
    let mut h = Harness::new();
    let bound = h.relay.config().video_latency_bound;
    let a = h.join("r", "a");
    let weak = h.join("r", "weak");
    let clean = h.join("r", "clean");
    let cam = h.produce(a, MediaKind::Video);
    let cw = h.consume(weak, cam);
    let cc = h.consume(clean, cam);
    h.messages(a);
    let (mut weak_got, mut clean_got) = (Vec::new(), Vec::new());
    // 8 s at 30 frames/s, keyframes every 60 frames; the weak consumer's link takes a
    // frame only every 50 ms (1.5× too slow), the clean one takes each at once.
    let mut weak_free_at = h.now;
    for seq in 0..250u8 {
        h.now += Duration::from_micros(33_333);
        h.video(a, cam, seq, seq % 60 == 0);
        clean_got.extend(popped_ages(&mut h, cc));
        while weak_free_at <= h.now {
            let mut cx = Context::from_waker(Waker::noop());
            match h.relay.poll_consumer(cw, h.now, &mut cx) {
                Poll::Ready(Some(f)) => {
                    weak_got.push((f.frame.keyframe, h.now - f.frame.arrived));
                    weak_free_at += Duration::from_millis(50);
                }
                _ => {
                    weak_free_at = h.now + Duration::from_millis(1);
                    break;
                }
            }
        }
    }
    assert_eq!(clean_got.len(), 250, "the clean consumer gets everything");
    assert!(clean_got.iter().all(|(_, _, age)| age.is_zero()));
    assert!(
        !weak_got.is_empty() && weak_got[0].0,
        "starts at a keyframe"
    );
    let oldest = weak_got.iter().map(|(_, age)| *age).max().unwrap();
    assert!(oldest <= bound, "a frame waited {oldest:?}, over {bound:?}");
    assert!(
        weak_got.len() > 80,
        "still plays much of the time: {}",
        weak_got.len()
    );
    let stats = h.relay.stats();
    assert!(stats.skipped_late_video > 0);
    assert!(h.keyframe_requests(a) > 0, "a restart asks for a keyframe");
}

#[test]
fn late_audio_is_dropped_and_never_waits_behind_video() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let cam = h.produce(a, MediaKind::Video);
    let mic = h.produce(a, MediaKind::Audio);
    let cv = h.consume(b, cam);
    let ca = h.consume(b, mic);
    h.messages(a);
    // Video piles up unsent (the link is busy) while audio is taken as it comes.
    for seq in 0..20u8 {
        h.now += Duration::from_millis(20);
        h.video(a, cam, seq, seq == 0);
        h.audio(a, mic, seq);
        let audio = popped_ages(&mut h, ca);
        assert_eq!(audio.len(), 1);
        assert!(
            audio[0].2.is_zero(),
            "audio never waits behind queued video"
        );
    }
    assert_eq!(h.relay.consumer_stats(cv).unwrap().queued, 20);
    // Audio left unsent for longer than its bound is dropped, the fresh part plays.
    for seq in 20..40u8 {
        h.now += Duration::from_millis(20);
        h.audio(a, mic, seq);
    }
    let audio: Vec<u8> = popped_ages(&mut h, ca).iter().map(|f| f.0).collect();
    let bound = h.relay.config().audio_latency_bound;
    // Frames up to exactly the bound old still play.
    let fresh = (bound.as_millis() / 20) as u8 + 1;
    assert_eq!(audio, (40 - fresh..40).collect::<Vec<u8>>());
    assert_eq!(h.relay.stats().skipped_late_audio, u64::from(20 - fresh));
}

#[test]
fn path_samples_set_the_send_window_and_reach_the_peer_and_the_listing() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let sample = |sent, lost, bytes| PathSample {
        rtt: Duration::from_millis(80),
        min_rtt: Duration::from_millis(80),
        cwnd: 40_000,
        sent_packets: sent,
        lost_packets: lost,
        sent_bytes: bytes,
    };
    assert_eq!(
        h.relay.on_path_sample(a, sample(0, 0, 0), h.now),
        Some(50_000)
    );
    h.now += Duration::from_millis(100);
    h.relay.on_path_sample(a, sample(100, 3, 10_000), h.now);
    // The first sample reported at once; the next report waits for the interval.
    let reports: Vec<ServerMessage> = h
        .messages(a)
        .into_iter()
        .filter(|m| matches!(m, ServerMessage::TransportStats { .. }))
        .collect();
    assert_eq!(reports.len(), 1);
    h.now += Duration::from_secs(1);
    h.relay.on_path_sample(a, sample(200, 3, 20_000), h.now);
    let last = h.messages(a).pop();
    let Some(ServerMessage::TransportStats {
        rtt_ms,
        loss,
        send_kbps,
        cwnd_bytes,
        ..
    }) = last
    else {
        panic!("no transport_stats: {last:?}");
    };
    assert_eq!((rtt_ms, cwnd_bytes), (80.0, 40_000));
    assert!(loss > 0.0 && loss < 0.03, "{loss}");
    assert!(send_kbps > 0.0, "{send_kbps}");
    let listed = h.relay.rooms_snapshot()[0].peers[0].transport.unwrap();
    assert_eq!(listed.path.cwnd_bytes, 40_000);
    assert_eq!(h.relay.stats().path_rtt.count, 3);
    // A peer that has left has no window.
    h.relay.leave(a, LeaveReason::Left);
    assert_eq!(h.relay.on_path_sample(a, sample(0, 0, 0), h.now), None);
}

#[test]
fn a_keyframe_gets_the_time_its_size_takes_on_the_path() {
    let mut h = Harness::new();
    let bound = h.relay.config().video_latency_bound;
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let cam = h.produce(a, MediaKind::Video);
    let cv = h.consume(b, cam);
    // Without an estimate: the bound twice at most.
    assert_eq!(
        h.relay.write_deadline(cv, h.now, 40_000, false),
        Some(h.now + 2 * bound)
    );
    // A 700 kbit/s path: 1,000 bytes take ~11 ms, 40,000 would take 457 ms (capped).
    let sample = |bytes| PathSample {
        rtt: Duration::from_millis(80),
        min_rtt: Duration::from_millis(80),
        cwnd: 20_000,
        sent_packets: 0,
        lost_packets: 0,
        sent_bytes: bytes,
    };
    h.relay.on_path_sample(b, sample(0), h.now);
    h.relay
        .on_path_sample(b, sample(8_750), h.now + Duration::from_millis(100));
    let small = h.relay.write_deadline(cv, h.now, 1_000, false).unwrap() - h.now - bound;
    // A keyframe has no latency deadline, only the stall timeout.
    assert_eq!(h.relay.write_deadline(cv, h.now, 40_000, true), None);
    assert!(
        small > Duration::from_millis(10) && small < Duration::from_millis(13),
        "{small:?}"
    );
    assert_eq!(
        h.relay.write_deadline(cv, h.now, 40_000, false),
        Some(h.now + 2 * bound)
    );
    // Written too late: the consumer restarts at a keyframe, asked for.
    h.video(a, cam, 0, true);
    h.video(a, cam, 1, false);
    h.messages(a);
    h.now += Duration::from_secs(1);
    h.relay.skip_late_consumer(cv, h.now);
    assert_eq!(h.keyframe_requests(a), 1);
    // The two queued frames; the one being written was counted as forwarded already.
    assert_eq!(h.relay.stats().skipped_late_video, 2);
    h.video(a, cam, 2, false);
    assert!(h.frames(cv).is_empty(), "deltas wait for the keyframe");
    h.video(a, cam, 3, true);
    assert_eq!(h.frames(cv).len(), 1);
}

// ---- simulcast ---------------------------------------------------------------------------

fn ladder() -> Vec<crate::wire::LayerInfo> {
    [
        (320, 180, 150_000),
        (640, 360, 450_000),
        (1280, 720, 1_200_000),
    ]
    .into_iter()
    .map(|(width, height, max_bitrate)| crate::wire::LayerInfo {
        width,
        height,
        max_bitrate,
    })
    .collect()
}

impl Harness {
    fn produce_layers(&mut self, peer: PeerId) -> ProducerId {
        let result = self
            .request(
                peer,
                Request::Produce {
                    kind: MediaKind::Video,
                    codec: "vp8".into(),
                    params: Default::default(),
                    source: None,
                    layers: ladder(),
                    producer_id: None,
                },
            )
            .unwrap();
        let result: ProduceResult = serde_json::from_value(result).unwrap();
        assert_eq!(result.layers, Some(3));
        result.producer_id
    }

    /// One captured picture on the layers listed: same seq, payload bytes [layer, seq, ...],
    /// `size` bytes long on layer 2 and a third of the next layer's below it.
    fn picture(&mut self, peer: PeerId, producer: ProducerId, seq: u64, layers: &[(u8, bool)]) {
        self.picture_sized(peer, producer, seq, layers, 100);
    }

    fn picture_sized(
        &mut self,
        peer: PeerId,
        producer: ProducerId,
        seq: u64,
        layers: &[(u8, bool)],
        size: usize,
    ) {
        for &(layer, key) in layers {
            let size = size / 3usize.pow(2 - u32::from(layer));
            let mut payload = vec![seq as u8; size.max(2)];
            payload[0] = layer;
            let header = hdr(seq, key);
            let data = FrameData::Stream {
                head: crate::wire::frame::encode_stream_frame_head(&header, payload.len()),
                payload: Bytes::from(payload),
            };
            self.relay
                .on_frame(
                    peer,
                    producer,
                    MediaKind::Video,
                    layer,
                    &header,
                    data,
                    self.now,
                )
                .unwrap();
        }
    }

    /// (layer mark, seq as the consumer reads it, keyframe) of each frame taken.
    fn layered_frames(&mut self, consumer: ConsumerId) -> Vec<(u8, u64, bool)> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(f)) = self.relay.poll_consumer(consumer, self.now, &mut cx) {
            let FrameData::Stream { head, payload } = f.frame.data else {
                panic!("video on a datagram")
            };
            let mut wire = bytes::BytesMut::from(&head[..]);
            wire.extend_from_slice(&payload);
            let frame = crate::wire::frame::decode_stream_frame(&mut wire, 1 << 20)
                .unwrap()
                .unwrap();
            out.push((payload[0], frame.header.seq, frame.header.keyframe));
        }
        out
    }

    fn set_preference(&mut self, peer: PeerId, consumer: ConsumerId, w: u32, h: u32) {
        self.request(
            peer,
            Request::SetPreferredLayers {
                consumer_id: consumer,
                max_layer: None,
                max_width: Some(w),
                max_height: Some(h),
            },
        )
        .unwrap();
    }

    fn layer_keyframe_requests(&mut self, peer: PeerId) -> Vec<Option<u8>> {
        self.messages(peer)
            .iter()
            .filter_map(|m| match m {
                ServerMessage::KeyframeRequest { layer, .. } => Some(*layer),
                _ => None,
            })
            .collect()
    }

    /// A path sample for `peer`, 100 ms of sending at `rate_bps` after the last.
    fn path(&mut self, peer: PeerId, sample: &mut PathSample, rate_bps: u64) {
        sample.sent_bytes += rate_bps / 8 / 10;
        sample.sent_packets += 10;
        self.relay.on_path_sample(peer, *sample, self.now);
    }
}

const ALL_KEYS: [(u8, bool); 3] = [(0, true), (1, true), (2, true)];
const ALL_DELTAS: [(u8, bool); 3] = [(0, false), (1, false), (2, false)];

#[test]
fn simulcast_consumers_each_get_the_layer_they_prefer_and_nothing_else() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let c = h.join("r", "c");
    let cam = h.produce_layers(a);
    let cb = h.consume(b, cam);
    let cc = h.consume(c, cam);
    h.set_preference(c, cc, 320, 180);
    h.messages(b);
    h.messages(c);
    for seq in 0..5 {
        let layers = if seq == 0 { ALL_KEYS } else { ALL_DELTAS };
        h.picture(a, cam, seq, &layers);
        h.now += Duration::from_millis(33);
    }
    let got_b = h.layered_frames(cb);
    let got_c = h.layered_frames(cc);
    assert_eq!(got_b.len(), 5);
    assert!(got_b.iter().all(|f| f.0 == 2), "{got_b:?}");
    assert!(got_c.iter().all(|f| f.0 == 0), "{got_c:?}");
    assert_eq!(
        got_c.iter().map(|f| f.1).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    // Each is told its layer once, at its first frame.
    let told: Vec<_> = h
        .messages(c)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::LayerChanged { layer, width, .. } => Some((layer, width)),
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![(0, 320)]);
}

#[test]
fn a_relay_consumes_each_layer_on_its_own_as_it_comes() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    // Another relay's link (docs/PROTOCOL.md 18): hidden, with the relay grant.
    let joining = Joining {
        grants: crate::wire::Grants {
            relay: true,
            ..Default::default()
        },
        join_as: JoinAs {
            peer_id: None,
            hidden: true,
            relay: Some("two".into()),
        },
        ..Joining::new("relay two")
    };
    let (link, _) = h.relay.join_with("r", &joining, h.now).unwrap();
    let cam = h.produce_layers(a);
    let consume = |layer| Request::Consume {
        producer_id: cam,
        paused: false,
        layer: Some(layer),
    };
    // Only a relay takes one layer, of a layer that exists, once.
    assert_eq!(h.request(b, consume(0)), Err(ErrorCode::Forbidden));
    assert_eq!(h.request(link, consume(3)), Err(ErrorCode::UnknownLayer));
    let mut pinned = Vec::new();
    for layer in [0, 2] {
        let info: ConsumerInfo =
            serde_json::from_value(h.request(link, consume(layer)).unwrap()).unwrap();
        assert_eq!(info.layer, Some(layer));
        pinned.push(info.consumer_id);
    }
    assert_eq!(
        h.request(link, consume(2)),
        Err(ErrorCode::AlreadyConsuming)
    );
    // Never a whole-producer consumer beside them: it would deliver a layer twice.
    let whole = Request::Consume {
        producer_id: cam,
        paused: false,
        layer: None,
    };
    assert_eq!(h.request(link, whole), Err(ErrorCode::AlreadyConsuming));
    // Each asks for its own layer's keyframe.
    assert_eq!(h.layer_keyframe_requests(a), vec![Some(0), Some(2)]);
    h.messages(link);

    for seq in 0..5 {
        let layers = if seq == 0 { ALL_KEYS } else { ALL_DELTAS };
        h.picture(a, cam, seq, &layers);
        h.now += Duration::from_millis(33);
    }
    let (low, top) = (h.layered_frames(pinned[0]), h.layered_frames(pinned[1]));
    let seqs = |got: &[(u8, u64, bool)]| got.iter().map(|f| f.1).collect::<Vec<_>>();
    assert!(low.iter().all(|f| f.0 == 0), "{low:?}");
    assert!(top.iter().all(|f| f.0 == 2), "{top:?}");
    assert_eq!(seqs(&low), vec![0, 1, 2, 3, 4]);
    assert_eq!(seqs(&top), vec![0, 1, 2, 3, 4]);
    // Both layers are needed (and the base layer runs anyway): dynacast keeps them.
    assert_eq!(
        h.relay.room_mut_for_tests("r").wanted_layers(cam, h.now),
        Some(&[0, 1, 2][..])
    );

    // A keyframe asked for on one layer's consumer asks for that layer only, and its
    // frames go on meanwhile: the other relay's consumers still need them.
    h.now += Duration::from_secs(2);
    h.request(
        link,
        Request::RequestKeyframe {
            consumer_id: pinned[1],
        },
    )
    .unwrap();
    assert_eq!(h.layer_keyframe_requests(a), vec![Some(2)]);
    h.picture(a, cam, 5, &ALL_DELTAS);
    assert_eq!(seqs(&h.layered_frames(pinned[1])), vec![5]);
    // The relay is never told of a layer change: its consumers never switch.
    assert!(
        !h.messages(link)
            .iter()
            .any(|m| matches!(m, ServerMessage::LayerChanged { .. })),
    );

    // Dynacast: a paused layer goes from what the owner is told after the delay, and
    // comes back at once when resumed.
    h.request(link, Request::pause_consumer(pinned[1], true))
        .unwrap();
    h.now += DYNACAST_DELAY + Duration::from_millis(1);
    let room = h.relay.room_mut_for_tests("r");
    assert_eq!(room.wanted_layers(cam, h.now), Some(&[0][..]));
    h.messages(a);
    h.request(link, Request::pause_consumer(pinned[1], false))
        .unwrap();
    let told: Vec<_> = h
        .messages(a)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::LayersWanted { layers, .. } => Some(layers),
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![vec![0, 2]]);
}

#[test]
fn a_switch_waits_for_the_target_keyframe_and_seq_never_goes_back() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let cam = h.produce_layers(a);
    let cb = h.consume(b, cam);
    h.picture(a, cam, 0, &ALL_KEYS);
    h.picture(a, cam, 1, &ALL_DELTAS);
    assert_eq!(h.layered_frames(cb), vec![(2, 0, true), (2, 1, false)]);
    h.messages(a);
    // The tile shrinks: layer 0 is asked for a keyframe; layer 2 carries on meanwhile.
    h.set_preference(b, cb, 320, 180);
    assert_eq!(h.layer_keyframe_requests(a), vec![Some(0)]);
    h.picture(a, cam, 2, &[(2, false), (0, false), (1, false)]);
    // Picture 3: layer 2's frame arrives (and goes out) before layer 0's keyframe.
    h.picture(a, cam, 3, &[(2, false)]);
    assert_eq!(h.layered_frames(cb), vec![(2, 2, false), (2, 3, false)]);
    h.picture(a, cam, 3, &[(0, true), (1, false)]);
    h.picture(a, cam, 4, &ALL_DELTAS);
    // The keyframe of seq 3 is renumbered 4 (3 went out on layer 2), and so on after it.
    assert_eq!(h.layered_frames(cb), vec![(0, 4, true), (0, 5, false)]);
    assert_eq!(h.relay.stats().layer_switches, 1);
    let told = h.messages(b);
    assert!(
        told.iter()
            .any(|m| matches!(m, ServerMessage::LayerChanged { layer: 0, .. })),
        "{told:?}"
    );
    // Up again once layer 2 has been sending for ACTIVE_HOLD: at its next keyframe,
    // with nothing from layer 0 after it.
    let mut seq = 5;
    while seq < 5 + 35 {
        h.now += Duration::from_millis(33);
        h.picture(a, cam, seq, &ALL_DELTAS);
        assert_eq!(h.layered_frames(cb), vec![(0, seq + 1, false)]);
        seq += 1;
    }
    h.set_preference(b, cb, 1280, 720);
    h.picture(a, cam, seq, &[(0, false), (2, true)]);
    h.picture(a, cam, seq + 1, &ALL_DELTAS);
    let offset = 1;
    assert_eq!(
        h.layered_frames(cb),
        vec![
            (0, seq + offset, false),
            (2, seq + offset + 1, true),
            (2, seq + offset + 2, false)
        ]
    );
}

#[test]
fn congestion_moves_a_subscriber_down_at_once_and_up_only_after_the_hold() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let cam = h.produce_layers(a);
    let cb = h.consume(b, cam);
    let mut sample = PathSample {
        rtt: Duration::from_millis(40),
        min_rtt: Duration::from_millis(40),
        cwnd: 100_000,
        ..PathSample::default()
    };
    // Pictures every 33 ms (3,000, 1,000 and 333 bytes: about 720, 240 and 80 kbit/s),
    // keyframes on every layer each second; a path sample every 100 ms. The sender
    // drains the consumer's queue unless the run holds it back to build a queue.
    let mut seq = 0;
    let mut run = |h: &mut Harness, ms: u64, drain: bool, rate: u64| -> Vec<u8> {
        let mut seen = Vec::new();
        let end = h.now + Duration::from_millis(ms);
        while h.now < end {
            let keys = seq % 30 == 0;
            let layers = if keys { ALL_KEYS } else { ALL_DELTAS };
            h.picture_sized(a, cam, seq, &layers, 3_000);
            seq += 1;
            if seq % 3 == 0 {
                h.path(b, &mut sample, rate);
            }
            if drain {
                seen.extend(h.layered_frames(cb).into_iter().map(|f| f.0));
            }
            h.now += Duration::from_millis(33);
        }
        h.messages(a);
        h.messages(b);
        seen
    };
    let seen = run(&mut h, 2_000, true, 1_500_000);
    assert_eq!(seen.last(), Some(&2), "a clean path gets the top layer");
    // Half a second without draining: the queue grows older than 150 ms, which is
    // congestion. The budget drops to 85% of what was sent (the smoothed rate falls from
    // 1.5 Mbit/s towards 100 kbit/s): no room for layer 2.
    run(&mut h, 500, false, 100_000);
    assert!(h.relay.stats().congestion_samples > 0);
    let seen = run(&mut h, 1_500, true, 100_000);
    assert!(
        seen.last().is_some_and(|l| *l < 2),
        "down a layer at least: {seen:?}"
    );
    // The path is clean again, and shows 1.5 Mbit/s: no up-switch within the hold after
    // the last congestion, then back to the top.
    let seen = run(&mut h, 1_000, true, 1_500_000);
    assert!(seen.iter().all(|l| *l < 2), "{seen:?}");
    let seen = run(&mut h, 6_000, true, 1_500_000);
    assert_eq!(seen.last(), Some(&2), "{seen:?}");
    // A path that has shown, for 5 s, no more than layer 0 needs takes it down too
    // (no congestion seen: the relay sends what it is given, 150 kbit/s here).
    let seen = run(&mut h, 6_000, true, 150_000);
    assert_eq!(seen.last(), Some(&0), "{seen:?}");
}

#[test]
fn dynacast_pauses_unwanted_layers_after_a_delay_and_resumes_them_at_once() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let cam = h.produce_layers(a);
    let cb = h.consume(b, cam);
    h.set_preference(b, cb, 320, 180);
    let mut sample = PathSample::default();
    let wanted = |h: &mut Harness| -> Vec<Vec<u8>> {
        h.messages(a)
            .into_iter()
            .filter_map(|m| match m {
                ServerMessage::LayersWanted { layers, .. } => Some(layers),
                _ => None,
            })
            .collect()
    };
    h.picture(a, cam, 0, &ALL_KEYS);
    h.layered_frames(cb);
    h.relay.on_path_sample(a, sample, h.now);
    assert!(wanted(&mut h).is_empty(), "not before the delay");
    h.now += DYNACAST_DELAY;
    sample.sent_packets += 1;
    h.relay.on_path_sample(a, sample, h.now);
    assert_eq!(wanted(&mut h), vec![vec![0]]);
    // The tile grows: layer 2 is wanted at once, with a keyframe request for it; layer 0
    // stays while anyone watches.
    h.set_preference(b, cb, 1920, 1080);
    let told = h.messages(a);
    assert!(
        told.iter().any(
            |m| matches!(m, ServerMessage::LayersWanted { layers, .. } if layers == &vec![0, 2])
        ),
        "{told:?}"
    );
    assert!(
        told.iter()
            .any(|m| matches!(m, ServerMessage::KeyframeRequest { layer: Some(2), .. })),
        "{told:?}"
    );
    // Pausing the only consumer: nothing is wanted, after the delay.
    h.request(b, Request::PauseConsumer { consumer_id: cb })
        .unwrap();
    h.now += DYNACAST_DELAY;
    h.relay.on_path_sample(a, sample, h.now);
    assert_eq!(wanted(&mut h), vec![Vec::<u8>::new()]);
}

#[test]
fn bad_layers_are_refused_with_a_reason() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let mut layers = ladder();
    let produce = |kind, layers| Request::Produce {
        kind,
        codec: "vp8".into(),
        params: Default::default(),
        source: None,
        layers,
        producer_id: None,
    };
    assert_eq!(
        h.request(a, produce(MediaKind::Audio, layers.clone())),
        Err(ErrorCode::BadRequest)
    );
    layers.push(layers[2]);
    assert_eq!(
        h.request(a, produce(MediaKind::Video, layers.clone())),
        Err(ErrorCode::BadRequest),
        "four layers"
    );
    let backwards: Vec<_> = ladder().into_iter().rev().collect();
    assert_eq!(
        h.request(a, produce(MediaKind::Video, backwards)),
        Err(ErrorCode::BadRequest)
    );
    // A layer beyond the producer's is refused; layer 0 of a plain producer is fine.
    let cam = h.produce_layers(a);
    let header = hdr(0, true);
    let data = || FrameData::Stream {
        head: Bytes::new(),
        payload: Bytes::from_static(b"x"),
    };
    let refused = h
        .relay
        .on_frame(a, cam, MediaKind::Video, 3, &header, data(), h.now);
    assert_eq!(refused.unwrap_err().code, ErrorCode::UnknownLayer);
    let plain = h.produce(a, MediaKind::Video);
    assert_eq!(
        h.relay
            .on_frame(a, plain, MediaKind::Video, 1, &header, data(), h.now)
            .unwrap_err()
            .code,
        ErrorCode::UnknownLayer
    );
    assert!(
        h.relay
            .on_frame(a, plain, MediaKind::Video, 0, &header, data(), h.now)
            .is_ok()
    );
}

// ---- a simulated network -------------------------------------------------------------------

/// One subscriber's downlink in simulated time: a bottleneck of `rate_bps` that takes
/// frames from the relay's queues as fast as it can send them (the relay's send window
/// keeps the queue in the relay, where its policy applies), plus a fixed one-way delay.
struct SimLink {
    peer: PeerId,
    rate_bps: f64,
    one_way: Duration,
    /// When the bottleneck has sent everything taken so far.
    busy_until: Instant,
    sample: PathSample,
    /// Bytes taken from the relay so far.
    taken: u64,
    /// (layer mark, seq as received, latency, when delivered) of every video frame.
    got: Vec<(u8, u64, Duration, Instant)>,
}

impl SimLink {
    fn new(peer: PeerId, rate_bps: f64, one_way: Duration, now: Instant) -> Self {
        Self {
            peer,
            rate_bps,
            one_way,
            busy_until: now,
            sample: PathSample {
                rtt: one_way * 2,
                min_rtt: one_way * 2,
                cwnd: 1 << 20,
                ..PathSample::default()
            },
            got: Vec::new(),
            taken: 0,
        }
    }

    /// Takes what the link can send by `now` from the peer's consumers.
    fn pump(&mut self, relay: &mut Relay, now: Instant) {
        let mut cx = Context::from_waker(Waker::noop());
        for (consumer, _) in relay.peer_consumers(self.peer) {
            while self.busy_until <= now {
                let Poll::Ready(Some(f)) = relay.poll_consumer(consumer, now, &mut cx) else {
                    break;
                };
                let f = f.frame;
                let len = f.data.len();
                self.busy_until = self.busy_until.max(now)
                    + Duration::from_secs_f64(len as f64 * 8.0 / self.rate_bps);
                self.taken += len as u64;
                self.sample.sent_packets += len.div_ceil(1200) as u64;
                if let FrameData::Stream { head, payload } = f.data {
                    let mut wire = bytes::BytesMut::from(&head[..]);
                    wire.extend_from_slice(&payload);
                    let frame = crate::wire::frame::decode_stream_frame(&mut wire, 1 << 22)
                        .unwrap()
                        .unwrap();
                    let delivered = self.busy_until + self.one_way;
                    self.got.push((
                        payload[0],
                        frame.header.seq,
                        delivered.saturating_duration_since(f.arrived),
                        delivered,
                    ));
                }
            }
        }
    }

    /// The transport's view every 100 ms: what went on the wire (taken, less what still
    /// waits for the bottleneck: a send window of about a round trip keeps the rest in the
    /// relay), and an RTT that grows with that wait.
    fn report(&mut self, relay: &mut Relay, now: Instant) {
        let waiting = self.busy_until.saturating_duration_since(now);
        let unsent = (waiting.as_secs_f64() * self.rate_bps / 8.0) as u64;
        self.sample.sent_bytes = self
            .sample
            .sent_bytes
            .max(self.taken.saturating_sub(unsent));
        self.sample.rtt = self.one_way * 2 + waiting;
        relay.on_path_sample(self.peer, self.sample, now);
    }

    /// Frames delivered in `[from, to)`, and their latencies' 99th percentile.
    fn between(&self, from: Instant, to: Instant) -> (Vec<(u8, u64, Duration, Instant)>, Duration) {
        let got: Vec<_> = self
            .got
            .iter()
            .filter(|g| g.3 >= from && g.3 < to)
            .copied()
            .collect();
        let mut lat: Vec<Duration> = got.iter().map(|g| g.2).collect();
        lat.sort();
        let p99 = lat
            .get((lat.len().saturating_sub(1)) * 99 / 100)
            .copied()
            .unwrap_or_default();
        (got, p99)
    }
}

/// A simulcast publisher in simulated time: 30 pictures a second on three layers of
/// 125, 375 and 1,000 kbit/s, a keyframe every 2 s per layer ten times a delta, and one
/// at once when asked; layers the relay does not want are not sent.
struct SimPublisher {
    peer: PeerId,
    producer: ProducerId,
    seq: u64,
    want_key: [bool; 3],
    wanted: [bool; 3],
    sent: [u64; 3],
}

impl SimPublisher {
    fn tick(&mut self, h: &mut Harness) {
        for m in h.messages(self.peer) {
            match m {
                ServerMessage::KeyframeRequest { layer, .. } => match layer {
                    Some(l) => self.want_key[usize::from(l)] = true,
                    None => self.want_key = [true; 3],
                },
                ServerMessage::LayersWanted { layers, .. } => {
                    for l in 0..3u8 {
                        let now_wanted = layers.contains(&l);
                        if now_wanted && !self.wanted[usize::from(l)] {
                            self.want_key[usize::from(l)] = true;
                        }
                        self.wanted[usize::from(l)] = now_wanted;
                    }
                }
                _ => {}
            }
        }
        let rates = [125_000.0, 375_000.0, 1_000_000.0];
        for layer in 0..3u8 {
            let l = usize::from(layer);
            if !self.wanted[l] {
                continue;
            }
            let key = self.seq.is_multiple_of(60) || self.want_key[l];
            self.want_key[l] = false;
            // A group of 60 frames is 1 keyframe (10 units) and 59 deltas.
            let unit = rates[l] / 8.0 * 2.0 / 69.0;
            let size = (unit * if key { 10.0 } else { 1.0 }) as usize;
            let mut payload = vec![self.seq as u8; size.max(2)];
            payload[0] = layer;
            let header = hdr(self.seq, key);
            let data = FrameData::Stream {
                head: crate::wire::frame::encode_stream_frame_head(&header, payload.len()),
                payload: Bytes::from(payload),
            };
            h.relay
                .on_frame(
                    self.peer,
                    self.producer,
                    MediaKind::Video,
                    layer,
                    &header,
                    data,
                    h.now,
                )
                .unwrap();
            self.sent[l] += 1;
        }
        self.seq += 1;
    }
}

/// Three subscribers of one simulcast publisher, each behind its own simulated link: a
/// clean 20 Mbit/s one, a 700 kbit/s one and a clean one watching a thumbnail. 30 s of
/// simulated time, in 5 ms steps; the weak link is lifted at 20 s.
#[test]
fn simulated_network_gives_each_subscriber_the_layer_its_link_and_tile_allow() {
    let mut h = Harness::new();
    let publisher = h.join("sim", "publisher");
    let peers: Vec<PeerId> = ["clean", "weak", "thumb"]
        .iter()
        .map(|n| h.join("sim", n))
        .collect();
    let producer = h.produce_layers(publisher);
    let mut links = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let consumer = h.consume(*peer, producer);
        if i == 2 {
            h.set_preference(*peer, consumer, 320, 180);
        }
        let rate = if i == 1 { 700e3 } else { 20e6 };
        links.push(SimLink::new(*peer, rate, Duration::from_millis(20), h.now));
    }
    let mut sim = SimPublisher {
        peer: publisher,
        producer,
        seq: 0,
        want_key: [true; 3],
        wanted: [true; 3],
        sent: [0; 3],
    };
    let start = h.now;
    let step = Duration::from_millis(5);
    let lift = start + Duration::from_secs(20);
    let end = start + Duration::from_secs(30);
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(30) {
        if t.as_millis() % 33 < 5 {
            sim.tick(&mut h);
        }
        if start + t == lift {
            links[1].rate_bps = 20e6;
        }
        if t.as_millis().is_multiple_of(100) {
            for l in &mut links {
                l.report(&mut h.relay, h.now);
            }
            h.relay
                .on_path_sample(publisher, PathSample::default(), h.now);
        }
        for l in &mut links {
            l.pump(&mut h.relay, h.now);
        }
        for p in &peers {
            h.messages(*p);
        }
        t += step;
        h.now = start + t;
    }
    // Every subscriber sees seq only increase.
    for l in &links {
        assert!(l.got.windows(2).all(|w| w[1].1 > w[0].1), "{:?}", l.peer);
    }
    // The clean subscriber: the top layer, all of it, from its first frame.
    let (clean, clean_p99) = links[0].between(start, end);
    assert!(clean.iter().all(|g| g.0 == 2), "{clean:?}");
    assert!(clean.len() >= 880, "{}", clean.len());
    assert!(clean_p99 < Duration::from_millis(100), "{clean_p99:?}");
    // The thumbnail: the base layer only.
    let (thumb, _) = links[2].between(start, end);
    assert!(thumb.iter().all(|g| g.0 == 0), "{thumb:?}");
    // The weak one, from 5 s to the lift: below the top layer, nearly every picture, and
    // its latency bounded by the policy, not by the link's backlog.
    let (weak, weak_p99) = links[1].between(start + Duration::from_secs(5), lift);
    let below = weak.iter().filter(|g| g.0 < 2).count();
    let summary = format!(
        "weak: {} frames, {below} below the top, p99 {weak_p99:?}",
        weak.len()
    );
    eprintln!("{summary}");
    assert!(below * 20 >= weak.len() * 19, "{summary}");
    assert!(weak.len() >= 15 * 30 * 9 / 10, "{summary}");
    assert!(weak_p99 < Duration::from_millis(400), "{summary}");
    // After the lift: back on the top layer within 15 s (here: the last 5 s are on it).
    let (after, _) = links[1].between(end - Duration::from_secs(5), end);
    assert!(
        after.len() >= 140 && after.iter().all(|g| g.0 == 2),
        "{after:?}"
    );
    // Dynacast: with a thumbnail, the 700 kbit/s one on layer 1 and the clean one on 2,
    // every layer stayed wanted; nothing was paused that someone needed.
    assert!(sim.sent.iter().all(|s| *s > 0), "{:?}", sim.sent);
}

#[test]
fn rooms_share_only_ids_and_a_closed_room_keeps_its_counts() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let c = h.join("other", "c");
    let mic = h.produce(a, MediaKind::Audio);
    let other_mic = h.produce(c, MediaKind::Audio);
    // Ids come from one counter: no id of one room names anything in another.
    let ids = [a.0, b.0, c.0, mic.0, other_mic.0];
    let mut unique = ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    let cb = h.consume(b, mic);
    h.audio(a, mic, 1);
    assert_eq!(h.frames(cb).len(), 1);
    // A peer cannot send media as a producer of another room.
    let e = h
        .relay
        .check_media_source(c, mic, MediaKind::Audio, 0)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownProducer);

    assert_eq!(h.relay.counts().rooms, 2);
    h.relay.leave(a, LeaveReason::Left);
    assert_eq!(h.relay.counts().rooms, 2, "b is still in r");
    h.relay.leave(b, LeaveReason::Left);
    assert_eq!(h.relay.counts().rooms, 1, "r closed with its last peer");
    assert_eq!(h.relay.room_peers("r"), None);
    let stats = h.relay.stats();
    assert_eq!(
        (stats.frames_in, stats.frames_out),
        (1, 1),
        "r's counts stay"
    );
    // The name can be used again: a new, empty room.
    let (_, again) = h
        .relay
        .join(PROTOCOL_VERSION, "r", "d", false, h.now)
        .unwrap();
    assert!(!again.ongoing);
}

#[test]
fn room_limit_counts_open_rooms_and_a_refused_join_leaves_no_room() {
    let mut config = RelayConfig::default();
    config.limits.max_rooms = 1;
    config.limits.max_peers_per_room = 1;
    let mut h = Harness::with(config);
    let a = h.join("r", "a");
    let refused = h.relay.join(PROTOCOL_VERSION, "s", "b", false, h.now);
    assert_eq!(refused.unwrap_err().code, ErrorCode::TooManyRooms);
    let full = h.relay.join(PROTOCOL_VERSION, "r", "b", false, h.now);
    assert_eq!(full.unwrap_err().code, ErrorCode::RoomFull);
    let bad_version = h.relay.join(PROTOCOL_VERSION + 1, "t", "b", false, h.now);
    assert_eq!(bad_version.unwrap_err().code, ErrorCode::UnsupportedVersion);
    assert_eq!(h.relay.counts().rooms, 1);
    h.relay.leave(a, LeaveReason::Left);
    assert_eq!(h.relay.counts().rooms, 0);
    h.join("s", "b");
}

// ---- conference features: speakers, data, screens ------------------------------------------

impl Harness {
    fn join_with(&mut self, room: &str, name: &str, extensions: &[&str]) -> PeerId {
        let extensions: Vec<String> = extensions.iter().map(|e| (*e).to_owned()).collect();
        self.relay
            .join_with(
                room,
                &Joining {
                    grants: crate::wire::Grants::default(),
                    extensions: &extensions,
                    ..Joining::new(name)
                },
                self.now,
            )
            .unwrap()
            .0
    }

    /// One 20 ms audio frame with a level, as the wire carries it.
    fn leveled_audio(&mut self, peer: PeerId, producer: ProducerId, seq: u64, level: u8) {
        let header = FrameHeader {
            audio_level: Some(crate::wire::AudioLevel {
                level,
                voice: false,
            }),
            ..FrameHeader::new(seq, seq * 20_000, false)
        };
        let datagram = crate::wire::frame::encode_datagram(producer, &header, b"opus");
        self.relay
            .on_frame(
                peer,
                producer,
                MediaKind::Audio,
                0,
                &header,
                FrameData::Datagram(datagram),
                self.now,
            )
            .unwrap();
    }

    fn speaker_events(&mut self, peer: PeerId) -> Vec<Vec<PeerId>> {
        self.messages(peer)
            .into_iter()
            .filter_map(|m| match m {
                ServerMessage::ActiveSpeakers { speakers } => {
                    Some(speakers.iter().map(|s| s.peer_id).collect())
                }
                _ => None,
            })
            .collect()
    }
}

#[test]
fn speakers_are_announced_to_the_room_and_paused_ones_drop_out() {
    let mut h = Harness::new();
    let a = h.join_with("r", "a", &["audio_level"]);
    let b = h.join_with("r", "b", &[]);
    let mic = h.produce(a, MediaKind::Audio);
    h.messages(a);
    h.messages(b);
    for seq in 0..50 {
        h.leveled_audio(a, mic, seq, 15);
        h.now += Duration::from_millis(20);
    }
    // Everyone hears who speaks, the speaker too, once (no change, no new event).
    assert_eq!(h.speaker_events(b), vec![vec![a]]);
    assert_eq!(h.speaker_events(a), vec![vec![a]]);
    // A peer that walks in is told at once.
    let c = h.join("r", "c");
    assert_eq!(h.speaker_events(c), vec![vec![a]]);
    // Paused: out at the next window, without waiting for two quiet ones.
    h.request(a, Request::PauseProducer { producer_id: mic })
        .unwrap();
    h.now += Duration::from_millis(400);
    h.relay.poll_speakers(h.now);
    assert_eq!(h.speaker_events(b), vec![Vec::<PeerId>::new()]);
    assert_eq!(h.relay.stats().speaker_changes, 2);
}

#[test]
fn levels_reach_only_consumers_that_asked_and_the_rest_get_the_plain_datagram() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let modern = h.join_with("r", "modern", &["audio_level"]);
    let old = h.join("r", "old");
    let mic = h.produce(a, MediaKind::Audio);
    let cm = h.consume(modern, mic);
    let co = h.consume(old, mic);
    h.leveled_audio(a, mic, 3, 40);
    let with_level = h.frames(cm);
    let without = h.frames(co);
    let header = FrameHeader::new(3, 60_000, false);
    assert_eq!(
        without,
        vec![crate::wire::frame::encode_datagram(mic, &header, b"opus")]
    );
    let d = crate::wire::frame::decode_datagram(with_level[0].clone(), 1200).unwrap();
    assert_eq!(d.header.audio_level.unwrap().level, 40);
    assert_eq!(&d.payload[..], b"opus");
}

#[test]
fn data_goes_to_the_named_peers_or_the_room_and_refusals_send_nothing() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let c = h.join("r", "c");
    let elsewhere = h.join("other", "d");
    for p in [a, b, c, elsewhere] {
        h.messages(p);
    }
    let send = |payload: &str, to: Vec<PeerId>, topic: Option<&str>| Request::SendData {
        payload: payload.into(),
        to,
        topic: topic.map(str::to_owned),
    };
    let result = h.request(a, send("hi all", vec![], Some("chat"))).unwrap();
    assert_eq!(result["delivered"], 2);
    let result = h.request(a, send("psst", vec![c], None)).unwrap();
    assert_eq!(result["delivered"], 1);
    let data = |h: &mut Harness, p: PeerId| -> Vec<(PeerId, String, Option<String>)> {
        h.messages(p)
            .into_iter()
            .filter_map(|m| match m {
                ServerMessage::Data {
                    from,
                    payload,
                    topic,
                    reliable,
                } => {
                    assert!(reliable);
                    Some((from, payload, topic))
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        data(&mut h, b),
        vec![(a, "hi all".into(), Some("chat".into()))]
    );
    assert_eq!(
        data(&mut h, c),
        vec![
            (a, "hi all".into(), Some("chat".into())),
            (a, "psst".into(), None)
        ]
    );
    assert!(data(&mut h, a).is_empty(), "no copy to the sender");
    assert!(data(&mut h, elsewhere).is_empty(), "rooms are separate");
    // Refusals, each with nothing delivered.
    assert_eq!(
        h.request(a, send("x", vec![elsewhere], None)),
        Err(ErrorCode::UnknownPeer)
    );
    assert_eq!(
        h.request(a, send("x", vec![a], None)),
        Err(ErrorCode::UnknownPeer)
    );
    assert_eq!(
        h.request(a, send("", vec![], None)),
        Err(ErrorCode::BadRequest)
    );
    assert_eq!(
        h.request(a, send("x", vec![], Some("bad\ntopic"))),
        Err(ErrorCode::BadRequest)
    );
    let big = "x".repeat(crate::wire::MAX_DATA_PAYLOAD + 1);
    assert_eq!(
        h.request(a, send(&big, vec![], None)),
        Err(ErrorCode::DataTooLarge)
    );
    assert!(data(&mut h, b).is_empty() && data(&mut h, c).is_empty());
    // The byte budget: 128 KiB at once, then 64 KiB a second.
    h.now += Duration::from_secs(3);
    let chunk = "y".repeat(crate::wire::MAX_DATA_PAYLOAD);
    let mut sent = 0;
    while h.request(a, send(&chunk, vec![b], None)).is_ok() {
        sent += 1;
        assert!(sent < 100, "never limited");
    }
    assert_eq!(sent, 8, "128 KiB burst of 16 KiB messages");
    assert_eq!(
        h.request(a, send(&chunk, vec![b], None)),
        Err(ErrorCode::RateLimited)
    );
    h.now += Duration::from_millis(250);
    assert!(h.request(a, send(&chunk, vec![b], None)).is_ok());
    // Without the grant.
    let quiet = crate::wire::Grants {
        can_publish_data: false,
        ..crate::wire::Grants::default()
    };
    let (muted, _) = h
        .relay
        .join_with(
            "r",
            &Joining {
                grants: quiet,
                ..Joining::new("m")
            },
            h.now,
        )
        .unwrap();
    assert_eq!(
        h.request(muted, send("x", vec![], None)),
        Err(ErrorCode::Forbidden)
    );
}

#[test]
fn lossy_data_reaches_peers_that_asked_and_never_piles_up() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let wants = h.join_with("r", "wants", &["lossy_data"]);
    let plain = h.join("r", "plain");
    for p in [a, wants, plain] {
        h.messages(p);
    }
    let lossy = |h: &mut Harness, p: PeerId| -> Vec<Bytes> {
        h.drain(p)
            .into_iter()
            .filter_map(|o| match o {
                PeerOutput::LossyData(d) => Some(d),
                _ => None,
            })
            .collect()
    };
    assert_eq!(h.relay.on_lossy_data(a, &[], b"xy", h.now), Ok(1));
    assert_eq!(
        lossy(&mut h, wants),
        vec![crate::wire::frame::encode_delivered_data(a.0, b"xy")]
    );
    assert!(lossy(&mut h, plain).is_empty());
    // Named recipients must be in the room; the refusal is reported, rate-limited.
    let e = h.relay.on_lossy_data(a, &[999], b"z", h.now).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownPeer);
    assert!(h.messages(a).iter().any(|m| matches!(
        m,
        ServerMessage::Error {
            id: None,
            code: ErrorCode::UnknownPeer,
            ..
        }
    )));
    // A recipient that does not read keeps only the newest 32.
    h.now += Duration::from_secs(2);
    for i in 0..50u8 {
        h.now += Duration::from_millis(20);
        h.relay.on_lossy_data(a, &[wants.0], &[i], h.now).unwrap();
    }
    let kept = lossy(&mut h, wants);
    assert_eq!(kept.len(), MAX_LOSSY_QUEUE);
    assert_eq!(kept.last().unwrap().last(), Some(&49));
    assert_eq!(h.relay.stats().dropped_lossy_data, 18);
    // 60 a second: a burst beyond it is refused.
    h.now += Duration::from_secs(2);
    let accepted = (0..100)
        .filter(|_| h.relay.on_lossy_data(a, &[], b"b", h.now).is_ok())
        .count();
    assert_eq!(accepted, 60);
}

#[test]
fn screen_sources_are_announced_and_granted() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    h.messages(b);
    let produce = |kind, source| Request::Produce {
        kind,
        codec: "vp8".into(),
        params: Default::default(),
        source,
        layers: Vec::new(),
        producer_id: None,
    };
    h.request(
        a,
        produce(MediaKind::Video, Some(crate::wire::TrackSource::Screen)),
    )
    .unwrap();
    h.request(a, produce(MediaKind::Video, None)).unwrap();
    let sources: Vec<_> = h
        .messages(b)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::ProducerAdded { producer } => producer.source,
            _ => None,
        })
        .collect();
    use crate::wire::TrackSource::*;
    assert_eq!(sources, vec![Screen, Camera]);
    assert_eq!(
        h.request(a, produce(MediaKind::Audio, Some(Screen))),
        Err(ErrorCode::BadRequest)
    );
    let camera_only = crate::wire::Grants {
        sources: vec![Camera, Microphone],
        ..crate::wire::Grants::default()
    };
    let (c, _) = h
        .relay
        .join_with(
            "r",
            &Joining {
                grants: camera_only,
                ..Joining::new("c")
            },
            h.now,
        )
        .unwrap();
    assert_eq!(
        h.request(c, produce(MediaKind::Video, Some(Screen))),
        Err(ErrorCode::Forbidden)
    );
    h.request(c, produce(MediaKind::Video, None)).unwrap();
}

#[test]
fn room_events_are_logged_in_order_once_each_when_asked_for() {
    let mut live = Harness::with(RelayConfig {
        room_events: true,
        ..RelayConfig::default()
    });
    let c = live.join("s", "c");
    let cam = live.produce(c, MediaKind::Video);
    let d = live.join("s", "d");
    live.request(c, Request::CloseProducer { producer_id: cam })
        .unwrap();
    live.relay.leave(d, LeaveReason::Left);
    let room = live.relay.room_mut_for_tests("s");
    let (events, dropped) = room.drain_events();
    assert_eq!(dropped, 0);
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            RoomEvent::RoomStarted => "started".to_owned(),
            RoomEvent::PeerJoined { peer_id, .. } => format!("joined {}", peer_id.0),
            RoomEvent::PeerLeft { peer_id, .. } => format!("left {}", peer_id.0),
            RoomEvent::ProducerAdded { producer } => format!("added {}", producer.producer_id.0),
            RoomEvent::ProducerClosed { producer_id, .. } => format!("closed {}", producer_id.0),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "started".to_owned(),
            format!("joined {}", c.0),
            format!("added {}", cam.0),
            format!("joined {}", d.0),
            format!("closed {}", cam.0),
            format!("left {}", d.0),
        ]
    );
    assert!(room.drain_events().0.is_empty(), "drained once");
    // Off by default: nothing is kept when nobody drains.
    let mut quiet = Harness::new();
    quiet.join("q", "x");
    assert!(
        quiet
            .relay
            .room_mut_for_tests("q")
            .drain_events()
            .0
            .is_empty()
    );
}

// ---- resumption ------------------------------------------------------------------------------

#[test]
fn an_interrupted_peer_keeps_its_place_and_resumes_with_its_producers_and_subscriptions() {
    let mut h = Harness::new();
    let a = h.join_with("r", "a", &["resume"]);
    let b = h.join("r", "b");
    assert!(
        h.relay
            .room_mut_for_tests("r")
            .set_resume_token(a, "secret".into())
    );
    assert!(
        !h.relay
            .room_mut_for_tests("r")
            .set_resume_token(b, "x".into()),
        "b did not ask"
    );
    let mic = h.produce(a, MediaKind::Audio);
    let cam_b = h.produce(b, MediaKind::Audio);
    let consumer_b = h.consume(b, mic);
    let consumer_a = h.consume(a, cam_b);
    let _ = consumer_a;
    h.messages(a);
    h.messages(b);

    // The session drops: b hears of an interruption, not a departure; a's producer stays.
    let now = h.now;
    assert_eq!(
        h.relay
            .room_mut_for_tests("r")
            .end_session(a, 0, LeaveReason::Disconnected, now),
        SessionEnd::Interrupted
    );
    let seen = h.messages(b);
    assert_eq!(seen, vec![ServerMessage::PeerInterrupted { peer_id: a }]);
    assert!(h.relay.room_mut_for_tests("r").has_producer(mic));
    assert!(!h.relay.room_mut_for_tests("r").has_consumer(consumer_a));
    // The old session is over for whoever still polls it; a second end is stale.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        h.relay
            .room_mut_for_tests("r")
            .poll_peer_session(a, 0, &mut cx),
        Poll::Ready(None)
    ));
    assert_eq!(
        h.relay
            .room_mut_for_tests("r")
            .end_session(a, 0, LeaveReason::Disconnected, now),
        SessionEnd::Stale
    );
    // Messages for it meanwhile are not kept.
    h.request(b, Request::PauseProducer { producer_id: cam_b })
        .unwrap();

    // A wrong token is refused; the right one resumes session 1.
    h.now += Duration::from_secs(5);
    let now = h.now;
    assert_eq!(
        h.relay
            .room_mut_for_tests("r")
            .resume(a, "guess", now)
            .unwrap_err()
            .code,
        ErrorCode::ResumeFailed
    );
    let (session, result) = h
        .relay
        .room_mut_for_tests("r")
        .resume(a, "secret", now)
        .unwrap();
    assert_eq!(session, 1);
    assert!(result.resumed);
    assert_eq!(result.peer_id, a);
    assert_eq!(
        result
            .producers
            .iter()
            .map(|p| p.producer_id)
            .collect::<Vec<_>>(),
        vec![mic]
    );
    assert_eq!(result.consumers.len(), 1);
    assert_eq!(result.consumers[0].producer.producer_id, cam_b);
    assert!(result.consumers[0].producer.paused, "the room as it is now");
    assert_ne!(result.consumers[0].consumer_id, consumer_a);
    assert_eq!(result.peers.len(), 1);
    let outputs = h.drain(a);
    assert!(
        matches!(outputs.first(), Some(PeerOutput::StartConsumer { producer_id, .. }) if *producer_id == cam_b),
        "{outputs:?}"
    );
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, PeerOutput::Message(ServerMessage::ProducerPaused { .. }))),
        "nothing stale from the interruption: {outputs:?}"
    );
    assert_eq!(
        h.messages(b),
        vec![ServerMessage::PeerResumed { peer_id: a }]
    );
    // b's consumer of a's producer never went away, and media flows again.
    h.audio(a, mic, 1);
    assert_eq!(h.frames(consumer_b).len(), 1);
}

#[test]
fn a_resume_takes_over_a_live_session_and_the_grace_period_ends_in_a_departure() {
    let mut h = Harness::new();
    let a = h.join_with("r", "a", &["resume"]);
    let b = h.join("r", "b");
    h.relay
        .room_mut_for_tests("r")
        .set_resume_token(a, "t".into());
    h.produce(a, MediaKind::Video);
    h.messages(b);
    // The old session has not noticed its path died; the new one takes over.
    let now = h.now;
    let (session, _) = h.relay.room_mut_for_tests("r").resume(a, "t", now).unwrap();
    assert_eq!(session, 1);
    assert_eq!(
        h.messages(b),
        vec![
            ServerMessage::PeerInterrupted { peer_id: a },
            ServerMessage::PeerResumed { peer_id: a }
        ]
    );
    // When the old one finally ends, nothing happens to the new one.
    assert_eq!(
        h.relay
            .room_mut_for_tests("r")
            .end_session(a, 0, LeaveReason::Disconnected, now),
        SessionEnd::Stale
    );
    assert_eq!(h.relay.room_mut_for_tests("r").session_of(a), Some(1));

    // Interrupted again; no resume within the grace period: a normal departure.
    assert_eq!(
        h.relay
            .room_mut_for_tests("r")
            .end_session(a, 1, LeaveReason::Disconnected, now),
        SessionEnd::Interrupted
    );
    h.messages(b);
    let grace = RelayConfig::default().reconnect_grace;
    assert!(
        h.relay
            .room_mut_for_tests("r")
            .expire_interrupted(now + grace / 2)
            .is_empty()
    );
    assert_eq!(
        h.relay
            .room_mut_for_tests("r")
            .expire_interrupted(now + grace),
        vec![a]
    );
    let seen = h.messages(b);
    assert!(matches!(
        seen.last(),
        Some(ServerMessage::PeerLeft {
            peer_id,
            reason: LeaveReason::Disconnected
        }) if *peer_id == a
    ));
    assert_eq!(
        h.relay
            .room_mut_for_tests("r")
            .resume(a, "t", now + grace)
            .unwrap_err()
            .code,
        ErrorCode::ResumeFailed
    );
    // A peer that did not ask to be resumable leaves at once; so does one that left.
    assert_eq!(
        h.relay
            .room_mut_for_tests("r")
            .end_session(b, 0, LeaveReason::Disconnected, now),
        SessionEnd::Left
    );
}

#[test]
fn data_reaches_a_peer_at_its_pace_in_order_and_a_full_backlog_refuses_the_sender() {
    let mut h = Harness::new();
    let b = h.join("r", "b");
    let senders: Vec<PeerId> = (0..4).map(|i| h.join("r", &format!("s{i}"))).collect();
    h.messages(b);
    let chunk = "z".repeat(crate::wire::MAX_DATA_PAYLOAD);
    let send = |i: usize| Request::SendData {
        payload: format!("{i:03}{}", &chunk[3..]),
        to: vec![b],
        topic: None,
    };
    let got = |h: &mut Harness| -> Vec<String> {
        h.messages(b)
            .into_iter()
            .filter_map(|m| match m {
                ServerMessage::Data { payload, .. } => Some(payload[..3].to_owned()),
                _ => None,
            })
            .collect()
    };
    // Four senders, 7 messages each (112 KiB, within each one's own burst): b's backlog
    // fills at 256 KiB and the sender that would overflow it is refused, with a reason.
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..28 {
        match h.request(senders[i % 4], send(i)) {
            Ok(_) => accepted += 1,
            Err(code) => {
                assert_eq!(code, ErrorCode::RateLimited);
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0 && accepted >= 16,
        "{accepted} accepted, {refused} refused"
    );
    // At once: one burst (32 KiB: one 16 KiB message and a bit).
    let first = got(&mut h);
    assert_eq!(first, vec!["000".to_owned()]);
    // Then 64 KiB a second while the path is unmeasured: about four a second, in order.
    let mut sample = PathSample {
        rtt: Duration::from_millis(20),
        min_rtt: Duration::from_millis(20),
        cwnd: 100_000,
        sent_packets: 0,
        lost_packets: 0,
        sent_bytes: 0,
    };
    let mut delivered = first;
    for _ in 0..10 {
        h.now += Duration::from_millis(100);
        sample.sent_packets += 100;
        sample.sent_bytes += 100_000;
        h.relay.on_path_sample(b, sample, h.now);
        delivered.extend(got(&mut h));
    }
    assert!(
        (4..=6).contains(&delivered.len()),
        "{} delivered in a second",
        delivered.len()
    );
    let mut in_order = delivered.clone();
    in_order.sort();
    assert_eq!(delivered, in_order, "each sender's messages in order");
    // Everything accepted arrives eventually; nothing is dropped.
    for _ in 0..100 {
        h.now += Duration::from_millis(100);
        sample.sent_packets += 100;
        sample.sent_bytes += 100_000;
        h.relay.on_path_sample(b, sample, h.now);
        delivered.extend(got(&mut h));
    }
    assert_eq!(delivered.len(), accepted);
}

// ---- peers other relays bring (docs/PROTOCOL.md 18) -------------------------------------

mod relay_peers {
    use std::sync::Arc;

    use super::*;
    use crate::wire::{Grants, TrackSource};

    fn relay_grants() -> Grants {
        Grants {
            relay: true,
            ..Grants::default()
        }
    }

    fn outputs(room: &mut Room, peer: PeerId) -> Vec<ServerMessage> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(o)) = room.poll_peer(peer, &mut cx) {
            if let PeerOutput::Message(m) = o {
                out.push(m);
            }
        }
        out
    }

    fn camera() -> Track {
        Track {
            kind: MediaKind::Video,
            source: TrackSource::Camera,
            codec: "vp8".into(),
            params: Default::default(),
            layers: Vec::new(),
        }
    }

    #[test]
    fn a_relay_link_is_hidden_and_mirrored_peers_keep_their_ids() {
        let now = Instant::now();
        let mut room = Room::new("r", Arc::new(RelayConfig::default()), Ids::default());
        let (ada, _) = room.join(PROTOCOL_VERSION, "ada", false, now).unwrap();

        // Another relay's link: it hears the room, nobody hears of it.
        let link_as = JoinAs {
            peer_id: None,
            hidden: true,
            relay: Some("two".into()),
        };
        let (link, joined) = room
            .join_with(
                &Joining {
                    grants: relay_grants(),
                    join_as: link_as,
                    ..Joining::new("relay two")
                },
                now,
            )
            .unwrap();
        assert_eq!(joined.peers.len(), 1, "the link sees ada");
        assert!(
            outputs(&mut room, ada).is_empty(),
            "ada hears nothing of the link"
        );
        assert_eq!(room.local_members(), 1);

        // A peer of relay two, mirrored under its own id.
        let bo = PeerId(7 << 32);
        let mirror_as = JoinAs {
            peer_id: Some(bo),
            hidden: false,
            relay: Some("two".into()),
        };
        room.join_with(
            &Joining {
                grants: relay_grants(),
                join_as: mirror_as,
                ..Joining::new("bo")
            },
            now,
        )
        .unwrap();
        let told = outputs(&mut room, ada);
        assert!(
            matches!(&told[..], [ServerMessage::PeerJoined { peer }]
                if peer.peer_id == bo && peer.relay.as_deref() == Some("two")),
            "{told:?}"
        );
        assert!(
            outputs(&mut room, link)
                .iter()
                .any(|m| matches!(m, ServerMessage::PeerJoined { peer } if peer.peer_id == bo)),
            "the link hears the mirror (its own relay's: it skips it)"
        );
        assert_eq!(room.local_members(), 1, "a mirror is not a local peer");

        // The mirror publishes under the producer's id on its relay.
        let cam = ProducerId((7 << 32) + 1);
        assert_eq!(room.produce(bo, camera(), Some(cam), now), Ok(cam));
        assert!(outputs(&mut room, ada).iter().any(
            |m| matches!(m, ServerMessage::ProducerAdded { producer } if producer.producer_id == cam && producer.peer_id == bo)
        ));
        assert_eq!(room.producer_peer(cam), Some(bo));

        // A mirror hears nothing broadcast: its own relay tells its peer.
        let (cy, _) = room.join(PROTOCOL_VERSION, "cy", false, now).unwrap();
        room.produce(cy, camera(), None, now).unwrap();
        assert!(outputs(&mut room, bo).is_empty());

        // The link subscribes; a hidden peer may not publish.
        assert_eq!(room.producer_consumers(cam), Some(0));
        room.handle(
            link,
            ClientMessage {
                id: 1,
                request: Request::Consume {
                    producer_id: cam,
                    paused: false,
                    layer: None,
                },
            },
            now,
        );
        assert_eq!(room.producer_consumers(cam), Some(1));
        let refused = room.produce(link, camera(), None, now).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);

        // Leaving: the mirror's departure is heard, the link's is not.
        outputs(&mut room, ada);
        room.leave(link, LeaveReason::Left);
        assert!(outputs(&mut room, ada).is_empty());
        room.leave(bo, LeaveReason::Disconnected);
        assert!(
            outputs(&mut room, ada)
                .iter()
                .any(|m| matches!(m, ServerMessage::PeerLeft { peer_id, .. } if *peer_id == bo))
        );
    }

    #[test]
    fn room_events_report_each_peer_on_its_own_relay_only() {
        let now = Instant::now();
        let config = RelayConfig {
            room_events: true,
            ..RelayConfig::default()
        };
        let mut room = Room::new("r", Arc::new(config), Ids::default());
        let (ada, _) = room.join(PROTOCOL_VERSION, "ada", false, now).unwrap();
        let ada_cam = room.produce(ada, camera(), None, now).unwrap();
        // The link of relay two, and bo, connected to relay two, mirrored here.
        let as_relay = |join_as: JoinAs, name| Joining {
            grants: relay_grants(),
            join_as,
            ..Joining::new(name)
        };
        let link = JoinAs {
            hidden: true,
            relay: Some("two".into()),
            ..JoinAs::default()
        };
        let (link, _) = room.join_with(&as_relay(link, "relay two"), now).unwrap();
        let bo = PeerId(7 << 32);
        let mirror = JoinAs {
            peer_id: Some(bo),
            relay: Some("two".into()),
            ..JoinAs::default()
        };
        room.join_with(&as_relay(mirror, "bo"), now).unwrap();
        let cam = ProducerId((7 << 32) + 1);
        room.produce(bo, camera(), Some(cam), now).unwrap();
        room.handle(
            bo,
            ClientMessage {
                id: 1,
                request: Request::CloseProducer { producer_id: cam },
            },
            now,
        );
        room.leave(bo, LeaveReason::Left);
        room.leave(link, LeaveReason::Left);
        room.leave(ada, LeaveReason::Left);
        let (events, dropped) = room.drain_events();
        assert_eq!(dropped, 0);
        let ours = |e: &RoomEvent| match e {
            RoomEvent::RoomStarted => true,
            RoomEvent::PeerJoined { peer_id, .. } | RoomEvent::PeerLeft { peer_id, .. } => {
                *peer_id == ada
            }
            RoomEvent::ProducerAdded { producer } => producer.producer_id == ada_cam,
            RoomEvent::ProducerClosed { producer_id, .. } => *producer_id == ada_cam,
        };
        assert!(events.iter().all(ours), "{events:?}");
        assert_eq!(
            events.len(),
            5,
            "started, ada joined, produced, closed, left: {events:?}"
        );
    }

    #[test]
    fn only_a_relay_may_join_as_one_or_choose_ids() {
        let now = Instant::now();
        let mut room = Room::new("r", Arc::new(RelayConfig::default()), Ids::default());
        let (ada, _) = room.join(PROTOCOL_VERSION, "ada", false, now).unwrap();
        let hidden = JoinAs {
            hidden: true,
            ..JoinAs::default()
        };
        let refused = room
            .join_with(
                &Joining {
                    join_as: hidden,
                    ..Joining::new("x")
                },
                now,
            )
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
        let refused = room
            .produce(ada, camera(), Some(ProducerId(99)), now)
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);

        // A relay may not take an id in use.
        let taken = JoinAs {
            peer_id: Some(ada),
            relay: Some("two".into()),
            ..JoinAs::default()
        };
        let refused = room
            .join_with(
                &Joining {
                    grants: relay_grants(),
                    join_as: taken,
                    ..Joining::new("y")
                },
                now,
            )
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadRequest);
        let mirror = JoinAs {
            peer_id: Some(PeerId(1 << 40)),
            relay: Some("two".into()),
            ..JoinAs::default()
        };
        let (bo, _) = room
            .join_with(
                &Joining {
                    grants: relay_grants(),
                    join_as: mirror,
                    ..Joining::new("bo")
                },
                now,
            )
            .unwrap();
        let cam = room.produce(ada, camera(), None, now).unwrap();
        let refused = room.produce(bo, camera(), Some(cam), now).unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadRequest);
    }
}

/// Counts its wake-ups: a media sender asleep in `poll_media`.
#[derive(Default)]
struct WakeCount(std::sync::atomic::AtomicUsize);

impl std::task::Wake for WakeCount {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl WakeCount {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What one `poll_media` round gave: frames (as consumer and payload's first byte), and
/// closed consumers.
type MediaRound = (Vec<(ConsumerId, u8)>, Vec<ConsumerId>);

/// One `poll_media` round for `peer`.
fn media_round(
    h: &mut Harness,
    peer: PeerId,
    released: &mut Vec<ConsumerId>,
    cx: &mut Context<'_>,
) -> Poll<Option<MediaRound>> {
    let mut out = Vec::new();
    match h.relay.poll_media(peer, h.now, released, &mut out, cx) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(None) => return Poll::Ready(None),
        Poll::Ready(Some(())) => {}
    }
    let mut frames = Vec::new();
    let mut closed = Vec::new();
    for o in out {
        match o {
            MediaOutput::Frame(f) => {
                let first = match &f.frame.data {
                    FrameData::Stream { payload, .. } => payload[0],
                    FrameData::Datagram(d) => d[0],
                };
                assert_eq!(
                    f.write_deadline.is_some(),
                    matches!(f.frame.data, FrameData::Stream { .. }) && !f.frame.keyframe,
                    "a video delta has a write deadline, a keyframe and audio none"
                );
                frames.push((f.consumer_id, first))
            }
            MediaOutput::Closed(c) => closed.push(c),
        }
    }
    Poll::Ready(Some((frames, closed)))
}

#[test]
fn one_media_sender_takes_all_of_a_peers_consumers_and_a_slow_video_write_holds_up_only_its_own() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let mic = h.produce(a, MediaKind::Audio);
    let cam = h.produce(a, MediaKind::Video);
    let cam2 = h.produce(a, MediaKind::Video);
    let c_mic = h.consume(b, mic);
    let c_cam = h.consume(b, cam);
    let c_cam2 = h.consume(b, cam2);
    h.drain(a);
    h.drain(b);
    let waker = std::sync::Arc::new(WakeCount::default());
    let waker_ref = Waker::from(waker.clone());
    let mut cx = Context::from_waker(&waker_ref);
    let mut released = Vec::new();

    // Nothing yet: the sender sleeps, and the first frame wakes it once.
    assert_eq!(
        media_round(&mut h, b, &mut released, &mut cx),
        Poll::Pending
    );
    h.video(a, cam, 1, true);
    h.video(a, cam2, 1, true);
    h.audio(a, mic, 1);
    h.audio(a, mic, 2);
    assert_eq!(waker.count(), 1);
    let Poll::Ready(Some((frames, closed))) = media_round(&mut h, b, &mut released, &mut cx) else {
        panic!("frames are ready");
    };
    assert!(closed.is_empty());
    // One frame per consumer per pass, in the order they became ready, then the rest.
    assert_eq!(
        frames,
        vec![(c_cam, 1), (c_cam2, 1), (c_mic, 1), (c_mic, 2)]
    );

    // cam's write is still in flight (not released); cam2's finished. cam's next frame
    // waits for its write, audio and cam2 do not (cam2 is listed as ready when its
    // release is handed in, after the audio that arrived meanwhile).
    released.push(c_cam2);
    h.video(a, cam, 2, false);
    h.video(a, cam2, 2, false);
    h.audio(a, mic, 3);
    let Poll::Ready(Some((frames, _))) = media_round(&mut h, b, &mut released, &mut cx) else {
        panic!("frames are ready");
    };
    assert_eq!(frames, vec![(c_mic, 3), (c_cam2, 2)]);
    assert_eq!(
        media_round(&mut h, b, &mut released, &mut cx),
        Poll::Pending
    );

    // cam's write finishes: the frame queued behind it comes next.
    released.push(c_cam);
    let Poll::Ready(Some((frames, _))) = media_round(&mut h, b, &mut released, &mut cx) else {
        panic!("cam's next frame is ready");
    };
    assert_eq!(frames, vec![(c_cam, 2)]);

    // A closed consumer is reported to the sender (which ends its group stream), at once.
    let woken = waker.count();
    h.request(a, Request::CloseProducer { producer_id: cam })
        .unwrap();
    assert!(waker.count() > woken, "closing a consumer wakes the sender");
    released.push(c_cam);
    let Poll::Ready(Some((frames, closed))) = media_round(&mut h, b, &mut released, &mut cx) else {
        panic!("the closed consumer is reported");
    };
    assert!(frames.is_empty());
    assert_eq!(closed, vec![c_cam]);

    // The peer leaves: the sender is woken and stops.
    assert_eq!(
        media_round(&mut h, b, &mut released, &mut cx),
        Poll::Pending
    );
    let woken = waker.count();
    h.relay.leave(b, LeaveReason::Left);
    assert!(waker.count() > woken, "leaving wakes the sender");
    assert_eq!(
        media_round(&mut h, b, &mut released, &mut cx),
        Poll::Ready(None)
    );
}

#[test]
fn a_media_senders_batch_is_bounded_and_the_rest_waits_for_the_next_round() {
    let mut h = Harness::new();
    let b = h.join("r", "b");
    let per_peer = RelayConfig::default().limits.max_producers_per_peer;
    let mut mics = Vec::new();
    while mics.len() < MEDIA_BATCH + 6 {
        let a = h.join("r", "a");
        for _ in 0..per_peer.min(MEDIA_BATCH + 6 - mics.len()) {
            mics.push((a, h.produce(a, MediaKind::Audio)));
        }
    }
    for (_, mic) in &mics {
        h.consume(b, *mic);
    }
    for (a, mic) in &mics {
        h.audio(*a, *mic, 1);
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut released = Vec::new();
    let Poll::Ready(Some((first, _))) = media_round(&mut h, b, &mut released, &mut cx) else {
        panic!("frames are ready");
    };
    assert_eq!(first.len(), MEDIA_BATCH);
    let Poll::Ready(Some((rest, _))) = media_round(&mut h, b, &mut released, &mut cx) else {
        panic!("the rest is ready");
    };
    assert_eq!(rest.len(), 6);
    assert_eq!(
        media_round(&mut h, b, &mut released, &mut cx),
        Poll::Pending
    );
}

#[test]
fn frames_queued_before_the_media_senders_first_poll_are_taken_at_it() {
    let mut h = Harness::new();
    let a = h.join("r", "a");
    let b = h.join("r", "b");
    let mic = h.produce(a, MediaKind::Audio);
    let cam = h.produce(a, MediaKind::Video);
    let c_mic = h.consume(b, mic);
    let c_cam = h.consume(b, cam);
    h.video(a, cam, 1, true);
    h.audio(a, mic, 1);
    let mut cx = Context::from_waker(Waker::noop());
    let mut released = Vec::new();
    let Poll::Ready(Some((frames, _))) = media_round(&mut h, b, &mut released, &mut cx) else {
        panic!("what was queued is ready");
    };
    assert_eq!(frames.len(), 2);
    assert!(frames.contains(&(c_cam, 1)) && frames.contains(&(c_mic, 1)));
    assert_eq!(
        media_round(&mut h, b, &mut released, &mut cx),
        Poll::Pending
    );
}
