//! The shaper on real UDP sockets on 127.0.0.1: a UDP echo behind it, and a relay reached
//! through it over QUIC. Assertions are on counts, order and lower bounds the shaper itself
//! guarantees (a packet never arrives before its delay), never on this machine's speed.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use synapse_sfu::client::now_us;
use synapse_sfu::shaper::{HEADER_BYTES, LinkConfig, Shaper, ShaperConfig};
use synapse_sfu::wire::{MediaKind, ServerMessage};
use tokio::net::UdpSocket;

/// A UDP echo on 127.0.0.1 that answers every datagram with itself.
async fn echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn shaper(upstream: SocketAddr, up: LinkConfig, down: LinkConfig) -> Shaper {
    Shaper::start(ShaperConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
        up,
        down,
        seed: 1,
    })
    .await
    .expect("shaper starts")
}

async fn client_of(shaper: &Shaper) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(shaper.local_addr()).await.unwrap();
    socket
}

/// A datagram carrying its sequence number, padded to `size` bytes.
fn packet(seq: u32, size: usize) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.resize(size, 0xab);
    p
}

fn seq_of(p: &[u8]) -> u32 {
    u32::from_be_bytes(p[..4].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_holds_every_packet_at_least_that_long_in_order() {
    let delay = Duration::from_millis(25);
    let link = LinkConfig {
        delay,
        ..LinkConfig::default()
    };
    let shaper = shaper(echo().await, link, link).await;
    let client = client_of(&shaper).await;
    const N: u32 = 20;
    let mut sent_at = Vec::new();
    for seq in 0..N {
        sent_at.push(Instant::now());
        client.send(&packet(seq, 200)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut buf = vec![0u8; 2048];
    for expected in 0..N {
        let n = tokio::time::timeout(patient(Duration::from_secs(5)), client.recv(&mut buf))
            .await
            .expect("every packet comes back (no loss configured)")
            .unwrap();
        let seq = seq_of(&buf[..n]);
        assert_eq!(seq, expected, "packets come back in order");
        let round_trip = sent_at[seq as usize].elapsed();
        assert!(
            round_trip >= 2 * delay,
            "packet {seq} came back after {round_trip:?}, under twice the {delay:?} delay"
        );
    }
    let stats = shaper.stats();
    assert_eq!(stats.flows, 1);
    for l in [stats.up, stats.down] {
        assert_eq!((l.packets, l.delivered), (N.into(), N.into()), "{stats:?}");
        assert_eq!(l.queue_drops + l.loss_drops + l.overflow_drops, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_paces_delivery_and_the_queue_drops_the_excess() {
    const KBPS: u64 = 800;
    // 1000 bytes on the link (headers included): 10 ms each at 800 kbit/s.
    const PAYLOAD: usize = 1000 - HEADER_BYTES as usize;
    const SENT: u32 = 300;
    let down = LinkConfig {
        rate_kbps: KBPS,
        queue: Duration::from_secs(1),
        ..LinkConfig::default()
    };
    let shaper = shaper(echo().await, LinkConfig::default(), down).await;
    let client = client_of(&shaper).await;
    // Three seconds of the link's worth at once (in small groups, to spare the kernel's
    // socket buffers): the 1 s queue takes about a third.
    for group in 0..SENT / 10 {
        for seq in group * 10..group * 10 + 10 {
            client.send(&packet(seq, PAYLOAD)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut buf = vec![0u8; 2048];
    let mut arrivals: Vec<(u32, Instant)> = Vec::new();
    let deadline = Instant::now() + patient(Duration::from_secs(20));
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), client.recv(&mut buf)).await {
            Ok(received) => {
                let n = received.unwrap();
                arrivals.push((seq_of(&buf[..n]), Instant::now()));
            }
            // Quiet: done once everything the shaper let through has come.
            Err(_) if arrivals.len() as u64 == shaper.stats().down.delivered => break,
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "delivery never finished");
    }
    let stats = shaper.stats().down;
    assert!(
        stats.queue_drops > 0,
        "the queue dropped nothing: {stats:?}"
    );
    assert_eq!(
        stats.delivered + stats.queue_drops,
        stats.packets,
        "{stats:?}"
    );
    assert_eq!(stats.loss_drops + stats.overflow_drops, 0);
    assert!(stats.max_queue_wait_us <= 1_000_000);
    let n = arrivals.len();
    assert!(n >= 50, "only {n} packets delivered: {stats:?}");
    assert!(
        arrivals.windows(2).all(|w| w[0].0 < w[1].0),
        "delivered out of order"
    );
    // Packets leave no earlier than their slot at the rate; only a late first packet (a
    // busy machine) could make the span look short, hence the margin.
    let span = arrivals[n - 1].1 - arrivals[0].1;
    let kbps = (n - 1) as f64 * 8.0 / span.as_secs_f64();
    assert!(
        kbps <= KBPS as f64 * 1.2,
        "{kbps:.0} kbit/s through an {KBPS} kbit/s link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_through_the_shaper_joins_and_receives_audio() {
    let server = start_relay().await;
    let delay = Duration::from_millis(20);
    let link = LinkConfig {
        delay,
        ..LinkConfig::default()
    };
    let shaper = shaper(server.local_addr(), link, link).await;
    // The certificate is pinned by hash, so the shaper's address serves as the host.
    let mut through = options(&server);
    through.url = format!("https://{}/", shaper.local_addr());
    let mut listener = join_with(through, "shaped", "listener", true).await;
    let speaker = join(&server, "shaped", "speaker", false).await;
    let mic = speaker
        .client
        .produce(MediaKind::Audio, "opus")
        .await
        .unwrap();
    wait_event(&mut listener.incoming, Duration::from_secs(5), |e| {
        matches!(e, ServerMessage::ConsumerAdded { .. })
    })
    .await
    .expect("the listener consumes the speaker's audio");

    const FRAMES: u64 = 50;
    let sender = tokio::spawn({
        let client = speaker.client.clone();
        async move {
            for seq in 0..FRAMES {
                send_audio(&client, mic, seq);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(10));
    while seqs.last() != Some(&(FRAMES - 1)) {
        let Ok(Some(frame)) =
            tokio::time::timeout_at(deadline, listener.incoming.frames.recv()).await
        else {
            break;
        };
        let latency_us = now_us().saturating_sub(frame.header.capture_us);
        assert!(
            latency_us >= delay.as_micros() as u64,
            "frame {} arrived {latency_us} µs after capture, under the link's delay",
            frame.header.seq
        );
        assert_eq!(frame.producer_id, mic);
        seqs.push(frame.header.seq);
    }
    sender.await.unwrap();
    assert!(
        seqs.len() as u64 >= FRAMES * 9 / 10,
        "{} of {FRAMES} audio frames through the shaper",
        seqs.len()
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seqs:?}"
    );
    let stats = shaper.stats();
    assert_eq!(stats.flows, 1, "one client, one flow: {stats:?}");
    assert!(stats.down.delivered > 0 && stats.up.delivered > 0);
    assert_eq!(stats.down.loss_drops + stats.down.queue_drops, 0);
}
