//! The directory of rooms, and `Relay`: every room in one struct.
//!
//! Rooms share nothing but their configuration and an id counter, so the directory is the
//! only place that sees more than one: it checks a joining peer's room name, creates and
//! removes rooms, enforces `max_rooms`, and remembers which room each peer is in (for the
//! admin API). It is generic over how a room is held. The server holds each `Room` behind a
//! lock of its own and the directory behind another, taken only to join, leave and list;
//! `Relay` holds the `Room`s directly, for tests, fuzzing and the benchmark of the core.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::config::RelayConfig;
use super::path::PathSample;
use super::room::ConsumerFrame;
use super::room::{
    ConsumerStats, Joining, MediaOutput, PeerOutput, Room, check_version, validate_room,
};
use super::stats::{RelayCounts, RelayStats, RoomSnapshot};
use crate::wire::{
    ClientMessage, ConsumerId, ErrorCode, FrameHeader, JoinResult, LeaveReason, MediaKind, PeerId,
    ProducerId, ProtocolError, ServerMessage,
};

/// Ids of peers, producers and consumers, unique across a relay's rooms: an operator kicks
/// a peer by id alone, and a client never sees an id reused.
#[derive(Debug, Clone, Default)]
pub struct Ids(Arc<AtomicU64>);

impl Ids {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Hands out ids above `base` from now on. Relays of a cluster each start at their
    /// own random multiple of 2^32 below 2^52 (so ids stay exact in JavaScript), so an id
    /// names one peer or producer across the relays a room spans.
    pub fn start_above(&self, base: u64) {
        self.0.fetch_max(base, Ordering::Relaxed);
    }
}

/// Rooms by name, and each joined peer's room.
#[derive(Debug)]
pub struct Directory<R> {
    config: Arc<RelayConfig>,
    ids: Ids,
    rooms: HashMap<String, R>,
    peers: HashMap<PeerId, String>,
    /// What rooms that have closed counted, so the relay's totals never go back.
    retired: RelayStats,
}

impl<R> Directory<R> {
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config: Arc::new(config),
            ids: Ids::default(),
            rooms: HashMap::new(),
            peers: HashMap::new(),
            retired: RelayStats::default(),
        }
    }

    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    pub fn config(&self) -> &Arc<RelayConfig> {
        &self.config
    }

    /// The room a peer asking for `room` joins, created (by `hold`) if it is new. Checks
    /// the protocol version, the room's name and the relay's room limit; the room checks
    /// the rest when the peer joins it.
    pub fn room_for_join(
        &mut self,
        version: u32,
        room: &str,
        hold: impl FnOnce(Room) -> R,
    ) -> Result<&mut R, ProtocolError> {
        check_version(version)?;
        validate_room(room)?;
        let max_rooms = self.config.limits.max_rooms;
        if !self.rooms.contains_key(room) {
            if max_rooms > 0 && self.rooms.len() >= max_rooms {
                return Err(ProtocolError::new(
                    ErrorCode::TooManyRooms,
                    format!("this relay hosts its limit of {max_rooms} rooms"),
                ));
            }
            let new = Room::new(room, self.config.clone(), self.ids.clone());
            self.rooms.insert(room.to_owned(), hold(new));
        }
        Ok(self.rooms.get_mut(room).expect("inserted above"))
    }

    /// A peer joined `room` (after `room_for_join`).
    pub fn joined(&mut self, peer_id: PeerId, room: &str) {
        self.peers.insert(peer_id, room.to_owned());
    }

    /// Forgets a peer; returns the name of the room it was in.
    pub fn left(&mut self, peer_id: PeerId) -> Option<String> {
        self.peers.remove(&peer_id)
    }

    /// Removes a room that has emptied, keeping what it counted.
    pub fn remove_room(&mut self, room: &str, stats: &RelayStats) {
        if self.rooms.remove(room).is_some() {
            self.retired.add(stats);
        }
    }

    pub fn room(&self, room: &str) -> Option<&R> {
        self.rooms.get(room)
    }

    pub fn room_mut(&mut self, room: &str) -> Option<&mut R> {
        self.rooms.get_mut(room)
    }

    /// The room `peer_id` is in.
    pub fn room_of(&self, peer_id: PeerId) -> Option<&R> {
        self.peers.get(&peer_id).and_then(|r| self.rooms.get(r))
    }

    pub fn room_of_mut(&mut self, peer_id: PeerId) -> Option<&mut R> {
        let name = self.peers.get(&peer_id)?;
        self.rooms.get_mut(name)
    }

    pub fn rooms(&self) -> impl Iterator<Item = &R> {
        self.rooms.values()
    }

    pub fn rooms_mut(&mut self) -> impl Iterator<Item = &mut R> {
        self.rooms.values_mut()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// What closed rooms counted.
    pub fn retired(&self) -> &RelayStats {
        &self.retired
    }
}

/// What the relay's views sum over its rooms, taken in one pass: the sizes of the maps, the
/// counters (closed rooms' included) and the deepest consumer queues.
#[derive(Debug, Clone, Default)]
pub struct RelayTotals {
    pub counts: RelayCounts,
    pub stats: RelayStats,
    /// The highest queue depth any open consumer has reached, per kind (audio, video).
    pub queue_high_water: (usize, usize),
}

impl RelayTotals {
    /// Adds `rooms`, visited one at a time (the server passes each room's lock guard, so
    /// no two are held together), to what closed rooms counted.
    pub fn over<R: Deref<Target = Room>>(
        retired: &RelayStats,
        rooms: impl IntoIterator<Item = R>,
    ) -> Self {
        let mut totals = Self {
            stats: retired.clone(),
            ..Self::default()
        };
        for room in rooms {
            totals.counts.add(&room.counts());
            totals.stats.add(room.stats());
            let (audio, video) = room.queue_high_water();
            let high = &mut totals.queue_high_water;
            *high = (high.0.max(audio), high.1.max(video));
        }
        totals
    }
}

/// The admin API's listing of `rooms`, ordered by name.
pub fn room_snapshots<R: Deref<Target = Room>>(
    rooms: impl IntoIterator<Item = R>,
) -> Vec<RoomSnapshot> {
    let mut snapshots: Vec<RoomSnapshot> = rooms.into_iter().map(|r| r.snapshot()).collect();
    snapshots.sort_by(|a, b| a.room.cmp(&b.room));
    snapshots
}

/// Every room of a relay in one struct, driven by one owner: the core as tests, the fuzzer
/// and the core benchmark use it. Calls about a peer, producer or consumer go to its room.
#[derive(Debug)]
pub struct Relay {
    directory: Directory<Room>,
}

impl Default for Relay {
    fn default() -> Self {
        Self::new(RelayConfig::default())
    }
}

impl Relay {
    pub fn new(config: RelayConfig) -> Self {
        Self {
            directory: Directory::new(config),
        }
    }

    pub fn config(&self) -> &RelayConfig {
        self.directory.config()
    }

    pub fn totals(&self) -> RelayTotals {
        RelayTotals::over(self.directory.retired(), self.directory.rooms())
    }

    /// The sum over open and closed rooms.
    pub fn stats(&self) -> RelayStats {
        self.totals().stats
    }

    pub fn counts(&self) -> RelayCounts {
        self.totals().counts
    }

    pub fn queue_high_water(&self) -> (usize, usize) {
        self.totals().queue_high_water
    }

    pub fn rooms_snapshot(&self) -> Vec<RoomSnapshot> {
        room_snapshots(self.directory.rooms())
    }

    pub fn room_peers(&self, room: &str) -> Option<Vec<PeerId>> {
        self.directory.room(room).map(Room::members)
    }

    fn with_consumer(&mut self, consumer_id: ConsumerId) -> Option<&mut Room> {
        self.directory
            .rooms_mut()
            .find(|r| r.has_consumer(consumer_id))
    }

    fn with_producer(&mut self, producer_id: ProducerId) -> Option<&mut Room> {
        self.directory
            .rooms_mut()
            .find(|r| r.has_producer(producer_id))
    }

    pub fn consumer_stats(&self, consumer_id: ConsumerId) -> Option<ConsumerStats> {
        self.directory
            .rooms()
            .find_map(|r| r.consumer_stats(consumer_id))
    }

    pub fn peer_consumers(&self, peer_id: PeerId) -> Vec<(ConsumerId, ProducerId)> {
        self.directory
            .room_of(peer_id)
            .map(|r| r.peer_consumers(peer_id))
            .unwrap_or_default()
    }

    pub fn kick(&mut self, peer_id: PeerId, reason: &str) -> bool {
        self.directory
            .room_of_mut(peer_id)
            .is_some_and(|r| r.kick(peer_id, reason))
    }

    pub fn set_producer_paused_by_admin(
        &mut self,
        producer_id: ProducerId,
        paused: bool,
        now: Instant,
    ) -> bool {
        self.with_producer(producer_id)
            .is_some_and(|r| r.set_producer_paused_by_admin(producer_id, paused, now))
    }

    pub fn peer_label(&self, peer_id: PeerId) -> Option<(&str, &str)> {
        self.directory.room_of(peer_id)?.peer_label(peer_id)
    }

    pub fn poll_peer(&mut self, peer_id: PeerId, cx: &mut Context<'_>) -> Poll<Option<PeerOutput>> {
        match self.directory.room_of_mut(peer_id) {
            Some(room) => room.poll_peer(peer_id, cx),
            None => Poll::Ready(None),
        }
    }

    pub fn poll_consumer(
        &mut self,
        consumer_id: ConsumerId,
        now: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<Option<ConsumerFrame>> {
        match self.with_consumer(consumer_id) {
            Some(room) => room.poll_consumer(consumer_id, now, cx),
            None => Poll::Ready(None),
        }
    }

    /// `Room::poll_media` for the peer's current session.
    pub fn poll_media(
        &mut self,
        peer_id: PeerId,
        now: Instant,
        released: &mut Vec<ConsumerId>,
        out: &mut Vec<MediaOutput>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<()>> {
        let Some(room) = self.directory.room_of_mut(peer_id) else {
            return Poll::Ready(None);
        };
        match room.session_of(peer_id) {
            Some(session) => room.poll_media(peer_id, session, now, released, out, cx),
            None => Poll::Ready(None),
        }
    }

    /// `name` joins `room` with every grant (development mode).
    pub fn join(
        &mut self,
        version: u32,
        room: &str,
        name: &str,
        auto_subscribe: bool,
        now: Instant,
    ) -> Result<(PeerId, JoinResult), ProtocolError> {
        let joining = Joining {
            version,
            auto_subscribe,
            ..Joining::new(name)
        };
        self.join_with(room, &joining, now)
    }

    /// A join to `room` (created if new); see [`Room::join_with`].
    pub fn join_with(
        &mut self,
        room: &str,
        joining: &Joining<'_>,
        now: Instant,
    ) -> Result<(PeerId, JoinResult), ProtocolError> {
        let joined = self
            .directory
            .room_for_join(joining.version, room, |r| r)?
            .join_with(joining, now);
        match &joined {
            Ok((peer_id, _)) => self.directory.joined(*peer_id, room),
            Err(_) => self.remove_if_empty(room),
        }
        joined
    }

    fn remove_if_empty(&mut self, room: &str) {
        if let Some(r) = self.directory.room(room)
            && r.is_empty()
        {
            let stats = r.stats().clone();
            self.directory.remove_room(room, &stats);
        }
    }

    pub fn leave(&mut self, peer_id: PeerId, reason: LeaveReason) {
        if let Some(room) = self.directory.room_of_mut(peer_id) {
            room.leave(peer_id, reason);
        }
        self.forget(peer_id);
    }

    /// Drops a peer that is no longer in its room from the directory, and its room if that
    /// emptied.
    fn forget(&mut self, peer_id: PeerId) {
        if self
            .directory
            .room_of(peer_id)
            .is_some_and(|r| !r.has_peer(peer_id))
            && let Some(room) = self.directory.left(peer_id)
        {
            self.remove_if_empty(&room);
        }
    }

    pub fn handle(
        &mut self,
        peer_id: PeerId,
        message: ClientMessage,
        now: Instant,
    ) -> Vec<ServerMessage> {
        let Some(room) = self.directory.room_of_mut(peer_id) else {
            let e = ProtocolError::new(ErrorCode::NotJoined, "this session has not joined a room");
            return vec![ServerMessage::error(Some(message.id), &e)];
        };
        let last = room.handle(peer_id, message, now);
        self.forget(peer_id);
        last
    }

    pub fn request_keyframe(&mut self, producer_id: ProducerId, now: Instant) {
        if let Some(room) = self.with_producer(producer_id) {
            room.request_keyframe(producer_id, now);
        }
    }

    pub fn check_media_source(
        &self,
        peer_id: PeerId,
        producer_id: ProducerId,
        transport_kind: MediaKind,
        layer: u8,
    ) -> Result<(), ProtocolError> {
        match self.directory.room_of(peer_id) {
            Some(room) => room.check_media_source(peer_id, producer_id, transport_kind, layer),
            None => Err(ProtocolError::new(
                ErrorCode::NotJoined,
                "this session has not joined a room",
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn on_frame(
        &mut self,
        peer_id: PeerId,
        producer_id: ProducerId,
        transport_kind: MediaKind,
        layer: u8,
        header: &FrameHeader,
        data: super::queue::FrameData,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        match self.directory.room_of_mut(peer_id) {
            Some(room) => room.on_frame(
                peer_id,
                producer_id,
                transport_kind,
                layer,
                header,
                data,
                now,
            ),
            None => Err(ProtocolError::new(
                ErrorCode::NotJoined,
                "this session has not joined a room",
            )),
        }
    }

    pub fn on_lossy_data(
        &mut self,
        peer_id: PeerId,
        to: &[u64],
        payload: &[u8],
        now: Instant,
    ) -> Result<usize, ProtocolError> {
        match self.directory.room_of_mut(peer_id) {
            Some(room) => room.on_lossy_data(peer_id, to, payload, now),
            None => Ok(0),
        }
    }

    /// One room, for tests that look inside it.
    pub fn room_mut_for_tests(&mut self, room: &str) -> &mut Room {
        self.directory.room_mut(room).expect("no such room")
    }

    /// Advances every room's speaker detector to `now`.
    pub fn poll_speakers(&mut self, now: Instant) {
        for room in self.directory.rooms_mut() {
            room.poll_speakers(now);
        }
    }

    pub fn report_frame_error(
        &mut self,
        peer_id: PeerId,
        producer_id: Option<ProducerId>,
        error: &ProtocolError,
        now: Instant,
    ) {
        if let Some(room) = self.directory.room_of_mut(peer_id) {
            room.report_frame_error(peer_id, producer_id, error, now);
        }
    }

    pub fn announce_going_away(&mut self, reason: &str, deadline: Duration) {
        for room in self.directory.rooms_mut() {
            room.announce_going_away(reason, deadline);
        }
    }

    pub fn write_deadline(
        &self,
        consumer_id: ConsumerId,
        arrived: Instant,
        len: usize,
        keyframe: bool,
    ) -> Option<Instant> {
        let room = self
            .directory
            .rooms()
            .find(|r| r.has_consumer(consumer_id))?;
        room.write_deadline(consumer_id, arrived, len, keyframe)
    }

    pub fn skip_late_consumer(&mut self, consumer_id: ConsumerId, now: Instant) {
        if let Some(room) = self.with_consumer(consumer_id) {
            room.skip_late_consumer(consumer_id, now);
        }
    }

    pub fn resync_consumer(&mut self, consumer_id: ConsumerId, now: Instant) {
        if let Some(room) = self.with_consumer(consumer_id) {
            room.resync_consumer(consumer_id, now);
        }
    }

    pub fn on_path_sample(
        &mut self,
        peer_id: PeerId,
        sample: PathSample,
        now: Instant,
    ) -> Option<u64> {
        self.directory
            .room_of_mut(peer_id)?
            .on_path_sample(peer_id, sample, now)
    }
}
