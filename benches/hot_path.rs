//! Micro-benchmarks of the hot path: frame header parse/encode, and the per-frame routing
//! decision (core `on_frame` plus each consumer's queue pop) for 1 to 1000 consumers.
//! Run: `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use synapse_sfu::core::{FrameData, Limits, Relay, RelayConfig};
use synapse_sfu::wire::frame::{
    decode_datagram, decode_stream_frame, encode_datagram, encode_stream_frame_head,
};
use synapse_sfu::wire::{
    ClientMessage, ConsumerId, FrameHeader, MediaKind, PROTOCOL_VERSION, PeerId, ProducerId, Reply,
    Request, ServerMessage,
};

fn header(seq: u64, keyframe: bool) -> FrameHeader {
    FrameHeader {
        seq,
        capture_us: 1_764_000_000_000_000 + seq * 33_333,
        keyframe,
        audio_level: None,
    }
}

fn frame_headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header");
    let payload = vec![7u8; 160];
    let datagram = encode_datagram(ProducerId(42), &header(123_456, false), &payload);
    group.bench_function("encode_datagram_160B", |b| {
        b.iter(|| {
            encode_datagram(
                black_box(ProducerId(42)),
                black_box(&header(123_456, false)),
                &payload,
            )
        })
    });
    group.bench_function("decode_datagram_160B", |b| {
        b.iter(|| decode_datagram(black_box(datagram.clone()), 1200).unwrap())
    });
    group.bench_function("encode_stream_frame_head", |b| {
        b.iter(|| encode_stream_frame_head(black_box(&header(123_456, true)), black_box(4_000)))
    });
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&encode_stream_frame_head(&header(123_456, false), 4_000));
    wire.extend_from_slice(&[1u8; 4_000]);
    let wire = wire.freeze();
    group.bench_function("decode_stream_frame_4KB", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            decode_stream_frame(&mut buf, 1 << 21).unwrap().unwrap()
        })
    });
    group.finish();
}

/// A relay with one video producer and `n` consumers in one room.
fn relay_with_consumers(n: usize) -> (Relay, PeerId, ProducerId, Vec<ConsumerId>) {
    let now = Instant::now();
    let mut relay = Relay::new(RelayConfig {
        limits: Limits {
            max_peers_per_room: 0,
            ..Limits::default()
        },
        ..RelayConfig::default()
    });
    let (publisher, _) = relay
        .join(PROTOCOL_VERSION, "bench", "pub", false, now)
        .unwrap();
    relay.handle(
        publisher,
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
        now,
    );
    let mut cx = Context::from_waker(Waker::noop());
    let mut producer = ProducerId(0);
    while let std::task::Poll::Ready(Some(out)) = relay.poll_peer(publisher, &mut cx) {
        if let synapse_sfu::core::PeerOutput::Message(ServerMessage::Response {
            result: Reply::Produced(produced),
            ..
        }) = out
        {
            producer = produced.producer_id;
        }
    }
    let mut consumers = Vec::new();
    for i in 0..n {
        let (peer, _) = relay
            .join(PROTOCOL_VERSION, "bench", &format!("sub{i}"), true, now)
            .unwrap();
        while let std::task::Poll::Ready(Some(_)) = relay.poll_peer(peer, &mut cx) {}
        consumers.extend(relay.peer_consumers(peer).into_iter().map(|(c, _)| c));
    }
    (relay, publisher, producer, consumers)
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_frame");
    let payload = Bytes::from(vec![9u8; 4_000]);
    let head = encode_stream_frame_head(&header(0, false), payload.len());
    for n in [1usize, 10, 100, 1000] {
        let (mut relay, publisher, producer, consumers) = relay_with_consumers(n);
        let now = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        // Start every consumer at a keyframe.
        let key = FrameData::Stream {
            head: head.clone(),
            payload: payload.clone(),
        };
        relay
            .on_frame(
                publisher,
                producer,
                MediaKind::Video,
                0,
                &header(0, true),
                key,
                now,
            )
            .unwrap();
        for c in &consumers {
            let _ = relay.poll_consumer(*c, now, &mut cx);
        }
        let mut seq = 1;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                let data = FrameData::Stream {
                    head: head.clone(),
                    payload: payload.clone(),
                };
                relay
                    .on_frame(
                        publisher,
                        producer,
                        MediaKind::Video,
                        0,
                        &header(seq, false),
                        data,
                        now,
                    )
                    .unwrap();
                for c in &consumers {
                    let _ = black_box(relay.poll_consumer(*c, now, &mut cx));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, frame_headers, routing);
criterion_main!(benches);
