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

import { Session, probeRelay } from './session.js';
import {
  AudioOutput,
  AudioReceiver,
  AudioSender,
  DEFAULT_MAX_SEND_DELAY_MS,
  VideoReceiver,
  VideoSender,
  chooseVideoCodec,
  hasTrackProcessor,
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
    case 'AbortError':
      return 'The camera or microphone cannot be opened (is another application using it?).';
    default:
      return 'The camera and microphone cannot be opened. Check that they are connected and that this page may use them, then join again.';
  }
}

/** An error whose message is a sentence for people (the page's own, not the browser's). */
function readable(message, cause) {
  const e = new Error(message, { cause });
  e.readable = true;
  return e;
}

// What the relay's error codes (docs/PROTOCOL.md section 4.5) mean to the person using
// this page. The relay's `message` is for developers (it may name internal types), so it
// only goes to the console.
const RELAY_ERRORS = {
  unauthorized:
    'The relay did not accept your access token: it may be mistyped, expired, or made for another room. Ask for a new one.',
  forbidden: 'Your access token does not allow this.',
  room_full: 'This room is full. Try again later, or use another room.',
  too_many_rooms:
    'The relay cannot open another room right now. Try again later, or join a call that is already going on.',
  invalid_room: 'A room name is 1 to 64 letters, digits, dots, dashes or underscores (no spaces). Change it and join again.',
  invalid_name: 'Your name must be 1 to 64 characters and not only spaces. Change it and join again.',
  rate_limited: 'This page asked the relay too often in a short time. Wait a moment and try again.',
  unsupported_version:
    'This page and the relay speak different versions of the protocol. Open the page the relay itself serves, or update one of them.',
  too_many_producers: 'The relay accepts no more media from you in this call.',
  bitrate_exceeded: 'You send more than the relay allows; some of your video is dropped.',
  frame_too_large: 'The relay dropped media from this page that was too large.',
  kicked: 'An operator removed you from the call.',
  internal: 'The relay failed unexpectedly. Try again; if it keeps happening, tell whoever runs the relay.',
};

/** A sentence for a relay error code; `fallback` for codes without one of their own. */
function relayErrorText(code, fallback) {
  return Object.hasOwn(RELAY_ERRORS, code) ? RELAY_ERRORS[code] : fallback;
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

  async connect(transport) {
    this.session = await Session.connect({
      relayHost,
      quicHost,
      room: this.room,
      name: this.name,
      token: this.token,
      transport,
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
      this.audioSender = new AudioSender({ session: this.session, track: audioTrack, audioContext: this.audioOutput.ctx });
      starts.push(
        this.audioSender.start().then(
          () => this.senderReady('mic', this.audioSender),
          (e) => this.trackFailed('microphone', e),
        ),
      );
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
      starts.push(
        this.videoSender.start().then(
          () => this.senderReady('camera', this.videoSender),
          (e) => this.trackFailed('camera', e),
        ),
      );
    }
    // Each control is enabled as soon as its own sender produces: a microphone that is
    // slow to deliver (or never does) must not keep Camera off disabled, nor the reverse.
    // One for a track that is not sent stays disabled: there is nothing to mute.
    await Promise.all(starts);
  }

  senderReady(button, sender) {
    if (call !== this || this.tornDown || !sender?.producerId) return;
    $(button).disabled = false;
  }

  trackFailed(what, e) {
    if (this.session?.ended) return;
    console.error(`${what}:`, e);
    const why =
      e?.name === 'RelayError'
        ? relayErrorText(e.code, 'the relay refused it.')
        : 'it could not be encoded or sent.';
    showError(`Cannot send your ${what}: ${why.charAt(0).toLowerCase()}${why.slice(1)} The call goes on without it.`);
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
        if (this.ownPausedByRelay(m.producer_id, paused)) break;
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
        // Not an answer to a request: the relay refused one of our media frames (or an
        // operator removed us: `kicked`, then the session closes).
        console.warn('relay error:', m.code, m.message);
        if (m.code === 'kicked') this.kicked = true;
        showError(relayErrorText(m.code, 'The relay refused some media from this page.'));
        break;
      default:
        // producer_added needs nothing (consumer_added follows); unknown events are ignored.
        break;
    }
  }

  onClosed(info) {
    this.teardown();
    showJoinScreen();
    // Browsers rarely pass on the relay's close reason ("Connection lost." is typical), so
    // it goes to the console only.
    console.warn('session closed:', info.reason);
    showError(
      this.kicked
        ? `${RELAY_ERRORS.kicked} Join again to come back, if the operator allows it.`
        : 'The connection to the relay was lost. Join again to reconnect.',
    );
  }

  /**
   * One of our own producers was paused or resumed for us (an operator, through the
   * relay's admin API; the relay tells the owner of nothing else): stop or start sending
   * it, and show it on its button as if the person had pressed it. False for someone
   * else's producer.
   */
  ownPausedByRelay(producerId, paused) {
    const own = [
      { sender: this.audioSender, state: 'micMuted', button: 'mic', labels: ['Mute', 'Unmute'] },
      { sender: this.videoSender, state: 'cameraOff', button: 'camera', labels: ['Camera off', 'Camera on'] },
    ].find((o) => o.sender?.producerId === producerId);
    if (!own) return false;
    own.sender.setPaused(paused);
    this[own.state] = paused;
    this.localTile.setBadges(this);
    const button = document.getElementById(own.button);
    if (button) {
      button.setAttribute('aria-pressed', String(paused));
      button.textContent = own.labels[paused ? 1 : 0];
    }
    return true;
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
    if (this.audioOutput.blocked && !hasTrackProcessor) {
      // This browser reads the microphone through the same audio context.
      $('audio-blocked').textContent =
        'Sound is blocked by the browser: click anywhere on the page to hear the others and to let them hear you.';
    }
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
  const token = $('token').value.trim();
  $('join').disabled = true;
  // Keep the room and name in the address, so a reload or a shared link comes back here.
  const url = new URL(location.href);
  url.searchParams.set('room', room);
  url.searchParams.set('name', name);
  history.replaceState(null, '', url);

  let capture = null;
  // The audio context is created during the click: browsers that hold audio back until a
  // user gesture let it run (Firefox also reads the microphone through it).
  const audioOutput = new AudioOutput();
  try {
    audioOutput.open();
  } catch (e) {
    console.warn('no audio context yet:', e); // start() tries again and words a failure
  }
  let joined = null;
  try {
    // The relay first: an unreachable relay is the commonest failure, and nothing else
    // (camera, the audio player's module) should be loaded or opened for nothing.
    setProgress(`Contacting the relay at ${relayHost}…`);
    const transport = await probeRelay(relayHost);
    setProgress('Checking codecs…');
    let codec;
    try {
      codec = await chooseVideoCodec(forcedCodec, settings);
    } catch (e) {
      throw readable(e.message, e); // media.js words these for people
    }
    setProgress('Opening camera and microphone…');
    let missing;
    try {
      ({ stream: capture, missing } = await openCapture(settings));
    } catch (e) {
      throw new Error(captureErrorMessage(e));
    }
    // Browsers let audio play once the page has had a user gesture (the Join click).
    try {
      await audioOutput.start();
    } catch (e) {
      throw readable(
        `The audio player of this page could not be loaded from ${location.host}. Check the connection and reload the page.`,
        e,
      );
    }
    setProgress(`Connecting to ${quicHost}…`);
    joined = new Call({ room, name, token, codec, capture, audioOutput });
    call = joined;
    await joined.connect(transport);
    if (missing.length) $('call-status').textContent += ` ${missingDevicesNote(missing)}`;
  } catch (e) {
    console.warn('join failed:', e, e?.cause);
    joined?.teardown();
    capture?.getTracks().forEach((t) => t.stop());
    audioOutput?.close();
    showJoinScreen();
    showError(joinErrorMessage(e, token));
    // A relay that requires tokens greets a newcomer with this: show where the token goes.
    if (!token && refusalCode(e) === 'unauthorized') {
      $('token-details').open = true;
      $('token').focus();
    }
    return;
  } finally {
    joining = false;
  }
  if (call !== joined) return; // the relay closed the session already (onClosed told why)
  showCallScreen(room);
  setProgress('');
  $('mic').disabled = true; // until there is a producer to pause (Call.senderReady)
  $('camera').disabled = true;
  joined.startSending();
}

function missingDevicesNote(missing) {
  const cannot = { camera: 'see', microphone: 'hear' };
  return `No ${missing.join(' or ')} found: the others cannot ${missing.map((m) => cannot[m]).join(' or ')} you.`;
}

/** The relay's error code if it refused the join, else null. */
function refusalCode(e) {
  return e?.name === 'ConnectError' && e.kind === 'refused' && e.cause?.name === 'RelayError' ? e.cause.code : null;
}

/** What to tell the person when joining failed: always a sentence, never a browser's error. */
function joinErrorMessage(e, token) {
  const code = refusalCode(e);
  if (code === 'unauthorized' && !token) {
    return 'This relay needs an access token. Paste the token you were given into the Access token field below and join again.';
  }
  if (code === 'forbidden') return 'Your access token does not allow you to join this call.';
  if (code) return relayErrorText(code, 'The relay refused to let you join. Try again later.');
  // session.js words its ConnectErrors for people; so does this page its own errors.
  if (e?.name === 'ConnectError' || e?.readable) return e.message;
  return 'Joining failed unexpectedly. Reload the page and try again.';
}

async function toggle(button, apply) {
  button.disabled = true;
  const on = button.getAttribute('aria-pressed') !== 'true';
  try {
    await apply(on);
    button.setAttribute('aria-pressed', String(on));
    return on;
  } catch (e) {
    console.warn('request failed:', e);
    showError(
      e?.name === 'RelayError'
        ? relayErrorText(e.code, 'The relay refused the change. Try again.')
        : 'The change did not reach the relay. Try again.',
    );
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
        'Use a recent Chromium-based browser or Firefox (WebTransport and WebCodecs) on https:// or http://localhost.',
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
