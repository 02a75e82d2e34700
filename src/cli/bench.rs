//! `synapse-sfu bench`: its flags, and what it prints.

use std::path::PathBuf;
use std::time::Duration;
use synapse_sfu::transport::TransportKind;

use anyhow::Result;
use clap::Subcommand;
use synapse_sfu::shaper::{self, LinkConfig};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: BenchScenario,
    /// How long publishers send, once every consumer is in place.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Benchmark an external relay instead of starting one.
    #[arg(long, global = true)]
    url: Option<String>,
    /// Pin this certificate SHA-256 of the external relay (default: fetch it).
    #[arg(long, global = true)]
    cert_hash: Option<String>,
    /// Relay binary to start (default: this one).
    #[arg(long, global = true)]
    relay_bin: Option<PathBuf>,
    /// More `serve` arguments for the started relay, whitespace-separated
    /// (e.g. "--congestion-controller bbr").
    #[arg(long, global = true, allow_hyphen_values = true, default_value = "")]
    relay_args: String,
    /// Synthetic video bitrate per publisher, bits per second.
    #[arg(long, global = true, default_value_t = 1_000_000)]
    video_bitrate: u64,
    /// Synthetic video frame rate.
    #[arg(long, global = true, default_value_t = 30)]
    fps: u32,
    /// Synthetic audio bitrate per publisher, bits per second; 0 publishes no audio track
    /// (video only, as moq-bench's workload).
    #[arg(long, global = true, default_value_t = 48_000)]
    audio_bitrate: u64,
    /// Time between synthetic audio frames (the bitrate holds: frames grow with it).
    #[arg(long, global = true, default_value = "20ms", value_parser = humantime::parse_duration)]
    audio_frame_interval: Duration,
    /// Skip the direct-QUIC and raw-UDP baselines (fan-out).
    #[arg(long, global = true)]
    no_baselines: bool,
    /// No progress line.
    #[arg(long, global = true)]
    quiet: bool,
    /// What carries the peers' sessions: `wt` (WebTransport, the default) or `ws` (the
    /// WebSocket fallback), to measure what the fallback costs.
    #[arg(long, global = true, default_value = "wt")]
    transport: synapse_sfu::transport::TransportKind,
    /// Subscribers that publish nothing, and the direct path's receivers, share one loop
    /// over one socket, on QUIC directly, instead of each being a full client: the load
    /// generator then takes less of the machine it shares with the relay, and adds less
    /// latency of its own to either path (WebTransport only).
    #[arg(long, global = true)]
    lean_subscribers: bool,
}

#[derive(Subcommand)]
pub(crate) enum BenchScenario {
    /// One publisher (video + audio) to N subscribers.
    Fanout {
        #[arg(long, default_value_t = 50)]
        subscribers: usize,
        /// Search for the largest N whose p99 stays under --p99-bound with ≥ 99.9% delivered.
        #[arg(long)]
        capacity: bool,
        /// The p99 latency bound of --capacity, milliseconds.
        #[arg(long, default_value_t = 50.0)]
        p99_bound: f64,
    },
    /// M peers, each publishing video + audio and consuming all the others.
    Meeting {
        #[arg(long, default_value_t = 4)]
        peers: usize,
        /// Every peer publishes three simulcast layers (1/8, 3/8 and all of the bitrate).
        #[arg(long)]
        simulcast: bool,
        /// Every consumer prefers 320x180 (a grid of thumbnails); implies --simulcast.
        #[arg(long)]
        thumbnails: bool,
    },
    /// R rooms of P audio-only peers.
    Rooms {
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        #[arg(long, default_value_t = 5)]
        peers: usize,
    },
    /// One publisher on relay 1 and N subscribers spread over R relays that span the room
    /// (`serve --span-rooms`, with a redis-server the bench starts): what a hop adds, and
    /// each relay's CPU.
    Cluster {
        #[arg(long, default_value_t = 300)]
        subscribers: usize,
        #[arg(long, default_value_t = 3)]
        relays: usize,
    },
    /// One publisher to a subscriber on a clean link and one through a shaper, side by side:
    /// fps, freezes, latency, delivery of each.
    WeakLink(WeakLinkArgs),
}

#[derive(clap::Args)]
pub(crate) struct WeakLinkArgs {
    /// Rate limit of the impaired subscriber's downlink, kbit/s (e.g. 700, 2mbit).
    #[arg(long, value_parser = shaper::parse_rate_kbps)]
    down_kbps: Option<u64>,
    /// Its drop-tail queue, as time at that rate.
    #[arg(long, default_value = "200ms", value_parser = shaper::parse_duration)]
    down_queue: Duration,
    /// Random loss on the impaired subscriber's link, each way (0.03 or 3%).
    #[arg(long, default_value = "0", value_parser = shaper::parse_loss)]
    loss: f64,
    /// One-way delay on the impaired subscriber's link, each way.
    #[arg(long, default_value = "0ms", value_parser = shaper::parse_duration)]
    delay: Duration,
    /// The delay varies by up to this either way (never reorders).
    #[arg(long, default_value = "0ms", value_parser = shaper::parse_duration)]
    jitter: Duration,
    /// Rate limit of the PUBLISHER's uplink, kbit/s: it then goes through a shaper too.
    #[arg(long, value_parser = shaper::parse_rate_kbps)]
    up_kbps: Option<u64>,
    /// The publisher uplink's drop-tail queue, as time at that rate.
    #[arg(long, default_value = "200ms", value_parser = shaper::parse_duration)]
    up_queue: Duration,
    /// Seeds the shapers' random losses and jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The publisher sends three simulcast layers (1/8, 3/8 and all of the video bitrate).
    #[arg(long)]
    simulcast: bool,
    /// Lift the impaired subscriber's rate limit after this long (loss and delay stay).
    #[arg(long, value_parser = humantime::parse_duration)]
    lift_after: Option<Duration>,
    /// The subscribers on a second relay of a cluster, the publisher on the first (the
    /// bench starts both and a redis-server): the media crosses a link first.
    #[arg(long)]
    across_relays: bool,
}

impl WeakLinkArgs {
    fn links(&self) -> synapse_sfu::bench::weak_link::WeakLink {
        let impaired = LinkConfig {
            loss: self.loss,
            delay: self.delay,
            jitter: self.jitter,
            ..LinkConfig::default()
        };
        synapse_sfu::bench::weak_link::WeakLink {
            subscriber_up: impaired,
            subscriber_down: LinkConfig {
                rate_kbps: self.down_kbps.unwrap_or(0),
                queue: self.down_queue,
                ..impaired
            },
            publisher_up: self.up_kbps.map(|rate_kbps| LinkConfig {
                rate_kbps,
                queue: self.up_queue,
                ..LinkConfig::default()
            }),
            seed: self.seed,
            simulcast: self.simulcast,
            across_relays: self.across_relays,
            lift_after: self.lift_after,
        }
    }
}

pub(crate) async fn run_bench(args: BenchArgs) -> Result<()> {
    use synapse_sfu::bench::{self, BenchOptions, Scenario, Shape};
    let (scenario, capacity) = match args.scenario {
        BenchScenario::Fanout {
            subscribers,
            capacity,
            p99_bound,
        } => (
            Scenario::Fanout { subscribers },
            capacity.then_some(p99_bound),
        ),
        BenchScenario::Meeting {
            peers,
            simulcast,
            thumbnails,
        } => (
            Scenario::Meeting {
                peers,
                simulcast: simulcast || thumbnails,
                thumbnails,
            },
            None,
        ),
        BenchScenario::Rooms { rooms, peers } => (Scenario::Rooms { rooms, peers }, None),
        BenchScenario::WeakLink(_) => (Scenario::WeakLink, None),
        BenchScenario::Cluster { subscribers, .. } => (Scenario::Fanout { subscribers }, None),
    };
    if args.audio_bitrate == 0 && matches!(scenario, Scenario::Rooms { .. } | Scenario::WeakLink) {
        anyhow::bail!(
            "--audio-bitrate 0 leaves this scenario nothing to measure (rooms are audio only, weak-link measures audio too)"
        );
    }
    if args.lean_subscribers && args.transport != TransportKind::WebTransport {
        anyhow::bail!("--lean-subscribers speak WebTransport only; leave out --transport ws");
    }
    let options = BenchOptions {
        scenario,
        duration: args.duration,
        shape: Shape {
            video_bitrate: args.video_bitrate,
            fps: args.fps,
            audio_bitrate: args.audio_bitrate,
            audio_frame_interval: args.audio_frame_interval,
            ..Shape::default()
        },
        url: args.url,
        cert_hash: args.cert_hash,
        relay_bin: args.relay_bin,
        relay_args: args
            .relay_args
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        baselines: !args.no_baselines,
        progress: !args.quiet,
        transport: args.transport,
        lean_subscribers: args.lean_subscribers,
    };
    if let BenchScenario::Cluster {
        subscribers,
        relays,
    } = args.scenario
    {
        let report = bench::cluster::run(&options, subscribers, relays).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            bench::cluster::print_report(&report);
        }
        return Ok(());
    }
    if let BenchScenario::WeakLink(link) = &args.scenario {
        let report = bench::weak_link::run(&options, &link.links()).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            bench::weak_link::print_report(&report);
        }
        return Ok(());
    }
    if let (Some(bound), Scenario::Fanout { subscribers }) = (capacity, scenario) {
        let report = bench::capacity(&options, subscribers, bound).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for t in &report.trials {
                println!(
                    "{:>6} subscribers: p99 {:>8.3} ms, delivered {:>7.3}%  {}",
                    t.subscribers,
                    t.p99_ms,
                    t.delivered_ratio * 100.0,
                    if t.passed { "pass" } else { "fail" }
                );
            }
            println!(
                "capacity: {} subscribers (p99 ≤ {} ms, ≥ 99.9% delivered) — {}; {}",
                report.capacity, report.p99_bound_ms, report.machine, report.note
            );
        }
        return Ok(());
    }
    let report = bench::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        bench::print_report(&report);
    }
    Ok(())
}
