//! The configuration of `synapse-sfu serve`, defined once: [`ServeConfig`].
//!
//! Every option is one field of [`ServeConfig`] (or of its [`LimitsConfig`] table) that
//! derives both `clap::Args` — its flag, its `SYNAPSE_*` environment variable, its default
//! and its help — and serde's `Deserialize`/`Serialize`, under the same name, for the
//! `--config` TOML file. Adding an option means adding one field here.
//!
//! # Where a value comes from
//!
//! A command-line flag wins over an environment variable, which wins over the config file,
//! which wins over the default. Clap already does flag > environment > default; the file
//! is slotted in by [`ServeConfig::with_file`], generically, without a line per option:
//!
//! 1. The file is deserialized on its own into a `ServeConfig`. Fields it does not set take
//!    their defaults (`#[serde(default)]`, with [`Default`] taken from clap's own defaults,
//!    so there is one default per option). This is also where the file is checked: unknown
//!    keys are errors (`deny_unknown_fields`, so a typo does not silently leave a default in
//!    place), durations are text ("5s", "400ms"), values go through the same parsers as the
//!    flags, and errors name the key, line and column.
//! 2. Then every option whose clap `value_source` is the command line or the environment
//!    is copied over it: both configurations are turned into `serde_json::Value`s, and for
//!    each clap argument id the value at the key of the same name (`/bind`,
//!    `/limits/max_rooms`, found by name, at any depth) is taken from the command line's
//!    side. The result is deserialized back.
//!
//! This relies on each clap argument id being the serde key of its field (both are the
//! field's name; neither side renames), which a test checks for every option.
//!
//! # The file
//!
//! ```toml
//! bind = "[::]:4443"
//! drain = "5s"
//! congestion_controller = "bbr"
//! api_key = "APIxyz"
//!
//! [limits]
//! max_peers_per_room = 100
//! idle_timeout = "30s"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::AccessPolicy;
use crate::core::{Limits, RelayConfig};
use crate::server::{CongestionController, ServerConfig, SessionLimits};

/// The options of `synapse-sfu serve`: flags, `SYNAPSE_*` environment variables and keys
/// of the `--config` TOML file (the module documentation has the precedence).
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// A TOML file of these options (flags and environment variables win over it).
    #[arg(long, env = "SYNAPSE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// UDP (WebTransport) and TCP (HTTP) address; both use the same port number.
    #[arg(long, env = "SYNAPSE_BIND", default_value = "[::]:4443")]
    pub bind: SocketAddr,
    /// TLS certificate chain (PEM). Without it, a development certificate is generated.
    #[arg(long, env = "SYNAPSE_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "SYNAPSE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Where the development certificate is kept.
    #[arg(long, env = "SYNAPSE_CERTS_DIR", default_value = "certs")]
    pub certs_dir: PathBuf,
    /// Serve the web client from this directory instead of the copy built into the binary
    /// (for development: edit a file, reload the page).
    #[arg(long, env = "SYNAPSE_WEB_ROOT")]
    pub web_root: Option<PathBuf>,
    /// On SIGINT/SIGTERM, how long peers get to leave before the relay closes them.
    #[arg(long, env = "SYNAPSE_DRAIN", default_value = "5s", value_parser = humantime::parse_duration)]
    #[serde(with = "text::duration")]
    pub drain: Duration,
    /// Congestion controller of every connection: cubic, new-reno or bbr (docs/BENCHMARKS.md
    /// has the measurements behind the default).
    #[arg(long, env = "SYNAPSE_CONGESTION_CONTROLLER", default_value = "bbr")]
    #[serde(with = "text::congestion_controller")]
    pub congestion_controller: CongestionController,
    /// Video that has waited longer in the relay is skipped; the subscriber restarts at a
    /// keyframe instead of falling further behind.
    #[arg(long, env = "SYNAPSE_VIDEO_LATENCY_BOUND", default_value = "400ms", value_parser = latency_bound)]
    #[serde(with = "text::latency_bound")]
    pub video_latency_bound: Duration,
    /// The same for audio.
    #[arg(long, env = "SYNAPSE_AUDIO_LATENCY_BOUND", default_value = "200ms", value_parser = latency_bound)]
    #[serde(with = "text::latency_bound")]
    pub audio_latency_bound: Duration,
    /// How long a peer whose connection dropped keeps its place (its id, its producers) for
    /// its client to reconnect and resume; 0 turns resumption off.
    #[arg(long, env = "SYNAPSE_RECONNECT_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    #[serde(with = "text::duration")]
    pub reconnect_grace: Duration,
    /// QUIC endpoints sharing the UDP port (SO_REUSEPORT), each with its own driver; 0: one
    /// per core (docs/ARCHITECTURE.md).
    #[arg(long, env = "SYNAPSE_ENDPOINTS", default_value_t = 1)]
    pub endpoints: usize,
    /// Worker threads of the relay's runtime; 0: one per core.
    #[arg(long, env = "SYNAPSE_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// API key: the issuer of access tokens. With a secret, joins require tokens.
    #[arg(long, env = "SYNAPSE_API_KEY")]
    pub api_key: Option<String>,
    /// API secret that signs access tokens (HS256).
    #[arg(long, env = "SYNAPSE_API_SECRET", hide_env_values = true)]
    pub api_secret: Option<String>,
    /// POST room events (room started and finished, peers joined and left, producers added
    /// and closed) to these URLs; signed with the API secret when there is one. Repeat the
    /// flag, or separate with commas.
    #[arg(
        long = "webhook-url",
        env = "SYNAPSE_WEBHOOK_URLS",
        value_delimiter = ','
    )]
    pub webhook_urls: Vec<String>,
    /// Join a cluster of relays placed through this Redis (`redis://host:port/`): rooms are
    /// hosted by one relay each, and a join at another relay is redirected
    /// (docs/CLUSTER.md). Needs --public-url.
    #[arg(long, env = "SYNAPSE_REDIS_URL", requires = "public_url")]
    pub redis_url: Option<String>,
    /// The URL clients reach this relay at (`https://host:port/`), for redirects to it.
    #[arg(long, env = "SYNAPSE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long a relay's registration and its room leases live without renewal.
    #[arg(long, env = "SYNAPSE_LEASE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "text::duration")]
    pub lease_ttl: Duration,
    /// In a cluster, admit a join for a room hosted by another relay here, and mirror the
    /// room from that relay (one pull per producer per relay) instead of redirecting the
    /// client: rooms larger than one relay (docs/CLUSTER.md).
    #[arg(long, env = "SYNAPSE_SPAN_ROOMS", requires = "redis_url")]
    #[serde(default)]
    pub span_rooms: bool,
    /// The `[limits]` table of the file.
    #[command(flatten)]
    pub limits: LimitsConfig,
}

/// Limits; 0 means unlimited where it makes sense.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Peers in one room; more get `room_full`.
    #[arg(long, env = "SYNAPSE_MAX_PEERS_PER_ROOM", default_value_t = 1000)]
    pub max_peers_per_room: usize,
    /// Rooms on this relay; a join that would open one more gets `too_many_rooms`.
    #[arg(long, env = "SYNAPSE_MAX_ROOMS", default_value_t = 10_000)]
    pub max_rooms: usize,
    /// Producers of one peer; more get `too_many_producers`.
    #[arg(long, env = "SYNAPSE_MAX_PRODUCERS_PER_PEER", default_value_t = 16)]
    pub max_producers_per_peer: usize,
    /// Control requests per second per peer (bursts of twice that); more get `rate_limited`.
    #[arg(long, env = "SYNAPSE_MAX_REQUESTS_PER_SECOND", default_value_t = 50)]
    pub max_requests_per_second: u32,
    /// Media bits per second per producer; frames beyond are dropped (`bitrate_exceeded`).
    #[arg(
        long,
        env = "SYNAPSE_MAX_PRODUCER_BITRATE",
        default_value_t = 20_000_000
    )]
    pub max_producer_bitrate: u64,
    /// Open sessions per source IP address; more are refused (HTTP 429).
    #[arg(long, env = "SYNAPSE_MAX_SESSIONS_PER_ADDRESS", default_value_t = 100)]
    pub max_sessions_per_address: usize,
    /// Largest video frame payload, bytes.
    #[arg(long, env = "SYNAPSE_MAX_FRAME_SIZE", default_value_t = 2 * 1024 * 1024)]
    pub max_frame_size: usize,
    /// Largest audio datagram, header included, bytes (browsers allow about 1200).
    #[arg(long, env = "SYNAPSE_MAX_DATAGRAM_SIZE", default_value_t = 1200)]
    pub max_datagram_size: usize,
    /// Largest control message, bytes; a larger one disconnects the peer.
    #[arg(long, env = "SYNAPSE_MAX_CONTROL_MESSAGE", default_value_t = 64 * 1024)]
    pub max_control_message: usize,
    /// A silent connection is dropped after this long.
    #[arg(long, env = "SYNAPSE_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "text::duration")]
    pub idle_timeout: Duration,
}

/// Clap's defaults of `T`'s arguments, the environment left out.
fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(Command::new("defaults")).mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every option has a valid default");
    T::from_arg_matches(&matches).expect("every option has a valid default")
}

/// The defaults of the flags (the environment left out): what the file's absent keys mean.
impl Default for ServeConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

impl ServeConfig {
    /// Applies the `--config` file, if one was named, under every option that `matches`
    /// (the parse that produced `self`) got from the command line or the environment:
    /// flag > environment > file > default.
    pub fn with_file(self, matches: &ArgMatches) -> Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let file = Self::from_toml(&text)
            .with_context(|| format!("parsing the config file {}", path.display()))?;
        let mut merged = file.overlay(&self, |id| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })?;
        merged.config = Some(path);
        Ok(merged)
    }

    /// The options a TOML text sets, over the defaults (no environment, no flags).
    pub fn from_toml(text: &str) -> Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// `self`, with every option for whose clap id `take(id)` holds taken from `top`.
    fn overlay(&self, top: &Self, take: impl Fn(&str) -> bool) -> Result<Self> {
        let mut merged = serde_json::to_value(self)?;
        let top = serde_json::to_value(top)?;
        for id in Self::option_ids() {
            if !take(&id) {
                continue;
            }
            let pointer = pointer_to(&top, &id)
                .with_context(|| format!("option {id} has no key of that name"))?;
            let value = top.pointer(&pointer).cloned().unwrap_or(Value::Null);
            *merged
                .pointer_mut(&pointer)
                .with_context(|| format!("option {id} missing"))? = value;
        }
        Ok(serde_json::from_value(merged)?)
    }

    /// The clap ids of the options (all but `config`, which names the file).
    fn option_ids() -> Vec<String> {
        Self::augment_args(Command::new("serve"))
            .get_arguments()
            .map(|arg| arg.get_id().as_str().to_owned())
            .filter(|id| id != "config")
            .collect()
    }

    /// What the library's [`crate::server::Server`] takes. `drain` and `threads` are the
    /// caller's (the runtime and the shutdown are not the server's).
    pub fn server_config(&self) -> Result<ServerConfig> {
        let limits = &self.limits;
        Ok(ServerConfig {
            bind: self.bind,
            cert: self.cert.clone(),
            key: self.key.clone(),
            certs_dir: self.certs_dir.clone(),
            web_root: self.web_root.clone(),
            access: AccessPolicy::from_env_pair(self.api_key.clone(), self.api_secret.clone())
                .map_err(anyhow::Error::msg)?,
            congestion_controller: self.congestion_controller,
            endpoints: self.endpoints,
            webhook_urls: self.webhook_urls.clone(),
            cluster: match (&self.redis_url, &self.public_url) {
                (Some(redis_url), Some(public_url)) => Some(crate::server::ClusterConfig {
                    redis_url: redis_url.clone(),
                    public_url: public_url.clone(),
                    lease_ttl: self.lease_ttl,
                    span_rooms: self.span_rooms,
                }),
                (Some(_), None) => anyhow::bail!("--redis-url needs --public-url"),
                _ => None,
            },
            relay: RelayConfig {
                max_datagram_size: limits.max_datagram_size,
                max_frame_size: limits.max_frame_size,
                video_latency_bound: self.video_latency_bound,
                audio_latency_bound: self.audio_latency_bound,
                reconnect_grace: self.reconnect_grace,
                limits: Limits {
                    max_peers_per_room: limits.max_peers_per_room,
                    max_rooms: limits.max_rooms,
                    max_producers_per_peer: limits.max_producers_per_peer,
                    max_requests_per_second: limits.max_requests_per_second,
                    max_producer_bitrate: limits.max_producer_bitrate,
                },
                ..RelayConfig::default()
            },
            limits: SessionLimits {
                max_control_message: limits.max_control_message,
                idle_timeout: limits.idle_timeout,
                max_sessions_per_address: limits.max_sessions_per_address,
                ..SessionLimits::default()
            },
            ..ServerConfig::default()
        })
    }
}

/// The JSON pointer of the first key named `key` in `value`'s objects, at any depth.
fn pointer_to(value: &Value, key: &str) -> Option<String> {
    let object = value.as_object()?;
    if object.contains_key(key) {
        return Some(format!("/{key}"));
    }
    object
        .iter()
        .find_map(|(name, inner)| pointer_to(inner, key).map(|p| format!("/{name}{p}")))
}

/// A latency bound: a duration from 10 ms to 60 s (0 would skip every frame; a huge one
/// is no bound at all).
pub fn latency_bound(input: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(input).map_err(|e| e.to_string())?;
    if (Duration::from_millis(10)..=Duration::from_secs(60)).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "a latency bound must be between 10 ms and 60 s, not {}",
            humantime::format_duration(d)
        ))
    }
}

/// Values that the file writes as text, parsed as their flags are.
mod text {
    use std::fmt::Display;

    use serde::{Deserialize, Deserializer, de::Error};

    fn parse<'de, D: Deserializer<'de>, T, E: Display>(
        d: D,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(|e| D::Error::custom(format!("{text:?}: {e}")))
    }

    pub mod duration {
        use std::time::Duration;

        use serde::{Deserializer, Serializer};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            super::parse(d, humantime::parse_duration)
        }

        pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&humantime::format_duration(*value))
        }
    }

    pub mod latency_bound {
        use std::time::Duration;

        use serde::Deserializer;

        pub use super::duration::serialize;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            super::parse(d, crate::config::latency_bound)
        }
    }

    pub mod congestion_controller {
        use serde::{Deserializer, Serializer};

        use crate::server::CongestionController;

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<CongestionController, D::Error> {
            super::parse(d, str::parse::<CongestionController>)
        }

        /// By its variant's name, which `FromStr` reads back ("NewReno" is "new-reno").
        pub fn serialize<S: Serializer>(
            value: &CongestionController,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.collect_str(&format_args!("{value:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `serve` arguments as the binary does, without applying a file.
    fn parse(args: &[&str]) -> (ServeConfig, ArgMatches) {
        let command = ServeConfig::augment_args(Command::new("serve"));
        let matches = command
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap();
        (ServeConfig::from_arg_matches(&matches).unwrap(), matches)
    }

    /// The generic merge relies on every option's clap id being a serde key; this is what
    /// breaks if a field is renamed on one side only.
    #[test]
    fn every_option_id_is_a_key_of_the_file() {
        let value = serde_json::to_value(ServeConfig::default()).unwrap();
        let ids = ServeConfig::option_ids();
        assert!(ids.len() >= 20, "{ids:?}");
        for id in &ids {
            assert!(pointer_to(&value, id).is_some(), "no key {id} in {value}");
        }
        let mut leaves = 0;
        for (key, v) in value.as_object().unwrap() {
            leaves += match v.as_object() {
                Some(table) => table.len(),
                None => 1,
            };
            assert!(ids.contains(key) || key == "limits", "{key} is no option");
        }
        assert_eq!(leaves, ids.len());
    }

    #[test]
    fn defaults_are_the_flags_defaults_and_round_trip_through_the_file() {
        let d = ServeConfig::default();
        assert_eq!(d.bind, "[::]:4443".parse().unwrap());
        assert_eq!(d.drain, Duration::from_secs(5));
        assert_eq!(d.limits.max_peers_per_room, 1000);
        assert_eq!(d.limits.idle_timeout, Duration::from_secs(10));
        assert_eq!(ServeConfig::from_toml("").unwrap(), d);
        let text = toml::to_string(&d).unwrap();
        assert!(text.contains("drain = \"5s\""), "{text}");
        assert!(text.contains("[limits]"), "{text}");
        assert_eq!(ServeConfig::from_toml(&text).unwrap(), d);
        for cc in ["cubic", "new-reno", "bbr"] {
            let c = ServeConfig::from_toml(&format!("congestion_controller = {cc:?}")).unwrap();
            let back = ServeConfig::from_toml(&toml::to_string(&c).unwrap()).unwrap();
            assert_eq!(back.congestion_controller, c.congestion_controller);
        }
    }

    #[test]
    fn the_file_is_checked_and_its_errors_name_the_key() {
        let c = ServeConfig::from_toml(
            "drain = \"1s\"\nbind = \"127.0.0.1:1\"\n[limits]\nmax_rooms = 3\nidle_timeout = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(c.drain, Duration::from_secs(1));
        assert_eq!(c.bind, "127.0.0.1:1".parse().unwrap());
        assert_eq!(c.limits.max_rooms, 3);
        assert_eq!(c.limits.max_peers_per_room, 1000);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(120));
        for (text, wanted) in [
            ("bnid = \"127.0.0.1:1\"", "bnid"),
            ("[limits]\nmax_room = 3", "max_room"),
            ("max_rooms = 3", "max_rooms"),
            ("drain = \"5 parsecs\"", "5 parsecs"),
            ("drain = 5", "drain"),
            ("video_latency_bound = \"5ms\"", "between 10 ms and 60 s"),
            ("congestion_controller = \"vegas\"", "vegas"),
            ("[limits]\nmax_rooms = \"many\"", "max_rooms"),
        ] {
            let e = format!("{:#}", ServeConfig::from_toml(text).unwrap_err());
            assert!(e.contains(wanted), "{text:?}: {e}");
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("synapse-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serve.toml");
        std::fs::write(
            &path,
            "drain = \"1s\"\nendpoints = 2\n[limits]\nmax_rooms = 3\nmax_frame_size = 7\n",
        )
        .unwrap();
        let path_arg = path.to_str().unwrap();
        let (args, matches) = parse(&[
            "--config",
            path_arg,
            "--drain",
            "3s",
            "--max-rooms",
            "4",
            "--threads",
            "2",
        ]);
        let c = args.with_file(&matches).unwrap();
        assert_eq!(c.drain, Duration::from_secs(3), "flag over file");
        assert_eq!(c.limits.max_rooms, 4, "flag over file, in [limits]");
        assert_eq!(c.threads, 2, "flag over default");
        assert_eq!(c.endpoints, 2, "file over default");
        assert_eq!(c.limits.max_frame_size, 7, "file over default, in [limits]");
        assert_eq!(c.limits.max_peers_per_room, 1000, "default");
        assert_eq!(c.config.as_deref(), Some(path.as_path()));
        // A flag that says what the default says still wins over the file.
        let (args, matches) = parse(&["--config", path_arg, "--drain", "5s"]);
        assert_eq!(
            args.with_file(&matches).unwrap().drain,
            Duration::from_secs(5)
        );

        let server = c.server_config().unwrap();
        assert_eq!(server.endpoints, 2);
        assert_eq!(server.relay.limits.max_rooms, 4);
        assert_eq!(server.relay.max_frame_size, 7);

        let (args, matches) = parse(&["--config", dir.join("absent.toml").to_str().unwrap()]);
        let e = format!("{:#}", args.with_file(&matches).unwrap_err());
        assert!(e.contains("absent.toml"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
