//! The bodies of the fuzz targets in `fuzz/`, kept here so that `cargo test` runs them too
//! (over generated inputs) and the targets stay one-liners. Each takes arbitrary bytes and
//! must never panic; each checks a property on top.

use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::core::{FrameData, Joining, Relay, RelayConfig};
use crate::wire::frame::{decode_datagram, decode_stream_frame, decode_stream_header};
use crate::wire::{
    ClientMessage, ConsumerId, LeaveReason, MediaKind, PeerId, ProducerId, Request, ServerMessage,
    decode_message, encode_message,
};

/// Control messages: whatever parses re-encodes to something that parses to the same.
pub fn control_message(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        match decode_message::<ClientMessage>(&mut buf, 64 * 1024) {
            Ok(Some(message)) => {
                let mut again = BytesMut::from(&encode_message(&message)[..]);
                let back: ClientMessage = decode_message(&mut again, usize::MAX)
                    .expect("our own encoding parses")
                    .expect("and is complete");
                assert_eq!(back, message);
            }
            Ok(None) => break,
            Err(e) if e.fatal => break,
            Err(_) => {}
        }
    }
    // Server messages are parsed by clients: the same must hold for them.
    let mut buf = BytesMut::from(data);
    while let Ok(Some(message)) = decode_message::<ServerMessage>(&mut buf, 64 * 1024) {
        let mut again = BytesMut::from(&encode_message(&message)[..]);
        let back: Option<ServerMessage> = decode_message(&mut again, usize::MAX).ok().flatten();
        assert_eq!(back.as_ref(), Some(&message));
    }
}

/// Audio datagrams: a parse never reads past the end, and the payload is the tail.
pub fn datagram(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(d) = decode_datagram(bytes.clone(), 1200) {
        assert!(d.payload.len() <= bytes.len());
        assert_eq!(&bytes[bytes.len() - d.payload.len()..], &d.payload[..]);
        // Without its level, the same frame and payload.
        if let Some(plain) = crate::wire::frame::strip_audio_level(&bytes) {
            let p = decode_datagram(plain, 1200).expect("a stripped datagram parses");
            assert_eq!(p.header.audio_level, None);
            assert_eq!((p.producer_id, p.header.seq), (d.producer_id, d.header.seq));
            assert_eq!(p.payload, d.payload);
        } else {
            assert_eq!(d.header.audio_level, None);
        }
    }
    // The same bytes as a lossy data datagram, both as sent and as delivered.
    if let Ok(l) = crate::wire::frame::decode_lossy_data(bytes.clone(), 1200) {
        assert!(!l.payload.is_empty());
        assert!(l.to.len() <= crate::wire::frame::MAX_DATA_RECIPIENTS);
        assert_eq!(&bytes[bytes.len() - l.payload.len()..], &l.payload[..]);
    }
    if let Ok((_, payload)) = crate::wire::frame::decode_delivered_data(bytes.clone()) {
        assert!(payload.len() <= bytes.len());
    }
    // The same bytes as a WebSocket transport message: what parses re-encodes to itself.
    if let Ok(m) = crate::wire::mux::MuxMessage::decode(bytes.clone()) {
        let again = m.encode();
        assert_eq!(
            crate::wire::mux::MuxMessage::decode(again).as_ref(),
            Ok(&m),
            "a message re-encodes to itself"
        );
    }
}

/// Media streams, delivered in pieces whose sizes the input chooses: the frames that come
/// out are the same however the bytes are cut.
pub fn stream(data: &[u8]) {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut % 64) + 1;
    let parse = |pieces: usize| {
        let mut buf = BytesMut::new();
        let mut producer = None;
        let mut frames = Vec::new();
        for chunk in body.chunks(pieces) {
            buf.extend_from_slice(chunk);
            if producer.is_none() {
                match decode_stream_header(&mut buf) {
                    Ok(Some(h)) => producer = Some(h.producer_id),
                    Ok(None) => continue,
                    Err(_) => return (producer, frames, true),
                }
            }
            loop {
                match decode_stream_frame(&mut buf, 1 << 20) {
                    Ok(Some(f)) => frames.push((f.header, f.head, f.payload)),
                    Ok(None) => break,
                    Err(_) => return (producer, frames, true),
                }
            }
        }
        (producer, frames, false)
    };
    assert_eq!(parse(piece), parse(body.len().max(1)));
}

/// The core as a state machine: each input byte pair is an operation by some peer (join,
/// produce, consume, pause, frames, leave...), with time moving on. Nothing panics, and once
/// every peer has left, nothing is left.
pub fn relay_core(data: &[u8]) {
    let mut relay = Relay::new(RelayConfig::default());
    let mut now = Instant::now();
    let mut peers: Vec<PeerId> = Vec::new();
    let mut rooms_of: std::collections::HashMap<PeerId, &str> = Default::default();
    let mut cx = Context::from_waker(Waker::noop());
    for (id, op) in (1u64..).zip(data.chunks(2)) {
        let (a, b) = (op[0], op.get(1).copied().unwrap_or(0));
        now += Duration::from_millis(u64::from(b % 50));
        let pick = |list: &[PeerId]| list.get(usize::from(b) % list.len().max(1)).copied();
        // Ids are small integers shared by peers, producers and consumers: guess among them.
        let some_id = u64::from(b % 32);
        let peer = pick(&peers);
        let request = |request| ClientMessage { id, request };
        match a % 16 {
            0 => {
                let room = ["a", "b"][usize::from(b % 2)];
                // Some peers ask for audio levels and lossy data.
                let extensions: Vec<String> = if b % 4 == 1 {
                    vec!["audio_level".into(), "lossy_data".into(), "resume".into()]
                } else {
                    Vec::new()
                };
                let joining = Joining {
                    auto_subscribe: b % 3 == 0,
                    extensions: &extensions,
                    ..Joining::new("x")
                };
                let joined = relay.join_with(room, &joining, now);
                if let Ok((p, _)) = joined {
                    relay
                        .room_mut_for_tests(room)
                        .set_resume_token(p, "t".into());
                    rooms_of.insert(p, room);
                    peers.push(p);
                }
            }
            1 | 2 => {
                if let Some(p) = peer {
                    let kind = if a % 2 == 0 {
                        MediaKind::Video
                    } else {
                        MediaKind::Audio
                    };
                    // Some video producers are simulcast, with one to three layers.
                    let layers = if kind == MediaKind::Video && b % 3 != 0 {
                        (0..b % 4)
                            .map(|i| crate::wire::LayerInfo {
                                width: 160 << i,
                                height: 90 << i,
                                max_bitrate: 100_000 << i,
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let r = Request::Produce {
                        kind,
                        codec: "vp8".into(),
                        params: Default::default(),
                        source: None,
                        layers,
                        producer_id: None,
                    };
                    relay.handle(p, request(r), now);
                }
            }
            3 => {
                if let Some(p) = peer {
                    let r = Request::Consume {
                        producer_id: ProducerId(some_id),
                        paused: b % 5 == 0,
                        layer: (b % 7 == 0).then_some(b % 4),
                    };
                    relay.handle(p, request(r), now);
                }
            }
            4 => {
                if let Some(p) = peer {
                    let r = match b % 6 {
                        0 => Request::PauseProducer {
                            producer_id: ProducerId(some_id),
                        },
                        1 => Request::ResumeProducer {
                            producer_id: ProducerId(some_id),
                        },
                        2 => Request::CloseProducer {
                            producer_id: ProducerId(some_id),
                        },
                        3 => Request::PauseConsumer {
                            consumer_id: ConsumerId(some_id),
                        },
                        4 => Request::ResumeConsumer {
                            consumer_id: ConsumerId(some_id),
                        },
                        _ => Request::CloseConsumer {
                            consumer_id: ConsumerId(some_id),
                        },
                    };
                    relay.handle(p, request(r), now);
                }
            }
            5..=7 => {
                if let Some(p) = peer {
                    let kind = if a % 2 == 0 {
                        MediaKind::Video
                    } else {
                        MediaKind::Audio
                    };
                    // Some audio carries a level, encoded as the wire has it.
                    let audio_level = (kind == MediaKind::Audio && b % 2 == 0).then_some(
                        crate::wire::AudioLevel {
                            level: b % 128,
                            voice: b % 4 == 0,
                        },
                    );
                    let data = match kind {
                        MediaKind::Audio => {
                            let h = crate::wire::FrameHeader {
                                audio_level,
                                ..crate::wire::FrameHeader::new(id, id * 20_000, false)
                            };
                            FrameData::Datagram(crate::wire::frame::encode_datagram(
                                ProducerId(some_id),
                                &h,
                                &[b; 60],
                            ))
                        }
                        MediaKind::Video => FrameData::Stream {
                            head: Bytes::new(),
                            payload: Bytes::from(vec![b; usize::from(b) * 100]),
                        },
                    };
                    let header = crate::wire::FrameHeader {
                        seq: id,
                        capture_us: id * 20_000,
                        keyframe: b % 7 == 0,
                        audio_level,
                    };
                    let layer = (a / 13) % 4;
                    let _ = relay.on_frame(p, ProducerId(some_id), kind, layer, &header, data, now);
                }
            }
            8 if b % 2 == 0 => {
                // A consumer's own sender drains some frames.
                for _ in 0..(b % 8) {
                    let _ = relay.poll_consumer(ConsumerId(some_id), now, &mut cx);
                }
            }
            8 => {
                // A peer's media sender takes a batch, handing back some consumers' writes
                // as finished (the ids may be anyone's, or nobody's).
                if let Some(p) = peer {
                    let mut released = vec![ConsumerId(some_id), ConsumerId(id)];
                    let mut out = Vec::new();
                    let _ = relay.poll_media(p, now, &mut released, &mut out, &mut cx);
                }
            }
            9 => {
                if let Some(p) = peer {
                    while let std::task::Poll::Ready(Some(_)) = relay.poll_peer(p, &mut cx) {}
                }
            }
            10 => {
                if let Some(p) = peer {
                    let r = if b % 2 == 0 {
                        Request::SetAutoSubscribe {
                            enabled: b % 4 == 0,
                        }
                    } else if b % 3 == 0 {
                        Request::SetPreferredLayers {
                            consumer_id: ConsumerId(some_id),
                            max_layer: (b % 5 != 0).then_some(b % 4),
                            max_width: (b % 7 != 0).then_some(u32::from(b) * 8),
                            max_height: None,
                        }
                    } else {
                        Request::RequestKeyframe {
                            consumer_id: ConsumerId(some_id),
                        }
                    };
                    relay.handle(p, request(r), now);
                }
            }
            11 => {
                // The IO layer's measurements and a write that missed its deadline.
                if let Some(p) = peer {
                    let sample = crate::core::PathSample {
                        rtt: std::time::Duration::from_millis(u64::from(b)),
                        min_rtt: std::time::Duration::from_millis(u64::from(b / 2)),
                        cwnd: u64::from(b) * 1000,
                        sent_packets: id * u64::from(b),
                        lost_packets: id,
                        sent_bytes: id * 1000,
                    };
                    let _ = relay.on_path_sample(p, sample, now);
                }
                if b % 3 == 0 {
                    relay.skip_late_consumer(ConsumerId(some_id), now);
                }
            }
            13 => {
                if let Some(p) = peer {
                    let to = if b % 3 == 0 {
                        Vec::new()
                    } else {
                        vec![PeerId(some_id)]
                    };
                    let r = Request::SendData {
                        payload: "x".repeat(usize::from(b) * 100),
                        to,
                        topic: (b % 5 == 0).then(|| "chat".to_owned()),
                    };
                    relay.handle(p, request(r), now);
                }
            }
            15 => {
                // Sessions drop, resume (with the right token or not), grace periods end.
                if let Some(p) = peer
                    && let Some(room) = rooms_of.get(&p).copied()
                    && relay.room_peers(room).is_some()
                {
                    let r = relay.room_mut_for_tests(room);
                    match b % 4 {
                        0 => {
                            let session = r.session_of(p).unwrap_or(0);
                            if r.end_session(p, session, LeaveReason::Disconnected, now)
                                == crate::core::SessionEnd::Left
                            {
                                peers.retain(|q| *q != p);
                                relay.leave(p, LeaveReason::Disconnected);
                            }
                        }
                        1 => {
                            let _ = r.resume(p, if b % 8 == 1 { "t" } else { "x" }, now);
                        }
                        _ => {
                            let gone = r.expire_interrupted(now + Duration::from_secs(30));
                            peers.retain(|q| !gone.contains(q));
                            for q in gone {
                                relay.leave(q, LeaveReason::Disconnected);
                            }
                        }
                    }
                }
            }
            14 => {
                if let Some(p) = peer {
                    let to: Vec<u64> = (0..b % 3).map(|i| some_id + u64::from(i)).collect();
                    let _ = relay.on_lossy_data(p, &to, &[b; 8], now);
                    relay.poll_speakers(now);
                }
            }
            _ => {
                if let Some(p) = peer {
                    peers.retain(|q| *q != p);
                    if b % 2 == 0 {
                        relay.handle(p, request(Request::Leave), now);
                    } else {
                        relay.leave(p, LeaveReason::Disconnected);
                    }
                }
            }
        }
    }
    for p in peers {
        relay.leave(p, LeaveReason::Disconnected);
    }
    assert_eq!(relay.counts(), crate::core::RelayCounts::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift: deterministic inputs for the fuzz bodies in every test run.
    fn inputs(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count).map(move |_| {
            let len = (next() % 300) as usize;
            (0..len).map(|_| next() as u8).collect()
        })
    }

    #[test]
    fn fuzz_bodies_hold_on_generated_inputs() {
        for input in inputs(0x5eed, 3000) {
            control_message(&input);
            datagram(&input);
            stream(&input);
            relay_core(&input);
        }
        // And on structured ones the random bytes rarely reach.
        let mut framed = BytesMut::new();
        framed.extend_from_slice(&encode_message(&ClientMessage {
            id: 1,
            request: Request::Join {
                resume: None,
                extensions: Vec::new(),
                version: 1,
                room: "r".into(),
                name: "n".into(),
                auto_subscribe: true,
                token: None,
                relay: None,
            },
        }));
        control_message(&framed);
        let mut stream_bytes = vec![3u8, 0x01, 0x05];
        stream_bytes.extend_from_slice(&crate::wire::frame::encode_stream_frame_head(
            &crate::wire::FrameHeader {
                seq: 1,
                capture_us: 2,
                keyframe: true,
                audio_level: None,
            },
            4,
        ));
        stream_bytes.extend_from_slice(b"abcd");
        stream(&stream_bytes);
    }
}
