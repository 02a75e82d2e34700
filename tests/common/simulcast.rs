//! A simulcast publisher and subscribers that record which layer each frame was, for the
//! simulcast tests on one relay and across relays.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;
use synapse_sfu::client::join::{Publisher, publish_simulcast, simulcast_ladder};
use synapse_sfu::client::{Client, Incoming, now_us};

use synapse_sfu::wire::{ConsumerId, MediaKind, Request, ServerMessage};
use tokio::sync::{Mutex, oneshot};

use super::{Peer, patient};

/// One received video frame: when, its layer mark, seq, latency.
#[derive(Debug, Clone, Copy)]
pub struct Got {
    pub at: tokio::time::Instant,
    pub layer: u8,
    pub seq: u64,
    pub latency_ms: f64,
}

pub type Shared<T> = Arc<Mutex<Vec<T>>>;

/// Collects a subscriber's video frames (and counts its `layer_changed` events) until the
/// session ends or the task is dropped.
pub fn collect(mut incoming: Incoming) -> (Shared<Got>, Shared<ServerMessage>) {
    let frames: Shared<Got> = Arc::default();
    let events: Shared<ServerMessage> = Arc::default();
    let (f, e) = (frames.clone(), events.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                frame = incoming.frames.recv() => match frame {
                    Some(frame) if frame.kind == MediaKind::Video => f.lock().await.push(Got {
                        at: tokio::time::Instant::now(),
                        layer: frame.payload[0],
                        seq: frame.header.seq,
                        latency_ms: now_us().saturating_sub(frame.header.capture_us) as f64 / 1000.0,
                    }),
                    Some(_) => {}
                    None => return,
                },
                event = incoming.events.recv() => match event {
                    Some(event) => e.lock().await.push(event),
                    None => return,
                },
            }
        }
    });
    (frames, events)
}

/// A simulcast publisher (1 Mbit/s top layer, 30 fps) that answers the relay's keyframe
/// requests and dynacast updates; it starts sending when the returned sender fires.
pub async fn publisher(peer: Peer) -> (Arc<Publisher>, oneshot::Sender<()>, Client) {
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let publisher = publish_simulcast(
        &peer.client,
        simulcast_ladder(1_000_000),
        30,
        Duration::from_secs(2),
        async move {
            let _ = go_rx.await;
        },
    )
    .await
    .unwrap();
    let publisher = Arc::new(publisher);
    let mut events = peer.incoming.events;
    let p = publisher.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            p.on_event(&event);
        }
    });
    (publisher, go_tx, peer.client)
}

/// The consumer id of the first `consumer_added` a subscriber saw.
pub async fn consumer_id(events: &Mutex<Vec<ServerMessage>>) -> ConsumerId {
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(10));
    loop {
        let found = events.lock().await.iter().find_map(|e| match e {
            ServerMessage::ConsumerAdded { consumer }
                if consumer.producer.kind == MediaKind::Video =>
            {
                Some(consumer.consumer_id)
            }
            _ => None,
        });
        if let Some(id) = found {
            return id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no consumer_added");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn increasing(frames: &[Got]) -> bool {
    frames.windows(2).all(|w| w[1].seq > w[0].seq)
}

/// A simulcast publisher with a full-size viewer and a thumbnail, and what they got.
pub struct Tiles {
    pub publisher: Arc<Publisher>,
    pub big: Shared<Got>,
    pub small: Shared<Got>,
    pub small_events: Shared<ServerMessage>,
    /// The publisher's session, kept open.
    pub client: Client,
}

/// Starts a simulcast publisher, with `big` (a full-size tile) and `small`, a thumbnail
/// that says so before the video starts, both auto-subscribed; runs until both have 60
/// frames and the middle layer, which neither needs, has stopped at the publisher.
pub async fn tiles(label: &str, publisher_peer: Peer, big: Peer, small: Peer) -> Tiles {
    let (publisher, go, client) = publisher(publisher_peer).await;
    let (big_frames, _) = collect(big.incoming);
    let (small_frames, small_events) = collect(small.incoming);
    let consumer = consumer_id(&small_events).await;
    small
        .client
        .command(Request::SetPreferredLayers {
            consumer_id: consumer,
            max_layer: None,
            max_width: Some(320),
            max_height: Some(180),
        })
        .await
        .unwrap();
    go.send(()).unwrap();
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(15));
    loop {
        let layer1_idle = !publisher.layers[1].wanted.load(Ordering::Relaxed);
        let (big_n, small_n) = (
            big_frames.lock().await.len(),
            small_frames.lock().await.len(),
        );
        if layer1_idle && big_n >= 60 && small_n >= 60 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: layer 1 still wanted at the publisher ({}) or too few frames ({big_n}, \
             {small_n})",
            !layer1_idle
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(publisher.layers[0].wanted.load(Ordering::Relaxed));
    assert!(publisher.layers[2].wanted.load(Ordering::Relaxed));
    Tiles {
        publisher,
        big: big_frames,
        small: small_frames,
        small_events,
        client,
    }
}
