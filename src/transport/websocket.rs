//! A session over one WebSocket (docs/PROTOCOL.md section 17): the control stream,
//! datagrams and unidirectional streams of a WebTransport session, multiplexed as the
//! messages of [`crate::wire::mux`].
//!
//! Sending: one writer task owns the socket and takes from three queues, in this order:
//! control, datagrams, stream data. Stream data waits for room in a budget (the send
//! window the core decides, as for QUIC) so that video queues here, where the latency
//! bound can still abandon a late group, and not in the socket (`TCP_NOTSENT_LOWAT` keeps
//! the kernel's unsent backlog small). Datagrams never wait: past [`MAX_QUEUED_DATAGRAMS`]
//! the oldest is dropped, as a congested path would lose it. Closing sends what control is
//! queued, then the close frame; queued media is discarded, as QUIC discards it.
//!
//! Receiving: one reader task hands control bytes, datagrams and stream chunks to bounded
//! channels. A stream whose reader does not keep up holds up the reader task, and with it
//! the session: TCP has one window for everything (the price of the fallback).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{Notify, mpsc, watch};

use crate::core::PathSample;
use crate::wire::close_code;
use crate::wire::mux::{self, MuxMessage};

/// A WebSocket message as the session sees it (both WebSocket crates map to this).
#[derive(Debug)]
pub enum WsMessage {
    Binary(Bytes),
    /// Not allowed by the protocol: the session is closed (code 1003).
    Text,
    Ping,
    /// The close frame, with the code and reason if it had them.
    Close(Option<(u16, String)>),
    /// Incoming only: a message over [`mux::MAX_MESSAGE`] was refused by the WebSocket
    /// layer; the session is closed with 1009.
    TooLarge,
}

pub type WsReader = Pin<Box<dyn Stream<Item = Result<WsMessage, String>> + Send>>;
pub type WsWriter = Pin<Box<dyn Sink<WsMessage, Error = String> + Send>>;

/// Datagrams waiting for the writer; more drop the oldest.
pub const MAX_QUEUED_DATAGRAMS: usize = 16;
/// Control bytes waiting for the writer; a control write beyond waits (and the relay's
/// control write timeout then disconnects a peer that does not read).
const MAX_QUEUED_CONTROL: usize = 1024 * 1024;
/// Stream data budget until the first send window is set.
const INITIAL_WINDOW: usize = 256 * 1024;
/// The smallest stream budget: one chunk must always fit.
const MIN_WINDOW: usize = mux::MAX_STREAM_CHUNK;
/// Chunks buffered for one incoming stream (or the control stream) before the reader
/// task waits for its reader.
const INCOMING_CHUNKS: usize = 64;
/// Stream bytes the writer sends between looks at the control and datagram queues.
const BATCH_BYTES: usize = 64 * 1024;
/// The kernel's unsent backlog on the socket, beyond what is in flight.
pub const NOTSENT_LOWAT: u32 = 16 * 1024;

/// Why a WebSocket session operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("session closed: {0}")]
    Closed(String),
    #[error("stream stopped by the peer (code {0})")]
    Stopped(u32),
    #[error("stream reset by the peer (code {0})")]
    Reset(u32),
}

/// Timings of a session.
#[derive(Debug, Clone, Copy)]
pub struct WsTimings {
    /// Nothing heard (no message, no pong) for this long closes the session.
    pub idle_timeout: Duration,
    /// A ping goes out this often, so that the other side hears from us.
    pub ping_interval: Duration,
}

impl Default for WsTimings {
    fn default() -> Self {
        let idle = Duration::from_secs(10);
        Self {
            idle_timeout: idle,
            ping_interval: idle / 3,
        }
    }
}

/// One side of a session over a WebSocket. Cheap to clone; the session ends when it is
/// closed (either side) or the socket fails.
#[derive(Clone)]
pub struct WsSession {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSession")
            .field("remote", &self.shared.remote)
            .finish()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Something was queued (or the session is closing): the writer has work.
    wake_writer: Notify,
    /// Queued bytes were sent (or the session ended): writers waiting for room may go.
    space: Notify,
    /// `Some(reason)` once the session is over.
    closed: watch::Sender<Option<String>>,
    accept: Accept,
    remote: SocketAddr,
    /// A duplicate of the TCP socket, for `TCP_INFO` (none over TLS or in tests).
    tcp: Option<OwnedFd>,
}

/// What the peer opens and sends, each taken by one waiter at a time.
struct Accept {
    control: std::sync::Mutex<Option<mpsc::Receiver<Chunk>>>,
    streams: tokio::sync::Mutex<mpsc::Receiver<WsRecvStream>>,
    datagrams: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
}

#[derive(Default)]
struct State {
    control: VecDeque<Bytes>,
    control_bytes: usize,
    datagrams: VecDeque<Bytes>,
    streams: VecDeque<MuxMessage>,
    stream_bytes: usize,
    window: usize,
    next_stream: u64,
    /// Our streams the peer stopped, with its code.
    stopped: HashMap<u64, u32>,
    /// Set by `close`: the close frame to send once the control queue is empty.
    closing: Option<(u16, String)>,
    /// The session is over (the reason is in `Shared::closed`).
    ended: bool,
}

impl State {
    /// Whether more may be queued: not ended, not closing.
    fn open(&self) -> bool {
        !self.ended && self.closing.is_none()
    }

    /// Drops all queued media (the session is ending: QUIC discards it too).
    fn drop_media(&mut self) {
        self.streams.clear();
        self.stream_bytes = 0;
        self.datagrams.clear();
    }

    /// Drops what is queued of stream `id` (it was reset or stopped).
    fn drop_stream_data(&mut self, id: u64) {
        let mut freed = 0;
        self.streams.retain(|m| match m {
            MuxMessage::Stream { id: of, data } if *of == id => {
                freed += data.len();
                false
            }
            _ => true,
        });
        self.stream_bytes -= freed;
    }
}

enum Chunk {
    Data(Bytes),
    Fin,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed_reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "closing".to_owned())
    }

    /// Marks the session over (first reason wins) and wakes everyone who waits.
    fn end(&self, reason: String) {
        {
            let mut state = self.lock();
            state.ended = true;
            state.drop_media();
        }
        self.closed.send_if_modified(|closed| {
            if closed.is_some() {
                return false;
            }
            *closed = Some(reason);
            true
        });
        self.wake_writer.notify_one();
        self.space.notify_waiters();
    }

    /// Offers an item to `admit` under the lock until it decides (`Some`: queued, or
    /// refused), waiting for room between tries; fails once the session is closing.
    async fn queue_when(
        &self,
        mut admit: impl FnMut(&mut State) -> Option<Result<(), WsError>>,
    ) -> Result<(), WsError> {
        loop {
            let room = self.space.notified();
            {
                let mut state = self.lock();
                if !state.open() {
                    drop(state);
                    return Err(WsError::Closed(self.closed_reason()));
                }
                if let Some(decided) = admit(&mut state) {
                    drop(state);
                    if decided.is_ok() {
                        self.wake_writer.notify_one();
                    }
                    return decided;
                }
            }
            room.await;
        }
    }

    /// Queues one stream message, waiting for room in the window for data.
    async fn push_stream(&self, id: u64, message: MuxMessage) -> Result<(), WsError> {
        let mut message = Some(message);
        self.queue_when(|state| {
            if let Some(&code) = state.stopped.get(&id) {
                return Some(Err(WsError::Stopped(code)));
            }
            let len = message.as_ref().map_or(0, MuxMessage::data_len);
            if len > 0 && state.stream_bytes >= state.window {
                return None;
            }
            state.stream_bytes += len;
            state.streams.extend(message.take());
            Some(Ok(()))
        })
        .await
    }

    async fn push_control(&self, bytes: Bytes) -> Result<(), WsError> {
        let mut bytes = Some(bytes);
        self.queue_when(|state| {
            if state.control_bytes >= MAX_QUEUED_CONTROL {
                return None;
            }
            let bytes = bytes.take()?;
            state.control_bytes += bytes.len();
            state.control.push_back(bytes);
            Some(Ok(()))
        })
        .await
    }

    /// A message that must go but carries no data (a STOP_SENDING); it goes with control.
    fn push_signal(&self, message: MuxMessage) {
        let mut state = self.lock();
        if !state.open() {
            return;
        }
        state.control.push_back(message.encode());
        drop(state);
        self.wake_writer.notify_one();
    }

    /// What the writer sends next: all queued control, then datagrams, then stream data up
    /// to a batch. `Err` with the close frame once closing and the control queue is empty.
    fn take_batch(&self, batch: &mut Vec<Bytes>) -> Result<(), Option<(u16, String)>> {
        let mut state = self.lock();
        if state.ended {
            return Err(None);
        }
        let mut freed = false;
        while let Some(control) = state.control.pop_front() {
            state.control_bytes = state.control_bytes.saturating_sub(control.len());
            // Signals are encoded already; control bytes get their type byte here.
            batch.push(control);
            freed = true;
        }
        if state.closing.is_none() {
            batch.extend(state.datagrams.drain(..));
            let mut bytes = 0;
            while bytes < BATCH_BYTES {
                let Some(message) = state.streams.pop_front() else {
                    break;
                };
                let len = message.data_len();
                state.stream_bytes -= len;
                bytes += len;
                batch.push(message.encode());
                freed = true;
            }
        } else if batch.is_empty() {
            return Err(state.closing.clone());
        }
        drop(state);
        if freed {
            self.space.notify_waiters();
        }
        Ok(())
    }
}

impl WsSession {
    /// Runs a session on an open WebSocket: spawns its reader and writer tasks.
    pub fn start(
        reader: WsReader,
        writer: WsWriter,
        remote: SocketAddr,
        tcp: Option<OwnedFd>,
        timings: WsTimings,
    ) -> Self {
        let (control_tx, control_rx) = mpsc::channel(INCOMING_CHUNKS);
        let (streams_tx, streams_rx) = mpsc::channel(16);
        let (datagrams_tx, datagrams_rx) = mpsc::channel(256);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                window: INITIAL_WINDOW,
                ..State::default()
            }),
            wake_writer: Notify::new(),
            space: Notify::new(),
            closed: watch::Sender::new(None),
            accept: Accept {
                control: std::sync::Mutex::new(Some(control_rx)),
                streams: tokio::sync::Mutex::new(streams_rx),
                datagrams: tokio::sync::Mutex::new(datagrams_rx),
            },
            remote,
            tcp,
        });
        let session = Self { shared };
        tokio::spawn(write_loop(session.shared.clone(), writer, timings));
        tokio::spawn(read_loop(
            session.clone(),
            reader,
            Incoming {
                control: Some(control_tx),
                streams: streams_tx,
                datagrams: datagrams_tx,
                open: HashMap::new(),
                highest: None,
            },
            timings,
        ));
        session
    }

    /// The control stream (the first and only bidirectional stream); `None` after the
    /// first call.
    pub fn control(&self) -> Result<(WsSendStream, WsRecvStream), WsError> {
        let control = self
            .shared
            .accept
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(rx) = control else {
            return Err(WsError::Closed("the control stream is taken".into()));
        };
        Ok((
            WsSendStream {
                shared: self.shared.clone(),
                id: None,
                done: false,
            },
            WsRecvStream::new(self.shared.clone(), None, rx),
        ))
    }

    /// The next unidirectional stream the peer opened.
    pub async fn accept_uni(&self) -> Result<WsRecvStream, WsError> {
        let next = self.shared.accept.streams.lock().await.recv().await;
        next.ok_or_else(|| WsError::Closed(self.shared.closed_reason()))
    }

    /// Opens a unidirectional stream (it reaches the peer with its first bytes).
    pub fn open_uni(&self) -> Result<WsSendStream, WsError> {
        let mut state = self.shared.lock();
        if !state.open() {
            drop(state);
            return Err(WsError::Closed(self.shared.closed_reason()));
        }
        let id = state.next_stream;
        state.next_stream += 1;
        Ok(WsSendStream {
            shared: self.shared.clone(),
            id: Some(id),
            done: false,
        })
    }

    /// Queues a datagram; never waits (the oldest queued one is dropped to make room).
    pub fn send_datagram(&self, datagram: Bytes) -> Result<(), WsError> {
        let mut state = self.shared.lock();
        if !state.open() {
            drop(state);
            return Err(WsError::Closed(self.shared.closed_reason()));
        }
        if state.datagrams.len() >= MAX_QUEUED_DATAGRAMS {
            state.datagrams.pop_front();
        }
        state
            .datagrams
            .push_back(MuxMessage::Datagram(datagram).encode());
        drop(state);
        self.shared.wake_writer.notify_one();
        Ok(())
    }

    pub async fn receive_datagram(&self) -> Result<Bytes, WsError> {
        let next = self.shared.accept.datagrams.lock().await.recv().await;
        next.ok_or_else(|| WsError::Closed(self.shared.closed_reason()))
    }

    /// Closes the session: queued control goes first, then the close frame with
    /// `4000 + code` and `reason`; queued media is dropped.
    pub fn close(&self, code: u32, reason: &str) {
        let ws_code = u16::try_from(code)
            .ok()
            .and_then(|c| c.checked_add(mux::CLOSE_CODE_BASE))
            .filter(|c| *c < 5000)
            .unwrap_or(mux::CLOSE_CODE_BASE);
        self.close_with(ws_code, reason);
    }

    fn close_with(&self, ws_code: u16, reason: &str) {
        {
            let mut state = self.shared.lock();
            if !state.open() {
                return;
            }
            // A close reason must fit one control frame (125 bytes, code included).
            let mut reason = reason.to_owned();
            while reason.len() > 123 {
                reason.pop();
            }
            state.closing = Some((ws_code, reason));
            state.drop_media();
        }
        self.shared.wake_writer.notify_one();
        self.shared.space.notify_waiters();
    }

    /// Resolves when the session is over, with why.
    pub async fn closed(&self) -> String {
        let mut rx = self.shared.closed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "closed".to_owned(),
        }
    }

    /// Why the session ended, if it has.
    pub fn close_reason(&self) -> Option<String> {
        self.shared.closed.borrow().clone()
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.shared.remote
    }

    /// The stream data budget (the core's send window, as for QUIC).
    pub fn set_send_window(&self, window: u64) {
        let window = usize::try_from(window)
            .unwrap_or(usize::MAX)
            .max(MIN_WINDOW);
        self.shared.lock().window = window;
        self.shared.space.notify_waiters();
    }

    /// What TCP knows of the path, in the core's terms; `None` without a TCP socket.
    pub fn path_sample(&self) -> Option<PathSample> {
        self.shared.tcp.as_ref().and_then(tcp_info)
    }
}

/// The socket's `TCP_INFO`: RTT, congestion window (segments × MSS), retransmissions as
/// losses, bytes sent.
#[cfg(target_os = "linux")]
fn tcp_info(fd: &OwnedFd) -> Option<PathSample> {
    // SAFETY: `tcp_info` is plain data; the kernel writes at most `len` bytes into it and
    // `fd` is an open socket we own a duplicate of.
    let info = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if rc != 0 {
            return None;
        }
        info
    };
    let micros = |us: u32| Duration::from_micros(u64::from(us));
    Some(PathSample {
        rtt: micros(info.tcpi_rtt),
        min_rtt: micros(if info.tcpi_min_rtt == 0 {
            info.tcpi_rtt
        } else {
            info.tcpi_min_rtt
        }),
        cwnd: u64::from(info.tcpi_snd_cwnd) * u64::from(info.tcpi_snd_mss),
        sent_packets: u64::from(info.tcpi_segs_out),
        lost_packets: u64::from(info.tcpi_total_retrans),
        sent_bytes: info.tcpi_bytes_sent,
    })
}

#[cfg(not(target_os = "linux"))]
fn tcp_info(_fd: &OwnedFd) -> Option<PathSample> {
    None
}

/// Sets what a WebSocket's TCP socket needs: no Nagle delay (small control and audio
/// messages go at once) and a small unsent backlog in the kernel (see the module docs).
pub fn tune_socket(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(&fd);
    socket.set_tcp_nodelay(true)?;
    #[cfg(target_os = "linux")]
    socket.set_tcp_notsent_lowat(NOTSENT_LOWAT)?;
    Ok(())
}

async fn write_loop(shared: Arc<Shared>, mut writer: WsWriter, timings: WsTimings) {
    let mut ping = tokio::time::interval(timings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut batch = Vec::new();
    let failed = loop {
        match shared.take_batch(&mut batch) {
            Ok(()) if batch.is_empty() => {
                tokio::select! {
                    _ = shared.wake_writer.notified() => {}
                    _ = ping.tick() => {
                        if let Err(e) = writer.send(WsMessage::Ping).await {
                            break Some(e);
                        }
                    }
                }
            }
            Ok(()) => {
                let mut sent = Ok(());
                for message in batch.drain(..) {
                    sent = writer.feed(WsMessage::Binary(message)).await;
                    if sent.is_err() {
                        break;
                    }
                }
                if let Err(e) = sent.and(writer.flush().await) {
                    break Some(e);
                }
            }
            Err(Some((code, reason))) => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    writer.send(WsMessage::Close(Some((code, reason.clone())))),
                )
                .await;
                let _ = writer.close().await;
                break Some(format!("closed (code {code}): {reason}"));
            }
            Err(None) => break None,
        }
    };
    if let Some(reason) = failed {
        shared.end(reason);
    }
}

/// The reader task's own state: where incoming bytes go.
struct Incoming {
    control: Option<mpsc::Sender<Chunk>>,
    streams: mpsc::Sender<WsRecvStream>,
    datagrams: mpsc::Sender<Bytes>,
    /// Streams of the peer that are open.
    open: HashMap<u64, mpsc::Sender<Chunk>>,
    /// The highest stream id the peer has opened.
    highest: Option<u64>,
}

/// Why the reader closes the session: a WebSocket close code and reason.
type Violation = (u16, String);

async fn read_loop(
    session: WsSession,
    mut reader: WsReader,
    mut incoming: Incoming,
    timings: WsTimings,
) {
    let shared = &session.shared;
    let mut closed = shared.closed.subscribe();
    let reason = loop {
        let ours = async {
            let _ = closed.wait_for(Option::is_some).await;
        };
        let next = tokio::select! {
            next = tokio::time::timeout(timings.idle_timeout, reader.next()) => Some(next),
            () = ours => None,
        };
        let Some(next) = next else {
            // Closed from our side: give the peer a moment to answer the close frame.
            let _ = tokio::time::timeout(Duration::from_secs(1), reader.next()).await;
            break None;
        };
        let message = match next {
            Err(_) => {
                session.close(close_code::NORMAL, "idle timeout");
                break Some("idle timeout".to_owned());
            }
            Ok(None) => break Some("connection lost".to_owned()),
            Ok(Some(Err(e))) => break Some(format!("connection lost: {e}")),
            Ok(Some(Ok(message))) => message,
        };
        let violation = match message {
            WsMessage::Binary(bytes) => incoming.handle(&session.shared, bytes).await.err(),
            WsMessage::Text => Some((1003, "text messages are not part of the protocol".into())),
            WsMessage::Ping => None,
            WsMessage::TooLarge => Some((
                1009,
                format!("messages are limited to {} bytes", mux::MAX_MESSAGE),
            )),
            WsMessage::Close(frame) => {
                break Some(match frame {
                    Some((code, reason)) => format!("closed by the peer (code {code}): {reason}"),
                    None => "closed by the peer".to_owned(),
                });
            }
        };
        if let Some((code, reason)) = violation {
            tracing::debug!(code, %reason, "closing a WebSocket session");
            session.close_with(code, &reason);
        }
    };
    if let Some(reason) = reason {
        // Closing from our side (a violation just seen): let the writer send the close
        // frame before the session is marked over.
        let closing = shared.lock().closing.is_some();
        if closing {
            let written = async {
                let _ = closed.wait_for(Option::is_some).await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), written).await;
        }
        shared.end(reason);
    }
    // Dropping `incoming` ends every open stream (their readers see a reset) and the
    // accept queues.
}

impl Incoming {
    async fn handle(&mut self, shared: &Arc<Shared>, bytes: Bytes) -> Result<(), Violation> {
        let protocol = |e: String| {
            (
                mux::CLOSE_CODE_BASE + close_code::PROTOCOL_VIOLATION as u16,
                e,
            )
        };
        match MuxMessage::decode(bytes).map_err(|e| protocol(e.to_string()))? {
            MuxMessage::Control(data) => {
                if let Some(control) = &self.control
                    && control.send(Chunk::Data(data)).await.is_err()
                {
                    // Nobody reads the control stream any more: drop what comes.
                    self.control = None;
                }
            }
            MuxMessage::Datagram(data) => {
                // A reader that falls behind loses datagrams, as a congested path would.
                let _ = self.datagrams.try_send(data);
            }
            MuxMessage::Stream { id, data } => {
                if !self.open.contains_key(&id) {
                    if self.highest.is_some_and(|highest| id <= highest) {
                        // Finished, reset or stopped already: late bytes are discarded.
                        return Ok(());
                    }
                    if self.open.len() >= mux::MAX_OPEN_STREAMS {
                        self.open.retain(|_, tx| !tx.is_closed());
                        if self.open.len() >= mux::MAX_OPEN_STREAMS {
                            return Err(protocol(format!(
                                "more than {} open streams",
                                mux::MAX_OPEN_STREAMS
                            )));
                        }
                    }
                    self.highest = Some(id);
                    let (tx, rx) = mpsc::channel(INCOMING_CHUNKS);
                    let stream = WsRecvStream::new(shared.clone(), Some(id), rx);
                    if self.streams.send(stream).await.is_err() {
                        return Ok(());
                    }
                    self.open.insert(id, tx);
                }
                if data.is_empty() {
                    return Ok(());
                }
                let tx = &self.open[&id];
                if tx.send(Chunk::Data(data)).await.is_err() {
                    // Its reader stopped it.
                    self.open.remove(&id);
                }
            }
            MuxMessage::Fin { id } => {
                if let Some(tx) = self.open.remove(&id) {
                    let _ = tx.send(Chunk::Fin).await;
                }
            }
            MuxMessage::Reset { id, .. } => {
                // Dropping the sender ends the stream without a FIN: its reader sees a
                // reset.
                self.open.remove(&id);
            }
            MuxMessage::StopSending { id, code } => {
                let mut state = shared.lock();
                state.stopped.insert(id, code);
                // What is queued for it will not be read: do not send it.
                state.drop_stream_data(id);
                drop(state);
                shared.space.notify_waiters();
            }
        }
        Ok(())
    }
}

/// Our side of a stream: a unidirectional stream we opened, or our half of the control
/// stream (`id` none).
pub struct WsSendStream {
    shared: Arc<Shared>,
    id: Option<u64>,
    /// Finished or reset: nothing more goes.
    done: bool,
}

impl std::fmt::Debug for WsSendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSendStream")
            .field("id", &self.id)
            .finish()
    }
}

impl WsSendStream {
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// Queues `data` (in pieces of at most [`mux::MAX_STREAM_CHUNK`]), waiting for room.
    /// The payload is not copied until the writer frames it.
    pub async fn write(&mut self, mut data: Bytes) -> Result<(), WsError> {
        if self.done {
            return Err(WsError::Closed("stream finished".into()));
        }
        let Some(id) = self.id else {
            let mut control = BytesMut::with_capacity(1 + data.len());
            control.extend_from_slice(&[mux::CONTROL]);
            control.extend_from_slice(&data);
            return self.shared.push_control(control.freeze()).await;
        };
        loop {
            let piece = data.split_to(data.len().min(mux::MAX_STREAM_CHUNK));
            self.shared
                .push_stream(id, MuxMessage::Stream { id, data: piece })
                .await?;
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// Ends the stream normally; what was written is still delivered. (The control
    /// stream ends with the session.)
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let Some(id) = self.id {
            self.queue_end(MuxMessage::Fin { id });
        }
    }

    /// Abandons the stream: what is queued of it is not sent, and the peer discards what
    /// it has of it.
    pub fn reset(&mut self, code: u32) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let Some(id) = self.id else { return };
        self.shared.lock().drop_stream_data(id);
        self.shared.space.notify_waiters();
        self.queue_end(MuxMessage::Reset { id, code });
    }

    /// FIN and RESET go after the stream's data and never wait for room.
    fn queue_end(&self, message: MuxMessage) {
        let mut state = self.shared.lock();
        if !state.open() {
            return;
        }
        if let Some(id) = self.id {
            state.stopped.remove(&id);
        }
        state.streams.push_back(message);
        drop(state);
        self.shared.wake_writer.notify_one();
    }
}

impl Drop for WsSendStream {
    /// A stream dropped unfinished is finished, as quinn does.
    fn drop(&mut self) {
        self.finish();
    }
}

/// The peer's side of a stream: a unidirectional stream it opened, or its half of the
/// control stream (`id` none).
pub struct WsRecvStream {
    shared: Arc<Shared>,
    id: Option<u64>,
    chunks: mpsc::Receiver<Chunk>,
    /// Bytes received but not yet read.
    pending: Bytes,
    ended: bool,
}

impl std::fmt::Debug for WsRecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsRecvStream")
            .field("id", &self.id)
            .finish()
    }
}

impl WsRecvStream {
    fn new(shared: Arc<Shared>, id: Option<u64>, chunks: mpsc::Receiver<Chunk>) -> Self {
        Self {
            shared,
            id,
            chunks,
            pending: Bytes::new(),
            ended: false,
        }
    }

    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// Appends what has arrived to `buf`: `Ok(0)` at the end of the stream, an error if it
    /// was reset or the session ended. Cancel-safe.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> Result<usize, WsError> {
        if self.pending.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.chunks.recv().await {
                Some(Chunk::Data(data)) => self.pending = data,
                Some(Chunk::Fin) => {
                    self.ended = true;
                    return Ok(0);
                }
                None => {
                    return Err(match self.shared.closed.borrow().clone() {
                        Some(reason) => WsError::Closed(reason),
                        None => WsError::Reset(0),
                    });
                }
            }
        }
        let n = self.pending.len().min(buf.capacity() - buf.len()).max(1);
        let n = n.min(self.pending.len());
        buf.extend_from_slice(&self.pending.split_to(n));
        Ok(n)
    }

    /// Refuses the rest of the stream: the peer is told to stop, what still arrives of it
    /// is discarded.
    pub fn stop(mut self, code: u32) {
        self.chunks.close();
        if let Some(id) = self.id
            && !self.ended
        {
            self.shared
                .push_signal(MuxMessage::StopSending { id, code });
        }
    }
}
