//! Subscribers without a task per connection: the load generator's N receiving sessions
//! driven by one loop over one UDP socket, on `quinn-proto` directly.
//!
//! Why: through `wtransport` and `quinn`, every subscriber costs an endpoint-driver hop, a
//! connection-driver task, a session driver with its channels and a client task of its
//! own, and the load generator used more CPU than the relay it measures (docs/BENCHMARKS.md,
//! "The load generator's share"). Here a packet is read, decrypted, parsed and recorded in
//! one pass of one loop, with no wake-up in between.
//!
//! It does what a subscriber of the fan-out needs and nothing more: the QUIC handshake,
//! HTTP/3 SETTINGS and the extended CONNECT of docs/PROTOCOL.md section 2, `join` on the
//! control stream (section 3), and receiving the media of section 5. Every frame it reads
//! is recorded like the full client's ([`Recorder`]).
//!
//! The loop, each turn: read every datagram the socket holds (GRO batches, split into
//! packets) and hand each to its connection; fire the timers that are due; then for each
//! connection that something happened to, act on its events (open streams, read streams
//! and datagrams, answer the handshake) and send what it has to send; then sleep until the
//! socket is readable or the next timer.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, ReadError,
    StreamEvent, StreamId, TransportConfig, VarInt,
};
use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::watch;

use super::stats::{Recorder, packets_for};
use crate::wire::frame::{decode_datagram, decode_stream_frame, decode_stream_header};
use crate::wire::{
    ClientMessage, PROTOCOL_VERSION, Request, ServerMessage, encode_message, varint,
};

/// Where one relay is, for the lean subscribers.
#[derive(Debug, Clone)]
pub struct LeanRelay {
    /// `https://host:port/`
    pub url: String,
    /// SHA-256 of the relay's certificate (its development identity), pinned.
    pub certificate_sha256: [u8; 32],
}

/// One subscriber: it joins `room` as `name` with auto-subscribe on, at relay `relay`.
#[derive(Debug, Clone)]
pub struct LeanPlan {
    pub room: String,
    pub name: String,
    pub relay: usize,
    /// Consumers it should have before it counts as set up.
    pub expected_consumers: u64,
    /// Send `join`. Without, the session only receives, as soon as it is open: the
    /// direct path's sender (`direct.rs`) is a bare WebTransport server with no control
    /// protocol.
    pub join: bool,
}

/// What the caller tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeanPhase {
    /// Setting up: nothing is recorded yet.
    SettingUp,
    /// Record what arrives until this instant, then close every session and return.
    RecordUntil(tokio::time::Instant),
}

/// HTTP/3 stream type of a control stream, and WebTransport's stream and datagram prefixes
/// (docs/PROTOCOL.md section 2).
const H3_CONTROL_STREAM: u64 = 0x00;
const WT_UNI_STREAM: u64 = 0x54;
const WT_BIDI_SIGNAL: u64 = 0x41;
/// How many sessions may be in their handshake and join at once (the full client's bench
/// lets 32 join at a time too).
const JOINING_AT_ONCE: usize = 32;
/// Packets in one GSO send at most (quinn's own cap: 64 segments of 1,200 bytes would be
/// over UDP's 64 KiB, and the kernel would refuse the whole send).
const MAX_GSO_SEGMENTS: usize = 10;
/// Largest datagram quinn-udp may hand over in one GRO batch.
const RECV_BUFFER: usize = 64 * 1024;
/// The media a receiver accepts in one frame (docs/PROTOCOL.md 5.4).
const MAX_FRAME: usize = 2 * 1024 * 1024;

/// Runs `plans` against `relays` until the caller's phase says to stop. `ready` counts the
/// subscribers that have all their consumers; `received` the frames recorded. Returns one
/// recorder per plan, in order.
pub async fn run(
    relays: Vec<LeanRelay>,
    plans: Vec<LeanPlan>,
    mut phase: watch::Receiver<LeanPhase>,
    ready: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
) -> Result<Vec<Recorder>> {
    let mut driver = Driver::new(relays, plans)?;
    let mut sleep = Box::pin(tokio::time::sleep(Duration::from_secs(1)));
    loop {
        let now = Instant::now();
        let recording = match *phase.borrow() {
            LeanPhase::SettingUp => None,
            LeanPhase::RecordUntil(until) => Some(until),
        };
        if let Some(until) = recording {
            if tokio::time::Instant::now() >= until {
                return driver.finish();
            }
            driver.recording = true;
        }
        driver.start_more(now)?;
        driver.receive(now)?;
        driver.fire_timers(now);
        driver.drive_dirty(now, &ready, &received)?;
        if let Some(failure) = driver.failure.take() {
            bail!("{failure}");
        }
        let mut wake = driver.next_timeout().map(tokio::time::Instant::from_std);
        if let Some(until) = recording {
            wake = Some(wake.map_or(until, |w| w.min(until)));
        }
        let wake = wake.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        sleep.as_mut().reset(wake);
        tokio::select! {
            readable = driver.socket.readable() => readable?,
            _ = &mut sleep => {}
            changed = phase.changed() => {
                if changed.is_err() {
                    bail!("the bench stopped waiting for its subscribers");
                }
            }
        }
    }
}

/// Where a session is on its way to receiving media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The QUIC handshake.
    Handshake,
    /// The CONNECT request is sent; waiting for its `200`.
    Connect,
    /// The `join` is sent; counting consumers.
    Joining,
    /// It has all its consumers.
    Ready,
}

/// What a stream the relay opened turned out to be.
enum UniStream {
    /// Its type is not read yet.
    Unknown(BytesMut),
    /// A WebTransport stream of the session: media, with its header once read.
    Media { buf: BytesMut, header: bool },
    /// HTTP/3's own (the relay's SETTINGS, QPACK): read and dropped.
    Ignored,
}

struct Session {
    plan: usize,
    connection: quinn_proto::Connection,
    stage: Stage,
    connect_stream: Option<StreamId>,
    connect_buf: BytesMut,
    control: Option<StreamId>,
    control_buf: BytesMut,
    /// Bytes for the control stream that did not fit yet (flow control).
    control_out: Bytes,
    uni: HashMap<StreamId, UniStream>,
    consumers: u64,
    timeout: Option<Instant>,
    dirty: bool,
    /// The session's id: the CONNECT stream's.
    session_id: u64,
}

struct Driver {
    socket: tokio::net::UdpSocket,
    udp: UdpSocketState,
    endpoint: Endpoint,
    client_configs: Vec<ClientConfig>,
    addresses: Vec<(SocketAddr, String)>,
    urls: Vec<String>,
    plans: Vec<LeanPlan>,
    /// Sessions by connection handle (quinn-proto hands out small indices, reused).
    sessions: Vec<Option<Session>>,
    /// Sessions not yet [`Stage::Ready`].
    joining: usize,
    recv_metas: Vec<RecvMeta>,
    /// Plans not connected yet, in order.
    next_plan: usize,
    recorders: Vec<Recorder>,
    dirty: Vec<ConnectionHandle>,
    recording: bool,
    failure: Option<String>,
    recv_buffers: Vec<Vec<u8>>,
    send_buffer: Vec<u8>,
    response_buffer: Vec<u8>,
}

impl Driver {
    fn new(relays: Vec<LeanRelay>, plans: Vec<LeanPlan>) -> Result<Self> {
        let socket = bind_socket()?;
        let udp = UdpSocketState::new((&socket).into())?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let mut client_configs = Vec::new();
        let mut addresses = Vec::new();
        for relay in &relays {
            client_configs.push(client_config(relay)?);
            addresses.push(resolve(&relay.url)?);
        }
        let endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
        let recorders = vec![Recorder::default(); plans.len()];
        let batch = quinn_udp::BATCH_SIZE;
        Ok(Self {
            socket,
            udp,
            endpoint,
            client_configs,
            addresses,
            urls: relays.iter().map(|r| r.url.clone()).collect(),
            plans,
            sessions: Vec::new(),
            joining: 0,
            recv_metas: vec![RecvMeta::default(); batch],
            next_plan: 0,
            recorders,
            dirty: Vec::new(),
            recording: false,
            failure: None,
            recv_buffers: vec![vec![0; RECV_BUFFER]; batch],
            send_buffer: Vec::new(),
            response_buffer: Vec::new(),
        })
    }

    /// Opens connections for more plans while fewer than [`JOINING_AT_ONCE`] are joining.
    fn start_more(&mut self, now: Instant) -> Result<()> {
        while self.joining < JOINING_AT_ONCE {
            let Some(plan) = self.plans.get(self.next_plan) else {
                break;
            };
            let (address, server_name) = &self.addresses[plan.relay];
            let (handle, connection) = self
                .endpoint
                .connect(
                    now,
                    self.client_configs[plan.relay].clone(),
                    *address,
                    server_name,
                )
                .context("starting a QUIC connection")?;
            if self.sessions.len() <= handle.0 {
                self.sessions.resize_with(handle.0 + 1, || None);
            }
            self.joining += 1;
            self.sessions[handle.0] = Some(Session {
                plan: self.next_plan,
                connection,
                stage: Stage::Handshake,
                connect_stream: None,
                connect_buf: BytesMut::new(),
                control: None,
                control_buf: BytesMut::new(),
                control_out: Bytes::new(),
                uni: HashMap::new(),
                consumers: 0,
                timeout: None,
                dirty: false,
                session_id: 0,
            });
            self.mark_dirty(handle);
            self.next_plan += 1;
        }
        Ok(())
    }

    fn mark_dirty(&mut self, handle: ConnectionHandle) {
        if let Some(Some(session)) = self.sessions.get_mut(handle.0)
            && !session.dirty
        {
            session.dirty = true;
            self.dirty.push(handle);
        }
    }

    /// Reads everything the socket holds and hands each packet to its connection.
    fn receive(&mut self, now: Instant) -> Result<()> {
        let metas = &mut self.recv_metas;
        // Until the socket is empty, then the connections' work. (Capping this at four
        // batches a turn, so that acknowledgements go out sooner, made the fan-out to 400
        // worse: p99 415-517 ms against 242 ms, the relay busier with more, smaller
        // acknowledgements.)
        loop {
            let mut slices: Vec<IoSliceMut<'_>> = self
                .recv_buffers
                .iter_mut()
                .map(|b| IoSliceMut::new(b))
                .collect();
            let received = self.socket.try_io(Interest::READABLE, || {
                self.udp.recv((&self.socket).into(), &mut slices, metas)
            });
            let count = match received {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("receiving"),
            };
            drop(slices);
            for (meta, buffer) in metas.iter().zip(&self.recv_buffers).take(count) {
                let stride = meta.stride.max(1);
                for packet in buffer[..meta.len].chunks(stride) {
                    let ecn = meta
                        .ecn
                        .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
                    self.response_buffer.clear();
                    let event = self.endpoint.handle(
                        now,
                        meta.addr,
                        meta.dst_ip,
                        ecn,
                        BytesMut::from(packet),
                        &mut self.response_buffer,
                    );
                    match event {
                        Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                            if let Some(Some(session)) = self.sessions.get_mut(handle.0) {
                                session.connection.handle_event(event);
                                if !session.dirty {
                                    session.dirty = true;
                                    self.dirty.push(handle);
                                }
                            }
                        }
                        Some(DatagramEvent::Response(transmit)) => {
                            let contents = &self.response_buffer[..transmit.size];
                            send(&self.socket, &self.udp, &transmit, contents);
                        }
                        // A client endpoint: nothing connects to it.
                        Some(DatagramEvent::NewConnection(_)) | None => {}
                    }
                }
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        for (index, slot) in self.sessions.iter_mut().enumerate() {
            if let Some(session) = slot
                && session.timeout.is_some_and(|t| t <= now)
            {
                session.connection.handle_timeout(now);
                session.timeout = None;
                if !session.dirty {
                    session.dirty = true;
                    self.dirty.push(ConnectionHandle(index));
                }
            }
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.sessions
            .iter()
            .flatten()
            .filter_map(|s| s.timeout)
            .min()
    }

    fn drive_dirty(&mut self, now: Instant, ready: &AtomicU64, received: &AtomicU64) -> Result<()> {
        while let Some(handle) = self.dirty.pop() {
            let Some(mut session) = self.sessions.get_mut(handle.0).and_then(Option::take) else {
                continue;
            };
            session.dirty = false;
            let recorder = &mut self.recorders[session.plan];
            // Every frame counts: none is sent before the run starts, and one that arrives
            // in the turn the loop learns of the start must not be lost to the count.
            let mut counted = 0;
            let mut record = |capture_us: u64, bytes: usize, packets: u64| {
                recorder.record(capture_us, bytes, packets);
                counted += 1;
            };
            let plan = &self.plans[session.plan];
            let url = &self.urls[plan.relay];
            let was_ready = session.stage == Stage::Ready;
            if let Err(e) = session.act(plan, url, &mut record) {
                self.failure = Some(format!("subscriber {}: {e:#}", plan.name));
            }
            received.fetch_add(counted, Ordering::Relaxed);
            if !was_ready && session.stage == Stage::Ready {
                self.joining -= 1;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            // The connection's messages to the endpoint (retired ids and the like).
            while let Some(event) = session.connection.poll_endpoint_events() {
                if let Some(event) = self.endpoint.handle_event(handle, event) {
                    session.connection.handle_event(event);
                }
            }
            let max_segments = self.udp.max_gso_segments().min(MAX_GSO_SEGMENTS);
            loop {
                self.send_buffer.clear();
                match session
                    .connection
                    .poll_transmit(now, max_segments, &mut self.send_buffer)
                {
                    Some(transmit) => send(
                        &self.socket,
                        &self.udp,
                        &transmit,
                        &self.send_buffer[..transmit.size],
                    ),
                    None => break,
                }
            }
            session.timeout = session.connection.poll_timeout();
            if session.connection.is_drained() {
                if session.stage != Stage::Ready || !self.recording {
                    self.failure.get_or_insert_with(|| {
                        format!("subscriber {}: the connection ended early", plan.name)
                    });
                }
                if session.stage != Stage::Ready {
                    self.joining -= 1;
                }
                continue;
            }
            self.sessions[handle.0] = Some(session);
        }
        Ok(())
    }

    /// Closes every session and hands back what each recorded.
    fn finish(mut self) -> Result<Vec<Recorder>> {
        let now = Instant::now();
        for session in self.sessions.iter_mut().flatten() {
            let reason = Bytes::from_static(b"done");
            session.connection.close(now, VarInt::from_u32(0), reason);
            self.send_buffer.clear();
            while let Some(t) = session
                .connection
                .poll_transmit(now, 1, &mut self.send_buffer)
            {
                send(&self.socket, &self.udp, &t, &self.send_buffer[..t.size]);
                self.send_buffer.clear();
            }
        }
        if self.next_plan < self.plans.len() {
            bail!(
                "only {} of {} subscribers were started",
                self.next_plan,
                self.plans.len()
            );
        }
        Ok(self.recorders)
    }
}

impl Session {
    /// Acts on everything that happened to the connection since the last turn.
    fn act(
        &mut self,
        plan: &LeanPlan,
        url: &str,
        record: &mut impl FnMut(u64, usize, u64),
    ) -> Result<()> {
        while let Some(event) = self.connection.poll() {
            match event {
                Event::Connected => self.open_session(url)?,
                Event::ConnectionLost { reason } if self.stage != Stage::Ready => {
                    bail!("connection lost while setting up: {reason}");
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                    while let Some(id) = self.connection.streams().accept(Dir::Uni) {
                        self.uni.insert(id, UniStream::Unknown(BytesMut::new()));
                        self.read_uni(id, record)?;
                    }
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    // The relay opens none; take it so that the count of streams frees.
                    while self.connection.streams().accept(Dir::Bi).is_some() {}
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    if Some(id) == self.connect_stream {
                        self.read_connect(plan)?;
                    } else if Some(id) == self.control {
                        self.read_control(plan)?;
                    } else if self.uni.contains_key(&id) {
                        self.read_uni(id, record)?;
                    }
                }
                Event::Stream(StreamEvent::Writable { id }) if Some(id) == self.control => {
                    self.flush_control()?;
                }
                Event::DatagramReceived => {
                    while let Some(datagram) = self.connection.datagrams().recv() {
                        // The session's quarter stream id, then the audio frame.
                        let Ok((_, used)) = varint::decode(&datagram) else {
                            continue;
                        };
                        if let Ok(d) = decode_datagram(datagram.slice(used..), usize::MAX) {
                            record(d.header.capture_us, d.payload.len(), 1);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// HTTP/3's control stream with SETTINGS, then the extended CONNECT (PROTOCOL.md 2).
    fn open_session(&mut self, url: &str) -> Result<()> {
        let settings = wtransport_proto::settings::Settings::builder()
            .qpack_max_table_capacity(wtransport_proto::varint::VarInt::from_u32(0))
            .qpack_blocked_streams(wtransport_proto::varint::VarInt::from_u32(0))
            .enable_connect_protocol()
            .enable_h3_datagrams()
            .enable_webtransport()
            .webtransport_max_sessions(wtransport_proto::varint::VarInt::from_u32(1))
            .build();
        let mut bytes = Vec::new();
        varint::encode(H3_CONTROL_STREAM, &mut bytes);
        settings
            .generate_frame()
            .write(&mut bytes)
            .map_err(|_| anyhow::anyhow!("SETTINGS do not fit"))?;
        let control = self
            .connection
            .streams()
            .open(Dir::Uni)
            .context("no stream for HTTP/3's control stream")?;
        self.write_all(control, &bytes)?;

        let connect = self
            .connection
            .streams()
            .open(Dir::Bi)
            .context("no stream for CONNECT")?;
        let request = wtransport_proto::session::SessionRequest::new(url)
            .map_err(|e| anyhow::anyhow!("bad relay URL: {e:?}"))?;
        let mut bytes = Vec::new();
        request
            .headers()
            .generate_frame()
            .write(&mut bytes)
            .map_err(|_| anyhow::anyhow!("CONNECT does not fit"))?;
        self.write_all(connect, &bytes)?;
        self.connect_stream = Some(connect);
        self.session_id = u64::from(connect);
        self.stage = Stage::Connect;
        Ok(())
    }

    fn write_all(&mut self, stream: StreamId, bytes: &[u8]) -> Result<()> {
        let written = self
            .connection
            .send_stream(stream)
            .write(bytes)
            .map_err(|e| anyhow::anyhow!("writing: {e}"))?;
        if written < bytes.len() {
            bail!("a stream's first bytes did not fit its flow-control window");
        }
        Ok(())
    }

    /// The CONNECT stream: the relay's answer; a `200` opens the session.
    fn read_connect(&mut self, plan: &LeanPlan) -> Result<()> {
        let id = self.connect_stream.context("no CONNECT stream")?;
        let finished = read_into(&mut self.connection, id, &mut self.connect_buf)?;
        if self.stage != Stage::Connect {
            // The stream stays open for the session's life; nothing more on it matters.
            self.connect_buf.clear();
            return Ok(());
        }
        let mut reader = wtransport_proto::bytes::BufferReader::new(&self.connect_buf);
        let frame = wtransport_proto::frame::Frame::read_from_buffer(&mut reader)
            .map_err(|e| anyhow::anyhow!("bad answer to CONNECT: {e:?}"))?;
        let Some(frame) = frame else {
            if finished {
                bail!("the relay ended the CONNECT stream without an answer");
            }
            return Ok(());
        };
        if !matches!(frame.kind(), wtransport_proto::frame::FrameKind::Headers) {
            bail!("the relay answered CONNECT with a {:?} frame", frame.kind());
        }
        let headers = wtransport_proto::headers::Headers::with_frame(&frame)
            .map_err(|e| anyhow::anyhow!("bad headers: {e:?}"))?;
        let status = headers.get(":status").unwrap_or("none").to_owned();
        if status != "200" {
            bail!("the relay answered CONNECT with status {status}");
        }
        self.connect_buf.clear();
        if !plan.join {
            self.stage = Stage::Ready;
            return Ok(());
        }
        // The control stream: WebTransport's prefix, then `join`.
        let control = self
            .connection
            .streams()
            .open(Dir::Bi)
            .context("no stream for the control stream")?;
        let mut out = BytesMut::new();
        varint::encode(WT_BIDI_SIGNAL, &mut out);
        varint::encode(self.session_id, &mut out);
        out.put_slice(&encode_message(&ClientMessage {
            id: 1,
            request: Request::Join {
                version: PROTOCOL_VERSION,
                room: plan.room.clone(),
                name: plan.name.clone(),
                auto_subscribe: true,
                token: None,
                extensions: Vec::new(),
                resume: None,
                relay: None,
            },
        }));
        self.control = Some(control);
        self.control_out = out.freeze();
        self.flush_control()?;
        self.stage = Stage::Joining;
        if plan.expected_consumers == 0 {
            self.stage = Stage::Ready;
        }
        Ok(())
    }

    fn flush_control(&mut self) -> Result<()> {
        let Some(control) = self.control else {
            return Ok(());
        };
        while !self.control_out.is_empty() {
            match self
                .connection
                .send_stream(control)
                .write(&self.control_out)
            {
                Ok(n) => self.control_out.advance(n),
                Err(quinn_proto::WriteError::Blocked) => break,
                Err(e) => bail!("writing the control stream: {e}"),
            }
        }
        Ok(())
    }

    /// The control stream: length-prefixed JSON messages (PROTOCOL.md 3). Consumers are
    /// counted; an error ends the run.
    fn read_control(&mut self, plan: &LeanPlan) -> Result<()> {
        let id = self.control.context("no control stream")?;
        let finished = read_into(&mut self.connection, id, &mut self.control_buf)?;
        while self.control_buf.len() >= 4 {
            let len = u32::from_be_bytes(self.control_buf[..4].try_into()?) as usize;
            if self.control_buf.len() < 4 + len {
                break;
            }
            let body = self.control_buf.split_to(4 + len);
            let message: ServerMessage = serde_json::from_slice(&body[4..])
                .with_context(|| format!("reading {}", String::from_utf8_lossy(&body[4..])))?;
            match message {
                ServerMessage::ConsumerAdded { .. } => {
                    self.consumers += 1;
                    if self.consumers >= plan.expected_consumers {
                        self.stage = Stage::Ready;
                    }
                }
                ServerMessage::Error { message, .. } => bail!("the relay said: {message}"),
                _ => {}
            }
        }
        if finished && self.stage != Stage::Ready {
            bail!("the relay ended the control stream");
        }
        Ok(())
    }

    /// A stream the relay opened: its WebTransport prefix, then media frames.
    fn read_uni(&mut self, id: StreamId, record: &mut impl FnMut(u64, usize, u64)) -> Result<()> {
        let Some(mut stream) = self.uni.remove(&id) else {
            return Ok(());
        };
        let finished = match &mut stream {
            UniStream::Unknown(buf) | UniStream::Media { buf, .. } => {
                read_into(&mut self.connection, id, buf)?
            }
            UniStream::Ignored => {
                let mut scratch = BytesMut::new();
                read_into(&mut self.connection, id, &mut scratch)?
            }
        };
        if let UniStream::Unknown(buf) = &mut stream {
            match varint::decode(buf) {
                Ok((WT_UNI_STREAM, used)) => {
                    // The session id follows; once it is in, the media begins.
                    if let Ok((_session, more)) = varint::decode(&buf[used..]) {
                        buf.advance(used + more);
                        stream = UniStream::Media {
                            buf: std::mem::take(buf),
                            header: false,
                        };
                    }
                }
                Ok(_) => stream = UniStream::Ignored,
                Err(_) => {}
            }
        }
        if let UniStream::Media { buf, header } = &mut stream {
            if !*header {
                *header = decode_stream_header(buf)
                    .map_err(|e| anyhow::anyhow!("bad media stream: {e}"))?
                    .is_some();
            }
            if *header {
                while let Some(frame) = decode_stream_frame(buf, MAX_FRAME)
                    .map_err(|e| anyhow::anyhow!("bad media frame: {e}"))?
                {
                    record(
                        frame.header.capture_us,
                        frame.payload.len(),
                        packets_for(frame.payload.len()),
                    );
                }
            }
        }
        if !finished {
            self.uni.insert(id, stream);
        }
        Ok(())
    }
}

/// Appends what stream `id` has to `buf`. True when the stream has ended (finished or
/// reset: a reset group is one the relay gave up on, which is not an error here).
fn read_into(
    connection: &mut quinn_proto::Connection,
    id: StreamId,
    buf: &mut BytesMut,
) -> Result<bool> {
    let mut stream = connection.recv_stream(id);
    let mut chunks = match stream.read(true) {
        Ok(chunks) => chunks,
        Err(_) => return Ok(true), // closed already
    };
    let mut ended = false;
    loop {
        match chunks.next(usize::MAX) {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) | Err(ReadError::Reset(_)) => {
                ended = true;
                break;
            }
            Err(ReadError::Blocked) => break,
        }
    }
    let _ = chunks.finalize();
    Ok(ended)
}

fn send(
    socket: &tokio::net::UdpSocket,
    udp: &UdpSocketState,
    transmit: &quinn_proto::Transmit,
    contents: &[u8],
) {
    let transmit = quinn_udp::Transmit {
        destination: transmit.destination,
        ecn: transmit
            .ecn
            .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
        contents,
        segment_size: transmit.segment_size,
        src_ip: transmit.src_ip,
    };
    // Straight to the non-blocking socket (tokio's `try_io` would skip the send while it
    // has no writable event recorded, as on a new socket). A packet the socket cannot
    // take now is lost, as on a network: QUIC sends it again.
    let _ = udp.send(socket.into(), &transmit);
}

fn bind_socket() -> Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Every subscriber's media arrives on this one socket: room for bursts (a keyframe
    // fanned out to hundreds at once).
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    if let Ok(got) = socket.recv_buffer_size()
        && got < 4 << 20
    {
        // Capped by net.core.rmem_max: bursts beyond it are lost at the socket.
        tracing::warn!(
            bytes = got,
            "the lean subscribers' socket got a smaller receive buffer than 4 MiB"
        );
    }
    socket.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The relay's address and server name from its `https://host:port/` URL.
fn resolve(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("{url} is not an https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let address = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .find(|a| a.is_ipv4())
        .with_context(|| format!("{authority} has no IPv4 address"))?;
    let host = match authority.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => authority,
    };
    Ok((address, host.to_owned()))
}

fn client_config(relay: &LeanRelay) -> Result<ClientConfig> {
    use wtransport::tls::Sha256Digest;
    use wtransport::tls::client::{ServerHashVerification, build_default_tls_config};
    let verifier = ServerHashVerification::new([Sha256Digest::new(relay.certificate_sha256)]);
    let tls = build_default_tls_config(
        Arc::new(rustls::RootCertStore::empty()),
        Some(Arc::new(verifier)),
    );
    let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("TLS configuration for QUIC")?;
    let mut config = ClientConfig::new(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(3)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
