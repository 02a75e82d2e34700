//! IO at the edges: the WebTransport endpoint (UDP), the HTTP side (TCP, same port number),
//! the TLS identity, and the tasks that drive the core's rooms ([`crate::core::Room`]).

mod admin;
pub mod http;
pub mod identity;
mod placement;
mod rooms;
mod session;
mod span;
mod tls;
pub mod webhook;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use wtransport::config::IpBindConfig;
use wtransport::{Endpoint, VarInt};

use crate::auth::AccessPolicy;
use crate::core::RelayConfig;
pub use crate::wire::close_code;
pub use placement::{ClusterConfig, ClusterStatus, Placed, Placement};
pub use rooms::{RoomHandle, Rooms};
pub(crate) use session::CONTROL_PRIORITY;
pub use span::{LinkStatus, Spans};

/// Timeouts and sizes that protect the relay from one peer.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Time from session start to a successful `join`.
    pub join_timeout: Duration,
    /// Largest control message, in bytes.
    pub max_control_message: usize,
    /// Time for a media stream's header to arrive.
    pub stream_header_timeout: Duration,
    /// How long a producer's new media stream waits for its previous one to end before it
    /// is read anyway.
    pub stream_order_wait: Duration,
    /// A control-stream write that takes longer disconnects the peer: it is not reading.
    pub control_write_timeout: Duration,
    /// A consumer's stream write that takes longer is abandoned (stream reset, restart at
    /// the next keyframe): the consumer stopped reading.
    pub consumer_write_timeout: Duration,
    /// A connection silent for this long is dropped (the relay pings at a third of it).
    pub idle_timeout: Duration,
    /// Open sessions from one IP address; more are refused with HTTP 429. 0: no limit.
    pub max_sessions_per_address: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            join_timeout: Duration::from_secs(10),
            max_control_message: crate::wire::MAX_CONTROL_MESSAGE,
            stream_header_timeout: Duration::from_secs(5),
            stream_order_wait: Duration::from_millis(500),
            control_write_timeout: Duration::from_secs(5),
            consumer_write_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            max_sessions_per_address: 100,
        }
    }
}

/// The congestion controller of every connection (quinn's three). docs/BENCHMARKS.md has
/// the measurements behind the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionController {
    Cubic,
    NewReno,
    #[default]
    Bbr,
}

impl std::str::FromStr for CongestionController {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "cubic" => Ok(Self::Cubic),
            "newreno" | "reno" => Ok(Self::NewReno),
            "bbr" => Ok(Self::Bbr),
            _ => Err(format!(
                "unknown congestion controller {s:?}: use cubic, new-reno or bbr"
            )),
        }
    }
}

impl CongestionController {
    /// The quinn transport settings for this controller.
    pub fn apply(self, transport: &mut wtransport::quinn::TransportConfig) {
        use wtransport::quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
        match self {
            Self::Cubic => {
                transport.congestion_controller_factory(Arc::new(CubicConfig::default()))
            }
            Self::NewReno => {
                transport.congestion_controller_factory(Arc::new(NewRenoConfig::default()))
            }
            Self::Bbr => transport.congestion_controller_factory(Arc::new(BbrConfig::default())),
        };
    }
}

/// Until the first path sample sets it from the congestion window (`core::path`), a new
/// connection may hold this much unacknowledged: a few keyframes, not quinn's 10 MB.
pub const INITIAL_SEND_WINDOW: u64 = 256 * 1024;

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// UDP (WebTransport) and TCP (HTTP) bind address; port 0 picks a free one for both.
    pub bind: SocketAddr,
    /// Production certificate and key (PEM). Without them a development identity is used.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Where the development identity lives.
    pub certs_dir: PathBuf,
    /// Serve the HTTP side (certificate hash, health, metrics, web client).
    pub http: bool,
    /// Serve the web client from this directory instead of the embedded copy.
    pub web_root: Option<PathBuf>,
    /// How often a development identity is checked for renewal while the relay runs.
    pub renewal_check: Duration,
    pub relay: RelayConfig,
    pub limits: SessionLimits,
    /// Who may join: development mode (no keys) or signed access tokens.
    pub access: AccessPolicy,
    pub congestion_controller: CongestionController,
    /// QUIC endpoints (UDP sockets) sharing the port with `SO_REUSEPORT`, each with its own
    /// driver; the kernel spreads connections over them (docs/ARCHITECTURE.md). 0: one per
    /// core.
    pub endpoints: usize,
    /// Where room events are POSTed (`webhook.rs`); none: no webhooks.
    pub webhook_urls: Vec<String>,
    /// Several relays as one deployment, placed through Redis (`placement.rs`); none: a
    /// lone relay.
    pub cluster: Option<ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 4443),
            cert: None,
            key: None,
            certs_dir: PathBuf::from("certs"),
            http: true,
            web_root: None,
            renewal_check: Duration::from_secs(3600),
            relay: RelayConfig::default(),
            limits: SessionLimits::default(),
            access: AccessPolicy::Development,
            congestion_controller: CongestionController::default(),
            endpoints: 1,
            webhook_urls: Vec::new(),
            cluster: None,
        }
    }
}

/// A running relay. Dropping it stops accepting; `shutdown` also closes every session.
pub struct Server {
    rooms: Rooms,
    endpoints: Vec<Arc<ServerEndpoint>>,
    /// Sessions each endpoint has accepted.
    accepted: Vec<Arc<AtomicU64>>,
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    certificate_sha256: CertificateHash,
    development_identity: bool,
    tasks: Vec<JoinHandle<()>>,
    /// Set when shutting down: new sessions are turned away.
    draining: Arc<AtomicBool>,
    /// Set when closing: WebSocket sessions close (QUIC's close their endpoints).
    shutdown: tokio::sync::watch::Sender<bool>,
}

/// The served certificate's SHA-256 (hex); it changes when a development identity renews.
#[derive(Clone, Default)]
pub struct CertificateHash(Arc<RwLock<String>>);

impl CertificateHash {
    pub fn get(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, hash: String) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = hash;
    }
}

impl Server {
    pub async fn start(config: ServerConfig) -> Result<Self> {
        let identity = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => identity::load(cert, key).await?,
            (None, None) => identity::development(&config.certs_dir).await?,
            _ => anyhow::bail!("--cert and --key go together"),
        };
        let webhooks = if config.webhook_urls.is_empty() {
            None
        } else {
            let key = match &config.access {
                AccessPolicy::Keys(key) => Some(key.clone()),
                AccessPolicy::Development => {
                    warn!("webhooks are not signed: the relay has no API key and secret");
                    None
                }
            };
            Some(webhook::Webhooks::new(config.webhook_urls.clone(), key)?)
        };
        let rooms = match &webhooks {
            Some(hooks) => Rooms::with_webhooks(config.relay.clone(), hooks.clone()),
            None => Rooms::new(config.relay.clone()),
        };

        // One port number for both: bind UDP first (it may pick the port), then TCP on it.
        // With port 0 the TCP side may find the number taken; try a few.
        let mut attempts = if config.bind.port() == 0 { 10 } else { 1 };
        let (endpoints, tcp) = loop {
            let endpoints = bind_endpoints(&config, &identity.identity)?;
            let addr = endpoints[0].local_addr()?;
            if !config.http {
                break (endpoints, None);
            }
            match TcpListener::bind(SocketAddr::new(config.bind.ip(), addr.port())).await {
                Ok(tcp) => break (endpoints, Some(tcp)),
                Err(e) if attempts > 1 => {
                    attempts -= 1;
                    warn!(port = addr.port(), error = %e, "TCP port taken, trying another");
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("binding HTTP on TCP {addr}"));
                }
            }
        };
        let endpoints: Vec<Arc<ServerEndpoint>> = endpoints.into_iter().map(Arc::new).collect();
        let local_addr = endpoints[0].local_addr()?;
        let certificate_sha256 = CertificateHash::default();
        certificate_sha256.set(identity.certificate_sha256.clone());
        let mut tasks = Vec::new();
        let draining = Arc::new(AtomicBool::new(false));
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        // Per-address limits hold across endpoints and transports: one client's sessions
        // may land on any.
        let addresses = session::AddressCounts::default();
        let access = Arc::new(config.access.clone());
        let http_addr = match tcp {
            Some(tcp) => {
                let addr = tcp.local_addr()?;
                let state = http::HttpState {
                    rooms: rooms.clone(),
                    certificate_sha256: certificate_sha256.clone(),
                    development_identity: identity.development,
                    web_root: config.web_root.clone(),
                    access: access.clone(),
                    sessions: Some(http::WsSessions {
                        limits: config.limits.clone(),
                        access: access.clone(),
                        addresses: addresses.clone(),
                        draining: draining.clone(),
                        shutdown: shutdown_rx,
                    }),
                };
                // A real certificate serves the TCP side over TLS too (https, wss).
                let tls = if identity.development {
                    None
                } else {
                    Some(tls::acceptor(&identity.identity)?)
                };
                tasks.push(tokio::spawn(http::serve(tcp, tls, state)));
                Some(addr)
            }
            None => None,
        };
        match &config.access {
            AccessPolicy::Development => warn!(
                "development mode: joins need no access token (set SYNAPSE_API_KEY and \
                 SYNAPSE_API_SECRET to require signed tokens)"
            ),
            AccessPolicy::Keys(key) => info!(api_key = %key.key, "joins require access tokens"),
        }
        let accepted: Vec<Arc<AtomicU64>> = endpoints.iter().map(|_| Arc::default()).collect();
        for (endpoint, accepted) in endpoints.iter().zip(&accepted) {
            tasks.push(tokio::spawn(accept_sessions(
                endpoint.clone(),
                accepted.clone(),
                rooms.clone(),
                config.limits.clone(),
                access.clone(),
                addresses.clone(),
                draining.clone(),
            )));
        }
        if let Some(cluster) = &config.cluster {
            let placement = Placement::connect(cluster.clone()).await?;
            rooms.set_placement(placement.clone());
            if cluster.span_rooms {
                rooms.set_spans(Spans::new(
                    rooms.clone(),
                    access.clone(),
                    config.limits.clone(),
                    placement.relay_id().to_owned(),
                    config.cert.is_some(),
                ));
            }
            let rooms = rooms.clone();
            let every = cluster.lease_ttl / 3;
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    placement.upkeep(&rooms).await;
                }
            }));
        }
        // Peers that may resume keep their place until their grace period ends.
        {
            let rooms = rooms.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    rooms.expire_interrupted(std::time::Instant::now());
                }
            }));
        }
        if webhooks.is_some() {
            let rooms = rooms.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(webhook::SWEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    rooms.sweep_events();
                }
            }));
        }
        if identity.development {
            tasks.push(tokio::spawn(renew_development_identity(
                endpoints.clone(),
                config.clone(),
                certificate_sha256.clone(),
            )));
        }
        info!(
            webtransport = %local_addr,
            http = ?http_addr,
            endpoints = endpoints.len(),
            certificate_sha256 = %identity.certificate_sha256,
            development_identity = identity.development,
            "relay listening"
        );
        Ok(Self {
            rooms,
            endpoints,
            accepted,
            local_addr,
            http_addr,
            certificate_sha256,
            development_identity: identity.development,
            tasks,
            draining,
            shutdown,
        })
    }

    /// The relay's rooms (the core's state), for tests and embedding.
    pub fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// How many sessions each endpoint has accepted (the kernel's spread over them).
    pub fn sessions_per_endpoint(&self) -> Vec<u64> {
        self.accepted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    /// The UDP address WebTransport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn certificate_sha256(&self) -> String {
        self.certificate_sha256.get()
    }

    pub fn development_identity(&self) -> bool {
        self.development_identity
    }

    /// A URL clients on this machine can use.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.local_addr.port())
    }

    /// Graceful shutdown: turn new sessions away, tell every peer the relay is going away,
    /// wait up to `deadline` for them to leave, then close what remains.
    pub async fn shutdown_gracefully(&self, deadline: Duration) {
        self.draining.store(true, Ordering::Relaxed);
        let peers = self.rooms.counts().peers;
        info!(peers, ?deadline, "shutting down: telling peers");
        self.rooms
            .announce_going_away("the relay is shutting down", deadline);
        let until = tokio::time::Instant::now() + deadline;
        while self.rooms.counts().peers > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let remaining = self.rooms.counts().peers;
        info!(remaining, "closing");
        if let Some(placement) = self.rooms.placement() {
            placement.leave_cluster().await;
        }
        self.shutdown();
        // Let the close frames leave before the process exits.
        let idle = futures_util::future::join_all(self.endpoints.iter().map(|e| e.wait_idle()));
        tokio::time::timeout(Duration::from_secs(1), idle)
            .await
            .ok();
    }

    /// Stops accepting and closes every session at once.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
        for endpoint in &self.endpoints {
            endpoint.close(VarInt::from_u32(0), b"relay shutting down");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

type ServerEndpoint = Endpoint<wtransport::endpoint::endpoint_side::Server>;

/// Socket buffer the relay asks the kernel for. One socket carries every peer's packets;
/// at the default (about 200 KB) a burst of acknowledgements from a few hundred consumers
/// overflowed it and lost producers' audio datagrams for everybody (seen as
/// RcvbufErrors in /proc/net/snmp during `bench fanout --subscribers 300`). The kernel caps
/// it at net.core.rmem_max / wmem_max.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

fn bind_socket(addr: SocketAddr, reuse_port: bool) -> Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        // [::] takes IPv4 too, as users expect from the default.
        socket.set_only_v6(false)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Best effort: a smaller buffer is not a reason not to start.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// How many endpoints `serve` runs: the configured number, or one per core for 0.
pub fn endpoint_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The relay's QUIC endpoints, all on one UDP port. Several share it with `SO_REUSEPORT`:
/// the kernel hashes each datagram's addresses to one socket, so a connection's packets
/// reach the endpoint that accepted it as long as the client's address does not change
/// (a client that migrates, or whose NAT rebinds, lands on another endpoint and times
/// out: docs/ARCHITECTURE.md). All sockets are bound before any endpoint starts, so the
/// hash does not change under a handshake. Another process could join such a group, so a
/// fixed port is first bound without the option: if anything holds it, that fails as an
/// ordinary "address in use".
fn bind_endpoints(
    config: &ServerConfig,
    identity: &wtransport::Identity,
) -> Result<Vec<ServerEndpoint>> {
    let count = endpoint_count(config.endpoints);
    let bind = |addr: SocketAddr, reuse_port: bool| {
        bind_socket(addr, reuse_port).with_context(|| format!("binding UDP {addr}"))
    };
    let sockets = if count == 1 {
        vec![bind(config.bind, false)?]
    } else {
        if config.bind.port() != 0 {
            drop(bind(config.bind, false)?);
        }
        // Port 0: the first socket picks a free port, the others join it.
        let first = bind(config.bind, true)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..count {
            sockets.push(bind(addr, true)?);
        }
        sockets
    };
    sockets
        .into_iter()
        .map(|socket| {
            let addr = socket.local_addr()?;
            let builder = wtransport::ServerConfig::builder().with_bind_socket(socket);
            Endpoint::server(endpoint_config(config, builder, identity.clone_identity())?)
                .with_context(|| format!("starting WebTransport on {addr}"))
        })
        .collect()
}

fn endpoint_config(
    config: &ServerConfig,
    builder: wtransport::config::ServerConfigBuilder<wtransport::config::states::WantsIdentity>,
    identity: wtransport::Identity,
) -> Result<wtransport::ServerConfig> {
    let idle = config.limits.idle_timeout;
    let mut transport = wtransport::quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle.try_into().context("idle timeout too large")?))
        .keep_alive_interval(Some(idle / 3))
        .send_window(INITIAL_SEND_WINDOW);
    config.congestion_controller.apply(&mut transport);
    Ok(builder.with_custom_transport(identity, transport).build())
}

/// A development certificate lives 13 days and browsers refuse an expired pin: a relay that
/// runs longer swaps in a fresh one a day before expiry. Sessions already open keep theirs;
/// new sessions (and `/certificate.sha256`) get the new one.
async fn renew_development_identity(
    endpoints: Vec<Arc<ServerEndpoint>>,
    config: ServerConfig,
    hash: CertificateHash,
) {
    let mut check = tokio::time::interval(config.renewal_check);
    check.tick().await;
    loop {
        check.tick().await;
        if !identity::development_needs_renewal(&config.certs_dir) {
            continue;
        }
        let renewed = async {
            let fresh = identity::development(&config.certs_dir).await?;
            // The socket stays; only TLS changes (reload without rebinding ignores this bind).
            // Every configuration first, so that a failure leaves all endpoints on the
            // old certificate, consistent with the hash still served.
            let mut server_configs = Vec::new();
            for _ in &endpoints {
                let builder =
                    wtransport::ServerConfig::builder().with_bind_config(IpBindConfig::LocalV4, 0);
                server_configs.push(endpoint_config(
                    &config,
                    builder,
                    fresh.identity.clone_identity(),
                )?);
            }
            for (endpoint, server_config) in endpoints.iter().zip(server_configs) {
                endpoint.reload_config(server_config, false)?;
            }
            anyhow::Ok(fresh.certificate_sha256)
        };
        match renewed.await {
            Ok(new_hash) => {
                info!(certificate_sha256 = %new_hash, "development certificate renewed");
                hash.set(new_hash);
            }
            Err(e) => warn!(error = %e, "renewing the development certificate failed"),
        }
    }
}

async fn accept_sessions(
    endpoint: Arc<ServerEndpoint>,
    accepted: Arc<AtomicU64>,
    rooms: Rooms,
    limits: SessionLimits,
    access: Arc<AccessPolicy>,
    addresses: session::AddressCounts,
    draining: Arc<AtomicBool>,
) {
    loop {
        let incoming = endpoint.accept().await;
        accepted.fetch_add(1, Ordering::Relaxed);
        if draining.load(Ordering::Relaxed) {
            tokio::spawn(async move {
                if let Ok(request) = incoming.await {
                    request.too_many_requests().await;
                }
            });
            continue;
        }
        let session = session::serve(
            incoming,
            rooms.clone(),
            limits.clone(),
            access.clone(),
            addresses.clone(),
        );
        tokio::spawn(session);
    }
}
