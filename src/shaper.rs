//! A network shaper: a userspace UDP proxy that impairs the link between clients and a
//! relay, so that tests and benchmarks can put a client on a bad network without `tc` (which
//! needs root and shapes a whole interface).
//!
//! Each direction of a client's link ("up": client → relay, "down": relay → client) follows
//! one [`LinkModel`], which decides for every packet, in arrival order:
//! 1. Loss: with probability `loss` the packet is lost. It is lost before the queue, so it
//!    takes no room there (as netem's loss).
//! 2. Rate: the link sends `rate_kbps` kilobits per second, counting 28 bytes of IPv4 and
//!    UDP headers per packet as a real link carries them, one packet after the other. A
//!    packet waits for those ahead of it; one that would wait longer than `queue` is dropped
//!    (drop-tail: the queue holds `queue` worth of the rate). Rate 0: no limit, no queue.
//! 3. Delay: the packet arrives `delay` ± a uniform random `jitter` after it has been sent,
//!    never before it was sent and never before the packet ahead of it. Paths do not reorder
//!    packets of one flow; a late packet holds back the ones behind it instead.
//! 4. At most `max_in_flight` packets are scheduled and not yet delivered; more are dropped.
//!    It bounds the memory of a long delay when nothing else does (no rate limit).
//!
//! [`LinkModel`] is that policy alone, on time given by the caller, so that it is tested in
//! simulated time. [`Shaper`] is the IO around it: a UDP socket that clients send to, one
//! upstream socket per client source address (the relay sees each client as its own address,
//! and each client gets its own link, as each would have its own access network), and per
//! direction a task that sends each packet when the model says it arrives.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes of IPv4 and UDP headers a link carries besides each datagram's payload.
pub const HEADER_BYTES: u64 = 28;

/// Largest UDP payload read; QUIC packets are far smaller.
const MAX_DATAGRAM: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum ShaperError {
    #[error("cannot open a UDP socket on {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid {what} {input:?}: {reason}")]
    Invalid {
        what: &'static str,
        input: String,
        reason: String,
    },
}

fn invalid(what: &'static str, input: &str, reason: impl Into<String>) -> ShaperError {
    ShaperError::Invalid {
        what,
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// One direction of a link. The default impairs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkConfig {
    /// Kilobits per second; 0 is no limit.
    pub rate_kbps: u64,
    /// Longest a packet may wait for the link before it is dropped (with a rate limit).
    #[serde(rename = "queue_ms", serialize_with = "millis")]
    pub queue: Duration,
    /// Probability that a packet is lost, 0 to 1.
    pub loss: f64,
    /// One-way delay.
    #[serde(rename = "delay_ms", serialize_with = "millis")]
    pub delay: Duration,
    /// The delay varies uniformly by up to this much either way.
    #[serde(rename = "jitter_ms", serialize_with = "millis")]
    pub jitter: Duration,
    /// Packets scheduled and not yet delivered at most.
    pub max_in_flight: usize,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            rate_kbps: 0,
            queue: Duration::from_millis(200),
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            max_in_flight: 10_000,
        }
    }
}

impl LinkConfig {
    pub fn validate(&self) -> Result<(), ShaperError> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(invalid(
                "loss",
                &self.loss.to_string(),
                "not between 0 and 1",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(invalid("max_in_flight", "0", "must be at least 1"));
        }
        Ok(())
    }

    /// Whether this direction changes anything at all.
    pub fn is_impaired(&self) -> bool {
        self.rate_kbps > 0 || self.loss > 0.0 || !self.delay.is_zero() || !self.jitter.is_zero()
    }
}

/// What became of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It arrives at this time.
    Deliver(Instant),
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Random loss.
    Loss,
    /// It would have waited longer than the queue length (drop-tail).
    Queue,
    /// Too many packets in flight.
    Overflow,
}

/// Counters of one direction (or of several, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Packets offered to the link, and their payload bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Packets let through (each sent at its arrival time), and their payload bytes.
    pub delivered: u64,
    pub delivered_bytes: u64,
    pub loss_drops: u64,
    pub queue_drops: u64,
    pub overflow_drops: u64,
    /// Longest wait in the queue so far, microseconds.
    pub max_queue_wait_us: u64,
}

impl LinkStats {
    pub fn merge(&mut self, other: &LinkStats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.delivered += other.delivered;
        self.delivered_bytes += other.delivered_bytes;
        self.loss_drops += other.loss_drops;
        self.queue_drops += other.queue_drops;
        self.overflow_drops += other.overflow_drops;
        self.max_queue_wait_us = self.max_queue_wait_us.max(other.max_queue_wait_us);
    }
}

/// The policy of one direction of a link (see the module documentation), sans IO.
#[derive(Debug)]
pub struct LinkModel {
    config: LinkConfig,
    rng: StdRng,
    /// When the link will have sent every packet accepted so far.
    busy_until: Option<Instant>,
    /// Arrival times scheduled and not yet reached, in order (they never decrease).
    in_flight: VecDeque<Instant>,
    pub stats: LinkStats,
}

impl LinkModel {
    /// The same seed gives the same losses and jitter for the same packets.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Self {
            config,
            rng: StdRng::seed_from_u64(seed),
            busy_until: None,
            in_flight: VecDeque::new(),
            stats: LinkStats::default(),
        }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Changes the link from now on (a limit lifted mid-call, say). Packets already
    /// scheduled keep their times.
    pub fn reconfigure(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Time to put `size` payload bytes (and their headers) on the link.
    fn transmission(&self, size: usize) -> Duration {
        let bits = (size as u64 + HEADER_BYTES) * 8;
        Duration::from_nanos(bits * 1_000_000 / self.config.rate_kbps)
    }

    /// A packet of `size` payload bytes enters the link at `now` (calls come in time order).
    pub fn offer(&mut self, now: Instant, size: usize) -> Verdict {
        self.stats.packets += 1;
        self.stats.bytes += size as u64;
        while self.in_flight.front().is_some_and(|&at| at <= now) {
            self.in_flight.pop_front();
        }
        if self.config.loss > 0.0 && self.rng.random::<f64>() < self.config.loss {
            self.stats.loss_drops += 1;
            return Verdict::Drop(DropReason::Loss);
        }
        let sent = if self.config.rate_kbps > 0 {
            let start = self.busy_until.map_or(now, |busy| busy.max(now));
            let wait = start - now;
            if wait > self.config.queue {
                self.stats.queue_drops += 1;
                return Verdict::Drop(DropReason::Queue);
            }
            self.stats.max_queue_wait_us =
                self.stats.max_queue_wait_us.max(wait.as_micros() as u64);
            start + self.transmission(size)
        } else {
            now
        };
        if self.in_flight.len() >= self.config.max_in_flight {
            self.stats.overflow_drops += 1;
            return Verdict::Drop(DropReason::Overflow);
        }
        let base = sent + self.config.delay;
        let jitter = self.config.jitter.as_nanos() as i64;
        let mut at = match jitter {
            0 => base,
            j => match self.rng.random_range(-j..=j) {
                early if early < 0 => base
                    .checked_sub(Duration::from_nanos(early.unsigned_abs()))
                    .unwrap_or(sent),
                late => base + Duration::from_nanos(late as u64),
            },
        };
        at = at.max(sent);
        if let Some(&ahead) = self.in_flight.back() {
            at = at.max(ahead);
        }
        if self.config.rate_kbps > 0 {
            self.busy_until = Some(sent);
        }
        self.in_flight.push_back(at);
        self.stats.delivered += 1;
        self.stats.delivered_bytes += size as u64;
        Verdict::Deliver(at)
    }

    /// A packet the model let through was dropped after all (the IO could not keep it).
    fn undeliverable(&mut self, size: usize) {
        self.stats.delivered -= 1;
        self.stats.delivered_bytes -= size as u64;
        self.stats.overflow_drops += 1;
    }
}

/// A rate for the command line: kilobits per second, as "700", "700kbit", "700kbps",
/// "2mbit" or "2mbps".
pub fn parse_rate_kbps(input: &str) -> Result<u64, ShaperError> {
    let text = input.trim().to_ascii_lowercase();
    let (number, scale) = if let Some(n) = text
        .strip_suffix("mbit")
        .or_else(|| text.strip_suffix("mbps"))
    {
        (n, 1000.0)
    } else if let Some(n) = text
        .strip_suffix("kbit")
        .or_else(|| text.strip_suffix("kbps"))
    {
        (n, 1.0)
    } else {
        (text.as_str(), 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| invalid("rate", input, "expected kbit/s, e.g. 700 or 2mbit"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(invalid("rate", input, "must be 0 (no limit) or more"));
    }
    Ok((value * scale).round() as u64)
}

/// A duration for the command line, as humantime reads it ("40ms", "1s").
pub fn parse_duration(input: &str) -> Result<Duration, ShaperError> {
    humantime::parse_duration(input.trim()).map_err(|e| invalid("duration", input, e.to_string()))
}

/// A loss probability for the command line: "0.03" or "3%".
pub fn parse_loss(input: &str) -> Result<f64, ShaperError> {
    let text = input.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(n) => (n.trim(), 0.01),
        None => (text, 1.0),
    };
    let value = number
        .parse::<f64>()
        .map_err(|_| invalid("loss", input, "expected 0.03 or 3%"))?
        * scale;
    if !(0.0..=1.0).contains(&value) {
        return Err(invalid("loss", input, "not between 0 and 1 (0% and 100%)"));
    }
    Ok(value)
}

#[derive(Debug, Clone, Copy)]
pub struct ShaperConfig {
    /// Where clients send (port 0 picks one).
    pub listen: SocketAddr,
    /// The relay.
    pub upstream: SocketAddr,
    /// Client → relay.
    pub up: LinkConfig,
    /// Relay → client.
    pub down: LinkConfig,
    /// Seeds the losses and jitter (each client's links get their own seeds from it).
    pub seed: u64,
}

/// Counters of a shaper, every client's links summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ShaperStats {
    /// Client source addresses seen (each got its own link).
    pub flows: u64,
    /// Packets from new client addresses dropped because too many were open.
    pub flows_refused: u64,
    pub up: LinkStats,
    pub down: LinkStats,
}

/// The two directions of one client's link.
struct FlowLinks {
    up: LinkModel,
    down: LinkModel,
    last_packet: Instant,
}

/// Links of the clients seen, shared by the tasks and [`Shaper::stats`].
#[derive(Default)]
struct Registry {
    live: HashMap<SocketAddr, Arc<Mutex<FlowLinks>>>,
    /// Counters of the links of clients gone idle.
    retired: ShaperStats,
}

type Shared = Arc<Mutex<Registry>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Clients silent for this long are forgotten (QUIC's keep-alives are seconds apart).
const FLOW_IDLE: Duration = Duration::from_secs(60);
/// Clients at once; packets from more are dropped, so that a flood of source addresses
/// cannot open sockets without bound.
const MAX_FLOWS: usize = 1024;

/// A running shaper. Stops when dropped.
pub struct Shaper {
    local_addr: SocketAddr,
    registry: Shared,
    task: JoinHandle<()>,
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP socket with large kernel buffers (best effort: the kernel may cap them), so that a
/// burst is lost in the model, where it is counted, rather than in the kernel.
fn udp_socket(addr: SocketAddr) -> Result<UdpSocket, ShaperError> {
    let failed = |source| ShaperError::Socket { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(failed)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true).map_err(failed)?;
    socket.bind(&addr.into()).map_err(failed)?;
    UdpSocket::from_std(socket.into()).map_err(failed)
}

impl Shaper {
    pub async fn start(config: ShaperConfig) -> Result<Shaper, ShaperError> {
        config.up.validate()?;
        config.down.validate()?;
        let listen = Arc::new(udp_socket(config.listen)?);
        let local_addr = listen.local_addr().map_err(|source| ShaperError::Socket {
            addr: config.listen,
            source,
        })?;
        let registry = Shared::default();
        let task = tokio::spawn(serve(listen, config, registry.clone()));
        Ok(Shaper {
            local_addr,
            registry,
            task,
        })
    }

    /// Where clients send.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Changes both directions of every client's link seen so far (new clients still get
    /// the configuration the shaper started with).
    pub fn reconfigure(&self, up: LinkConfig, down: LinkConfig) -> Result<(), ShaperError> {
        up.validate()?;
        down.validate()?;
        let registry = lock(&self.registry);
        for flow in registry.live.values() {
            let mut flow = lock(flow);
            flow.up.reconfigure(up);
            flow.down.reconfigure(down);
        }
        Ok(())
    }

    /// Live counters.
    pub fn stats(&self) -> ShaperStats {
        let registry = lock(&self.registry);
        let mut stats = registry.retired;
        for flow in registry.live.values() {
            let flow = lock(flow);
            stats.up.merge(&flow.up.stats);
            stats.down.merge(&flow.down.stats);
        }
        stats
    }
}

/// Packets on their way, in arrival order, each with its arrival time.
type DelayLine = mpsc::Sender<(Instant, Bytes)>;

/// One client's upstream socket and tasks; dropping it stops them.
struct Flow {
    links: Arc<Mutex<FlowLinks>>,
    up: DelayLine,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Where a delay line ends.
enum Exit {
    /// To the relay, on the client's upstream socket (connected to the relay).
    Upstream(Arc<UdpSocket>),
    /// To the client, from the socket it sends to.
    Client(Arc<UdpSocket>, SocketAddr),
}

/// A delay line and the task that sends each packet on it at its arrival time, in order.
fn spawn_delay_line(capacity: usize, exit: Exit) -> (DelayLine, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(capacity);
    let task = tokio::spawn(async move {
        while let Some((at, packet)) = rx.recv().await {
            if at > Instant::now() {
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            }
            // A failed send is a packet lost on the way, as UDP allows.
            let _ = match &exit {
                Exit::Upstream(socket) => socket.send(&packet).await,
                Exit::Client(socket, client) => socket.send_to(&packet, client).await,
            };
        }
    });
    (tx, task)
}

/// Offers a packet to a link and puts it on the delay line if it gets through.
fn shape(links: &Mutex<FlowLinks>, up: bool, line: &DelayLine, packet: &[u8]) {
    let now = Instant::now();
    let mut links = lock(links);
    links.last_packet = now;
    let model = if up { &mut links.up } else { &mut links.down };
    if let Verdict::Deliver(at) = model.offer(now, packet.len())
        && line.try_send((at, Bytes::copy_from_slice(packet))).is_err()
    {
        // The deliverer is behind by more than the model's bound allows for (a starved
        // task): drop rather than hold more.
        model.undeliverable(packet.len());
    }
}

async fn open_flow(
    client: SocketAddr,
    index: u64,
    listen: &Arc<UdpSocket>,
    config: &ShaperConfig,
) -> Result<Flow, ShaperError> {
    let any = match config.upstream {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let upstream = Arc::new(udp_socket(any)?);
    upstream
        .connect(config.upstream)
        .await
        .map_err(|source| ShaperError::Socket {
            addr: config.upstream,
            source,
        })?;
    let seed = config.seed.wrapping_add(index.wrapping_mul(2));
    let links = Arc::new(Mutex::new(FlowLinks {
        up: LinkModel::new(config.up, seed),
        down: LinkModel::new(config.down, seed.wrapping_add(1)),
        last_packet: Instant::now(),
    }));
    // Room for everything the model lets be in flight, and some slack for the deliverer.
    let capacity = |c: &LinkConfig| c.max_in_flight + 256;
    let (up, up_task) = spawn_delay_line(capacity(&config.up), Exit::Upstream(upstream.clone()));
    let (down, down_task) =
        spawn_delay_line(capacity(&config.down), Exit::Client(listen.clone(), client));
    let reader = tokio::spawn({
        let links = links.clone();
        async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                // Errors here are ICMP reports (the relay's port closed for a moment): the
                // socket itself stays usable.
                if let Ok(n) = upstream.recv(&mut buf).await {
                    shape(&links, false, &down, &buf[..n]);
                }
            }
        }
    });
    Ok(Flow {
        links,
        up,
        tasks: vec![up_task, down_task, reader],
    })
}

/// Reads what clients send, opening a flow per new client, until aborted.
async fn serve(listen: Arc<UdpSocket>, config: ShaperConfig, registry: Shared) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut reap = tokio::time::interval(FLOW_IDLE / 4);
    let mut opened = 0u64;
    loop {
        let (n, client) = tokio::select! {
            received = listen.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(_) => continue,
            },
            _ = reap.tick() => {
                let mut registry = lock(&registry);
                flows.retain(|client, flow| {
                    let links = lock(&flow.links);
                    let idle = links.last_packet.elapsed() > FLOW_IDLE;
                    if idle {
                        registry.retired.up.merge(&links.up.stats);
                        registry.retired.down.merge(&links.down.stats);
                        registry.live.remove(client);
                    }
                    !idle
                });
                continue;
            }
        };
        if !flows.contains_key(&client) {
            if flows.len() >= MAX_FLOWS {
                lock(&registry).retired.flows_refused += 1;
                continue;
            }
            match open_flow(client, opened, &listen, &config).await {
                Ok(flow) => {
                    opened += 1;
                    let mut registry = lock(&registry);
                    registry.retired.flows += 1;
                    registry.live.insert(client, flow.links.clone());
                    flows.insert(client, flow);
                }
                Err(e) => {
                    tracing::warn!(%client, error = %e, "shaper: cannot open an upstream socket");
                    continue;
                }
            }
        }
        let flow = &flows[&client];
        shape(&flow.links, true, &flow.up, &buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn link(config: LinkConfig) -> LinkModel {
        LinkModel::new(config, 7)
    }

    fn delivered(v: Verdict) -> Instant {
        match v {
            Verdict::Deliver(at) => at,
            Verdict::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    /// 1000 kbit/s moves a 972-byte payload (1000 bytes with headers) in 8 ms.
    const PAYLOAD: usize = 1000 - HEADER_BYTES as usize;

    #[test]
    fn no_impairment_delivers_at_once() {
        let mut l = link(LinkConfig::default());
        let t0 = Instant::now();
        for i in 0..100 {
            let now = t0 + i * MS;
            assert_eq!(l.offer(now, 1200), Verdict::Deliver(now));
        }
        assert_eq!(l.stats.delivered, 100);
        assert_eq!(l.stats.bytes, 120_000);
    }

    #[test]
    fn rate_limits_throughput() {
        let mut l = link(LinkConfig {
            rate_kbps: 1000,
            queue: 200 * MS,
            ..LinkConfig::default()
        });
        let t0 = Instant::now();
        // Offered at twice the rate (a packet every 4 ms) for 10 s.
        let mut arrivals = Vec::new();
        for i in 0..2500 {
            if let Verdict::Deliver(at) = l.offer(t0 + i * 4 * MS, PAYLOAD) {
                arrivals.push(at);
            }
        }
        // Back to back at 8 ms each once the queue is full.
        for w in arrivals.windows(2) {
            assert_eq!(w[1] - w[0], 8 * MS);
        }
        let span = *arrivals.last().unwrap() - t0;
        let kbps = arrivals.len() as f64 * 8.0 / span.as_secs_f64();
        assert!((kbps - 1000.0).abs() < 5.0, "{kbps} kbit/s");
        assert_eq!(l.stats.delivered as usize, arrivals.len());
        assert_eq!(l.stats.delivered + l.stats.queue_drops, 2500);
        // Ten seconds at the rate, plus the 200 ms the queue held when offering stopped.
        assert!(
            (1250..=1277).contains(&arrivals.len()),
            "{}",
            arrivals.len()
        );
    }

    #[test]
    fn under_the_rate_nothing_waits() {
        let mut l = link(LinkConfig {
            rate_kbps: 1000,
            queue: Duration::ZERO,
            ..LinkConfig::default()
        });
        let t0 = Instant::now();
        for i in 0..100 {
            let now = t0 + i * 10 * MS;
            assert_eq!(l.offer(now, PAYLOAD), Verdict::Deliver(now + 8 * MS));
        }
        assert_eq!(l.stats.queue_drops, 0);
        assert_eq!(l.stats.max_queue_wait_us, 0);
    }

    #[test]
    fn queue_bound_drops_the_tail() {
        let mut l = link(LinkConfig {
            rate_kbps: 1000,
            queue: 100 * MS,
            ..LinkConfig::default()
        });
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..100).map(|_| l.offer(t0, PAYLOAD)).collect();
        // Packet i waits 8·i ms: 0 to 12 wait at most 96 ms, the rest would wait longer.
        for (i, v) in verdicts.iter().enumerate() {
            if i <= 12 {
                assert_eq!(*v, Verdict::Deliver(t0 + (i as u32 + 1) * 8 * MS), "{i}");
            } else {
                assert_eq!(*v, Verdict::Drop(DropReason::Queue), "{i}");
            }
        }
        assert_eq!(l.stats.queue_drops, 87);
        assert_eq!(l.stats.max_queue_wait_us, 96_000);
        // Once it has drained, the link takes packets again, without waiting.
        let later = t0 + 104 * MS;
        assert_eq!(l.offer(later, PAYLOAD), Verdict::Deliver(later + 8 * MS));
    }

    #[test]
    fn loss_ratio_follows_the_probability_and_the_seed() {
        let config = LinkConfig {
            loss: 0.03,
            ..LinkConfig::default()
        };
        let run = |seed| {
            let mut l = LinkModel::new(config, seed);
            let t0 = Instant::now();
            let lost: Vec<bool> = (0..100_000u32)
                .map(|i| l.offer(t0 + i * MS, 100) == Verdict::Drop(DropReason::Loss))
                .collect();
            (lost, l.stats)
        };
        let (lost, stats) = run(7);
        let ratio = stats.loss_drops as f64 / stats.packets as f64;
        assert!((0.028..0.032).contains(&ratio), "{ratio}");
        assert_eq!(stats.delivered + stats.loss_drops, 100_000);
        assert_eq!(run(7).0, lost, "the same seed loses the same packets");
        assert_ne!(run(8).0, lost);
    }

    #[test]
    fn delay_and_jitter_never_reorder() {
        let mut l = link(LinkConfig {
            delay: 40 * MS,
            jitter: 10 * MS,
            ..LinkConfig::default()
        });
        let t0 = Instant::now();
        let mut last = t0;
        // A packet per millisecond: jitter (±10 ms) would reorder them if let.
        for i in 0..5000 {
            let now = t0 + i * MS;
            let at = delivered(l.offer(now, 1200));
            assert!(at >= last, "packet {i} overtook the one ahead");
            assert!(at >= now + 30 * MS && at <= now + 50 * MS, "packet {i}");
            last = at;
        }
    }

    #[test]
    fn jitter_spreads_the_delay_both_ways() {
        let mut l = link(LinkConfig {
            delay: 40 * MS,
            jitter: 10 * MS,
            ..LinkConfig::default()
        });
        let t0 = Instant::now();
        // Far apart, so that no packet holds back the next.
        let delays: Vec<Duration> = (0..1000)
            .map(|i| {
                let now = t0 + i * 100 * MS;
                delivered(l.offer(now, 1200)) - now
            })
            .collect();
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(*min >= 30 * MS && *min < 32 * MS, "{min:?}");
        assert!(*max <= 50 * MS && *max > 48 * MS, "{max:?}");
    }

    #[test]
    fn jitter_larger_than_the_delay_never_delivers_before_sending() {
        let mut l = link(LinkConfig {
            delay: 2 * MS,
            jitter: 10 * MS,
            ..LinkConfig::default()
        });
        let t0 = Instant::now();
        for i in 0..1000 {
            let now = t0 + i * 100 * MS;
            assert!(delivered(l.offer(now, 100)) >= now);
        }
    }

    #[test]
    fn in_flight_is_bounded() {
        let mut l = link(LinkConfig {
            delay: Duration::from_secs(1),
            max_in_flight: 10,
            ..LinkConfig::default()
        });
        let t0 = Instant::now();
        let drops = (0..20)
            .filter(|_| l.offer(t0, 100) == Verdict::Drop(DropReason::Overflow))
            .count();
        assert_eq!(drops, 10);
        assert_eq!(l.stats.overflow_drops, 10);
        // Once those have arrived, there is room again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            l.offer(later, 100),
            Verdict::Deliver(later + Duration::from_secs(1))
        );
    }

    #[test]
    fn parses_command_line_values() {
        assert_eq!(parse_rate_kbps("700").unwrap(), 700);
        assert_eq!(parse_rate_kbps("700kbit").unwrap(), 700);
        assert_eq!(parse_rate_kbps("2mbit").unwrap(), 2000);
        assert_eq!(parse_rate_kbps("1.5Mbps").unwrap(), 1500);
        assert!(parse_rate_kbps("fast").is_err());
        assert!(parse_rate_kbps("-1").is_err());
        assert_eq!(parse_duration("40ms").unwrap(), 40 * MS);
        assert!(parse_duration("40").is_err());
        assert_eq!(parse_loss("0.03").unwrap(), 0.03);
        assert!((parse_loss("3%").unwrap() - 0.03).abs() < 1e-12);
        assert!(parse_loss("1.5").is_err());
        assert!(parse_loss("150%").is_err());
        assert!(parse_loss("x").is_err());
        assert!(
            LinkConfig {
                loss: 2.0,
                ..LinkConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(!LinkConfig::default().is_impaired());
    }
}
