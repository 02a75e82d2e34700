//! The admin HTTP API: token-protected, and it acts on the live relay.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use synapse_sfu::auth::{AccessPolicy, ApiKey};
use synapse_sfu::core::RelayCounts;
use synapse_sfu::server::ServerConfig;
use synapse_sfu::wire::{ErrorCode, Grants, LeaveReason, MediaKind, ServerMessage};

fn key() -> ApiKey {
    ApiKey {
        key: "APIadmin".into(),
        secret: "admin-test-secret-long-enough-000000".into(),
    }
}

async fn join_signed(server: &synapse_sfu::server::Server, room: &str, who: &str) -> Peer {
    let mut opts = options(server);
    opts.token = Some(
        key()
            .mint(room, who, None, Duration::from_secs(600), Grants::default())
            .unwrap(),
    );
    join_with(opts, room, who, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_mute_remove_and_close() {
    let server = start_relay_with(ServerConfig {
        access: AccessPolicy::Keys(key()),
        ..test_config()
    })
    .await;
    let admin = key().mint_admin("ops", Duration::from_secs(600)).unwrap();
    let member = key()
        .mint(
            "standup",
            "x",
            None,
            Duration::from_secs(600),
            Grants::default(),
        )
        .unwrap();

    let mut ada = join_signed(&server, "standup", "ada").await;
    let mut bo = join_signed(&server, "standup", "bo").await;
    let cy = join_signed(&server, "standup", "cy").await;
    let mic = bo.client.produce(MediaKind::Audio, "opus").await.unwrap();
    let _other = join_signed(&server, "retro", "dee").await;

    // Who may ask.
    assert_eq!(
        http_request(&server, "GET", "/admin/rooms", None).await.0,
        401
    );
    assert_eq!(
        http_request(&server, "GET", "/admin/rooms", Some(&member))
            .await
            .0,
        403
    );
    let (status, body) = http_request(&server, "GET", "/admin/rooms", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    let listing: Value = serde_json::from_str(&body).unwrap();
    let rooms = listing["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 2);
    assert_eq!(rooms[1]["room"], "standup");
    let names: Vec<&str> = rooms[1]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ada", "bo", "cy"]);
    assert_eq!(rooms[1]["peers"][1]["producers"][0]["producer_id"], mic.0);

    // Mute a producer: the room and its owner are told.
    let (status, _) = http_request(
        &server,
        "POST",
        &format!("/admin/producers/{mic}/pause"),
        Some(&admin),
    )
    .await;
    assert_eq!(status, 200);
    let paused = ServerMessage::ProducerPaused { producer_id: mic };
    assert!(
        wait_event(&mut ada.incoming, Duration::from_secs(5), |e| *e == paused)
            .await
            .is_some()
    );
    assert!(
        wait_event(&mut bo.incoming, Duration::from_secs(5), |e| *e == paused)
            .await
            .is_some()
    );
    assert_eq!(
        http_request(
            &server,
            "POST",
            "/admin/producers/999999/pause",
            Some(&admin)
        )
        .await
        .0,
        404
    );

    // Remove a peer: it is told why, the others see it leave.
    let cy_id = cy.joined.peer_id;
    let mut cy = cy;
    let (status, _) = http_request(
        &server,
        "DELETE",
        &format!("/admin/peers/{cy_id}"),
        Some(&admin),
    )
    .await;
    assert_eq!(status, 200);
    let kicked = wait_event(&mut cy.incoming, Duration::from_secs(5), |e| {
        matches!(e, ServerMessage::Error { .. })
    })
    .await;
    assert!(
        matches!(
            kicked,
            Some(ServerMessage::Error {
                id: None,
                code: ErrorCode::Kicked,
                ..
            })
        ),
        "{kicked:?}"
    );
    // Its session is over: a request now fails at once instead of waiting for ever.
    let after = tokio::time::timeout(Duration::from_secs(3), cy.client.leave()).await;
    assert!(matches!(after, Ok(Err(_))), "{after:?}");
    let left = ServerMessage::PeerLeft {
        peer_id: cy_id,
        reason: LeaveReason::Disconnected,
    };
    assert!(
        wait_event(&mut ada.incoming, Duration::from_secs(5), |e| *e == left)
            .await
            .is_some()
    );
    assert_eq!(
        http_request(
            &server,
            "DELETE",
            &format!("/admin/peers/{cy_id}"),
            Some(&admin)
        )
        .await
        .0,
        404
    );

    // Close rooms: everyone goes, nothing stays behind.
    for room in ["standup", "retro"] {
        let (status, _) = http_request(
            &server,
            "DELETE",
            &format!("/admin/rooms/{room}"),
            Some(&admin),
        )
        .await;
        assert_eq!(status, 200);
    }
    wait_for_relay(&server, Duration::from_secs(10), |c| {
        c == RelayCounts::default()
    })
    .await;
    assert_eq!(
        http_request(&server, "DELETE", "/admin/rooms/standup", Some(&admin))
            .await
            .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_admin_answers_loopback() {
    let server = start_relay().await;
    let _peer = join(&server, "r", "ada", false).await;
    let (status, body) = http_request(&server, "GET", "/admin/rooms", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ada\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_admin_answers_ipv4_loopback_on_a_dual_stack_bind() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start_relay_with(ServerConfig {
        bind: "[::]:0".parse().unwrap(),
        ..test_config()
    })
    .await;
    let port = server.http_addr().unwrap().port();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(b"GET /admin/rooms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
