//! The floor: the same fan-out as plain UDP datagrams (frames cut into 1200-byte packets,
//! each stamped with its capture time), one `send_to` per packet per receiver, no
//! encryption, no congestion control, no retransmission. The sender runs on a thread of its
//! own so that its CPU time can be read alone.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::Shape;
use super::stats::{PACKET_PAYLOAD, Recorder, thread_cpu_seconds};
use crate::client::media::{MediaSource, SyntheticAudio, SyntheticVideo};
use crate::client::now_us;

#[derive(Debug, Default)]
pub struct UdpOutcome {
    pub received: Recorder,
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub expected_packets: u64,
    pub sender_cpu_s: f64,
    pub wall_s: f64,
}

pub async fn run_fanout(
    subscribers: usize,
    shape: Shape,
    duration: Duration,
) -> Result<UdpOutcome> {
    let mut targets = Vec::new();
    let mut receivers = Vec::new();
    let stop_at = tokio::time::Instant::now() + duration + Duration::from_millis(1000);
    for _ in 0..subscribers {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        targets.push(socket.local_addr()?);
        receivers.push(tokio::spawn(async move {
            let mut recorder = Recorder::default();
            let mut buf = vec![0u8; 2048];
            let stop = tokio::time::sleep_until(stop_at);
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    got = socket.recv(&mut buf) => {
                        if let Ok(n) = got && n >= 8 {
                            let capture_us = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                            recorder.record(capture_us, n, 1);
                        }
                    }
                    _ = &mut stop => break,
                }
            }
            recorder
        }));
    }
    let sender = std::thread::spawn(move || -> Result<(u64, u64, f64, f64)> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let mut audio =
            SyntheticAudio::with_interval(shape.audio_bitrate, shape.audio_frame_interval);
        let mut video =
            SyntheticVideo::new(shape.video_bitrate, shape.fps, shape.keyframe_interval);
        let began = Instant::now();
        let cpu_start = thread_cpu_seconds().unwrap_or(0.0);
        // Without audio (a bitrate of 0) its first frame is due after the run.
        let first_audio = if shape.audio_bitrate > 0 {
            began
        } else {
            began + duration * 2
        };
        let (mut next_audio, mut next_video) = (first_audio, began);
        let (mut packets, mut bytes, mut seq) = (0u64, 0u64, 0u64);
        let mut packet = Vec::with_capacity(PACKET_PAYLOAD as usize);
        while began.elapsed() < duration {
            let audio_due = next_audio <= next_video;
            let due = if audio_due { next_audio } else { next_video };
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let frame = if audio_due {
                audio.next_frame(seq)
            } else {
                video.next_frame(seq)
            };
            seq += 1;
            if audio_due {
                next_audio += frame.duration;
            } else {
                next_video += frame.duration;
            }
            let capture = now_us().to_be_bytes();
            for chunk in frame.payload.chunks(PACKET_PAYLOAD as usize - 8) {
                packet.clear();
                packet.extend_from_slice(&capture);
                packet.extend_from_slice(chunk);
                // Ingress is what the publisher produced, once; packets count every send.
                bytes += packet.len() as u64;
                for target in &targets {
                    if socket.send_to(&packet, target).is_ok() {
                        packets += 1;
                    }
                }
            }
        }
        let cpu = thread_cpu_seconds().unwrap_or(0.0) - cpu_start;
        Ok((packets, bytes, cpu, began.elapsed().as_secs_f64()))
    });
    let (sent_packets, sent_bytes, sender_cpu_s, wall_s) = tokio::task::spawn_blocking(move || {
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("UDP sender thread failed"))
    })
    .await???;
    let mut outcome = UdpOutcome {
        sent_packets,
        sent_bytes,
        expected_packets: sent_packets,
        sender_cpu_s,
        wall_s,
        ..UdpOutcome::default()
    };
    for r in receivers {
        outcome.received.merge(&r.await?);
    }
    Ok(outcome)
}
