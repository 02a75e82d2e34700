//! A room that spans relays (docs/CLUSTER.md, "A room across relays").
//!
//! The relay that holds a room's lease is its *origin*. Another relay of the cluster (an
//! *edge*) that admits a join for the room keeps the peer and mirrors the room over links
//! to the origin, made of ordinary sessions of the wire protocol (docs/PROTOCOL.md 18):
//!
//! - **down**: one session joins the origin's room as this relay's hidden *link*. It hears
//!   the room and pulls each remote producer once, however many local consumers want it.
//!   Here, each remote peer is a *proxy*: a peer under the same id, owning its producers
//!   under the same ids, fed by the link's frames. A remote producer nobody here consumes
//!   has its link consumer paused.
//! - **up**: each local peer has a *shadow* session on the origin under its own id, which
//!   publishes the peer's producers under their ids. A hidden local peer (the *uplink*)
//!   consumes every local producer and writes it to its owner's shadow.
//!
//! Keyframe requests follow the media back: a proxy's goes up the link as its consumer's
//! `request_keyframe`; one for a shadow comes back to the local producer. Other edges see
//! this relay's peers through their own links, so every peer of the room is visible from
//! every relay and every producer crosses each link once. When the link ends (the origin
//! died), the proxies leave, and the room is placed again: here, or mirrored from the new
//! origin. When the last local peer leaves, the mirror is taken down.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

use super::placement::Placed;
use super::session::{send_consumer, video_frame_in};
use super::{RoomHandle, Rooms, SessionLimits};
use crate::auth::AccessPolicy;
use crate::client::{Client, ClientOptions, SharedEndpoint, Verification};
use crate::core::{FrameData, GroupKey, JoinAs, Joining, PeerOutput, Track};
use crate::group::{GroupLimits, GroupReader, Refusal, accept_groups};
use crate::transport::Session;
use crate::wire::frame::{self, FrameError};
use crate::wire::{
    ClientMessage, ConsumerId, EXT_AUDIO_LEVEL, EXT_LOSSY_DATA, ErrorCode, Grants, JoinResult,
    LeaveReason, MediaKind, PeerId, PeerInfo, ProducerId, ProducerInfo, ProtocolError, RelayJoin,
    Request, ServerMessage, StreamFrame, StreamHeader, TrackSource, close_code,
};

/// How long setting up a mirror (connecting to the origin and joining) may take before the
/// join is redirected to the origin instead.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often demand (which pulled producers have local consumers) and the room's local
/// peers are looked at.
const DEMAND_INTERVAL: Duration = Duration::from_millis(100);
/// A mirror without local peers for this many demand rounds is taken down (not at once:
/// a join admitted just before its peer is added must find the mirror still there).
const IDLE_ROUNDS: u32 = 5;
/// How often a relay whose link ended asks where the room is now.
const REPLACE_INTERVAL: Duration = Duration::from_millis(500);

/// What every mirror of this relay needs.
struct Context {
    rooms: Rooms,
    access: Arc<AccessPolicy>,
    limits: SessionLimits,
    relay_id: String,
    /// The relay has a real certificate, so its peers have too: verify against the
    /// system's roots rather than fetching a pin.
    native_roots: bool,
}

/// The mirrors of this relay, one per room hosted elsewhere that has local peers.
#[derive(Clone)]
pub struct Spans {
    context: Arc<Context>,
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

/// One room's mirror, set up by one join at a time.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Span>>>>;

/// What `/healthz` shows of one mirror.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkStatus {
    pub room: String,
    pub origin: String,
    /// Remote peers mirrored here.
    pub proxied_peers: usize,
    /// Remote producers pulled over the link (each once), and how many of them flow now.
    pub pulled_producers: usize,
    pub flowing: usize,
    /// Local peers mirrored on the origin.
    pub shadows: usize,
}

impl Spans {
    pub(crate) fn new(
        rooms: Rooms,
        access: Arc<AccessPolicy>,
        limits: SessionLimits,
        relay_id: String,
        native_roots: bool,
    ) -> Self {
        Self {
            context: Arc::new(Context {
                rooms,
                access,
                limits,
                relay_id,
                native_roots,
            }),
            slots: Arc::default(),
        }
    }

    fn slot(&self, room: &str) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(room.to_owned())
            .or_default()
            .clone()
    }

    /// Before a local join to `room`, hosted at `origin_url` by relay `origin_id`: makes sure
    /// this relay mirrors it. An error means the origin cannot be reached from here.
    pub async fn ensure(
        &self,
        room: &str,
        origin_url: &str,
        origin_id: &str,
    ) -> Result<(), SpanError> {
        let slot = self.slot(room);
        let mut slot = slot.lock().await;
        if let Some(span) = slot.as_ref() {
            if span.is_live() && span.origin_url == origin_url {
                return Ok(());
            }
            span.close();
        }
        // Only reaching the origin is bounded: once the link has joined, the mirror is set
        // up whole (a setup cut half-way would leave its hidden peers in the room).
        let link = tokio::time::timeout(
            SETUP_TIMEOUT,
            Link::connect(&self.context, room, origin_url),
        )
        .await
        .map_err(|_| SpanError::Timeout {
            url: origin_url.to_owned(),
        })??;
        let span = Span::start(self.clone(), room, origin_url, origin_id, link).await?;
        info!(%room, origin = %origin_url, "room mirrored from its origin");
        *slot = Some(span);
        Ok(())
    }

    /// After a join landed in a room this relay mirrors: if the mirror was taken down in
    /// the instant before (its last local peer had just gone), the room is placed again, so
    /// that the new peer is not left in a room of its own here.
    pub async fn recheck(self, room: String) {
        let live = {
            let slot = self.slot(&room);
            let held = slot.lock().await;
            held.as_ref().is_some_and(|span| span.is_live())
        };
        if !live {
            info!(%room, "joined as the mirror was taken down; placing the room again");
            replace(self, room).await;
        }
    }

    /// Whether this relay mirrors `room` (or is setting a mirror up). Such a room is never
    /// claimed here: a relay that mirrors a room and hosts it would mirror itself.
    pub fn mirrors(&self, room: &str) -> bool {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(room)
            .cloned();
        slot.is_some_and(|slot| match slot.try_lock() {
            Ok(held) => held.as_ref().is_some_and(|span| span.is_live()),
            Err(_) => true,
        })
    }

    /// The mirrors, for `/healthz` and `/metrics`.
    pub fn status(&self) -> Vec<LinkStatus> {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter_map(|slot| slot.try_lock().ok()?.clone())
            .filter(|span| span.is_live())
            .map(|span| span.status())
            .collect()
    }

    /// Forgets `span`'s slot if it still holds it.
    fn forget(&self, span: &Arc<Span>) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = slots.get(&span.room) else {
            return;
        };
        let ours = match slot.try_lock() {
            Ok(held) => held.as_ref().is_none_or(|s| Arc::ptr_eq(s, span)),
            Err(_) => false, // a join is setting up a new one
        };
        if ours {
            slots.remove(&span.room);
        }
    }
}

/// A remote producer pulled over the link: one consumer on the origin, or one per layer
/// of a simulcast producer.
#[derive(Debug, Clone)]
struct Pull {
    layers: Vec<PulledLayer>,
}

/// One of the link's consumers of a remote producer on the origin.
#[derive(Debug, Clone, Copy)]
struct PulledLayer {
    consumer: ConsumerId,
    /// The layer of a simulcast producer it takes; `None` for one encoding.
    layer: Option<u8>,
    /// Paused upstream: nobody here consumes it (or, for a layer, needs that layer).
    paused: bool,
}

impl Pull {
    fn flowing(&self) -> bool {
        self.layers.iter().any(|l| !l.paused)
    }
}

/// What a shadow session is told to do.
enum ShadowCommand {
    Produce(ProducerInfo),
    Close(ProducerId),
    Pause(ProducerId, bool),
    /// Data the local peer sent: to everyone (`to` empty) or to remote peers.
    Data(Request),
    Leave,
}

/// What every peer and session of a mirror receives: audio levels (forwarded as they
/// came) and lossy data (sent on between relays).
fn relay_extensions() -> [String; 2] {
    [EXT_AUDIO_LEVEL.to_owned(), EXT_LOSSY_DATA.to_owned()]
}

/// The layers of a producer to consume one by one: each of a simulcast producer's, or the
/// one encoding (`None`).
fn layers_of(producer: &ProducerInfo) -> Vec<Option<u8>> {
    match producer.layers.len() as u8 {
        0 => vec![None],
        n => (0..n).map(Some).collect(),
    }
}

/// How this relay's own peers of a mirror (its uplink, its proxies) join the room here:
/// with the relay grant, receiving audio levels.
fn relay_joining<'a>(name: &'a str, join_as: JoinAs, extensions: &'a [String]) -> Joining<'a> {
    Joining {
        grants: Grants {
            relay: true,
            ..Grants::default()
        },
        extensions,
        join_as,
        ..Joining::new(name)
    }
}

/// Reliable data a peer sent: its sender, and the request that sends it on to `to` (empty:
/// everyone). `None` for anything else.
fn data_resent(message: &ServerMessage, to: Vec<PeerId>) -> Option<(PeerId, Request)> {
    match message {
        ServerMessage::Data {
            from,
            payload,
            topic,
            reliable: true,
            ..
        } => Some((
            *from,
            Request::SendData {
                payload: payload.clone(),
                to,
                topic: topic.clone(),
            },
        )),
        _ => None,
    }
}

/// Why a room could not be mirrored from its origin; the join is redirected there instead.
#[derive(Debug, thiserror::Error)]
pub enum SpanError {
    #[error("no answer from {url} within {SETUP_TIMEOUT:?}")]
    Timeout { url: String },
    /// Connecting to the origin, or a request of the link or a shadow, failed.
    #[error(transparent)]
    Origin(#[from] crate::client::ClientError),
    /// The relay's own half of the room refused the hidden uplink peer.
    #[error("the room here refused the relay's uplink: {0}")]
    Uplink(#[from] ProtocolError),
}

/// A local peer's shadow on the origin.
struct Shadow {
    commands: mpsc::UnboundedSender<ShadowCommand>,
    /// Its session, once joined: the uplink writes the peer's media there.
    session: Option<Session>,
}

/// One room mirrored from its origin.
struct Span {
    spans: Spans,
    room: String,
    origin_url: String,
    origin_id: String,
    handle: RoomHandle,
    /// One QUIC endpoint (socket, certificate check) for the link and every shadow.
    endpoint: SharedEndpoint,
    link: Client,
    /// The hidden local peer that consumes local producers for their shadows.
    uplink: PeerId,
    proxies: Mutex<HashSet<PeerId>>,
    pulled: Mutex<HashMap<ProducerId, Pull>>,
    shadows: Mutex<HashMap<PeerId, Shadow>>,
    closed: AtomicBool,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request handed to the core on a proxy's or the uplink's behalf (its answer goes to
/// that peer's outbox, which its drain reads and drops).
fn on_behalf(request: Request) -> ClientMessage {
    ClientMessage { id: 0, request }
}

/// The link's session, joined to the origin's room.
struct Link {
    endpoint: SharedEndpoint,
    client: Client,
    incoming: crate::client::Incoming,
    joined: JoinResult,
}

impl Link {
    async fn connect(context: &Context, room: &str, origin_url: &str) -> Result<Link, SpanError> {
        let endpoint = context.endpoint(origin_url).await?;
        let (client, incoming) = context.connect(room, origin_url, &endpoint).await?;
        let joined = client
            .join_as(
                room,
                &format!("relay {}", context.relay_id),
                false,
                Some(RelayJoin {
                    relay: context.relay_id.clone(),
                    peer_id: None,
                }),
            )
            .await?;
        Ok(Link {
            endpoint,
            client,
            incoming,
            joined,
        })
    }
}

impl Span {
    /// Not closed: still mirroring its room.
    fn is_live(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    async fn start(
        spans: Spans,
        room: &str,
        origin_url: &str,
        origin_id: &str,
        link: Link,
    ) -> Result<Arc<Span>, SpanError> {
        let context = spans.context.clone();
        let Link {
            endpoint,
            client: link,
            incoming,
            joined,
        } = link;
        // The uplink first: it creates the room here, and hears every local peer from now.
        // Lossy data to everyone reaches the uplink, which sends it on to the origin.
        let extensions = relay_extensions();
        let uplink = JoinAs {
            peer_id: None,
            hidden: true,
            relay: None,
        };
        let (uplink, here, handle) = context.rooms.join(
            room,
            &relay_joining("relay uplink", uplink, &extensions),
            Instant::now(),
        )?;
        let span = Arc::new(Span {
            spans,
            room: room.to_owned(),
            origin_url: origin_url.to_owned(),
            origin_id: origin_id.to_owned(),
            handle,
            endpoint,
            link,
            uplink,
            proxies: Mutex::default(),
            pulled: Mutex::default(),
            shadows: Mutex::default(),
            closed: AtomicBool::new(false),
            tasks: Mutex::default(),
        });
        let session = span.link.session();
        span.spawn(span.clone().receive_link_datagrams(session.clone()));
        let limits = GroupLimits {
            header_timeout: context.limits.stream_header_timeout,
            order_wait: context.limits.stream_order_wait,
            max_frame: span.handle.lock().config().max_frame_size,
        };
        span.spawn(accept_groups(
            session,
            limits,
            LinkGroups {
                room: span.handle.clone(),
            },
        ));
        for peer in joined.peers {
            span.add_proxy(peer).await;
        }
        // Local peers already here when the uplink joined (a mirror set up again after its
        // origin changed, or joins admitted while this one was being set up). Taken from
        // the uplink's own join result, not a later look at the room: a peer that joins
        // after the uplink is in the uplink's events, and would otherwise get two shadows: the
        // origin refuses one, and replacing the other drops its commands, so it leaves.
        for peer in here.peers.into_iter().filter(|p| p.relay.is_none()) {
            span.add_shadow(peer);
        }
        span.spawn(span.clone().follow_link(incoming.events));
        span.spawn(span.clone().drain_uplink());
        span.spawn(span.clone().watch_demand());
        Ok(span)
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let span = info_span!("span", room = %self.room, origin = %self.origin_url);
        let handle = tokio::spawn(task.instrument(span));
        locked(&self.tasks).push(handle.abort_handle());
    }

    fn status(&self) -> LinkStatus {
        let pulled = locked(&self.pulled);
        LinkStatus {
            room: self.room.clone(),
            origin: self.origin_url.clone(),
            proxied_peers: locked(&self.proxies).len(),
            pulled_producers: pulled.len(),
            flowing: pulled.values().filter(|p| p.flowing()).count(),
            shadows: locked(&self.shadows).len(),
        }
    }

    // ---- down: remote peers as proxies --------------------------------------------------

    /// A remote peer joins here as a proxy (unless it is one of ours, shadowed there).
    async fn add_proxy(self: &Arc<Self>, peer: PeerInfo) {
        let context = &self.spans.context;
        if peer.relay.as_deref() == Some(context.relay_id.as_str()) {
            return;
        }
        let join_as = JoinAs {
            peer_id: Some(peer.peer_id),
            hidden: false,
            relay: Some(peer.relay.clone().unwrap_or_else(|| self.origin_id.clone())),
        };
        // Lossy data local peers send this remote peer goes on through their shadows.
        let extensions = relay_extensions();
        let joined = context.rooms.join(
            &self.room,
            &relay_joining(&peer.name, join_as, &extensions),
            Instant::now(),
        );
        if let Err(e) = joined {
            warn!(peer = peer.peer_id.0, error = %e, "remote peer not mirrored");
            return;
        }
        locked(&self.proxies).insert(peer.peer_id);
        self.spawn(self.clone().drain_proxy(peer.peer_id));
        for producer in peer.producers {
            self.pull(producer).await;
        }
    }

    /// A remote producer of a proxy gets its mirror here, and the link pulls it (paused
    /// until someone here consumes it).
    async fn pull(self: &Arc<Self>, producer: ProducerInfo) {
        let producer_id = producer.producer_id;
        let owner = producer.peer_id;
        if !locked(&self.proxies).contains(&owner) {
            return; // one of ours, shadowed there
        }
        let wanted = {
            let mut room = self.handle.lock();
            let track = Track {
                kind: producer.kind,
                source: producer
                    .source
                    .unwrap_or(TrackSource::default_for(producer.kind)),
                codec: producer.codec.clone(),
                params: producer.params.clone(),
                // Every layer crosses the link, each on a consumer of its own, so that
                // consumers here choose their layers as they would on the origin.
                layers: producer.layers.clone(),
            };
            if let Err(e) = room.produce(owner, track, Some(producer_id), Instant::now()) {
                warn!(producer = producer_id.0, error = %e, "remote producer not mirrored");
                return;
            }
            if producer.paused {
                room.handle(
                    owner,
                    on_behalf(Request::pause_producer(producer_id, true)),
                    Instant::now(),
                );
            }
            room.producer_consumers(producer_id).unwrap_or(0) > 0
        };
        let paused = !wanted;
        let mut layers = Vec::new();
        for layer in layers_of(&producer) {
            let consumed = match layer {
                None => self.link.consume_paused(producer_id, paused).await,
                Some(l) => self.link.consume_layer(producer_id, l, paused).await,
            };
            match consumed {
                Ok(c) => layers.push(PulledLayer {
                    consumer: c.consumer_id,
                    layer,
                    paused,
                }),
                Err(e) => {
                    warn!(producer = producer_id.0, ?layer, error = %e, "remote producer (layer) not pulled")
                }
            }
        }
        if !layers.is_empty() {
            debug!(producer = producer_id.0, "pulling a remote producer");
            locked(&self.pulled).insert(producer_id, Pull { layers });
        }
    }

    /// Reads what the origin tells the link, until the link ends.
    async fn follow_link(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<ServerMessage>) {
        while let Some(event) = events.recv().await {
            match event {
                ServerMessage::PeerJoined { peer } => self.add_proxy(peer).await,
                ServerMessage::PeerLeft { peer_id, reason } => self.drop_proxy(peer_id, reason),
                ServerMessage::ProducerAdded { producer } => self.pull(producer).await,
                ServerMessage::ProducerClosed {
                    producer_id,
                    peer_id,
                } => self.drop_pull(producer_id, peer_id),
                ServerMessage::Data { .. } => self.inject_data(&event, Vec::new()),
                ServerMessage::ProducerPaused { producer_id } => {
                    self.mirror_pause(producer_id, true)
                }
                ServerMessage::ProducerResumed { producer_id } => {
                    self.mirror_pause(producer_id, false)
                }
                _ => {}
            }
        }
        if self.is_live() {
            warn!("link to the room's origin ended; placing the room again");
            self.close();
            tokio::spawn(replace(self.spans.clone(), self.room.clone()));
        }
    }

    /// Data a remote peer sent reaches the peers here it was for (`to` empty: all of
    /// them), as its proxy's.
    fn inject_data(&self, message: &ServerMessage, to: Vec<PeerId>) {
        let Some((from, request)) = data_resent(message, to) else {
            return;
        };
        if self.is_remote(from) {
            self.handle
                .lock()
                .handle(from, on_behalf(request), Instant::now());
        }
    }

    /// Whether data from `from` is for this relay to deliver: from a remote peer's proxy,
    /// not from one of ours, whose data this relay delivered already.
    fn is_remote(&self, from: PeerId) -> bool {
        locked(&self.proxies).contains(&from)
    }

    /// Lossy data a local peer sent to remote peers (`to`; empty: everyone) goes on to the
    /// origin through the sender's shadow, at once: a datagram is sent or dropped, never
    /// queued. From anyone but a local peer with a shadow it goes no further.
    fn lossy_up(&self, delivered: &Bytes, to: &[PeerId]) {
        let Ok((from, payload)) = frame::decode_delivered_data(delivered.clone()) else {
            return;
        };
        let session = locked(&self.shadows)
            .get(&PeerId(from))
            .and_then(|s| s.session.clone());
        if let Some(session) = session {
            let to: Vec<u64> = to.iter().map(|p| p.0).collect();
            let _ = session.send_datagram(&frame::encode_lossy_data(&to, &payload));
        }
    }

    /// Lossy data a remote peer sent reaches the peers here it was for (`to` empty: all of
    /// them), as its proxy's.
    fn lossy_down(&self, delivered: Bytes, to: &[u64]) {
        let Ok((from, payload)) = frame::decode_delivered_data(delivered) else {
            return;
        };
        let from = PeerId(from);
        if !self.is_remote(from) {
            return;
        }
        let _ = self
            .handle
            .lock()
            .on_lossy_data(from, to, &payload, Instant::now());
    }

    /// Lossy data the origin delivered to a local peer's shadow: sent to that peer.
    async fn receive_shadow_datagrams(self: Arc<Self>, peer_id: PeerId, session: Session) {
        while let Ok(datagram) = session.receive_datagram().await {
            if frame::is_lossy_data(&datagram) {
                self.lossy_down(datagram, &[peer_id.0]);
            }
        }
    }

    /// Audio pulled over a link: each datagram goes to its producer's mirror as it came.
    /// Lossy data the origin sent to everyone reaches everyone here.
    async fn receive_link_datagrams(self: Arc<Self>, session: Session) {
        let room = &self.handle;
        let max = room.lock().config().max_datagram_size;
        while let Ok(bytes) = session.receive_datagram().await {
            if frame::is_lossy_data(&bytes) {
                self.lossy_down(bytes, &[]);
                continue;
            }
            let Ok(d) = frame::decode_datagram(bytes.clone(), max) else {
                continue;
            };
            let mut room = room.lock();
            if let Some(owner) = room.producer_peer(d.producer_id) {
                let _ = room.on_frame(
                    owner,
                    d.producer_id,
                    MediaKind::Audio,
                    0,
                    &d.header,
                    FrameData::Datagram(bytes),
                    Instant::now(),
                );
            }
        }
    }

    /// A remote peer left: its proxy leaves here (its producers and their consumers go).
    fn drop_proxy(&self, peer_id: PeerId, reason: LeaveReason) {
        if locked(&self.proxies).remove(&peer_id) {
            self.spans.context.rooms.leave(peer_id, reason);
        }
    }

    /// A remote producer closed: its mirror closes here.
    fn drop_pull(&self, producer_id: ProducerId, owner: PeerId) {
        if locked(&self.pulled).remove(&producer_id).is_some() {
            let request = Request::CloseProducer { producer_id };
            self.handle
                .lock()
                .handle(owner, on_behalf(request), Instant::now());
        }
    }

    fn mirror_pause(&self, producer_id: ProducerId, paused: bool) {
        if !locked(&self.pulled).contains_key(&producer_id) {
            return;
        }
        let mut room = self.handle.lock();
        let Some(owner) = room.producer_peer(producer_id) else {
            return;
        };
        let request = Request::pause_producer(producer_id, paused);
        room.handle(owner, on_behalf(request), Instant::now());
    }

    /// A proxy's outputs: keyframe requests go up the link; the rest (answers to what was
    /// done on its behalf) is dropped.
    async fn drain_proxy(self: Arc<Self>, proxy: PeerId) {
        let handle = self.handle.clone();
        while let Some(output) = poll_fn(|cx| handle.lock().poll_peer(proxy, cx)).await {
            match output {
                PeerOutput::Message(ServerMessage::KeyframeRequest { producer_id, layer }) => {
                    // Asked of the link's consumer of that layer.
                    let consumer = locked(&self.pulled).get(&producer_id).and_then(|pull| {
                        let pulled = pull.layers.iter().find(|l| l.layer == layer);
                        pulled.map(|l| l.consumer)
                    });
                    if let Some(consumer_id) = consumer {
                        let link = self.link.clone();
                        let request = Request::RequestKeyframe { consumer_id };
                        tokio::spawn(async move {
                            let _ = link.command(request).await;
                        });
                    }
                }
                PeerOutput::Message(message) => {
                    // Data a local peer sent to this remote peer: through its shadow.
                    if let Some((from, request)) = data_resent(&message, vec![proxy]) {
                        self.tell_shadow(from, ShadowCommand::Data(request));
                    }
                }
                PeerOutput::LossyData(datagram) => self.lossy_up(&datagram, &[proxy]),
                PeerOutput::Disconnect { .. } => break,
                _ => {}
            }
        }
    }

    /// Every demand round: pause upstream what nobody here consumes, resume what someone
    /// does; take the mirror down once the room has had no local peer for a while.
    async fn watch_demand(self: Arc<Self>) {
        let mut tick = tokio::time::interval(DEMAND_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle = 0;
        loop {
            tick.tick().await;
            let (local, changes) = {
                let mut room = self.handle.lock();
                let mut pulled = locked(&self.pulled);
                let mut changes = Vec::new();
                for (producer_id, pull) in pulled.iter_mut() {
                    let consumed = room.producer_consumers(*producer_id).unwrap_or(0) > 0;
                    // Dynacast across the link: a layer flows while a consumer here
                    // needs it (`LayersWanted` as the mirror's owner would be told).
                    let needed = room.wanted_layers(*producer_id, Instant::now());
                    for pulled in &mut pull.layers {
                        let wanted = consumed
                            && pulled
                                .layer
                                .is_none_or(|l| needed.is_some_and(|n| n.contains(&l)));
                        if wanted == pulled.paused {
                            pulled.paused = !wanted;
                            changes.push((pulled.consumer, wanted));
                        }
                    }
                }
                (room.local_members(), changes)
            };
            for (consumer_id, wanted) in changes {
                let request = Request::pause_consumer(consumer_id, !wanted);
                let link = self.link.clone();
                tokio::spawn(async move {
                    let _ = link.command(request).await;
                });
            }
            idle = if local == 0 { idle + 1 } else { 0 };
            if idle >= IDLE_ROUNDS {
                // Decided under the slot's lock (no `ensure` meanwhile) and, within it, the
                // room's, where a join adds its peer: a join either lands before (and the
                // mirror stays) or finds it closed after (and `recheck` places it again).
                let slot = self.spans.slot(&self.room);
                let held = slot.lock().await;
                let closing = {
                    let room = self.handle.lock();
                    (room.local_members() == 0).then(|| !self.closed.swap(true, Ordering::AcqRel))
                };
                match closing {
                    None => idle = 0, // a join landed meanwhile
                    Some(first) => {
                        if first {
                            info!("no local peer left; mirror taken down");
                            self.take_down();
                        }
                        drop(held);
                        self.spans.forget(&self);
                        return;
                    }
                }
            }
        }
    }

    // ---- up: local peers as shadows -----------------------------------------------------

    /// A local peer gets a shadow on the origin, which publishes its producers.
    fn add_shadow(self: &Arc<Self>, peer: PeerInfo) {
        let (commands, receiver) = mpsc::unbounded_channel();
        for producer in &peer.producers {
            let _ = commands.send(ShadowCommand::Produce(producer.clone()));
        }
        locked(&self.shadows).insert(
            peer.peer_id,
            Shadow {
                commands,
                session: None,
            },
        );
        self.spawn(self.clone().run_shadow(peer, receiver));
    }

    fn tell_shadow(&self, peer_id: PeerId, command: ShadowCommand) {
        if let Some(shadow) = locked(&self.shadows).get(&peer_id) {
            let _ = shadow.commands.send(command);
        }
    }

    /// The uplink's outputs: local peers and producers come and go; its consumers of
    /// local producers start writing to their owner's shadow.
    async fn drain_uplink(self: Arc<Self>) {
        let handle = self.handle.clone();
        let uplink = self.uplink;
        while let Some(output) = poll_fn(|cx| handle.lock().poll_peer(uplink, cx)).await {
            match output {
                PeerOutput::Message(message) => match message {
                    ServerMessage::PeerJoined { peer } if peer.relay.is_none() => {
                        self.add_shadow(peer)
                    }
                    ServerMessage::Data { .. } => {
                        // Data a local peer sent to everyone (the uplink hears only that).
                        if let Some((from, request)) = data_resent(&message, Vec::new()) {
                            self.tell_shadow(from, ShadowCommand::Data(request));
                        }
                    }
                    ServerMessage::PeerLeft { peer_id, .. } => {
                        if let Some(shadow) = locked(&self.shadows).remove(&peer_id) {
                            let _ = shadow.commands.send(ShadowCommand::Leave);
                        }
                    }
                    ServerMessage::ProducerAdded { producer } => {
                        self.tell_shadow(producer.peer_id, ShadowCommand::Produce(producer))
                    }
                    ServerMessage::ProducerClosed {
                        producer_id,
                        peer_id,
                    } => self.tell_shadow(peer_id, ShadowCommand::Close(producer_id)),
                    ServerMessage::ProducerPaused { producer_id }
                    | ServerMessage::ProducerResumed { producer_id } => {
                        let paused = matches!(message, ServerMessage::ProducerPaused { .. });
                        let owner = handle.lock().producer_peer(producer_id);
                        if let Some(owner) = owner {
                            self.tell_shadow(owner, ShadowCommand::Pause(producer_id, paused));
                        }
                    }
                    _ => {}
                },
                PeerOutput::StartConsumer {
                    consumer_id,
                    producer_id,
                    ..
                } => {
                    let owner = handle.lock().producer_peer(producer_id);
                    let session = owner.and_then(|owner| {
                        locked(&self.shadows)
                            .get(&owner)
                            .and_then(|s| s.session.clone())
                    });
                    if let Some(session) = session {
                        let span = info_span!("uplink", producer = producer_id.0);
                        self.spawn(send_consumer(
                            session,
                            handle.clone(),
                            consumer_id,
                            self.spans.context.limits.clone(),
                            span,
                        ));
                    }
                }
                PeerOutput::Disconnect { .. } => break,
                // Lossy data a local peer sent to everyone.
                PeerOutput::LossyData(datagram) => self.lossy_up(&datagram, &[]),
            }
        }
    }

    /// One local peer's shadow: joins the origin under the peer's id, publishes what it is
    /// told to, and hands keyframe requests back to the local producer.
    async fn run_shadow(
        self: Arc<Self>,
        peer: PeerInfo,
        mut commands: mpsc::UnboundedReceiver<ShadowCommand>,
    ) {
        let context = self.spans.context.clone();
        let connected = async {
            let (client, incoming) = context
                .connect(&self.room, &self.origin_url, &self.endpoint)
                .await?;
            let relay = RelayJoin {
                relay: context.relay_id.clone(),
                peer_id: Some(peer.peer_id),
            };
            client
                .join_as(&self.room, &peer.name, false, Some(relay))
                .await?;
            Ok::<_, SpanError>((client, incoming))
        };
        let (client, mut incoming) = match connected.await {
            Ok(connected) => connected,
            Err(e) => {
                warn!(peer = peer.peer_id.0, error = %e, "local peer not mirrored on the origin");
                return;
            }
        };
        match locked(&self.shadows).get_mut(&peer.peer_id) {
            Some(shadow) => shadow.session = Some(client.session()),
            None => return, // it left meanwhile
        }
        self.spawn(
            self.clone()
                .receive_shadow_datagrams(peer.peer_id, client.session()),
        );
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(ShadowCommand::Produce(producer)) => self.shadow_produce(&client, producer).await,
                    Some(ShadowCommand::Close(producer_id)) => {
                        let _ = client.command(Request::CloseProducer { producer_id }).await;
                    }
                    Some(ShadowCommand::Pause(producer_id, paused)) => {
                        let _ = client.command(Request::pause_producer(producer_id, paused)).await;
                    }
                    Some(ShadowCommand::Data(request)) => {
                        if let Err(e) = client.request_raw(request).await {
                            debug!(error = %e, "data not sent on to the origin");
                        }
                    }
                    Some(ShadowCommand::Leave) | None => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), client.leave()).await;
                        client.close();
                        return;
                    }
                },
                event = incoming.events.recv() => match event {
                    Some(ServerMessage::KeyframeRequest { producer_id, layer }) => {
                        let now = Instant::now();
                        self.handle.lock().request_layer_keyframe(producer_id, layer, now);
                    }
                    Some(ServerMessage::LayersWanted { producer_id, layers }) => {
                        // Dynacast across the link: the uplink takes only the layers the
                        // origin's consumers need, and the local publisher hears so.
                        self.uplink_layers(producer_id, &layers);
                    }
                    Some(event @ ServerMessage::Data { .. }) => {
                        // Data a remote peer sent to this local peer.
                        self.inject_data(&event, vec![peer.peer_id]);
                    }
                    Some(ServerMessage::Error { code: ErrorCode::Kicked, message, .. }) => {
                        // An operator removed the peer on the origin: it leaves the call
                        // here too, told why (its leave then ends this shadow).
                        info!(peer = peer.peer_id.0, "removed on the origin; removing it here");
                        self.handle.lock().kick(peer.peer_id, &message);
                    }
                    Some(_) => {}
                    None => return, // the origin is gone: the link notices too
                },
            }
        }
    }

    /// Publishes a local producer on the origin under its id, then lets the uplink
    /// consume it for the shadow.
    async fn shadow_produce(&self, client: &Client, producer: ProducerInfo) {
        let producer_id = producer.producer_id;
        let layers = layers_of(&producer);
        let request = Request::Produce {
            kind: producer.kind,
            codec: producer.codec,
            params: producer.params,
            source: producer.source,
            layers: producer.layers,
            producer_id: Some(producer_id),
        };
        if let Err(e) = client.request_raw(request).await {
            warn!(producer = producer_id.0, error = %e, "local producer not published on the origin");
            return;
        }
        if producer.paused {
            let _ = client.command(Request::PauseProducer { producer_id }).await;
        }
        // The uplink consumes every layer, each on a consumer of its own.
        let mut room = self.handle.lock();
        for layer in layers {
            let consume = Request::Consume {
                producer_id,
                paused: false,
                layer,
            };
            room.handle(self.uplink, on_behalf(consume), Instant::now());
        }
    }

    /// Pauses the uplink's consumers of the layers of a local producer that the origin
    /// does not need, and resumes those it does.
    fn uplink_layers(&self, producer_id: ProducerId, wanted: &[u8]) {
        let now = Instant::now();
        let mut room = self.handle.lock();
        for (consumer_id, layer, paused) in room.consumers_of(self.uplink, producer_id) {
            let Some(layer) = layer else {
                continue;
            };
            let pause = !wanted.contains(&layer);
            if pause != paused {
                let request = Request::pause_consumer(consumer_id, pause);
                room.handle(self.uplink, on_behalf(request), now);
            }
        }
    }

    // ---- ending ---------------------------------------------------------------------------

    /// Takes the mirror down: the link and the shadows leave the origin, the proxies and
    /// the uplink leave here (the room closes if nobody else is in it).
    fn close(self: &Arc<Self>) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.take_down();
    }

    /// [`Span::close`], once `closed` is set.
    fn take_down(self: &Arc<Self>) {
        let rooms = &self.spans.context.rooms;
        let link = self.link.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), link.leave()).await;
            link.close();
        });
        for (_, shadow) in locked(&self.shadows).drain() {
            let _ = shadow.commands.send(ShadowCommand::Leave);
        }
        let proxies: Vec<PeerId> = locked(&self.proxies).drain().collect();
        for proxy in proxies {
            rooms.leave(proxy, LeaveReason::Disconnected);
        }
        rooms.leave(self.uplink, LeaveReason::Left);
        for task in locked(&self.tasks).drain(..) {
            task.abort();
        }
        self.spans.forget(self);
    }
}

/// After a link ended: asks where the room is until it is hosted here or mirrored from its
/// new origin, for as long as local peers remain.
/// (Boxed, to name its type: setting up a mirror spawns the task that may call this.)
fn replace(spans: Spans, room: String) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let context = spans.context.clone();
        let Some(placement) = context.rooms.placement().cloned() else {
            return;
        };
        loop {
            tokio::time::sleep(REPLACE_INTERVAL).await;
            let local = context
                .rooms
                .room(&room)
                .map_or(0, |r| r.lock().local_members());
            if local == 0 {
                return;
            }
            match placement.place(&room).await {
                Placed::Elsewhere {
                    relay_url,
                    relay_id,
                } => match spans.ensure(&room, &relay_url, &relay_id).await {
                    Ok(()) => return,
                    Err(e) => debug!(%room, error = %e, "origin not reachable yet"),
                },
                Placed::Here => {
                    info!(%room, "room now hosted here");
                    return;
                }
                Placed::Unknown => {}
            }
        }
    })
}

impl Context {
    /// The endpoint a mirror's sessions to `url` go through.
    async fn endpoint(&self, url: &str) -> Result<SharedEndpoint, SpanError> {
        let verification = if self.native_roots {
            Verification::NativeRoots
        } else {
            // Development identities: the pin is fetched from the relay's HTTP side (once
            // per mirror), as a test client does.
            Verification::FetchPin
        };
        Ok(SharedEndpoint::new(&ClientOptions::new(url, verification)).await?)
    }

    /// A session to another relay of the cluster, as a client of its WebTransport side.
    async fn connect(
        &self,
        room: &str,
        url: &str,
        endpoint: &SharedEndpoint,
    ) -> Result<(Client, crate::client::Incoming), SpanError> {
        let mut options = ClientOptions::new(url, Verification::FetchPin);
        options.endpoint = Some(endpoint.clone());
        options.token = self.access.relay_token(room, &self.relay_id);
        options.receive_media = false;
        options.extensions = relay_extensions().to_vec();
        Ok(Client::connect(options).await?)
    }
}

/// Video pulled over a link, through the one stream acceptor: each group goes to its
/// producer's mirror.
#[derive(Clone)]
struct LinkGroups {
    room: RoomHandle,
}

const NOT_MIRRORED: Refusal<()> = Refusal {
    code: close_code::STREAM_REFUSED,
    error: None,
};

impl GroupReader for LinkGroups {
    type Error = ();

    fn admit(&self, header: StreamHeader) -> Result<(), Refusal<()>> {
        let room = self.room.lock();
        match room.producer_peer(header.producer_id) {
            Some(_) => Ok(()),
            None => {
                debug!(
                    producer = header.producer_id.0,
                    "pulled stream of no mirrored producer"
                );
                Err(NOT_MIRRORED)
            }
        }
    }

    async fn frame(&self, key: GroupKey, f: StreamFrame) -> Result<(), Refusal<()>> {
        let producer_id = key.0;
        let mut room = self.room.lock();
        let owner = room.producer_peer(producer_id).ok_or(NOT_MIRRORED)?;
        video_frame_in(&mut room, owner, key, f).map_err(|e| {
            debug!(producer = producer_id.0, error = %e, "pulled frame refused");
            NOT_MIRRORED
        })
    }

    fn malformed(&self, _key: Option<GroupKey>, _error: FrameError) -> Refusal<()> {
        NOT_MIRRORED
    }

    fn refused(&self, _error: ()) {}
}
