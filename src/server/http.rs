//! The plain-HTTP side, on TCP at the WebTransport port's number: what a browser needs
//! before it can open a session (the certificate hash to pin), health, and metrics.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::serve::IncomingStream;
use include_dir::{Dir, include_dir};
use tokio::net::TcpListener;

use super::session::{self, AddressCounts};
use super::{CertificateHash, Rooms, SessionLimits, admin};
use crate::auth::AccessPolicy;
use crate::core::RelayTotals;
use crate::transport::websocket::{self, WsMessage, WsSession, WsTimings};
use crate::wire::mux;

/// The web client, built into the binary so that `serve` needs no files beside it.
static WEB_CLIENT: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/web-client");

#[derive(Clone)]
pub struct HttpState {
    pub rooms: Rooms,
    pub certificate_sha256: CertificateHash,
    pub development_identity: bool,
    /// Serve the web client from this directory instead of the embedded copy
    /// (`--web-root`, for development: edit, reload).
    pub web_root: Option<PathBuf>,
    /// Who may use the admin API.
    pub access: Arc<AccessPolicy>,
    /// Sessions over WebSocket (`GET /ws`); none: the fallback is off.
    pub sessions: Option<WsSessions>,
}

/// What a session that arrives over a WebSocket needs: the same as one over WebTransport.
#[derive(Clone)]
pub struct WsSessions {
    pub(crate) limits: SessionLimits,
    pub(crate) access: Arc<AccessPolicy>,
    pub(crate) addresses: AddressCounts,
    /// Set while the relay drains before shutting down: new sessions are refused.
    pub(crate) draining: Arc<std::sync::atomic::AtomicBool>,
    /// True once the relay closes: open sessions are closed.
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Who is on the other end of an HTTP connection: its address, and its socket (a
/// WebSocket session reads the socket's `TCP_INFO` for its path estimate).
#[derive(Clone, Copy, Debug)]
pub struct TcpConnectInfo {
    pub addr: SocketAddr,
    fd: std::os::fd::RawFd,
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, super::tls::TlsListener>>
    for TcpConnectInfo
{
    fn connect_info(stream: IncomingStream<'_, super::tls::TlsListener>) -> Self {
        use std::os::fd::AsRawFd;
        Self {
            addr: *stream.remote_addr(),
            fd: stream.io().get_ref().0.as_raw_fd(),
        }
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, TcpListener>> for TcpConnectInfo {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        use std::os::fd::AsRawFd;
        Self {
            addr: *stream.remote_addr(),
            fd: stream.io().as_raw_fd(),
        }
    }
}

pub fn router(state: HttpState) -> Router {
    let admin = Router::new()
        .route("/admin/rooms", get(admin::list_rooms))
        .route("/admin/rooms/{room}", delete(admin::close_room))
        .route("/admin/peers/{peer_id}", delete(admin::remove_peer))
        .route(
            "/admin/producers/{producer_id}/pause",
            post(admin::pause_producer),
        )
        .route(
            "/admin/producers/{producer_id}/resume",
            post(admin::resume_producer),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::authorize,
        ));
    Router::new()
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/certificate.sha256", get(certificate_sha256))
        .route("/metrics", get(metrics))
        .route(mux::PATH, get(websocket_session))
        .fallback(get(web_client))
        .with_state(state)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        _ => "text/plain; charset=utf-8",
    }
}

/// `GET /` and every other path not above: a file of the web client. Only plain relative
/// paths are served; `..` and absolute components never leave the web root.
async fn web_client(State(state): State<HttpState>, uri: Uri) -> Response {
    let requested = uri.path().trim_start_matches('/');
    let path = if requested.is_empty() || requested.ends_with('/') {
        format!("{requested}index.html")
    } else {
        requested.to_owned()
    };
    let safe = Path::new(&path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !safe {
        return StatusCode::NOT_FOUND.into_response();
    }
    let body = match &state.web_root {
        Some(root) => tokio::fs::read(root.join(&path)).await.ok(),
        None => WEB_CLIENT.get_file(&path).map(|f| f.contents().to_vec()),
    };
    match body {
        Some(body) => (
            [
                (header::CONTENT_TYPE, content_type(&path)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Serves the HTTP side on `listener`, over TLS when given an acceptor (a relay with a
/// real certificate: `tls.rs`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: HttpState,
) {
    let app = router(state).into_make_service_with_connect_info::<TcpConnectInfo>();
    let served = match tls {
        Some(acceptor) => match super::tls::TlsListener::new(listener, acceptor) {
            Ok(listener) => axum::serve(listener, app)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        },
        None => axum::serve(listener, app)
            .await
            .map_err(anyhow::Error::from),
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// `GET /ws`: a session over a WebSocket (docs/PROTOCOL.md section 17).
async fn websocket_session(
    State(state): State<HttpState>,
    ConnectInfo(connection): ConnectInfo<TcpConnectInfo>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(sessions) = state.sessions else {
        return (
            StatusCode::NOT_FOUND,
            "this relay takes no WebSocket sessions",
        )
            .into_response();
    };
    if *sessions.shutdown.borrow() || sessions.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the relay is shutting down",
        )
            .into_response();
    }
    let upgrade = upgrade
        .protocols([mux::SUBPROTOCOL])
        .max_message_size(mux::MAX_MESSAGE)
        .max_frame_size(mux::MAX_MESSAGE);
    if upgrade.selected_protocol().is_none() {
        let message = format!("offer the WebSocket subprotocol {}", mux::SUBPROTOCOL);
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let remote = connection.addr;
    if session::address_full(
        &sessions.addresses,
        remote.ip(),
        sessions.limits.max_sessions_per_address,
    ) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many sessions from this address",
        )
            .into_response();
    }
    // The connection is open while its request is handled, so its descriptor is too.
    // SAFETY: `fd` is this request's own socket, alive for the duration of the call.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(connection.fd) };
    if let Err(e) = websocket::tune_socket(socket) {
        tracing::debug!(error = %e, "could not tune a WebSocket's socket");
    }
    let tcp = socket.try_clone_to_owned().ok();
    let rooms = state.rooms;
    upgrade.on_upgrade(move |socket| run_websocket(socket, remote, tcp, rooms, sessions))
}

async fn run_websocket(
    socket: WebSocket,
    remote: SocketAddr,
    tcp: Option<std::os::fd::OwnedFd>,
    rooms: Rooms,
    sessions: WsSessions,
) {
    use futures_util::{SinkExt, StreamExt};
    let (sink, stream) = socket.split();
    let reader = stream.map(|message| {
        let message = match message {
            Err(e) => {
                let e = e.into_inner();
                return match e.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
                    Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) => {
                        Ok(WsMessage::TooLarge)
                    }
                    _ => Err(e.to_string()),
                };
            }
            Ok(message) => message,
        };
        Ok(match message {
            Message::Binary(bytes) => WsMessage::Binary(bytes),
            Message::Text(_) => WsMessage::Text,
            Message::Ping(_) | Message::Pong(_) => WsMessage::Ping,
            Message::Close(frame) => {
                WsMessage::Close(frame.map(|f| (f.code, f.reason.to_string())))
            }
        })
    });
    let writer = sink.sink_map_err(|e| e.to_string()).with(|m: WsMessage| {
        futures_util::future::ready(Ok::<_, String>(match m {
            WsMessage::Binary(bytes) => Message::Binary(bytes),
            WsMessage::Ping => Message::Ping(bytes::Bytes::new()),
            WsMessage::Close(frame) => Message::Close(frame.map(|(code, reason)| CloseFrame {
                code,
                reason: reason.into(),
            })),
            // Never sent: the session only sends binary, ping and close.
            WsMessage::Text | WsMessage::TooLarge => Message::Text("".into()),
        }))
    });
    let timings = WsTimings {
        idle_timeout: sessions.limits.idle_timeout,
        ping_interval: sessions.limits.idle_timeout / 3,
    };
    let session = WsSession::start(Box::pin(reader), Box::pin(writer), remote, tcp, timings);
    // A relay shutting down closes the session; the session code sees it end.
    let mut shutdown = sessions.shutdown.clone();
    let closer = session.clone();
    let watch = tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.wait_for(|down| *down) => closer.close(super::close_code::NORMAL, "relay shutting down"),
            _ = closer.closed() => {}
        }
    });
    session::serve_websocket(
        session,
        rooms,
        sessions.limits.clone(),
        sessions.access.clone(),
        sessions.addresses.clone(),
    )
    .await;
    watch.abort();
}

/// Any origin may read it: a page served by one relay of a cluster checks the relay it is
/// sent to.
async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    let counts = state.rooms.counts();
    let cors = [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")];
    let mut health = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": crate::wire::PROTOCOL_VERSION,
        "development_identity": state.development_identity,
        "rooms": counts.rooms,
        "peers": counts.peers,
        "producers": counts.producers,
        "consumers": counts.consumers,
    });
    // Only a relay in a cluster says anything of one.
    if let Some(placement) = state.rooms.placement() {
        health["cluster"] = serde_json::json!(placement.status());
        // Rooms mirrored from the relay that hosts them, with their links.
        if let Some(spans) = state.rooms.spans() {
            health["cluster"]["links"] = serde_json::json!(spans.status());
        }
    }
    (cors, axum::Json(health))
}

/// Lowercase hex, no newline: what `serverCertificateHashes` needs, decoded by the client.
/// Any origin may read it (a page served elsewhere may want to pin this relay).
async fn certificate_sha256(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        state.certificate_sha256.get(),
    )
}

/// Prometheus text format.
async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let RelayTotals {
        counts,
        stats,
        queue_high_water: (audio_high, video_high),
    } = state.rooms.totals();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP synapse_{name} {help}");
        let _ = writeln!(out, "# TYPE synapse_{name} {kind}");
        let _ = writeln!(out, "synapse_{name} {value}");
    };
    metric(
        "rooms",
        "gauge",
        "Rooms with at least one peer.",
        counts.rooms as u64,
    );
    metric("peers", "gauge", "Joined peers.", counts.peers as u64);
    if let Some(cluster) = state.rooms.placement().map(|p| p.status()) {
        metric(
            "cluster_leases",
            "gauge",
            "Room leases this relay holds in the cluster's Redis.",
            cluster.leases as u64,
        );
        metric(
            "cluster_redis_up",
            "gauge",
            "Whether the last call to the cluster's Redis succeeded.",
            u64::from(cluster.redis == "connected"),
        );
    }
    if let Some(links) = state.rooms.spans().map(|s| s.status()) {
        metric(
            "cluster_links",
            "gauge",
            "Rooms this relay mirrors from the relay that hosts them (one link each).",
            links.len() as u64,
        );
        metric(
            "cluster_pulled_producers",
            "gauge",
            "Remote producers pulled over links (each once per relay).",
            links.iter().map(|l| l.pulled_producers as u64).sum(),
        );
        metric(
            "cluster_proxied_peers",
            "gauge",
            "Peers of other relays mirrored here.",
            links.iter().map(|l| l.proxied_peers as u64).sum(),
        );
    }
    metric(
        "producers",
        "gauge",
        "Open producers.",
        counts.producers as u64,
    );
    metric(
        "consumers",
        "gauge",
        "Open consumers.",
        counts.consumers as u64,
    );
    metric(
        "frames_in_total",
        "counter",
        "Media frames received from producers.",
        stats.frames_in,
    );
    metric(
        "bytes_in_total",
        "counter",
        "Media bytes received from producers.",
        stats.bytes_in,
    );
    metric(
        "frames_out_total",
        "counter",
        "Media frames handed to consumer transports.",
        stats.frames_out,
    );
    metric(
        "bytes_out_total",
        "counter",
        "Media bytes handed to consumer transports.",
        stats.bytes_out,
    );
    metric(
        "frames_dropped_slow_consumer_total",
        "counter",
        "Frames dropped because a consumer fell behind.",
        stats.dropped_slow_consumer,
    );
    metric(
        "frames_dropped_producer_paused_total",
        "counter",
        "Frames dropped because their producer was paused.",
        stats.dropped_producer_paused,
    );
    metric(
        "frames_dropped_stale_total",
        "counter",
        "Video frames dropped for arriving after a later frame of their producer.",
        stats.dropped_stale,
    );
    metric(
        "frames_dropped_too_large_total",
        "counter",
        "Audio datagrams too large for a consumer's path.",
        stats.dropped_too_large,
    );
    metric(
        "frames_dropped_bitrate_total",
        "counter",
        "Frames dropped for exceeding their producer's bitrate limit.",
        stats.dropped_bitrate,
    );
    metric(
        "frame_errors_total",
        "counter",
        "Media frames refused as invalid.",
        stats.frame_errors,
    );
    metric(
        "keyframe_requests_total",
        "counter",
        "Keyframe requests sent to producers.",
        stats.keyframe_requests,
    );
    metric(
        "layer_switches_total",
        "counter",
        "Simulcast consumers moved to another layer (at a keyframe of the new one).",
        stats.layer_switches,
    );
    metric(
        "dynacast_updates_total",
        "counter",
        "layers_wanted messages telling simulcast publishers which layers are needed.",
        stats.dynacast_updates,
    );
    metric(
        "congestion_samples_total",
        "counter",
        "Path samples that showed congestion (queue standing over 150 ms, frames skipped for latency, loss over 10%).",
        stats.congestion_samples,
    );
    if let Some(hooks) = state.rooms.webhooks() {
        let stats = hooks.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        metric(
            "webhooks_delivered_total",
            "counter",
            "Webhook events delivered (answered 2xx).",
            load(&stats.delivered),
        );
        metric(
            "webhook_failed_attempts_total",
            "counter",
            "Webhook POSTs that failed (each retry counts).",
            load(&stats.failed_attempts),
        );
        metric(
            "webhooks_dropped_total",
            "counter",
            "Webhook events lost: queue full, or given up after every retry.",
            load(&stats.dropped),
        );
        metric(
            "webhooks_pending",
            "gauge",
            "Webhook events waiting to be delivered.",
            hooks.pending() as u64,
        );
    }
    metric(
        "speaker_changes_total",
        "counter",
        "active_speakers changes announced to rooms.",
        stats.speaker_changes,
    );
    metric(
        "data_messages_total",
        "counter",
        "send_data messages relayed (once each, however many recipients).",
        stats.data_messages,
    );
    metric(
        "lossy_data_messages_total",
        "counter",
        "Lossy data datagrams relayed (once each, however many recipients).",
        stats.lossy_data_messages,
    );
    metric(
        "lossy_data_dropped_total",
        "counter",
        "Lossy data dropped for a recipient that had 32 waiting.",
        stats.dropped_lossy_data,
    );
    let mut histogram = |name: &str, help: &str, h: &crate::core::LatencyHistogram, scale: f64| {
        let _ = writeln!(out, "# HELP synapse_{name} {help}");
        let _ = writeln!(out, "# TYPE synapse_{name} histogram");
        let mut cumulative = 0;
        for (bound, count) in h.bounds_us.iter().zip(&h.counts) {
            cumulative += count;
            let le = *bound as f64 / scale;
            let _ = writeln!(out, "synapse_{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "synapse_{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "synapse_{name}_sum {}", h.sum_us as f64 / scale);
        let _ = writeln!(out, "synapse_{name}_count {}", h.count);
    };
    histogram(
        "forwarding_latency_seconds",
        "Time a frame spends in the relay, from receipt to hand-over to the consumer's transport.",
        &stats.forwarding_latency,
        1e6,
    );
    histogram(
        "path_rtt_seconds",
        "Round-trip time of peers' connections, one observation per peer per path sample (100 ms).",
        &stats.path_rtt,
        1e6,
    );
    histogram(
        "path_loss_ratio",
        "Smoothed packet loss of peers' connections, one observation per peer per path sample.",
        &stats.path_loss_ppm,
        1e6,
    );
    histogram(
        "path_queue_delay_seconds",
        "Age of the oldest frame queued in the relay for a peer, one observation per peer per path sample.",
        &stats.path_queue_delay,
        1e6,
    );
    let _ = writeln!(
        out,
        "# HELP synapse_frames_skipped_late_total Frames skipped because they fell behind their consumer's latency bound."
    );
    let _ = writeln!(out, "# TYPE synapse_frames_skipped_late_total counter");
    let _ = writeln!(
        out,
        "synapse_frames_skipped_late_total{{kind=\"audio\"}} {}",
        stats.skipped_late_audio
    );
    let _ = writeln!(
        out,
        "synapse_frames_skipped_late_total{{kind=\"video\"}} {}",
        stats.skipped_late_video
    );
    let _ = writeln!(
        out,
        "# HELP synapse_consumer_queue_high_water Deepest any open consumer's queue has been, in frames."
    );
    let _ = writeln!(out, "# TYPE synapse_consumer_queue_high_water gauge");
    let _ = writeln!(
        out,
        "synapse_consumer_queue_high_water{{kind=\"audio\"}} {audio_high}"
    );
    let _ = writeln!(
        out,
        "synapse_consumer_queue_high_water{{kind=\"video\"}} {video_high}"
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
