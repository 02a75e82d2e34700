//! The control protocol: JSON messages on one bidirectional stream, each prefixed with its
//! length as a 4-byte big-endian integer. Requests carry an `id` that the response or the
//! error echoes; events carry none. See `docs/PROTOCOL.md` for every message.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The protocol version this build speaks; `join` must name it.
pub const PROTOCOL_VERSION: u32 = 1;
/// Default cap on one control message (both directions).
pub const MAX_CONTROL_MESSAGE: usize = 64 * 1024;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Ids of peers, producers and consumers: one counter for all three (docs/PROTOCOL.md), but
/// distinct types, so that a consumer id cannot be passed where a producer id is meant. On
/// the wire each is a plain integer.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A peer: one joined session.
    PeerId
);
id_type!(
    /// A producer: one track a peer sends. Media frames carry it.
    ProducerId
);
id_type!(
    /// A consumer: one peer's subscription to a producer.
    ConsumerId
);
/// Codec parameters as the producer gives them (width, height, sample rate, a WebCodecs
/// `description`...): the relay stores and repeats them, it never interprets them.
pub type Params = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// A request from a client: `{"id": 1, "type": "join", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientMessage {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Join {
        version: u32,
        room: String,
        name: String,
        #[serde(default)]
        auto_subscribe: bool,
        /// Access token (JWT); required when the relay has API keys.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Optional formats this client can receive (docs/PROTOCOL.md 15.1), e.g.
        /// [`EXT_AUDIO_LEVEL`]. Unknown names are ignored.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        extensions: Vec<String>,
        /// Take back the place of a peer whose session dropped (docs/PROTOCOL.md 16).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
        /// Another relay of the cluster joining for a room that spans relays
        /// (docs/PROTOCOL.md 18); needs the `relay` grant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<RelayJoin>,
    },
    Produce {
        kind: MediaKind,
        codec: String,
        #[serde(default)]
        params: Params,
        /// What the track shows or carries; absent: camera for video, microphone for audio.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<TrackSource>,
        /// Simulcast: the encodings a video producer sends, lowest first (at most
        /// [`MAX_LAYERS`]). Empty: one encoding, as before simulcast.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        layers: Vec<LayerInfo>,
        /// The id the producer has on the relay it was published to (a relay mirroring a
        /// peer, docs/PROTOCOL.md 18); needs the `relay` grant. Absent: a new id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        producer_id: Option<ProducerId>,
    },
    CloseProducer {
        producer_id: ProducerId,
    },
    PauseProducer {
        producer_id: ProducerId,
    },
    ResumeProducer {
        producer_id: ProducerId,
    },
    Consume {
        producer_id: ProducerId,
        #[serde(default)]
        paused: bool,
        /// Only for another relay (the `relay` grant): one layer of a simulcast producer,
        /// taken as it comes (docs/PROTOCOL.md 18).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer: Option<u8>,
    },
    CloseConsumer {
        consumer_id: ConsumerId,
    },
    PauseConsumer {
        consumer_id: ConsumerId,
    },
    ResumeConsumer {
        consumer_id: ConsumerId,
    },
    SetAutoSubscribe {
        enabled: bool,
    },
    RequestKeyframe {
        consumer_id: ConsumerId,
    },
    /// The most a consumer of a simulcast producer wants: a layer index and/or a size
    /// (the tile it renders into). Absent fields: no limit.
    SetPreferredLayers {
        consumer_id: ConsumerId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_layer: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_width: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_height: Option<u32>,
    },
    /// Application data for other peers of the room, reliable and ordered.
    SendData {
        payload: String,
        /// Recipients; empty: every other peer of the room.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        to: Vec<PeerId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
    Leave,
}

/// Extension: audio datagrams may carry a level byte (flag 0x02); asked for in `join`,
/// the relay forwards it instead of removing it.
pub const EXT_AUDIO_LEVEL: &str = "audio_level";
/// Extension: `send_data` and the `data` event.
pub const EXT_DATA: &str = "data";
/// Extension: lossy data datagrams (producer id 0); asked for in `join`, the relay
/// delivers them to this peer.
pub const EXT_LOSSY_DATA: &str = "lossy_data";
/// Extension: `produce` takes a `source`.
pub const EXT_SCREEN: &str = "screen";
/// Extension: asked for in `join`, the relay keeps the peer's place for a grace period
/// when its session drops, and a new session may `resume` it.
pub const EXT_RESUME: &str = "resume";
/// Every extension this relay supports, as the `join` result lists them.
pub const EXTENSIONS: [&str; 5] = [
    EXT_AUDIO_LEVEL,
    EXT_DATA,
    EXT_LOSSY_DATA,
    EXT_SCREEN,
    EXT_RESUME,
];

/// Who joins when a relay joins (docs/PROTOCOL.md 18).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayJoin {
    /// The id of the relay the session comes from.
    pub relay: String,
    /// Mirror this peer of that relay, under the same id. Absent: join as that relay's
    /// link, a hidden peer that subscribes for the relay's own peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<PeerId>,
}

/// What a reconnecting client sends in `join` to take its place back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub peer_id: PeerId,
    /// The `resume_token` of the join (or resume) result that admitted that peer.
    pub token: String,
}

/// Largest `send_data` payload, bytes of UTF-8.
pub const MAX_DATA_PAYLOAD: usize = 16_384;

/// What a track shows or carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Camera,
    Microphone,
    Screen,
    ScreenAudio,
}

impl TrackSource {
    pub const ALL: [TrackSource; 4] = [
        TrackSource::Camera,
        TrackSource::Microphone,
        TrackSource::Screen,
        TrackSource::ScreenAudio,
    ];

    /// The kind of media this source is.
    pub fn kind(self) -> MediaKind {
        match self {
            TrackSource::Camera | TrackSource::Screen => MediaKind::Video,
            TrackSource::Microphone | TrackSource::ScreenAudio => MediaKind::Audio,
        }
    }

    /// The source a producer of `kind` has when it names none.
    pub fn default_for(kind: MediaKind) -> Self {
        match kind {
            MediaKind::Video => TrackSource::Camera,
            MediaKind::Audio => TrackSource::Microphone,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrackSource::Camera => "camera",
            TrackSource::Microphone => "microphone",
            TrackSource::Screen => "screen",
            TrackSource::ScreenAudio => "screen_audio",
        }
    }

    /// A screen (or its sound): served before cameras when bandwidth is short.
    pub fn is_screen(self) -> bool {
        matches!(self, TrackSource::Screen | TrackSource::ScreenAudio)
    }
}

/// Most layers one simulcast producer may declare.
pub const MAX_LAYERS: usize = 3;

/// One encoding of a simulcast video producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub width: u32,
    pub height: u32,
    /// The encoder's target, bit/s: the relay's estimate of the layer's cost until it has
    /// measured it.
    pub max_bitrate: u64,
}

impl Request {
    /// `pause_producer` or `resume_producer`, from the state wanted.
    pub fn pause_producer(producer_id: ProducerId, paused: bool) -> Request {
        if paused {
            Request::PauseProducer { producer_id }
        } else {
            Request::ResumeProducer { producer_id }
        }
    }

    /// `pause_consumer` or `resume_consumer`, from the state wanted.
    pub fn pause_consumer(consumer_id: ConsumerId, paused: bool) -> Request {
        if paused {
            Request::PauseConsumer { consumer_id }
        } else {
            Request::ResumeConsumer { consumer_id }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Request::Join { .. } => "join",
            Request::Produce { .. } => "produce",
            Request::CloseProducer { .. } => "close_producer",
            Request::PauseProducer { .. } => "pause_producer",
            Request::ResumeProducer { .. } => "resume_producer",
            Request::Consume { .. } => "consume",
            Request::CloseConsumer { .. } => "close_consumer",
            Request::PauseConsumer { .. } => "pause_consumer",
            Request::ResumeConsumer { .. } => "resume_consumer",
            Request::SetAutoSubscribe { .. } => "set_auto_subscribe",
            Request::RequestKeyframe { .. } => "request_keyframe",
            Request::SetPreferredLayers { .. } => "set_preferred_layers",
            Request::SendData { .. } => "send_data",
            Request::Leave => "leave",
        }
    }
}

/// Typed error codes; the `message` beside them is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnsupportedVersion,
    MessageTooLarge,
    NotJoined,
    AlreadyJoined,
    InvalidRoom,
    InvalidName,
    RoomFull,
    TooManyRooms,
    TooManyProducers,
    RateLimited,
    BitrateExceeded,
    Unauthorized,
    Forbidden,
    UnknownRoom,
    UnknownPeer,
    UnknownProducer,
    UnknownLayer,
    UnknownConsumer,
    NotOwner,
    CannotConsumeOwn,
    AlreadyConsuming,
    KindMismatch,
    MalformedFrame,
    FrameTooLarge,
    DataTooLarge,
    ResumeFailed,
    /// Another relay of the cluster hosts the room: join there (`relay_url`).
    WrongRelay,
    SlowControl,
    Kicked,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TooManyProducers => "too_many_producers",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BitrateExceeded => "bitrate_exceeded",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownRoom => "unknown_room",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::UnknownProducer => "unknown_producer",
            ErrorCode::UnknownLayer => "unknown_layer",
            ErrorCode::UnknownConsumer => "unknown_consumer",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::CannotConsumeOwn => "cannot_consume_own",
            ErrorCode::AlreadyConsuming => "already_consuming",
            ErrorCode::KindMismatch => "kind_mismatch",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::DataTooLarge => "data_too_large",
            ErrorCode::ResumeFailed => "resume_failed",
            ErrorCode::WrongRelay => "wrong_relay",
            ErrorCode::SlowControl => "slow_control",
            ErrorCode::Kicked => "kicked",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error with its code and a readable explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What a peer may do, from its access token (everything, in development mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default = "yes")]
    pub can_publish: bool,
    #[serde(default = "yes")]
    pub can_subscribe: bool,
    /// Kinds the peer may publish.
    #[serde(default = "all_kinds")]
    pub kinds: Vec<MediaKind>,
    /// May send data messages (`send_data`, lossy data).
    #[serde(default = "yes")]
    pub can_publish_data: bool,
    /// Sources the peer may publish.
    #[serde(default = "all_sources")]
    pub sources: Vec<TrackSource>,
    /// May join as another relay of the cluster (docs/PROTOCOL.md 18): only relays'
    /// own tokens carry it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
}

fn all_sources() -> Vec<TrackSource> {
    TrackSource::ALL.to_vec()
}

fn yes() -> bool {
    true
}

fn all_kinds() -> Vec<MediaKind> {
    vec![MediaKind::Audio, MediaKind::Video]
}

impl Default for Grants {
    fn default() -> Self {
        Self {
            can_publish: true,
            can_subscribe: true,
            kinds: all_kinds(),
            can_publish_data: true,
            sources: all_sources(),
            relay: false,
        }
    }
}

impl Grants {
    pub fn may_publish(&self, kind: MediaKind) -> bool {
        self.can_publish && self.kinds.contains(&kind)
    }

    pub fn may_publish_source(&self, source: TrackSource) -> bool {
        self.may_publish(source.kind()) && self.sources.contains(&source)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProducerInfo {
    pub producer_id: ProducerId,
    pub peer_id: PeerId,
    pub kind: MediaKind,
    pub codec: String,
    pub params: Params,
    pub paused: bool,
    /// Simulcast layers, lowest first; empty for a single-encoding producer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerInfo>,
    /// What the track shows or carries (absent from relays older than screen sharing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TrackSource>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub name: String,
    pub producers: Vec<ProducerInfo>,
    /// In a room that spans relays: the id of the relay the peer is connected to, when
    /// that is not the relay telling (docs/PROTOCOL.md 18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerInfo {
    pub consumer_id: ConsumerId,
    pub producer: ProducerInfo,
    pub paused: bool,
    /// For a simulcast producer: the layer the relay means to forward first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<u8>,
}

/// The result of `join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinResult {
    pub version: u32,
    pub peer_id: PeerId,
    pub room: String,
    /// The display name the others see (an access token's name replaces the requested one).
    #[serde(default)]
    pub name: String,
    /// True when the room already had peers: this peer joins a call that is going on.
    pub ongoing: bool,
    /// The other peers already in the room, with their producers.
    pub peers: Vec<PeerInfo>,
    pub max_datagram_size: usize,
    pub max_frame_size: usize,
    /// What this peer may do.
    #[serde(default)]
    pub grants: Grants,
    /// The optional formats this relay supports ([`EXTENSIONS`]); none from older relays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    /// For a peer that asked for [`EXT_RESUME`]: the secret a new session presents to take
    /// this peer's place back, and for how long after a drop the place is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_grace_ms: Option<u64>,
    /// True when this result answers a `resume`: the peer kept its id and producers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// After a resume: the peer's own producers (their ids unchanged) and its consumers
    /// (recreated, with new ids, for the producers that still exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub producers: Vec<ProducerInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<ConsumerInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProduceResult {
    pub producer_id: ProducerId,
    /// Simulcast layers accepted (absent: one encoding). A client that asked for layers and
    /// gets no such field talks to a relay without simulcast: it sends one encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
}

/// The result of a request, typed: the core returns one of these and only the wire turns
/// it into JSON. On the wire it is the bare result object (`{}` for requests that only
/// succeed or fail); a client reading it tries the shapes in this order, each told apart
/// by a field the later ones lack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Joined(JoinResult),
    Consumed(ConsumerInfo),
    Produced(ProduceResult),
    DataSent(DataSent),
    /// Done; nothing to return. (Also what an older client makes of a result shape it
    /// does not know.)
    Done(Done),
}

/// The result of `send_data`: how many peers it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSent {
    pub delivered: usize,
}

/// One entry of `active_speakers`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpeakerInfo {
    pub peer_id: PeerId,
    pub producer_id: ProducerId,
    /// Smoothed loudness, a linear amplitude from 0 to 1.
    pub level: f64,
}

/// The empty result object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

impl Reply {
    /// The result as JSON, for a caller that wants it as a particular type.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("replies always serialize")
    }
}

/// Why a peer left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    Left,
    Disconnected,
}

/// Everything the relay sends on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Response {
        id: u64,
        result: Reply,
    },
    Error {
        id: Option<u64>,
        code: ErrorCode,
        message: String,
        /// For an error about media the peer sent (a refused frame or stream, a bitrate
        /// over its limit): the producer it was sent as, when the relay could read it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        producer_id: Option<ProducerId>,
        /// With `wrong_relay`: the URL of the relay that hosts the room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_url: Option<String>,
    },
    PeerJoined {
        peer: PeerInfo,
    },
    PeerLeft {
        peer_id: PeerId,
        reason: LeaveReason,
    },
    ProducerAdded {
        producer: ProducerInfo,
    },
    ProducerClosed {
        producer_id: ProducerId,
        peer_id: PeerId,
    },
    ProducerPaused {
        producer_id: ProducerId,
    },
    ProducerResumed {
        producer_id: ProducerId,
    },
    ConsumerAdded {
        consumer: ConsumerInfo,
    },
    ConsumerClosed {
        consumer_id: ConsumerId,
        producer_id: ProducerId,
    },
    KeyframeRequest {
        producer_id: ProducerId,
        /// For a simulcast producer: the layer that needs a keyframe.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer: Option<u8>,
    },
    /// Dynacast: the layers of a simulcast producer that some consumer needs now; the
    /// owner may stop encoding the others.
    LayersWanted {
        producer_id: ProducerId,
        layers: Vec<u8>,
    },
    /// The layer a consumer of a simulcast producer now receives (from its next keyframe).
    LayerChanged {
        consumer_id: ConsumerId,
        producer_id: ProducerId,
        layer: u8,
        width: u32,
        height: u32,
    },
    /// A peer's session dropped; its place is kept for a grace period (it may resume).
    PeerInterrupted {
        peer_id: PeerId,
    },
    /// An interrupted peer is back, with its producers.
    PeerResumed {
        peer_id: PeerId,
    },
    /// Who speaks in the room, the main speaker first (empty: nobody).
    ActiveSpeakers {
        speakers: Vec<SpeakerInfo>,
    },
    /// Application data from another peer (`send_data`).
    Data {
        from: PeerId,
        payload: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        reliable: bool,
    },
    /// The relay is shutting down: finish up; the session closes within `deadline_ms`.
    GoingAway {
        reason: String,
        deadline_ms: u64,
    },
    /// The relay's view of its path to this peer, about once a second (see
    /// docs/PROTOCOL.md). Older clients ignore it, as they ignore every unknown event.
    TransportStats {
        rtt_ms: f64,
        loss: f64,
        send_kbps: f64,
        cwnd_bytes: u64,
        queue_ms: f64,
        skipped_frames: u64,
        /// The relay's estimate of what the path to this peer can carry (what layer
        /// selection budgets with), kbit/s; absent until there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        available_kbps: Option<f64>,
    },
}

impl ServerMessage {
    pub fn error(id: Option<u64>, err: &ProtocolError) -> Self {
        ServerMessage::Error {
            id,
            code: err.code,
            message: err.message.clone(),
            producer_id: None,
            relay_url: None,
        }
    }

    /// `wrong_relay`: the room is hosted by the relay at `relay_url`.
    pub fn redirect(id: u64, relay_url: &str) -> Self {
        ServerMessage::Error {
            id: Some(id),
            code: ErrorCode::WrongRelay,
            message: format!("another relay hosts this room: join at {relay_url}"),
            producer_id: None,
            relay_url: Some(relay_url.to_owned()),
        }
    }

    /// An error about media a peer sent as `producer_id` (if known).
    pub fn media_error(producer_id: Option<ProducerId>, err: &ProtocolError) -> Self {
        ServerMessage::Error {
            id: None,
            code: err.code,
            message: err.message.clone(),
            producer_id,
            relay_url: None,
        }
    }
}

/// Frames one message: the length prefix, then its JSON.
pub fn encode_message<T: Serialize>(message: &T) -> Bytes {
    let json = serde_json::to_vec(message).expect("control messages always serialize");
    let mut buf = BytesMut::with_capacity(LENGTH_PREFIX + json.len());
    buf.put_u32(json.len() as u32);
    buf.put_slice(&json);
    buf.freeze()
}

/// A message that could not be read. `id` is the request id when one could be recovered,
/// so the error can answer the request it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub id: Option<u64>,
    pub error: ProtocolError,
    /// The framing itself is broken (oversized length): the stream cannot be resynchronised.
    pub fatal: bool,
}

/// Takes one whole message off the front of `buf`. `Ok(None)`: not all of it has arrived.
pub fn decode_message<T: DeserializeOwned>(
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<T>, DecodeError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_size {
        return Err(DecodeError {
            id: None,
            error: ProtocolError::new(
                ErrorCode::MessageTooLarge,
                format!("control message of {len} bytes exceeds the limit of {max_size}"),
            ),
            fatal: true,
        });
    }
    if buf.len() < LENGTH_PREFIX + len {
        buf.reserve(LENGTH_PREFIX + len - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX);
    let body = buf.split_to(len);
    serde_json::from_slice(&body).map(Some).map_err(|err| {
        // Recover the id, if there is one, so the error can be matched to its request.
        #[derive(Deserialize)]
        struct IdOnly {
            id: Option<u64>,
        }
        let id = serde_json::from_slice::<IdOnly>(&body)
            .ok()
            .and_then(|m| m.id);
        DecodeError {
            id,
            error: ProtocolError::new(ErrorCode::BadRequest, format!("malformed message: {err}")),
            fatal: false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(json.len() as u32);
        buf.put_slice(json.as_bytes());
        buf
    }

    #[test]
    fn request_round_trip() {
        let msg = ClientMessage {
            id: 9,
            request: Request::Produce {
                source: None,
                kind: MediaKind::Video,
                codec: "vp8".into(),
                params: Params::new(),
                layers: Vec::new(),
                producer_id: None,
            },
        };
        let mut buf = BytesMut::from(&encode_message(&msg)[..]);
        let back: ClientMessage = decode_message(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(back, msg);
        assert!(buf.is_empty());
    }

    #[test]
    fn wire_shape_is_flat() {
        let mut buf = frame(r#"{"id":1,"type":"join","version":1,"room":"r","name":"n"}"#);
        let msg: ClientMessage = decode_message(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(
            msg.request,
            Request::Join {
                resume: None,
                extensions: Vec::new(),
                version: 1,
                room: "r".into(),
                name: "n".into(),
                auto_subscribe: false,
                token: None,
                relay: None,
            }
        );
        let out = encode_message(&ServerMessage::KeyframeRequest {
            producer_id: ProducerId(4),
            layer: None,
        });
        assert_eq!(&out[4..], br#"{"type":"keyframe_request","producer_id":4}"#);
    }

    #[test]
    fn typed_replies_are_bare_objects_and_read_back_as_the_same_shape() {
        let producer = ProducerInfo {
            source: None,
            producer_id: ProducerId(3),
            peer_id: PeerId(1),
            kind: MediaKind::Video,
            codec: "vp8".into(),
            params: Params::new(),
            paused: false,
            layers: Vec::new(),
        };
        let replies = [
            Reply::Joined(JoinResult {
                consumers: Vec::new(),
                producers: Vec::new(),
                resume_grace_ms: None,
                resume_token: None,
                resumed: false,
                extensions: Vec::new(),
                version: PROTOCOL_VERSION,
                peer_id: PeerId(1),
                room: "r".into(),
                name: "n".into(),
                ongoing: false,
                peers: Vec::new(),
                max_datagram_size: 1200,
                max_frame_size: 1 << 20,
                grants: Grants::default(),
            }),
            Reply::Consumed(ConsumerInfo {
                consumer_id: ConsumerId(7),
                producer,
                paused: false,
                layer: None,
            }),
            Reply::Produced(ProduceResult {
                producer_id: ProducerId(3),
                layers: Some(2),
            }),
            Reply::Done(Done {}),
        ];
        for result in replies {
            let message = ServerMessage::Response { id: 5, result };
            let encoded = encode_message(&message);
            let mut buf = BytesMut::from(&encoded[..]);
            let back: ServerMessage = decode_message(&mut buf, 4096).unwrap().unwrap();
            assert_eq!(back, message);
        }
        let out = encode_message(&ServerMessage::Response {
            id: 5,
            result: Reply::Done(Done {}),
        });
        assert_eq!(&out[4..], br#"{"type":"response","id":5,"result":{}}"#);
    }

    #[test]
    fn partial_message_waits() {
        let full = frame(r#"{"id":2,"type":"leave"}"#);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(decode_message::<ClientMessage>(&mut part, 1024), Ok(None));
        }
    }

    #[test]
    fn unknown_type_keeps_the_id() {
        let mut buf = frame(r#"{"id":5,"type":"teleport"}"#);
        let err = decode_message::<ClientMessage>(&mut buf, 1024).unwrap_err();
        assert_eq!(err.id, Some(5));
        assert_eq!(err.error.code, ErrorCode::BadRequest);
        assert!(!err.fatal);
        assert!(
            buf.is_empty(),
            "the bad message is consumed, the stream goes on"
        );
    }

    #[test]
    fn garbage_and_oversize() {
        let mut buf = frame("\u{1}not json");
        let err = decode_message::<ClientMessage>(&mut buf, 1024).unwrap_err();
        assert_eq!(err.id, None);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let err = decode_message::<ClientMessage>(&mut buf, 1024).unwrap_err();
        assert_eq!(err.error.code, ErrorCode::MessageTooLarge);
        assert!(err.fatal);
    }
}
