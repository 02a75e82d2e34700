//! The development identity renews itself while the relay runs.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use synapse_sfu::client::{Client, ClientOptions, Verification, fetch_certificate_hash};
use synapse_sfu::server::ServerConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_certificate_is_renewed_without_a_restart() {
    let config = ServerConfig {
        renewal_check: Duration::from_millis(100),
        ..test_config()
    };
    let certs = config.certs_dir.clone();
    let server = start_relay_with(config).await;
    let first = server.certificate_sha256();
    assert_eq!(fetch_certificate_hash(&server.url()).await.unwrap(), first);
    let early = join(&server, "r", "early", false).await;

    // Pretend the certificate expires within the day.
    let soon = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    std::fs::write(certs.join("dev-cert.expires"), soon.to_string()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.certificate_sha256() == first {
        assert!(tokio::time::Instant::now() < deadline, "never renewed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewed = server.certificate_sha256();
    assert_eq!(
        fetch_certificate_hash(&server.url()).await.unwrap(),
        renewed
    );

    // New sessions get the new certificate; the old pin no longer matches it.
    let fresh = join(&server, "r", "fresh", false).await;
    assert!(
        fresh.joined.ongoing,
        "the session opened before the renewal is still in"
    );
    let stale_pin = ClientOptions::new(server.url(), Verification::Pin(first));
    assert!(Client::connect(stale_pin).await.is_err());
    early.client.leave().await.unwrap();
}
