//! Access tokens against a relay that has API keys.

mod common;

use std::time::Duration;

use common::*;
use synapse_sfu::auth::{AccessPolicy, ApiKey};
use synapse_sfu::client::{Client, ClientError};
use synapse_sfu::core::RelayCounts;
use synapse_sfu::server::ServerConfig;
use synapse_sfu::wire::{ErrorCode, Grants, MediaKind};

fn key() -> ApiKey {
    ApiKey {
        key: "APItest".into(),
        secret: "test-secret-that-is-long-enough-1234".into(),
    }
}

async fn connect_with(server: &synapse_sfu::server::Server, token: Option<String>) -> Client {
    let mut options = options(server);
    options.token = token;
    Client::connect(options).await.unwrap().0
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Refused(e)) => (e.code, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_at_join_and_grants_on_every_request() {
    let server = start_relay_with(ServerConfig {
        access: AccessPolicy::Keys(key()),
        ..test_config()
    })
    .await;
    let hour = Duration::from_secs(3600);

    // Unsigned, forged, and wrong-room joins are refused and leave nothing behind.
    let (code, message) = refused(
        connect_with(&server, None)
            .await
            .join("r", "x", false)
            .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(message.contains("requires an access token"), "{message}");
    let forged = ApiKey {
        key: "APItest".into(),
        secret: "not-the-secret-not-the-secret-000".into(),
    }
    .mint("r", "mallory", None, hour, Grants::default())
    .unwrap();
    let (code, _) = refused(
        connect_with(&server, Some(forged))
            .await
            .join("r", "x", false)
            .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized);
    let elsewhere = key()
        .mint("other", "ada", None, hour, Grants::default())
        .unwrap();
    let (code, message) = refused(
        connect_with(&server, Some(elsewhere))
            .await
            .join("r", "x", false)
            .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(message.contains("room"), "{message}");
    assert_eq!(server.rooms().counts(), RelayCounts::default());

    // A good token: the name comes from the token, the grants are enforced.
    let listener = Grants {
        can_publish: false,
        can_subscribe: true,
        kinds: vec![],
        ..Grants::default()
    };
    let token = key()
        .mint("r", "u-7", Some("Listener"), hour, listener.clone())
        .unwrap();
    let client = connect_with(&server, Some(token)).await;
    let joined = client.join("r", "whatever", true).await.unwrap();
    assert_eq!(joined.grants, listener);
    assert_eq!(joined.name, "Listener");
    assert_eq!(
        server.rooms().peer_label(joined.peer_id).unwrap().1,
        "Listener"
    );
    let (code, _) = refused(client.produce(MediaKind::Audio, "opus").await);
    assert_eq!(code, ErrorCode::Forbidden);

    let speaker = key()
        .mint("r", "u-8", None, hour, Grants::default())
        .unwrap();
    let speaker = connect_with(&server, Some(speaker)).await;
    let joined = speaker.join("r", "Speaker", false).await.unwrap();
    assert!(joined.ongoing);
    speaker.produce(MediaKind::Audio, "opus").await.unwrap();
    wait_for_relay(&server, Duration::from_secs(5), |c| c.consumers == 1).await;
}
