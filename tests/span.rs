//! A room that spans relays (docs/CLUSTER.md): relays started with `span_rooms` admit a
//! join for a room another relay hosts and mirror the room from it, instead of
//! redirecting. Real relays on 127.0.0.1 sharing a real redis-server; real clients.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::simulcast::*;
use common::*;
use synapse_sfu::auth::{AccessPolicy, ApiKey};
use synapse_sfu::client::{Client, ClientError};
use synapse_sfu::server::Server;
use synapse_sfu::wire::{
    ErrorCode, Grants, MediaKind, PeerId, ProducerId, RelayJoin, Request, ServerMessage,
};

async fn relay_id(server: &Server) -> String {
    health(server).await["cluster"]["relay_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until `peer` has been told that `who` joined (or was already there at its join).
async fn sees_peer(peer: &mut Peer, who: PeerId) -> synapse_sfu::wire::PeerInfo {
    if let Some(info) = peer.joined.peers.iter().find(|p| p.peer_id == who) {
        return info.clone();
    }
    match wait_event(
        &mut peer.incoming,
        Duration::from_secs(5),
        |e| matches!(e, ServerMessage::PeerJoined { peer } if peer.peer_id == who),
    )
    .await
    {
        Some(ServerMessage::PeerJoined { peer }) => peer,
        other => panic!("peer {who:?} never seen: {other:?}"),
    }
}

/// Waits until `peer` has been told that `who` left (`why`: what made it leave, for the
/// failure message).
async fn sees_leave(peer: &mut Peer, who: PeerId, why: &str) {
    let left = wait_event(
        &mut peer.incoming,
        Duration::from_secs(5),
        |e| matches!(e, ServerMessage::PeerLeft { peer_id, .. } if *peer_id == who),
    )
    .await;
    assert!(left.is_some(), "{} was not told {why}", peer.joined.name);
}

/// Every peer hears every other peer's audio, across relays.
async fn all_hear_each_other(peers: &mut [(&mut Peer, ProducerId)], from_seq: u64) {
    for seq in from_seq..from_seq + 30 {
        for (peer, mic) in peers.iter() {
            send_audio(&peer.client, *mic, seq);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mics: Vec<ProducerId> = peers.iter().map(|(_, mic)| *mic).collect();
    for (peer, own) in peers.iter_mut() {
        let others: Vec<ProducerId> = mics.iter().copied().filter(|m| m != own).collect();
        let heard = collect_until(&mut peer.incoming, Duration::from_secs(5), |r| {
            others
                .iter()
                .all(|m| r.get(m).is_some_and(|f| f.len() >= 25))
        })
        .await;
        for m in &others {
            assert!(
                heard.get(m).is_some_and(|f| f.len() >= 25),
                "{} heard too little of {m:?}: {:?}",
                peer.joined.name,
                heard.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_three_relays_with_one_pull_per_producer_per_relay() {
    let redis = Redis::start_on(free_port());
    let ttl = Duration::from_secs(3);
    let one = relay_in(&redis, ttl, true).await;
    let two = relay_in(&redis, ttl, true).await;
    let three = relay_in(&redis, ttl, true).await;
    let (id_one, id_two) = (relay_id(&one).await, relay_id(&two).await);

    // The first join claims the room: relay one is its origin.
    let mut ada = join(&one, "all-hands", "ada", true).await;
    assert!(!ada.joined.ongoing);
    let mic_a = ada.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let cam_a = ada.client.produce(MediaKind::Video, "vp8").await.unwrap();

    // Joins at the other relays stay there (no redirect) and find the call going on, with
    // the same ids as on the origin.
    let mut bo = join(&two, "all-hands", "bo", true).await;
    assert!(bo.joined.ongoing, "the call on relay one is seen from two");
    let ada_from_two = sees_peer(&mut bo, ada.joined.peer_id).await;
    assert_eq!(ada_from_two.name, "ada");
    assert_eq!(ada_from_two.relay.as_deref(), Some(id_one.as_str()));
    let mut producers: Vec<ProducerId> = ada_from_two
        .producers
        .iter()
        .map(|p| p.producer_id)
        .collect();
    producers.sort();
    assert_eq!(producers, vec![mic_a, cam_a]);
    let mic_b = bo.client.produce(MediaKind::Audio, "opus").await.unwrap();

    let mut cy = join(&three, "all-hands", "cy", true).await;
    let bo_from_three = sees_peer(&mut cy, bo.joined.peer_id).await;
    assert_eq!(
        bo_from_three.relay.as_deref(),
        Some(id_two.as_str()),
        "a peer of relay two, seen from three through the origin"
    );
    sees_peer(&mut cy, ada.joined.peer_id).await;
    let mic_c = cy.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let bo_from_one = sees_peer(&mut ada, bo.joined.peer_id).await;
    assert_eq!(bo_from_one.relay.as_deref(), Some(id_two.as_str()));
    sees_peer(&mut ada, cy.joined.peer_id).await;

    // Give the mirrors a moment to start pulling, then talk.
    tokio::time::sleep(Duration::from_millis(500)).await;
    all_hear_each_other(
        &mut [(&mut ada, mic_a), (&mut bo, mic_b), (&mut cy, mic_c)],
        0,
    )
    .await;

    // Video crosses too: a keyframe from ada reaches cy through the origin's link.
    for seq in 0..10 {
        send_video(&ada.client, cam_a, seq, seq == 0).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = collect_until(&mut cy.incoming, Duration::from_secs(5), |r| {
        r.get(&cam_a).is_some_and(|f| f.len() >= 10)
    })
    .await;
    let frames = seen.get(&cam_a).expect("video from another relay");
    assert_eq!(frames[0].payload, expected_video(0, true));

    // One pull per remote producer per relay: relay two pulls ada's two and cy's one.
    let status = health(&two).await;
    let links = &status["cluster"]["links"];
    assert_eq!(links.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(links[0]["pulled_producers"], 3, "{status}");
    assert_eq!(links[0]["proxied_peers"], 2, "{status}");
    assert_eq!(links[0]["shadows"], 1, "{status}");
    assert_eq!(
        status["peers"], 1,
        "bo alone is connected to relay two: {status}"
    );
    assert_eq!(
        health(&one).await["peers"],
        1,
        "ada alone is connected to relay one"
    );
    // On the origin, ada's microphone has one consumer per other relay, whoever
    // listens there: bo's relay and cy's relay, and nobody else (ada is there).
    let consumers = one
        .rooms()
        .room("all-hands")
        .unwrap()
        .lock()
        .producer_consumers(mic_a);
    assert_eq!(consumers, Some(2), "one pull per relay");
    let metrics = http_get(&three, "/metrics").await;
    assert!(metrics.contains("synapse_cluster_links 1"), "{metrics}");
    assert!(
        metrics.contains("synapse_cluster_pulled_producers 3"),
        "{metrics}"
    );

    // A keyframe request from a subscriber on relay three reaches the publisher on one.
    let cy_consumer = three
        .rooms()
        .peer_consumers(cy.joined.peer_id)
        .into_iter()
        .find(|(_, p)| *p == cam_a)
        .map(|(c, _)| c)
        .expect("cy consumes ada's camera");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    while ada.incoming.events.try_recv().is_ok() {}
    cy.client
        .command(Request::RequestKeyframe {
            consumer_id: cy_consumer,
        })
        .await
        .unwrap();
    let asked = wait_event(&mut ada.incoming, Duration::from_secs(5), |e| {
        matches!(e, ServerMessage::KeyframeRequest { producer_id, .. } if *producer_id == cam_a)
    })
    .await;
    assert!(
        asked.is_some(),
        "the keyframe request travelled up to the publisher"
    );

    // Pausing travels down to every relay.
    ada.client
        .command(Request::PauseProducer { producer_id: cam_a })
        .await
        .unwrap();
    for peer in [&mut bo, &mut cy] {
        let paused = wait_event(
            &mut peer.incoming,
            Duration::from_secs(5),
            |e| matches!(e, ServerMessage::ProducerPaused { producer_id } if *producer_id == cam_a),
        )
        .await;
        assert!(
            paused.is_some(),
            "{} was not told of the pause",
            peer.joined.name
        );
    }

    // A peer that leaves one relay leaves the room everywhere.
    let bo_id = bo.joined.peer_id;
    bo.client.leave().await.unwrap();
    for peer in [&mut ada, &mut cy] {
        sees_leave(peer, bo_id, "bo left").await;
    }

    // A relay that dies takes only its own peers: the others are told, and go on.
    let cy_id = cy.joined.peer_id;
    three.shutdown();
    sees_leave(&mut ada, cy_id, "cy's relay died").await;
    let mut dee = join(&two, "all-hands", "dee", true).await;
    let mic_d = dee.client.produce(MediaKind::Audio, "opus").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    all_hear_each_other(&mut [(&mut ada, mic_a), (&mut dee, mic_d)], 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_origin_dies_the_room_moves_and_the_rest_of_the_call_goes_on() {
    let redis = Redis::start_on(free_port());
    let ttl = Duration::from_millis(1500);
    let one = relay_in(&redis, ttl, true).await;
    let two = relay_in(&redis, ttl, true).await;
    let three = relay_in(&redis, ttl, true).await;
    let ada = join(&one, "town-hall", "ada", true).await;
    let mut bo = join(&two, "town-hall", "bo", true).await;
    let mut cy = join(&three, "town-hall", "cy", true).await;
    sees_peer(&mut bo, cy.joined.peer_id).await;
    sees_peer(&mut cy, bo.joined.peer_id).await;
    let mic_b = bo.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let mic_c = cy.client.produce(MediaKind::Audio, "opus").await.unwrap();

    // The origin dies without a word to Redis.
    let ada_id = ada.joined.peer_id;
    one.shutdown();
    for peer in [&mut bo, &mut cy] {
        sees_leave(peer, ada_id, "ada's relay died").await;
    }
    // Within the lease's TTL the room is hosted by one of the two left, mirrored by the
    // other, and bo and cy meet again (each sees the other come back).
    sees_peer_again(&mut bo, cy.joined.peer_id, ttl).await;
    sees_peer_again(&mut cy, bo.joined.peer_id, ttl).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    all_hear_each_other(&mut [(&mut bo, mic_b), (&mut cy, mic_c)], 0).await;
    let links = health(&two).await["cluster"]["links"]
        .as_array()
        .unwrap()
        .len()
        + health(&three).await["cluster"]["links"]
            .as_array()
            .unwrap()
            .len();
    assert_eq!(
        links, 1,
        "one relay hosts the room now, the other mirrors it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_takes_its_mirror_down_with_its_last_peer_and_sets_it_up_for_the_next() {
    let redis = Redis::start_on(free_port());
    let ttl = Duration::from_secs(3);
    let one = relay_in(&redis, ttl, true).await;
    let two = relay_in(&redis, ttl, true).await;
    let mut ada = join(&one, "drop-in", "ada", true).await;
    let bo = join(&two, "drop-in", "bo", true).await;
    let bo_id = bo.joined.peer_id;
    sees_peer(&mut ada, bo_id).await;
    let links = |status: serde_json::Value| status["cluster"]["links"].as_array().unwrap().len();
    assert_eq!(links(health(&two).await), 1);

    // Bo leaves (its shadow leaves the origin: ada is told), and half a second later
    // relay two mirrors nothing.
    bo.client.leave().await.unwrap();
    sees_leave(&mut ada, bo_id, "bo left").await;
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(5));
    while links(health(&two).await) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay two kept its mirror"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The next join at relay two mirrors the room again, and the call is whole.
    let mut cy = join(&two, "drop-in", "cy", true).await;
    assert_eq!(sees_peer(&mut cy, ada.joined.peer_id).await.name, "ada");
    assert_eq!(sees_peer(&mut ada, cy.joined.peer_id).await.name, "cy");
    let mic_a = ada.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let mic_c = cy.client.produce(MediaKind::Audio, "opus").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    all_hear_each_other(&mut [(&mut ada, mic_a), (&mut cy, mic_c)], 0).await;
    assert_eq!(links(health(&two).await), 1);
}

/// After the origin died, `who` (on a relay that survived) leaves and joins again as the
/// room is mirrored anew.
async fn sees_peer_again(peer: &mut Peer, who: PeerId, ttl: Duration) {
    let back = wait_event(
        &mut peer.incoming,
        ttl + Duration::from_secs(5),
        |e| matches!(e, ServerMessage::PeerJoined { peer } if peer.peer_id == who),
    )
    .await;
    assert!(
        back.is_some(),
        "{} never saw {who:?} again",
        peer.joined.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_relays_join_each_other_by_their_shared_key_and_nobody_else_can() {
    let key = ApiKey {
        key: "cluster".into(),
        secret: "a shared secret of the cluster's relays".into(),
    };
    let redis = Redis::start_on(free_port());
    let ttl = Duration::from_secs(3);
    let one = relay_in_with(&redis, ttl, true, AccessPolicy::Keys(key.clone())).await;
    let two = relay_in_with(&redis, ttl, true, AccessPolicy::Keys(key.clone())).await;
    let joiner = |server: &Server, identity: &str| {
        let mut options = options(server);
        options.token = Some(
            key.mint(
                "keyed",
                identity,
                Some(identity),
                Duration::from_secs(60),
                Grants::default(),
            )
            .unwrap(),
        );
        options
    };
    let mut ada = join_with(joiner(&one, "ada"), "keyed", "ada", true).await;
    let mut bo = join_with(joiner(&two, "bo"), "keyed", "bo", true).await;
    assert_eq!(sees_peer(&mut bo, ada.joined.peer_id).await.name, "ada");
    // Bo's shadow on relay one joined with relay two's token, under bo's own name.
    assert_eq!(sees_peer(&mut ada, bo.joined.peer_id).await.name, "bo");
    let mic_a = ada.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let mic_b = bo.client.produce(MediaKind::Audio, "opus").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    all_hear_each_other(&mut [(&mut ada, mic_a), (&mut bo, mic_b)], 0).await;

    // An operator of the origin removes bo, who is connected to relay two: bo is told why
    // there, and ada sees bo leave.
    let admin = key.mint_admin("ops", Duration::from_secs(60)).unwrap();
    let bo_id = bo.joined.peer_id;
    let (status, body) = http_request(
        &one,
        "DELETE",
        &format!("/admin/peers/{bo_id}"),
        Some(&admin),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let kicked = wait_event(&mut bo.incoming, Duration::from_secs(5), |e| {
        matches!(e, ServerMessage::Error { .. })
    })
    .await;
    assert!(
        matches!(
            &kicked,
            Some(ServerMessage::Error {
                code: ErrorCode::Kicked,
                ..
            })
        ),
        "{kicked:?}"
    );
    sees_leave(&mut ada, bo_id, "bo left").await;

    // A client's token has no relay grant: it cannot pose as a relay.
    let (client, _incoming) = Client::connect(joiner(&one, "mallory")).await.unwrap();
    let refused = client
        .join_as(
            "keyed",
            "mallory",
            false,
            Some(RelayJoin {
                relay: "fake".into(),
                peer_id: Some(ada.joined.peer_id),
            }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Refused(e) if e.code == ErrorCode::Forbidden),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_for_a_moment_drops_no_call_across_relays() {
    let port = free_port();
    let mut redis = Redis::start_on(port);
    let ttl = Duration::from_secs(2);
    let one = relay_in(&redis, ttl, true).await;
    let two = relay_in(&redis, ttl, true).await;
    let mut ada = join(&one, "ops", "ada", true).await;
    let mut bo = join(&two, "ops", "bo", true).await;
    sees_peer(&mut ada, bo.joined.peer_id).await;
    let mic_a = ada.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let mic_b = bo.client.produce(MediaKind::Audio, "opus").await.unwrap();

    // Redis gone for longer than a lease lives: the mirror needs none of it.
    redis.stop();
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    all_hear_each_other(&mut [(&mut ada, mic_a), (&mut bo, mic_b)], 0).await;
    assert_eq!(health(&two).await["cluster"]["links"][0]["shadows"], 1);

    // Redis back, empty: the origin claims its room again, the mirror stays as it is.
    let _redis = Redis::start_on(port);
    let back = tokio::time::Instant::now();
    while health(&one).await["cluster"]["leases"] != 1 {
        assert!(
            back.elapsed() < patient(ttl * 2),
            "the room was not claimed again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all_hear_each_other(&mut [(&mut ada, mic_a), (&mut bo, mic_b)], 100).await;
}

/// Waits for data from `from` with `payload`; then makes sure no second copy follows.
async fn hears_data_once(peer: &mut Peer, from: PeerId, payload: &str) {
    let is_it = |e: &ServerMessage| matches!(e, ServerMessage::Data { from: f, payload: p, .. } if *f == from && p == payload);
    let heard = wait_event(&mut peer.incoming, Duration::from_secs(5), is_it).await;
    assert!(
        heard.is_some(),
        "{} never got {payload:?}",
        peer.joined.name
    );
    let again = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(event) = peer.incoming.events.recv().await {
            if is_it(&event) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        !matches!(again, Ok(true)),
        "{} got {payload:?} twice",
        peer.joined.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_messages_cross_relays_once_to_everyone_or_to_one() {
    let redis = Redis::start_on(free_port());
    let ttl = Duration::from_secs(3);
    let one = relay_in(&redis, ttl, true).await;
    let two = relay_in(&redis, ttl, true).await;
    let three = relay_in(&redis, ttl, true).await;
    let mut ada = join(&one, "chat", "ada", false).await;
    let mut bo = join(&two, "chat", "bo", false).await;
    let mut cy = join(&three, "chat", "cy", false).await;
    let (a, b, c) = (ada.joined.peer_id, bo.joined.peer_id, cy.joined.peer_id);
    for (peer, others) in [(&mut ada, [b, c]), (&mut bo, [a, c]), (&mut cy, [a, b])] {
        for other in others {
            sees_peer(peer, other).await;
        }
    }

    // From the origin to everyone; from an edge to everyone.
    ada.client
        .send_data("hello from one", &[], None)
        .await
        .unwrap();
    hears_data_once(&mut bo, a, "hello from one").await;
    hears_data_once(&mut cy, a, "hello from one").await;
    cy.client
        .send_data("hello from three", &[], Some("chat"))
        .await
        .unwrap();
    hears_data_once(&mut ada, c, "hello from three").await;
    hears_data_once(&mut bo, c, "hello from three").await;

    // From an edge to a peer of the other edge (through the origin), and to the origin's.
    bo.client.send_data("just cy", &[c], None).await.unwrap();
    hears_data_once(&mut cy, b, "just cy").await;
    bo.client.send_data("just ada", &[a], None).await.unwrap();
    // Ada gets hers, and nothing of bo's message to cy before it (data keeps its order).
    let mut before = Vec::new();
    let heard = wait_event(&mut ada.incoming, Duration::from_secs(5), |e| match e {
        ServerMessage::Data { payload, .. } if payload == "just ada" => true,
        ServerMessage::Data { payload, .. } => {
            before.push(payload.clone());
            false
        }
        _ => false,
    })
    .await;
    assert!(heard.is_some(), "ada never got bo's message");
    assert!(
        !before.iter().any(|p| p == "just cy"),
        "ada got data meant for cy: {before:?}"
    );
}

/// Sends five lossy data datagrams tagged `tag` from `sender` to `to` (empty: everyone),
/// 50 ms apart, then checks that each of `hearers` got at least three of them (datagrams
/// may be lost; on loopback they seldom are), none twice and all from `sender`, and that
/// none of `deaf` got any.
async fn lossy_reaches(
    sender: &Peer,
    to: &[PeerId],
    tag: &str,
    hearers: &mut [&mut Peer],
    deaf: &mut [&mut Peer],
) {
    let from = sender.joined.peer_id;
    for i in 0..5 {
        let payload = format!("{tag}#{i}");
        sender
            .client
            .send_lossy_data(to, payload.as_bytes())
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let heard_by = |peer: &mut Peer| {
        let mut heard = Vec::new();
        while let Ok((sent_by, payload)) = peer.incoming.lossy_data.try_recv() {
            let payload = String::from_utf8_lossy(&payload).into_owned();
            if payload.starts_with(&format!("{tag}#")) {
                assert_eq!(sent_by, from, "{payload} from the wrong peer");
                heard.push(payload);
            }
        }
        heard
    };
    for peer in hearers.iter_mut() {
        let heard = heard_by(peer);
        let mut once = heard.clone();
        once.sort();
        once.dedup();
        assert_eq!(
            once.len(),
            heard.len(),
            "{} got a copy twice: {heard:?}",
            peer.joined.name
        );
        assert!(
            heard.len() >= 3,
            "{} got {heard:?} of five {tag}",
            peer.joined.name
        );
    }
    for peer in deaf.iter_mut() {
        let heard = heard_by(peer);
        assert!(
            heard.is_empty(),
            "{} got {heard:?}, meant for others",
            peer.joined.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_data_crosses_relays_once_to_everyone_or_to_one() {
    let redis = Redis::start_on(free_port());
    let ttl = Duration::from_secs(3);
    let one = relay_in(&redis, ttl, true).await;
    let two = relay_in(&redis, ttl, true).await;
    let three = relay_in(&redis, ttl, true).await;
    // Ada's relay hosts the room; bo and cy are on two edges.
    let mut ada = join(&one, "huddle", "ada", false).await;
    let mut bo = join(&two, "huddle", "bo", false).await;
    let mut cy = join(&three, "huddle", "cy", false).await;
    let mut dee = join(&three, "huddle", "dee", false).await;
    let (a, b, c, d) = (
        ada.joined.peer_id,
        bo.joined.peer_id,
        cy.joined.peer_id,
        dee.joined.peer_id,
    );
    for (peer, others) in [
        (&mut ada, [b, c, d]),
        (&mut bo, [a, c, d]),
        (&mut cy, [a, b, d]),
        (&mut dee, [a, b, c]),
    ] {
        for other in others {
            sees_peer(peer, other).await;
        }
    }

    // To everyone: from the origin, and from an edge (its neighbour on the same edge
    // hears it there, the others through the origin), each copy once.
    let everyone = "from-ada";
    lossy_reaches(
        &ada,
        &[],
        everyone,
        &mut [&mut bo, &mut cy, &mut dee],
        &mut [],
    )
    .await;
    lossy_reaches(
        &cy,
        &[],
        "from-cy",
        &mut [&mut ada, &mut bo, &mut dee],
        &mut [],
    )
    .await;
    // To one peer: edge to edge through the origin, edge to origin, origin to edge, and
    // to two on another edge; nobody else hears it.
    let to_cy = "bo-to-cy";
    lossy_reaches(&bo, &[c], to_cy, &mut [&mut cy], &mut [&mut ada, &mut dee]).await;
    let to_ada = "bo-to-ada";
    lossy_reaches(&bo, &[a], to_ada, &mut [&mut ada], &mut [&mut cy, &mut dee]).await;
    let to_bo = "ada-to-bo";
    lossy_reaches(&ada, &[b], to_bo, &mut [&mut bo], &mut [&mut cy, &mut dee]).await;
    let two = "dee-to-bo-and-cy";
    lossy_reaches(&dee, &[b, c], two, &mut [&mut bo, &mut cy], &mut [&mut ada]).await;
}

/// [`tiles`] in `room`: the publisher on `publisher_on`, the viewers on `viewers_on`;
/// what the viewers got.
async fn simulcast_tiles(
    room: &str,
    publisher_on: &Server,
    viewers_on: &Server,
    publisher_first: bool,
) -> (Vec<Got>, Vec<Got>) {
    // Whoever joins first places the room: its relay is the origin.
    let (publisher_peer, big, small) = if publisher_first {
        let p = join(publisher_on, room, "publisher", false).await;
        let big = join(viewers_on, room, "big", true).await;
        (p, big, join(viewers_on, room, "small", true).await)
    } else {
        let big = join(viewers_on, room, "big", true).await;
        let small = join(viewers_on, room, "small", true).await;
        let p = join(publisher_on, room, "publisher", false).await;
        (p, big, small)
    };
    let got = tiles(room, publisher_peer, big, small).await;
    let big = got.big.lock().await.clone();
    let small = got.small.lock().await.clone();
    (big, small)
}

/// The layers of the last 30 frames, in order and without repeats.
fn last_layers(frames: &[Got]) -> Vec<u8> {
    let mut layers: Vec<u8> = frames[frames.len() - 30..]
        .iter()
        .map(|g| g.layer)
        .collect();
    layers.dedup();
    layers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_layers_cross_relays_and_each_viewer_gets_its_own() {
    let redis = Redis::start_on(free_port());
    let ttl = Duration::from_secs(3);
    let one = relay_in(&redis, ttl, true).await;
    let two = relay_in(&redis, ttl, true).await;
    // Down a link: the publisher on the origin, the viewers on an edge. Up a shadow: the
    // publisher on an edge, the viewers on the origin. In each, a layer neither viewer
    // needs stops at the publisher (dynacast across the link).
    let (down, up) = tokio::join!(
        simulcast_tiles("down", &one, &two, true),
        simulcast_tiles("up", &two, &one, false),
    );
    for (room, (big, small)) in [("down", down), ("up", up)] {
        assert_eq!(last_layers(&big), vec![2], "{room}: the full tile's layers");
        assert_eq!(
            last_layers(&small),
            vec![0],
            "{room}: the thumbnail's layers"
        );
        assert!(
            increasing(&big) && increasing(&small),
            "{room}: seq goes back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_admitted_while_the_mirror_is_set_up_each_get_one_shadow() {
    let redis = Redis::start_on(free_port());
    let ttl = Duration::from_secs(3);
    let one = relay_in(&redis, ttl, true).await;
    let two = relay_in(&redis, ttl, true).await;
    // The origin's peers publish several producers, so the mirror's set-up (one pull per
    // producer, a round trip each) takes a while.
    let mut hosts = Vec::new();
    for i in 0..10 {
        let host = join(&one, "town-hall", &format!("host {i}"), false).await;
        host.client.produce(MediaKind::Audio, "opus").await.unwrap();
        host.client.produce(MediaKind::Video, "vp8").await.unwrap();
        hosts.push(host);
    }

    // Guests arrive at relay two one every 10 ms: the first sets the mirror up, and those
    // that come while it is being set up are admitted at once, some before its uplink
    // joined the room here and some after.
    const GUESTS: usize = 30;
    let guests: Vec<Peer> = futures_util::future::join_all((0..GUESTS).map(|i| {
        let two = &two;
        async move {
            tokio::time::sleep(Duration::from_millis(10 * i as u64)).await;
            join(two, "town-hall", &format!("guest {i}"), true).await
        }
    }))
    .await;

    // Each has exactly one shadow on the origin, and keeps it.
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(5));
    while shadows_on(&one, "town-hall", "guest") != GUESTS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {GUESTS} guests mirrored on the origin",
            shadows_on(&one, "town-hall", "guest")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        shadows_on(&one, "town-hall", "guest"),
        GUESTS,
        "a shadow went away"
    );
    let links = health(&two).await["cluster"]["links"].clone();
    assert_eq!(links[0]["shadows"], GUESTS, "{links}");
    drop(guests);
}
