//! Load through a relay: peers join rooms, publish synthetic media, auto-subscribe to the
//! others, and record what arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::{Barrier, Semaphore};

use super::Shape;
use super::lean;
use super::stats::{Recorder, packets_for};
use crate::client::join::{Publisher, publish, publish_simulcast, simulcast_ladder};
use crate::client::media::{SyntheticAudio, SyntheticVideo};
use crate::client::{Client, ClientOptions, Verification, fetch_certificate_hash, parse_hash};
use crate::wire::{MediaKind, Request, ServerMessage};

/// One simulated peer.
#[derive(Debug, Clone)]
pub struct PeerPlan {
    pub room: String,
    pub name: String,
    pub audio: bool,
    pub video: bool,
    pub subscribe: bool,
    /// Video in three simulcast layers ([`simulcast_ladder`]).
    pub simulcast: bool,
    /// What this peer's consumers of simulcast video prefer (`set_preferred_layers`).
    pub max_resolution: Option<(u32, u32)>,
    /// Which of the relays it joins (an index into `run`'s `relays`; 0 but in a cluster).
    pub relay: usize,
}

impl PeerPlan {
    fn tracks(&self) -> u64 {
        u64::from(self.audio) + u64::from(self.video)
    }
}

/// What one run through the relay produced.
#[derive(Debug, Default)]
pub struct PlanOutcome {
    pub received: Recorder,
    /// What the subscribers of each relay received, and should have (a cluster's relays).
    pub by_relay: Vec<(Recorder, u64)>,
    pub sent_frames: u64,
    pub sent_bytes: u64,
    /// Frames that should have arrived: every frame to every subscriber of its room (for a
    /// simulcast producer, every picture, in whichever layer).
    pub expected_frames: u64,
    pub wall_s: f64,
    /// Simulcast publishers only.
    pub simulcast: Option<SimulcastOutcome>,
}

/// What simulcast publishers sent.
#[derive(Debug, Default, Clone)]
pub struct SimulcastOutcome {
    pub frames_per_layer: Vec<u64>,
    pub unused_stopped_after: Option<Duration>,
}

struct PeerOutcome {
    room: String,
    relay: usize,
    /// Frames of its tracks as a consumer sees them (pictures, for simulcast video).
    sent_frames: u64,
    sent_bytes: u64,
    subscribe: bool,
    received: Recorder,
    simulcast: Option<SimulcastOutcome>,
}

/// Runs `plans` against `relays` (each plan joins the one it names) for `duration` once
/// every consumer is in place. `on_start` runs at the moment publishing starts (the caller
/// samples relay CPU there). With several relays, the first plan joins before the others,
/// so that its relay is the one that hosts its room.
pub async fn run(
    relays: Vec<ClientOptions>,
    mut plans: Vec<PeerPlan>,
    shape: Shape,
    lean_subscribers: bool,
    duration: Duration,
    on_start: impl FnOnce() + Send,
    progress: impl Fn(u64) + Send + 'static,
) -> Result<PlanOutcome> {
    if shape.audio_bitrate == 0 {
        for plan in &mut plans {
            plan.audio = false;
        }
    }
    // How many consumers each peer should see before the clock starts.
    let mut tracks_per_room: HashMap<&str, u64> = HashMap::new();
    for p in &plans {
        *tracks_per_room.entry(&p.room).or_default() += p.tracks();
    }
    // Subscribers that publish nothing and want every layer can be lean ones: all in one
    // loop (`lean.rs`) instead of a client each.
    type Numbered = Vec<(usize, PeerPlan)>;
    let (lean_plans, full_plans): (Numbered, Numbered) =
        plans.clone().into_iter().enumerate().partition(|(_, p)| {
            lean_subscribers && p.subscribe && !p.audio && !p.video && p.max_resolution.is_none()
        });
    let barrier = Arc::new(Barrier::new(
        full_plans.len() + 1 + usize::from(!lean_plans.is_empty()),
    ));
    let joining = Arc::new(Semaphore::new(32));
    let received_frames = Arc::new(AtomicU64::new(0));
    // One start time for all: whoever leaves the barrier first sets it, so that publishers
    // and subscribers agree on when sending stops, however late each is scheduled.
    let start = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    let (first_joined, first_join) = tokio::sync::watch::channel(relays.len() < 2);
    let first_joined = Arc::new(first_joined);
    let mut tasks = Vec::new();
    for (index, plan) in full_plans {
        let expected_consumers = if plan.subscribe {
            tracks_per_room[plan.room.as_str()] - plan.tracks()
        } else {
            0
        };
        let mut options = relays
            .get(plan.relay)
            .context("a plan names a relay that is not there")?
            .clone();
        options.frame_buffer = 8192;
        let (first_joined, mut first_join) = (first_joined.clone(), first_join.clone());
        let (barrier, joining, received_frames, start) = (
            barrier.clone(),
            joining.clone(),
            received_frames.clone(),
            start.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if index > 0 {
                let _ = first_join.wait_for(|joined| *joined).await;
            }
            let permit = joining.acquire_owned().await?;
            let (client, mut incoming) = Client::connect(options).await?;
            client.join(&plan.room, &plan.name, plan.subscribe).await?;
            let _ = first_joined.send(true);
            // Tracks are produced now, so that every consumer exists before the clock
            // starts; they start sending when the barrier opens.
            let (go, gone) = tokio::sync::watch::channel(false);
            let start_signal = || {
                let mut gone = gone.clone();
                async move {
                    let _ = gone.wait_for(|go| *go).await;
                }
            };
            let mut publishers: Vec<Publisher> = Vec::new();
            if plan.audio {
                let source = Box::new(SyntheticAudio::with_interval(
                    shape.audio_bitrate,
                    shape.audio_frame_interval,
                ));
                publishers.push(publish(&client, MediaKind::Audio, source, start_signal()).await?);
            }
            if plan.video && plan.simulcast {
                let ladder = simulcast_ladder(shape.video_bitrate);
                publishers.push(
                    publish_simulcast(
                        &client,
                        ladder,
                        shape.fps,
                        shape.keyframe_interval,
                        start_signal(),
                    )
                    .await?,
                );
            } else if plan.video {
                let source = Box::new(SyntheticVideo::new(
                    shape.video_bitrate,
                    shape.fps,
                    shape.keyframe_interval,
                ));
                publishers.push(publish(&client, MediaKind::Video, source, start_signal()).await?);
            }
            drop(permit);
            let mut consumers = 0;
            while consumers < expected_consumers {
                let event = tokio::time::timeout(Duration::from_secs(120), incoming.events.recv())
                    .await
                    .context("waiting for consumers")?;
                match event {
                    Some(ServerMessage::ConsumerAdded { consumer }) => {
                        consumers += 1;
                        if let (Some((w, h)), false) =
                            (plan.max_resolution, consumer.producer.layers.is_empty())
                        {
                            client
                                .command(Request::SetPreferredLayers {
                                    consumer_id: consumer.consumer_id,
                                    max_layer: None,
                                    max_width: Some(w),
                                    max_height: Some(h),
                                })
                                .await?;
                        }
                    }
                    Some(event) => {
                        for p in &publishers {
                            p.on_event(&event);
                        }
                    }
                    None => bail!("relay closed the session while setting up"),
                }
            }
            barrier.wait().await;
            let start = *start.get_or_init(tokio::time::Instant::now);
            let _ = go.send(true);
            let stop_sending = start + duration;
            let stop_receiving = stop_sending + Duration::from_millis(2000);
            let mut received = Recorder::default();
            let mut stopped = false;
            // When each simulcast layer last sent (sampled), to see unused layers stop.
            let layers: Vec<_> = publishers.iter().flat_map(|p| p.layers.clone()).collect();
            let mut last_change = vec![(0u64, Duration::ZERO); layers.len()];
            let mut sample = tokio::time::interval(Duration::from_millis(250));
            // Made once: a timer made in the select! would be registered and dropped again
            // for every frame, load-generator work that competes with the relay it measures.
            let stop_sending = tokio::time::sleep_until(stop_sending);
            let stop_receiving = tokio::time::sleep_until(stop_receiving);
            tokio::pin!(stop_sending, stop_receiving);
            loop {
                tokio::select! {
                    frame = incoming.frames.recv() => match frame {
                        Some(f) => {
                            let packets = match f.kind {
                                MediaKind::Audio => 1,
                                MediaKind::Video => packets_for(f.payload.len()),
                            };
                            received.record(f.header.capture_us, f.payload.len(), packets);
                            received_frames.fetch_add(1, Ordering::Relaxed);
                        }
                        None => break,
                    },
                    event = incoming.events.recv() => {
                        if let Some(event) = event {
                            for p in &publishers {
                                p.on_event(&event);
                            }
                        }
                    }
                    _ = sample.tick(), if !layers.is_empty() && !stopped => {
                        for (l, last) in layers.iter().zip(last_change.iter_mut()) {
                            let frames = l.frames.load(Ordering::Relaxed);
                            if frames != last.0 {
                                *last = (frames, start.elapsed());
                            }
                        }
                    }
                    _ = &mut stop_sending, if !stopped => {
                        stopped = true;
                        for p in &publishers {
                            p.task.abort();
                        }
                    }
                    _ = &mut stop_receiving => break,
                }
            }
            // A simulcast publisher's consumers each get one layer of every picture; its
            // base layer runs while anyone watches, so it counts the pictures.
            let pictures = |p: &Publisher| match p.layers.first() {
                Some(base) => base.frames.load(Ordering::Relaxed),
                None => p.frames.load(Ordering::Relaxed),
            };
            let simulcast = (!layers.is_empty()).then(|| SimulcastOutcome {
                frames_per_layer: layers
                    .iter()
                    .map(|l| l.frames.load(Ordering::Relaxed))
                    .collect(),
                unused_stopped_after: layers
                    .iter()
                    .zip(&last_change)
                    .filter(|(l, _)| !l.wanted.load(Ordering::Relaxed))
                    .map(|(_, (_, at))| *at)
                    .max(),
            });
            let outcome = PeerOutcome {
                room: plan.room.clone(),
                relay: plan.relay,
                sent_frames: publishers.iter().map(pictures).sum(),
                sent_bytes: publishers
                    .iter()
                    .map(|p| p.bytes.load(Ordering::Relaxed))
                    .sum(),
                subscribe: plan.subscribe,
                received,
                simulcast,
            };
            drop(client);
            anyhow::Ok(outcome)
        }));
    }

    let lean_count = lean_plans.len();
    let mut lean_task = (!lean_plans.is_empty()).then(|| {
        spawn_lean(
            &relays,
            lean_plans,
            &tracks_per_room,
            first_join.clone(),
            barrier.clone(),
            start.clone(),
            duration,
            received_frames.clone(),
        )
    });

    // Wait for everyone to be in place (or for a peer to fail getting there).
    let ready = barrier.clone();
    let mut waiting = tokio::spawn(async move { ready.wait().await });
    let setup_deadline = tokio::time::sleep(Duration::from_secs(180));
    tokio::pin!(setup_deadline);
    loop {
        tokio::select! {
            _ = &mut waiting => break,
            _ = &mut setup_deadline => bail!("peers were not all set up within 180 s"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(lean) = lean_task.take_if(|t| t.is_finished()) {
                    return match lean.await {
                        Ok(Err(e)) => Err(e.context("setting up the lean subscribers")),
                        Ok(Ok(_)) => bail!("the lean subscribers finished before the run started"),
                        Err(e) => Err(e.into()),
                    };
                }
                if let Some(failed) = tasks.iter().position(|t| t.is_finished()) {
                    let task = tasks.swap_remove(failed);
                    return match task.await {
                        Ok(Err(e)) => Err(e.context("setting up a peer")),
                        Ok(Ok(_)) => bail!("a peer finished before the run started"),
                        Err(e) => Err(e.into()),
                    };
                }
            }
        }
    }
    let began = *start.get_or_init(tokio::time::Instant::now);
    on_start();
    let ticker = tokio::spawn({
        let received_frames = received_frames.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                progress(received_frames.load(Ordering::Relaxed));
            }
        }
    });
    let outcomes = futures_util::future::join_all(tasks).await;
    let lean_outcomes = match lean_task {
        Some(task) => task.await??,
        None => Vec::new(),
    };
    ticker.abort();
    let wall_s = began.elapsed().as_secs_f64();
    let mut peers = Vec::new();
    for outcome in outcomes {
        peers.push(outcome??);
    }
    debug_assert_eq!(lean_outcomes.len(), lean_count);
    peers.extend(lean_outcomes);
    let mut result = PlanOutcome {
        wall_s,
        ..PlanOutcome::default()
    };
    let mut sent_per_room: HashMap<&str, u64> = HashMap::new();
    for p in &peers {
        *sent_per_room.entry(&p.room).or_default() += p.sent_frames;
        result.sent_frames += p.sent_frames;
        result.sent_bytes += p.sent_bytes;
        result.received.merge(&p.received);
        if let Some(s) = &p.simulcast {
            let total = result
                .simulcast
                .get_or_insert_with(SimulcastOutcome::default);
            if total.frames_per_layer.len() < s.frames_per_layer.len() {
                total.frames_per_layer.resize(s.frames_per_layer.len(), 0);
            }
            for (t, f) in total.frames_per_layer.iter_mut().zip(&s.frames_per_layer) {
                *t += f;
            }
            total.unused_stopped_after = total.unused_stopped_after.max(s.unused_stopped_after);
        }
    }
    result.by_relay = vec![(Recorder::default(), 0); relays.len()];
    for p in peers.iter().filter(|p| p.subscribe) {
        let expected = sent_per_room[p.room.as_str()] - p.sent_frames;
        result.expected_frames += expected;
        let (received, expected_here) = &mut result.by_relay[p.relay];
        received.merge(&p.received);
        *expected_here += expected;
    }
    Ok(result)
}

/// Starts the lean subscribers (`lean.rs`) once the first peer has joined: they set up,
/// join the barrier as one party when all have their consumers, and record until the
/// others stop receiving.
#[allow(clippy::too_many_arguments)]
fn spawn_lean(
    relays: &[ClientOptions],
    plans: Vec<(usize, PeerPlan)>,
    tracks_per_room: &HashMap<&str, u64>,
    mut first_join: tokio::sync::watch::Receiver<bool>,
    barrier: Arc<Barrier>,
    start: Arc<std::sync::OnceLock<tokio::time::Instant>>,
    duration: Duration,
    received_frames: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Result<Vec<PeerOutcome>>> {
    let lean_plans: Vec<lean::LeanPlan> = plans
        .iter()
        .map(|(_, p)| lean::LeanPlan {
            room: p.room.clone(),
            name: p.name.clone(),
            relay: p.relay,
            expected_consumers: tracks_per_room[p.room.as_str()],
            join: true,
        })
        .collect();
    let relays = relays.to_vec();
    tokio::spawn(async move {
        let mut lean_relays = Vec::new();
        for relay in &relays {
            lean_relays.push(lean::LeanRelay {
                url: relay.url.clone(),
                certificate_sha256: pinned_hash(relay).await?,
            });
        }
        let _ = first_join.wait_for(|joined| *joined).await;
        let count = lean_plans.len() as u64;
        let ready = Arc::new(AtomicU64::new(0));
        let (phase, phase_seen) = tokio::sync::watch::channel(lean::LeanPhase::SettingUp);
        let gate = tokio::spawn({
            let ready = ready.clone();
            async move {
                while ready.load(Ordering::Relaxed) < count {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                barrier.wait().await;
                let start = *start.get_or_init(tokio::time::Instant::now);
                // As the full subscribers: two seconds after sending stops.
                let until = start + duration + Duration::from_millis(2000);
                let _ = phase.send(lean::LeanPhase::RecordUntil(until));
                // Kept until the loop has returned, so that it never sees the phase drop.
                phase
            }
        });
        let recorded = lean::run(lean_relays, lean_plans, phase_seen, ready, received_frames).await;
        gate.abort();
        let recorded = recorded?;
        Ok(plans
            .into_iter()
            .zip(recorded)
            .map(|((_, plan), received)| PeerOutcome {
                room: plan.room,
                relay: plan.relay,
                sent_frames: 0,
                sent_bytes: 0,
                subscribe: true,
                received,
                simulcast: None,
            })
            .collect())
    })
}

/// The certificate hash a lean subscriber pins: the one given, or the relay's own.
async fn pinned_hash(relay: &ClientOptions) -> Result<[u8; 32]> {
    let hex_hash = match &relay.verification {
        Verification::Pin(hash) => hash.clone(),
        Verification::FetchPin => fetch_certificate_hash(&relay.url).await?,
        Verification::NativeRoots => {
            bail!("lean subscribers pin the relay's certificate; this relay has a real one")
        }
    };
    Ok(*parse_hash(&hex_hash)?.as_ref())
}
