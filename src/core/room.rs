//! One room's state and every forwarding decision in it, with no IO.
//!
//! A `Room` owns its peers and the producers and consumers that hang off them; nothing in
//! it refers to another room, so each room can be driven by its own owner (the server
//! keeps one lock per room; `Relay` keeps them all in one struct for tests and fuzzing).
//! Inputs are calls (`join`, `handle`, `on_frame`, `leave`) that carry the `Instant` they
//! happened at. Output leaves one way, pulled: `poll_peer` yields the control messages (and
//! consumer start-ups) for one peer, `poll_media` the frames of all of one peer's consumers
//! (its media sender's batch). Both take a `std::task::Context` so the IO layer can sleep
//! until there is something to pull, the way a channel receiver does, without this module
//! knowing about any runtime. `poll_consumer` pulls one consumer's frames alone, for a
//! sender that drives a single consumer (a relay link's, the tests).
//!
//! The drain rule: after any input, the IO layer must poll every peer whose waker fired
//! until it returns `Pending`; an output not pulled stays queued (bounded: `max_outbox` for
//! a peer, the consumer queue's limits for frames) and nothing is lost by pulling late, only
//! delayed. `Ready(None)` means the peer (or its session, or the consumer) is gone. A video
//! frame taken by `poll_media` holds its consumer until the sender hands its id back in a
//! later `poll_media` (its write finished, or was abandoned): the frames queued behind it
//! stay under the queue's policy meanwhile, and one consumer's slow write holds up no other.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::config::RelayConfig;
use super::path::{PathEstimator, PathSample};
use super::queue::{ConsumerQueue, FrameData, PushOutcome, QueuedFrame};
use super::rate::TokenBucket;
use super::relay::Ids;
use super::simulcast::{
    BudgetSample, DYNACAST_DELAY, Demand, HEADROOM, LayerDecision, LayerSelection, LayerState,
    LinkBudget, Preference, RateMeter, allocate, choose_target,
};
use super::speaker::SpeakerDetector;
use super::stats::{PeerSnapshot, RelayCounts, RelayStats, RoomSnapshot, TransportSnapshot};
use crate::wire::close_code;
use crate::wire::frame::{
    MAX_DATA_RECIPIENTS, encode_delivered_data, encode_stream_frame_head, strip_audio_level,
};
use crate::wire::{
    ClientMessage, ConsumerId, ConsumerInfo, DataSent, Done, EXT_AUDIO_LEVEL, EXT_LOSSY_DATA,
    EXT_RESUME, EXTENSIONS, ErrorCode, FrameHeader, Grants, JoinResult, LayerInfo, LeaveReason,
    MAX_DATA_PAYLOAD, MAX_LAYERS, MediaKind, PROTOCOL_VERSION, Params, PeerId, PeerInfo,
    ProduceResult, ProducerId, ProducerInfo, ProtocolError, Reply, Request, ServerMessage,
    TrackSource,
};
use bytes::Bytes;

/// Reliable data (`send_data`) a peer may send: bytes per second, and the burst.
pub const DATA_BYTES_PER_SECOND: f64 = 64.0 * 1024.0;
pub const DATA_BURST_BYTES: f64 = 128.0 * 1024.0;
/// Reliable data goes to a peer at most at this share of what its path carries (media
/// first), between these rates (the most also when the path is not measured yet), in
/// bursts of `DATA_DELIVERY_BURST`; what waits is bounded by `MAX_DATA_BACKLOG`, beyond
/// which new data for that peer is refused to its sender (`rate_limited`), never dropped.
pub const DATA_DELIVERY_SHARE: f64 = 0.1;
pub const DATA_DELIVERY_MIN: f64 = 8.0 * 1024.0;
pub const DATA_DELIVERY_MAX: f64 = 64.0 * 1024.0;
pub const DATA_DELIVERY_BURST: f64 = 32.0 * 1024.0;
pub const MAX_DATA_BACKLOG: usize = 256 * 1024;

/// Lossy data datagrams a peer may send per second (and the burst).
pub const LOSSY_DATA_PER_SECOND: f64 = 60.0;
/// Lossy data waiting for one recipient; beyond it the oldest is dropped.
pub const MAX_LOSSY_QUEUE: usize = 32;

/// What the IO layer must do for a peer. (Messages are most of the outputs and move
/// straight to the writer: boxing them would add an allocation each.)
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum PeerOutput {
    /// Write this on the peer's control stream.
    Message(ServerMessage),
    /// Send this lossy data datagram to the peer (`docs/PROTOCOL.md` 15.5); if it cannot
    /// go at once, drop it.
    LossyData(Bytes),
    /// A consumer was created for this peer: start sending its frames.
    StartConsumer {
        consumer_id: ConsumerId,
        producer_id: ProducerId,
        kind: MediaKind,
    },
    /// End the peer's session with this close code (`wire::close_code`). With `notify`, the
    /// error is first written on the control stream (the peer reads it: it was removed);
    /// without, the peer is not reading and only the close carries the reason.
    Disconnect {
        code: u32,
        error: ProtocolError,
        notify: bool,
    },
}

/// Something that happened in a room, for webhooks: each once, in the order it happened.
/// (A room's end is the directory's to report: it removes the room.)
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    RoomStarted,
    PeerJoined {
        peer_id: PeerId,
        name: String,
    },
    PeerLeft {
        peer_id: PeerId,
        name: String,
        reason: LeaveReason,
    },
    ProducerAdded {
        producer: ProducerInfo,
    },
    ProducerClosed {
        producer_id: ProducerId,
        peer_id: PeerId,
    },
}

/// How a peer joins: as itself (the default), or as what another relay of the cluster
/// brings (docs/PROTOCOL.md 18).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinAs {
    /// Under this id (the peer's id on the relay it is connected to); `None`: a new one.
    pub peer_id: Option<PeerId>,
    /// Heard by nobody: its arrival, departure and producers are not announced (a
    /// relay's link subscribes only).
    pub hidden: bool,
    /// The relay the peer is connected to, shown in its `PeerInfo`.
    pub relay: Option<String>,
}

/// What a join asks for, once its caller has checked who asks (docs/PROTOCOL.md 3): all
/// of it but the room's name.
#[derive(Debug, Clone, PartialEq)]
pub struct Joining<'a> {
    pub version: u32,
    pub name: &'a str,
    pub auto_subscribe: bool,
    pub grants: Grants,
    /// The optional formats the peer asked to receive (PROTOCOL.md 15.1).
    pub extensions: &'a [String],
    pub join_as: JoinAs,
}

impl<'a> Joining<'a> {
    /// `name` joining with this protocol version, every grant (development mode), no
    /// extensions, as itself.
    pub fn new(name: &'a str) -> Self {
        Joining {
            version: PROTOCOL_VERSION,
            name,
            auto_subscribe: false,
            grants: Grants::default(),
            extensions: &[],
            join_as: JoinAs::default(),
        }
    }
}

/// What a `produce` describes.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub kind: MediaKind,
    pub source: TrackSource,
    pub codec: String,
    pub params: Params,
    pub layers: Vec<LayerInfo>,
}

/// A consumer an interrupted peer had, to recreate when it resumes.
#[derive(Debug, Clone)]
struct Subscription {
    producer: ProducerId,
    paused: bool,
    preference: Option<Preference>,
    pinned: Option<u8>,
}

impl Peer {
    /// A peer of another relay, mirrored here (not that relay's hidden link).
    fn is_mirror(&self) -> bool {
        self.relay.is_some() && !self.hidden
    }
}

/// How a peer's session ended, as the core saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer is gone (it left, or cannot resume).
    Left,
    /// The peer keeps its place for the grace period.
    Interrupted,
    /// Another session took the peer over already; nothing changed.
    Stale,
}

/// What a peer's media sender does next (`Room::poll_media`).
#[derive(Debug, Clone, PartialEq)]
pub enum MediaOutput {
    /// Send this frame to this consumer. A video frame holds the consumer until its id is
    /// handed back: the frame's write finished or was abandoned.
    Frame(ConsumerFrame),
    /// This consumer is closed: end its group stream.
    Closed(ConsumerId),
}

/// One frame for one consumer, as its peer's media sender takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerFrame {
    pub consumer_id: ConsumerId,
    pub producer_id: ProducerId,
    pub frame: QueuedFrame,
    /// For video: the latest its write may finish (`Room::write_deadline`).
    pub write_deadline: Option<Instant>,
    /// The layer a relay's consumer of one layer takes: its streams' headers name it.
    pub layer: Option<u8>,
}

/// Frames `poll_media` hands out per call at most: a sender with many consumers ready
/// still yields between batches.
pub const MEDIA_BATCH: usize = 64;

/// Room events kept for the drain at most; beyond, new ones are counted, not kept.
pub const MAX_ROOM_EVENTS: usize = 1024;

#[derive(Debug)]
struct Peer {
    name: String,
    /// A relay's link (docs/PROTOCOL.md 18): it hears the room but nobody sees it.
    hidden: bool,
    /// The relay the peer is connected to, when it is another relay of the cluster.
    relay: Option<String>,
    producers: Vec<ProducerId>,
    consumers: BTreeSet<ConsumerId>,
    auto_subscribe: bool,
    grants: Grants,
    outbox: VecDeque<PeerOutput>,
    waker: Option<Waker>,
    overflowed: bool,
    last_frame_error: Option<Instant>,
    requests: Option<TokenBucket>,
    path: PathEstimator,
    last_transport_stats: Option<Instant>,
    /// Frames skipped for this peer's consumers by the latency bound.
    skipped_late: u64,
    /// Queue delay at the last path sample, milliseconds (for listings between samples).
    last_queue_ms: f64,
    /// What the path to this peer carries, for simulcast layer selection.
    budget: LinkBudget,
    /// Extensions the peer asked for in `join`.
    wants_audio_level: bool,
    /// The peer keeps its place for `reconnect_grace` when its session drops; a session
    /// presenting `resume_token` takes it back.
    resumable: bool,
    resume_token: Option<String>,
    /// Which session drives the peer now: bumped at each interruption, so that the tasks
    /// of a dropped session see it gone (`poll_peer_session`).
    session: u64,
    /// Since when the peer has had no session, and what it had subscribed to then.
    interrupted: Option<Instant>,
    subscriptions: Vec<Subscription>,
    wants_lossy_data: bool,
    /// Lossy data waiting for this peer (at most `MAX_LOSSY_QUEUE`).
    lossy: VecDeque<Bytes>,
    data_bytes: TokenBucket,
    lossy_rate: TokenBucket,
    /// Data for this peer waiting for its pace (`DATA_DELIVERY_*`), with its size.
    data_backlog: VecDeque<(usize, ServerMessage)>,
    data_backlog_bytes: usize,
    data_pace: TokenBucket,
    /// Consumers with a frame to take, each once (`Consumer::ready`), for `poll_media`;
    /// kept only while a media sender polls (`media_driven`).
    media_ready: VecDeque<ConsumerId>,
    /// Consumers closed since the media sender last polled (only while one polls).
    media_closed: Vec<ConsumerId>,
    media_waker: Option<Waker>,
    /// A media sender polls this peer (`poll_media`): ready and closed consumers are
    /// listed for it.
    media_driven: bool,
}

#[derive(Debug)]
struct Producer {
    info: ProducerInfo,
    consumers: Vec<ConsumerId>,
    last_keyframe_request: Option<Instant>,
    /// Highest video sequence number forwarded so far (single-encoding producers; each
    /// simulcast layer keeps its own).
    last_seq: Option<u64>,
    bitrate: Option<TokenBucket>,
    /// What the producer sends, for budgeting its consumers' paths.
    meter: RateMeter,
    /// Simulcast layers, lowest first; empty for one encoding.
    layers: Vec<LayerState>,
    /// Dynacast: the layers the owner was last told are wanted, and since when fewer are.
    wanted: Vec<u8>,
    unwanted_since: Option<Instant>,
}

#[derive(Debug)]
struct Consumer {
    peer: PeerId,
    producer: ProducerId,
    kind: MediaKind,
    paused: bool,
    queue: ConsumerQueue,
    waker: Option<Waker>,
    /// In its peer's `media_ready` list.
    ready: bool,
    /// A video frame taken by `poll_media` is being written: nothing more is taken until
    /// the sender hands the id back.
    held: bool,
    /// For a consumer of a simulcast producer: its layers.
    layers: Option<LayerSelection>,
    /// A relay's consumer of one layer of a simulcast producer (`consume` with `layer`,
    /// docs/PROTOCOL.md 18): it takes that layer's frames as they came and never switches,
    /// so another relay can mirror every layer (`layers` is `None`).
    pinned: Option<u8>,
    /// Its peer reads audio levels in datagrams (otherwise they are removed).
    wants_audio_level: bool,
}

impl Consumer {
    /// Queues a frame (the queue's policy decides what is lost: `queue.rs`), adds what it
    /// dropped to `dropped`, and wakes the sender if the frame was queued: the consumer's
    /// own, or its peer's media sender (through the peer's ready list).
    fn enqueue(
        &mut self,
        id: ConsumerId,
        frame: QueuedFrame,
        dropped: &mut u64,
        peers: &mut HashMap<PeerId, Peer>,
    ) -> PushOutcome {
        let outcome = self.queue.push(frame);
        match outcome {
            PushOutcome::Queued => {}
            PushOutcome::QueuedAfterDrop { dropped: n }
            | PushOutcome::NeedsKeyframe { dropped: n } => {
                *dropped += n;
            }
        }
        if matches!(outcome, PushOutcome::NeedsKeyframe { .. }) {
            return outcome;
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        // Listed for the peer's media sender only once one polls: a peer whose consumers
        // are each pulled alone (a relay link's) keeps no list.
        if let Some(peer) = peers.get_mut(&self.peer)
            && peer.media_driven
            && self.list_ready(id, &mut peer.media_ready)
            && let Some(waker) = peer.media_waker.take()
        {
            waker.wake();
        }
        outcome
    }

    /// Puts the consumer on its peer's ready list `list` if it has a frame to take, is not
    /// held by a write and is not listed yet (so it is listed at most once). Whether it was.
    fn list_ready(&mut self, id: ConsumerId, list: &mut VecDeque<ConsumerId>) -> bool {
        if self.ready || self.held || self.queue.is_empty() {
            return false;
        }
        self.ready = true;
        list.push_back(id);
        true
    }
}

/// Per-consumer figures, for tests and the admin view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerStats {
    pub queued: usize,
    pub high_water: usize,
    pub dropped: u64,
}

#[derive(Debug)]
pub struct Room {
    name: String,
    config: Arc<RelayConfig>,
    ids: Ids,
    /// The room's peers, ordered so that listings and broadcasts are deterministic.
    members: BTreeSet<PeerId>,
    peers: HashMap<PeerId, Peer>,
    producers: HashMap<ProducerId, Producer>,
    consumers: HashMap<ConsumerId, Consumer>,
    speakers: SpeakerDetector,
    /// With `config.room_events`: what happened, for `drain_events`, and how many events
    /// did not fit.
    events: VecDeque<RoomEvent>,
    events_dropped: u64,
    stats: RelayStats,
}

/// Largest `params` of a producer, as JSON bytes.
pub const MAX_PARAMS_SIZE: usize = 4096;

fn err(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, message)
}

/// A room name the directory accepts.
pub(crate) fn validate_room(room: &str) -> Result<(), ProtocolError> {
    let ok = (1..=64).contains(&room.len())
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorCode::InvalidRoom,
            "room names are 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
        ))
    }
}

/// The one protocol version this relay speaks.
pub(crate) fn check_version(version: u32) -> Result<(), ProtocolError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(err(
            ErrorCode::UnsupportedVersion,
            format!("this relay speaks protocol version {PROTOCOL_VERSION}, not {version}"),
        ))
    }
}

fn validate_name(name: &str) -> Result<(), ProtocolError> {
    let chars = name.chars().count();
    if (1..=64).contains(&chars) && !name.chars().any(char::is_control) && !name.trim().is_empty() {
        Ok(())
    } else {
        Err(err(
            ErrorCode::InvalidName,
            "display names are 1 to 64 printable characters",
        ))
    }
}

impl Room {
    /// An empty room. `ids` is shared by every room of a relay, so ids stay unique across
    /// rooms (an operator kicks a peer by id alone).
    pub fn new(name: &str, config: Arc<RelayConfig>, ids: Ids) -> Self {
        Self {
            name: name.to_owned(),
            config,
            ids,
            members: BTreeSet::new(),
            peers: HashMap::new(),
            producers: HashMap::new(),
            consumers: HashMap::new(),
            speakers: SpeakerDetector::default(),
            events: VecDeque::new(),
            events_dropped: 0,
            stats: RelayStats::default(),
        }
    }

    /// Whether the room's events report what this peer does: not for a relay's hidden link,
    /// nor for the mirror of a peer connected to another relay (that relay reports it), so
    /// each peer's events in a room spanning relays come once, from its own relay.
    fn reported(&self, peer_id: PeerId) -> bool {
        self.peers
            .get(&peer_id)
            .is_none_or(|p| !p.hidden && p.relay.is_none())
    }

    fn log_event(&mut self, event: RoomEvent) {
        if !self.config.room_events {
            return;
        }
        if self.events.len() >= MAX_ROOM_EVENTS {
            self.events_dropped += 1;
        } else {
            self.events.push_back(event);
        }
    }

    /// The room events since the last drain, in order, and how many were dropped for want
    /// of room (the drain is expected at least every second or so).
    pub fn drain_events(&mut self) -> (Vec<RoomEvent>, u64) {
        let dropped = std::mem::take(&mut self.events_dropped);
        (self.events.drain(..).collect(), dropped)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// What this room has counted since it was created.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// No peers: the directory removes the room.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn has_peer(&self, peer_id: PeerId) -> bool {
        self.peers.contains_key(&peer_id)
    }

    pub fn has_producer(&self, producer_id: ProducerId) -> bool {
        self.producers.contains_key(&producer_id)
    }

    /// The peer that owns a producer.
    pub fn producer_peer(&self, producer_id: ProducerId) -> Option<PeerId> {
        self.producers.get(&producer_id).map(|p| p.info.peer_id)
    }

    /// How many consumers a producer has (a relay mirroring it pulls it only while some
    /// do).
    pub fn producer_consumers(&self, producer_id: ProducerId) -> Option<usize> {
        self.producers.get(&producer_id).map(|p| p.consumers.len())
    }

    /// Dynacast: the layers of a simulcast producer its consumers need, brought up to
    /// `now` as its owner is told (a layer no longer needed goes after [`DYNACAST_DELAY`]);
    /// `None` for an unknown producer. For a producer whose owner has no session, whose
    /// path samples would otherwise bring it up to date: another relay's mirror.
    pub fn wanted_layers(&mut self, producer_id: ProducerId, now: Instant) -> Option<&[u8]> {
        self.update_dynacast(producer_id, now);
        self.producers
            .get(&producer_id)
            .map(|p| p.wanted.as_slice())
    }

    /// A peer's consumers of one producer: for another relay's consumers of one layer each,
    /// their layers, and whether each is paused.
    pub fn consumers_of(
        &self,
        peer_id: PeerId,
        producer_id: ProducerId,
    ) -> Vec<(ConsumerId, Option<u8>, bool)> {
        let Some(producer) = self.producers.get(&producer_id) else {
            return Vec::new();
        };
        producer
            .consumers
            .iter()
            .filter_map(|id| self.consumers.get(id).map(|c| (id, c)))
            .filter(|(_, c)| c.peer == peer_id)
            .map(|(id, c)| (*id, c.pinned, c.paused))
            .collect()
    }

    /// The peers joined as themselves, not as what another relay brings (neither
    /// hidden nor shown with a relay).
    pub fn local_members(&self) -> usize {
        self.peers
            .values()
            .filter(|p| !p.hidden && p.relay.is_none())
            .count()
    }

    pub fn has_consumer(&self, consumer_id: ConsumerId) -> bool {
        self.consumers.contains_key(&consumer_id)
    }

    /// Peers, producers and consumers of this room (`rooms` is 1).
    pub fn counts(&self) -> RelayCounts {
        RelayCounts {
            rooms: 1,
            // Peers connected here: not another relay's link, nor its peers mirrored here
            // (`/metrics` counts those apart).
            peers: self.local_members(),
            producers: self.producers.len(),
            consumers: self.consumers.len(),
        }
    }

    /// The highest queue depth any open consumer has reached, per kind (audio, video).
    pub fn queue_high_water(&self) -> (usize, usize) {
        let mut high = (0, 0);
        for c in self.consumers.values() {
            let slot = match c.kind {
                MediaKind::Audio => &mut high.0,
                MediaKind::Video => &mut high.1,
            };
            *slot = (*slot).max(c.queue.high_water);
        }
        high
    }

    pub fn consumer_stats(&self, consumer_id: ConsumerId) -> Option<ConsumerStats> {
        self.consumers.get(&consumer_id).map(|c| ConsumerStats {
            queued: c.queue.len(),
            high_water: c.queue.high_water,
            dropped: c.queue.dropped,
        })
    }

    /// The consumers of one peer, with the producer each one consumes.
    pub fn peer_consumers(&self, peer_id: PeerId) -> Vec<(ConsumerId, ProducerId)> {
        self.peers
            .get(&peer_id)
            .map(|p| {
                p.consumers
                    .iter()
                    .map(|cid| (*cid, self.consumers[cid].producer))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The room with its peers and their producers, for the admin API.
    pub fn snapshot(&self) -> RoomSnapshot {
        RoomSnapshot {
            room: self.name.clone(),
            peers: self
                .members
                .iter()
                .map(|p| PeerSnapshot {
                    consumers: self.peers[p].consumers.len(),
                    peer: self.peer_info(*p),
                    transport: self.transport_snapshot(*p, None),
                })
                .collect(),
        }
    }

    /// The room's peers.
    pub fn members(&self) -> Vec<PeerId> {
        self.members.iter().copied().collect()
    }

    /// Has a peer's session closed with `reason` (an operator removed it). The peer is
    /// told, then freed as its session ends. False if there is no such peer.
    pub fn kick(&mut self, peer_id: PeerId, reason: &str) -> bool {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return false;
        };
        let e = err(ErrorCode::Kicked, reason);
        // Past any outbox limit: this must reach the session.
        peer.outbox.push_back(PeerOutput::Disconnect {
            code: close_code::KICKED,
            error: e,
            notify: true,
        });
        if let Some(waker) = peer.waker.take() {
            waker.wake();
        }
        true
    }

    /// Pauses or resumes a producer on an operator's behalf; its owner is told too.
    /// False if there is no such producer.
    pub fn set_producer_paused_by_admin(
        &mut self,
        producer_id: ProducerId,
        paused: bool,
        now: Instant,
    ) -> bool {
        let Some(owner) = self.producers.get(&producer_id).map(|p| p.info.peer_id) else {
            return false;
        };
        if self.set_producer_paused(owner, producer_id, paused, now) == Ok(true) {
            let message = if paused {
                ServerMessage::ProducerPaused { producer_id }
            } else {
                ServerMessage::ProducerResumed { producer_id }
            };
            self.send(owner, message);
        }
        true
    }

    /// The room and display name of a peer, for logs.
    pub fn peer_label(&self, peer_id: PeerId) -> Option<(&str, &str)> {
        self.peers
            .get(&peer_id)
            .map(|p| (self.name.as_str(), p.name.as_str()))
    }

    fn new_id(&mut self) -> u64 {
        self.ids.next()
    }

    // ---- outputs -------------------------------------------------------------------------

    fn push_output(&mut self, peer_id: PeerId, output: PeerOutput) {
        let max = self.config.max_outbox;
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        // An interrupted peer has no session to read it; a resumed one gets the room's
        // state in its result instead.
        if peer.overflowed || peer.interrupted.is_some() {
            return;
        }
        if peer.outbox.len() >= max {
            peer.overflowed = true;
            peer.outbox.push_back(PeerOutput::Disconnect {
                code: close_code::SLOW_CONTROL,
                error: err(
                    ErrorCode::SlowControl,
                    format!("more than {max} control messages waiting: the peer is not reading"),
                ),
                notify: false,
            });
        } else {
            peer.outbox.push_back(output);
        }
        if let Some(waker) = peer.waker.take() {
            waker.wake();
        }
    }

    fn send(&mut self, peer_id: PeerId, message: ServerMessage) {
        self.push_output(peer_id, PeerOutput::Message(message));
    }

    /// Sends `message` to every peer of the room but `except`. A peer another relay brings
    /// hears nothing: the relay it is connected to tells it itself (its own link hears the
    /// room, docs/PROTOCOL.md 18).
    fn broadcast(&mut self, except: PeerId, message: ServerMessage) {
        let targets: Vec<PeerId> = self
            .members
            .iter()
            .copied()
            .filter(|p| *p != except && !self.peers[p].is_mirror())
            .collect();
        for peer_id in targets {
            self.send(peer_id, message.clone());
        }
    }

    /// Tells every peer of the room who speaks now.
    fn peers_told_speakers(&mut self, speakers: Vec<crate::wire::SpeakerInfo>) {
        self.stats.speaker_changes += 1;
        // No peer has id 0: everyone gets it.
        self.broadcast(PeerId(0), ServerMessage::ActiveSpeakers { speakers });
    }

    /// Advances the speaker detector's windows to `now` (any input that carries a time
    /// may; the server's path samples make sure one comes every 100 ms).
    pub fn poll_speakers(&mut self, now: Instant) {
        if let Some(speakers) = self.speakers.poll(now) {
            self.peers_told_speakers(speakers);
        }
    }

    /// Next output for a peer. `Ready(None)`: the peer is gone, stop driving it.
    pub fn poll_peer(&mut self, peer_id: PeerId, cx: &mut Context<'_>) -> Poll<Option<PeerOutput>> {
        match self.session_of(peer_id) {
            Some(session) => self.poll_peer_session(peer_id, session, cx),
            None => Poll::Ready(None),
        }
    }

    /// `poll_peer` for one session of the peer: `Ready(None)` once that session is over
    /// (interrupted, or taken over by a resumed one) even though the peer stays.
    pub fn poll_peer_session(
        &mut self,
        peer_id: PeerId,
        session: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<PeerOutput>> {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return Poll::Ready(None);
        };
        if peer.session != session || peer.interrupted.is_some() {
            return Poll::Ready(None);
        }
        match peer.outbox.pop_front() {
            Some(output) => Poll::Ready(Some(output)),
            None if !peer.lossy.is_empty() => {
                Poll::Ready(peer.lossy.pop_front().map(PeerOutput::LossyData))
            }
            None => {
                peer.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Next frame for a consumer, as `poll_media` hands it out. `Ready(None)`: the consumer
    /// is closed, stop its sender. `now` is when the frame leaves for the network: its time
    /// in the relay goes into the forwarding-latency histogram.
    pub fn poll_consumer(
        &mut self,
        consumer_id: ConsumerId,
        now: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<Option<ConsumerFrame>> {
        if !self.consumers.contains_key(&consumer_id) {
            return Poll::Ready(None);
        }
        match self.take_frame(consumer_id, now) {
            Some(frame) => Poll::Ready(Some(self.consumer_frame(consumer_id, frame))),
            None => {
                let consumer = self
                    .consumers
                    .get_mut(&consumer_id)
                    .expect("looked up above");
                consumer.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Next frames for all of a peer's consumers, for its media sender: at most
    /// [`MEDIA_BATCH`] into `out`, and the consumers closed since the last call. `released`
    /// hands back the consumers whose video write finished (or was abandoned) since; it is
    /// emptied. `Ready(None)`: the peer or this session of it is gone, stop the sender.
    /// Each ready consumer gives one frame per round, so a consumer with a backlog does
    /// not starve the others; a video frame holds its consumer until released.
    pub fn poll_media(
        &mut self,
        peer_id: PeerId,
        session: u64,
        now: Instant,
        released: &mut Vec<ConsumerId>,
        out: &mut Vec<MediaOutput>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<()>> {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return Poll::Ready(None);
        };
        if peer.session != session || peer.interrupted.is_some() {
            return Poll::Ready(None);
        }
        if !peer.media_driven {
            // The sender's first poll: list what was queued before it came.
            peer.media_driven = true;
            for consumer_id in &peer.consumers {
                if let Some(c) = self.consumers.get_mut(consumer_id) {
                    c.list_ready(*consumer_id, &mut peer.media_ready);
                }
            }
        }
        out.extend(peer.media_closed.drain(..).map(MediaOutput::Closed));
        for consumer_id in released.drain(..) {
            if let Some(c) = self.consumers.get_mut(&consumer_id) {
                c.held = false;
                c.list_ready(consumer_id, &mut peer.media_ready);
            }
        }
        let mut taken = 0;
        while taken < MEDIA_BATCH {
            let next = self
                .peers
                .get_mut(&peer_id)
                .and_then(|p| p.media_ready.pop_front());
            let Some(consumer_id) = next else {
                break;
            };
            let Some(c) = self.consumers.get_mut(&consumer_id) else {
                continue;
            };
            c.ready = false;
            if c.held {
                // Listed again when released.
                continue;
            }
            let kind = c.kind;
            let Some(frame) = self.take_frame(consumer_id, now) else {
                continue;
            };
            let frame = self.consumer_frame(consumer_id, frame);
            let c = self.consumers.get_mut(&consumer_id).expect("took a frame");
            if kind == MediaKind::Video {
                c.held = true;
            } else if let Some(p) = self.peers.get_mut(&peer_id) {
                // Its next frame after the others' (one frame per consumer per pass).
                c.list_ready(consumer_id, &mut p.media_ready);
            }
            out.push(MediaOutput::Frame(frame));
            taken += 1;
        }
        if !out.is_empty() {
            return Poll::Ready(Some(()));
        }
        let peer = self.peers.get_mut(&peer_id).expect("checked above");
        if !peer
            .media_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            peer.media_waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// A frame just taken for a consumer, as its sender writes it: with its write deadline
    /// (video) and the layer its streams name.
    fn consumer_frame(&self, consumer_id: ConsumerId, frame: QueuedFrame) -> ConsumerFrame {
        let c = &self.consumers[&consumer_id];
        let write_deadline = match c.kind {
            MediaKind::Video => {
                self.write_deadline(consumer_id, frame.arrived, frame.data.len(), frame.keyframe)
            }
            MediaKind::Audio => None,
        };
        ConsumerFrame {
            consumer_id,
            producer_id: c.producer,
            frame,
            write_deadline,
            layer: c.pinned,
        }
    }

    /// The next frame of a consumer that has one: frames grown older than the latency
    /// bound are skipped first (a video consumer then restarts at a keyframe). Counts it
    /// as forwarded, with its time in the relay.
    fn take_frame(&mut self, consumer_id: ConsumerId, now: Instant) -> Option<QueuedFrame> {
        let consumer = self.consumers.get_mut(&consumer_id)?;
        let (bound, late) = match consumer.kind {
            MediaKind::Video => (
                self.config.video_latency_bound,
                &mut self.stats.skipped_late_video,
            ),
            MediaKind::Audio => (
                self.config.audio_latency_bound,
                &mut self.stats.skipped_late_audio,
            ),
        };
        let skipped = consumer.queue.skip_late(now, bound);
        if skipped > 0 {
            *late += skipped;
            let peer = consumer.peer;
            let restart = consumer.queue.waiting_for_keyframe();
            if let Some(p) = self.peers.get_mut(&peer) {
                p.skipped_late += skipped;
            }
            if restart {
                self.consumer_keyframe(consumer_id, now);
            }
        }
        let consumer = self
            .consumers
            .get_mut(&consumer_id)
            .expect("looked up above");
        let frame = consumer.queue.pop()?;
        self.stats.frames_out += 1;
        self.stats.bytes_out += frame.data.len() as u64;
        self.stats
            .forwarding_latency
            .record(now.saturating_duration_since(frame.arrived));
        Some(frame)
    }

    // ---- joining and leaving -------------------------------------------------------------

    /// Admits a new peer with every grant (development mode).
    pub fn join(
        &mut self,
        version: u32,
        name: &str,
        auto_subscribe: bool,
        now: Instant,
    ) -> Result<(PeerId, JoinResult), ProtocolError> {
        self.join_with(
            &Joining {
                version,
                auto_subscribe,
                ..Joining::new(name)
            },
            now,
        )
    }

    /// Admits a new peer that may do what its grants allow (checked on every produce and
    /// consume), or what another relay of the cluster brings (`join_as`, docs/PROTOCOL.md
    /// 18: needs the `relay` grant). The caller writes the result to the peer itself (its
    /// output stream starts after this), then drives `poll_peer`. The room's name was
    /// checked by the directory.
    pub fn join_with(
        &mut self,
        joining: &Joining<'_>,
        now: Instant,
    ) -> Result<(PeerId, JoinResult), ProtocolError> {
        let Joining {
            version,
            name,
            auto_subscribe,
            ref grants,
            extensions,
            ref join_as,
        } = *joining;
        check_version(version)?;
        validate_name(name)?;
        if (join_as.hidden || join_as.peer_id.is_some() || join_as.relay.is_some()) && !grants.relay
        {
            return Err(err(
                ErrorCode::Forbidden,
                "only another relay of the cluster may join as one",
            ));
        }
        if let Some(id) = join_as.peer_id
            && (id.0 == 0 || self.peers.contains_key(&id))
        {
            return Err(err(
                ErrorCode::BadRequest,
                format!("peer id {} is taken in this room", id.0),
            ));
        }
        let limits = &self.config.limits;
        if limits.max_peers_per_room > 0 && self.members.len() >= limits.max_peers_per_room {
            return Err(err(
                ErrorCode::RoomFull,
                format!(
                    "room {} is full ({} peers)",
                    self.name, limits.max_peers_per_room
                ),
            ));
        }
        if auto_subscribe && !grants.can_subscribe {
            return Err(err(
                ErrorCode::Forbidden,
                "this access token does not allow subscribing",
            ));
        }
        let peer_id = match join_as.peer_id {
            Some(id) => id,
            None => PeerId(self.new_id()),
        };
        let peers: Vec<PeerInfo> = self
            .members
            .iter()
            .filter(|p| !self.peers[p].hidden)
            .map(|p| self.peer_info(*p))
            .collect();
        let asked = |name: &str| extensions.iter().any(|e| e == name);
        let resumable = asked(EXT_RESUME) && !self.config.reconnect_grace.is_zero();
        let result = JoinResult {
            version: PROTOCOL_VERSION,
            peer_id,
            room: self.name.clone(),
            name: name.to_owned(),
            ongoing: !peers.is_empty(),
            peers,
            max_datagram_size: self.config.max_datagram_size,
            max_frame_size: self.config.max_frame_size,
            grants: grants.clone(),
            extensions: self.extensions(),
            resume_token: None,
            resume_grace_ms: resumable.then(|| self.config.reconnect_grace.as_millis() as u64),
            resumed: false,
            producers: Vec::new(),
            consumers: Vec::new(),
        };
        let relay_grant = grants.relay;
        let grants = grants.clone();
        self.peers.insert(
            peer_id,
            Peer {
                name: name.to_owned(),
                hidden: join_as.hidden,
                relay: join_as.relay.clone(),
                producers: Vec::new(),
                consumers: BTreeSet::new(),
                auto_subscribe: false,
                grants,
                outbox: VecDeque::new(),
                waker: None,
                overflowed: false,
                last_frame_error: None,
                // Another relay's peers ask on behalf of many (a link consumes every
                // producer of the room): not limited like one client.
                requests: (self.config.limits.max_requests_per_second > 0 && !relay_grant).then(
                    || {
                        let rate = f64::from(self.config.limits.max_requests_per_second);
                        TokenBucket::new(rate * 2.0, rate)
                    },
                ),
                path: PathEstimator::default(),
                last_transport_stats: None,
                skipped_late: 0,
                last_queue_ms: 0.0,
                budget: LinkBudget::default(),
                wants_audio_level: asked(EXT_AUDIO_LEVEL),
                resumable,
                resume_token: None,
                session: 0,
                interrupted: None,
                subscriptions: Vec::new(),
                wants_lossy_data: asked(EXT_LOSSY_DATA),
                lossy: VecDeque::new(),
                data_bytes: TokenBucket::new(DATA_BURST_BYTES, DATA_BYTES_PER_SECOND),
                lossy_rate: TokenBucket::new(LOSSY_DATA_PER_SECOND, LOSSY_DATA_PER_SECOND),
                data_backlog: VecDeque::new(),
                data_backlog_bytes: 0,
                data_pace: TokenBucket::new(DATA_DELIVERY_BURST, DATA_DELIVERY_MAX),
                media_ready: VecDeque::new(),
                media_closed: Vec::new(),
                media_waker: None,
                media_driven: false,
            },
        );
        if self.members.is_empty() {
            self.log_event(RoomEvent::RoomStarted);
        }
        self.members.insert(peer_id);
        // Who speaks now, for a peer that walks into a conversation.
        let speakers = self.speakers.current();
        if !speakers.is_empty() {
            self.send(peer_id, ServerMessage::ActiveSpeakers { speakers });
        }
        if !join_as.hidden {
            if self.reported(peer_id) {
                self.log_event(RoomEvent::PeerJoined {
                    peer_id,
                    name: name.to_owned(),
                });
            }
            self.broadcast(
                peer_id,
                ServerMessage::PeerJoined {
                    peer: self.peer_info(peer_id),
                },
            );
        }
        if auto_subscribe {
            self.set_auto_subscribe(peer_id, true, now);
        }
        Ok((peer_id, result))
    }

    /// The extensions this room's relay supports (`resume` only with a grace period).
    fn extensions(&self) -> Vec<String> {
        EXTENSIONS
            .iter()
            .filter(|e| **e != EXT_RESUME || !self.config.reconnect_grace.is_zero())
            .map(|e| (*e).to_owned())
            .collect()
    }

    /// Sets the secret a later session must present to resume `peer_id` (the IO layer
    /// makes it: the core has no randomness). Only for a peer that asked to be resumable.
    pub fn set_resume_token(&mut self, peer_id: PeerId, token: String) -> bool {
        match self.peers.get_mut(&peer_id) {
            Some(peer) if peer.resumable => {
                peer.resume_token = Some(token);
                true
            }
            _ => false,
        }
    }

    /// The session that drives `peer_id` now (0 at join, one more per resumption).
    pub fn session_of(&self, peer_id: PeerId) -> Option<u64> {
        self.peers.get(&peer_id).map(|p| p.session)
    }

    /// A session of `peer_id` ended. A peer that asked to be resumable and did not leave
    /// keeps its place for `reconnect_grace`: its consumers are closed (and remembered),
    /// its producers stay, the room hears `peer_interrupted`. Otherwise it leaves.
    pub fn end_session(
        &mut self,
        peer_id: PeerId,
        session: u64,
        reason: LeaveReason,
        now: Instant,
    ) -> SessionEnd {
        let Some(peer) = self.peers.get(&peer_id) else {
            return SessionEnd::Left;
        };
        if peer.session != session || peer.interrupted.is_some() {
            return SessionEnd::Stale;
        }
        if reason == LeaveReason::Left || !peer.resumable {
            self.leave(peer_id, reason);
            return SessionEnd::Left;
        }
        self.interrupt(peer_id, now);
        SessionEnd::Interrupted
    }

    /// Closes a peer's consumers, returning what they were, to recreate them later.
    fn set_aside_consumers(&mut self, peer_id: PeerId) -> Vec<Subscription> {
        let Some(peer) = self.peers.get(&peer_id) else {
            return Vec::new();
        };
        let consumers: Vec<ConsumerId> = peer.consumers.iter().copied().collect();
        let subscriptions = consumers
            .iter()
            .filter_map(|c| self.consumers.get(c))
            .map(|c| Subscription {
                producer: c.producer,
                paused: c.paused,
                preference: c.layers.as_ref().map(|l| l.preference),
                pinned: c.pinned,
            })
            .collect();
        for consumer_id in consumers {
            self.remove_consumer(consumer_id);
        }
        subscriptions
    }

    fn interrupt(&mut self, peer_id: PeerId, now: Instant) {
        if !self.peers.contains_key(&peer_id) {
            return;
        }
        let subscriptions = self.set_aside_consumers(peer_id);
        let peer = self.peers.get_mut(&peer_id).expect("checked");
        peer.subscriptions = subscriptions;
        peer.session += 1;
        peer.interrupted = Some(now);
        // What was due to the dropped session is stale: a resumed session gets the room as
        // it is then, in its result.
        peer.outbox.clear();
        peer.lossy.clear();
        peer.data_backlog.clear();
        peer.data_backlog_bytes = 0;
        peer.overflowed = false;
        // The consumers went with the session (set aside above); so does its sender.
        peer.media_ready.clear();
        peer.media_closed.clear();
        peer.media_driven = false;
        if let Some(waker) = peer.waker.take() {
            waker.wake();
        }
        if let Some(waker) = peer.media_waker.take() {
            waker.wake();
        }
        self.broadcast(peer_id, ServerMessage::PeerInterrupted { peer_id });
    }

    /// A new session takes `peer_id`'s place back with the token it was given. A peer
    /// whose old session is still open is taken over (that session ends). Returns the new
    /// session's number and its join result: the others as they are now, the peer's own
    /// producers (same ids), and its consumers recreated (new ids; the producers that
    /// still exist), each also started with a `StartConsumer`.
    pub fn resume(
        &mut self,
        peer_id: PeerId,
        token: &str,
        now: Instant,
    ) -> Result<(u64, JoinResult), ProtocolError> {
        let refused = || {
            err(
                ErrorCode::ResumeFailed,
                "nothing to resume: the place was given up, or the relay restarted; join anew",
            )
        };
        let peer = self.peers.get(&peer_id).ok_or_else(refused)?;
        if !peer.resumable || peer.resume_token.as_deref() != Some(token) {
            return Err(refused());
        }
        if peer.interrupted.is_none() {
            self.interrupt(peer_id, now);
        }
        // Consumers made for it meanwhile (auto-subscribe) were never started: they are
        // recreated with the others.
        let mut later = self.set_aside_consumers(peer_id);
        let peer = self.peers.get_mut(&peer_id).expect("checked");
        peer.interrupted = None;
        let session = peer.session;
        let mut subscriptions = std::mem::take(&mut peer.subscriptions);
        subscriptions.append(&mut later);
        let own = peer.producers.clone();
        let mut consumers = Vec::new();
        for s in subscriptions {
            if !self.producers.contains_key(&s.producer) {
                continue;
            }
            let mut info = self.add_consumer(peer_id, s.producer, s.paused, s.pinned, now);
            if let (Some(preference), Some(consumer)) =
                (s.preference, self.consumers.get_mut(&info.consumer_id))
                && let Some(selection) = consumer.layers.as_mut()
            {
                selection.preference = preference;
                self.reallocate(peer_id, now);
                info.layer = self.consumers[&info.consumer_id]
                    .layers
                    .as_ref()
                    .map(|l| l.target);
            }
            consumers.push(info);
        }
        // Its encoders restart: whoever consumes its video waits for a keyframe.
        for producer_id in &own {
            for consumer_id in self.producers[producer_id].consumers.clone() {
                if let Some(c) = self.consumers.get_mut(&consumer_id) {
                    c.queue.resync();
                }
            }
            self.request_keyframe(*producer_id, now);
        }
        self.broadcast(peer_id, ServerMessage::PeerResumed { peer_id });
        let peer = &self.peers[&peer_id];
        let result = JoinResult {
            version: PROTOCOL_VERSION,
            peer_id,
            room: self.name.clone(),
            name: peer.name.clone(),
            ongoing: self.members.len() > 1,
            peers: self
                .members
                .iter()
                .filter(|p| **p != peer_id)
                .map(|p| self.peer_info(*p))
                .collect(),
            max_datagram_size: self.config.max_datagram_size,
            max_frame_size: self.config.max_frame_size,
            grants: peer.grants.clone(),
            extensions: self.extensions(),
            resume_token: peer.resume_token.clone(),
            resume_grace_ms: Some(self.config.reconnect_grace.as_millis() as u64),
            resumed: true,
            producers: own.iter().map(|p| self.producers[p].info.clone()).collect(),
            consumers,
        };
        Ok((session, result))
    }

    /// Peers whose grace period ended by `now` leave (as disconnected); returns them.
    pub fn expire_interrupted(&mut self, now: Instant) -> Vec<PeerId> {
        let grace = self.config.reconnect_grace;
        let expired: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.interrupted
                    .is_some_and(|since| now.saturating_duration_since(since) >= grace)
            })
            .map(|(id, _)| *id)
            .collect();
        for peer_id in &expired {
            self.leave(*peer_id, LeaveReason::Disconnected);
        }
        expired
    }

    fn peer_info(&self, peer_id: PeerId) -> PeerInfo {
        let peer = &self.peers[&peer_id];
        PeerInfo {
            peer_id,
            name: peer.name.clone(),
            producers: peer
                .producers
                .iter()
                .map(|p| self.producers[p].info.clone())
                .collect(),
            relay: peer.relay.clone(),
        }
    }

    /// Removes a peer and everything it owns, telling the rest of its room.
    pub fn leave(&mut self, peer_id: PeerId, reason: LeaveReason) {
        let Some(peer) = self.peers.get(&peer_id) else {
            return;
        };
        let consumers: Vec<ConsumerId> = peer.consumers.iter().copied().collect();
        let producers = peer.producers.clone();
        for consumer_id in consumers {
            self.remove_consumer(consumer_id);
        }
        for producer_id in producers {
            self.remove_producer(producer_id);
        }
        let mut hidden = false;
        if let Some(mut peer) = self.peers.remove(&peer_id) {
            if let Some(waker) = peer.waker.take() {
                waker.wake();
            }
            if let Some(waker) = peer.media_waker.take() {
                waker.wake();
            }
            hidden = peer.hidden;
            if !hidden && peer.relay.is_none() {
                self.log_event(RoomEvent::PeerLeft {
                    peer_id,
                    name: peer.name,
                    reason,
                });
            }
        }
        self.members.remove(&peer_id);
        if !hidden {
            self.broadcast(peer_id, ServerMessage::PeerLeft { peer_id, reason });
        }
    }

    // ---- requests ------------------------------------------------------------------------

    /// Handles one request of a joined peer. Its response (or error) goes to the peer's
    /// outbox ahead of anything the request caused for the same peer, so a client always
    /// learns an id from the response before it sees it elsewhere.
    ///
    /// `leave` removes the peer; what was still waiting for it, then the response, is
    /// returned for the caller to write, since the peer has no outbox any more.
    pub fn handle(
        &mut self,
        peer_id: PeerId,
        message: ClientMessage,
        now: Instant,
    ) -> Vec<ServerMessage> {
        let id = message.id;
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            let e = err(ErrorCode::NotJoined, "this session has not joined a room");
            return vec![ServerMessage::error(Some(id), &e)];
        };
        if let Request::Leave = message.request {
            let mut last: Vec<ServerMessage> = peer
                .outbox
                .drain(..)
                .filter_map(|o| match o {
                    PeerOutput::Message(m) => Some(m),
                    _ => None,
                })
                .collect();
            self.leave(peer_id, LeaveReason::Left);
            last.push(ServerMessage::Response {
                id,
                result: Reply::Done(Done {}),
            });
            return last;
        }
        let mark = peer.outbox.len();
        let within_rate = peer
            .requests
            .as_mut()
            .is_none_or(|bucket| bucket.try_take(1.0, now));
        let outcome = if within_rate {
            self.dispatch(peer_id, message.request, now)
        } else {
            Err(err(
                ErrorCode::RateLimited,
                format!(
                    "more than {} requests per second",
                    self.config.limits.max_requests_per_second
                ),
            ))
        };
        let reply = match outcome {
            Ok(result) => ServerMessage::Response { id, result },
            Err(e) => ServerMessage::error(Some(id), &e),
        };
        if let Some(peer) = self.peers.get_mut(&peer_id)
            && !peer.overflowed
        {
            let at = mark.min(peer.outbox.len());
            peer.outbox.insert(at, PeerOutput::Message(reply));
            if let Some(waker) = peer.waker.take() {
                waker.wake();
            }
        }
        Vec::new()
    }

    fn dispatch(
        &mut self,
        peer_id: PeerId,
        request: Request,
        now: Instant,
    ) -> Result<Reply, ProtocolError> {
        let empty = || Reply::Done(Done {});
        match request {
            Request::Join { .. } => Err(err(
                ErrorCode::AlreadyJoined,
                "this session has already joined a room",
            )),
            // `handle` takes care of it before dispatching (the peer is gone afterwards).
            Request::Leave => Err(err(ErrorCode::Internal, "leave dispatched twice")),
            Request::Produce {
                kind,
                codec,
                params,
                source,
                layers,
                producer_id,
            } => {
                let count = layers.len();
                let source = source.unwrap_or(TrackSource::default_for(kind));
                let track = Track {
                    kind,
                    source,
                    codec,
                    params,
                    layers,
                };
                self.produce(peer_id, track, producer_id, now)
                    .map(|producer_id| {
                        Reply::Produced(ProduceResult {
                            producer_id,
                            layers: (count > 0).then_some(count),
                        })
                    })
            }
            Request::CloseProducer { producer_id } => {
                self.own_producer(peer_id, producer_id)?;
                self.remove_producer(producer_id);
                Ok(empty())
            }
            Request::PauseProducer { producer_id } => self
                .set_producer_paused(peer_id, producer_id, true, now)
                .map(|_| empty()),
            Request::ResumeProducer { producer_id } => self
                .set_producer_paused(peer_id, producer_id, false, now)
                .map(|_| empty()),
            Request::Consume {
                producer_id,
                paused,
                layer,
            } => self
                .consume(peer_id, producer_id, paused, layer, now)
                .map(Reply::Consumed),
            Request::CloseConsumer { consumer_id } => {
                self.own_consumer(peer_id, consumer_id)?;
                self.remove_consumer(consumer_id);
                Ok(empty())
            }
            Request::PauseConsumer { consumer_id } => self
                .set_consumer_paused(peer_id, consumer_id, true, now)
                .map(|_| empty()),
            Request::ResumeConsumer { consumer_id } => self
                .set_consumer_paused(peer_id, consumer_id, false, now)
                .map(|_| empty()),
            Request::SetAutoSubscribe { enabled } => {
                if enabled && !self.peers[&peer_id].grants.can_subscribe {
                    return Err(err(
                        ErrorCode::Forbidden,
                        "this access token does not allow subscribing",
                    ));
                }
                self.set_auto_subscribe(peer_id, enabled, now);
                Ok(empty())
            }
            Request::RequestKeyframe { consumer_id } => {
                self.own_consumer(peer_id, consumer_id)?;
                self.consumer_keyframe(consumer_id, now);
                Ok(empty())
            }
            Request::SetPreferredLayers {
                consumer_id,
                max_layer,
                max_width,
                max_height,
            } => {
                self.own_consumer(peer_id, consumer_id)?;
                let consumer = self.consumers.get_mut(&consumer_id).expect("checked");
                // A consumer of a single-encoding producer keeps the preference for nothing:
                // accepted, so that a client need not know which producers have layers.
                if let Some(selection) = consumer.layers.as_mut() {
                    selection.preference = Preference {
                        max_layer,
                        max_width,
                        max_height,
                    };
                    self.reallocate(peer_id, now);
                }
                Ok(empty())
            }
            Request::SendData { payload, to, topic } => self
                .send_data(peer_id, payload, to, topic, now)
                .map(|delivered| Reply::DataSent(DataSent { delivered })),
        }
    }

    /// `send_data`: checked whole before anything is sent, so a refusal sends nothing.
    fn send_data(
        &mut self,
        peer_id: PeerId,
        payload: String,
        to: Vec<PeerId>,
        topic: Option<String>,
        now: Instant,
    ) -> Result<usize, ProtocolError> {
        if !self.peers[&peer_id].grants.can_publish_data {
            return Err(err(
                ErrorCode::Forbidden,
                "this access token does not allow sending data",
            ));
        }
        if payload.is_empty() {
            return Err(err(ErrorCode::BadRequest, "the payload is empty"));
        }
        if payload.len() > MAX_DATA_PAYLOAD {
            return Err(err(
                ErrorCode::DataTooLarge,
                format!(
                    "a payload of {} bytes exceeds the limit of {MAX_DATA_PAYLOAD}",
                    payload.len()
                ),
            ));
        }
        if let Some(t) = &topic
            && (t.is_empty() || t.chars().count() > 64 || t.chars().any(char::is_control))
        {
            return Err(err(
                ErrorCode::BadRequest,
                "a topic is 1 to 64 printable characters",
            ));
        }
        let recipients = self.data_recipients(peer_id, &to)?;
        // Accepted data is never dropped: a recipient that cannot take it at its pace
        // refuses it now, whole, rather than lose it later.
        let size = payload.len() + topic.as_ref().map_or(0, String::len) + 64;
        if let Some(busy) = recipients.iter().find(|r| {
            self.peers
                .get(r)
                .is_some_and(|p| p.data_backlog_bytes + size > MAX_DATA_BACKLOG)
        }) {
            return Err(err(
                ErrorCode::RateLimited,
                format!("peer {busy} receives data more slowly than it is sent; try again later"),
            ));
        }
        let peer = self.peers.get_mut(&peer_id).expect("caller checked");
        if !peer.data_bytes.try_take(payload.len() as f64, now) {
            return Err(err(
                ErrorCode::RateLimited,
                format!(
                    "more than {} KiB of data per second",
                    DATA_BYTES_PER_SECOND as u64 / 1024
                ),
            ));
        }
        self.stats.data_messages += 1;
        let message = ServerMessage::Data {
            from: peer_id,
            payload,
            topic,
            reliable: true,
        };
        for recipient in &recipients {
            if let Some(peer) = self.peers.get_mut(recipient)
                && peer.interrupted.is_none()
            {
                peer.data_backlog.push_back((size, message.clone()));
                peer.data_backlog_bytes += size;
            }
            self.release_data(*recipient, now);
        }
        Ok(recipients.len())
    }

    /// Sends `peer_id` the data waiting for it that its pace allows by `now` (a share of
    /// what its path carries, so that data never crowds out its media).
    fn release_data(&mut self, peer_id: PeerId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let rate = peer
            .budget
            .available_bps()
            .map_or(DATA_DELIVERY_MAX, |bps| {
                (bps / 8.0 * DATA_DELIVERY_SHARE).clamp(DATA_DELIVERY_MIN, DATA_DELIVERY_MAX)
            });
        peer.data_pace.set_rate(rate);
        let mut due = Vec::new();
        while let Some((size, _)) = peer.data_backlog.front() {
            // A message larger than the burst goes once the bucket is full.
            let take = (*size as f64).min(DATA_DELIVERY_BURST);
            if !peer.data_pace.try_take(take, now) {
                break;
            }
            let (size, message) = peer.data_backlog.pop_front().expect("a front");
            peer.data_backlog_bytes -= size;
            due.push(message);
        }
        for message in due {
            self.send(peer_id, message);
        }
    }

    /// The peers data from `peer_id` addressed `to` goes to: all the others for an empty
    /// list; otherwise each named one, which must be another peer of this room.
    fn data_recipients(
        &self,
        peer_id: PeerId,
        to: &[PeerId],
    ) -> Result<Vec<PeerId>, ProtocolError> {
        if to.len() > MAX_DATA_RECIPIENTS {
            return Err(err(
                ErrorCode::BadRequest,
                format!("at most {MAX_DATA_RECIPIENTS} recipients"),
            ));
        }
        if to.is_empty() {
            // Everyone here; another relay's mirrored peers hear it through that relay's
            // link, which is hidden and so among the recipients (docs/PROTOCOL.md 18).
            return Ok(self
                .members
                .iter()
                .copied()
                .filter(|p| *p != peer_id && !self.peers[p].is_mirror())
                .collect());
        }
        let mut recipients = Vec::with_capacity(to.len());
        for p in to {
            if *p == peer_id || !self.members.contains(p) {
                return Err(err(
                    ErrorCode::UnknownPeer,
                    format!("no other peer {p} in room {}", self.name),
                ));
            }
            if !recipients.contains(p) {
                recipients.push(*p);
            }
        }
        Ok(recipients)
    }

    /// A lossy data datagram from `peer_id` (`docs/PROTOCOL.md` 15.5): delivered now to each
    /// recipient that asked for lossy data, or dropped; it never waits behind anything.
    /// A refusal is reported like refused media and returned.
    pub fn on_lossy_data(
        &mut self,
        peer_id: PeerId,
        to: &[u64],
        payload: &[u8],
        now: Instant,
    ) -> Result<usize, ProtocolError> {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return Ok(0);
        };
        let checked = if !peer.grants.can_publish_data {
            Err(err(
                ErrorCode::Forbidden,
                "this access token does not allow sending data",
            ))
        } else if !peer.grants.relay && !peer.lossy_rate.try_take(1.0, now) {
            // (Another relay's peers are not limited: the sender was, on its own relay,
            // and a message to several remote peers goes up once per recipient.)
            Err(err(
                ErrorCode::RateLimited,
                format!("more than {LOSSY_DATA_PER_SECOND} lossy data messages per second"),
            ))
        } else {
            let to: Vec<PeerId> = to.iter().map(|p| PeerId(*p)).collect();
            self.data_recipients(peer_id, &to)
        };
        let recipients = match checked {
            Ok(r) => r,
            Err(e) => {
                self.report_frame_error(peer_id, None, &e, now);
                return Err(e);
            }
        };
        // One datagram for every recipient: the sender's id is the only rewrite.
        let datagram = encode_delivered_data(peer_id.0, payload);
        let mut delivered = 0;
        for recipient in recipients {
            let Some(peer) = self.peers.get_mut(&recipient) else {
                continue;
            };
            if !peer.wants_lossy_data || peer.interrupted.is_some() {
                continue;
            }
            if peer.lossy.len() >= MAX_LOSSY_QUEUE {
                peer.lossy.pop_front();
                self.stats.dropped_lossy_data += 1;
            }
            peer.lossy.push_back(datagram.clone());
            delivered += 1;
            if let Some(waker) = peer.waker.take() {
                waker.wake();
            }
        }
        self.stats.lossy_data_messages += 1;
        Ok(delivered)
    }

    fn own_producer(&self, peer_id: PeerId, producer_id: ProducerId) -> Result<(), ProtocolError> {
        match self.producers.get(&producer_id) {
            Some(p) if p.info.peer_id == peer_id => Ok(()),
            Some(_) => Err(err(
                ErrorCode::NotOwner,
                format!("producer {producer_id} belongs to another peer"),
            )),
            None => Err(err(
                ErrorCode::UnknownProducer,
                format!("no producer {producer_id}"),
            )),
        }
    }

    fn own_consumer(&self, peer_id: PeerId, consumer_id: ConsumerId) -> Result<(), ProtocolError> {
        match self.consumers.get(&consumer_id) {
            Some(c) if c.peer == peer_id => Ok(()),
            _ => Err(err(
                ErrorCode::UnknownConsumer,
                format!("no consumer {consumer_id} of yours"),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// Adds a producer for `peer_id`: under a new id, or under `given` (a relay mirroring
    /// a peer of its own, docs/PROTOCOL.md 18).
    pub fn produce(
        &mut self,
        peer_id: PeerId,
        track: Track,
        given: Option<ProducerId>,
        now: Instant,
    ) -> Result<ProducerId, ProtocolError> {
        let Track {
            kind,
            source,
            codec,
            params,
            layers,
        } = track;
        if !self.peers.contains_key(&peer_id) {
            return Err(err(ErrorCode::UnknownPeer, "no such peer in this room"));
        }
        if self.peers[&peer_id].hidden {
            return Err(err(ErrorCode::Forbidden, "a relay's link only subscribes"));
        }
        if let Some(id) = given {
            if !self.peers[&peer_id].grants.relay {
                return Err(err(
                    ErrorCode::Forbidden,
                    "only another relay of the cluster may choose a producer id",
                ));
            }
            if id.0 == 0 || self.producers.contains_key(&id) {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("producer id {} is taken in this room", id.0),
                ));
            }
        }
        validate_layers(kind, &layers)?;
        if source.kind() != kind {
            return Err(err(
                ErrorCode::BadRequest,
                format!(
                    "source {} is not {} (video: camera or screen; audio: microphone or screen_audio)",
                    source.as_str(),
                    kind.as_str()
                ),
            ));
        }
        let grants = &self.peers[&peer_id].grants;
        if !grants.may_publish(kind) {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "this access token does not allow publishing {}",
                    kind.as_str()
                ),
            ));
        }
        if !grants.may_publish_source(source) {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "this access token does not allow publishing a {} track",
                    source.as_str().replace('_', " ")
                ),
            ));
        }
        let max_producers = self.config.limits.max_producers_per_peer;
        if max_producers > 0 && self.peers[&peer_id].producers.len() >= max_producers {
            return Err(err(
                ErrorCode::TooManyProducers,
                format!("a peer may have at most {max_producers} producers"),
            ));
        }
        // Params are repeated to every peer of the room and in every join result: keep
        // them small (a WebCodecs description is a few hundred bytes).
        let params_size = serde_json::to_vec(&params).map_or(usize::MAX, |v| v.len());
        if params_size > MAX_PARAMS_SIZE {
            return Err(err(
                ErrorCode::BadRequest,
                format!("params of {params_size} bytes exceed the limit of {MAX_PARAMS_SIZE}"),
            ));
        }
        if codec.is_empty() || codec.len() > 64 || codec.chars().any(char::is_control) {
            return Err(err(
                ErrorCode::BadRequest,
                "codec must be 1 to 64 printable characters (e.g. \"opus\", \"vp8\")",
            ));
        }
        let producer_id = match given {
            Some(id) => id,
            None => ProducerId(self.new_id()),
        };
        let info = ProducerInfo {
            producer_id,
            peer_id,
            kind,
            codec,
            params,
            paused: false,
            layers: layers.clone(),
            source: Some(source),
        };
        let peer = self.peers.get_mut(&peer_id).expect("caller checked");
        peer.producers.push(producer_id);
        self.producers.insert(
            producer_id,
            Producer {
                info: info.clone(),
                consumers: Vec::new(),
                last_keyframe_request: None,
                last_seq: None,
                bitrate: (self.config.limits.max_producer_bitrate > 0).then(|| {
                    let bytes_per_second = self.config.limits.max_producer_bitrate as f64 / 8.0;
                    let burst = bytes_per_second.max(self.config.max_frame_size as f64);
                    TokenBucket::new(burst, bytes_per_second)
                }),
                meter: RateMeter::default(),
                // Until told otherwise, a publisher sends every layer it declared.
                wanted: (0..layers.len() as u8).collect(),
                layers: layers.into_iter().map(LayerState::new).collect(),
                unwanted_since: None,
            },
        );
        if self.reported(peer_id) {
            self.log_event(RoomEvent::ProducerAdded {
                producer: info.clone(),
            });
        }
        self.broadcast(peer_id, ServerMessage::ProducerAdded { producer: info });
        let subscribers: Vec<PeerId> = self
            .members
            .iter()
            .copied()
            .filter(|p| *p != peer_id && self.peers[p].auto_subscribe)
            .collect();
        for subscriber in subscribers {
            self.auto_consume(subscriber, producer_id, now);
        }
        Ok(producer_id)
    }

    fn set_producer_paused(
        &mut self,
        peer_id: PeerId,
        producer_id: ProducerId,
        paused: bool,
        now: Instant,
    ) -> Result<bool, ProtocolError> {
        self.own_producer(peer_id, producer_id)?;
        let producer = self.producers.get_mut(&producer_id).expect("checked");
        if producer.info.paused == paused {
            return Ok(false);
        }
        producer.info.paused = paused;
        if paused {
            self.speakers.remove(producer_id);
        } else {
            // Consumers resume from a keyframe: they missed what came in between.
            for consumer_id in producer.consumers.clone() {
                if let Some(c) = self.consumers.get_mut(&consumer_id) {
                    c.queue.resync();
                }
                self.consumer_keyframe(consumer_id, now);
            }
            self.request_keyframe(producer_id, now);
        }
        let message = if paused {
            ServerMessage::ProducerPaused { producer_id }
        } else {
            ServerMessage::ProducerResumed { producer_id }
        };
        self.broadcast(peer_id, message);
        Ok(true)
    }

    fn consume(
        &mut self,
        peer_id: PeerId,
        producer_id: ProducerId,
        paused: bool,
        layer: Option<u8>,
        now: Instant,
    ) -> Result<ConsumerInfo, ProtocolError> {
        if !self.peers[&peer_id].grants.can_subscribe {
            return Err(err(
                ErrorCode::Forbidden,
                "this access token does not allow subscribing",
            ));
        }
        let producer = match self.producers.get(&producer_id) {
            Some(p) => p,
            None => {
                return Err(err(
                    ErrorCode::UnknownProducer,
                    format!("no producer {producer_id} in room {}", self.name),
                ));
            }
        };
        if producer.info.peer_id == peer_id {
            return Err(err(
                ErrorCode::CannotConsumeOwn,
                "a peer does not consume its own producer",
            ));
        }
        if let Some(layer) = layer {
            if !self.peers[&peer_id].grants.relay {
                return Err(err(
                    ErrorCode::Forbidden,
                    "only another relay consumes one layer of a producer",
                ));
            }
            if usize::from(layer) >= producer.layers.len() {
                return Err(err(
                    ErrorCode::UnknownLayer,
                    format!(
                        "producer {producer_id} has {} simulcast layer(s); layer {layer} does not exist",
                        producer.layers.len()
                    ),
                ));
            }
        }
        // Once per peer, or once per layer for a relay's consumers of one layer each (never
        // both: that would deliver a layer twice).
        if producer.consumers.iter().any(|c| {
            let c = &self.consumers[c];
            c.peer == peer_id && (c.pinned.is_none() || layer.is_none() || c.pinned == layer)
        }) {
            return Err(err(
                ErrorCode::AlreadyConsuming,
                format!("already consuming producer {producer_id}"),
            ));
        }
        Ok(self.add_consumer(peer_id, producer_id, paused, layer, now))
    }

    fn add_consumer(
        &mut self,
        peer_id: PeerId,
        producer_id: ProducerId,
        paused: bool,
        pinned: Option<u8>,
        now: Instant,
    ) -> ConsumerInfo {
        let consumer_id = ConsumerId(self.new_id());
        let producer = self
            .producers
            .get_mut(&producer_id)
            .expect("caller checked");
        let kind = producer.info.kind;
        let limits = match kind {
            MediaKind::Audio => self.config.audio_queue,
            MediaKind::Video => self.config.video_queue,
        };
        producer.consumers.push(consumer_id);
        // A simulcast consumer starts on the top layer its path is known to carry (all of
        // them until the path is measured); `reallocate` below settles it.
        let layers = (!producer.layers.is_empty() && pinned.is_none()).then(|| {
            let desired = producer.layers.len() as u8 - 1;
            LayerSelection::new(desired, choose_target(desired, None, &producer.layers, now))
        });
        let mut info = ConsumerInfo {
            consumer_id,
            producer: producer.info.clone(),
            paused,
            layer: pinned,
        };
        self.consumers.insert(
            consumer_id,
            Consumer {
                peer: peer_id,
                producer: producer_id,
                kind,
                paused,
                queue: ConsumerQueue::new(kind, limits),
                waker: None,
                ready: false,
                held: false,
                layers,
                pinned,
                wants_audio_level: self.peers[&peer_id].wants_audio_level,
            },
        );
        self.peers
            .get_mut(&peer_id)
            .expect("caller checked")
            .consumers
            .insert(consumer_id);
        self.push_output(
            peer_id,
            PeerOutput::StartConsumer {
                consumer_id,
                producer_id,
                kind,
            },
        );
        if self.consumers[&consumer_id].layers.is_some() {
            self.reallocate(peer_id, now);
            info.layer = self.consumers[&consumer_id]
                .layers
                .as_ref()
                .map(|l| l.target);
        } else if pinned.is_some() && !paused {
            // Its layer is needed from now: the owner hears so before the keyframe request.
            self.update_dynacast(producer_id, now);
        }
        // A consumer joining mid-stream starts at a keyframe: ask for one now rather than
        // wait up to a whole group.
        if kind == MediaKind::Video && !paused {
            self.consumer_keyframe(consumer_id, now);
        }
        info
    }

    fn auto_consume(&mut self, peer_id: PeerId, producer_id: ProducerId, now: Instant) {
        let already = self.producers[&producer_id]
            .consumers
            .iter()
            .any(|c| self.consumers[c].peer == peer_id);
        if already {
            return;
        }
        let consumer = self.add_consumer(peer_id, producer_id, false, None, now);
        self.send(peer_id, ServerMessage::ConsumerAdded { consumer });
    }

    fn set_auto_subscribe(&mut self, peer_id: PeerId, enabled: bool, now: Instant) {
        let peer = self.peers.get_mut(&peer_id).expect("caller checked");
        peer.auto_subscribe = enabled;
        if !enabled {
            return;
        }
        let producers: Vec<ProducerId> = self
            .members
            .iter()
            .filter(|p| **p != peer_id)
            .flat_map(|p| self.peers[p].producers.iter().copied())
            .collect();
        for producer_id in producers {
            self.auto_consume(peer_id, producer_id, now);
        }
    }

    fn set_consumer_paused(
        &mut self,
        peer_id: PeerId,
        consumer_id: ConsumerId,
        paused: bool,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        self.own_consumer(peer_id, consumer_id)?;
        let consumer = self.consumers.get_mut(&consumer_id).expect("checked");
        if consumer.paused == paused {
            return Ok(());
        }
        consumer.paused = paused;
        consumer.queue.resync();
        let (peer, producer) = (consumer.peer, consumer.producer);
        if consumer.layers.is_some() || consumer.pinned.is_some() {
            // A paused consumer wants no layer (dynacast), a resumed one its share again.
            self.reallocate(peer, now);
            self.update_dynacast(producer, now);
        }
        if !paused && self.consumers[&consumer_id].kind == MediaKind::Video {
            self.consumer_keyframe(consumer_id, now);
        }
        Ok(())
    }

    /// Closes a consumer: its sender stops at its next poll.
    fn remove_consumer(&mut self, consumer_id: ConsumerId) {
        let Some(mut consumer) = self.consumers.remove(&consumer_id) else {
            return;
        };
        if let Some(producer) = self.producers.get_mut(&consumer.producer) {
            producer.consumers.retain(|c| *c != consumer_id);
        }
        if let Some(peer) = self.peers.get_mut(&consumer.peer) {
            peer.consumers.remove(&consumer_id);
            if peer.media_driven {
                peer.media_closed.push(consumer_id);
                if let Some(waker) = peer.media_waker.take() {
                    waker.wake();
                }
            }
        }
        if let Some(waker) = consumer.waker.take() {
            waker.wake();
        }
    }

    /// Closes a producer and its consumers, telling the consumers' peers and the room.
    fn remove_producer(&mut self, producer_id: ProducerId) {
        let Some(producer) = self.producers.remove(&producer_id) else {
            return;
        };
        self.speakers.remove(producer_id);
        if self.reported(producer.info.peer_id) {
            self.log_event(RoomEvent::ProducerClosed {
                producer_id,
                peer_id: producer.info.peer_id,
            });
        }
        if let Some(peer) = self.peers.get_mut(&producer.info.peer_id) {
            peer.producers.retain(|p| *p != producer_id);
        }
        for consumer_id in producer.consumers {
            if let Some(peer) = self.consumers.get(&consumer_id).map(|c| c.peer) {
                self.remove_consumer(consumer_id);
                self.send(
                    peer,
                    ServerMessage::ConsumerClosed {
                        consumer_id,
                        producer_id,
                    },
                );
            }
        }
        self.broadcast(
            producer.info.peer_id,
            ServerMessage::ProducerClosed {
                producer_id,
                peer_id: producer.info.peer_id,
            },
        );
    }

    // ---- media -----------------------------------------------------------------------------

    /// Asks a producer's peer for a keyframe, at most once per `keyframe_request_interval`
    /// (per layer for a simulcast producer, whose every layer is asked here).
    pub fn request_keyframe(&mut self, producer_id: ProducerId, now: Instant) {
        let Some(producer) = self.producers.get(&producer_id) else {
            return;
        };
        if producer.info.kind != MediaKind::Video {
            return;
        }
        if producer.layers.is_empty() {
            self.ask_keyframe(producer_id, None, now);
        }
        for layer in 0..self.producers[&producer_id].layers.len() as u8 {
            self.ask_keyframe(producer_id, Some(layer), now);
        }
    }

    /// Asks a producer's owner for a keyframe of one layer (or, with `None`, of all of
    /// them): what another relay asks for on behalf of its consumers of this producer.
    pub fn request_layer_keyframe(
        &mut self,
        producer_id: ProducerId,
        layer: Option<u8>,
        now: Instant,
    ) {
        match layer {
            Some(layer) => self.ask_keyframe(producer_id, Some(layer), now),
            None => self.request_keyframe(producer_id, now),
        }
    }

    /// Sends a `keyframe_request` for a producer (`None`) or one of its layers, unless one
    /// went for the same within `keyframe_request_interval`.
    fn ask_keyframe(&mut self, producer_id: ProducerId, layer: Option<u8>, now: Instant) {
        let interval = self.config.keyframe_request_interval;
        let Some(producer) = self.producers.get_mut(&producer_id) else {
            return;
        };
        let last = match layer {
            None => &mut producer.last_keyframe_request,
            Some(l) => match producer.layers.get_mut(usize::from(l)) {
                Some(state) => &mut state.last_keyframe_request,
                None => return,
            },
        };
        if last.is_some_and(|last| now.saturating_duration_since(last) < interval) {
            return;
        }
        *last = Some(now);
        let owner = producer.info.peer_id;
        self.stats.keyframe_requests += 1;
        self.send(owner, ServerMessage::KeyframeRequest { producer_id, layer });
    }

    /// A consumer needs a keyframe (new, resumed, restarted, or its decoder asked): of its
    /// target layer for a simulcast consumer, which restarts on that layer.
    fn consumer_keyframe(&mut self, consumer_id: ConsumerId, now: Instant) {
        let Some(consumer) = self.consumers.get_mut(&consumer_id) else {
            return;
        };
        let producer = consumer.producer;
        if let Some(layer) = consumer.pinned {
            // Its frames go on meanwhile: the other relay's consumers that do not wait for
            // this keyframe still need them.
            self.ask_keyframe(producer, Some(layer), now);
            return;
        }
        match consumer.layers.as_mut() {
            Some(selection) => {
                selection.restart();
                let (target, restarting) = (selection.target, selection.is_restarting());
                self.ask_keyframe(producer, Some(target), now);
                // A restart also takes the base layer's keyframe, the smallest, if it comes
                // first (`LayerSelection::on_frame`).
                if restarting && target > 0 {
                    self.ask_keyframe(producer, Some(0), now);
                }
            }
            None => self.request_keyframe(producer, now),
        }
    }

    /// Whether `peer_id` may send media of `producer_id` on a transport meant for
    /// `transport_kind`: the producer exists, is the peer's, and is of that kind. Checked
    /// for every frame, and for a media stream as soon as its header names the producer.
    pub fn check_media_source(
        &self,
        peer_id: PeerId,
        producer_id: ProducerId,
        transport_kind: MediaKind,
        layer: u8,
    ) -> Result<(), ProtocolError> {
        match self.producers.get(&producer_id) {
            Some(p) if p.info.peer_id == peer_id && usize::from(layer) >= p.layers.len().max(1) => {
                Err(err(
                    ErrorCode::UnknownLayer,
                    format!(
                        "producer {producer_id} has {} layer(s); layer {layer} does not exist",
                        p.layers.len().max(1)
                    ),
                ))
            }
            Some(p) if p.info.peer_id != peer_id => Err(err(
                ErrorCode::NotOwner,
                format!("producer {producer_id} is not yours"),
            )),
            Some(p) if p.info.kind != transport_kind => Err(err(
                ErrorCode::KindMismatch,
                format!(
                    "producer {producer_id} is {}: {} frames go on {}",
                    p.info.kind.as_str(),
                    p.info.kind.as_str(),
                    match p.info.kind {
                        MediaKind::Audio => "datagrams",
                        MediaKind::Video => "unidirectional streams",
                    }
                ),
            )),
            Some(_) => Ok(()),
            None => Err(err(
                ErrorCode::UnknownProducer,
                format!("no producer {producer_id}"),
            )),
        }
    }

    /// The forwarding decision: one frame of `producer_id`, sent by `peer_id` on a
    /// transport meant for `transport_kind` (datagrams carry audio, streams video), goes to
    /// every unpaused consumer of that producer, and to nobody else. The payload is shared.
    ///
    /// Video goes out in sequence order only: a frame whose `seq` is not above the last one
    /// forwarded is dropped as stale. Audio is forwarded as it comes (datagrams reorder, and
    /// the receiver's jitter buffer puts them back in order).
    ///
    /// A bad frame is reported to its sender (rate-limited) and returned as an error; it
    /// never affects anybody else.
    #[allow(clippy::too_many_arguments)]
    pub fn on_frame(
        &mut self,
        peer_id: PeerId,
        producer_id: ProducerId,
        transport_kind: MediaKind,
        layer: u8,
        header: &FrameHeader,
        data: FrameData,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let keyframe = header.keyframe;
        let checked = self.check_media_source(peer_id, producer_id, transport_kind, layer);
        if let Err(e) = checked {
            self.report_frame_error(peer_id, Some(producer_id), &e, now);
            return Err(e);
        }
        let producer = self.producers.get_mut(&producer_id).expect("checked above");
        self.stats.frames_in += 1;
        self.stats.bytes_in += data.len() as u64;
        if producer.info.paused {
            self.stats.dropped_producer_paused += 1;
            return Ok(());
        }
        if let Some(bucket) = producer.bitrate.as_mut()
            && !bucket.try_take(data.len() as f64, now)
        {
            self.stats.dropped_bitrate += 1;
            // A lost video frame breaks the deltas after it: consumers restart at the next
            // keyframe, which only the producer, by slowing down, can get through.
            if transport_kind == MediaKind::Video {
                for consumer_id in &producer.consumers {
                    if let Some(c) = self.consumers.get_mut(consumer_id) {
                        c.queue.wait_for_keyframe();
                        if let Some(selection) = c.layers.as_mut() {
                            selection.restart();
                        }
                    }
                }
            }
            let limit = self.config.limits.max_producer_bitrate;
            let e = err(
                ErrorCode::BitrateExceeded,
                format!("producer {producer_id} sends more than {limit} bit/s; frames dropped"),
            );
            self.tell_frame_error(peer_id, Some(producer_id), &e, now);
            return Ok(());
        }
        let last_seq = match producer.layers.get_mut(usize::from(layer)) {
            Some(state) => &mut state.last_seq,
            None => &mut producer.last_seq,
        };
        if transport_kind == MediaKind::Video {
            if last_seq.is_some_and(|last| header.seq <= last) {
                self.stats.dropped_stale += 1;
                return Ok(());
            }
            *last_seq = Some(header.seq);
        }
        producer.meter.add(data.len(), now);
        if !producer.layers.is_empty() {
            producer.layers[usize::from(layer)].on_frame(data.len(), now);
            return self.forward_layer_frame(producer_id, layer, header, data, now);
        }
        // A level goes to the detector; peers that did not ask for levels get the
        // datagram without it, one copy made for all of them.
        let mut plain = None;
        if let (Some(level), FrameData::Datagram(datagram)) = (header.audio_level, &data) {
            if let Some(speakers) =
                self.speakers
                    .on_level(peer_id, producer_id, header.capture_us, level, now)
            {
                self.peers_told_speakers(speakers);
            }
            plain = strip_audio_level(datagram).map(|d| QueuedFrame {
                keyframe,
                data: FrameData::Datagram(d),
                arrived: now,
            });
        }
        let producer = &self.producers[&producer_id];
        let frame = QueuedFrame {
            keyframe,
            data,
            arrived: now,
        };
        let mut wants_keyframe = false;
        for consumer_id in &producer.consumers {
            let Some(consumer) = self.consumers.get_mut(consumer_id) else {
                continue;
            };
            if consumer.paused {
                continue;
            }
            let frame = match &plain {
                Some(plain) if !consumer.wants_audio_level => plain.clone(),
                _ => frame.clone(),
            };
            let dropped = &mut self.stats.dropped_slow_consumer;
            match consumer.enqueue(*consumer_id, frame, dropped, &mut self.peers) {
                PushOutcome::Queued => {}
                PushOutcome::QueuedAfterDrop { .. } => {
                    wants_keyframe |= consumer.kind == MediaKind::Video;
                }
                PushOutcome::NeedsKeyframe { .. } => wants_keyframe = true,
            }
        }
        // A keyframe that just went out satisfies everyone waiting; only ask while some
        // consumer still waits for one.
        if wants_keyframe && !keyframe {
            self.request_keyframe(producer_id, now);
        }
        Ok(())
    }

    /// `on_frame` for a simulcast producer: each consumer takes the frame if it is of its
    /// layer, or switches to its target layer at that layer's keyframe (`simulcast.rs`).
    fn forward_layer_frame(
        &mut self,
        producer_id: ProducerId,
        layer: u8,
        header: &FrameHeader,
        data: FrameData,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let producer = &self.producers[&producer_id];
        let info = producer.layers[usize::from(layer)].info;
        let mut keyframes_for: Vec<u8> = Vec::new();
        let mut told: Vec<(PeerId, ServerMessage)> = Vec::new();
        for consumer_id in &producer.consumers {
            let Some(consumer) = self.consumers.get_mut(consumer_id) else {
                continue;
            };
            if consumer.paused {
                continue;
            }
            if let Some(pinned) = consumer.pinned {
                if pinned != layer {
                    continue;
                }
                let frame = QueuedFrame {
                    keyframe: header.keyframe,
                    data: data.clone(),
                    arrived: now,
                };
                let dropped = &mut self.stats.dropped_slow_consumer;
                let outcome = consumer.enqueue(*consumer_id, frame, dropped, &mut self.peers);
                if let PushOutcome::NeedsKeyframe { .. } = outcome {
                    keyframes_for.push(layer);
                }
                continue;
            }
            let Some(selection) = consumer.layers.as_mut() else {
                continue;
            };
            let switches_before = selection.switches;
            let (seq, switched) = match selection.on_frame(layer, header) {
                LayerDecision::Ignore => continue,
                LayerDecision::NeedKeyframe => {
                    keyframes_for.push(layer);
                    continue;
                }
                LayerDecision::Forward { seq, switched } => (seq, switched),
            };
            if switched {
                told.push((
                    consumer.peer,
                    ServerMessage::LayerChanged {
                        consumer_id: *consumer_id,
                        producer_id,
                        layer,
                        width: info.width,
                        height: info.height,
                    },
                ));
                self.stats.layer_switches += selection.switches - switches_before;
            }
            // Renumbered only after a switch that needed it: a few header bytes, the
            // payload still shared.
            let data = match (&data, seq == header.seq) {
                (FrameData::Stream { payload, .. }, false) => FrameData::Stream {
                    head: encode_stream_frame_head(&FrameHeader { seq, ..*header }, payload.len()),
                    payload: payload.clone(),
                },
                _ => data.clone(),
            };
            let frame = QueuedFrame {
                keyframe: header.keyframe,
                data,
                arrived: now,
            };
            let dropped = &mut self.stats.dropped_slow_consumer;
            let outcome = consumer.enqueue(*consumer_id, frame, dropped, &mut self.peers);
            if let PushOutcome::NeedsKeyframe { .. } = outcome {
                let selection = consumer.layers.as_mut().expect("a simulcast consumer");
                selection.restart();
                keyframes_for.push(selection.target);
                if selection.is_restarting() {
                    keyframes_for.push(0);
                }
            }
        }
        for (peer, message) in told {
            self.send(peer, message);
        }
        keyframes_for.sort_unstable();
        keyframes_for.dedup();
        for l in keyframes_for {
            // The keyframe that just went out satisfies whoever waited for this layer.
            if !(header.keyframe && l == layer) {
                self.ask_keyframe(producer_id, Some(l), now);
            }
        }
        Ok(())
    }

    /// Tells a peer that a media frame it sent was refused, at most once per interval so
    /// that a flood of bad frames does not become a flood of errors.
    /// The error names the producer the media was sent as, when that could be read.
    pub fn report_frame_error(
        &mut self,
        peer_id: PeerId,
        producer_id: Option<ProducerId>,
        error: &ProtocolError,
        now: Instant,
    ) {
        // Frames still in flight from a peer that has just left are not its errors.
        if self.peers.contains_key(&peer_id) {
            self.stats.frame_errors += 1;
        }
        self.tell_frame_error(peer_id, producer_id, error, now);
    }

    /// Sends a frame-related error to its peer, rate-limited, without counting a refusal.
    fn tell_frame_error(
        &mut self,
        peer_id: PeerId,
        producer_id: Option<ProducerId>,
        error: &ProtocolError,
        now: Instant,
    ) {
        let interval = self.config.frame_error_interval;
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        if peer
            .last_frame_error
            .is_some_and(|last| now.saturating_duration_since(last) < interval)
        {
            return;
        }
        peer.last_frame_error = Some(now);
        self.send(peer_id, ServerMessage::media_error(producer_id, error));
    }

    /// Tells every peer that the relay is going away.
    pub fn announce_going_away(&mut self, reason: &str, deadline: Duration) {
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer_id in peers {
            self.send(
                peer_id,
                ServerMessage::GoingAway {
                    reason: reason.to_owned(),
                    deadline_ms: deadline.as_millis() as u64,
                },
            );
        }
    }

    /// A consumer's transport could not take a datagram this large.
    pub fn note_datagram_too_large(&mut self) {
        self.stats.dropped_too_large += 1;
    }

    /// The latest a frame just taken from `poll_media` or `poll_consumer` may finish being
    /// handed to the transport: its arrival plus the latency bound, plus the time its own
    /// bytes take at the path's estimated rate (at most another bound). `None` for a
    /// keyframe: it is the consumer's restart point, and abandoning keyframes too large for
    /// the link would leave that consumer nothing but keyframe requests; only the stall
    /// timeout applies. The frame is given by its arrival, size in bytes and keyframe flag.
    pub fn write_deadline(
        &self,
        consumer_id: ConsumerId,
        arrived: Instant,
        len: usize,
        keyframe: bool,
    ) -> Option<Instant> {
        if keyframe {
            return None;
        }
        let bound = self.config.video_latency_bound;
        let rate = self
            .consumers
            .get(&consumer_id)
            .and_then(|c| self.peers.get(&c.peer))
            .and_then(|p| p.path.estimate())
            .map_or(0.0, |e| e.send_bps);
        let own = if rate > 0.0 {
            Duration::from_secs_f64(len as f64 * 8.0 / rate).min(bound)
        } else {
            bound
        };
        arrived.checked_add(bound + own)
    }

    /// A consumer's frame missed its write deadline; the IO layer abandoned its group
    /// stream. The consumer restarts at the next keyframe, counted as skipped for latency.
    pub fn skip_late_consumer(&mut self, consumer_id: ConsumerId, now: Instant) {
        let Some(consumer) = self.consumers.get_mut(&consumer_id) else {
            return;
        };
        // The frame being written was counted as forwarded when it was taken; what was
        // queued behind it is what this skips.
        let skipped = consumer.queue.resync();
        let peer = consumer.peer;
        self.stats.skipped_late_video += skipped;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.skipped_late += skipped;
        }
        self.consumer_keyframe(consumer_id, now);
    }

    /// A measurement of the transport to `peer_id` (see `path.rs`). Returns the send window
    /// the transport should use, or `None` for a peer that is gone. About once per
    /// `transport_stats_interval` the peer is told the estimate.
    pub fn on_path_sample(
        &mut self,
        peer_id: PeerId,
        sample: PathSample,
        now: Instant,
    ) -> Option<u64> {
        self.poll_speakers(now);
        self.release_data(peer_id, now);
        let peer = self.peers.get_mut(&peer_id)?;
        let window = peer.path.on_sample(sample, now);
        let report_due = peer.last_transport_stats.is_none_or(|last| {
            now.saturating_duration_since(last) >= self.config.transport_stats_interval
        });
        let snapshot = self.transport_snapshot(peer_id, Some(now))?;
        let peer = self.peers.get_mut(&peer_id)?;
        peer.last_queue_ms = snapshot.queue_ms;
        let congested = peer.budget.on_sample(
            BudgetSample {
                capacity_bps: Some(snapshot.path.peak_bps).filter(|b| *b > 0.0),
                send_bps: snapshot.path.send_bps,
                loss: snapshot.path.loss,
                queue: Duration::from_secs_f64(snapshot.queue_ms / 1000.0),
                skipped_total: snapshot.skipped_frames,
            },
            now,
        );
        let available = peer.budget.available_bps();
        if congested {
            self.stats.congestion_samples += 1;
        }
        self.reallocate(peer_id, now);
        for producer_id in self.peers[&peer_id].producers.clone() {
            self.update_dynacast(producer_id, now);
        }
        self.stats.path_rtt.record(sample.rtt);
        self.stats
            .path_loss_ppm
            .record_value((snapshot.path.loss * 1e6) as u64);
        self.stats
            .path_queue_delay
            .record(Duration::from_secs_f64(snapshot.queue_ms / 1000.0));
        if report_due {
            self.peers.get_mut(&peer_id)?.last_transport_stats = Some(now);
            let e = snapshot.path;
            self.send(
                peer_id,
                ServerMessage::TransportStats {
                    rtt_ms: round1(e.rtt_ms),
                    loss: (e.loss * 10_000.0).round() / 10_000.0,
                    send_kbps: round1(e.send_bps / 1000.0),
                    cwnd_bytes: e.cwnd_bytes,
                    queue_ms: round1(snapshot.queue_ms),
                    skipped_frames: snapshot.skipped_frames,
                    available_kbps: available.map(|b| round1(b / 1000.0)),
                },
            );
        }
        Some(window)
    }

    /// Chooses the layer of each of a peer's simulcast consumers from their preferences and
    /// the peer's budget (`simulcast.rs`): audio first, then single-encoding video, then the
    /// layers. A consumer whose target changes is asked a keyframe of the new layer for.
    fn reallocate(&mut self, peer_id: PeerId, now: Instant) {
        let Some(peer) = self.peers.get(&peer_id) else {
            return;
        };
        let mut fixed = 0.0;
        let mut ids = Vec::new();
        let mut demands = Vec::new();
        for consumer_id in &peer.consumers {
            let Some(c) = self.consumers.get(consumer_id) else {
                continue;
            };
            if c.paused {
                continue;
            }
            let Some(producer) = self.producers.get(&c.producer) else {
                continue;
            };
            match &c.layers {
                // One layer of a relay's costs that layer's rate.
                None => {
                    fixed += match c.pinned.and_then(|l| producer.layers.get(usize::from(l))) {
                        Some(layer) => layer.rate_bps(),
                        None => producer.meter.rate_bps().unwrap_or(0.0),
                    }
                }
                Some(selection) => {
                    let infos: Vec<LayerInfo> = producer.layers.iter().map(|l| l.info).collect();
                    ids.push(*consumer_id);
                    demands.push(Demand {
                        preferred: selection.preference.layer(&infos),
                        current: selection.current,
                        rates: producer.layers.iter().map(LayerState::rate_bps).collect(),
                        priority: u8::from(producer.info.source.is_some_and(|s| s.is_screen())),
                    });
                }
            }
        }
        if ids.is_empty() {
            return;
        }
        let budget = peer
            .budget
            .available_bps()
            .map(|b| (b * HEADROOM - fixed).max(0.0));
        let levels = allocate(budget, &demands, peer.budget.may_go_up(now));
        let mut touched = Vec::new();
        let mut keyframes = Vec::new();
        for (consumer_id, desired) in ids.into_iter().zip(levels) {
            let consumer = self.consumers.get_mut(&consumer_id).expect("listed above");
            let producer = &self.producers[&consumer.producer];
            let selection = consumer.layers.as_mut().expect("listed above");
            let target = choose_target(desired, selection.current, &producer.layers, now);
            if selection.desired != desired {
                touched.push(consumer.producer);
            }
            selection.desired = desired;
            if selection.target != target {
                selection.target = target;
                if selection.current != Some(target) {
                    keyframes.push((consumer.producer, target));
                }
            }
        }
        for (producer_id, layer) in keyframes {
            self.ask_keyframe(producer_id, Some(layer), now);
        }
        for producer_id in touched {
            self.update_dynacast(producer_id, now);
        }
    }

    /// Dynacast: tells a simulcast producer's owner which layers its unpaused consumers
    /// need: at once when one more is needed (with a keyframe request), after
    /// [`DYNACAST_DELAY`] when one fewer is.
    fn update_dynacast(&mut self, producer_id: ProducerId, now: Instant) {
        let Some(producer) = self.producers.get(&producer_id) else {
            return;
        };
        if producer.layers.is_empty() {
            return;
        }
        let mut needed: Vec<u8> = producer
            .consumers
            .iter()
            .filter_map(|c| self.consumers.get(c))
            .filter(|c| !c.paused)
            .flat_map(|c| match &c.layers {
                Some(s) => [Some(s.desired), Some(s.target), s.current],
                None => [c.pinned, None, None],
            })
            .flatten()
            .collect();
        // While anyone watches, the base layer runs: it is cheap, and it is where a
        // congested consumer goes at once (and a weak uplink's last resort).
        if !needed.is_empty() {
            needed.push(0);
        }
        needed.sort_unstable();
        needed.dedup();
        let added: Vec<u8> = needed
            .iter()
            .copied()
            .filter(|l| !producer.wanted.contains(l))
            .collect();
        let fewer = producer.wanted.iter().any(|l| !needed.contains(l));
        let owner = producer.info.peer_id;
        let producer = self
            .producers
            .get_mut(&producer_id)
            .expect("looked up above");
        if !fewer {
            producer.unwanted_since = None;
        }
        let since = *producer.unwanted_since.get_or_insert(now);
        let remove = fewer && now.saturating_duration_since(since) >= DYNACAST_DELAY;
        if added.is_empty() && !remove {
            return;
        }
        let mut wanted = if remove {
            producer.unwanted_since = None;
            needed.clone()
        } else {
            producer.wanted.clone()
        };
        wanted.extend(added.iter().copied());
        wanted.sort_unstable();
        wanted.dedup();
        producer.wanted = wanted.clone();
        self.stats.dynacast_updates += 1;
        self.send(
            owner,
            ServerMessage::LayersWanted {
                producer_id,
                layers: wanted,
            },
        );
        for layer in added {
            self.ask_keyframe(producer_id, Some(layer), now);
        }
    }

    /// The path estimate of a peer with its queue delay (at `now`, or at the last sample).
    fn transport_snapshot(
        &self,
        peer_id: PeerId,
        now: Option<Instant>,
    ) -> Option<TransportSnapshot> {
        let peer = self.peers.get(&peer_id)?;
        let path = peer.path.estimate()?;
        let oldest = peer
            .consumers
            .iter()
            .filter_map(|c| self.consumers.get(c)?.queue.oldest_arrival())
            .min();
        let queue_ms = match (oldest, now) {
            (Some(oldest), Some(now)) => {
                now.saturating_duration_since(oldest).as_secs_f64() * 1000.0
            }
            (None, Some(_)) => 0.0,
            (_, None) => peer.last_queue_ms,
        };
        Some(TransportSnapshot {
            path,
            queue_ms,
            skipped_frames: peer.skipped_late,
        })
    }

    /// The path to a consumer broke (its stream was stopped or reset): start it again at
    /// the next keyframe.
    pub fn resync_consumer(&mut self, consumer_id: ConsumerId, now: Instant) {
        let Some(consumer) = self.consumers.get_mut(&consumer_id) else {
            return;
        };
        self.stats.dropped_slow_consumer += consumer.queue.resync();
        self.consumer_keyframe(consumer_id, now);
    }
}

/// Simulcast layers must be video, at most [`MAX_LAYERS`], each with a size and a bitrate,
/// from the lowest up.
fn validate_layers(kind: MediaKind, layers: &[LayerInfo]) -> Result<(), ProtocolError> {
    if layers.is_empty() {
        return Ok(());
    }
    let bad = |why: &str| Err(err(ErrorCode::BadRequest, format!("layers: {why}")));
    if kind != MediaKind::Video {
        return bad("only a video producer has layers");
    }
    if layers.len() > MAX_LAYERS {
        return bad(&format!("at most {MAX_LAYERS} layers"));
    }
    if layers
        .iter()
        .any(|l| l.width == 0 || l.height == 0 || l.max_bitrate == 0)
    {
        return bad("each layer needs a width, a height and a max_bitrate above 0");
    }
    if layers
        .windows(2)
        .any(|w| w[1].width < w[0].width || w[1].height < w[0].height)
    {
        return bad("list them from the smallest to the largest");
    }
    Ok(())
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
