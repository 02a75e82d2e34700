//! Chaos: clients join, publish and vanish abruptly (no leave, no close) in a loop for a
//! bounded time. Afterwards the relay's maps are empty, its task count is back to where it
//! started, and a fresh client still works.

mod common;

use std::time::Duration;

use common::*;
use synapse_sfu::core::RelayCounts;
use synapse_sfu::server::{ServerConfig, SessionLimits};
use synapse_sfu::wire::MediaKind;

/// A client in a runtime of its own that is torn down without closing anything, the way a
/// killed process or a pulled cable looks to the relay.
fn vanishing_client(
    options: synapse_sfu::client::ClientOptions,
    room: String,
    name: String,
    frames: u64,
) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let Ok(peer) = tokio::time::timeout(
                Duration::from_secs(5),
                join_with(options, &room, &name, true),
            )
            .await
            else {
                return;
            };
            let Ok(mic) = peer.client.produce(MediaKind::Audio, "opus").await else {
                return;
            };
            let Ok(cam) = peer.client.produce(MediaKind::Video, "vp8").await else {
                return;
            };
            for seq in 0..frames {
                send_audio(&peer.client, mic, seq);
                // Vanish in the middle of a video frame now and then.
                if seq == frames - 1 && seq % 2 == 0 {
                    if let Ok(mut s) = peer.client.open_uni().await {
                        let _ = s
                            .write_all(&synapse_sfu::wire::frame::encode_stream_header(cam, None))
                            .await;
                        let _ = s.write_all(&[0x00, 0x01, 0x01, 0x80, 0x80]).await;
                    }
                } else {
                    send_video(&peer.client, cam, seq, seq == 0).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            std::mem::forget(peer);
        });
        rt.shutdown_background();
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_in_a_loop_leave_nothing_behind() {
    let base = test_config();
    let server = start_relay_with(ServerConfig {
        limits: SessionLimits {
            idle_timeout: Duration::from_millis(1500),
            ..base.limits.clone()
        },
        ..base
    })
    .await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();

    // A set number of rounds, not a time: a slow machine runs them all, just later.
    for round in 0..3u64 {
        let mut handles = Vec::new();
        for i in 0..4 {
            let options = options(&server);
            let (room, name) = (format!("chaos-{}", i % 2), format!("c{round}-{i}"));
            handles.push(tokio::task::spawn_blocking(move || {
                vanishing_client(options, room, name, 10 + round % 7)
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    }

    // The relay notices each vanished client by its silence, then frees everything.
    wait_for_relay(&server, Duration::from_secs(20), |c| {
        c == RelayCounts::default()
    })
    .await;
    let settle = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > baseline && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.num_alive_tasks() <= baseline,
        "tasks: {} alive, {baseline} before",
        metrics.num_alive_tasks()
    );

    // And it still works.
    let a = join(&server, "after", "a", true).await;
    let mut b = join(&server, "after", "b", true).await;
    let mic = a.client.produce(MediaKind::Audio, "opus").await.unwrap();
    wait_for_relay(&server, Duration::from_secs(5), |c| c.consumers == 1).await;
    for seq in 0..20 {
        send_audio(&a.client, mic, seq);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = collect_until(&mut b.incoming, Duration::from_secs(5), |r| {
        r.get(&mic).map_or(0, Vec::len) >= 15
    })
    .await;
    assert!(got.get(&mic).map_or(0, Vec::len) >= 15);
}
