//! A cluster for the tests: a real redis-server of their own (Debian's `redis-server`,
//! installed by the test command) and relays that share it.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use synapse_sfu::auth::AccessPolicy;
use synapse_sfu::server::{ClusterConfig, Server, ServerConfig, SessionLimits};

use super::{http_get, start_relay_with, test_config};

/// A redis-server of our own on a free port, stopped when dropped.
pub struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (the test command installs Debian's redis-server)");
        let redis = Self { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port free on both UDP and TCP (the relay uses the number for both).
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A relay of the cluster around `redis`; with `span_rooms`, a room hosted elsewhere is
/// mirrored here instead of the client being redirected.
pub async fn relay_in(redis: &Redis, ttl: Duration, span_rooms: bool) -> Server {
    relay_in_with(redis, ttl, span_rooms, AccessPolicy::Development).await
}

/// [`relay_in`] with an access policy (API keys: relays of a cluster share them).
pub async fn relay_in_with(
    redis: &Redis,
    ttl: Duration,
    span_rooms: bool,
    access: AccessPolicy,
) -> Server {
    let port = free_port();
    let bind: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    start_relay_with(ServerConfig {
        bind,
        cluster: Some(ClusterConfig {
            redis_url: redis.url(),
            public_url: format!("https://127.0.0.1:{port}/"),
            lease_ttl: ttl,
            span_rooms,
        }),
        // Every session of the test, shadows of other relays' peers included, comes from
        // 127.0.0.1.
        limits: SessionLimits {
            max_sessions_per_address: 0,
            ..test_config().limits
        },
        access,
        ..test_config()
    })
    .await
}

pub async fn health(server: &Server) -> serde_json::Value {
    serde_json::from_str(&http_get(server, "/healthz").await).unwrap()
}

/// How many of `room`'s peers on `server` are other relays' peers mirrored there (their
/// shadows, docs/CLUSTER.md) whose names start with `named`.
pub fn shadows_on(server: &Server, room: &str, named: &str) -> usize {
    server
        .rooms()
        .room(room)
        .map(|r| {
            r.lock()
                .snapshot()
                .peers
                .iter()
                .filter(|p| p.peer.relay.is_some() && p.peer.name.starts_with(named))
                .count()
        })
        .unwrap_or(0)
}
