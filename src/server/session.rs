//! One WebTransport session: a peer's producer transport and consumer transport in one.
//!
//! The session task reads the control stream and writes what the core has for the peer;
//! a datagram task and one task per incoming media stream feed frames to the core; one
//! media sender per session takes the frames of all the peer's consumers in batches and
//! writes them. No task holds the core's lock across an `.await`: each takes it for one
//! call and lets go.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tracing::{Instrument, debug, info, info_span, warn};
use wtransport::endpoint::IncomingSession;

use super::{RoomHandle, Rooms, SessionLimits};
use crate::auth::AccessPolicy;
use crate::core::{
    ConsumerFrame, FrameData, GroupKey, JoinAs, Joining, MEDIA_BATCH, MediaOutput,
    PATH_SAMPLE_INTERVAL, PeerOutput,
};
use crate::group::{
    GroupLimits, GroupReader, GroupWriteError, GroupWriter, Refusal, accept_groups, read_more_by,
};
use crate::transport::{DatagramError, RecvStream, SendStream, Session, WsSession};
use crate::wire::close_code;
use crate::wire::frame::{self, FrameError};
use crate::wire::{
    ClientMessage, ConsumerId, DecodeError, ErrorCode, LeaveReason, MediaKind, PeerId, ProducerId,
    ProtocolError, Reply, Request, ServerMessage, StreamFrame, StreamHeader, decode_message,
    encode_message,
};

pub(crate) fn frame_error(e: &FrameError) -> ProtocolError {
    let code = match e {
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        _ => ErrorCode::MalformedFrame,
    };
    ProtocolError::new(code, e.to_string())
}

async fn write_message(send: &mut SendStream, message: &ServerMessage) -> anyhow::Result<()> {
    send.write_chunk(encode_message(message)).await?;
    Ok(())
}

/// Open sessions per source address.
#[derive(Clone, Default)]
pub(crate) struct AddressCounts(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

/// One counted session; uncounted when dropped, however the session ends.
struct AddressSlot {
    counts: AddressCounts,
    ip: IpAddr,
}

impl AddressCounts {
    fn take(&self, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_default();
        if max > 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Accepts one incoming session and runs it to its end.
pub(crate) async fn serve(
    incoming: IncomingSession,
    rooms: Rooms,
    limits: SessionLimits,
    access: Arc<AccessPolicy>,
    addresses: AddressCounts,
) {
    let request = match incoming.await {
        Ok(request) => request,
        Err(e) => {
            debug!(error = %e, "session handshake failed");
            return;
        }
    };
    let remote = request.remote_address();
    let Some(_slot) = addresses.take(remote.ip(), limits.max_sessions_per_address) else {
        warn!(%remote, max = limits.max_sessions_per_address, "too many sessions from this address");
        request.too_many_requests().await;
        return;
    };
    let connection = match request.accept().await {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, error = %e, "session setup failed");
            return;
        }
    };
    if let Err(e) = run(Session::WebTransport(connection), rooms, limits, access).await {
        debug!(%remote, error = %e, "session ended");
    }
}

/// Runs one session that arrived over a WebSocket (docs/PROTOCOL.md section 17) to its
/// end: the same session as over WebTransport, under the same per-address limit.
pub(crate) async fn serve_websocket(
    session: WsSession,
    rooms: Rooms,
    limits: SessionLimits,
    access: Arc<AccessPolicy>,
    addresses: AddressCounts,
) {
    let remote = session.remote_address();
    let Some(_slot) = addresses.take(remote.ip(), limits.max_sessions_per_address) else {
        warn!(%remote, max = limits.max_sessions_per_address, "too many sessions from this address");
        session.close(close_code::NORMAL, "too many sessions from this address");
        return;
    };
    if let Err(e) = run(Session::WebSocket(session), rooms, limits, access).await {
        debug!(%remote, error = %e, "session ended");
    }
}

/// Whether another session from `ip` would be refused (checked before a WebSocket upgrade,
/// so that the refusal can be HTTP 429 as for WebTransport).
pub(crate) fn address_full(addresses: &AddressCounts, ip: IpAddr, max: usize) -> bool {
    addresses.take(ip, max).is_none()
}

async fn run(
    conn: Session,
    rooms: Rooms,
    limits: SessionLimits,
    access: Arc<AccessPolicy>,
) -> anyhow::Result<()> {
    // One deadline from session start to a successful join covers opening the control
    // stream, sending `join`, and any refused attempts before it.
    let deadline = tokio::time::Instant::now() + limits.join_timeout;
    let mut buf = BytesMut::new();
    let joining = async {
        let (mut send, mut recv) = conn.accept_bi().await?;
        let joined = join_phase(
            &conn, &rooms, &limits, &access, &mut send, &mut recv, &mut buf,
        )
        .await?;
        anyhow::Ok(joined.map(|joined| (send, recv, joined)))
    };
    let (mut send, recv, joined) = match tokio::time::timeout_at(deadline, joining).await {
        Ok(Ok(Some(done))) => done,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            conn.close(close_code::JOIN_TIMEOUT, "join timeout");
            anyhow::bail!("no join within {:?}", limits.join_timeout);
        }
    };
    let Joined {
        peer_id,
        session,
        room_name,
        room,
        name,
        response,
    } = joined;

    let span = info_span!("peer", room = %room_name, peer = peer_id.0, peer_name = %name);
    async move {
        let sent = tokio::time::timeout(
            limits.control_write_timeout,
            write_message(&mut send, &response),
        )
        .await;
        let reason = if matches!(sent, Ok(Ok(()))) {
            info!(remote = %conn.remote_address(), "joined");
            drive(
                &conn, &rooms, &room, &limits, peer_id, session, send, recv, buf,
            )
            .await
        } else {
            LeaveReason::Disconnected
        };
        // Whatever ended the session, the peer and everything it owns go, unless it may
        // resume (then its place waits for the grace period).
        rooms.end_session(peer_id, session, reason, Instant::now());
        conn.close(close_code::NORMAL, "session ended");
        info!(?reason, "left");
        Ok(())
    }
    .instrument(span)
    .await
}

struct Joined {
    peer_id: PeerId,
    /// Which session of the peer this is (0 at join; more after resumptions).
    session: u64,
    room_name: String,
    room: RoomHandle,
    name: String,
    response: ServerMessage,
}

/// Until it has joined, a session may only send `join`; refused joins may be retried.
/// Returns as soon as the core has admitted the peer (no `.await` after that, so the
/// caller's deadline cannot cancel it between the join and the hand-over), or `None` when
/// the client closed its control stream first.
async fn join_phase(
    conn: &Session,
    rooms: &Rooms,
    limits: &SessionLimits,
    access: &AccessPolicy,
    send: &mut SendStream,
    recv: &mut RecvStream,
    buf: &mut BytesMut,
) -> anyhow::Result<Option<Joined>> {
    loop {
        let message = match decode_message::<ClientMessage>(buf, limits.max_control_message) {
            Ok(Some(message)) => message,
            Ok(None) => {
                if read_more_by(recv, buf, CONTROL_READ_CHUNK).await? {
                    continue;
                }
                return Ok(None);
            }
            Err(e) => {
                refuse_message(conn, send, e, limits.control_write_timeout).await?;
                continue;
            }
        };
        let id = message.id;
        let Request::Join {
            version,
            room,
            name,
            auto_subscribe,
            token,
            extensions,
            resume,
            relay,
        } = message.request
        else {
            let e = ProtocolError::new(ErrorCode::NotJoined, "send join first");
            write_message(send, &ServerMessage::error(Some(id), &e)).await?;
            continue;
        };
        // In a cluster, a new join goes to the relay that hosts the room (a resume is for a
        // place on this relay, so it needs no placement).
        // With spanning rooms, this relay mirrors the room instead and admits the join
        // (`span.rs`); a join from another relay is never placed. A room this relay
        // mirrors already is joined here without asking (asking could claim it here while
        // Redis has forgotten it, and the relay would mirror itself).
        let mirrored = rooms.spans().is_some_and(|s| s.mirrors(&room));
        let mut into_mirror = mirrored && relay.is_none();
        if resume.is_none()
            && relay.is_none()
            && !mirrored
            && let Some(placement) = rooms.placement()
            && let super::placement::Placed::Elsewhere {
                relay_url,
                relay_id,
            } = placement.place(&room).await
        {
            if let Some(spans) = rooms.spans() {
                match spans.ensure(&room, &relay_url, &relay_id).await {
                    Ok(()) => into_mirror = true,
                    Err(e) => {
                        warn!(%room, %relay_url, error = %e, "cannot mirror the room; redirecting")
                    }
                }
            }
            if !into_mirror {
                info!(%room, %relay_url, "join redirected");
                write_message(send, &ServerMessage::redirect(id, &relay_url)).await?;
                continue;
            }
        }
        // A resume is admitted by its token (given only to the session that joined); the
        // peer keeps the grants it joined with.
        let joined = match resume {
            Some(resume) => crate::core::check_version(version).and_then(|()| {
                rooms
                    .resume(&room, resume.peer_id, &resume.token, Instant::now())
                    .map(|(session, result, handle)| (resume.peer_id, session, result, handle))
            }),
            None => access
                .admit(token.as_deref(), &room, &name)
                .and_then(|mut admitted| {
                    // Another relay of the cluster, bringing one of its peers or its link.
                    let join_as = match &relay {
                        Some(relay) => {
                            admitted.grants.relay |= access.is_development();
                            JoinAs {
                                peer_id: relay.peer_id,
                                hidden: relay.peer_id.is_none(),
                                relay: Some(relay.relay.clone()),
                            }
                        }
                        None => JoinAs::default(),
                    };
                    // A relay's token names the relay; the peer it brings keeps its name.
                    let shown = match &relay {
                        Some(_) if admitted.grants.relay => &name,
                        _ => &admitted.name,
                    };
                    let joining = Joining {
                        version,
                        name: shown,
                        auto_subscribe,
                        grants: admitted.grants,
                        extensions: &extensions,
                        join_as,
                    };
                    rooms.join(&room, &joining, Instant::now())
                })
                .map(|(peer_id, result, handle)| (peer_id, 0, result, handle)),
        };
        match joined {
            Ok((peer_id, session, result, handle)) => {
                if into_mirror && let Some(spans) = rooms.spans() {
                    tokio::spawn(spans.clone().recheck(room.clone()));
                }
                let name = result.name.clone();
                let result = Reply::Joined(result);
                return Ok(Some(Joined {
                    peer_id,
                    session,
                    room_name: room,
                    room: handle,
                    name,
                    response: ServerMessage::Response { id, result },
                }));
            }
            Err(e) => {
                info!(%room, %name, error = %e, "join refused");
                write_message(send, &ServerMessage::error(Some(id), &e)).await?;
            }
        }
    }
}

/// Answers a control message that could not be read; a broken framing ends the session.
async fn refuse_message(
    conn: &Session,
    send: &mut SendStream,
    e: DecodeError,
    write_timeout: Duration,
) -> anyhow::Result<()> {
    warn!(error = %e.error, "bad control message");
    let answer = ServerMessage::error(e.id, &e.error);
    // Like every control write: a peer that does not read is disconnected, not waited for.
    match tokio::time::timeout(write_timeout, write_message(send, &answer)).await {
        Ok(written) => written?,
        Err(_) => {
            conn.close(close_code::SLOW_CONTROL, "control stream stalled");
            anyhow::bail!("control stream stalled");
        }
    }
    if e.fatal {
        send.finish();
        // Give the error a moment to leave before the close discards it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.close(close_code::PROTOCOL_VIOLATION, &e.error.to_string());
        anyhow::bail!("protocol violation: {}", e.error);
    }
    Ok(())
}

/// Aborts the tasks it holds when dropped, however the owner returns.
struct AbortOnDrop<const N: usize>([tokio::task::AbortHandle; N]);

impl<const N: usize> Drop for AbortOnDrop<N> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Runs a joined peer until it leaves or its connection ends.
#[allow(clippy::too_many_arguments)]
async fn drive(
    conn: &Session,
    rooms: &Rooms,
    room: &RoomHandle,
    limits: &SessionLimits,
    peer_id: PeerId,
    session: u64,
    mut send: SendStream,
    mut recv: RecvStream,
    mut buf: BytesMut,
) -> LeaveReason {
    // Media comes in on tasks of their own, so that a slow control write (up to the write
    // timeout) never holds up this peer's audio and video for its consumers.
    let mut datagrams =
        tokio::spawn(receive_datagrams(conn.clone(), room.clone(), peer_id).in_current_span());
    let mut streams = tokio::spawn(
        accept_media_streams(conn.clone(), room.clone(), peer_id, limits.clone()).in_current_span(),
    );
    let monitor = tokio::spawn(monitor_path(conn.clone(), room.clone(), peer_id).in_current_span());
    // Not aborted with the others: it ends by itself once this session of the peer is
    // over, after ending its group streams. Not `.instrument`ed: entering a span on every
    // poll cost ~2% of the relay's CPU at fan-out; it is entered to log.
    let sender = MediaSender::new(conn.clone(), room.clone(), peer_id, session, limits.clone());
    tokio::spawn(sender.run());
    let _stop_media = AbortOnDrop([
        datagrams.abort_handle(),
        streams.abort_handle(),
        monitor.abort_handle(),
    ]);
    // Control messages (keyframe requests, errors) go ahead of queued video.
    send.set_priority(CONTROL_PRIORITY);
    let write_timeout = limits.control_write_timeout;
    loop {
        // Handle whatever whole messages are buffered before reading more.
        loop {
            match decode_message::<ClientMessage>(&mut buf, limits.max_control_message) {
                Ok(Some(message)) => {
                    let request = message.request.name();
                    let last = room.lock().handle(peer_id, message, Instant::now());
                    debug!(request, "request");
                    if !last.is_empty() {
                        // Out of the directory now, not after the flush: the room may
                        // close at once if this was its last peer.
                        rooms.leave(peer_id, LeaveReason::Left);
                        // `leave`: the core forgot the peer and handed back what was still
                        // due to it, response last. Deliver it, then end the session.
                        let flush = async {
                            for message in &last {
                                write_message(&mut send, message).await?;
                            }
                            send.finish_delivered().await?;
                            anyhow::Ok(())
                        };
                        let _ = tokio::time::timeout(write_timeout, flush).await;
                        return LeaveReason::Left;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if refuse_message(conn, &mut send, e, write_timeout)
                        .await
                        .is_err()
                    {
                        return LeaveReason::Disconnected;
                    }
                }
            }
        }
        tokio::select! {
            more = read_more_by(&mut recv, &mut buf, CONTROL_READ_CHUNK) => {
                if !matches!(more, Ok(true)) {
                    return LeaveReason::Disconnected;
                }
            }
            output = poll_fn(|cx| room.lock().poll_peer_session(peer_id, session, cx)) => match output {
                None => return LeaveReason::Disconnected,
                Some(PeerOutput::Message(message)) => {
                    // A peer that stops reading its control stream blocks this write; it
                    // is disconnected rather than waited for.
                    let written = tokio::time::timeout(write_timeout, write_message(&mut send, &message)).await;
                    if !matches!(written, Ok(Ok(()))) {
                        warn!("control stream stalled or failed; disconnecting peer");
                        conn.close(close_code::SLOW_CONTROL, "control stream stalled");
                        return LeaveReason::Disconnected;
                    }
                }
                Some(PeerOutput::LossyData(datagram)) => {
                    // Lossy by contract: a datagram the path cannot take now is dropped.
                    if let Err(e) = conn.send_datagram(&datagram) {
                        debug!(error = %e, "lossy data not sent");
                    }
                }
                // The media sender takes a new consumer's frames as they come.
                Some(PeerOutput::StartConsumer { .. }) => {}
                Some(PeerOutput::Disconnect { code, error, notify }) => {
                    warn!(error = %error, "disconnecting peer");
                    if notify {
                        // Say why first; the close follows.
                        let why = ServerMessage::error(None, &error);
                        let _ = tokio::time::timeout(write_timeout, write_message(&mut send, &why)).await;
                        let _ = tokio::time::timeout(Duration::from_millis(500), send.finish_delivered()).await;
                    }
                    conn.close(code, &error.to_string());
                    return LeaveReason::Disconnected;
                }
            },
            _ = &mut datagrams => return LeaveReason::Disconnected,
            _ = &mut streams => return LeaveReason::Disconnected,
        }
    }
}

/// How much a session's control stream buffer grows at a time (`read_more_by`).
const CONTROL_READ_CHUNK: usize = 2048;

/// Priority of the control stream's data over media streams' (quinn sends higher first).
/// Audio needs none: datagrams go into each packet before any stream data.
pub(crate) const CONTROL_PRIORITY: i32 = 8;

/// Reads what the transport knows of the path to the peer (RTT, congestion window, packet
/// and byte counters) every sample interval, hands it to the core as an input, and applies
/// the send window the core decides (see `core::path`).
async fn monitor_path(conn: Session, room: RoomHandle, peer_id: PeerId) {
    let mut tick = tokio::time::interval(PATH_SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Read the transport before taking the core's lock: stats() takes quinn's own.
        let Some(sample) = conn.path_sample() else {
            // Nothing to go by (a WebSocket without a TCP socket to ask): the core keeps
            // its defaults.
            continue;
        };
        let window = room.lock().on_path_sample(peer_id, sample, Instant::now());
        match window {
            Some(window) => conn.set_send_window(window),
            None => return,
        }
    }
}

/// Audio in: each datagram is checked and handed to the core whole, so consumers get the
/// very bytes the producer sent.
async fn receive_datagrams(conn: Session, room: RoomHandle, peer_id: PeerId) {
    let max = room.lock().config().max_datagram_size;
    while let Ok(bytes) = conn.receive_datagram().await {
        let now = Instant::now();
        if frame::is_lossy_data(&bytes) {
            let result = match frame::decode_lossy_data(bytes, max) {
                Ok(data) => room
                    .lock()
                    .on_lossy_data(peer_id, &data.to, &data.payload, now)
                    .map(|_| ()),
                Err(e) => {
                    let e = frame_error(&e);
                    room.lock().report_frame_error(peer_id, None, &e, now);
                    Err(e)
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "lossy data refused");
            }
            continue;
        }
        let result = match frame::decode_datagram(bytes.clone(), max) {
            Ok(d) => room.lock().on_frame(
                peer_id,
                d.producer_id,
                MediaKind::Audio,
                0,
                &d.header,
                FrameData::Datagram(bytes),
                now,
            ),
            Err(e) => {
                let e = frame_error(&e);
                room.lock().report_frame_error(peer_id, None, &e, now);
                Err(e)
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "datagram refused");
        }
    }
}

/// Video in: every unidirectional stream is a group of frames of one producer (and layer),
/// read by the one stream acceptor ([`accept_groups`]): in the order they were opened, so
/// the tail of one group is forwarded before the next group's keyframe. A stream for
/// someone else's (or an unknown, or an audio) producer is refused at its header, before a
/// task or any buffer is spent on it; a client that stalls a header delays only its own
/// streams.
async fn accept_media_streams(
    conn: Session,
    room: RoomHandle,
    peer_id: PeerId,
    limits: SessionLimits,
) {
    let max_frame = room.lock().config().max_frame_size;
    let limits = GroupLimits {
        header_timeout: limits.stream_header_timeout,
        order_wait: limits.stream_order_wait,
        max_frame,
    };
    accept_groups(conn, limits, RelayGroups { room, peer_id }).await;
}

/// A peer's incoming group streams, handed to the core frame by frame.
#[derive(Clone)]
struct RelayGroups {
    room: RoomHandle,
    peer_id: PeerId,
}

/// A refused media stream: the error, and the producer its header named (if it could be
/// read).
type MediaRefusal = (Option<ProducerId>, ProtocolError);

fn refused(producer_id: Option<ProducerId>, error: ProtocolError) -> Refusal<MediaRefusal> {
    Refusal {
        code: close_code::STREAM_REFUSED,
        error: Some((producer_id, error)),
    }
}

impl GroupReader for RelayGroups {
    type Error = MediaRefusal;

    fn admit(&self, h: StreamHeader) -> Result<(), Refusal<MediaRefusal>> {
        self.room
            .lock()
            .check_media_source(self.peer_id, h.producer_id, MediaKind::Video, h.layer)
            .map_err(|e| refused(Some(h.producer_id), e))
    }

    async fn frame(
        &self,
        (producer_id, layer): GroupKey,
        f: StreamFrame,
    ) -> Result<(), Refusal<MediaRefusal>> {
        let result = video_frame_in(&mut self.room.lock(), self.peer_id, (producer_id, layer), f);
        // The core has told the peer already (rate-limited).
        result.map_err(|e| {
            debug!(error = %e, "frame refused");
            Refusal {
                code: close_code::STREAM_REFUSED,
                error: None,
            }
        })
    }

    fn malformed(&self, key: Option<GroupKey>, e: FrameError) -> Refusal<MediaRefusal> {
        refused(key.map(|(producer_id, _)| producer_id), frame_error(&e))
    }

    fn refused(&self, (producer_id, e): MediaRefusal) {
        debug!(error = %e, "media stream refused");
        self.room
            .lock()
            .report_frame_error(self.peer_id, producer_id, &e, Instant::now());
    }
}

/// A video frame read from a group stream, handed to the core as `owner`'s (the relay's
/// publishers' and a relay link's streams alike).
pub(crate) fn video_frame_in(
    room: &mut crate::core::Room,
    owner: PeerId,
    (producer_id, layer): GroupKey,
    f: StreamFrame,
) -> Result<(), ProtocolError> {
    let data = FrameData::Stream {
        head: f.head,
        payload: f.payload,
    };
    room.on_frame(
        owner,
        producer_id,
        MediaKind::Video,
        layer,
        &f.header,
        data,
        Instant::now(),
    )
}

/// The one media sender of a peer session: takes the frames of all the peer's consumers
/// from the core a batch per wake-up (`Room::poll_media`) and writes them with its
/// [`ConsumerWriter`]. A video write that cannot finish at once goes on beside the others,
/// bounded by its deadline: the core holds that consumer meanwhile, and nobody else waits
/// for it.
struct MediaSender {
    writer: ConsumerWriter,
    peer_id: PeerId,
    session: u64,
}

/// Writes consumers' frames to one session: audio as datagrams, video as one stream per
/// group of pictures and consumer (a keyframe opens a new stream after finishing the
/// previous one), each video write bounded by the frame's latency deadline or the stall
/// timeout. A session's media sender and a relay link's consumer senders use it.
struct ConsumerWriter {
    conn: Session,
    room: RoomHandle,
    limits: SessionLimits,
    /// Each video consumer's group stream; `None` while a write is out with it.
    groups: HashMap<ConsumerId, Option<GroupWriter>>,
    /// The peer's session takes no datagrams: its audio is dropped, said once.
    no_datagrams: bool,
    /// The span of the session (room and peer), entered only to log.
    span: tracing::Span,
}

/// A video write that had to wait, finished or abandoned.
struct Written {
    consumer_id: ConsumerId,
    group: GroupWriter,
    result: Result<Result<(), GroupWriteError>, tokio::time::error::Elapsed>,
    /// Its deadline was the frame's latency bound (not the stall timeout).
    late_bound: bool,
}

/// Whether the session goes on after a write.
enum Sent {
    Going,
    SessionOver,
}

enum MediaStep {
    Frames,
    Written(Written),
}

impl MediaSender {
    fn new(
        conn: Session,
        room: RoomHandle,
        peer_id: PeerId,
        session: u64,
        limits: SessionLimits,
    ) -> Self {
        Self {
            writer: ConsumerWriter::new(conn, room, limits, tracing::Span::current()),
            peer_id,
            session,
        }
    }

    async fn run(self) {
        let Self {
            mut writer,
            peer_id,
            session,
        } = self;
        let mut out = Vec::with_capacity(MEDIA_BATCH);
        let mut released = Vec::new();
        let mut writes = FuturesUnordered::new();
        loop {
            let room = &writer.room;
            let step = poll_fn(|cx| {
                // Polled only with writes out: an empty one still registers the waker on
                // each poll (1.5% of the relay's CPU at a 1→200 fan-out, with its poll).
                if !writes.is_empty()
                    && let Poll::Ready(Some(written)) = writes.poll_next_unpin(cx)
                {
                    return Poll::Ready(Some(MediaStep::Written(written)));
                }
                let now = Instant::now();
                room.lock()
                    .poll_media(peer_id, session, now, &mut released, &mut out, cx)
                    .map(|more| more.map(|()| MediaStep::Frames))
            })
            .await;
            let going = match step {
                None => break,
                Some(MediaStep::Written(w)) => {
                    released.push(w.consumer_id);
                    writer.written(w)
                }
                Some(MediaStep::Frames) => {
                    let mut going = Sent::Going;
                    for output in out.drain(..) {
                        let frame = match output {
                            MediaOutput::Frame(frame) => frame,
                            MediaOutput::Closed(consumer_id) => {
                                // One with a write out is finished when that comes back.
                                if let Some(Some(mut group)) = writer.groups.remove(&consumer_id) {
                                    group.finish();
                                }
                                continue;
                            }
                        };
                        going = match frame.frame.data {
                            FrameData::Datagram(_) => writer.send_datagram(frame),
                            FrameData::Stream { .. } => match writer.send_video(frame) {
                                VideoSent::Done(consumer_id, going) => {
                                    released.push(consumer_id);
                                    going
                                }
                                VideoSent::Later(write) => {
                                    writes.push(write.finish(writer.conn.clone()));
                                    Sent::Going
                                }
                            },
                        };
                        if matches!(going, Sent::SessionOver) {
                            break;
                        }
                    }
                    going
                }
            };
            if matches!(going, Sent::SessionOver) {
                break;
            }
        }
        writer.finish();
    }
}

impl ConsumerWriter {
    fn new(conn: Session, room: RoomHandle, limits: SessionLimits, span: tracing::Span) -> Self {
        Self {
            conn,
            room,
            limits,
            groups: HashMap::new(),
            no_datagrams: false,
            span,
        }
    }

    /// Ends every group stream not out with a write.
    fn finish(&mut self) {
        for group in self.groups.values_mut().flatten() {
            group.finish();
        }
    }

    fn send_datagram(&mut self, frame: ConsumerFrame) -> Sent {
        let FrameData::Datagram(datagram) = frame.frame.data else {
            unreachable!("checked by the caller");
        };
        if self.no_datagrams {
            return Sent::Going;
        }
        match self.conn.send_datagram(&datagram) {
            Ok(()) => Sent::Going,
            Err(DatagramError::TooLarge) => {
                let size = datagram.len();
                let consumer = frame.consumer_id.0;
                self.span
                    .in_scope(|| debug!(consumer, size, "datagram too large for this consumer"));
                self.room.lock().note_datagram_too_large();
                Sent::Going
            }
            Err(DatagramError::UnsupportedByPeer) => {
                self.span.in_scope(|| {
                    warn!("the peer's session does not accept QUIC datagrams: no audio for it")
                });
                self.no_datagrams = true;
                Sent::Going
            }
            Err(_) => Sent::SessionOver,
        }
    }

    /// Writes a video frame if that can be done at once; otherwise hands back what is
    /// left to write, with its group stream and deadline.
    fn send_video(&mut self, frame: ConsumerFrame) -> VideoSent {
        let ConsumerFrame {
            consumer_id,
            producer_id,
            frame,
            write_deadline,
            layer,
        } = frame;
        let FrameData::Stream { head, payload } = frame.data else {
            unreachable!("checked by the caller");
        };
        let slot = self
            .groups
            .entry(consumer_id)
            .or_insert_with(|| Some(GroupWriter::new(producer_id, layer)));
        let Some(mut group) = slot.take() else {
            // The core holds a consumer while a write of its is out: not reached.
            debug_assert!(false, "a second frame for a consumer with a write out");
            return VideoSent::Done(consumer_id, Sent::Going);
        };
        let mut chunks = [head, payload];
        match group.write_now(frame.keyframe, &mut chunks) {
            Some(result) => {
                *slot = Some(group);
                let going = self.failed(consumer_id, result.err());
                VideoSent::Done(consumer_id, going)
            }
            None => {
                // Bounded twice: by the frame's latency deadline (late video is skipped,
                // the consumer restarts at a keyframe) and by the stall timeout.
                let stall_at = Instant::now() + self.limits.consumer_write_timeout;
                let late_at = write_deadline.unwrap_or(stall_at);
                VideoSent::Later(PendingWrite {
                    consumer_id,
                    group,
                    keyframe: frame.keyframe,
                    chunks,
                    until: late_at.min(stall_at),
                    late_bound: late_at < stall_at,
                })
            }
        }
    }

    /// A write that had to wait came back: its group stream goes back in its place (or is
    /// finished, its consumer closed meanwhile) and a missed deadline is acted on.
    fn written(&mut self, w: Written) -> Sent {
        let Written {
            consumer_id,
            mut group,
            result,
            late_bound,
        } = w;
        let going = match result {
            Ok(result) => self.failed(consumer_id, result.err()),
            Err(_) if late_bound => {
                self.span.in_scope(|| {
                    debug!(
                        consumer = consumer_id.0,
                        "video fell behind its latency bound; restarting at a keyframe"
                    )
                });
                group.reset(close_code::CONSUMER_LATE);
                self.room
                    .lock()
                    .skip_late_consumer(consumer_id, Instant::now());
                Sent::Going
            }
            Err(_) => {
                self.span.in_scope(|| {
                    warn!(
                        consumer = consumer_id.0,
                        timeout = ?self.limits.consumer_write_timeout,
                        "consumer stream stalled; restarting at a keyframe"
                    )
                });
                group.reset(close_code::CONSUMER_STALLED);
                self.room
                    .lock()
                    .resync_consumer(consumer_id, Instant::now());
                Sent::Going
            }
        };
        match self.groups.get_mut(&consumer_id) {
            Some(slot) => *slot = Some(group),
            None => group.finish(),
        }
        going
    }

    /// A video write that failed (the stream was stopped or reset by the peer) restarts
    /// its consumer at a keyframe; one that failed because the session is over ends the
    /// sender.
    fn failed(&mut self, consumer_id: ConsumerId, error: Option<GroupWriteError>) -> Sent {
        let Some(e) = error else {
            return Sent::Going;
        };
        if self.conn.is_closed() {
            return Sent::SessionOver;
        }
        self.span.in_scope(|| {
            debug!(consumer = consumer_id.0, error = %e, "consumer stream failed; restarting at a keyframe")
        });
        self.room
            .lock()
            .resync_consumer(consumer_id, Instant::now());
        Sent::Going
    }
}

/// What became of a video frame the sender tried to write at once.
enum VideoSent {
    /// Written (or failed, and acted on): release the consumer.
    Done(ConsumerId, Sent),
    /// It has to wait: what is left of it.
    Later(PendingWrite),
}

/// The rest of a video frame, its consumer's group stream and its deadline.
struct PendingWrite {
    consumer_id: ConsumerId,
    group: GroupWriter,
    keyframe: bool,
    chunks: [bytes::Bytes; 2],
    until: Instant,
    late_bound: bool,
}

impl PendingWrite {
    async fn finish(self, conn: Session) -> Written {
        let Self {
            consumer_id,
            mut group,
            keyframe,
            chunks,
            until,
            late_bound,
        } = self;
        let until = tokio::time::Instant::from_std(until);
        let result =
            tokio::time::timeout_at(until, group.write_rest(&conn, keyframe, chunks)).await;
        Written {
            consumer_id,
            group,
            result,
            late_bound,
        }
    }
}

/// Writes one consumer's frames, one at a time, the way the media sender writes each: a
/// relay link's consumers, each writing to a different session, are sent this way.
pub(crate) async fn send_consumer(
    conn: Session,
    room: RoomHandle,
    consumer_id: ConsumerId,
    limits: SessionLimits,
    span: tracing::Span,
) {
    let mut writer = ConsumerWriter::new(conn, room.clone(), limits, span);
    while let Some(frame) =
        poll_fn(|cx| room.lock().poll_consumer(consumer_id, Instant::now(), cx)).await
    {
        let going = match frame.frame.data {
            FrameData::Datagram(_) => writer.send_datagram(frame),
            FrameData::Stream { .. } => match writer.send_video(frame) {
                VideoSent::Done(_, going) => going,
                VideoSent::Later(write) => {
                    let written = write.finish(writer.conn.clone()).await;
                    writer.written(written)
                }
            },
        };
        if matches!(going, Sent::SessionOver) {
            break;
        }
    }
    writer.finish();
}
