// The page: join screen, call screen, controls, and the bookkeeping that ties relay
// events (peers, producers, consumers) to tiles, senders and receivers.
//
// URL parameters: ?room= ?name= prefill the form; ?autojoin=1 joins at once;
// ?codec=vp8|vp9|h264|av1 forces the video codec; ?width= ?height= ?fps= ?bitrate=
// (bit/s) set the encoder; ?maxSendDelay= (ms, default 300) bounds the video send backlog;
// ?relay=host:port talks to another relay than the page's own; ?quic=host:port sends the
// WebTransport session there instead (a UDP proxy in front of the relay; the certificate
// hash still comes from the relay); ?token= is the access token for a relay that requires one;
// ?simulcast=0 publishes one video layer even to a relay that accepts several;
// ?screenBitrate= (bit/s) is the most a shared screen is sent at; ?transport=ws or
// ?transport=wt forces the WebSocket fallback (TCP, docs/PROTOCOL.md section 17) or
// WebTransport (UDP), where by default both are tried (section 17.5). The transport in use
// shows next to the room name and in document.body.dataset.transport. ?stats=1 shows the
// stats on the tiles from the start (otherwise the Stats button does).
//
// Copy invite link (in the call) copies this page's address with the room and the
// relay/quic/transport parameters the page was opened with, never the token or the name:
// opening it shows the join screen with the room filled in.
//
// Conference features (docs/PROTOCOL.md section 15) are used only when the join result's
// `extensions` lists them: audio levels in the microphone's datagrams and the speaking
// highlight (`audio_level`), the chat (`data`), screen sharing (`screen`). With an older
// relay, which lists none, the page does what it did before them.

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
  openDevice,
} from './media.js';
import { LocalScreenTile, LocalTile, RemoteTile, ScreenTile } from './tiles.js';
import { ConsumerView } from './consumer-view.js';
import { ChatPanel, ParticipantList } from './panels.js';
import { DevicePickers } from './devices.js';
import { PreJoin } from './prejoin.js';

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Reconnecting (docs/PROTOCOL.md section 16), by the native client's policy
// (src/client/join.rs): the relay speaks at least once a second (transport_stats), so 5 s
// of silence is a dead path; tries are 250 ms apart, doubling up to 4 s, each given 3 s,
// for the relay's grace period (at least 5 s), or 10 s after going_away (a restarting
// relay comes back on the same address).
const SILENCE_TIMEOUT_MS = 5000;
const RECONNECT_FIRST_BACKOFF_MS = 250;
const RECONNECT_MAX_BACKOFF_MS = 4000;
const RECONNECT_ATTEMPT_MS = 3000;
const RECONNECT_MIN_WINDOW_MS = 5000;
const GOING_AWAY_WINDOW_MS = 10_000;
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
// A shared screen (section 15.6): sharp text matters more than smooth motion, so up to
// 1920x1080 at 5 to 15 frames a second (a still screen is sent again at 5, so that a
// newcomer gets a picture soon), and a higher bitrate than the camera.
const SCREEN = {
  maxWidth: 1920,
  maxHeight: 1080,
  fps: 15,
  minFps: 5,
  bitrate: intParam('screenBitrate', 1_500_000, 100_000, 20_000_000),
};
// The largest send_data payload (section 15.4), in bytes of UTF-8.
const MAX_DATA_BYTES = 16_384;
const forcedCodec = params.get('codec')?.toLowerCase() || null;
// HTTP and WebTransport share the port number, so by default the page's own host is the relay.
// Both change when a relay of a cluster sends the join to the relay that hosts the room
// (`wrong_relay`, docs/CLUSTER.md); reconnections then go there too.
let relayHost = params.get('relay') || location.host;
let quicHost = params.get('quic') || relayHost;
// Redirects followed for one join, at most.
const MAX_REDIRECTS = 3;
const transportPreference = { ws: 'ws', wt: 'wt' }[params.get('transport')?.toLowerCase()] ?? 'auto';
const TRANSPORT_NAMES = { webtransport: 'WebTransport (UDP)', websocket: 'WebSocket (TCP)' };
// What an invite link keeps of this page's address besides the room: where the relay is and
// how to reach it. Never the token (it is the sender's own) nor the name.
const INVITE_PARAMS = ['relay', 'quic', 'transport'];

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

/**
 * Why another camera or microphone (`what`) could not be used, for people: a getUserMedia
 * failure of a device picked during the call. The call goes on with the one before.
 */
function deviceErrorMessage(e, what) {
  switch (e?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return `This page may not use that ${what}. Allow it in the browser's settings for this site, or pick another one.`;
    case 'NotFoundError':
    case 'OverconstrainedError':
      return `That ${what} is no longer connected. Pick another one.`;
    case 'NotReadableError':
    case 'AbortError':
      return `That ${what} could not be started: another application may be using it. Pick another one.`;
    default:
      return `That ${what} could not be started. Pick another one.`;
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

// What a refused chat message (send_data) means to the person who wrote it.
const CHAT_ERRORS = {
  forbidden: 'You are not allowed to send messages in this room.',
  rate_limited: 'You are sending messages too quickly. Wait a moment, then send it again.',
  data_too_large: 'That message is too long to send. Shorten it and try again.',
  bad_request: 'The relay could not take that message. Change it and try again.',
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
    this.screenSender = null; // this page's shared screen, while it is shared
    this.screenTiles = new Map(); // producerId -> ScreenTile (remote screens)
    this.peers = new Map(); // peerId -> { name, producers: Map(producerId -> { kind, source, paused }) }
    this.speakers = []; // the relay's latest active_speakers
    this.closedProducers = new Set(); // own producers closed: late refusals of them are expected
    this.lossy = { received: 0, last: null }; // lossy data datagrams received (section 15.5)
    this.micMuted = false;
    this.cameraOff = false;
    this.link = null; // the relay's latest transport_stats about its link to us
    this.reconnecting = null; // while the session is being restored: { since, until, goingAway, attempts }
    // Sessions restored: the same place, or joined anew (of which `resumeFailed`: after the
    // relay answered resume_failed).
    this.reconnects = { resumed: 0, rejoined: 0, resumeFailed: 0 };
    this.interrupted = new Set(); // other peers whose session dropped (peer_interrupted)
    this.grid = $('tiles');
    this.localTile = new LocalTile(this.grid, name, capture);
    this.people = new ParticipantList($('people-list'), $('people-count'));
    this.chat = new ChatPanel({
      root: $('chat'),
      messages: $('chat-messages'),
      form: $('chat-form'),
      input: $('chat-input'),
      button: $('chat-send'),
      error: $('chat-error'),
      onSend: (text) => this.sendChat(text),
    });
    this.starting = { audio: null, video: null }; // the senders' start(), while it runs
    this.deviceSwitches = { audio: 0, video: 0 }; // devices switched during the call
    this.pickers = new DevicePickers({
      root: $('devices'),
      selects: { video: $('camera-select'), audio: $('mic-select') },
      error: $('devices-error'),
      onPick: (kind, deviceId) => this.switchDevice(kind, deviceId),
      current: (kind) => this.deviceInUse(kind),
    });
    for (const track of capture.getTracks()) this.watchTrack(track);
    this.statsTimer = setInterval(() => this.updateStats(), 1000);
  }

  /** Opens a session and joins (or, with `resume`, takes the place back); see Session.connect. */
  async openSession({ transport, resume, timeoutMs } = {}) {
    let session = null;
    session = await Session.connect({
      relayHost,
      quicHost,
      transportPreference,
      room: this.room,
      name: this.name,
      token: this.token,
      transport,
      resume,
      timeoutMs,
      onEvent: (m) => {
        if (session === null || this.session === session) this.onEvent(m);
      },
      onAudio: (f) => {
        const entry = this.receivers.get(f.producerId);
        if (entry?.kind === 'audio' && !entry.stale) entry.receiver.frame(f);
      },
      onLossyData: (d) => {
        this.lossy.received++;
        this.lossy.last = { from: d.from, text: new TextDecoder().decode(d.payload) };
      },
      videoSink: (producerId) => {
        const entry = this.receivers.get(producerId);
        // A receiver whose consumer ended with the last session waits for its replacement.
        return entry?.kind === 'video' && !entry.stale ? entry.receiver : null;
      },
      onClosed: (info) => {
        if (this.session === session) this.onClosed(info);
      },
    });
    return session;
  }

  async connect(transport) {
    this.session = await this.openSession({ transport });
    this.showTransport();
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
    // The chat, where the relay has it; read-only for a token that may not send data.
    if (this.session.supports('data')) {
      this.chat.show(true);
      const grants = joined.grants ?? {};
      this.chat.setEnabled(grants.can_publish_data !== false, CHAT_ERRORS.forbidden);
    }
    this.refreshPeople();
    this.session.releaseEvents();
  }

  /** Which transport carries the call: on the body (for tests) and next to the room name. */
  showTransport() {
    const kind = this.session?.transportKind;
    if (!kind) return;
    document.body.dataset.transport = kind;
    const label = $('room-label');
    label.dataset.transport = TRANSPORT_NAMES[kind];
    label.title = `Connected over ${TRANSPORT_NAMES[kind]}`;
    if (label.textContent) label.textContent = `room ${this.room} · ${TRANSPORT_NAMES[kind]}`; // in the call already
  }

  /** Whether sharing a screen is possible: the relay takes it, the token allows it, the browser can. */
  get canShareScreen() {
    if (!this.session?.supports('screen') || !this.mayPublish('video')) return false;
    const sources = this.session.joined.grants?.sources;
    if (Array.isArray(sources) && !sources.includes('screen')) return false;
    return typeof navigator.mediaDevices?.getDisplayMedia === 'function';
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
    // Each control is enabled as soon as its own sender produces: a microphone that is
    // slow to deliver (or never does) must not keep Camera off disabled, nor the reverse.
    // One for a track that is not sent stays disabled: there is nothing to mute.
    await Promise.all([audioTrack && this.startAudio(audioTrack), videoTrack && this.startVideo(videoTrack)]);
  }

  /** Sends the microphone `track` (a new audio producer); resolves when it runs or failed. */
  startAudio(track) {
    this.audioSender = new AudioSender({
      session: this.session,
      track,
      audioContext: this.audioOutput.ctx,
      sendLevel: this.session.supports('audio_level'), // an older relay refuses the level byte
    });
    const sender = this.audioSender;
    const started = sender.start().then(
      () => this.senderReady('mic', sender),
      (e) => this.trackFailed('microphone', e),
    );
    this.starting.audio = started.finally(() => {
      if (this.audioSender === sender) this.starting.audio = null;
    });
    return started;
  }

  /** Sends the camera `track` (a new video producer); resolves when it runs or failed. */
  startVideo(track) {
    this.videoSender = new VideoSender({
      session: this.session,
      track,
      choice: this.codec,
      settings,
      maxSendDelayMs: settings.maxSendDelayMs,
      simulcast: settings.simulcast,
    });
    const sender = this.videoSender;
    const started = sender.start().then(
      () => this.senderReady('camera', sender),
      (e) => this.trackFailed('camera', e),
    );
    this.starting.video = started.finally(() => {
      if (this.videoSender === sender) this.starting.video = null;
    });
    return started;
  }

  /** The deviceId of the camera ('video') or microphone ('audio') in use, or null. */
  deviceInUse(kind) {
    const [track] = kind === 'video' ? this.capture.getVideoTracks() : this.capture.getAudioTracks();
    return track?.readyState === 'live' ? (track.getSettings().deviceId ?? null) : null;
  }

  /** Says so when a device in use stops by itself (unplugged, or taken by the system). */
  watchTrack(track) {
    track.addEventListener('ended', () => {
      if (this.tornDown || !this.capture.getTracks().includes(track)) return; // replaced meanwhile
      const what = track.kind === 'video' ? 'camera' : 'microphone';
      this.pickers.setError(`Your ${what} stopped working (was it unplugged?). Pick another one to go on.`);
      this.pickers.refresh();
    });
  }

  /**
   * Uses another camera ('video') or microphone ('audio') during the call, picked by its
   * deviceId: the new device is opened, its track handed to the running sender (the same
   * producer: the others keep their consumer, and the camera's next frame is a keyframe),
   * then the old one is stopped. A device that cannot be opened while the old one is (a
   * camera that takes one user at a time) is tried again with the old one closed. Without a
   * sender yet (nothing of this kind at the join) one is started. Rejects with a sentence
   * for people; the call goes on with what it had.
   */
  async switchDevice(kind, deviceId, { reopen = false } = {}) {
    const what = kind === 'video' ? 'camera' : 'microphone';
    await this.starting[kind]?.catch(() => {});
    if (this.tornDown) return;
    if (!this.mayPublish(kind)) throw readable(`Your access token does not allow you to send your ${what}.`);
    const [old] = kind === 'video' ? this.capture.getVideoTracks() : this.capture.getAudioTracks();
    const oldDeviceId = old?.getSettings().deviceId ?? null;
    if (old?.readyState === 'live' && oldDeviceId === deviceId && !reopen) return;
    let track;
    try {
      track = await openDevice(kind, settings, deviceId);
    } catch (e) {
      console.warn(`cannot open the ${what} ${deviceId}:`, e);
      if (!old || old.readyState !== 'live' || (e?.name !== 'NotReadableError' && e?.name !== 'AbortError')) {
        throw readable(deviceErrorMessage(e, what), e);
      }
      // Perhaps busy with the old track: close it and try again, else take the old one back.
      old.stop();
      try {
        track = await openDevice(kind, settings, deviceId);
      } catch (e2) {
        console.warn(`cannot open the ${what} ${deviceId} either with the old one closed:`, e2);
        try {
          this.useTrack(kind, await openDevice(kind, settings, oldDeviceId), old);
        } catch (e3) {
          console.warn(`cannot open the previous ${what} again:`, e3);
        }
        throw readable(deviceErrorMessage(e2, what), e2);
      }
    }
    if (this.tornDown) {
      track.stop();
      return;
    }
    this.useTrack(kind, track, old);
    this.deviceSwitches[kind]++;
  }

  /** Puts `track` in the place of `old` (or of nothing): capture, preview, sender. */
  useTrack(kind, track, old) {
    if (this.tornDown) {
      track.stop(); // left meanwhile
      return;
    }
    if (old) this.capture.removeTrack(old);
    this.capture.addTrack(track);
    this.watchTrack(track);
    if (kind === 'video') this.localTile.setStream(this.capture);
    const sender = kind === 'video' ? this.videoSender : this.audioSender;
    if (sender?.producerId) {
      sender.replaceTrack(track);
    } else {
      sender?.stop(); // one that failed to start: a new producer instead
      if (kind === 'video') this.startVideo(track);
      else this.startAudio(track);
    }
    old?.stop();
  }

  senderReady(button, sender) {
    if (call !== this || this.tornDown || !sender?.producerId) return;
    $(button).disabled = false;
    this.refreshPeople();
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
    if (!this.peers.has(peer.peer_id)) this.peers.set(peer.peer_id, { name: peer.name, producers: new Map() });
    for (const p of peer.producers ?? []) this.producerAdded(p);
    if (this.tiles.has(peer.peer_id)) return this.tiles.get(peer.peer_id);
    const tile = new RemoteTile(this.grid, peer.peer_id, peer.name);
    this.tiles.set(peer.peer_id, tile);
    if (this.speakers.some((s) => s.peer_id === peer.peer_id)) this.setSpeakers(this.speakers);
    for (const p of peer.producers ?? []) {
      if (p.paused) this.pausedProducers.add(p.producer_id);
      if (p.source !== 'screen') tile.setPaused(p.kind, p.paused);
    }
    return tile;
  }

  removePeer(peerId) {
    this.interrupted.delete(peerId);
    for (const [producerId, entry] of this.receivers) {
      if (entry.peerId === peerId) this.closeReceiver(producerId);
    }
    this.tiles.get(peerId)?.remove();
    this.tiles.delete(peerId);
    this.peers.delete(peerId);
  }

  /** Bookkeeping for the participant list: a peer's producer (ProducerInfo). */
  producerAdded(p) {
    const peer = this.peers.get(p.peer_id);
    if (!peer) return;
    peer.producers.set(p.producer_id, { kind: p.kind, source: p.source ?? null, paused: p.paused === true });
  }

  /** Who is in the call and what each sends, this page first. */
  participants() {
    const speaking = new Set(this.speakers.map((s) => s.peer_id));
    const ownId = this.session?.joined?.peer_id ?? null;
    const micOf = (audio) => (!audio ? 'none' : audio.paused ? 'muted' : 'on');
    const cameraOf = (video) => (!video ? 'none' : video.paused ? 'off' : 'on');
    const self = {
      peerId: ownId,
      name: this.session?.joined?.name ?? this.name,
      self: true,
      mic: micOf(this.audioSender?.producerId && { paused: this.micMuted }),
      camera: cameraOf(this.videoSender?.producerId && { paused: this.cameraOff }),
      screen: !!this.screenSender?.producerId,
      speaking: speaking.has(ownId),
      reconnecting: this.reconnecting !== null,
    };
    const others = [...this.peers].map(([peerId, peer]) => {
      const producers = [...peer.producers.values()];
      const isScreen = (p) => p.source === 'screen' || p.source === 'screen_audio';
      return {
        peerId,
        name: peer.name,
        self: false,
        mic: micOf(producers.find((p) => p.kind === 'audio' && !isScreen(p))),
        camera: cameraOf(producers.find((p) => p.kind === 'video' && !isScreen(p))),
        screen: producers.some((p) => p.kind === 'video' && p.source === 'screen'),
        speaking: speaking.has(peerId),
        reconnecting: this.interrupted.has(peerId),
      };
    });
    return [self, ...others];
  }

  refreshPeople() {
    if (this.tornDown) return;
    this.people.render(this.participants());
  }

  /** The relay's active_speakers: highlight their tiles, the first one most. */
  setSpeakers(speakers) {
    this.speakers = Array.isArray(speakers) ? speakers : [];
    const rank = new Map();
    for (const s of this.speakers) if (!rank.has(s.peer_id)) rank.set(s.peer_id, rank.size);
    for (const [peerId, tile] of this.tiles) tile.setSpeaking(rank.get(peerId) ?? null);
    this.localTile.setSpeaking(rank.get(this.session?.joined?.peer_id) ?? null);
    this.refreshPeople();
  }

  /** A peer's display name, for chat messages. */
  peerName(peerId) {
    return this.peers.get(peerId)?.name ?? `peer ${peerId}`;
  }

  /** Sends a chat message; rejects with a sentence for people. Resolves with a note, if any. */
  async sendChat(text) {
    if (new TextEncoder().encode(text).length > MAX_DATA_BYTES) throw new Error(CHAT_ERRORS.data_too_large);
    let result;
    try {
      result = await this.session.request('send_data', { payload: text, topic: 'chat' });
    } catch (e) {
      console.warn('send_data:', e);
      if (e?.name === 'RelayError') {
        throw new Error(Object.hasOwn(CHAT_ERRORS, e.code) ? CHAT_ERRORS[e.code] : 'The relay did not take your message. Try again.');
      }
      throw new Error('Your message did not reach the relay. Check the connection and try again.');
    }
    this.chat.add({ from: this.session.joined.peer_id, name: this.session.joined.name ?? this.name, text, own: true });
    return result?.delivered === 0 ? 'Nobody else is in the call to read it yet.' : '';
  }

  /** auto_subscribe gave us a consumer: start decoding it into its peer's tile. */
  addConsumer(consumer) {
    const producer = consumer.producer;
    const existing = this.receivers.get(producer.producer_id);
    if (existing && !existing.stale) return;
    if (existing) {
      // After a reconnection: a new consumer of the same producer. Its tile stays (with
      // the last picture) and a new receiver decodes into it.
      existing.receiver.close();
      existing.view?.close();
      this.receivers.delete(producer.producer_id);
    }
    const peerTile = this.tiles.get(producer.peer_id) ?? this.addPeer({ peer_id: producer.peer_id, name: `peer ${producer.peer_id}` });
    this.producerAdded(producer);
    // A shared screen gets a large tile of its own; everything else goes to the peer's tile.
    const screen = producer.kind === 'video' && producer.source === 'screen';
    let tile = peerTile;
    if (screen) {
      tile = this.screenTiles.get(producer.producer_id);
      if (!tile) {
        tile = new ScreenTile(this.grid, producer.peer_id, peerTile.name, producer.producer_id);
        this.screenTiles.set(producer.producer_id, tile);
      }
    }
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
      screen,
      peerId: producer.peer_id,
      consumerId: consumer.consumer_id,
      receiver,
      view,
    });
    if (!screen) tile.setPaused(producer.kind, producer.paused || this.pausedProducers.has(producer.producer_id));
    this.refreshPeople();
  }

  closeReceiver(producerId) {
    const entry = this.receivers.get(producerId);
    if (!entry) return;
    entry.receiver.close();
    entry.view?.close();
    this.receivers.delete(producerId);
    this.screenTiles.get(producerId)?.remove();
    this.screenTiles.delete(producerId);
  }

  onEvent(m) {
    switch (m.type) {
      case 'peer_joined':
        this.addPeer(m.peer);
        this.refreshPeople();
        break;
      case 'peer_left':
        this.removePeer(m.peer_id);
        if (this.speakers.some((s) => s.peer_id === m.peer_id)) {
          this.setSpeakers(this.speakers.filter((s) => s.peer_id !== m.peer_id));
        }
        this.refreshPeople();
        break;
      case 'producer_added':
        this.producerAdded(m.producer); // consumer_added follows, with auto-subscribe
        this.refreshPeople();
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
        this.peers.get(m.peer_id)?.producers.delete(m.producer_id);
        this.refreshPeople();
        break;
      case 'active_speakers':
        this.setSpeakers(m.speakers);
        break;
      case 'data':
        // Reliable application data (section 15.4); this page knows the topic "chat".
        if (m.topic === 'chat' && typeof m.payload === 'string') {
          this.chat.add({ from: m.from, name: this.peerName(m.from), text: m.payload });
        }
        break;
      case 'producer_paused':
      case 'producer_resumed': {
        const paused = m.type === 'producer_paused';
        if (this.ownPausedByRelay(m.producer_id, paused)) break;
        if (paused) this.pausedProducers.add(m.producer_id);
        else this.pausedProducers.delete(m.producer_id);
        const entry = this.receivers.get(m.producer_id);
        if (entry && !entry.screen) this.tiles.get(entry.peerId)?.setPaused(entry.kind, paused);
        for (const peer of this.peers.values()) {
          const p = peer.producers.get(m.producer_id);
          if (p) p.paused = paused;
        }
        this.refreshPeople();
        break;
      }
      case 'transport_stats':
        // About once a second: the relay's measurements of its connection to this page.
        this.link = { ...m, receivedAt: performance.now() };
        this.videoSender?.setRelayRtt(m.rtt_ms); // the network's part of the send backlog
        this.screenSender?.setRelayRtt(m.rtt_ms);
        break;
      case 'keyframe_request':
        // With `layer` for a producer with layers: that layer's encoder; without, all of them.
        if (m.producer_id === this.videoSender?.producerId) this.videoSender.requestKeyframe(m.layer);
        if (m.producer_id === this.screenSender?.producerId) this.screenSender.requestKeyframe(m.layer);
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
        // The relay is shutting down (perhaps to restart) and asks peers to leave before it
        // closes them: this session ends now, and the page tries to come back for a while.
        console.warn('the relay is going away:', m.reason);
        this.connectionLost('going_away', { goingAway: true });
        break;
      case 'peer_interrupted':
      case 'peer_resumed': {
        // Another peer's session dropped (its place is kept for a while), or it is back.
        const interrupted = m.type === 'peer_interrupted';
        if (interrupted) this.interrupted.add(m.peer_id);
        else this.interrupted.delete(m.peer_id);
        this.tiles.get(m.peer_id)?.setInterrupted(interrupted);
        for (const t of this.screenTiles.values()) if (t.peerId === m.peer_id) t.setInterrupted?.(interrupted);
        this.refreshPeople();
        break;
      }
      case 'error':
        // Not an answer to a request: the relay refused one of our media frames (or an
        // operator removed us: `kicked`, then the session closes).
        console.warn('relay error:', m.code, m.message);
        // The last frames of a producer this page has just closed (a shared screen) may
        // still arrive after the close: nothing was lost that anybody needed.
        if (m.code === 'unknown_producer' && this.closedProducers.has(m.producer_id)) break;
        if (m.code === 'kicked') this.kicked = true;
        showError(relayErrorText(m.code, 'The relay refused some media from this page.'));
        break;
      default:
        // producer_added needs nothing (consumer_added follows); unknown events are ignored.
        break;
    }
  }

  onClosed(info) {
    if (this.tornDown) return;
    // Browsers rarely pass on the relay's close reason ("Connection lost." is typical), so
    // it goes to the console only.
    if (!this.kicked) {
      this.connectionLost(info.reason);
      return;
    }
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
    if (this.screenSender && producerId === this.screenSender.producerId) {
      this.screenSender.setPaused(paused); // no button for it: Stop sharing still stops it
      return true;
    }
    const own = [
      { sender: this.audioSender, state: 'micMuted', button: 'mic', labels: ['Mute', 'Unmute'] },
      { sender: this.videoSender, state: 'cameraOff', button: 'camera', labels: ['Camera off', 'Camera on'] },
    ].find((o) => o.sender?.producerId === producerId);
    if (!own) return false;
    own.sender.setPaused(paused);
    this[own.state] = paused;
    this.localTile.setBadges(this);
    this.refreshPeople();
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
    this.refreshPeople();
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
    this.refreshPeople();
  }

  /**
   * Shares a screen (section 15.6): the browser asks which, then it is sent as a second
   * video producer with source "screen", encoded for sharp text. Resolves true once it is
   * sent; false if the person chose nothing. Failures are readable errors.
   */
  async startScreenShare() {
    if (this.screenSender || !this.canShareScreen) return false;
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({
        video: {
          width: { max: SCREEN.maxWidth },
          height: { max: SCREEN.maxHeight },
          frameRate: { ideal: SCREEN.fps, max: SCREEN.fps },
        },
        audio: false,
      });
    } catch (e) {
      console.warn('getDisplayMedia:', e);
      if (e?.name === 'NotAllowedError') return false; // cancelled in the picker, or not allowed
      if (e?.name === 'NotFoundError') throw readable('There is no screen or window that this browser can share.', e);
      throw readable('Your screen cannot be shared: this browser could not capture it.', e);
    }
    const [track] = stream.getVideoTracks();
    if (this.tornDown || !track) {
      stream.getTracks().forEach((t) => t.stop());
      return false;
    }
    if ('contentHint' in track) track.contentHint = 'detail'; // keep resolution, give up frame rate
    let sender;
    try {
      const { choice, settings: screenSettings } = await screenEncoding(this.codec, track.getSettings());
      sender = new VideoSender({
        session: this.session,
        track,
        choice,
        settings: screenSettings,
        maxSendDelayMs: settings.maxSendDelayMs,
        simulcast: false,
        source: 'screen',
        minFps: SCREEN.minFps,
      });
      this.screenSender = sender;
      this.screenTrack = track;
      // The browser's own "Stop sharing", or the shared window closing, ends the track.
      track.addEventListener('ended', () => this.stopScreenShare());
      await sender.start();
    } catch (e) {
      if (this.screenSender === sender) this.screenSender = null;
      this.screenTrack = null;
      sender?.stop();
      track.stop();
      if (e?.readable) throw e;
      console.warn('screen sharing:', e);
      throw readable(
        e?.name === 'RelayError'
          ? e.code === 'forbidden'
            ? 'Your access token does not allow you to share your screen.'
            : relayErrorText(e.code, 'The relay did not accept your screen.')
          : 'Your screen cannot be shared: it could not be encoded or sent.',
        e,
      );
    }
    if (this.tornDown || this.screenSender !== sender) return false;
    this.screenPreview = new LocalScreenTile(this.grid, new MediaStream([track]));
    this.refreshPeople();
    return true;
  }

  /** Stops sharing: the open stream is finished before the producer is closed. */
  async stopScreenShare() {
    const sender = this.screenSender;
    if (!sender) return;
    this.screenSender = null;
    this.closedProducers.add(sender.producerId);
    const finished = sender.finish();
    this.screenTrack?.stop();
    this.screenTrack = null;
    this.screenPreview?.remove();
    this.screenPreview = null;
    const button = $('screen');
    button.textContent = 'Share screen';
    button.setAttribute('aria-pressed', 'false');
    this.refreshPeople();
    await finished;
    if (sender.producerId && !this.session.ended) {
      await this.session.request('close_producer', { producer_id: sender.producerId }).catch((e) => {
        console.warn('close_producer (screen):', e);
      });
    }
  }

  updateStats() {
    this.checkSilence();
    this.localTile.updateStats(this.videoSender, this.audioSender, this.codec.name, this.link);
    this.screenPreview?.updateStats(this.screenSender, this.codec.name);
    const byPeer = new Map();
    for (const [producerId, entry] of this.receivers) {
      if (entry.screen) {
        this.screenTiles.get(producerId)?.updateStats(entry.receiver);
        continue;
      }
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
    this.showReconnecting(false);
    this.videoSender?.stop();
    this.audioSender?.stop();
    this.screenSender?.stop();
    this.screenSender = null;
    this.screenTrack?.stop();
    this.screenPreview?.remove();
    this.people.clear();
    this.chat.reset();
    this.pickers.close();
    for (const producerId of [...this.receivers.keys()]) this.closeReceiver(producerId);
    for (const tile of this.tiles.values()) tile.remove();
    this.tiles.clear();
    this.localTile.remove();
    for (const track of this.capture.getTracks()) track.stop();
    this.audioOutput.close();
    this.session?.close();
    if (call === this) call = null;
  }

  // -------------------------------------------------------------------------
  // Reconnecting (docs/PROTOCOL.md section 16).

  /** Nothing from the relay for SILENCE_TIMEOUT_MS, where it would resume us: a dead path. */
  checkSilence() {
    const session = this.session;
    if (this.reconnecting || this.tornDown || !session?.joined?.resume_token || session.ended) return;
    if (performance.now() - session.lastHeard > SILENCE_TIMEOUT_MS) {
      this.connectionLost(`nothing from the relay for ${SILENCE_TIMEOUT_MS / 1000} s`);
    }
  }

  /**
   * The session is gone without the person leaving (closed, silent, or the relay going
   * away): the tiles stay, dimmed, the senders wait, and the page connects again.
   */
  connectionLost(reason, { goingAway = false } = {}) {
    if (this.reconnecting || this.tornDown) return;
    console.warn('connection to the relay lost:', reason);
    const old = this.session;
    const joined = old?.joined ?? {};
    if (goingAway) {
      // A relay that shuts down keeps no place: leave, so that it need not wait for this
      // peer, and join anew once it (or its successor) answers again.
      old?.leave();
    } else {
      old?.close(); // without leave: the relay keeps the place for its grace period
    }
    const now = performance.now();
    const windowMs = goingAway ? GOING_AWAY_WINDOW_MS : Math.max(joined.resume_grace_ms ?? 0, RECONNECT_MIN_WINDOW_MS);
    this.reconnecting = { since: now, until: now + windowMs, goingAway, attempts: 0 };
    this.resumePlace = joined.resume_token && !goingAway
      ? { peerId: joined.peer_id, token: joined.resume_token, autoSubscribe: old.subscribed }
      : null;
    for (const sender of [this.videoSender, this.audioSender, this.screenSender]) sender?.suspend?.();
    // Every consumer ended with the session: the receivers wait for their replacements.
    for (const entry of this.receivers.values()) {
      entry.stale = true;
      entry.view?.close();
      entry.view = null;
    }
    this.interrupted.clear();
    for (const tile of this.tiles.values()) tile.setInterrupted(false);
    this.showReconnecting(true);
    this.refreshPeople();
    this.reconnectLoop();
  }

  /** Shows (or hides) that the call is being reconnected: a banner, and the tiles dimmed. */
  showReconnecting(on) {
    const banner = $('reconnecting');
    if (!banner) return;
    banner.hidden = !on;
    if (on) {
      banner.textContent = this.reconnecting?.goingAway
        ? 'Reconnecting… The relay is going away; if it is restarting, you will be back in the call as soon as it answers.'
        : 'Reconnecting… The connection to the relay was interrupted; the call resumes as soon as it is back.';
    }
    this.grid.classList.toggle('reconnecting', on);
    this.localTile.root.classList.toggle('reconnecting', on);
    // Mute, Camera off and Share screen need the relay: they wait for it.
    if (this.tornDown || call !== this) return;
    $('mic').disabled = on || !this.audioSender?.producerId;
    $('camera').disabled = on || !this.videoSender?.producerId;
    $('screen').disabled = on;
  }

  /** Tries to get back into the call with backoff until the window closes. */
  async reconnectLoop() {
    let backoff = RECONNECT_FIRST_BACKOFF_MS;
    for (;;) {
      if (this.tornDown || !this.reconnecting) return;
      this.reconnecting.attempts++;
      let session = null;
      try {
        session = await this.openSession({ resume: this.resumePlace, timeoutMs: RECONNECT_ATTEMPT_MS });
      } catch (e) {
        console.warn(`reconnection attempt ${this.reconnecting.attempts} failed:`, e, e?.cause);
        // A relay that refuses for good (a token that expired meanwhile, say) is not asked again.
        if (e?.kind === 'refused' && !['room_full', 'rate_limited', 'too_many_rooms', 'internal'].includes(e.cause?.code)) {
          this.giveUpReconnecting(e);
          return;
        }
      }
      if (session) {
        if (this.tornDown) {
          session.leave(); // left meanwhile: the relay need not keep this place
          return;
        }
        try {
          await this.resync(session);
          return;
        } catch (e) {
          console.warn('the call could not be taken up again on the new session:', e);
          session.close();
        }
      }
      if (this.tornDown) return;
      if (performance.now() + backoff >= this.reconnecting.until) break;
      await sleep(backoff);
      backoff = Math.min(backoff * 2, RECONNECT_MAX_BACKOFF_MS);
    }
    this.giveUpReconnecting(null);
  }

  /** The call could not be restored in time: back to the join screen, saying so. */
  giveUpReconnecting(e) {
    if (this.tornDown) return;
    const goingAway = this.reconnecting?.goingAway;
    this.teardown();
    showJoinScreen();
    const code = refusalCode(e);
    if (code) {
      showError(relayErrorText(code, 'The relay refused to let you back into the call. Join again to reconnect.'));
    } else if (goingAway) {
      showError('The relay is going away (it shut down or is restarting) and could not be reached again. Join again to reconnect.');
    } else {
      showError('The connection to the relay was lost and could not be restored. Join again to reconnect.');
    }
  }

  /**
   * Takes the call up on a new session: the same place (the same producers go on, the
   * consumers in the result replace the old ones) or, when the relay no longer had it, a
   * new one (the tracks are produced anew). The tiles of peers still there stay.
   */
  async resync(session) {
    const joined = session.joined;
    const resumed = session.resumed;
    this.session = session;
    this.showTransport(); // a reconnection may have taken the other transport
    this.resumePlace = null;
    // Who is in the call now: peers gone meanwhile lose their tiles, new ones get one.
    const present = new Set(joined.peers.map((p) => p.peer_id));
    for (const peerId of [...this.peers.keys()]) if (!present.has(peerId)) this.removePeer(peerId);
    const producers = new Set();
    for (const peer of joined.peers) {
      const known = this.peers.get(peer.peer_id);
      if (known) known.producers = new Map();
      const tile = this.addPeer(peer);
      for (const p of peer.producers ?? []) {
        producers.add(p.producer_id);
        if (p.paused) this.pausedProducers.add(p.producer_id);
        else this.pausedProducers.delete(p.producer_id);
        if (p.source !== 'screen') tile.setPaused(p.kind, p.paused === true);
      }
    }
    // Receivers of producers that are gone go; the others wait for their new consumer.
    for (const [producerId, entry] of [...this.receivers]) {
      if (entry.stale && !producers.has(producerId)) this.closeReceiver(producerId);
    }
    for (const consumer of joined.consumers ?? []) this.addConsumer(consumer);
    const senders = [this.videoSender, this.audioSender, this.screenSender].filter((s) => s?.producerId);
    if (resumed) {
      for (const sender of senders) sender.resumeOn(session);
      this.reconnects.resumed++;
    } else {
      // A new place (new peer id): the tracks are published again, as new producers, and
      // a muted microphone or a camera that was off stays so.
      for (const sender of senders) {
        try {
          await sender.republish(session);
        } catch (e) {
          const what = sender === this.audioSender ? 'microphone' : sender === this.videoSender ? 'camera' : 'screen';
          if (sender === this.screenSender) {
            this.screenSender = null;
            sender.stop();
            this.screenTrack?.stop();
            this.screenPreview?.remove();
            this.screenPreview = null;
            $('screen').textContent = 'Share screen';
            $('screen').setAttribute('aria-pressed', 'false');
          }
          this.trackFailed(what, e);
        }
      }
      const pause = [
        [this.audioSender, this.micMuted],
        [this.videoSender, this.cameraOff],
      ];
      for (const [sender, paused] of pause) {
        if (paused && sender?.producerId) {
          await session.request('pause_producer', { producer_id: sender.producerId }).catch((e) => console.warn('pause_producer:', e));
        }
      }
      this.reconnects.rejoined++;
      if (session.resumeFailed) this.reconnects.resumeFailed++;
    }
    if (this.tornDown) return;
    this.reconnecting = null;
    this.showReconnecting(false);
    $('call-status').textContent = resumed
      ? 'Reconnected: you are back in the call.'
      : 'Reconnected: you joined the call again.';
    if (this.session.supports('data')) this.chat.show(true);
    this.refreshPeople();
    session.releaseEvents();
  }

  /** The video consumer of a remote peer as plain data (null without one). */
  videoSnapshot(peerId) {
    const entry = [...this.receivers.values()].find((e) => e.peerId === peerId && e.kind === 'video' && !e.screen);
    return this.videoEntrySnapshot(entry);
  }

  videoEntrySnapshot(entry) {
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
      transport: this.session?.transportKind ?? null, // 'webtransport' or 'websocket'
      name: this.name,
      codec: this.codec.codec,
      settings: { ...settings },
      micMuted: this.micMuted,
      cameraOff: this.cameraOff,
      producers: {
        audio: this.audioSender?.producerId ?? null,
        video: this.videoSender?.producerId ?? null,
        screen: this.screenSender?.producerId ?? null,
      },
      // Section 15: what the relay supports, and what this page does with it.
      extensions: [...(this.session?.extensions ?? [])],
      // Of the microphone's frames sent: the last one's, and the loudest of the last second.
      audioLevel: this.audioSender?.levels.last ?? null,
      loudestAudioLevel: this.audioSender?.levels.loudest ?? null,
      sendsAudioLevel: this.audioSender?.sendLevel ?? false,
      speakers: this.speakers.map((s) => ({ ...s })),
      participants: this.participants(),
      // The camera and microphone pickers: what is listed, what is in use, how often switched.
      devices: {
        ...this.pickers.snapshot(),
        camera: this.deviceInUse('video'),
        microphone: this.deviceInUse('audio'),
        switches: { ...this.deviceSwitches },
      },
      chat: this.chat.log.map((m) => ({ ...m })),
      lossy: { ...this.lossy },
      screen: this.screenSender
        ? {
            producerId: this.screenSender.producerId,
            size: this.screenSender.size,
            framesSent: this.screenSender.stats.frames,
            targetBitrate: this.screenSender.targetBitrate,
          }
        : null,
      screens: [...this.screenTiles.values()].map((t) => ({
        ...t.snapshot(),
        video: this.videoEntrySnapshot(this.receivers.get(t.producerId)),
      })),
      audioContext: this.audioOutput.ctx?.state ?? null,
      send: this.videoSender
        ? {
            maxSendDelayMs: this.videoSender.maxSendDelayMs,
            backlogMs: this.videoSender.backlogMs,
            maxBacklogMs: this.videoSender.maxBacklogMs,
            networkDelayMs: this.videoSender.networkMs,
            // The relay's round trip over its base (a queue at the uplink), and how often
            // the highest layer gave way to one.
            uplinkQueueMs: this.videoSender.uplinkQueueMs,
            uplinkQueueCuts: this.videoSender.uplinkQueueCuts,
            skippedFrames: this.videoSender.skippedFrames,
            abandonedGroups: this.videoSender.abandonedGroups,
            framesSent: this.videoSender.stats.frames,
            trackChanges: this.videoSender.trackChanges, // cameras switched to
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
      // Section 16: whether the session is being restored now, and how often it was.
      reconnecting: this.reconnecting
        ? { attempts: this.reconnecting.attempts, goingAway: this.reconnecting.goingAway }
        : null,
      reconnects: { ...this.reconnects },
      interrupted: [...this.interrupted],
      resumeGraceMs: this.session?.joined?.resume_grace_ms ?? null,
      tiles: [...this.tiles.values()].map((t) => ({ ...t.snapshot(), video: this.videoSnapshot(t.peerId) })),
    };
  }
}

/**
 * The encoder for a shared screen of `size` (the track's settings): the camera's codec at
 * the screen's own size, scaled down to fit SCREEN's largest (and smaller still if the
 * codec cannot encode that, as H.264's baseline level cannot), keeping its proportions.
 */
async function screenEncoding(codec, size) {
  const width = size.width > 0 ? size.width : SCREEN.maxWidth;
  const height = size.height > 0 ? size.height : SCREEN.maxHeight;
  for (const [maxW, maxH] of [[SCREEN.maxWidth, SCREEN.maxHeight], [1280, 720], [960, 540]]) {
    const scale = Math.min(1, maxW / width, maxH / height);
    const w = Math.max(16, Math.round(width * scale) & ~1);
    const h = Math.max(16, Math.round(height * scale) & ~1);
    // The bitrate follows the pixels, from SCREEN.bitrate at 1920x1080.
    const share = (w * h) / (SCREEN.maxWidth * SCREEN.maxHeight);
    const bitrate = Math.max(200_000, Math.round(SCREEN.bitrate * Math.min(1, share) ** 0.7));
    const config = { ...codec.config, width: w, height: h, bitrate, framerate: SCREEN.fps, contentHint: 'detail' };
    try {
      if ((await VideoEncoder.isConfigSupported(config)).supported) {
        return {
          choice: { ...codec, config },
          settings: { width: w, height: h, fps: SCREEN.fps, bitrate, maxSendDelayMs: settings.maxSendDelayMs, simulcast: false },
        };
      }
    } catch {
      // Treated as unsupported.
    }
  }
  throw readable(`Your screen cannot be shared: this browser cannot encode it with ${codec.name}.`);
}

// ---------------------------------------------------------------------------
// Screens and controls.

// Copy invite link, and the Stats button.
let inviteNoteTimer = null;

/** The address of this page for someone else to join `room` (see INVITE_PARAMS). */
function inviteLink(room) {
  const url = new URL(location.pathname, location.origin);
  url.searchParams.set('room', room);
  for (const name of INVITE_PARAMS) {
    const value = params.get(name);
    if (value) url.searchParams.set(name, value);
  }
  return url.href;
}

/** The short note under the header; `forMs` clears it after that long (0: it stays). */
function inviteNote(text, { manual = false, forMs = 0 } = {}) {
  const note = $('invite-status');
  clearTimeout(inviteNoteTimer);
  note.textContent = text;
  note.classList.toggle('manual', manual);
  if (forMs) inviteNoteTimer = setTimeout(() => (note.textContent = ''), forMs);
}

function hideInvite() {
  clearTimeout(inviteNoteTimer);
  $('invite-status').textContent = '';
  $('invite-url').hidden = true;
}

/**
 * Copies the invite link: through the Clipboard API where the page may write it; else the
 * link is shown, selected, in a read-only field (and copied with the old copy command where
 * that still works). `data-copied-via` on the button says how (`clipboard`, `command`,
 * `manual`), for the tests.
 */
async function copyInvite() {
  if (!call) return;
  const link = inviteLink(call.room);
  const field = $('invite-url');
  const button = $('invite');
  field.value = link;
  if (typeof navigator.clipboard?.writeText === 'function') {
    try {
      await navigator.clipboard.writeText(link);
      field.hidden = true;
      button.dataset.copiedVia = 'clipboard';
      inviteNote('Link copied', { forMs: 2500 });
      return;
    } catch (e) {
      console.warn('the clipboard cannot be written:', e); // e.g. permission refused
    }
  }
  field.hidden = false;
  field.focus();
  field.select();
  let copied = false;
  try {
    copied = document.execCommand('copy');
  } catch {
    copied = false;
  }
  button.dataset.copiedVia = copied ? 'command' : 'manual';
  if (copied) {
    inviteNote('Link copied', { forMs: 2500 });
  } else {
    const keys = matchMedia('(pointer: coarse)').matches ? '' : /Mac|iPhone|iPad/.test(navigator.userAgent) ? ' (⌘C)' : ' (Ctrl+C)';
    inviteNote(`Copy the selected link${keys} to invite someone.`, { manual: true });
  }
}

/** Shows or hides the stats on the tiles (and the notes that explain them). */
function showStats(on) {
  $('call-screen').classList.toggle('show-stats', on);
  const button = $('stats-toggle');
  button.setAttribute('aria-pressed', String(on));
  button.title = on ? 'Hide the stats on the tiles' : 'Show the stats on the tiles';
}

function showJoinScreen() {
  $('join-screen').hidden = false;
  $('call-screen').hidden = true;
  $('controls').hidden = true;
  $('room-label').textContent = '';
  delete $('room-label').dataset.transport;
  $('join').disabled = false;
  $('mic').disabled = false;
  $('camera').disabled = false;
  $('mic').textContent = 'Mute';
  $('mic').setAttribute('aria-pressed', 'false');
  $('camera').textContent = 'Camera off';
  $('camera').setAttribute('aria-pressed', 'false');
  $('screen').hidden = true;
  $('screen').disabled = false;
  $('screen').textContent = 'Share screen';
  $('screen').setAttribute('aria-pressed', 'false');
  hideInvite();
  setProgress('');
}

function showCallScreen(room) {
  $('join-screen').hidden = true;
  $('call-screen').hidden = false;
  $('controls').hidden = false;
  const label = $('room-label');
  label.textContent = label.dataset.transport ? `room ${room} · ${label.dataset.transport}` : `room ${room}`;
}

let joining = false;
let prejoin = null; // the camera and microphone check of the join screen

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
    let transport = await probeRelay(relayHost);
    setProgress('Checking codecs…');
    let codec;
    try {
      codec = await chooseVideoCodec(forcedCodec, settings);
    } catch (e) {
      throw readable(e.message, e); // media.js words these for people
    }
    let missing;
    // The devices checked before joining, if they were (prejoin.js); else the default ones.
    const checked = prejoin?.take();
    if (checked) {
      ({ stream: capture, missing } = checked);
    } else {
      setProgress('Opening camera and microphone…');
      try {
        ({ stream: capture, missing } = await openCapture(settings));
      } catch (e) {
        throw new Error(captureErrorMessage(e));
      }
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
    setProgress(`Connecting to ${transportPreference === 'ws' ? relayHost : quicHost}…`);
    joined = new Call({ room, name, token, codec, capture, audioOutput });
    call = joined;
    for (let redirects = 0; ; redirects++) {
      try {
        await joined.connect(transport);
        break;
      } catch (e) {
        const target = redirectTarget(e);
        if (!target || redirects >= MAX_REDIRECTS) throw e;
        relayHost = target;
        quicHost = target;
        setProgress(`The call is on another relay: connecting to ${target}…`);
        transport = await probeRelay(relayHost);
      }
    }
    if (missing.length) $('call-status').textContent += ` ${missingDevicesNote(missing)}`;
    // Labels are listed now that the page may use the devices.
    joined.pickers.show(true);
    joined.pickers.refresh();
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
  $('screen').hidden = !joined.canShareScreen; // only with a relay that takes screens
  joined.startSending();
}

function missingDevicesNote(missing) {
  const cannot = { camera: 'see', microphone: 'hear' };
  return `No ${missing.join(' or ')} found: the others cannot ${missing.map((m) => cannot[m]).join(' or ')} you.`;
}

/** The relay's error code if it refused the join, else null. */
/** The relay ("host:port") a `wrong_relay` refusal sends the join to, else null. */
function redirectTarget(e) {
  if (refusalCode(e) !== 'wrong_relay' || !e.cause.relayUrl) return null;
  try {
    return new URL(e.cause.relayUrl).host;
  } catch {
    return null;
  }
}

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
  // An invite link has the room but not the name: the name is what is left to type.
  if (params.get('room') && !params.get('name') && params.get('autojoin') !== '1') $('name').focus();
  showStats(params.get('stats') === '1');

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
  $('stats-toggle').addEventListener('click', () => showStats(!$('call-screen').classList.contains('show-stats')));
  $('invite').addEventListener('click', () => copyInvite());
  $('invite-url').addEventListener('focus', (e) => e.currentTarget.select());
  $('invite-url').addEventListener('keydown', (e) => {
    if (e.key === 'Escape') hideInvite();
  });
  $('screen').addEventListener('click', async (e) => {
    const button = e.currentTarget;
    const current = call;
    if (!current) return;
    button.disabled = true;
    try {
      if (current.screenSender) {
        await current.stopScreenShare();
      } else if (await current.startScreenShare()) {
        button.textContent = 'Stop sharing';
        button.setAttribute('aria-pressed', 'true');
      }
    } catch (err) {
      console.warn('screen sharing failed:', err, err?.cause);
      showError(err?.readable ? err.message : 'Your screen cannot be shared. Try again.');
    } finally {
      button.disabled = false;
    }
  });
  // Browsers may block sound until the user interacts with the page (e.g. after ?autojoin=1).
  document.addEventListener('click', () => call?.audioOutput.resume());
  // Closing the tab ends the session at once instead of waiting for the idle timeout.
  window.addEventListener('pagehide', () => call?.session?.close());

  const missing = missingFeatures();
  if (missing.length) {
    $('join').disabled = true;
    $('prejoin').hidden = true;
    showError(
      `This browser lacks what the call needs: ${missing.join(', ')}. ` +
        'Use a recent Chromium-based browser or Firefox (WebCodecs) on https:// or http://localhost.',
    );
    return;
  }
  prejoin = new PreJoin({ settings, errorText: captureErrorMessage });
  if (params.get('autojoin') === '1') {
    if (!$('name').value) $('name').value = `guest-${Math.floor(Math.random() * 1000)}`;
    join();
  }
}

// Debugging and test hook: plain JSON of the call as this page sees it.
window.synapse = {
  state: () => (call ? call.snapshot() : { peerId: null, room: null, tiles: [], prejoin: prejoin?.snapshot() ?? null }),
  // Starts send.maxBacklogMs over, so that a test measures the period it watches.
  resetMaxBacklog: () => call?.videoSender?.resetMaxBacklog(),
  // Opens the camera ('video') or microphone ('audio') in use again and switches to the new
  // track as if another device had been picked (a browser with one fake device of a kind
  // can test the switch this way). Resolves to '' or the sentence the pickers would show.
  reopenDevice: async (kind) => {
    const deviceId = call?.deviceInUse(kind);
    if (!deviceId) return 'nothing to reopen';
    try {
      await call.switchDevice(kind, deviceId, { reopen: true });
      return '';
    } catch (e) {
      return e.message;
    }
  },
  // Sends `text` as lossy data (section 15.5) to `to` (peer ids; none: everyone who takes
  // it). False when the relay does not take lossy data. The page itself has no use for it yet.
  sendLossy: (text, to = []) => call?.session?.sendLossyData(new TextEncoder().encode(text), to) ?? false,
};

setup();
