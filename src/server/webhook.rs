//! Webhooks: the relay POSTs room events to the configured URLs.
//!
//! The policy:
//! - Events come from the core's per-room log (`Room::drain_events`), drained under the
//!   room's lock every [`SWEEP_INTERVAL`] and when a room closes, so a room's events are
//!   queued in the order they happened; `room_finished` is queued last, when the directory
//!   removes the room. Each joined peer gives exactly one `peer_joined` and one `peer_left`.
//! - One queue per (URL, room), at most [`MAX_QUEUED`] events; what does not fit is
//!   counted, not kept, and the count goes out as `dropped_events` in the next delivery.
//!   One room's receiver being slow or down never delays another room.
//! - Delivery is in order per queue: an event is retried [`ATTEMPTS`] times with backoff
//!   from [`FIRST_BACKOFF`] (doubling) before it is given up and counted as dropped; a
//!   2xx answer is success, anything else (or [`REQUEST_TIMEOUT`]) a failure.
//! - With API keys the body is signed as LiveKit signs its webhooks: the `Authorization`
//!   header is a JWT (HS256, the API secret) whose `sha256` claim is the base64 SHA-256 of
//!   the body and whose `iss` is the API key. Without keys nothing is signed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tracing::{debug, warn};

use crate::auth::ApiKey;
use crate::core::RoomEvent;
use crate::wire::{LeaveReason, PeerId, ProducerId, ProducerInfo};

/// How often rooms' event logs are drained.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Events waiting per (URL, room).
pub const MAX_QUEUED: usize = 256;
/// Tries per event, and the wait before the first retry (doubling).
pub const ATTEMPTS: u32 = 5;
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// One POST's time limit.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One webhook delivery's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event (the same for every URL and every retry of it).
    pub id: String,
    /// `room_started`, `room_finished`, `peer_joined`, `peer_left`, `producer_added`,
    /// `producer_closed`.
    pub event: String,
    /// When the relay noticed, UNIX seconds (within [`SWEEP_INTERVAL`]).
    pub created_at: f64,
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<WebhookPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<ProducerInfo>,
    /// `producer_closed`: the producer's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_id: Option<ProducerId>,
    /// `peer_left`: `left` or `disconnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<LeaveReason>,
    /// Events of this queue lost since the last delivery (overflow or given up).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_events: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookPeer {
    pub peer_id: PeerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The JWT claims of a signed delivery.
#[derive(Debug, Serialize, Deserialize)]
pub struct WebhookClaims {
    pub iss: String,
    /// Base64 (standard, padded) SHA-256 of the body.
    pub sha256: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

/// Base64 of the SHA-256 of `body`, as the `sha256` claim carries it.
pub fn body_digest(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body))
}

#[derive(Default)]
struct Queue {
    events: VecDeque<WebhookEvent>,
    dropped: u64,
    sending: bool,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dropped: AtomicU64,
}

struct Inner {
    urls: Vec<String>,
    key: Option<ApiKey>,
    client: reqwest::Client,
    queues: Mutex<HashMap<(usize, String), Queue>>,
    id_prefix: String,
    next_id: AtomicU64,
    stats: WebhookStats,
}

/// The relay's webhook sender. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks(Arc<Inner>);

fn unix_now() -> f64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_secs_f64() * 1000.0).round() / 1000.0
}

impl Webhooks {
    /// Sends to `urls`, signing with `key` if there is one. Needs a Tokio runtime.
    pub fn new(urls: Vec<String>, key: Option<ApiKey>) -> anyhow::Result<Self> {
        for url in &urls {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("webhook URL {url:?}: {e}"))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https"),
                "webhook URL {url:?}: only http and https"
            );
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self(Arc::new(Inner {
            urls,
            key,
            client,
            queues: Mutex::new(HashMap::new()),
            id_prefix: format!("EV_{:08x}", rand::random::<u32>()),
            next_id: AtomicU64::new(1),
            stats: WebhookStats::default(),
        })))
    }

    pub fn stats(&self) -> &WebhookStats {
        &self.0.stats
    }

    /// Events waiting or being sent, all URLs and rooms together.
    pub fn pending(&self) -> usize {
        self.queues().values().map(|q| q.events.len()).sum()
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, String), Queue>> {
        self.0.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn event(&self, room: &str, event: RoomEvent) -> WebhookEvent {
        let id = format!(
            "{}_{}",
            self.0.id_prefix,
            self.0.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let mut out = WebhookEvent {
            id,
            event: String::new(),
            created_at: unix_now(),
            room: room.to_owned(),
            peer: None,
            producer: None,
            producer_id: None,
            reason: None,
            dropped_events: 0,
        };
        let name = match event {
            RoomEvent::RoomStarted => "room_started",
            RoomEvent::PeerJoined { peer_id, name } => {
                out.peer = Some(WebhookPeer {
                    peer_id,
                    name: Some(name),
                });
                "peer_joined"
            }
            RoomEvent::PeerLeft {
                peer_id,
                name,
                reason,
            } => {
                out.peer = Some(WebhookPeer {
                    peer_id,
                    name: Some(name),
                });
                out.reason = Some(reason);
                "peer_left"
            }
            RoomEvent::ProducerAdded { producer } => {
                out.peer = Some(WebhookPeer {
                    peer_id: producer.peer_id,
                    name: None,
                });
                out.producer = Some(producer);
                "producer_added"
            }
            RoomEvent::ProducerClosed {
                producer_id,
                peer_id,
            } => {
                out.peer = Some(WebhookPeer {
                    peer_id,
                    name: None,
                });
                out.producer_id = Some(producer_id);
                "producer_closed"
            }
        };
        out.event = name.to_owned();
        out
    }

    /// Queues a room's events (drained under its lock, so in order), `dropped` of which
    /// the room could not keep, and with `finished` the room's end.
    pub fn enqueue(&self, room: &str, events: Vec<RoomEvent>, dropped: u64, finished: bool) {
        if events.is_empty() && dropped == 0 && !finished {
            return;
        }
        let mut bodies: Vec<WebhookEvent> =
            events.into_iter().map(|e| self.event(room, e)).collect();
        if finished {
            let mut end = self.event(room, RoomEvent::RoomStarted);
            end.event = "room_finished".into();
            bodies.push(end);
        }
        let mut queues = self.queues();
        for url in 0..self.0.urls.len() {
            let queue = queues.entry((url, room.to_owned())).or_default();
            queue.dropped += dropped;
            for body in &bodies {
                if queue.events.len() >= MAX_QUEUED {
                    queue.dropped += 1;
                    self.0.stats.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    queue.events.push_back(body.clone());
                }
            }
            if !queue.sending && !queue.events.is_empty() {
                queue.sending = true;
                tokio::spawn(self.clone().deliver(url, room.to_owned()));
            }
        }
    }

    /// Sends one queue's events in order until it is empty.
    async fn deliver(self, url: usize, room: String) {
        let key = (url, room);
        loop {
            let next = {
                let mut queues = self.queues();
                let queue = queues.get_mut(&key).expect("a sending queue stays");
                match queue.events.pop_front() {
                    Some(mut event) => {
                        event.dropped_events = std::mem::take(&mut queue.dropped);
                        event
                    }
                    None => {
                        // Nothing more: forget the queue (a room that comes back starts
                        // a new one).
                        queues.remove(&key);
                        return;
                    }
                }
            };
            if !self.post_with_retries(url, &next).await {
                self.0.stats.dropped.fetch_add(1, Ordering::Relaxed);
                let mut queues = self.queues();
                let queue = queues.get_mut(&key).expect("a sending queue stays");
                // This event is lost, and the ones it reported as lost are still lost.
                queue.dropped += 1 + next.dropped_events;
            }
        }
    }

    async fn post_with_retries(&self, url: usize, event: &WebhookEvent) -> bool {
        let body = serde_json::to_vec(event).expect("webhook bodies serialize");
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match self.post(url, &body).await {
                Ok(()) => {
                    self.0.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    self.0.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    debug!(url = %self.0.urls[url], id = %event.id, attempt, error = %e, "webhook failed");
                    if attempt == ATTEMPTS {
                        warn!(url = %self.0.urls[url], room = %event.room, id = %event.id, event = %event.event, "webhook given up after {ATTEMPTS} attempts: {e}");
                        return false;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        false
    }

    async fn post(&self, url: usize, body: &[u8]) -> anyhow::Result<()> {
        let mut request = self
            .0
            .client
            .post(&self.0.urls[url])
            .header("Content-Type", "application/webhook+json")
            .body(body.to_vec());
        if let Some(key) = &self.0.key {
            request = request.header("Authorization", sign(key, body)?);
        }
        let response = request.send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "answered {}",
            response.status()
        );
        Ok(())
    }
}

/// The `Authorization` value for `body`: a JWT over its digest.
pub fn sign(key: &ApiKey, body: &[u8]) -> anyhow::Result<String> {
    let now = unix_now() as u64;
    let claims = WebhookClaims {
        iss: key.key.clone(),
        sha256: body_digest(body),
        iat: now,
        nbf: now,
        exp: now + 300,
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key.secret.as_bytes()),
    )?)
}

/// Checks a delivery as a receiver would: the token's signature, issuer and validity, and
/// that its digest is this body's. Returns the parsed body.
pub fn verify(key: &ApiKey, authorization: &str, body: &[u8]) -> anyhow::Result<WebhookEvent> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[&key.key]);
    validation.set_required_spec_claims(&["exp", "iss"]);
    let claims = jsonwebtoken::decode::<WebhookClaims>(
        authorization,
        &jsonwebtoken::DecodingKey::from_secret(key.secret.as_bytes()),
        &validation,
    )?
    .claims;
    anyhow::ensure!(
        claims.sha256 == body_digest(body),
        "the body does not match the signature"
    );
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_body_and_key() {
        let key = ApiKey {
            key: "APIk".into(),
            secret: "a-secret-long-enough-for-hs256-keys".into(),
        };
        let body = br#"{"id":"EV_1","event":"room_started","created_at":1.0,"room":"r"}"#;
        let token = sign(&key, body).unwrap();
        let event = verify(&key, &token, body).unwrap();
        assert_eq!(event.event, "room_started");
        assert!(verify(&key, &token, b"{}").is_err(), "another body");
        let other = ApiKey {
            key: "APIk".into(),
            secret: "another-secret-long-enough-for-hs256".into(),
        };
        assert!(verify(&other, &token, body).is_err(), "another secret");
    }
}
