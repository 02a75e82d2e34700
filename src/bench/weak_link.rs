//! `bench weak-link`: what a bad network does to one subscriber, next to a subscriber on a
//! clean link receiving the same stream in the same run.
//!
//! One publisher (synthetic audio and video) and two subscribers: `clean` connects to the
//! relay directly, `impaired` through a [`Shaper`]. With a shaped publisher uplink, the
//! publisher goes through a shaper of its own (both subscribers then suffer alike: the loss
//! happened before the relay). All on this machine, so capture timestamps and receipt share
//! a clock.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::stats::{Latency, Recorder, machine_line};
use super::{BenchOptions, SHARED_NOTE, Shape, ratio, relay_drops, start_relay};
use crate::client::join::{FreezeMeter, Publisher, publish, publish_simulcast, simulcast_ladder};
use crate::client::media::{SyntheticAudio, SyntheticVideo};
use crate::client::{Client, ClientOptions, Incoming, Verification, fetch_certificate_hash};
use crate::shaper::{LinkConfig, Shaper, ShaperConfig, ShaperStats};
use crate::wire::{MediaKind, ServerMessage};

/// The links of a weak-link run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WeakLink {
    /// The impaired subscriber's uplink (it carries its acknowledgements).
    pub subscriber_up: LinkConfig,
    /// The impaired subscriber's downlink (it carries the media).
    pub subscriber_down: LinkConfig,
    /// The publisher's uplink, when it goes through a shaper.
    pub publisher_up: Option<LinkConfig>,
    /// Seeds the shapers' losses and jitter.
    pub seed: u64,
    /// The publisher sends three simulcast layers ([`simulcast_ladder`]).
    pub simulcast: bool,
    /// The subscribers are on another relay of a cluster than the publisher's (two
    /// relays spanning the room, sharing a redis-server the bench starts): the media
    /// crosses a link first.
    pub across_relays: bool,
    /// The impaired subscriber's rate limit is lifted after this long.
    #[serde(with = "humantime_serde_opt")]
    pub lift_after: Option<Duration>,
}

/// `Option<Duration>` as milliseconds in reports.
mod humantime_serde_opt {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WeakLinkReport {
    pub scenario: &'static str,
    pub duration_s: f64,
    pub shape: Shape,
    pub links: WeakLink,
    pub sent: Sent,
    pub subscribers: Subscribers,
    /// The relay's drop counters after the run (from its /metrics), both subscribers'
    /// (across relays, both relays' summed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_drops: Option<BTreeMap<String, u64>>,
    pub shapers: Shapers,
    pub machine: String,
    pub note: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub video_frames: u64,
    pub audio_frames: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subscribers {
    pub clean: SubscriberReport,
    pub impaired: SubscriberReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct Shapers {
    pub impaired_subscriber: ShaperStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<ShaperStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubscriberReport {
    pub video: VideoReport,
    pub audio: AudioReport,
    /// Simulcast runs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<LayerReport>,
}

/// Which simulcast layers a subscriber received.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Frames received per layer, lowest first.
    pub frames_per_layer: Vec<u64>,
    /// Changes of the layer received.
    pub switches: u64,
    /// The longest gap between frames after the first [`SETTLE`] (a layer switch must not
    /// freeze the picture).
    pub longest_gap_after_settle_ms: f64,
    /// Video latency after the first [`SETTLE`].
    pub settled_latency_ms: Latency,
    /// With `lift_after`: seconds from the lift to the first of 30 top-layer frames in a row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub back_on_top_s: Option<f64>,
}

/// Time a subscriber's layer choice is given to settle before it is judged.
pub const SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct VideoReport {
    pub frames: u64,
    pub sent: u64,
    pub delivered_ratio: f64,
    /// Frames received over the run's duration.
    pub fps: f64,
    /// Gaps over 200 ms between received frames, counting the wait for the first frame
    /// from the start and the time from the last frame to the end of the run (so that
    /// `freeze_ms` is at most the run's duration).
    pub freezes: u64,
    pub freeze_ms: f64,
    /// Capture to receipt.
    pub latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudioReport {
    pub frames: u64,
    pub sent: u64,
    pub delivered_ratio: f64,
    pub latency_ms: AudioLatency,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudioLatency {
    pub p50: f64,
    pub p99: f64,
}

/// What one subscriber received.
struct Received {
    video: Recorder,
    audio: Recorder,
    freeze: FreezeMeter,
    layers: Option<LayerTrack>,
}

/// A subscriber's simulcast layers, from the frames' layer marks.
#[derive(Default)]
struct LayerTrack {
    frames: [u64; 3],
    last: Option<u8>,
    switches: u64,
    last_frame: Option<Instant>,
    longest_gap_after_settle: Duration,
    settled: Recorder,
    top_run: u32,
    top_run_start: Option<Instant>,
    back_on_top: Option<Instant>,
}

/// Time after the publisher stops for what is in flight to arrive (a slow link drains
/// its queues then).
const GRACE: Duration = Duration::from_secs(2);

const ROOM_PREFIX: &str = "weak-link";

/// `host:port` of an `https://` URL, resolved.
async fn socket_addr_of(url: &str) -> Result<SocketAddr> {
    let authority = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .with_context(|| format!("{url} is not an https:// URL"))?;
    let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
        port.parse::<u16>().is_ok() && (!host.starts_with('[') || host.ends_with(']'))
    });
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    tokio::net::lookup_host(&authority)
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))
}

async fn start_shaper(
    relay: SocketAddr,
    up: LinkConfig,
    down: LinkConfig,
    seed: u64,
) -> Result<Shaper> {
    let listen = match relay {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
    };
    Shaper::start(ShaperConfig {
        listen,
        upstream: relay,
        up,
        down,
        seed,
    })
    .await
    .context("starting a shaper")
}

async fn connect(
    url: String,
    hash: &str,
    room: &str,
    name: &str,
    subscribe: bool,
) -> Result<(Client, Incoming)> {
    let mut options = ClientOptions::new(url, Verification::Pin(hash.to_owned()));
    options.frame_buffer = 8192;
    let (client, incoming) = Client::connect(options)
        .await
        .with_context(|| format!("connecting {name}"))?;
    client
        .join(room, name, subscribe)
        .await
        .with_context(|| format!("joining {name}"))?;
    Ok((client, incoming))
}

/// Waits until `count` consumers have been added for a subscriber.
async fn consumers_added(incoming: &mut Incoming, count: usize) -> Result<()> {
    let mut added = 0;
    while added < count {
        let event = tokio::time::timeout(Duration::from_secs(120), incoming.events.recv())
            .await
            .context("waiting for consumers")?;
        match event {
            Some(ServerMessage::ConsumerAdded { .. }) => added += 1,
            Some(_) => {}
            None => bail!("the relay closed a subscriber's session while setting up"),
        }
    }
    Ok(())
}

/// Records what `incoming` delivers until `stop`; freezes count from `start` to `end`.
async fn receive(
    mut incoming: Incoming,
    (start, end, lift): (Instant, Instant, Option<Instant>),
    stop: tokio::time::Instant,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    simulcast: bool,
) -> Received {
    let mut received = Received {
        video: Recorder::default(),
        audio: Recorder::default(),
        freeze: FreezeMeter::starting_at(start),
        layers: simulcast.then(LayerTrack::default),
    };
    loop {
        tokio::select! {
            frame = incoming.frames.recv() => match frame {
                Some(f) => {
                    match f.kind {
                        MediaKind::Video => {
                            // Freezes are counted over the run: a frame that comes
                            // after its end (in flight) ends the last gap there.
                            let now = Instant::now();
                            received.freeze.frame(now.min(end));
                            received.video.record(f.header.capture_us, f.payload.len(), 1);
                            if let (Some(t), Some(&layer)) = (received.layers.as_mut(), f.payload.first()) {
                                t.frame(layer, now, start, lift, f.header.capture_us, f.payload.len());
                            }
                        }
                        MediaKind::Audio => received.audio.record(f.header.capture_us, f.payload.len(), 1),
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(stop) => break,
        }
    }
    received.freeze = received.freeze.finish(end);
    received
}

impl LayerTrack {
    fn frame(
        &mut self,
        layer: u8,
        now: Instant,
        start: Instant,
        lift: Option<Instant>,
        capture_us: u64,
        len: usize,
    ) {
        if let Some(n) = self.frames.get_mut(usize::from(layer)) {
            *n += 1;
        }
        if self.last.is_some_and(|l| l != layer) {
            self.switches += 1;
        }
        self.last = Some(layer);
        let settled = now >= start + SETTLE;
        if settled {
            if let Some(last) = self.last_frame.filter(|l| *l >= start + SETTLE) {
                self.longest_gap_after_settle = self.longest_gap_after_settle.max(now - last);
            }
            self.settled.record(capture_us, len, 1);
        }
        self.last_frame = Some(now);
        if let Some(lift) = lift.filter(|l| now >= *l)
            && self.back_on_top.is_none()
        {
            if layer == 2 {
                self.top_run += 1;
                let run_start = *self.top_run_start.get_or_insert(now);
                if self.top_run >= 30 {
                    self.back_on_top = Some(run_start.max(lift));
                }
            } else {
                self.top_run = 0;
                self.top_run_start = None;
            }
        }
    }

    fn report(&self, lift: Option<Instant>) -> LayerReport {
        LayerReport {
            frames_per_layer: self.frames.to_vec(),
            switches: self.switches,
            longest_gap_after_settle_ms: self.longest_gap_after_settle.as_secs_f64() * 1000.0,
            settled_latency_ms: Latency::of(&self.settled.latency_us),
            back_on_top_s: lift.and_then(|lift| {
                self.back_on_top.map(|at| {
                    (at.saturating_duration_since(lift).as_secs_f64() * 10.0).round() / 10.0
                })
            }),
        }
    }
}

fn subscriber_report(
    r: &Received,
    sent: &Sent,
    seconds: f64,
    lift: Option<Instant>,
) -> SubscriberReport {
    let audio = Latency::of(&r.audio.latency_us);
    SubscriberReport {
        video: VideoReport {
            frames: r.video.frames,
            sent: sent.video_frames,
            delivered_ratio: ratio(r.video.frames, sent.video_frames),
            fps: (r.video.frames as f64 / seconds * 100.0).round() / 100.0,
            freezes: r.freeze.freezes,
            freeze_ms: r.freeze.frozen_ms(),
            latency_ms: Latency::of(&r.video.latency_us),
        },
        audio: AudioReport {
            frames: r.audio.frames,
            sent: sent.audio_frames,
            delivered_ratio: ratio(r.audio.frames, sent.audio_frames),
            latency_ms: AudioLatency {
                p50: audio.p50,
                p99: audio.p99,
            },
        },
        layers: r.layers.as_ref().map(|t| t.report(lift)),
    }
}

/// Runs the weak-link scenario: starts the relay (unless `options.url` names one), the
/// shapers and the three peers, sends for `options.duration`, and reports.
pub async fn run(options: &BenchOptions, link: &WeakLink) -> Result<WeakLinkReport> {
    let started_relay;
    // Across relays: the redis-server and the publisher's relay, kept to the end.
    let mut cluster = None;
    let (url, hash) = match &options.url {
        Some(_) if link.across_relays => {
            bail!("--across-relays starts its own relays (no --url)")
        }
        None if link.across_relays => {
            let redis = super::cluster::start_redis().await?;
            // The publisher's relay places the room (its publisher joins first); the
            // subscribers' relay mirrors it.
            let origin = start_relay(
                options.relay_bin.as_ref(),
                &options.relay_args,
                Some(&redis.url),
            )
            .await?;
            started_relay = start_relay(
                options.relay_bin.as_ref(),
                &options.relay_args,
                Some(&redis.url),
            )
            .await?;
            cluster = Some((redis, origin));
            (started_relay.url.clone(), started_relay.hash.clone())
        }
        Some(url) => {
            // The shaped clients cannot fetch the hash through the shaper (UDP only).
            let hash = match &options.cert_hash {
                Some(h) => h.clone(),
                None => fetch_certificate_hash(url).await?,
            };
            (url.clone(), hash)
        }
        None => {
            started_relay =
                start_relay(options.relay_bin.as_ref(), &options.relay_args, None).await?;
            (started_relay.url.clone(), started_relay.hash.clone())
        }
    };
    let (publisher_relay_url, publisher_hash) = match &cluster {
        Some((_, origin)) => (origin.url.clone(), origin.hash.clone()),
        None => (url.clone(), hash.clone()),
    };
    let relay_addr = socket_addr_of(&url).await?;
    let publisher_relay_addr = socket_addr_of(&publisher_relay_url).await?;
    let subscriber_shaper = start_shaper(
        relay_addr,
        link.subscriber_up,
        link.subscriber_down,
        link.seed,
    )
    .await?;
    let publisher_shaper = match link.publisher_up {
        Some(up) => Some(
            start_shaper(
                publisher_relay_addr,
                up,
                LinkConfig::default(),
                link.seed.wrapping_add(1_000),
            )
            .await?,
        ),
        None => None,
    };
    let via = |shaper: &Shaper| format!("https://{}/", shaper.local_addr());

    let room = format!("{ROOM_PREFIX}-{}", std::process::id());
    let publisher_url = publisher_shaper
        .as_ref()
        .map_or(publisher_relay_url.clone(), via);
    let connect_publisher = || {
        connect(
            publisher_url.clone(),
            &publisher_hash,
            &room,
            "publisher",
            false,
        )
    };
    // Across relays the publisher joins first, so that its relay is the room's origin.
    let early = match link.across_relays {
        true => Some(connect_publisher().await?),
        false => None,
    };
    let (_clean_client, mut clean) = connect(url.clone(), &hash, &room, "clean", true).await?;
    let (_impaired_client, mut impaired) =
        connect(via(&subscriber_shaper), &hash, &room, "impaired", true).await?;
    let (publisher, mut publisher_events) = match early {
        Some(connected) => connected,
        None => connect_publisher().await?,
    };

    let shape = options.shape;
    let (go, gone) = tokio::sync::watch::channel(false);
    let start_signal = || {
        let mut gone = gone.clone();
        async move {
            let _ = gone.wait_for(|go| *go).await;
        }
    };
    let audio_source = Box::new(SyntheticAudio::with_interval(
        shape.audio_bitrate,
        shape.audio_frame_interval,
    ));
    let video_source = Box::new(SyntheticVideo::new(
        shape.video_bitrate,
        shape.fps,
        shape.keyframe_interval,
    ));
    let video = if link.simulcast {
        publish_simulcast(
            &publisher,
            simulcast_ladder(shape.video_bitrate),
            shape.fps,
            shape.keyframe_interval,
            start_signal(),
        )
        .await?
    } else {
        publish(&publisher, MediaKind::Video, video_source, start_signal()).await?
    };
    let mut publishers: Vec<Publisher> = vec![
        publish(&publisher, MediaKind::Audio, audio_source, start_signal()).await?,
        video,
    ];
    consumers_added(&mut clean, 2).await?;
    consumers_added(&mut impaired, 2).await?;

    let start = Instant::now();
    let began = tokio::time::Instant::from_std(start);
    let stop_sending = began + options.duration;
    let stop_receiving = stop_sending + GRACE;
    let _ = go.send(true);
    let counters = [(); 2].map(|_| std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)));
    let end = start + options.duration;
    let lift = link.lift_after.map(|after| start + after);
    let clean_task = tokio::spawn(receive(
        clean,
        (start, end, lift),
        stop_receiving,
        counters[0].clone(),
        link.simulcast,
    ));
    let impaired_task = tokio::spawn(receive(
        impaired,
        (start, end, lift),
        stop_receiving,
        counters[1].clone(),
        link.simulcast,
    ));
    let mut lifted = lift.is_none();

    // The publisher answers keyframe requests until it stops.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            event = publisher_events.events.recv() => match event {
                Some(event) => {
                    for p in &publishers {
                        p.on_event(&event);
                    }
                }
                None => bail!("the relay closed the publisher's session"),
            },
            _ = tick.tick(), if options.progress => eprint!(
                "\rweak-link: {:>4.0} / {:.0} s, video+audio frames received: clean {}, impaired {}   ",
                start.elapsed().as_secs_f64(),
                options.duration.as_secs_f64(),
                counters[0].load(Ordering::Relaxed),
                counters[1].load(Ordering::Relaxed),
            ),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(lift.unwrap_or(start))), if !lifted => {
                lifted = true;
                let down = LinkConfig { rate_kbps: 0, ..link.subscriber_down };
                subscriber_shaper.reconfigure(link.subscriber_up, down)?;
            }
            _ = tokio::time::sleep_until(stop_sending) => break,
        }
    }
    for p in &mut publishers {
        p.stop().await;
    }
    // Pictures captured: a simulcast publisher counts each layer's frames; its clean
    // subscriber's layer (the top) was never paused.
    let video_frames = match publishers[1].layers.last() {
        Some(top) => top.frames.load(Ordering::Relaxed),
        None => publishers[1].frames.load(Ordering::Relaxed),
    };
    let sent = Sent {
        audio_frames: publishers[0].frames.load(Ordering::Relaxed),
        video_frames,
    };
    let clean = clean_task.await?;
    let impaired = impaired_task.await?;
    if options.progress {
        eprintln!();
    }
    let seconds = options.duration.as_secs_f64();
    drop(publisher);
    Ok(WeakLinkReport {
        scenario: "weak_link",
        duration_s: seconds,
        shape,
        links: *link,
        subscribers: Subscribers {
            clean: subscriber_report(&clean, &sent, seconds, lift),
            impaired: subscriber_report(&impaired, &sent, seconds, lift),
        },
        sent,
        relay_drops: match &cluster {
            // Both relays' counters, summed: the origin's link consumers drop too.
            Some((_, origin)) => match (relay_drops(&url).await, relay_drops(&origin.url).await) {
                (Some(mut drops), Some(more)) => {
                    for (name, n) in more {
                        *drops.entry(name).or_default() += n;
                    }
                    Some(drops)
                }
                (drops, more) => drops.or(more),
            },
            None => relay_drops(&url).await,
        },
        shapers: Shapers {
            impaired_subscriber: subscriber_shaper.stats(),
            publisher: publisher_shaper.as_ref().map(Shaper::stats),
        },
        machine: machine_line(),
        note: SHARED_NOTE,
    })
}

fn describe(l: &LinkConfig) -> String {
    if !l.is_impaired() {
        return "clean".into();
    }
    let mut parts = Vec::new();
    if l.rate_kbps > 0 {
        parts.push(format!(
            "{} kbit/s, queue {} ms",
            l.rate_kbps,
            l.queue.as_millis()
        ));
    }
    if l.loss > 0.0 {
        parts.push(format!("loss {}%", l.loss * 100.0));
    }
    if !l.delay.is_zero() || !l.jitter.is_zero() {
        parts.push(format!(
            "delay {} ± {} ms",
            l.delay.as_millis(),
            l.jitter.as_millis()
        ));
    }
    parts.join(", ")
}

/// The human table.
pub fn print_report(r: &WeakLinkReport) {
    println!(
        "weak-link for {:.0} s — {}; {}",
        r.duration_s, r.machine, r.note
    );
    println!(
        "impaired subscriber: down {}; up {}. publisher uplink: {}",
        describe(&r.links.subscriber_down),
        describe(&r.links.subscriber_up),
        r.links
            .publisher_up
            .as_ref()
            .map_or("clean".into(), describe),
    );
    if r.links.across_relays {
        println!("both subscribers on a second relay of a cluster, the publisher on the first");
    }
    println!(
        "sent {} video frames, {} audio frames",
        r.sent.video_frames, r.sent.audio_frames
    );
    println!(
        "{:<10} {:>6} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10}",
        "subscriber",
        "fps",
        "freezes",
        "frozen ms",
        "v p50 ms",
        "v p90 ms",
        "v p99 ms",
        "v max ms",
        "video",
        "a p50 ms",
        "a p99 ms",
        "audio"
    );
    for (name, s) in [
        ("clean", &r.subscribers.clean),
        ("impaired", &r.subscribers.impaired),
    ] {
        println!(
            "{:<10} {:>6.2} {:>8} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.2}% {:>9.1} {:>9.1} {:>9.2}%",
            name,
            s.video.fps,
            s.video.freezes,
            s.video.freeze_ms,
            s.video.latency_ms.p50,
            s.video.latency_ms.p90,
            s.video.latency_ms.p99,
            s.video.latency_ms.max,
            s.video.delivered_ratio * 100.0,
            s.audio.latency_ms.p50,
            s.audio.latency_ms.p99,
            s.audio.delivered_ratio * 100.0,
        );
    }
    for (name, s) in [
        ("clean", &r.subscribers.clean),
        ("impaired", &r.subscribers.impaired),
    ] {
        if let Some(l) = &s.layers {
            println!(
                "{name}: frames per layer {:?}, {} switches, after {} s: longest gap {:.0} ms, video p50 {:.1} / p99 {:.1} ms{}",
                l.frames_per_layer,
                l.switches,
                SETTLE.as_secs(),
                l.longest_gap_after_settle_ms,
                l.settled_latency_ms.p50,
                l.settled_latency_ms.p99,
                l.back_on_top_s.map_or(String::new(), |s| format!(
                    ", back on the top layer {s} s after the lift"
                )),
            );
        }
    }
    if let Some(drops) = &r.relay_drops {
        let drops: Vec<String> = drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("relay drops: {}", drops.join(", "));
    }
    let shaper_line = |label: &str, s: &ShaperStats| {
        for (dir, l) in [("down", &s.down), ("up", &s.up)] {
            println!(
                "shaper {label} {dir}: {} packets, {} delivered, {} queue drops, {} loss drops, {} overflow drops, longest queue wait {:.1} ms",
                l.packets,
                l.delivered,
                l.queue_drops,
                l.loss_drops,
                l.overflow_drops,
                l.max_queue_wait_us as f64 / 1000.0
            );
        }
    };
    shaper_line("(impaired subscriber)", &r.shapers.impaired_subscriber);
    if let Some(p) = &r.shapers.publisher {
        shaper_line("(publisher)", p);
    }
}
