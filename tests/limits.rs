//! Limits end to end: the offender is refused, nobody else notices.

mod common;

use std::time::Duration;

use common::*;
use synapse_sfu::client::{Client, ClientError};
use synapse_sfu::core::{Limits, RelayConfig};
use synapse_sfu::server::{ServerConfig, SessionLimits};
use synapse_sfu::wire::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_address_and_room_size_are_capped() {
    let base = test_config();
    let server = start_relay_with(ServerConfig {
        limits: SessionLimits {
            max_sessions_per_address: 3,
            ..base.limits.clone()
        },
        relay: RelayConfig {
            limits: Limits {
                max_peers_per_room: 2,
                ..Limits::default()
            },
            ..RelayConfig::default()
        },
        ..base
    })
    .await;
    let a = join(&server, "r", "a", true).await;
    let b = join(&server, "r", "b", true).await;
    // The room is full: a typed refusal, and the session may try another room.
    let (third, _incoming) = Client::connect(options(&server)).await.unwrap();
    match third.join("r", "c", false).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::RoomFull),
        other => panic!("expected room_full, got {other:?}"),
    }
    third.join("other", "c", false).await.unwrap();
    // A fourth session from this address is turned away at setup.
    let fourth = Client::connect(options(&server)).await;
    assert!(
        matches!(fourth, Err(ClientError::Connect { .. })),
        "{:?}",
        fourth.err()
    );
    // Once one leaves, there is room again.
    b.client.leave().await.unwrap();
    drop(b);
    wait_for_relay(&server, Duration::from_secs(5), |c| c.peers == 2).await;
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = Client::connect(options(&server)).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (again, _incoming) = again.expect("a slot frees up when a session ends");
    again.join("r", "d", false).await.unwrap();
    drop(a);
}
