//! The core behind locks, one per room.
//!
//! Each `Room` sits behind a lock of its own, taken by its sessions' tasks for one
//! synchronous call at a time and never across an `.await`: sessions of unrelated rooms
//! never wait for each other. The directory has its own lock, taken only to join, to leave
//! and for the admin and metrics views, never on the forwarding path. When both are needed
//! the directory's is taken first (join and leave), so the two cannot deadlock.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::webhook::Webhooks;
use crate::core::{
    ConsumerStats, Directory, Joining, RelayConfig, RelayCounts, RelayStats, RelayTotals, Room,
    RoomSnapshot, SessionEnd, room_snapshots,
};
use crate::wire::{
    ConsumerId, ErrorCode, JoinResult, LeaveReason, PeerId, ProducerId, ProtocolError,
};

/// One room, shared by the tasks of its sessions.
#[derive(Clone, Debug)]
pub struct RoomHandle(Arc<Mutex<Room>>);

impl RoomHandle {
    /// A panic in one task does not poison the room for the others.
    pub fn lock(&self) -> MutexGuard<'_, Room> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The directory of rooms.
#[derive(Clone)]
pub struct Rooms {
    directory: Arc<Mutex<Directory<RoomHandle>>>,
    /// Where room events go, if webhooks are configured (the core then keeps a log).
    webhooks: Option<Webhooks>,
    /// Which relay of a cluster hosts which room (`placement.rs`); unset: a lone relay.
    placement: Arc<std::sync::OnceLock<Arc<super::placement::Placement>>>,
    /// Rooms hosted elsewhere and mirrored here (`span.rs`), when rooms may span relays.
    spans: Arc<std::sync::OnceLock<super::span::Spans>>,
}

impl Rooms {
    pub fn new(config: RelayConfig) -> Self {
        Self {
            directory: Arc::new(Mutex::new(Directory::new(config))),
            webhooks: None,
            placement: Arc::default(),
            spans: Arc::default(),
        }
    }

    /// Rooms whose events are sent to `webhooks` (the config must log room events).
    pub fn with_webhooks(config: RelayConfig, webhooks: Webhooks) -> Self {
        let config = RelayConfig {
            room_events: true,
            ..config
        };
        Self {
            directory: Arc::new(Mutex::new(Directory::new(config))),
            webhooks: Some(webhooks),
            placement: Arc::default(),
            spans: Arc::default(),
        }
    }

    pub fn webhooks(&self) -> Option<&Webhooks> {
        self.webhooks.as_ref()
    }

    /// The cluster's placement, if this relay is part of one.
    pub fn placement(&self) -> Option<&Arc<super::placement::Placement>> {
        self.placement.get()
    }

    pub(crate) fn set_placement(&self, placement: Arc<super::placement::Placement>) {
        // Ids from a range of this relay's own, so that they stay unique across the relays
        // a room spans (`Ids::start_above`).
        let block = u64::from(rand::random::<u32>() & 0xF_FFFF).max(1);
        self.directory().ids().start_above(block << 32);
        let _ = self.placement.set(placement);
    }

    /// The mirrors of rooms hosted elsewhere, if rooms may span relays.
    pub fn spans(&self) -> Option<&super::span::Spans> {
        self.spans.get()
    }

    pub(crate) fn set_spans(&self, spans: super::span::Spans) {
        let _ = self.spans.set(spans);
    }

    fn directory(&self) -> MutexGuard<'_, Directory<RoomHandle>> {
        self.directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands every room's new events to the webhooks, each room under its own lock so
    /// that its events keep their order (`webhook.rs`).
    pub fn sweep_events(&self) {
        let Some(webhooks) = &self.webhooks else {
            return;
        };
        for handle in self.all() {
            let mut room = handle.lock();
            let (events, dropped) = room.drain_events();
            webhooks.enqueue(room.name(), events, dropped, false);
        }
    }

    pub fn config(&self) -> Arc<RelayConfig> {
        self.directory().config().clone()
    }

    /// Admits a peer to `room` (created if new); returns the room to drive it with.
    pub fn join(
        &self,
        room: &str,
        joining: &Joining<'_>,
        now: Instant,
    ) -> Result<(PeerId, JoinResult, RoomHandle), ProtocolError> {
        let mut directory = self.directory();
        let handle = directory
            .room_for_join(joining.version, room, |r| {
                RoomHandle(Arc::new(Mutex::new(r)))
            })?
            .clone();
        let mut locked = handle.lock();
        match locked.join_with(joining, now) {
            Ok((peer_id, mut result)) => {
                // The resume secret: 128 random bits, known to this relay and the client.
                if result.resume_grace_ms.is_some() {
                    let token = hex::encode(rand::random::<[u8; 16]>());
                    if locked.set_resume_token(peer_id, token.clone()) {
                        result.resume_token = Some(token);
                    }
                }
                directory.joined(peer_id, room);
                drop(locked);
                Ok((peer_id, result, handle))
            }
            Err(e) => {
                if locked.is_empty() {
                    directory.remove_room(room, locked.stats());
                }
                Err(e)
            }
        }
    }

    /// A new session takes back the place of `peer_id` in `room` (`Room::resume`).
    /// Returns the session number to drive it with, the result, and the room.
    pub fn resume(
        &self,
        room: &str,
        peer_id: PeerId,
        token: &str,
        now: Instant,
    ) -> Result<(u64, JoinResult, RoomHandle), ProtocolError> {
        let handle = {
            let directory = self.directory();
            match directory.room_of(peer_id) {
                Some(handle) if handle.lock().name() == room => handle.clone(),
                _ => {
                    return Err(ProtocolError::new(
                        ErrorCode::ResumeFailed,
                        "nothing to resume in this room: the place was given up, or the relay restarted; join anew",
                    ));
                }
            }
        };
        let (session, result) = handle.lock().resume(peer_id, token, now)?;
        Ok((session, result, handle))
    }

    /// Session `session` of `peer_id` ended: the peer leaves, or keeps its place for the
    /// grace period (`Room::end_session`); a taken-over session changes nothing.
    pub fn end_session(&self, peer_id: PeerId, session: u64, reason: LeaveReason, now: Instant) {
        let mut directory = self.directory();
        let Some(handle) = directory.room_of(peer_id).cloned() else {
            return;
        };
        let mut room = handle.lock();
        if room.end_session(peer_id, session, reason, now) == SessionEnd::Left {
            directory.left(peer_id);
            self.close_if_empty(&mut directory, &mut room);
        }
    }

    /// Interrupted peers whose grace period is over leave.
    pub fn expire_interrupted(&self, now: Instant) {
        let mut directory = self.directory();
        let rooms: Vec<RoomHandle> = directory.rooms().cloned().collect();
        for handle in rooms {
            let mut room = handle.lock();
            let expired = room.expire_interrupted(now);
            if expired.is_empty() {
                continue;
            }
            for peer_id in expired {
                directory.left(peer_id);
            }
            self.close_if_empty(&mut directory, &mut room);
        }
    }

    fn close_if_empty(&self, directory: &mut Directory<RoomHandle>, room: &mut Room) {
        if !room.is_empty() {
            return;
        }
        let name = room.name().to_owned();
        directory.remove_room(&name, room.stats());
        // Its last events, then its end; a room of the same name later is new.
        if let Some(webhooks) = &self.webhooks {
            let (events, dropped) = room.drain_events();
            webhooks.enqueue(&name, events, dropped, true);
        }
    }

    /// Removes a peer (if its room still has it) and its room once empty. Safe to call
    /// again, and after the room has already forgotten the peer (a `leave` request).
    pub fn leave(&self, peer_id: PeerId, reason: LeaveReason) {
        let mut directory = self.directory();
        // The directory forgets the peer first, whatever became of its room.
        let Some(name) = directory.left(peer_id) else {
            return;
        };
        let Some(handle) = directory.room(&name).cloned() else {
            return;
        };
        let mut room = handle.lock();
        room.leave(peer_id, reason);
        // Rooms are only ever empty between a join's creation and its admission (both
        // under the directory's lock) or after their last peer left: either way, done.
        self.close_if_empty(&mut directory, &mut room);
    }

    /// The room a peer is in.
    pub fn room_of(&self, peer_id: PeerId) -> Option<RoomHandle> {
        self.directory().room_of(peer_id).cloned()
    }

    /// Peers the directory knows (every joined peer once, until its session ends).
    pub fn directory_peers(&self) -> usize {
        self.directory().peer_count()
    }

    /// A room by name.
    pub fn room(&self, name: &str) -> Option<RoomHandle> {
        self.directory().room(name).cloned()
    }

    /// The consumers of one peer, with the producer each one consumes.
    pub fn peer_consumers(&self, peer_id: PeerId) -> Vec<(ConsumerId, ProducerId)> {
        self.room_of(peer_id)
            .map(|r| r.lock().peer_consumers(peer_id))
            .unwrap_or_default()
    }

    pub fn consumer_stats(&self, consumer_id: ConsumerId) -> Option<ConsumerStats> {
        self.all()
            .iter()
            .find_map(|r| r.lock().consumer_stats(consumer_id))
    }

    /// The room and display name of a peer.
    pub fn peer_label(&self, peer_id: PeerId) -> Option<(String, String)> {
        let room = self.room_of(peer_id)?;
        let locked = room.lock();
        locked
            .peer_label(peer_id)
            .map(|(r, n)| (r.to_owned(), n.to_owned()))
    }

    /// Every open room, for views that visit them one at a time (no two room locks are
    /// ever held together, and none with the directory's).
    pub fn all(&self) -> Vec<RoomHandle> {
        self.directory().rooms().cloned().collect()
    }

    /// The relay's totals (closed rooms' and each open room's), in one visit of the rooms.
    pub fn totals(&self) -> RelayTotals {
        let (rooms, retired) = {
            let directory = self.directory();
            let rooms: Vec<RoomHandle> = directory.rooms().cloned().collect();
            (rooms, directory.retired().clone())
        };
        RelayTotals::over(&retired, rooms.iter().map(RoomHandle::lock))
    }

    pub fn stats(&self) -> RelayStats {
        self.totals().stats
    }

    pub fn counts(&self) -> RelayCounts {
        self.totals().counts
    }

    pub fn rooms_snapshot(&self) -> Vec<RoomSnapshot> {
        room_snapshots(self.all().iter().map(RoomHandle::lock))
    }

    /// Disconnects a peer on an operator's behalf. False if there is no such peer.
    pub fn kick(&self, peer_id: PeerId, reason: &str) -> bool {
        self.room_of(peer_id)
            .is_some_and(|r| r.lock().kick(peer_id, reason))
    }

    /// Pauses or resumes a producer on an operator's behalf. False if there is none.
    pub fn set_producer_paused_by_admin(
        &self,
        producer_id: ProducerId,
        paused: bool,
        now: Instant,
    ) -> bool {
        self.all().iter().any(|r| {
            let mut room = r.lock();
            room.has_producer(producer_id)
                && room.set_producer_paused_by_admin(producer_id, paused, now)
        })
    }

    pub fn announce_going_away(&self, reason: &str, deadline: Duration) {
        for room in self.all() {
            room.lock().announce_going_away(reason, deadline);
        }
    }
}
