//! Bad input from one peer: that peer gets a typed error (or is disconnected), everyone
//! else carries on, and nothing leaks.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use synapse_sfu::client::{Client, ClientError, now_us};
use synapse_sfu::core::{RelayConfig, RelayCounts};
use synapse_sfu::server::ServerConfig;
use synapse_sfu::wire::frame::{encode_datagram, encode_stream_frame_head, encode_stream_header};
use synapse_sfu::wire::{
    ConsumerId, ErrorCode, FrameHeader, MediaKind, ProducerId, Request, ServerMessage,
};

const WITNESS_FRAMES: u64 = 150;

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Refused(e)) => e.code,
        other => panic!("expected a typed refusal, got {other:?}"),
    }
}

fn control_frame(body: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(body);
    buf.freeze()
}

async fn error_event(peer: &mut Peer) -> Option<(Option<u64>, ErrorCode)> {
    media_error_event(peer)
        .await
        .map(|(id, code, _)| (id, code))
}

/// The next error, with the producer it names (media errors).
async fn media_error_event(
    peer: &mut Peer,
) -> Option<(Option<u64>, ErrorCode, Option<ProducerId>)> {
    match wait_event(&mut peer.incoming, Duration::from_secs(5), |e| {
        matches!(e, ServerMessage::Error { .. })
    })
    .await
    {
        Some(ServerMessage::Error {
            id,
            code,
            producer_id,
            ..
        }) => Some((id, code, producer_id)),
        _ => None,
    }
}

fn header(seq: u64, keyframe: bool) -> FrameHeader {
    FrameHeader {
        seq,
        capture_us: now_us(),
        keyframe,
        audio_level: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_everyone_else_carries_on() {
    let server = start_relay_with(ServerConfig {
        relay: RelayConfig {
            // Small enough that an oversized datagram still fits a QUIC packet.
            max_datagram_size: 500,
            ..RelayConfig::default()
        },
        ..test_config()
    })
    .await;

    // Witnesses: a steady publisher and subscriber that must not notice anything.
    let witness_pub = join(&server, "r", "witness-pub", false).await;
    let mut witness_sub = join(&server, "r", "witness-sub", true).await;
    let wmic = witness_pub
        .client
        .produce(MediaKind::Audio, "opus")
        .await
        .unwrap();
    let wcam = witness_pub
        .client
        .produce(MediaKind::Video, "vp8")
        .await
        .unwrap();
    wait_for_relay(&server, Duration::from_secs(5), |c| c.consumers == 2).await;
    let client = witness_pub.client.clone();
    let witness = tokio::spawn(async move {
        for seq in 0..WITNESS_FRAMES {
            send_audio(&client, wmic, seq);
            send_video(&client, wcam, seq, seq % 30 == 0).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    // Out of state: requests before join, a wrong version, a bad room; then a good join.
    let (early, _early_in) = Client::connect(options(&server)).await.unwrap();
    let produce = Request::Produce {
        source: None,
        kind: MediaKind::Audio,
        codec: "opus".into(),
        params: Default::default(),
        layers: Vec::new(),
        producer_id: None,
    };
    assert_eq!(
        code(early.request_raw(produce.clone()).await),
        ErrorCode::NotJoined
    );
    let old = Request::Join {
        resume: None,
        extensions: Vec::new(),
        version: 99,
        room: "r".into(),
        name: "x".into(),
        auto_subscribe: false,
        token: None,
        relay: None,
    };
    assert_eq!(
        code(early.request_raw(old).await),
        ErrorCode::UnsupportedVersion
    );
    assert_eq!(
        code(early.join("no spaces", "x", false).await),
        ErrorCode::InvalidRoom
    );
    early
        .join("r", "late", false)
        .await
        .expect("the session survived its errors");

    // Malformed and unknown control messages, a second join, unknown ids.
    let mut chatty = join(&server, "r", "chatty", false).await;
    chatty
        .client
        .send_control_bytes(control_frame(br#"{"id":77,"type":"teleport"}"#))
        .unwrap();
    assert_eq!(
        error_event(&mut chatty).await,
        Some((Some(77), ErrorCode::BadRequest))
    );
    chatty
        .client
        .send_control_bytes(control_frame(b"\x00not json"))
        .unwrap();
    assert_eq!(
        error_event(&mut chatty).await,
        Some((None, ErrorCode::BadRequest))
    );
    assert_eq!(
        code(chatty.client.join("r", "again", false).await),
        ErrorCode::AlreadyJoined
    );
    assert_eq!(
        code(chatty.client.consume(ProducerId(424_242)).await),
        ErrorCode::UnknownProducer
    );
    assert_eq!(
        code(
            chatty
                .client
                .command(Request::CloseProducer { producer_id: wcam })
                .await
        ),
        ErrorCode::NotOwner
    );
    assert_eq!(
        code(
            chatty
                .client
                .command(Request::PauseConsumer {
                    consumer_id: ConsumerId(5),
                })
                .await
        ),
        ErrorCode::UnknownConsumer
    );
    chatty
        .client
        .produce(MediaKind::Audio, "opus")
        .await
        .expect("still usable");

    // Media offences, one offender each (frame errors are rate-limited per peer).
    let mut not_owner = join(&server, "r", "not-owner", false).await;
    let forged = encode_datagram(wmic, &header(1_000, false), b"forged");
    not_owner.client.send_datagram(forged).unwrap();
    // The error names the track it is about.
    assert_eq!(
        media_error_event(&mut not_owner).await,
        Some((None, ErrorCode::NotOwner, Some(wmic)))
    );

    let mut unknown = join(&server, "r", "unknown", false).await;
    unknown
        .client
        .send_datagram(encode_datagram(
            ProducerId(999_999),
            &header(0, false),
            b"x",
        ))
        .unwrap();
    assert_eq!(
        media_error_event(&mut unknown).await,
        Some((None, ErrorCode::UnknownProducer, Some(ProducerId(999_999))))
    );

    let mut oversized = join(&server, "r", "oversized", false).await;
    let mic = oversized
        .client
        .produce(MediaKind::Audio, "opus")
        .await
        .unwrap();
    oversized
        .client
        .send_datagram(encode_datagram(mic, &header(0, false), &[0u8; 800]))
        .unwrap();
    assert_eq!(
        error_event(&mut oversized).await,
        Some((None, ErrorCode::FrameTooLarge))
    );

    let mut truncated = join(&server, "r", "truncated", false).await;
    truncated
        .client
        .send_datagram(Bytes::from_static(&[0x05]))
        .unwrap();
    assert_eq!(
        error_event(&mut truncated).await,
        Some((None, ErrorCode::MalformedFrame))
    );

    let mut wrong_path = join(&server, "r", "wrong-path", false).await;
    let mic = wrong_path
        .client
        .produce(MediaKind::Audio, "opus")
        .await
        .unwrap();
    wrong_path
        .client
        .send_video(
            mic,
            header(0, true),
            Bytes::from_static(b"audio on a stream"),
        )
        .await
        .unwrap();
    assert_eq!(
        error_event(&mut wrong_path).await,
        Some((None, ErrorCode::KindMismatch))
    );

    let mut huge_frame = join(&server, "r", "huge-frame", false).await;
    let cam = huge_frame
        .client
        .produce(MediaKind::Video, "vp8")
        .await
        .unwrap();
    let mut stream = huge_frame.client.open_uni().await.unwrap();
    stream
        .write_all(&encode_stream_header(cam, None))
        .await
        .unwrap();
    stream
        .write_all(&encode_stream_frame_head(&header(0, true), 10 << 20))
        .await
        .unwrap();
    assert_eq!(
        error_event(&mut huge_frame).await,
        Some((None, ErrorCode::FrameTooLarge))
    );

    let mut bad_stream = join(&server, "r", "bad-stream", false).await;
    let mut stream = bad_stream.client.open_uni().await.unwrap();
    stream.write_all(&[0x3f, 0x01]).await.unwrap();
    assert_eq!(
        error_event(&mut bad_stream).await,
        Some((None, ErrorCode::MalformedFrame))
    );

    // A peer that vanishes mid-frame: its complete frame is forwarded, the partial one not.
    let vanishing = join(&server, "r", "vanishing", false).await;
    let vcam = vanishing
        .client
        .produce(MediaKind::Video, "vp8")
        .await
        .unwrap();
    wait_for_relay(&server, Duration::from_secs(5), |c| c.consumers >= 4).await;
    vanishing
        .client
        .send_video(vcam, header(0, true), expected_video(0, true))
        .await
        .unwrap();
    let mut stream = vanishing.client.open_uni().await.unwrap();
    stream
        .write_all(&encode_stream_header(vcam, None))
        .await
        .unwrap();
    stream
        .write_all(&encode_stream_frame_head(&header(1, true), 50_000))
        .await
        .unwrap();
    stream.write_all(&[7u8; 10_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    vanishing.client.close();

    // A control message over the size limit: error, then disconnection of that peer only.
    let oversize_control = join(&server, "r", "oversize-control", false).await;
    let mut big = BytesMut::new();
    big.put_u32(1 << 20);
    big.put_slice(&[b' '; 1024]);
    oversize_control
        .client
        .send_control_bytes(big.freeze())
        .unwrap();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), oversize_control.client.closed()).await;
    assert!(
        closed.is_ok(),
        "a protocol violation disconnects the offender"
    );

    // The witnesses never noticed.
    witness.await.unwrap();
    let received = collect_until(&mut witness_sub.incoming, Duration::from_secs(15), |r| {
        r.get(&wcam).map_or(0, Vec::len) as u64 == WITNESS_FRAMES
    })
    .await;
    let seqs: Vec<u64> = received[&wcam].iter().map(|f| f.header.seq).collect();
    assert_eq!(seqs, (0..WITNESS_FRAMES).collect::<Vec<_>>());
    let audio = received.get(&wmic).map_or(0, Vec::len) as u64;
    assert!(audio >= WITNESS_FRAMES * 95 / 100, "{audio} audio frames");
    let from_vanishing: Vec<u64> = received
        .get(&vcam)
        .map(|f| f.iter().map(|f| f.header.seq).collect())
        .unwrap_or_default();
    assert_eq!(
        from_vanishing,
        vec![0],
        "the half-sent frame was never forwarded"
    );

    // Everyone goes; nothing stays behind.
    drop((
        early, chatty, not_owner, unknown, oversized, truncated, wrong_path,
    ));
    drop((huge_frame, bad_stream, vanishing, oversize_control));
    witness_pub.client.leave().await.unwrap();
    witness_sub.client.leave().await.unwrap();
    wait_for_relay(&server, Duration::from_secs(10), |c| {
        c == RelayCounts::default()
    })
    .await;
}
