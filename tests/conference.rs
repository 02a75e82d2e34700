//! Conference features end to end over real QUIC on 127.0.0.1: who speaks (levels in the
//! audio datagrams, `active_speakers` from the relay), data messages reliable and lossy,
//! and screen-sharing producers.

mod common;

use std::time::Duration;

use common::*;
use synapse_sfu::client::media::synthetic_payload;
use synapse_sfu::client::now_us;
use synapse_sfu::wire::{
    AudioLevel, ErrorCode, MediaKind, PeerId, ProducerId, ServerMessage, TrackSource,
};

/// Sends 20 ms audio frames for `ms` milliseconds, in real time, from each speaker with the
/// level `script(speaker index, t_ms)`.
async fn speak(
    speakers: &[(&synapse_sfu::client::Client, ProducerId)],
    first_seq: u64,
    ms: u64,
    script: impl Fn(usize, u64) -> u8,
) {
    let start = tokio::time::Instant::now();
    for step in 0..ms / 20 {
        let seq = first_seq + step;
        for (i, (client, producer)) in speakers.iter().enumerate() {
            let level = AudioLevel {
                level: script(i, step * 20),
                voice: false,
            };
            client
                .send_audio_with_level(
                    *producer,
                    seq,
                    now_us(),
                    Some(level),
                    &synthetic_payload(seq, 80),
                )
                .expect("audio sent");
        }
        tokio::time::sleep_until(start + Duration::from_millis(20 * (step + 1))).await;
    }
}

/// Every `active_speakers` list received so far, as peer ids.
fn speaker_lists(peer: &mut Peer) -> Vec<Vec<PeerId>> {
    let mut lists = Vec::new();
    while let Ok(event) = peer.incoming.events.try_recv() {
        if let ServerMessage::ActiveSpeakers { speakers } = event {
            lists.push(speakers.iter().map(|s| s.peer_id).collect());
        }
    }
    lists
}

#[tokio::test]
async fn the_room_hears_who_speaks_in_turn_and_quick_turns_do_not_flap() {
    let server = start_relay().await;
    let mut ada = join(&server, "talk", "ada", false).await;
    let mut bo = join(&server, "talk", "bo", false).await;
    let mut cy = join(&server, "talk", "cy", false).await;
    assert!(ada.joined.extensions.iter().any(|e| e == "audio_level"));
    let a = ada.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let b = bo.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let (ida, idb) = (ada.joined.peer_id, bo.joined.peer_id);
    let (ca, cb) = (ada.client.clone(), bo.client.clone());
    let pair = [(&ca, a), (&cb, b)];

    // Ada talks for 1.6 s, then both are silent, then Bo talks.
    speak(&pair, 0, 1600, |i, _| if i == 0 { 18 } else { 127 }).await;
    speak(&pair, 80, 1600, |_, _| 127).await;
    speak(&pair, 160, 1600, |i, _| if i == 1 { 18 } else { 127 }).await;
    speak(&pair, 240, 1600, |_, _| 127).await;
    let heard = speaker_lists(&mut cy);
    assert_eq!(
        heard,
        vec![vec![ida], vec![], vec![idb], vec![]],
        "the listener's sequence"
    );
    // The speakers themselves are told too.
    assert_eq!(speaker_lists(&mut ada), heard);
    speaker_lists(&mut bo);

    // Quick turns of 300 ms for 6 s: both speak, and the list settles instead of flapping.
    speak(&pair, 320, 6000, |i, t| {
        let ada_turn = (t / 300) % 2 == 0;
        if (i == 0) == ada_turn { 20 } else { 127 }
    })
    .await;
    let heard = speaker_lists(&mut cy);
    assert!(
        (1..=3).contains(&heard.len()),
        "{} changes in 6 s: {heard:?}",
        heard.len()
    );
    let mut last = heard.last().unwrap().clone();
    last.sort();
    assert_eq!(last, vec![ida, idb]);

    // A paused producer drops out without waiting for silence.
    ada.client
        .command(synapse_sfu::wire::Request::PauseProducer { producer_id: a })
        .await
        .unwrap();
    speak(&[(&cb, b)], 700, 800, |_, _| 20).await;
    assert_eq!(speaker_lists(&mut cy).last(), Some(&vec![idb]));
}

#[tokio::test]
async fn levels_reach_receivers_that_asked_and_others_get_plain_audio() {
    let server = start_relay().await;
    let ada = join(&server, "levels", "ada", false).await;
    let mut modern = join(&server, "levels", "modern", false).await;
    let mut old_options = options(&server);
    old_options.extensions = Vec::new();
    let mut old = join_with(old_options, "levels", "old", false).await;
    let mic = ada.client.produce(MediaKind::Audio, "opus").await.unwrap();
    modern.client.consume(mic).await.unwrap();
    old.client.consume(mic).await.unwrap();
    speak(&[(&ada.client, mic)], 0, 400, |_, _| 33).await;
    for (peer, expect) in [(&mut modern, Some(33)), (&mut old, None)] {
        let got = collect_until(&mut peer.incoming, Duration::from_secs(3), |r| {
            r.get(&mic).is_some_and(|f| f.len() >= 10)
        })
        .await;
        let frames = &got[&mic];
        assert!(frames.len() >= 10);
        for f in frames {
            assert_eq!(f.header.audio_level.map(|l| l.level), expect);
            assert_eq!(f.payload, synthetic_payload(f.header.seq, 80));
        }
    }
}

#[tokio::test]
async fn chat_reaches_the_room_or_the_named_peer_and_lossy_data_those_that_asked() {
    let server = start_relay().await;
    let ada = join(&server, "chat", "ada", false).await;
    let mut bo = join(&server, "chat", "bo", false).await;
    let mut old_options = options(&server);
    old_options.extensions = Vec::new();
    let mut cy = join_with(old_options, "chat", "cy", false).await;
    let (idb, idc) = (bo.joined.peer_id, cy.joined.peer_id);

    assert_eq!(
        ada.client
            .send_data("hello all", &[], Some("chat"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        ada.client
            .send_data("just you", &[idc], None)
            .await
            .unwrap(),
        1
    );
    let data = |peer: &mut Peer| {
        let mut got = Vec::new();
        while let Ok(event) = peer.incoming.events.try_recv() {
            if let ServerMessage::Data {
                from,
                payload,
                topic,
                ..
            } = event
            {
                got.push((from, payload, topic));
            }
        }
        got
    };
    let ida = ada.joined.peer_id;
    tokio::time::sleep(patient(Duration::from_millis(300))).await;
    assert_eq!(
        data(&mut bo),
        vec![(ida, "hello all".into(), Some("chat".into()))]
    );
    assert_eq!(
        data(&mut cy),
        vec![
            (ida, "hello all".into(), Some("chat".into())),
            (ida, "just you".into(), None)
        ]
    );
    // A refusal names the problem and sends nothing.
    let refused = ada.client.send_data("x", &[PeerId(999_999)], None).await;
    assert!(
        matches!(&refused, Err(synapse_sfu::client::ClientError::Refused(e)) if e.code == ErrorCode::UnknownPeer),
        "{refused:?}"
    );

    // Lossy data: Bo asked for it (the client's default), Cy did not.
    for i in 0..5u8 {
        ada.client.send_lossy_data(&[], &[b'c', i]).unwrap();
    }
    ada.client.send_lossy_data(&[idb], b"to bo").unwrap();
    let mut got = Vec::new();
    while let Ok(Some((from, payload))) = tokio::time::timeout(
        patient(Duration::from_secs(2)),
        bo.incoming.lossy_data.recv(),
    )
    .await
    {
        assert_eq!(from, ida);
        got.push(payload);
        if got.len() == 6 {
            break;
        }
    }
    // Lossy, but loopback loses nothing here.
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(got.last().unwrap().as_ref(), b"to bo");
    assert!(cy.incoming.lossy_data.try_recv().is_err());
    assert_eq!(server.rooms().stats().lossy_data_messages, 6);
}

#[tokio::test]
async fn a_screen_share_is_announced_as_a_screen_and_a_token_can_forbid_it() {
    let server = start_relay().await;
    let ada = join(&server, "screens", "ada", false).await;
    let mut bo = join(&server, "screens", "bo", false).await;
    let screen = ada
        .client
        .produce_source(TrackSource::Screen, "vp8", Default::default())
        .await
        .unwrap();
    let added = wait_event(&mut bo.incoming, Duration::from_secs(2), |e| {
        matches!(e, ServerMessage::ProducerAdded { .. })
    })
    .await;
    let Some(ServerMessage::ProducerAdded { producer }) = added else {
        panic!("no producer_added");
    };
    assert_eq!(producer.producer_id, screen);
    assert_eq!(producer.source, Some(TrackSource::Screen));
    // Frames of a screen flow like any video.
    bo.client.consume(screen).await.unwrap();
    for seq in 0..5 {
        send_video(&ada.client, screen, seq, seq == 0).await;
    }
    let got = collect_until(&mut bo.incoming, Duration::from_secs(3), |r| {
        r.get(&screen).is_some_and(|f| f.len() == 5)
    })
    .await;
    assert_eq!(got[&screen].len(), 5);
}

#[tokio::test]
async fn grants_decide_who_may_share_a_screen_or_send_data() {
    use synapse_sfu::auth::{AccessPolicy, ApiKey};
    use synapse_sfu::server::ServerConfig;
    use synapse_sfu::wire::Grants;
    let key = ApiKey {
        key: "APIconf".into(),
        secret: "conference-secret-that-is-long-enough".into(),
    };
    let server = start_relay_with(ServerConfig {
        access: AccessPolicy::Keys(key.clone()),
        ..test_config()
    })
    .await;
    let grants = Grants {
        sources: vec![TrackSource::Camera, TrackSource::Microphone],
        can_publish_data: false,
        ..Grants::default()
    };
    let token = key
        .mint("g", "u-1", Some("Guest"), Duration::from_secs(60), grants)
        .unwrap();
    let mut options = options(&server);
    options.token = Some(token);
    let guest = join_with(options, "g", "guest", false).await;
    assert!(!guest.joined.grants.can_publish_data);
    fn refusal<T: std::fmt::Debug>(
        r: Result<T, synapse_sfu::client::ClientError>,
    ) -> (ErrorCode, String) {
        match r {
            Err(synapse_sfu::client::ClientError::Refused(e)) => (e.code, e.message),
            Ok(v) => panic!("not refused: {v:?}"),
            Err(e) => panic!("{e}"),
        }
    }
    let (code, message) = refusal(
        guest
            .client
            .produce_source(TrackSource::Screen, "vp8", Default::default())
            .await,
    );
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("screen"), "{message}");
    guest.client.produce(MediaKind::Video, "vp8").await.unwrap();
    let (code, _) = refusal(guest.client.send_data("hi", &[], None).await);
    assert_eq!(code, ErrorCode::Forbidden);
}
