// The page: join screen, call screen, controls, and the bookkeeping that ties relay
// events (peers, producers, consumers) to tiles, senders and receivers.
//
// URL parameters: ?room= ?name= prefill the form; ?autojoin=1 joins at once;
// ?codec=vp8|vp9|h264|av1 forces the video codec; ?width= ?height= ?fps= ?bitrate=
// (bit/s) set the encoder; ?maxSendDelay= (ms, default 300) bounds the video send backlog;
// ?relay=host:port talks to another relay than the page's own; ?quic=host:port sends the
// WebTransport session there instead (a UDP proxy in front of the relay; the certificate
// hash still comes from the relay); ?token= is the access token for a relay that requires one;
// ?simulcast=0 publishes one video layer even to a relay that accepts several.

import { Session } from './session.js';
import {
  AudioOutput,
  AudioReceiver,
  AudioSender,
  DEFAULT_MAX_SEND_DELAY_MS,
  VideoReceiver,
  VideoSender,
  chooseVideoCodec,
  missingFeatures,
  openCapture,
} from './media.js';
import { LocalTile, RemoteTile } from './tiles.js';
import { ConsumerView } from './consumer-view.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function intParam(name, fallback, min, max) {
  const value = Number.parseInt(params.get(name) ?? '', 10);
  return Number.isFinite(value) ? Math.min(max, Math.max(min, value)) : fallback;
}

const settings = {
  width: intParam('width', 640, 16, 3840) & ~1, // even sizes: H.264 needs them
  height: intParam('height', 480, 16, 2160) & ~1,
  fps: intParam('fps', 30, 1, 60),
  bitrate: intParam('bitrate', 800_000, 10_000, 20_000_000),
  maxSendDelayMs: intParam('maxSendDelay', DEFAULT_MAX_SEND_DELAY_MS, 50, 60_000),
  // Simulcast: the camera in up to three sizes, if the relay accepts layers.
  simulcast: params.get('simulcast') !== '0',
};
const forcedCodec = params.get('codec')?.toLowerCase() || null;
// HTTP and WebTransport share the port number, so by default the page's own host is the relay.
const relayHost = params.get('relay') || location.host;
const quicHost = params.get('quic') || relayHost;

// ---------------------------------------------------------------------------
// Errors and status, always on the page.

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $('error').textContent = '';
  $('error').hidden = true;
}

function setProgress(text) {
  $('join-progress').textContent = text;
}

/** Turns getUserMedia failures into something a person can act on. */
function captureErrorMessage(e) {
  switch (e.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera/microphone access was refused. Allow both for this page and join again.';
    case 'NotReadableError':
      return 'The camera or microphone cannot be opened (is another application using it?).';
    default:
      return `Cannot open the camera and microphone: ${e.message || e.name}`;
  }
}

// ---------------------------------------------------------------------------
// The call: everything that exists between join and leave.

let call = null;

class Call {
  constructor({ room, name, token, codec, capture, audioOutput }) {
    this.room = room;
    this.name = name;
    this.token = token;
    this.codec = codec;
    this.capture = capture;
    this.audioOutput = audioOutput;
    this.session = null;
    this.tiles = new Map(); // peerId -> RemoteTile
    this.receivers = new Map(); // producerId -> { kind, peerId, consumerId, receiver, view }
    this.pausedProducers = new Set(); // paused before their consumer arrived
    this.videoSender = null;
    this.audioSender = null;
    this.micMuted = false;
    this.cameraOff = false;
    this.link = null; // the relay's latest transport_stats about its link to us
    this.grid = $('tiles');
    this.localTile = new LocalTile(this.grid, name, capture);
    this.statsTimer = setInterval(() => this.updateStats(), 1000);
  }

  async connect() {
    this.session = await Session.connect({
      relayHost,
      quicHost,
      room: this.room,
      name: this.name,
      token: this.token,
      onEvent: (m) => this.onEvent(m),
      onAudio: (f) => {
        const entry = this.receivers.get(f.producerId);
        if (entry?.kind === 'audio') entry.receiver.frame(f);
      },
      videoSink: (producerId) => {
        const entry = this.receivers.get(producerId);
        return entry?.kind === 'video' ? entry.receiver : null;
      },
      onClosed: (info) => this.onClosed(info),
    });
    const joined = this.session.joined;
    // An access token's name replaces the one typed in: show what the others see.
    if (joined.name && joined.name !== this.name) this.localTile.nameEl.textContent = `${joined.name} (you)`;
    for (const peer of joined.peers) this.addPeer(peer);
    const status = $('call-status');
    if (joined.ongoing) {
      const names = joined.peers.map((p) => p.name);
      status.textContent = `Joined the call with ${names.join(', ') || 'the others'}.`;
    } else {
      status.textContent = `You started a new call in room ${joined.room}. Others join with the same room name.`;
    }
    const limits = [];
    if (!this.session.subscribed) limits.push('receive media');
    for (const kind of ['audio', 'video']) if (!this.mayPublish(kind)) limits.push(`send ${kind}`);
    if (limits.length) status.textContent += ` Your access token does not allow you to ${limits.join(', ')}.`;
    this.session.releaseEvents();
  }

  /** What the join result's grants allow (a relay in development mode grants everything). */
  mayPublish(kind) {
    const grants = this.session.joined.grants;
    if (!grants) return true;
    return grants.can_publish !== false && (!Array.isArray(grants.kinds) || grants.kinds.includes(kind));
  }

  /** Starts sending; a failing track is reported but the call goes on without it. */
  async startSending() {
    // Tracks the token does not let us send are stopped, so the camera light goes off.
    for (const track of this.capture.getTracks()) {
      if (!this.mayPublish(track.kind)) track.stop();
    }
    const [videoTrack] = this.capture.getVideoTracks().filter((t) => t.readyState === 'live');
    const [audioTrack] = this.capture.getAudioTracks().filter((t) => t.readyState === 'live');
    const starts = [];
    if (audioTrack) {
      this.audioSender = new AudioSender({ session: this.session, track: audioTrack });
      starts.push(this.audioSender.start().catch((e) => this.trackFailed('microphone', e)));
    }
    if (videoTrack) {
      this.videoSender = new VideoSender({
        session: this.session,
        track: videoTrack,
        choice: this.codec,
        settings,
        maxSendDelayMs: settings.maxSendDelayMs,
        simulcast: settings.simulcast,
      });
      starts.push(this.videoSender.start().catch((e) => this.trackFailed('camera', e)));
    }
    await Promise.all(starts);
    // Nothing to mute or turn off for a track that is not sent.
    $('mic').disabled = !this.audioSender?.producerId;
    $('camera').disabled = !this.videoSender?.producerId;
  }

  trackFailed(what, e) {
    if (this.session?.ended) return;
    console.error(`${what}:`, e);
    showError(`Cannot send your ${what}: ${e.message}`);
  }

  addPeer(peer) {
    if (this.tiles.has(peer.peer_id)) return this.tiles.get(peer.peer_id);
    const tile = new RemoteTile(this.grid, peer.peer_id, peer.name);
    this.tiles.set(peer.peer_id, tile);
    for (const p of peer.producers ?? []) {
      if (p.paused) this.pausedProducers.add(p.producer_id);
      tile.setPaused(p.kind, p.paused);
    }
    return tile;
  }

  removePeer(peerId) {
    for (const [producerId, entry] of this.receivers) {
      if (entry.peerId === peerId) this.closeReceiver(producerId);
    }
    this.tiles.get(peerId)?.remove();
    this.tiles.delete(peerId);
  }

  /** auto_subscribe gave us a consumer: start decoding it into its peer's tile. */
  addConsumer(consumer) {
    const producer = consumer.producer;
    if (this.receivers.has(producer.producer_id)) return;
    const tile = this.tiles.get(producer.peer_id) ?? this.addPeer({ peer_id: producer.peer_id, name: `peer ${producer.peer_id}` });
    let receiver;
    let view = null;
    if (producer.kind === 'video') {
      receiver = new VideoReceiver({
        consumer,
        canvas: tile.canvas,
        requestKeyframe: (consumerId) =>
          this.session.request('request_keyframe', { consumer_id: consumerId }).catch(() => {}),
        onDecoded: () => tile.countVideo(),
      });
      // The tile's size picks the layer; an off-screen tile, or a hidden page, pauses it.
      view = new ConsumerView({
        element: tile.canvas,
        consumerId: consumer.consumer_id,
        producer,
        paused: consumer.paused === true,
        request: (type, fields) => this.session.request(type, fields),
      });
    } else {
      receiver = new AudioReceiver({ consumer, output: this.audioOutput, onDecoded: () => tile.countAudio() });
    }
    this.receivers.set(producer.producer_id, {
      kind: producer.kind,
      peerId: producer.peer_id,
      consumerId: consumer.consumer_id,
      receiver,
      view,
    });
    tile.setPaused(producer.kind, producer.paused || this.pausedProducers.has(producer.producer_id));
  }

  closeReceiver(producerId) {
    const entry = this.receivers.get(producerId);
    if (!entry) return;
    entry.receiver.close();
    entry.view?.close();
    this.receivers.delete(producerId);
  }

  onEvent(m) {
    switch (m.type) {
      case 'peer_joined':
        this.addPeer(m.peer);
        break;
      case 'peer_left':
        this.removePeer(m.peer_id);
        break;
      case 'consumer_added':
        this.addConsumer(m.consumer);
        break;
      case 'consumer_closed':
        this.closeReceiver(m.producer_id);
        break;
      case 'producer_closed':
        this.closeReceiver(m.producer_id);
        this.pausedProducers.delete(m.producer_id);
        break;
      case 'producer_paused':
      case 'producer_resumed': {
        const paused = m.type === 'producer_paused';
        if (paused) this.pausedProducers.add(m.producer_id);
        else this.pausedProducers.delete(m.producer_id);
        const entry = this.receivers.get(m.producer_id);
        if (entry) this.tiles.get(entry.peerId)?.setPaused(entry.kind, paused);
        break;
      }
      case 'transport_stats':
        // About once a second: the relay's measurements of its connection to this page.
        this.link = { ...m, receivedAt: performance.now() };
        this.videoSender?.setRelayRtt(m.rtt_ms); // the network's part of the send backlog
        break;
      case 'keyframe_request':
        // With `layer` for a producer with layers: that layer's encoder; without, all of them.
        if (m.producer_id === this.videoSender?.producerId) this.videoSender.requestKeyframe(m.layer);
        break;
      case 'layers_wanted':
        // The layers of our camera some consumer needs now: the others stop encoding.
        if (m.producer_id === this.videoSender?.producerId) this.videoSender.setWantedLayers(m.layers);
        break;
      case 'layer_changed': {
        // The relay switched the layer it forwards to one of our consumers.
        const entry = this.receivers.get(m.producer_id);
        if (entry?.kind === 'video' && entry.consumerId === m.consumer_id) entry.receiver.layerChanged(m);
        break;
      }
      case 'going_away':
        // The relay is shutting down and asks peers to leave before it closes them.
        this.leave().then(() => {
          showJoinScreen();
          showError(`You have left the call: the relay is going away (${m.reason}).`);
        });
        break;
      case 'error':
        // Not an answer to a request: the relay refused one of our media frames.
        showError(`The relay refused media from this page (${m.code}): ${m.message}`);
        break;
      default:
        // producer_added needs nothing (consumer_added follows); unknown events are ignored.
        break;
    }
  }

  onClosed(info) {
    this.teardown();
    showJoinScreen();
    // Browsers rarely pass on the relay's close reason ("Connection lost." is typical).
    showError(`Disconnected by the relay: ${info.reason} Join again to reconnect.`);
  }

  async setMicMuted(muted) {
    const sender = this.audioSender;
    if (!sender?.producerId) return;
    await this.session.request(muted ? 'pause_producer' : 'resume_producer', { producer_id: sender.producerId });
    sender.setPaused(muted);
    this.micMuted = muted;
    this.localTile.setBadges(this);
  }

  async setCameraOff(off) {
    const sender = this.videoSender;
    if (!sender?.producerId) return;
    // Stop sending before pausing, and resume the producer before sending again, so that
    // no frame arrives at the relay while the producer is paused.
    if (off) sender.setPaused(true);
    await this.session.request(off ? 'pause_producer' : 'resume_producer', { producer_id: sender.producerId });
    if (!off) sender.setPaused(false);
    this.cameraOff = off;
    this.localTile.setBadges(this);
  }

  updateStats() {
    this.localTile.updateStats(this.videoSender, this.audioSender, this.codec.name, this.link);
    const byPeer = new Map();
    for (const entry of this.receivers.values()) {
      const slot = byPeer.get(entry.peerId) ?? {};
      slot[entry.kind] = entry.receiver;
      if (entry.view) slot.view = entry.view;
      byPeer.set(entry.peerId, slot);
    }
    for (const [peerId, tile] of this.tiles) {
      const { video, audio, view } = byPeer.get(peerId) ?? {};
      tile.updateStats(video, audio, view);
    }
    $('audio-blocked').hidden = !this.audioOutput.blocked;
  }

  async leave() {
    if (call === this) call = null;
    await this.session?.leave();
    this.teardown();
  }

  teardown() {
    if (this.tornDown) return;
    this.tornDown = true;
    clearInterval(this.statsTimer);
    this.videoSender?.stop();
    this.audioSender?.stop();
    for (const producerId of [...this.receivers.keys()]) this.closeReceiver(producerId);
    for (const tile of this.tiles.values()) tile.remove();
    this.tiles.clear();
    this.localTile.remove();
    for (const track of this.capture.getTracks()) track.stop();
    this.audioOutput.close();
    this.session?.close();
    if (call === this) call = null;
  }

  /** The video consumer of a remote peer as plain data (null without one). */
  videoSnapshot(peerId) {
    const entry = [...this.receivers.values()].find((e) => e.peerId === peerId && e.kind === 'video');
    if (!entry) return null;
    const r = entry.receiver;
    return {
      consumerId: entry.consumerId,
      producerId: r.producer.producer_id,
      layers: r.layers.length, // 0: a producer without layers
      layer: r.layer, // the layer the relay forwards (layer_changed), or null
      layerSize: r.layerSize,
      layerChanges: r.layerChanges,
      decodedWidth: r.decodedWidth, // of the last decoded frame
      decodedHeight: r.decodedHeight,
      decoded: r.decoded,
      ...entry.view?.snapshot(), // visible, paused, preferred, requests
    };
  }

  snapshot() {
    return {
      peerId: this.session?.joined?.peer_id ?? null,
      room: this.room,
      name: this.name,
      codec: this.codec.codec,
      settings: { ...settings },
      micMuted: this.micMuted,
      cameraOff: this.cameraOff,
      producers: {
        audio: this.audioSender?.producerId ?? null,
        video: this.videoSender?.producerId ?? null,
      },
      audioContext: this.audioOutput.ctx?.state ?? null,
      send: this.videoSender
        ? {
            maxSendDelayMs: this.videoSender.maxSendDelayMs,
            backlogMs: this.videoSender.backlogMs,
            maxBacklogMs: this.videoSender.maxBacklogMs,
            networkDelayMs: this.videoSender.networkMs,
            skippedFrames: this.videoSender.skippedFrames,
            abandonedGroups: this.videoSender.abandonedGroups,
            framesSent: this.videoSender.stats.frames,
            // The running encoders' bitrate together (bit/s), lowered on a weak uplink;
            // each layer's in layers[].targetBitrate.
            targetBitrate: this.videoSender.targetBitrate,
            // Simulcast: whether this camera is published in layers, each layer's encoder
            // (`running`: it encodes now), and the relay's latest layers_wanted.
            simulcast: this.videoSender.layered,
            runningEncoders: this.videoSender.layers.filter((l) => l.running).length,
            layers: this.videoSender.layerSnapshot(),
            layersWanted: this.videoSender.layersWanted,
          }
        : null,
      link: this.link ? { ...this.link, ageMs: performance.now() - this.link.receivedAt } : null,
      tiles: [...this.tiles.values()].map((t) => ({ ...t.snapshot(), video: this.videoSnapshot(t.peerId) })),
    };
  }
}

// ---------------------------------------------------------------------------
// Screens and controls.

function showJoinScreen() {
  $('join-screen').hidden = false;
  $('call-screen').hidden = true;
  $('controls').hidden = true;
  $('room-label').textContent = '';
  $('join').disabled = false;
  $('mic').disabled = false;
  $('camera').disabled = false;
  $('mic').textContent = 'Mute';
  $('mic').setAttribute('aria-pressed', 'false');
  $('camera').textContent = 'Camera off';
  $('camera').setAttribute('aria-pressed', 'false');
  setProgress('');
}

function showCallScreen(room) {
  $('join-screen').hidden = true;
  $('call-screen').hidden = false;
  $('controls').hidden = false;
  $('room-label').textContent = `room ${room}`;
}

let joining = false;

async function join() {
  if (call || joining) return;
  joining = true;
  clearError();
  const room = $('room').value.trim();
  const name = $('name').value.trim();
  $('join').disabled = true;
  // Keep the room and name in the address, so a reload or a shared link comes back here.
  const url = new URL(location.href);
  url.searchParams.set('room', room);
  url.searchParams.set('name', name);
  history.replaceState(null, '', url);

  let capture = null;
  let audioOutput = null;
  let joined = null;
  try {
    setProgress('Checking codecs…');
    const codec = await chooseVideoCodec(forcedCodec, settings);
    setProgress('Opening camera and microphone…');
    let missing;
    try {
      ({ stream: capture, missing } = await openCapture(settings));
    } catch (e) {
      throw new Error(captureErrorMessage(e));
    }
    // Browsers let audio play once the page has had a user gesture (the Join click).
    audioOutput = new AudioOutput();
    await audioOutput.start();
    setProgress(`Connecting to ${quicHost}…`);
    joined = new Call({ room, name, token: $('token').value.trim(), codec, capture, audioOutput });
    call = joined;
    await joined.connect();
    if (missing.length) $('call-status').textContent += ` ${missingDevicesNote(missing)}`;
  } catch (e) {
    joined?.teardown();
    capture?.getTracks().forEach((t) => t.stop());
    audioOutput?.close();
    showJoinScreen();
    showError(joinErrorMessage(e));
    return;
  } finally {
    joining = false;
  }
  if (call !== joined) return; // the relay closed the session already (onClosed told why)
  showCallScreen(room);
  setProgress('');
  $('mic').disabled = true; // until there is a producer to pause
  $('camera').disabled = true;
  joined.startSending();
}

function missingDevicesNote(missing) {
  const cannot = { camera: 'see', microphone: 'hear' };
  return `No ${missing.join(' or ')} found: the others cannot ${missing.map((m) => cannot[m]).join(' or ')} you.`;
}

function joinErrorMessage(e) {
  if (e.name === 'ConnectError' && e.kind === 'refused' && e.cause?.code) {
    return `The relay refused to join (${e.cause.code}): ${e.cause.relayMessage}`;
  }
  return e.message || String(e);
}

async function toggle(button, apply) {
  button.disabled = true;
  const on = button.getAttribute('aria-pressed') !== 'true';
  try {
    await apply(on);
    button.setAttribute('aria-pressed', String(on));
    return on;
  } catch (e) {
    showError(`The relay refused (${e.code ?? 'error'}): ${e.relayMessage ?? e.message}`);
    return !on;
  } finally {
    button.disabled = false;
  }
}

function setup() {
  $('room').value = params.get('room') ?? 'demo';
  $('name').value = params.get('name') ?? '';
  $('token').value = params.get('token') ?? '';
  if ($('token').value) $('token-details').open = true;

  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    join();
  });
  $('leave').addEventListener('click', async () => {
    await call?.leave();
    showJoinScreen();
  });
  $('mic').addEventListener('click', async (e) => {
    const button = e.currentTarget;
    const muted = await toggle(button, (on) => call?.setMicMuted(on));
    button.textContent = muted ? 'Unmute' : 'Mute';
  });
  $('camera').addEventListener('click', async (e) => {
    const button = e.currentTarget;
    const off = await toggle(button, (on) => call?.setCameraOff(on));
    button.textContent = off ? 'Camera on' : 'Camera off';
  });
  // Browsers may block sound until the user interacts with the page (e.g. after ?autojoin=1).
  document.addEventListener('click', () => call?.audioOutput.resume());
  // Closing the tab ends the session at once instead of waiting for the idle timeout.
  window.addEventListener('pagehide', () => call?.session?.close());

  const missing = missingFeatures();
  if (missing.length) {
    $('join').disabled = true;
    showError(
      `This browser lacks what the call needs: ${missing.join(', ')}. ` +
        'Use a recent Chromium-based browser (WebTransport and WebCodecs) on https:// or http://localhost.',
    );
    return;
  }
  if (params.get('autojoin') === '1') {
    if (!$('name').value) $('name').value = `guest-${Math.floor(Math.random() * 1000)}`;
    join();
  }
}

// Debugging and test hook: plain JSON of the call as this page sees it.
window.synapse = {
  state: () => (call ? call.snapshot() : { peerId: null, room: null, tiles: [] }),
  // Starts send.maxBacklogMs over, so that a test measures the period it watches.
  resetMaxBacklog: () => call?.videoSender?.resetMaxBacklog(),
};

setup();
