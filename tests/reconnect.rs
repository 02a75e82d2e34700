//! Reconnecting over real QUIC: a peer whose path dies (the project's shaper dropping
//! everything) comes back in the same place, and a relay that restarts is joined anew.

mod common;

use std::time::Duration;

use common::*;
use synapse_sfu::client::join::{self, JoinEvent, JoinOptions};
use synapse_sfu::client::{ClientOptions, Verification};
use synapse_sfu::server::{Server, ServerConfig};
use synapse_sfu::shaper::{LinkConfig, Shaper, ShaperConfig};
use synapse_sfu::wire::{MediaKind, ServerMessage};

fn join_options(client: ClientOptions, name: &str, seconds: u64) -> JoinOptions {
    JoinOptions {
        client,
        room: "again".into(),
        name: name.into(),
        video: None,
        audio: None,
        no_publish: false,
        video_bitrate: 300_000,
        video_fps: 15,
        keyframe_interval: Duration::from_secs(2),
        duration: Some(Duration::from_secs(seconds)),
        live_stats: false,
        simulcast: false,
        max_resolution: None,
        max_layer: None,
        speech: None,
        chat: None,
        reconnect: true,
    }
}

/// Frames and events a plain client saw, until `until`.
async fn watch(
    peer: &mut Peer,
    until: tokio::time::Instant,
) -> (Vec<ServerMessage>, Vec<synapse_sfu::client::ReceivedFrame>) {
    let (mut events, mut frames) = (Vec::new(), Vec::new());
    loop {
        tokio::select! {
            e = peer.incoming.events.recv() => match e {
                Some(e) => events.push(e),
                None => break,
            },
            f = peer.incoming.frames.recv() => match f {
                Some(f) => frames.push(f),
                None => break,
            },
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    (events, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_path_dies_for_seconds_comes_back_in_the_same_place() {
    let server = start_relay().await;
    let shaper = Shaper::start(ShaperConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: server.local_addr(),
        up: LinkConfig::default(),
        down: LinkConfig::default(),
        seed: 5,
    })
    .await
    .unwrap();
    let through_shaper = ClientOptions::new(
        format!("https://127.0.0.1:{}/", shaper.local_addr().port()),
        Verification::Pin(server.certificate_sha256().to_owned()),
    );
    let mut bo = join_with(options(&server), "again", "bo", true).await;
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let ada = tokio::spawn(join::run(
        join_options(through_shaper, "ada", 20),
        events_tx,
    ));

    // Ada publishes; then her path drops every packet for 7 s.
    wait_for_relay(&server, Duration::from_secs(5), |c| c.producers == 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dead = LinkConfig {
        loss: 1.0,
        ..LinkConfig::default()
    };
    shaper.reconfigure(dead, dead).unwrap();
    let cut_at = tokio::time::Instant::now();
    let (before, frames_before) = watch(&mut bo, cut_at + Duration::from_secs(7)).await;
    shaper
        .reconfigure(LinkConfig::default(), LinkConfig::default())
        .unwrap();
    let (after, frames_after) = watch(&mut bo, cut_at + Duration::from_secs(13)).await;
    let summary = ada.await.unwrap().unwrap();

    // Ada noticed, reconnected once, and kept her id.
    let mut ada_events = Vec::new();
    while let Ok(e) = events_rx.try_recv() {
        ada_events.push(e);
    }
    assert!(
        ada_events
            .iter()
            .any(|e| matches!(e, JoinEvent::Reconnected { resumed: true })),
        "{ada_events:?}"
    );
    assert_eq!(summary.reconnects, 1, "{ada_events:?}");
    let seen: Vec<&ServerMessage> = before.iter().chain(&after).collect();
    // Bo saw an interruption and a return, never a departure or a new peer.
    assert!(
        seen.iter().any(
            |e| matches!(e, ServerMessage::PeerResumed { peer_id } if *peer_id == summary.peer_id)
        ),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            ServerMessage::PeerLeft { .. } | ServerMessage::ProducerClosed { .. }
        )),
        "{seen:?}"
    );
    let joins = seen
        .iter()
        .filter(|e| matches!(e, ServerMessage::PeerJoined { .. }))
        .count();
    assert_eq!(joins, 1, "only Ada's first join: {seen:?}");
    // Ada's producers kept their ids, and her media reached Bo again after the cut, each
    // producer's seq still increasing.
    let sent: Vec<_> = summary.sent.iter().map(|t| t.producer_id).collect();
    assert_eq!(sent.len(), 2);
    for kind in [MediaKind::Audio, MediaKind::Video] {
        let id = summary
            .sent
            .iter()
            .find(|t| t.kind == kind)
            .unwrap()
            .producer_id;
        let before: Vec<u64> = frames_before
            .iter()
            .filter(|f| f.producer_id == id)
            .map(|f| f.header.seq)
            .collect();
        let after: Vec<u64> = frames_after
            .iter()
            .filter(|f| f.producer_id == id)
            .map(|f| f.header.seq)
            .collect();
        assert!(
            before.len() > 10,
            "{kind:?} before the cut: {}",
            before.len()
        );
        assert!(
            after.len() > 10,
            "{kind:?} after the return: {}",
            after.len()
        );
        assert!(
            after.first() > before.last(),
            "{kind:?}: seq went on from {:?} to {:?}",
            before.last(),
            after.first()
        );
    }
    bo.client.leave().await.unwrap();
    wait_for_relay(&server, Duration::from_secs(5), |c| c.peers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_a_relay_that_restarts_join_it_anew_and_the_call_goes_on() {
    let certs = temp_dir("restart-certs");
    let config = ServerConfig {
        certs_dir: certs.clone(),
        ..test_config()
    };
    let server = start_relay_with(config.clone()).await;
    let addr = server.local_addr();
    let hash = server.certificate_sha256().to_owned();
    let client = || ClientOptions::new(format!("https://{addr}/"), Verification::Pin(hash.clone()));
    let (ada_tx, mut ada_events) = tokio::sync::mpsc::unbounded_channel();
    let (bo_tx, _bo_events) = tokio::sync::mpsc::unbounded_channel();
    let ada = tokio::spawn(join::run(join_options(client(), "ada", 14), ada_tx));
    let bo = tokio::spawn(join::run(join_options(client(), "bo", 14), bo_tx));
    wait_for_relay(&server, Duration::from_secs(5), |c| c.consumers == 4).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The relay stops and comes back on the same port with the same identity.
    server.shutdown_gracefully(Duration::ZERO).await;
    drop(server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = Server::start(ServerConfig {
        bind: addr,
        ..config
    })
    .await
    .expect("the relay starts again on its port");
    assert_eq!(again.certificate_sha256(), hash);
    // Both are back in one call, each receiving the other's two tracks.
    wait_for_relay(&again, Duration::from_secs(15), |c| {
        c.peers == 2 && c.consumers == 4
    })
    .await;
    // Media flows in the new call: frames go out to both.
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(5));
    while again.rooms().stats().frames_out < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no media after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ada, bo) = (ada.await.unwrap().unwrap(), bo.await.unwrap().unwrap());
    assert_eq!(ada.reconnects, 1);
    assert_eq!(bo.reconnects, 1);
    let mut rejoined = false;
    while let Ok(e) = ada_events.try_recv() {
        rejoined |= matches!(e, JoinEvent::Reconnected { resumed: false });
    }
    assert!(rejoined, "the restarted relay had no place to resume");
}
