//! The native client: connect to a relay, join a room, produce and consume media.
//!
//! ```no_run
//! # async fn demo() -> Result<(), synapse_sfu::client::ClientError> {
//! use synapse_sfu::client::{Client, ClientOptions, Verification};
//! use synapse_sfu::wire::MediaKind;
//! let options = ClientOptions::new("https://127.0.0.1:4443/", Verification::FetchPin);
//! let (client, mut incoming) = Client::connect(options).await?;
//! let joined = client.join("standup", "ada", true).await?;
//! let mic = client.produce(MediaKind::Audio, "opus").await?;
//! client.send_audio(mic, 0, synapse_sfu::client::now_us(), b"opus frame")?;
//! while let Some(frame) = incoming.frames.recv().await { /* ... */ }
//! # Ok(()) }
//! ```
//!
//! `Client` is cheap to clone; `Incoming` carries the events and the received frames.

pub mod join;
pub mod media;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use wtransport::{ClientConfig, Endpoint};

use crate::core::GroupKey;
use crate::group::{GroupLimits, GroupReader, GroupWriter, Refusal, accept_groups, read_more};
use crate::server::CongestionController;
use crate::transport::websocket::{WsMessage, WsSession, WsTimings};
use crate::transport::{RecvStream, SendStream, Session, TransportKind};
use crate::wire::frame::{self, FrameHeader};
use crate::wire::{
    AudioLevel, ClientMessage, ConsumerInfo, DataSent, EXT_AUDIO_LEVEL, EXT_LOSSY_DATA, ErrorCode,
    FrameError, JoinResult, MAX_CONTROL_MESSAGE, MediaKind, PROTOCOL_VERSION, Params, PeerId,
    ProduceResult, ProducerId, ProtocolError, Request, ServerMessage, StreamFrame, StreamHeader,
    TrackSource, decode_message, encode_message,
};

/// Microseconds since the UNIX epoch: the capture timestamp clock of the protocol.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the relay at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The relay answered with a typed error.
    #[error("relay refused: {0}")]
    Refused(#[from] ProtocolError),
    #[error("the connection to the relay is closed")]
    Closed,
    #[error("unexpected answer from the relay: {0}")]
    Protocol(String),
    #[error("sending a frame failed: {0}")]
    Send(String),
    /// Another relay of the cluster hosts the room (`wrong_relay`): join at `url`.
    #[error("another relay hosts this room: {url}")]
    Redirect { url: String },
}

/// How the client checks the relay's certificate.
#[derive(Debug, Clone)]
pub enum Verification {
    /// Pin this SHA-256 (hex) of the relay's certificate, as browsers do for development
    /// certificates.
    Pin(String),
    /// Fetch `/certificate.sha256` over HTTP from the relay's host and port, then pin it.
    FetchPin,
    /// The system's trusted roots (a relay with a real certificate).
    NativeRoots,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub url: String,
    pub verification: Verification,
    /// Capacity of the received-frames channel. A full channel stops reading video streams
    /// (QUIC flow control pushes back to the relay) and drops audio datagrams.
    pub frame_buffer: usize,
    /// QUIC per-stream receive window override, in bytes (tests use a small one to make a
    /// consumer that stops reading visible to the relay quickly).
    pub stream_receive_window: Option<u32>,
    /// Access token sent with `join` (required by a relay that has API keys).
    pub token: Option<String>,
    /// Congestion controller of the connection (the relay's default, measured in
    /// docs/BENCHMARKS.md).
    pub congestion_controller: CongestionController,
    /// Optional formats asked for in `join` (docs/PROTOCOL.md 15.1): by default audio
    /// levels and lossy data, both of which this client reads.
    pub extensions: Vec<String>,
    /// WebTransport (the default) or the WebSocket fallback (docs/PROTOCOL.md section 17).
    pub transport: TransportKind,
    /// TLS for the WebSocket fallback (`wss://`), for a relay with a real certificate. By
    /// default the system's roots with [`Verification::NativeRoots`], else plain `ws://`
    /// (a development identity's TCP side is plain HTTP).
    pub websocket_tls: Option<Arc<rustls::ClientConfig>>,
    /// Read media into [`Incoming::frames`] (the default). Off: nothing reads the
    /// session's datagrams and streams but the owner (a relay's link, `server::span`).
    pub receive_media: bool,
    /// Connect through this endpoint (its socket and its certificate check) instead of one
    /// of the client's own: a relay's many sessions to another relay share one.
    pub endpoint: Option<SharedEndpoint>,
}

/// A QUIC endpoint that several clients connect through (`ClientOptions::endpoint`).
#[derive(Clone)]
pub struct SharedEndpoint(Arc<Endpoint<wtransport::endpoint::endpoint_side::Client>>);

impl std::fmt::Debug for SharedEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedEndpoint")
    }
}

impl SharedEndpoint {
    /// An endpoint whose connections verify the server as `options` says (a fetched pin
    /// is fetched now, from `options.url`) and use its transport settings.
    pub async fn new(options: &ClientOptions) -> Result<Self, ClientError> {
        client_endpoint(options).await.map(|e| Self(Arc::new(e)))
    }
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, verification: Verification) -> Self {
        Self {
            url: url.into(),
            verification,
            frame_buffer: 1024,
            stream_receive_window: None,
            token: None,
            congestion_controller: CongestionController::default(),
            extensions: vec![EXT_AUDIO_LEVEL.to_owned(), EXT_LOSSY_DATA.to_owned()],
            transport: TransportKind::default(),
            websocket_tls: None,
            receive_media: true,
            endpoint: None,
        }
    }
}

/// A media frame received from the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFrame {
    pub producer_id: ProducerId,
    /// Audio arrives on datagrams, video on streams.
    pub kind: MediaKind,
    pub header: FrameHeader,
    pub payload: Bytes,
}

/// What the relay sends on its own: events (everything but responses), media, and lossy
/// data (the sender's peer id and the payload).
pub struct Incoming {
    pub events: mpsc::UnboundedReceiver<ServerMessage>,
    pub frames: mpsc::Receiver<ReceivedFrame>,
    pub lossy_data: mpsc::Receiver<(PeerId, Bytes)>,
}

/// Requests waiting for their answer; `None` once the control stream has ended, so that a
/// request made after that fails at once instead of waiting for ever.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<ServerMessage>>>>>;

struct Inner {
    connection: Session,
    control: mpsc::UnboundedSender<Bytes>,
    pending: Pending,
    next_id: AtomicU64,
    /// The sending state of each video producer of ours.
    /// One lock per producer, so that one stalled video producer does not hold up another.
    /// Per video producer and simulcast layer (`None`: a single-encoding producer).
    video: Mutex<HashMap<(ProducerId, Option<u8>), SharedVideoSender>>,
    /// The latest estimate of the path to the relay (`follow_congestion_window`).
    path: Arc<Mutex<Option<crate::core::PathEstimate>>>,
    /// The extensions the relay listed when this client joined.
    relay_extensions: Mutex<Vec<String>>,
    // Kept alive for as long as the client is (WebTransport only).
    _endpoint: Option<SharedEndpoint>,
}

impl Drop for Inner {
    /// The background tasks hold the connection too; the last `Client` handle closes it.
    fn drop(&mut self) {
        self.connection.close(0, "client dropped");
    }
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    token: Option<String>,
    extensions: Vec<String>,
}

/// `https://host:port/...` → `(host, port)`.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.to_owned(), p.parse().ok()?)
        }
        _ => (authority.to_owned(), 443),
    };
    Some((host.trim_matches(['[', ']']).to_owned(), port))
}

/// GETs `path` from the relay's HTTP side (same host and port number as its WebTransport
/// URL) and returns the body of a 200 answer. A plain HTTP/1.1 exchange: one request, one
/// small body; not worth an HTTP client crate in the library.
pub async fn fetch_http(url: &str, path: &str) -> Result<String, ClientError> {
    let failed = |reason: String| ClientError::Connect {
        url: url.to_owned(),
        reason,
    };
    let (host, port) = host_port(url).ok_or_else(|| failed("not an https:// URL".into()))?;
    let fetch = async {
        let mut tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut tcp)
            .take(1024 * 1024)
            .read_to_end(&mut response)
            .await?;
        std::io::Result::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| failed(format!("timed out fetching {path}")))?
        .map_err(|e| failed(format!("fetching {path}: {e}")))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| failed("bad HTTP response".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(failed(format!(
            "{path}: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_owned())
}

/// Reads the relay's certificate hash from its HTTP side, to pin it.
pub async fn fetch_certificate_hash(url: &str) -> Result<String, ClientError> {
    let hash = fetch_http(url, "/certificate.sha256")
        .await?
        .trim()
        .to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClientError::Connect {
            url: url.to_owned(),
            reason: "/certificate.sha256 is not a SHA-256 hex string".into(),
        });
    }
    Ok(hash)
}

impl Client {
    /// Opens the WebTransport session and its control stream. Call [`Client::join`] next.
    pub async fn connect(options: ClientOptions) -> Result<(Client, Incoming), ClientError> {
        let url = options.url.clone();
        let failed = |reason: String| ClientError::Connect {
            url: url.clone(),
            reason,
        };
        let (connection, endpoint) = match options.transport {
            TransportKind::WebTransport => {
                let (connection, endpoint) = connect_webtransport(&options).await?;
                (Session::WebTransport(connection), Some(endpoint))
            }
            TransportKind::WebSocket => {
                // A relay with a real certificate speaks TLS on its TCP side too.
                let native = matches!(options.verification, Verification::NativeRoots);
                let tls = options.websocket_tls.clone().or_else(|| {
                    native.then(|| {
                        let roots = wtransport::tls::build_native_cert_store();
                        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                            rustls::crypto::ring::default_provider(),
                        ))
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default TLS versions")
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                        Arc::new(config)
                    })
                });
                (
                    Session::WebSocket(connect_websocket(&url, tls).await?),
                    None,
                )
            }
        };
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| failed(e.to_string()))?;

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (events_tx, events) = mpsc::unbounded_channel();
        let (frames_tx, frames) = mpsc::channel(options.frame_buffer.max(1));
        let (control, control_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_control(send, control_rx));
        tokio::spawn(read_control(recv, pending.clone(), events_tx));
        let (lossy_tx, lossy_data) = mpsc::channel(256);
        if options.receive_media {
            tokio::spawn(receive_datagrams(
                connection.clone(),
                frames_tx.clone(),
                Some(lossy_tx),
            ));
            tokio::spawn(receive_streams(connection.clone(), frames_tx));
        }
        let path = Arc::new(Mutex::new(None));
        tokio::spawn(follow_congestion_window(connection.clone(), path.clone()));
        let inner = Inner {
            connection,
            control,
            pending,
            next_id: AtomicU64::new(1),
            video: Default::default(),
            path,
            relay_extensions: Mutex::new(Vec::new()),
            _endpoint: endpoint,
        };
        Ok((
            Client {
                inner: Arc::new(inner),
                token: options.token,
                extensions: options.extensions,
            },
            Incoming {
                events,
                frames,
                lossy_data,
            },
        ))
    }

    /// Sends one request and waits for its answer.
    pub async fn request_raw(&self, request: Request) -> Result<serde_json::Value, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .ok_or(ClientError::Closed)?
            .insert(id, tx);
        self.inner
            .control
            .send(encode_message(&ClientMessage { id, request }))
            .map_err(|_| ClientError::Closed)?;
        match rx.await.map_err(|_| ClientError::Closed)? {
            ServerMessage::Response { result, .. } => Ok(result.to_json()),
            ServerMessage::Error {
                code: ErrorCode::WrongRelay,
                relay_url: Some(url),
                ..
            } => Err(ClientError::Redirect { url }),
            ServerMessage::Error { code, message, .. } => {
                Err(ClientError::Refused(ProtocolError { code, message }))
            }
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    async fn request<T: DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        let value = self.request_raw(request).await?;
        serde_json::from_value(value).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn join(
        &self,
        room: &str,
        name: &str,
        auto_subscribe: bool,
    ) -> Result<JoinResult, ClientError> {
        self.join_as(room, name, auto_subscribe, None).await
    }

    /// [`Client::join`], as another relay of the cluster when `relay` is given
    /// (docs/PROTOCOL.md 18; the token must carry the `relay` grant).
    pub async fn join_as(
        &self,
        room: &str,
        name: &str,
        auto_subscribe: bool,
        relay: Option<crate::wire::RelayJoin>,
    ) -> Result<JoinResult, ClientError> {
        let joined: JoinResult = self
            .request(Request::Join {
                version: PROTOCOL_VERSION,
                room: room.to_owned(),
                name: name.to_owned(),
                auto_subscribe,
                token: self.token.clone(),
                extensions: self.extensions.clone(),
                resume: None,
                relay,
            })
            .await?;
        *self
            .inner
            .relay_extensions
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = joined.extensions.clone();
        Ok(joined)
    }

    /// Takes back the place of `peer_id` (a session of this relay that dropped) with the
    /// token its join result gave (docs/PROTOCOL.md section 16).
    pub async fn resume(
        &self,
        room: &str,
        name: &str,
        peer_id: PeerId,
        token: &str,
    ) -> Result<JoinResult, ClientError> {
        let resumed: JoinResult = self
            .request(Request::Join {
                version: PROTOCOL_VERSION,
                room: room.to_owned(),
                name: name.to_owned(),
                auto_subscribe: false,
                token: self.token.clone(),
                extensions: self.extensions.clone(),
                resume: Some(crate::wire::Resume {
                    peer_id,
                    token: token.to_owned(),
                }),
                relay: None,
            })
            .await?;
        *self
            .inner
            .relay_extensions
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = resumed.extensions.clone();
        Ok(resumed)
    }

    /// Whether the relay listed `extension` when this client joined.
    pub fn relay_supports(&self, extension: &str) -> bool {
        self.inner
            .relay_extensions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|e| e == extension)
    }

    pub async fn produce(&self, kind: MediaKind, codec: &str) -> Result<ProducerId, ClientError> {
        self.produce_with(kind, codec, Params::new()).await
    }

    pub async fn produce_with(
        &self,
        kind: MediaKind,
        codec: &str,
        params: Params,
    ) -> Result<ProducerId, ClientError> {
        let result: ProduceResult = self
            .request(Request::Produce {
                kind,
                codec: codec.to_owned(),
                params,
                source: None,
                layers: Vec::new(),
                producer_id: None,
            })
            .await?;
        Ok(result.producer_id)
    }

    /// Produces a track of a named source (a screen, or its sound).
    pub async fn produce_source(
        &self,
        source: TrackSource,
        codec: &str,
        params: Params,
    ) -> Result<ProducerId, ClientError> {
        let result: ProduceResult = self
            .request(Request::Produce {
                kind: source.kind(),
                codec: codec.to_owned(),
                params,
                source: Some(source),
                layers: Vec::new(),
                producer_id: None,
            })
            .await?;
        Ok(result.producer_id)
    }

    /// Sends reliable data to the room (`to` empty) or to named peers; returns how many
    /// peers it went to.
    pub async fn send_data(
        &self,
        payload: &str,
        to: &[PeerId],
        topic: Option<&str>,
    ) -> Result<usize, ClientError> {
        let sent: DataSent = self
            .request(Request::SendData {
                payload: payload.to_owned(),
                to: to.to_vec(),
                topic: topic.map(str::to_owned),
            })
            .await?;
        Ok(sent.delivered)
    }

    /// Sends a lossy data datagram to the room (`to` empty) or to named peers.
    pub fn send_lossy_data(&self, to: &[PeerId], payload: &[u8]) -> Result<(), ClientError> {
        let to: Vec<u64> = to.iter().map(|p| p.0).collect();
        self.send_datagram(frame::encode_lossy_data(&to, payload))
    }

    /// Produces a simulcast video track of `layers` (lowest first). The result's `layers`
    /// is `None` from a relay without simulcast: then send one encoding.
    pub async fn produce_layers(
        &self,
        codec: &str,
        params: Params,
        layers: Vec<crate::wire::LayerInfo>,
    ) -> Result<ProduceResult, ClientError> {
        self.request(Request::Produce {
            kind: MediaKind::Video,
            codec: codec.to_owned(),
            params,
            source: None,
            layers,
            producer_id: None,
        })
        .await
    }

    pub async fn consume(&self, producer_id: ProducerId) -> Result<ConsumerInfo, ClientError> {
        self.consume_paused(producer_id, false).await
    }

    /// [`Client::consume`], starting paused when `paused`: nothing flows until a
    /// `resume_consumer`.
    pub async fn consume_paused(
        &self,
        producer_id: ProducerId,
        paused: bool,
    ) -> Result<ConsumerInfo, ClientError> {
        self.request(Request::Consume {
            producer_id,
            paused,
            layer: None,
        })
        .await
    }

    /// Consumes one layer of a simulcast producer, as it comes: for another relay of a
    /// cluster (its token needs the `relay` grant), which mirrors every layer.
    pub async fn consume_layer(
        &self,
        producer_id: ProducerId,
        layer: u8,
        paused: bool,
    ) -> Result<ConsumerInfo, ClientError> {
        self.request(Request::Consume {
            producer_id,
            paused,
            layer: Some(layer),
        })
        .await
    }

    /// Any request without a result body (pause, resume, close...).
    pub async fn command(&self, request: Request) -> Result<(), ClientError> {
        self.request_raw(request).await.map(|_| ())
    }

    /// Leaves the room; the relay closes the session afterwards.
    pub async fn leave(&self) -> Result<(), ClientError> {
        self.command(Request::Leave).await
    }

    /// Sends one audio frame as a datagram.
    pub fn send_audio(
        &self,
        producer_id: ProducerId,
        seq: u64,
        capture_us: u64,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        self.send_audio_with_level(producer_id, seq, capture_us, None, payload)
    }

    /// Sends one audio frame with its level. The level is left out for a relay whose
    /// `join` result did not list the `audio_level` extension (it would refuse the frame).
    pub fn send_audio_with_level(
        &self,
        producer_id: ProducerId,
        seq: u64,
        capture_us: u64,
        audio_level: Option<AudioLevel>,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let audio_level = audio_level.filter(|_| self.relay_supports(EXT_AUDIO_LEVEL));
        let header = FrameHeader {
            audio_level,
            ..FrameHeader::new(seq, capture_us, false)
        };
        self.send_datagram(frame::encode_datagram(producer_id, &header, payload))
    }

    /// Sends raw datagram bytes (tests use it for malformed input).
    pub fn send_datagram(&self, datagram: Bytes) -> Result<(), ClientError> {
        self.inner
            .connection
            .send_datagram(&datagram)
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    fn video_sender(
        &self,
        producer_id: ProducerId,
        layer: Option<u8>,
    ) -> Arc<tokio::sync::Mutex<VideoSender>> {
        self.inner
            .video
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((producer_id, layer))
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(VideoSender::new(
                    producer_id,
                    layer,
                )))
            })
            .clone()
    }

    /// Sends one video frame: a keyframe starts a new stream (a new group of pictures).
    /// Every frame goes, however long it takes; a live publisher uses
    /// [`Client::send_video_within`].
    pub async fn send_video(
        &self,
        producer_id: ProducerId,
        header: FrameHeader,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        let head = frame::encode_stream_frame_head(&header, payload.len());
        self.video_sender(producer_id, None)
            .lock()
            .await
            .group
            .write(&self.inner.connection, header.keyframe, head, payload)
            .await
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    /// Sends one live video frame, or skips it, so that the send backlog never grows past
    /// `deadline` (the frame's capture time plus the bound the caller allows):
    /// - a delta frame already past its deadline is skipped (a keyframe gets until its
    ///   deadline or [`KEYFRAME_STALL`] from now, whichever is later);
    /// - a write still unfinished at the deadline is abandoned, and its group stream with
    ///   it (reset: QUIC discards what it had not sent, and the frame is incomplete);
    /// - after a skip, frames up to the next keyframe are skipped too (they reference what
    ///   was lost); the caller should make its next frame a keyframe (`Skipped`).
    pub async fn send_video_within(
        &self,
        producer_id: ProducerId,
        header: FrameHeader,
        payload: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<VideoSend, ClientError> {
        self.send_layer_within(producer_id, None, header, payload, deadline)
            .await
    }

    /// [`Client::send_video_within`] for one layer of a simulcast producer (`Some(layer)`:
    /// its own group streams, of stream type 0x02), or a single-encoding producer (`None`).
    pub async fn send_layer_within(
        &self,
        producer_id: ProducerId,
        layer: Option<u8>,
        header: FrameHeader,
        payload: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<VideoSend, ClientError> {
        let sender = self.video_sender(producer_id, layer);
        let mut sender = sender.lock().await;
        let now = tokio::time::Instant::now();
        // A keyframe is the restart point: one too large for the uplink to carry within
        // the bound must still go, or a weak uplink would never send video again. It is
        // abandoned only when it stalls.
        let deadline = if header.keyframe {
            deadline.max(now + KEYFRAME_STALL)
        } else {
            deadline
        };
        if (sender.skipping && !header.keyframe) || now >= deadline {
            sender.skip();
            return Ok(VideoSend::Skipped);
        }
        let head = frame::encode_stream_frame_head(&header, payload.len());
        let write = sender
            .group
            .write(&self.inner.connection, header.keyframe, head, payload);
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => {
                sender.skipping = false;
                Ok(VideoSend::Sent)
            }
            Ok(Err(e)) => Err(ClientError::Send(e.to_string())),
            Err(_) => {
                // Always reset: a keyframe written while skipping must not be finished
                // (and so still sent) by the next group's start.
                sender.group.reset(crate::server::close_code::CONSUMER_LATE);
                sender.abandoned += 1;
                sender.skip();
                Ok(VideoSend::Skipped)
            }
        }
    }

    /// The client's own estimate of its path to the relay (send rate, RTT, loss), updated
    /// every 100 ms; `None` until the second sample.
    pub fn path_estimate(&self) -> Option<crate::core::PathEstimate> {
        *self.inner.path.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames skipped and group streams abandoned by [`Client::send_video_within`].
    pub async fn video_skips(&self, producer_id: ProducerId) -> (u64, u64) {
        let senders: Vec<_> = self
            .inner
            .video
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((p, _), _)| *p == producer_id)
            .map(|(_, s)| s.clone())
            .collect();
        let mut total = (0, 0);
        for sender in senders {
            let sender = sender.lock().await;
            total.0 += sender.skipped;
            total.1 += sender.abandoned;
        }
        total
    }

    /// Ends a video producer's open group stream (before closing the producer, say).
    pub async fn finish_video(&self, producer_id: ProducerId) {
        let groups: Vec<_> = {
            let mut video = self.inner.video.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<_> = video
                .keys()
                .filter(|(p, _)| *p == producer_id)
                .copied()
                .collect();
            keys.iter().filter_map(|k| video.remove(k)).collect()
        };
        for group in groups {
            group.lock().await.group.finish();
        }
    }

    /// Opens a raw unidirectional stream (tests use it for malformed input).
    pub async fn open_uni(&self) -> Result<SendStream, ClientError> {
        self.inner
            .connection
            .open_uni()
            .await
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    /// Connects and joins `room`, following the cluster's redirects (`wrong_relay`, at
    /// most three) to the relay that hosts it. `options.url` ends as the relay joined; a
    /// pinned certificate is fetched anew from a relay redirected to.
    pub async fn connect_placed(
        options: &mut ClientOptions,
        room: &str,
        name: &str,
        auto_subscribe: bool,
    ) -> Result<(Client, Incoming, JoinResult), ClientError> {
        let mut redirects = 0;
        loop {
            let (client, incoming) = Client::connect(options.clone()).await?;
            match client.join(room, name, auto_subscribe).await {
                Err(ClientError::Redirect { url }) if redirects < 3 && url != options.url => {
                    redirects += 1;
                    tracing::info!(%room, from = %options.url, to = %url, "the room is on another relay");
                    client.close();
                    options.url = url;
                    if matches!(options.verification, Verification::Pin(_)) {
                        options.verification = Verification::FetchPin;
                    }
                }
                Ok(joined) => return Ok((client, incoming, joined)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Which transport carries this client's session.
    /// The session itself, for an owner that reads or writes media on it directly.
    pub(crate) fn session(&self) -> Session {
        self.inner.connection.clone()
    }

    pub fn transport(&self) -> TransportKind {
        self.inner.connection.kind()
    }

    /// Sends raw bytes on the control stream (tests use it for malformed input).
    pub fn send_control_bytes(&self, bytes: Bytes) -> Result<(), ClientError> {
        self.inner
            .control
            .send(bytes)
            .map_err(|_| ClientError::Closed)
    }

    /// Resolves when the session is closed, with the relay's reason if it gave one.
    pub async fn closed(&self) -> String {
        self.inner.connection.closed().await
    }

    /// Closes the session at once, without leaving first.
    pub fn close(&self) {
        self.inner.connection.close(0, "client closed");
    }

    pub fn max_datagram_size(&self) -> Option<usize> {
        self.inner.connection.max_datagram_size()
    }
}

/// Opens the QUIC connection and WebTransport session.
async fn connect_webtransport(
    options: &ClientOptions,
) -> Result<(wtransport::Connection, SharedEndpoint), ClientError> {
    let failed = |reason: String| ClientError::Connect {
        url: options.url.clone(),
        reason,
    };
    let endpoint = match &options.endpoint {
        Some(shared) => shared.clone(),
        None => SharedEndpoint::new(options).await?,
    };
    let connection =
        tokio::time::timeout(Duration::from_secs(10), endpoint.0.connect(&options.url))
            .await
            .map_err(|_| failed("timed out".into()))?
            .map_err(|e| failed(e.to_string()))?;
    Ok((connection, endpoint))
}

async fn client_endpoint(
    options: &ClientOptions,
) -> Result<Endpoint<wtransport::endpoint::endpoint_side::Client>, ClientError> {
    let failed = |reason: String| ClientError::Connect {
        url: options.url.clone(),
        reason,
    };
    let builder = ClientConfig::builder().with_bind_default();
    let builder = match &options.verification {
        Verification::Pin(hash) => builder.with_server_certificate_hashes([parse_hash(hash)?]),
        Verification::FetchPin => {
            let hash = fetch_certificate_hash(&options.url).await?;
            builder.with_server_certificate_hashes([parse_hash(&hash)?])
        }
        Verification::NativeRoots => builder.with_native_certs(),
    };
    let mut config = builder
        .keep_alive_interval(Some(Duration::from_secs(3)))
        .build();
    let mut transport = wtransport::quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(3)))
        .send_window(crate::server::INITIAL_SEND_WINDOW);
    if let Some(window) = options.stream_receive_window {
        transport.stream_receive_window(window.into());
    }
    options.congestion_controller.apply(&mut transport);
    config
        .quic_config_mut()
        .transport_config(Arc::new(transport));
    Endpoint::client(config).map_err(|e| failed(e.to_string()))
}

/// The byte stream under a WebSocket: TCP, or TLS over TCP.
trait WsIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> WsIo for T {}

/// Opens a session over a WebSocket to the relay's TCP side (`ws://host:port/ws`, the
/// same host and port number as its WebTransport URL; `wss://` with `tls`).
pub async fn connect_websocket(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<WsSession, ClientError> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;

    let failed = |reason: String| ClientError::Connect {
        url: url.to_owned(),
        reason,
    };
    let (host, port) = host_port(url).ok_or_else(|| failed("not an https:// URL".into()))?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let mut request = format!("{scheme}://{authority}{}", crate::wire::mux::PATH)
        .into_client_request()
        .map_err(|e| failed(e.to_string()))?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        crate::wire::mux::SUBPROTOCOL
            .parse()
            .expect("a valid header value"),
    );
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| failed(e.to_string()))?;
        let remote = tcp.peer_addr().map_err(|e| failed(e.to_string()))?;
        use std::os::fd::AsFd;
        let _ = crate::transport::websocket::tune_socket(tcp.as_fd());
        let fd = tcp.as_fd().try_clone_to_owned().ok();
        let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        config.max_message_size = Some(crate::wire::mux::MAX_MESSAGE);
        config.max_frame_size = Some(crate::wire::mux::MAX_MESSAGE);
        let stream = match tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| failed(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| failed(format!("TLS: {e}")))?;
                Box::new(tls) as Box<dyn WsIo>
            }
            None => Box::new(tcp),
        };
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| failed(e.to_string()))?;
        Ok::<_, ClientError>((socket, remote, fd))
    };
    let (socket, remote, fd) = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| failed("timed out".into()))??;
    let (sink, stream) = socket.split();
    let reader = stream.map(|message| {
        let message = match message {
            Err(tokio_tungstenite::tungstenite::Error::Capacity(_)) => {
                return Ok(WsMessage::TooLarge);
            }
            Err(e) => return Err(e.to_string()),
            Ok(message) => message,
        };
        Ok(match message {
            Message::Binary(bytes) => WsMessage::Binary(bytes),
            Message::Text(_) => WsMessage::Text,
            Message::Close(frame) => {
                WsMessage::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
            }
            _ => WsMessage::Ping,
        })
    });
    let writer = sink.sink_map_err(|e| e.to_string()).with(|m: WsMessage| {
        futures_util::future::ready(Ok::<_, String>(match m {
            WsMessage::Binary(bytes) => Message::Binary(bytes),
            WsMessage::Ping => Message::Ping(Bytes::new()),
            WsMessage::Close(frame) => Message::Close(frame.map(|(code, reason)| CloseFrame {
                code: code.into(),
                reason: reason.into(),
            })),
            // Never sent: the session only sends binary, ping and close.
            WsMessage::Text | WsMessage::TooLarge => Message::Text("".into()),
        }))
    });
    Ok(WsSession::start(
        Box::pin(reader),
        Box::pin(writer),
        remote,
        fd,
        WsTimings::default(),
    ))
}

pub(crate) fn parse_hash(hex_hash: &str) -> Result<wtransport::tls::Sha256Digest, ClientError> {
    let bytes = hex::decode(hex_hash.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok());
    bytes
        .map(wtransport::tls::Sha256Digest::new)
        .ok_or_else(|| ClientError::Protocol(format!("bad certificate hash {hex_hash:?}")))
}

/// How long a keyframe may take to be handed to the transport before it is abandoned.
pub const KEYFRAME_STALL: Duration = Duration::from_secs(2);

/// What [`Client::send_video_within`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoSend {
    Sent,
    /// Skipped to keep the backlog bounded: make the next frame a keyframe.
    Skipped,
}

/// One video producer's sending state.
/// One video producer's (or simulcast layer's) sender, shared by its sending calls.
type SharedVideoSender = Arc<tokio::sync::Mutex<VideoSender>>;

struct VideoSender {
    group: GroupWriter,
    /// Frames are skipped until the next keyframe.
    skipping: bool,
    skipped: u64,
    abandoned: u64,
}

impl VideoSender {
    fn new(producer_id: ProducerId, layer: Option<u8>) -> Self {
        Self {
            group: GroupWriter::new(producer_id, layer),
            skipping: false,
            skipped: 0,
            abandoned: 0,
        }
    }

    /// Skips a frame and every frame up to the next keyframe. The group's stream stays
    /// open: what was handed to QUIC before (the keyframe that opened it, say) is still
    /// worth delivering; only a write that timed out resets it.
    fn skip(&mut self) {
        self.skipping = true;
        self.skipped += 1;
    }
}

/// Keeps the connection's send window near its congestion window (see `core::path`), so
/// that video waits where `send_video_within` can skip it rather than in QUIC's buffer.
async fn follow_congestion_window(
    connection: Session,
    estimate: Arc<Mutex<Option<crate::core::PathEstimate>>>,
) {
    let mut path = crate::core::PathEstimator::default();
    let mut tick = tokio::time::interval(crate::core::PATH_SAMPLE_INTERVAL);
    while !connection.is_closed() {
        tick.tick().await;
        let Some(sample) = connection.path_sample() else {
            continue;
        };
        connection.set_send_window(path.on_sample(sample, std::time::Instant::now()));
        *estimate.lock().unwrap_or_else(|e| e.into_inner()) = path.estimate();
    }
}

async fn write_control(mut send: SendStream, mut messages: mpsc::UnboundedReceiver<Bytes>) {
    // Requests and answers go ahead of queued video.
    send.set_priority(crate::server::CONTROL_PRIORITY);
    while let Some(bytes) = messages.recv().await {
        if send.write_chunk(bytes).await.is_err() {
            return;
        }
    }
    send.finish();
}

async fn read_control(
    mut recv: RecvStream,
    pending: Pending,
    events: mpsc::UnboundedSender<ServerMessage>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        match decode_message::<ServerMessage>(&mut buf, MAX_CONTROL_MESSAGE * 16) {
            Ok(Some(message)) => {
                let id = match &message {
                    ServerMessage::Response { id, .. } => Some(*id),
                    ServerMessage::Error { id: Some(id), .. } => Some(*id),
                    _ => None,
                };
                let waiter = id.and_then(|id| {
                    pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()?
                        .remove(&id)
                });
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(message);
                    }
                    None => {
                        let _ = events.send(message);
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e.error, "unreadable message from the relay");
                if e.fatal {
                    break;
                }
                continue;
            }
        }
        if !matches!(read_more(&mut recv, &mut buf).await, Ok(true)) {
            break;
        }
    }
    // The relay is gone: fail whatever still waits for an answer.
    *pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Audio frames, and lossy data when `lossy` is given (dropped otherwise).
pub(crate) async fn receive_datagrams(
    connection: Session,
    frames: mpsc::Sender<ReceivedFrame>,
    lossy: Option<mpsc::Sender<(PeerId, Bytes)>>,
) {
    while let Ok(datagram) = connection.receive_datagram().await {
        if frame::is_lossy_data(&datagram) {
            if let (Some(lossy), Ok((from, payload))) =
                (&lossy, frame::decode_delivered_data(datagram))
            {
                // Stale as soon as newer data exists: a full buffer drops it.
                let _ = lossy.try_send((PeerId(from), payload));
            }
            continue;
        }
        let Ok(d) = frame::decode_datagram(datagram, usize::MAX) else {
            continue;
        };
        // Audio never waits: a full buffer loses the frame, as a late packet would.
        let _ = frames.try_send(ReceivedFrame {
            producer_id: d.producer_id,
            kind: MediaKind::Audio,
            header: d.header,
            payload: d.payload,
        });
    }
}

/// Video streams, through the one stream acceptor ([`accept_groups`]). A producer's frames
/// can span several streams (one per group); streams of one producer are read in the order
/// they were opened (see [`crate::core::GroupOrder`]), and frames older than one already
/// delivered are dropped, so frames stay in order.
pub(crate) async fn receive_streams(connection: Session, frames: mpsc::Sender<ReceivedFrame>) {
    let limits = GroupLimits {
        header_timeout: Duration::from_secs(5),
        // Bounded, in case the relay left the previous stream hanging.
        order_wait: Duration::from_secs(1),
        max_frame: 64 * 1024 * 1024,
    };
    let reader = ClientGroups {
        frames,
        delivered: Arc::default(),
    };
    accept_groups(connection, limits, reader).await;
}

/// The relay's group streams, handed to the application frame by frame.
#[derive(Clone)]
struct ClientGroups {
    frames: mpsc::Sender<ReceivedFrame>,
    /// The last `seq` delivered per producer.
    delivered: Arc<Mutex<HashMap<ProducerId, u64>>>,
}

/// Stops a stream the way dropping it would (code 0): nothing to report to anyone.
const NOT_READ: Refusal<()> = Refusal {
    code: 0,
    error: None,
};

impl GroupReader for ClientGroups {
    type Error = ();

    fn admit(&self, _header: StreamHeader) -> Result<(), Refusal<()>> {
        Ok(())
    }

    async fn frame(&self, (producer_id, _): GroupKey, f: StreamFrame) -> Result<(), Refusal<()>> {
        {
            let mut delivered = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
            if delivered
                .get(&producer_id)
                .is_some_and(|last| f.header.seq <= *last)
            {
                return Ok(()); // a late tail of an earlier group
            }
            delivered.insert(producer_id, f.header.seq);
        }
        let frame = ReceivedFrame {
            producer_id,
            kind: MediaKind::Video,
            header: f.header,
            payload: f.payload,
        };
        // The application stopped listening: read no further.
        self.frames.send(frame).await.map_err(|_| NOT_READ)
    }

    fn malformed(&self, _key: Option<GroupKey>, _error: FrameError) -> Refusal<()> {
        NOT_READ
    }

    fn refused(&self, _error: ()) {}
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn parses_relay_urls() {
        assert_eq!(
            host_port("https://127.0.0.1:4443/"),
            Some(("127.0.0.1".into(), 4443))
        );
        assert_eq!(
            host_port("https://[::1]:4443/room"),
            Some(("::1".into(), 4443))
        );
        assert_eq!(
            host_port("https://relay.example"),
            Some(("relay.example".into(), 443))
        );
        assert_eq!(host_port("http://x:1/"), None);
    }
}
