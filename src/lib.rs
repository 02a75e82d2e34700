//! Synapse SFU: a selective forwarding unit for audio and video over QUIC and WebTransport.
//!
//! Layout, one line a module:
//! - [`core`]: the sans-IO relay state and forwarding policy: one `Room` per room (peers,
//!   producers, consumers, queues, simulcast, keyframe requests) and the directory of rooms.
//! - [`wire`]: control messages and media frame formats; the only parser of untrusted bytes.
//! - [`server`]: the WebTransport endpoints, HTTP side, TLS identity, the per-room locks
//!   and the tasks that drive `core` (docs/ARCHITECTURE.md).
//! - [`config`]: the `serve` configuration (flags, environment, TOML file), defined once.
//! - [`group`]: reading and writing group streams, shared by the relay and the client.
//! - [`client`]: a native client library on the same `wire` module, and the `join` command.
//! - [`auth`]: access tokens (JWT) and the development-mode policy.
//! - [`bench`]: the load generator and report of `synapse-sfu bench`.
//! - [`transport`]: a session over WebTransport or, as the fallback, one WebSocket; the
//!   session code of the relay and the client is written once against it.
//! - [`shaper`]: a UDP proxy that impairs a link (rate, queue, loss, delay, jitter), for
//!   tests and benchmarks on a bad network.

pub mod core;
#[doc(hidden)]
pub mod fuzzing;
pub mod wire;

// The IO edges. Without the `net` feature (default on) the crate is the sans-IO core and the
// wire codec alone: what the fuzz targets build.
#[cfg(feature = "net")]
pub mod auth;
#[cfg(feature = "net")]
pub mod bench;
#[cfg(feature = "net")]
pub mod client;
#[cfg(feature = "net")]
pub mod config;
#[cfg(feature = "net")]
pub mod group;
#[cfg(feature = "net")]
pub mod server;
#[cfg(feature = "net")]
pub mod shaper;
#[cfg(feature = "net")]
pub mod transport;
