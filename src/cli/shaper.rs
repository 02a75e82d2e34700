//! `synapse-sfu shaper`: the network shaper as a command.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use synapse_sfu::shaper::{self, LinkConfig, Shaper, ShaperConfig};

/// One direction of a shaped link, as flags with a prefix (`--down-…`, `--up-…`).
macro_rules! link_args {
    ($name:ident, $dir:literal, $kbps:ident, $queue:ident, $loss:ident, $delay:ident, $jitter:ident) => {
        #[derive(clap::Args)]
        struct $name {
            #[arg(
                long,
                help = concat!("Rate limit ", $dir, ", kbit/s (e.g. 700, 2mbit); none by default."),
                value_parser = shaper::parse_rate_kbps)]
            $kbps: Option<u64>,
            #[arg(
                long,
                help = concat!("Drop-tail queue ", $dir, ", as time at the rate limit."),
                default_value = "200ms", value_parser = shaper::parse_duration)]
            $queue: Duration,
            #[arg(
                long,
                help = concat!("Random loss ", $dir, " (0.03 or 3%)."),
                default_value = "0", value_parser = shaper::parse_loss)]
            $loss: f64,
            #[arg(
                long,
                help = concat!("One-way delay ", $dir, "."),
                default_value = "0ms", value_parser = shaper::parse_duration)]
            $delay: Duration,
            #[arg(
                long,
                help = concat!("Delay varies by up to this either way ", $dir, " (never reorders)."),
                default_value = "0ms", value_parser = shaper::parse_duration)]
            $jitter: Duration,
        }

        impl $name {
            fn link(&self) -> LinkConfig {
                LinkConfig {
                    rate_kbps: self.$kbps.unwrap_or(0),
                    queue: self.$queue,
                    loss: self.$loss,
                    delay: self.$delay,
                    jitter: self.$jitter,
                    ..LinkConfig::default()
                }
            }
        }
    };
}

link_args!(
    DownLinkArgs,
    "relay → client",
    down_kbps,
    down_queue,
    down_loss,
    down_delay,
    down_jitter
);
link_args!(
    UpLinkArgs,
    "client → relay",
    up_kbps,
    up_queue,
    up_loss,
    up_delay,
    up_jitter
);

#[derive(clap::Args)]
pub(crate) struct ShaperArgs {
    /// Where clients send (their URL's host and port).
    #[arg(long)]
    listen: SocketAddr,
    /// The relay's UDP address.
    #[arg(long, default_value = "127.0.0.1:4443")]
    upstream: SocketAddr,
    #[command(flatten)]
    down: DownLinkArgs,
    #[command(flatten)]
    up: UpLinkArgs,
    /// Seeds the random losses and jitter (the same seed repeats them).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub(crate) async fn run_shaper(args: ShaperArgs) -> Result<()> {
    let shaper = Shaper::start(ShaperConfig {
        listen: args.listen,
        upstream: args.upstream,
        up: args.up.link(),
        down: args.down.link(),
        seed: args.seed,
    })
    .await?;
    // One line on stdout, for scripts and tests to wait for and parse.
    println!("shaper listening on {}", shaper.local_addr());
    let signal = crate::shutdown_signal().await?;
    let stats = shaper.stats();
    eprintln!(
        "{signal}: shaper stopping after {} client(s); down: {} of {} packets delivered \
         ({} queue, {} loss drops); up: {} of {} ({} queue, {} loss drops)",
        stats.flows,
        stats.down.delivered,
        stats.down.packets,
        stats.down.queue_drops,
        stats.down.loss_drops,
        stats.up.delivered,
        stats.up.packets,
        stats.up.queue_drops,
        stats.up.loss_drops
    );
    Ok(())
}
