//! Several relays as one deployment, placed through a real redis-server (Debian's
//! `redis-server`, installed by the test command): joins through different relays meet
//! in one call, a dead relay's rooms move within the lease TTL, and Redis going away for
//! a moment drops no call in progress.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use synapse_sfu::client::{Client, ClientOptions, Verification};
use synapse_sfu::server::{Placed, Server};
use synapse_sfu::wire::MediaKind;

async fn join_through(server: &Server, room: &str, name: &str) -> (Peer, String) {
    let mut options: ClientOptions = options(server);
    let (client, incoming, joined) = Client::connect_placed(&mut options, room, name, true)
        .await
        .expect("joins, redirected or not");
    (
        Peer {
            client,
            incoming,
            joined,
        },
        options.url,
    )
}

/// Each peer hears the other's audio.
async fn hear_each_other(a: &mut Peer, b: &mut Peer, server: &Server) {
    let mic_a = a.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let mic_b = b.client.produce(MediaKind::Audio, "opus").await.unwrap();
    wait_for_relay(server, Duration::from_secs(5), |c| c.consumers >= 2).await;
    for seq in 0..20 {
        send_audio(&a.client, mic_a, seq);
        send_audio(&b.client, mic_b, seq);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (peer, from) in [(a, mic_b), (b, mic_a)] {
        let heard = collect_until(&mut peer.incoming, Duration::from_secs(5), |r| {
            r.get(&from).is_some_and(|f| f.len() >= 18)
        })
        .await;
        assert!(heard.get(&from).is_some_and(|f| f.len() >= 18), "{heard:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_joining_through_different_relays_meet_on_the_one_that_hosts_the_room() {
    let redis = Redis::start_on(free_port());
    let one = relay_in(&redis, Duration::from_secs(10), false).await;
    let two = relay_in(&redis, Duration::from_secs(10), false).await;

    let (mut ada, ada_url) = join_through(&one, "standup", "ada").await;
    assert_eq!(
        ada_url,
        one.url(),
        "the first join claims the room where it lands"
    );
    let (mut bo, bo_url) = join_through(&two, "standup", "bo").await;
    assert_eq!(
        bo_url,
        one.url(),
        "the second is redirected to the room's relay"
    );
    assert!(bo.joined.ongoing, "and joins the call going on there");
    assert_eq!(one.rooms().counts().peers, 2);
    assert_eq!(two.rooms().counts().peers, 0);
    hear_each_other(&mut ada, &mut bo, &one).await;

    // A room of its own lands where it is asked for.
    let (_cy, cy_url) = join_through(&two, "retro", "cy").await;
    assert_eq!(cy_url, two.url());

    // The redirect itself is a typed error with the URL, for clients that follow it.
    let (client, _incoming) = Client::connect(ClientOptions::new(
        two.url(),
        Verification::Pin(two.certificate_sha256()),
    ))
    .await
    .unwrap();
    let refused = client.join("standup", "dee", true).await.unwrap_err();
    assert!(
        matches!(&refused, synapse_sfu::client::ClientError::Redirect { url } if *url == one.url()),
        "{refused:?}"
    );

    let status = health(&one).await;
    assert_eq!(status["cluster"]["redis"], "connected", "{status}");
    assert_eq!(status["cluster"]["leases"], 1, "{status}");
    let metrics = http_get(&two, "/metrics").await;
    assert!(metrics.contains("synapse_cluster_leases 1"), "{metrics}");
    assert!(metrics.contains("synapse_cluster_redis_up 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_relays_rooms_move_within_the_lease_ttl() {
    let redis = Redis::start_on(free_port());
    let ttl = Duration::from_millis(1500);
    let one = relay_in(&redis, ttl, false).await;
    let two = relay_in(&redis, ttl, false).await;
    let (_ada, _) = join_through(&one, "town-hall", "ada").await;
    let placement = two.rooms().placement().unwrap().clone();
    assert!(matches!(
        placement.place("town-hall").await,
        Placed::Elsewhere { relay_url, .. } if relay_url == one.url()
    ));

    // The relay dies: no goodbye to Redis, its registration and lease just stop being
    // renewed.
    one.shutdown();
    let died = tokio::time::Instant::now();
    while placement.place("town-hall").await != Placed::Here {
        assert!(
            died.elapsed() < patient(ttl + Duration::from_secs(1)),
            "the room did not move"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(died.elapsed() >= ttl / 2, "moved while its relay was alive");
    let (bo, bo_url) = join_through(&two, "town-hall", "bo").await;
    assert_eq!(bo_url, two.url());
    assert!(
        !bo.joined.ongoing,
        "a new call on the relay that took the room over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_for_a_moment_drops_no_call() {
    let port = free_port();
    let mut redis = Redis::start_on(port);
    let ttl = Duration::from_secs(2);
    let one = relay_in(&redis, ttl, false).await;
    let (mut ada, _) = join_through(&one, "ops", "ada").await;
    let (mut bo, _) = join_through(&one, "ops", "bo").await;

    redis.stop();
    // Past the lease's lifetime: by its own clock the relay no longer holds it.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    hear_each_other(&mut ada, &mut bo, &one).await;
    let status = health(&one).await;
    assert_eq!(status["cluster"]["redis"], "unreachable", "{status}");
    // A join to the room it hosts is still admitted.
    let (cy, cy_url) = join_through(&one, "ops", "cy").await;
    assert_eq!(cy_url, one.url());
    assert!(cy.joined.ongoing);

    // Redis back (empty: it kept nothing): the relay registers and claims its room again.
    let _redis = Redis::start_on(port);
    let back = tokio::time::Instant::now();
    loop {
        let status = health(&one).await;
        if status["cluster"]["redis"] == "connected" && status["cluster"]["leases"] == 1 {
            break;
        }
        assert!(
            back.elapsed() < patient(ttl * 2),
            "the relay did not claim its room again: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(one.rooms().counts().peers, 3);
}
