//! Several relays acting as one deployment: which relay hosts which room, agreed in Redis
//! (docs/CLUSTER.md). Each relay registers itself (its public URL and load) under a key
//! that expires unless renewed; a room is hosted by the relay that holds its lease, a key
//! claimed atomically, renewed while the room has peers and released when it closes, and
//! taken over once its holder's registration has expired (the holder died).
//!
//! Fencing: every claim takes a new number from one counter, and a relay counts a lease
//! as its own only until `renewed at + TTL − margin` by its own clock, so after a
//! partition it stops admitting joins to the room before anyone else can claim it; the
//! lease value (`relay:fence`) makes a renewal or release by a stale holder a no-op.
//! Calls in progress are never dropped for Redis' sake: a relay that cannot reach Redis
//! keeps its rooms and admits joins to them (availability over a second opinion), and
//! claims what it hosts once Redis is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::Rooms;

const RELAY_KEY: &str = "synapse:relay:";
const ROOM_KEY: &str = "synapse:room:";
const FENCE_KEY: &str = "synapse:fence";
/// A Redis call that takes longer counts as Redis being unreachable: a join never waits
/// on it for longer.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the cluster is and who this relay is in it.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port/` of the shared Redis.
    pub redis_url: String,
    /// The URL clients use to reach this relay (what a redirect to it names).
    pub public_url: String,
    /// Lifetime of a registration and of a room lease without renewal; renewed every
    /// third of it.
    pub lease_ttl: Duration,
    /// A join for a room hosted elsewhere is admitted here, and the room spans the two
    /// relays (`span.rs`); off: the client is redirected.
    pub span_rooms: bool,
}

/// What `place` decided for a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// This relay hosts the room (it holds the lease, or has just claimed it).
    Here,
    /// Another relay hosts it: the client should join there (or this relay mirror it,
    /// `span.rs`).
    Elsewhere { relay_url: String, relay_id: String },
    /// Redis could not be asked: the room is hosted here for now.
    Unknown,
}

/// A relay's registration, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub url: String,
    pub peers: usize,
    pub rooms: usize,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    fence: u64,
    /// This relay treats the room as its own until then.
    valid_until: Instant,
}

/// What `/healthz` and `/metrics` show of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub relay_id: String,
    pub redis: &'static str,
    pub leases: usize,
}

/// This relay's side of the placement.
pub struct Placement {
    config: ClusterConfig,
    relay_id: String,
    redis: ConnectionManager,
    leases: Mutex<HashMap<String, Lease>>,
    /// Whether the last Redis call succeeded.
    reachable: std::sync::atomic::AtomicBool,
}

/// Claims a room: keeps it if this relay holds it, takes it if free or if its holder's
/// registration is gone. Returns the holder and the lease's fence number.
const CLAIM: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local owner, fence = string.match(current, '^([^:]+):(%d+)$')
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {owner, fence}
  end
  if owner and redis.call('EXISTS', ARGV[3] .. owner) == 1 then
    return {owner, fence}
  end
end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
return {ARGV[1], tostring(fence)}
";

/// Extends a lease only if it is still the one this relay took.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes a lease only if it is still the one this relay took.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

impl Placement {
    /// Connects to Redis (it must answer now; later outages are ridden out) and registers.
    pub async fn connect(config: ClusterConfig) -> Result<Arc<Self>> {
        let client = redis::Client::open(config.redis_url.as_str())
            .with_context(|| format!("the Redis URL {:?}", config.redis_url))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let redis = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, manager),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot reach Redis at {}", config.redis_url))?;
        let relay_id = format!("{:016x}", rand::random::<u64>());
        let placement = Arc::new(Self {
            config,
            relay_id,
            redis,
            leases: Mutex::default(),
            reachable: true.into(),
        });
        placement
            .register(Registration {
                url: placement.config.public_url.clone(),
                peers: 0,
                rooms: 0,
            })
            .await
            .context("registering the relay in Redis")?;
        info!(relay_id = %placement.relay_id, url = %placement.config.public_url, "registered in the cluster");
        Ok(placement)
    }

    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    fn ttl_ms(&self) -> u64 {
        self.config.lease_ttl.as_millis() as u64
    }

    /// How long after a renewal started this relay still counts the lease as its own: a
    /// fifth of the TTL short of Redis' expiry, for clock rates and the call's own time.
    fn validity(&self) -> Duration {
        self.config.lease_ttl - self.config.lease_ttl / 5
    }

    fn note<T>(&self, result: &Result<T>) {
        let ok = result.is_ok();
        let was = self
            .reachable
            .swap(ok, std::sync::atomic::Ordering::Relaxed);
        match (was, ok) {
            (true, false) => warn!("Redis unreachable: rooms stay where they are"),
            (false, true) => info!("Redis reachable again"),
            _ => {}
        }
    }

    async fn call<T: redis::FromRedisValue + Send>(
        &self,
        script: &str,
        keys: &[&str],
        args: &[String],
    ) -> Result<T> {
        let script = redis::Script::new(script);
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut redis = self.redis.clone();
        self.bounded(invocation.invoke_async(&mut redis)).await
    }

    /// One command, within the time a join may wait on Redis.
    async fn query<T: redis::FromRedisValue + Send>(&self, command: &redis::Cmd) -> Result<T> {
        let mut redis = self.redis.clone();
        self.bounded(command.query_async(&mut redis)).await
    }

    /// Every Redis call: bounded by [`REDIS_TIMEOUT`], and noted for `status`.
    async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        let result = tokio::time::timeout(REDIS_TIMEOUT, call)
            .await
            .map_err(|_| anyhow::anyhow!("Redis did not answer in time"))
            .and_then(|r| r.map_err(anyhow::Error::from));
        self.note(&result);
        result
    }

    async fn register(&self, registration: Registration) -> Result<()> {
        let mut set = redis::cmd("SET");
        set.arg(format!("{RELAY_KEY}{}", self.relay_id))
            .arg(serde_json::to_string(&registration)?)
            .arg("PX")
            .arg(self.ttl_ms());
        self.query(&set).await
    }

    /// A lease's key and the value that names it (`relay:fence`).
    fn lease_key(&self, room: &str, fence: u64) -> (String, String) {
        (
            format!("{ROOM_KEY}{room}"),
            format!("{}:{fence}", self.relay_id),
        )
    }

    /// Releases this relay's lease on `room`, if it is still the one with `fence`.
    async fn release(&self, room: &str, fence: u64) {
        let (key, value) = self.lease_key(room, fence);
        let _: Result<i64> = self.call(RELEASE, &[&key], &[value]).await;
    }

    /// Which relay hosts `room`: claims it for this one if nobody (alive) holds it.
    pub async fn place(&self, room: &str) -> Placed {
        let now = Instant::now();
        if let Some(lease) = self.lease(room)
            && lease.valid_until > now
        {
            return Placed::Here;
        }
        let key = format!("{ROOM_KEY}{room}");
        let claimed: Result<(String, String)> = self
            .call(
                CLAIM,
                &[&key, FENCE_KEY],
                &[
                    self.relay_id.clone(),
                    self.ttl_ms().to_string(),
                    RELAY_KEY.to_owned(),
                ],
            )
            .await;
        let (owner, fence) = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                debug!(%room, error = %e, "placement unknown");
                return Placed::Unknown;
            }
        };
        if owner == self.relay_id {
            let fence = fence.parse().unwrap_or_default();
            self.leases
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    room.to_owned(),
                    Lease {
                        fence,
                        valid_until: now + self.validity(),
                    },
                );
            debug!(%room, fence, "room lease held");
            return Placed::Here;
        }
        match self.relay_url(&owner).await {
            Some(relay_url) => Placed::Elsewhere {
                relay_url,
                relay_id: owner,
            },
            None => Placed::Unknown,
        }
    }

    async fn relay_url(&self, relay_id: &str) -> Option<String> {
        let mut get = redis::cmd("GET");
        get.arg(format!("{RELAY_KEY}{relay_id}"));
        let found: String = self.query::<Option<String>>(&get).await.ok()??;
        serde_json::from_str::<Registration>(&found)
            .ok()
            .map(|r| r.url)
    }

    fn lease(&self, room: &str) -> Option<Lease> {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(room)
            .copied()
    }

    /// Leases this relay holds now (by its own clock).
    pub fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        let leases = self
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|l| l.valid_until > now)
            .count();
        ClusterStatus {
            relay_id: self.relay_id.clone(),
            redis: if self.reachable.load(std::sync::atomic::Ordering::Relaxed) {
                "connected"
            } else {
                "unreachable"
            },
            leases,
        }
    }

    /// One round of upkeep: refresh the registration, renew the leases of rooms that have
    /// peers (claim those hosted without one), release the rest.
    pub async fn upkeep(&self, rooms: &Rooms) {
        let counts = rooms.counts();
        let _ = self
            .register(Registration {
                url: self.config.public_url.clone(),
                peers: counts.peers,
                rooms: counts.rooms,
            })
            .await;
        let hosted: Vec<String> = rooms.rooms_snapshot().into_iter().map(|r| r.room).collect();
        let held: Vec<(String, Lease)> = self
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(room, lease)| (room.clone(), *lease))
            .collect();
        for (room, lease) in &held {
            if !hosted.contains(room) {
                self.release(room, lease.fence).await;
                self.forget(room, lease.fence);
                debug!(%room, "room lease released");
                continue;
            }
            let (key, value) = self.lease_key(room, lease.fence);
            let started = Instant::now();
            match self
                .call::<i64>(RENEW, &[&key], &[value, self.ttl_ms().to_string()])
                .await
            {
                Ok(1) => self.extend(room, lease.fence, started + self.validity()),
                Ok(_) => {
                    warn!(%room, "room lease lost to another relay: new joins go there");
                    self.forget(room, lease.fence);
                }
                Err(_) => {} // Redis away: the lease lapses by our clock; the call goes on.
            }
        }
        // Rooms hosted without a lease (Redis was away when they started): claim them. A
        // room mirrored from another relay is not hosted here (`span.rs`).
        let mirrored = |room: &str| rooms.spans().is_some_and(|s| s.mirrors(room));
        for room in hosted {
            if !held.iter().any(|(r, _)| *r == room) && !mirrored(&room) {
                let _ = self.place(&room).await;
            }
        }
    }

    fn extend(&self, room: &str, fence: u64, valid_until: Instant) {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lease) = leases.get_mut(room)
            && lease.fence == fence
        {
            lease.valid_until = valid_until;
        }
    }

    fn forget(&self, room: &str, fence: u64) {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if leases.get(room).is_some_and(|l| l.fence == fence) {
            leases.remove(room);
        }
    }

    /// On a graceful shutdown: release every lease and the registration at once, so that
    /// the rooms can move without waiting for the TTL.
    pub async fn leave_cluster(&self) {
        let held: Vec<(String, Lease)> = self
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for (room, lease) in held {
            self.release(&room, lease.fence).await;
        }
        let mut del = redis::cmd("DEL");
        del.arg(format!("{RELAY_KEY}{}", self.relay_id));
        let _: Result<()> = self.query(&del).await;
    }
}
