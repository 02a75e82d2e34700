//! Simulcast end to end: a real relay, real QUIC on 127.0.0.1, the native client's
//! three-layer publisher (synthetic frames whose first payload byte is their layer), and
//! the project's shaper in front of a weak subscriber.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::simulcast::*;
use common::*;
use synapse_sfu::client::{ClientOptions, Verification};
use synapse_sfu::shaper::{LinkConfig, Shaper, ShaperConfig};
use synapse_sfu::wire::ServerMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_consumer_gets_only_the_layer_it_prefers_and_unused_layers_pause() {
    let server = start_relay().await;
    let publisher_peer = join(&server, "sc", "publisher", false).await;
    let big = join(&server, "sc", "big", true).await;
    let small = join(&server, "sc", "small", true).await;
    // Both get video; then, once layer 1 has gone unwanted for the dynacast delay, the
    // publisher stops sending it.
    let Tiles {
        publisher,
        big: big_frames,
        small: small_frames,
        small_events,
        client: _client,
    } = tiles("one relay", publisher_peer, big, small).await;
    let sent_layer1 = publisher.layers[1].frames.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        publisher.layers[1].frames.load(Ordering::Relaxed),
        sent_layer1,
        "a paused layer is not sent"
    );

    let big_frames = big_frames.lock().await.clone();
    let small_frames = small_frames.lock().await.clone();
    let layers = |f: &[Got]| {
        let mut l: Vec<u8> = f.iter().map(|g| g.layer).collect();
        l.dedup();
        l
    };
    assert_eq!(
        layers(&big_frames),
        vec![2],
        "the full-size tile gets the top layer"
    );
    assert_eq!(
        layers(&small_frames),
        vec![0],
        "the thumbnail gets the base layer"
    );
    assert!(increasing(&big_frames) && increasing(&small_frames));
    let told = small_events.lock().await.clone();
    assert!(
        told.iter().any(|e| matches!(
            e,
            ServerMessage::LayerChanged {
                layer: 0,
                width: 320,
                height: 180,
                ..
            }
        )),
        "{told:?}"
    );
    assert!(server.rooms().stats().dynacast_updates >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_behind_a_700_kbit_link_moves_down_and_back_up_when_it_lifts() {
    let server = start_relay().await;
    let limited = LinkConfig {
        rate_kbps: 700,
        queue: Duration::from_millis(200),
        ..LinkConfig::default()
    };
    let shaper = Shaper::start(ShaperConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: server.local_addr(),
        up: LinkConfig::default(),
        down: limited,
        seed: 5,
    })
    .await
    .unwrap();
    let weak_options = ClientOptions::new(
        format!("https://127.0.0.1:{}/", shaper.local_addr().port()),
        Verification::Pin(server.certificate_sha256().to_owned()),
    );
    let publisher_peer = join(&server, "sc", "publisher", false).await;
    let clean = join(&server, "sc", "clean", true).await;
    let weak = join_with(weak_options, "sc", "weak", true).await;
    let (_publisher, go, _client) = publisher(publisher_peer).await;
    let (clean_frames, _) = collect(clean.incoming);
    let (weak_frames, _) = collect(weak.incoming);
    wait_for_relay(&server, Duration::from_secs(10), |c| c.consumers == 2).await;
    go.send(()).unwrap();

    // 12 s on the 700 kbit/s link: after the first 5 s, the weak subscriber is below the
    // top layer (1 Mbit/s does not fit) and its video is not seconds late.
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let limited_until = tokio::time::Instant::now();
    let settled: Vec<Got> = weak_frames
        .lock()
        .await
        .iter()
        .filter(|g| g.at > start + Duration::from_secs(5))
        .copied()
        .collect();
    let clean_so_far: Vec<Got> = clean_frames.lock().await.clone();
    let summary = |frames: &[Got]| {
        let mut lat: Vec<f64> = frames.iter().map(|g| g.latency_ms).collect();
        lat.sort_by(f64::total_cmp);
        let q = |q: f64| {
            lat.get(((lat.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        let below = frames.iter().filter(|g| g.layer < 2).count();
        format!(
            "{} frames, {below} below the top layer, latency p50 {:.0} / p90 {:.0} ms",
            frames.len(),
            q(0.5),
            q(0.9)
        )
    };
    let report = format!(
        "weak after 5 s: {}; clean: {}; relay {:?}; shaper {:?}",
        summary(&settled),
        summary(&clean_so_far),
        server.rooms().stats().layer_switches,
        shaper.stats(),
    );
    eprintln!("{report}");
    assert!(settled.len() >= 100, "{report}");
    let below = settled.iter().filter(|g| g.layer < 2).count();
    assert!(below * 10 >= settled.len() * 9, "{report}");
    let mut lat: Vec<f64> = settled.iter().map(|g| g.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    assert!(lat[lat.len() * 9 / 10] < 1000.0, "{report}");
    assert!(increasing(&weak_frames.lock().await), "{report}");
    // The clean subscriber stays on the top layer throughout.
    let clean_top = clean_so_far.iter().filter(|g| g.layer == 2).count();
    assert!(clean_top * 10 >= clean_so_far.len() * 9, "{report}");

    // The limit lifts: the weak subscriber is back on the top layer within 15 s.
    shaper
        .reconfigure(LinkConfig::default(), LinkConfig::default())
        .unwrap();
    let deadline = limited_until + patient(Duration::from_secs(15));
    loop {
        let back = weak_frames
            .lock()
            .await
            .iter()
            .rev()
            .take(30)
            .filter(|g| g.at > limited_until)
            .all(|g| g.layer == 2);
        let recent = weak_frames
            .lock()
            .await
            .iter()
            .filter(|g| g.at > limited_until)
            .count();
        if back && recent >= 30 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not back on the top layer: {}",
            summary(
                &weak_frames
                    .lock()
                    .await
                    .iter()
                    .filter(|g| g.at > limited_until)
                    .copied()
                    .collect::<Vec<_>>()
            )
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "back on the top layer {:.1} s after the limit lifted",
        limited_until.elapsed().as_secs_f64()
    );
}
