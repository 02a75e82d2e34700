//! Webhooks received by real local HTTP servers: signatures verified, each room's events in
//! order and each once, a failing receiver retried until it answers.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use synapse_sfu::auth::{AccessPolicy, ApiKey};
use synapse_sfu::server::ServerConfig;
use synapse_sfu::server::webhook::{WebhookEvent, verify};
use synapse_sfu::wire::{Grants, MediaKind};

/// An `Authorization` header and the body it signs.
type Delivery = (String, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver {
    /// (Authorization header, body) of every POST that was answered 200.
    got: Arc<Mutex<Vec<Delivery>>>,
    /// Answer 500 to this many POSTs first.
    fail_first: Arc<Mutex<u32>>,
    attempts: Arc<Mutex<u32>>,
    /// Hold the first POST this long before answering.
    delay_first: Arc<Mutex<Option<Duration>>>,
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    *r.attempts.lock().unwrap() += 1;
    let delay = r.delay_first.lock().unwrap().take();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    {
        let mut fail = r.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    r.got.lock().unwrap().push((auth, body.to_vec()));
    StatusCode::OK
}

async fn start_receiver(fail_first: u32) -> (Receiver, SocketAddr) {
    let receiver = Receiver::default();
    *receiver.fail_first.lock().unwrap() = fail_first;
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (receiver, addr)
}

fn key() -> ApiKey {
    ApiKey {
        key: "APIhooks".into(),
        secret: "webhook-secret-that-is-long-enough-1".into(),
    }
}

/// The verified events a receiver got, in arrival order.
fn verified(receiver: &Receiver) -> Vec<WebhookEvent> {
    receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(auth, body)| verify(&key(), auth, body).expect("a valid signature"))
        .collect()
}

async fn wait_for_finish(receiver: &Receiver, room: &str) -> Vec<WebhookEvent> {
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(15));
    loop {
        let events = verified(receiver);
        if events
            .iter()
            .any(|e| e.room == room && e.event == "room_finished")
        {
            return events.into_iter().filter(|e| e.room == room).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no room_finished: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_events_arrive_signed_in_order_once_each_and_failures_are_retried() {
    let (good, good_addr) = start_receiver(0).await;
    let (flaky, flaky_addr) = start_receiver(2).await;
    let server = start_relay_with(ServerConfig {
        access: AccessPolicy::Keys(key()),
        webhook_urls: vec![
            format!("http://{good_addr}/hook"),
            format!("http://{flaky_addr}/hook"),
        ],
        ..test_config()
    })
    .await;
    let token = |who: &str| {
        key()
            .mint(
                "hooks",
                who,
                None,
                Duration::from_secs(60),
                Grants::default(),
            )
            .unwrap()
    };
    let mut ada_options = options(&server);
    ada_options.token = Some(token("ada"));
    let ada = join_with(ada_options, "hooks", "ada", false).await;
    let mut bo_options = options(&server);
    bo_options.token = Some(token("bo"));
    let bo = join_with(bo_options, "hooks", "bo", false).await;
    let mic = ada.client.produce(MediaKind::Audio, "opus").await.unwrap();
    bo.client.leave().await.unwrap();
    wait_for_relay(&server, Duration::from_secs(5), |c| c.peers == 1).await;
    ada.client
        .command(synapse_sfu::wire::Request::CloseProducer { producer_id: mic })
        .await
        .unwrap();
    ada.client.leave().await.unwrap();

    let (ida, idb) = (ada.joined.peer_id, bo.joined.peer_id);
    for receiver in [&good, &flaky] {
        let events = wait_for_finish(receiver, "hooks").await;
        let sequence: Vec<(String, Option<u64>)> = events
            .iter()
            .map(|e| (e.event.clone(), e.peer.as_ref().map(|p| p.peer_id.0)))
            .collect();
        let s = |name: &str, peer: Option<synapse_sfu::wire::PeerId>| {
            (name.to_owned(), peer.map(|p| p.0))
        };
        assert_eq!(
            sequence,
            vec![
                s("room_started", None),
                s("peer_joined", Some(ida)),
                s("peer_joined", Some(idb)),
                s("producer_added", Some(ida)),
                s("peer_left", Some(idb)),
                s("producer_closed", Some(ida)),
                s("peer_left", Some(ida)),
                s("room_finished", None),
            ]
        );
        let names: Vec<Option<String>> = events
            .iter()
            .filter(|e| e.event == "peer_joined")
            .map(|e| e.peer.as_ref().unwrap().name.clone())
            .collect();
        assert_eq!(names, vec![Some("ada".into()), Some("bo".into())]);
        assert_eq!(events[3].producer.as_ref().unwrap().producer_id, mic);
        // Ids are unique, and each event's time is not before the previous one's.
        let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), events.len());
        assert!(
            events
                .windows(2)
                .all(|w| w[0].created_at <= w[1].created_at)
        );
        assert!(events.iter().all(|e| e.dropped_events == 0));
    }
    // The flaky receiver refused twice; both POSTs were retried, nothing was lost.
    assert_eq!(*flaky.attempts.lock().unwrap(), 8 + 2);
    let hooks = server.rooms().webhooks().unwrap();
    assert_eq!(
        hooks
            .stats()
            .failed_attempts
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // The same events went to both, with the same ids.
    let ids = |r: &Receiver| -> Vec<String> { verified(r).into_iter().map(|e| e.id).collect() };
    assert_eq!(ids(&good), ids(&flaky));
}

#[tokio::test]
async fn a_receiver_that_is_down_costs_the_call_nothing() {
    // Nothing listens on this port: every POST fails at once, and is retried.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = start_relay_with(ServerConfig {
        webhook_urls: vec![format!("http://{dead}/hook")],
        ..test_config()
    })
    .await;
    let ada = join(&server, "down", "ada", false).await;
    let mut bo = join(&server, "down", "bo", false).await;
    let mic = ada.client.produce(MediaKind::Audio, "opus").await.unwrap();
    bo.client.consume(mic).await.unwrap();
    // The relay is failing to deliver and retrying...
    let hooks = server.rooms().webhooks().unwrap().clone();
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(5));
    while hooks
        .stats()
        .failed_attempts
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "no delivery tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(hooks.pending() > 0, "events wait for the receiver");
    // ...and media flows meanwhile.
    for seq in 0..20 {
        send_audio(&ada.client, mic, seq);
    }
    let got = collect_until(&mut bo.incoming, Duration::from_secs(3), |r| {
        r.get(&mic).is_some_and(|f| f.len() == 20)
    })
    .await;
    assert_eq!(got[&mic].len(), 20);
}

#[tokio::test]
async fn an_overflowing_queue_reports_what_it_dropped_in_the_next_delivery() {
    use synapse_sfu::core::RoomEvent;
    use synapse_sfu::server::webhook::{MAX_QUEUED, Webhooks};
    use synapse_sfu::wire::PeerId;
    let (receiver, addr) = start_receiver(0).await;
    *receiver.delay_first.lock().unwrap() = Some(Duration::from_millis(500));
    let hooks = Webhooks::new(vec![format!("http://{addr}/hook")], Some(key())).unwrap();
    let joined = |i: u64| RoomEvent::PeerJoined {
        peer_id: PeerId(i),
        name: format!("p{i}"),
    };
    // The first goes out at once and is held; 256 fit behind it; 43 do not.
    hooks.enqueue("big", vec![joined(0)], 0, false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    hooks.enqueue("big", (1..300).map(joined).collect(), 0, false);
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(10));
    while verified(&receiver).len() < 1 + MAX_QUEUED {
        assert!(tokio::time::Instant::now() < deadline, "not all delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = verified(&receiver);
    assert_eq!(events.len(), 1 + MAX_QUEUED);
    assert_eq!(events[0].dropped_events, 0);
    assert_eq!(events[1].dropped_events, 299 - MAX_QUEUED as u64);
    assert!(events[2..].iter().all(|e| e.dropped_events == 0));
    // In order: the kept ones are the first that came.
    let peers: Vec<u64> = events
        .iter()
        .map(|e| e.peer.as_ref().unwrap().peer_id.0)
        .collect();
    assert_eq!(peers, (0..=MAX_QUEUED as u64).collect::<Vec<_>>());
}
