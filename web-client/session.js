// One session with the relay, over WebTransport or its WebSocket fallback (ws-transport.js,
// which looks the same from here): connecting (with certificate pinning for a development
// relay), joining, the control channel, and the raw media paths (audio
// datagrams, video streams). What the media means is media.js's business.

import {
  PROTOCOL_VERSION,
  ControlChannel,
  VideoStreamReader,
  decodeDatagram,
  decodeLossyData,
  encodeLossyData,
  encodeStreamHeader,
  isLossyData,
} from './protocol.js';
import { WebSocketTransport } from './ws-transport.js';

// The optional formats of section 15 this client can receive, asked for in `join`: audio
// datagrams with their level byte, and lossy data datagrams. (`data` and `screen` need no
// asking.) A relay that does not know them ignores the field.
// `resume` asks the relay to keep this peer's place for a while if the session drops
// (docs/PROTOCOL.md section 16).
const JOIN_EXTENSIONS = ['audio_level', 'lossy_data', 'resume'];

// How long an incoming video stream waits for the previous stream of the same producer
// to end before it is delivered anyway (then stale frames are dropped by seq). The relay
// finishes a group's stream before opening the next, so normally this wait is short.
const PREVIOUS_STREAM_WAIT_MS = 1000;
// Media can overtake the control message that announces its consumer (different QUIC
// streams). A stream for a producer we do not know yet waits this long for it.
const UNKNOWN_PRODUCER_WAIT_MS = 2000;

// With transportPreference 'auto', the transport tried first gets this head start before
// the other is started too (docs/PROTOCOL.md section 17.5); the first to open wins.
const TRANSPORT_HEAD_START_MS = 1500;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Something went wrong before or while joining; `kind` tells the UI which story to tell. */
export class ConnectError extends Error {
  constructor(kind, message, cause) {
    super(message);
    this.name = 'ConnectError';
    this.kind = kind; // 'unreachable' | 'refused'
    this.cause = cause;
  }
}

function hexToBytes(hex) {
  return new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
}

/**
 * Checks that the relay answers and builds the WebTransport options: call this first, so
 * that an unreachable relay is reported before anything else is loaded or opened. A relay
 * with a development identity serves a self-signed certificate that the browser only
 * accepts when its hash is pinned; a relay with a real certificate needs nothing.
 * Failures are ConnectErrors whose message is written for people (the browser's own
 * error is their `cause`).
 */
export async function probeRelay(relayHost) {
  // An https:// page needs a relay whose TCP side speaks TLS (started with --cert, section
  // 17.1), and cannot fetch plain http:// anyway: the relay is asked as the page was loaded.
  const httpBase = `${location.protocol === 'https:' ? 'https' : 'http'}://${relayHost}`;
  const unreachable = (e) =>
    new ConnectError(
      'unreachable',
      `Cannot reach the relay at ${relayHost}. Check that it is running and that the address is right, then join again.`,
      e,
    );
  const notARelay = (e) =>
    new ConnectError(
      'unreachable',
      `The server at ${relayHost} does not answer as a Synapse relay does. Check the address, then join again.`,
      e,
    );
  let res;
  try {
    res = await fetch(`${httpBase}/healthz`, { cache: 'no-store' });
  } catch (e) {
    throw unreachable(e);
  }
  let health;
  try {
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    health = await res.json();
  } catch (e) {
    throw notARelay(e);
  }
  if (health.protocol !== undefined && health.protocol !== PROTOCOL_VERSION) {
    throw new ConnectError(
      'refused',
      `The relay speaks another version of the protocol (${health.protocol}) than this page ` +
        `(${PROTOCOL_VERSION}). Open the page the relay itself serves, or update one of them.`,
    );
  }
  if (!health.development_identity) return {};
  let hex;
  try {
    const cert = await fetch(`${httpBase}/certificate.sha256`, { cache: 'no-store' });
    hex = (await cert.text()).trim();
  } catch (e) {
    throw unreachable(e);
  }
  if (!/^[0-9a-f]{64}$/i.test(hex)) {
    throw notARelay(new Error('no valid certificate hash'));
  }
  return { serverCertificateHashes: [{ algorithm: 'sha-256', value: hexToBytes(hex) }] };
}

// ---------------------------------------------------------------------------
// Choosing the transport: WebTransport (UDP) or the WebSocket fallback (TCP, section 17).

const rememberedKey = (relayHost) => `synapse.transport.${relayHost}`;
// How long a won race is remembered.
const REMEMBER_MS = 60 * 60 * 1000;

/** The transport that last won a race for `relayHost`, if this page remembers one. */
function remembered(relayHost) {
  try {
    const { kind, at } = JSON.parse(localStorage.getItem(rememberedKey(relayHost)) ?? 'null') ?? {};
    // A short UDP outage must not keep the page on TCP for good: the choice expires.
    return Date.now() - at < REMEMBER_MS ? kind : null;
  } catch {
    return null; // storage may be unavailable (privacy settings): nothing is remembered
  }
}

function remember(relayHost, kind) {
  try {
    localStorage.setItem(rememberedKey(relayHost), JSON.stringify({ kind, at: Date.now() }));
  } catch {
    // Not remembered: the next join races from WebTransport again.
  }
}

/**
 * The transports to try, in order: 'wt' and 'ws' force one; 'auto' tries both, the one
 * that won last time for this relay first. A browser without WebTransport has the WebSocket.
 */
function transportOrder(preference, relayHost) {
  const hasWebTransport = typeof WebTransport !== 'undefined';
  if (preference === 'ws') return ['websocket'];
  if (preference === 'wt') return hasWebTransport ? ['webtransport'] : [];
  if (!hasWebTransport) return ['websocket'];
  return remembered(relayHost) === 'websocket' ? ['websocket', 'webtransport'] : ['webtransport', 'websocket'];
}

function closeQuietly(transport) {
  try {
    transport.close({ closeCode: 0, reason: 'not needed' });
  } catch {
    // Not open yet, or closed.
  }
}

/**
 * Starts the transports of `kinds` (start(kind) makes one), each after the one before has
 * failed or had TRANSPORT_HEAD_START_MS to open; the first whose `ready` resolves wins and
 * the others are closed. Resolves with { kind, transport }; rejects once every one has
 * failed, or when `signal` aborts (then all are closed).
 */
function raceTransports(kinds, start, signal) {
  return new Promise((resolve, reject) => {
    const opening = new Set(); // started and not failed
    let next = 0;
    let failures = 0;
    let settled = false;
    let timer = null;
    const fail = (e) => {
      if (settled) return;
      if (++failures === kinds.length) {
        settled = true;
        reject(e);
      } else if (failures === next) {
        launch(); // the one running failed before its head start was over
      }
    };
    const launch = () => {
      clearTimeout(timer);
      if (settled || next >= kinds.length) return;
      const kind = kinds[next++];
      let transport;
      try {
        transport = start(kind);
      } catch (e) {
        fail(e); // e.g. a URL the browser refuses
        return;
      }
      opening.add(transport);
      transport.closed.catch(() => {}); // a failed session rejects it; handled through `ready`
      transport.ready.then(
        () => {
          if (settled) {
            opening.delete(transport);
            closeQuietly(transport);
            return;
          }
          settled = true;
          clearTimeout(timer);
          for (const other of opening) if (other !== transport) closeQuietly(other);
          resolve({ kind, transport });
        },
        (e) => {
          opening.delete(transport);
          fail(e);
        },
      );
      if (next < kinds.length) timer = setTimeout(launch, TRANSPORT_HEAD_START_MS);
    };
    signal.addEventListener('abort', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      for (const transport of opening) closeQuietly(transport);
      reject(signal.reason);
    });
    launch();
  });
}

/** What to tell a person when no transport could be opened: which path failed, in words. */
function unreachableText(relayHost, quicHost, kinds) {
  if (kinds.length === 0) {
    return 'This browser cannot open WebTransport sessions. Use a recent Chromium-based browser or Firefox, or join without forcing WebTransport.';
  }
  if (kinds.length > 1) {
    return (
      `The relay at ${relayHost} answers, but the call connection could be opened neither over UDP (WebTransport) nor over TCP (WebSocket). ` +
      'A firewall, proxy or VPN may block both; try again, or from another network.'
    );
  }
  if (kinds[0] === 'websocket') {
    return (
      `The relay at ${relayHost} answers, but the call connection over TCP (WebSocket) could not be opened. ` +
      'A proxy or firewall may block it; try again, or from another network.'
    );
  }
  return (
    `The relay at ${relayHost} answers, but the call connection to ${quicHost} could not be opened. ` +
    'It runs over UDP, which a firewall or VPN may block; try again, or from another network.'
  );
}

export class Session {
  /**
   * Connects and joins. `relayHost` is "host:port" (HTTP and WebTransport share the port
   * number); `quicHost`, if given, is where the WebTransport session goes instead (a UDP
   * proxy in front of the relay, say): the certificate hash still comes from `relayHost`.
   * Handlers:
   *   onEvent(message)          relay events (peer_joined, consumer_added, ...)
   *   onAudio(frame)            a parsed audio datagram
   *   onLossyData({from, payload})  a lossy data datagram (section 15.5), optional
   *   videoSink(producerId)     returns { frame(f) } for that producer, or null if unknown
   *   onClosed(info)            the session ended without leave() ({ reason })
   * `token` is the access token, for a relay that requires one. `transport` is what
   * probeRelay(relayHost) returned, if the caller has checked the relay already.
   * `transportPreference` is 'wt' (WebTransport only), 'ws' (the WebSocket fallback of
   * docs/PROTOCOL.md section 17 only, always to `relayHost`) or 'auto' (both raced, see
   * raceTransports; the winner is remembered for the relay). `session.transportKind` says
   * which carries the session: 'webtransport' or 'websocket'.
   * Resolves with the session; `session.joined` holds the join result, and
   * `session.subscribed` whether the relay auto-subscribes this peer. Events are held
   * back until the caller has taken in the join result and calls `releaseEvents()`.
   */
  static async connect({ relayHost, quicHost = relayHost, room, name, token, transport, transportPreference = 'auto', resume, timeoutMs, onEvent, onAudio, onLossyData, videoSink, onClosed }) {
    const options = { ...(transport ?? (await probeRelay(relayHost))) };
    // A hint: real-time media would rather lose throughput than queue in the network.
    // Browsers that do not know the option ignore it, as Chromium 156 does.
    options.congestionControl = 'low-latency';
    const session = new Session({ onEvent, onAudio, onLossyData, videoSink, onClosed });
    let wt;
    // A reconnection attempt on a dead path would wait for the browser's whole handshake
    // timeout: `timeoutMs` gives up sooner (the session is closed, which fails what waits).
    let timer = null;
    let timedOut = false;
    const giveUp = new AbortController();
    const kinds = transportOrder(transportPreference, relayHost);
    try {
      if (kinds.length === 0) throw new Error('no WebTransport in this browser');
      if (timeoutMs) {
        timer = setTimeout(() => {
          timedOut = true;
          giveUp.abort(new Error('timed out'));
          if (wt) closeQuietly(wt);
        }, timeoutMs);
      }
      // The WebSocket goes to the relay's own TCP port: `quicHost` is a UDP path only.
      const wsScheme = options.serverCertificateHashes || location.protocol === 'http:' ? 'ws' : 'wss';
      const start = (kind) =>
        kind === 'webtransport'
          ? new WebTransport(`https://${quicHost}/`, options)
          : new WebSocketTransport(`${wsScheme}://${relayHost}/ws`);
      let kind;
      ({ kind, transport: wt } = await raceTransports(kinds, start, giveUp.signal));
      if (timedOut) throw new Error('timed out');
      session.transportKind = kind;
      if (transportPreference === 'auto') remember(relayHost, kind);
    } catch (e) {
      clearTimeout(timer);
      throw new ConnectError('unreachable', unreachableText(relayHost, quicHost, kinds), e);
    }
    session.wt = wt;
    try {
      // The relay only notices the control stream once bytes arrive on it, and a join
      // must succeed within 10 s of the session opening: send join straight away.
      const bidi = await wt.createBidirectionalStream();
      session.control = new ControlChannel(bidi, { onEvent: (m) => session.event(m) });
      const join = (autoSubscribe, place = null) =>
        session.control.request('join', {
          version: PROTOCOL_VERSION,
          room,
          name,
          auto_subscribe: autoSubscribe,
          extensions: JOIN_EXTENSIONS,
          ...(token ? { token } : {}),
          ...(place ? { resume: place } : {}),
        });
      const autoSubscribe = resume?.autoSubscribe ?? true;
      if (resume) {
        // Taking a place back (section 16). A place the relay no longer has (the grace
        // period ended, or the relay restarted) is `resume_failed`: join anew, same stream.
        try {
          session.joined = await join(autoSubscribe, { peer_id: resume.peerId, token: resume.token });
          session.subscribed = autoSubscribe;
        } catch (e) {
          if (e.code !== 'resume_failed') throw e;
          session.resumeFailed = true;
        }
      }
      if (!session.joined) {
        try {
          session.joined = await join(autoSubscribe);
          session.subscribed = autoSubscribe;
        } catch (e) {
          // A token without the subscribe grant may still send: a refused join can be
          // retried on the same stream.
          if (e.code !== 'forbidden' || !autoSubscribe) throw e;
          session.joined = await join(false);
          session.subscribed = false;
        }
      }
      if (timedOut) throw new Error('timed out');
      clearTimeout(timer);
    } catch (e) {
      clearTimeout(timer);
      wt.close();
      if (e.name === 'RelayError') throw new ConnectError('refused', `The relay refused the join (${e.code}).`, e);
      throw new ConnectError('unreachable', 'The connection to the relay broke off while joining. Join again.', e);
    }
    // What the relay supports of section 15; an older relay lists nothing.
    session.extensions = new Set(Array.isArray(session.joined.extensions) ? session.joined.extensions : []);
    session.start();
    return session;
  }

  /** Whether the relay supports the optional format `name` (section 15.1). */
  supports(name) {
    return this.extensions?.has(name) ?? false;
  }

  constructor(handlers) {
    Object.assign(this, handlers);
    this.leaving = false;
    this.ended = false;
    this.videoOrder = new Map(); // producerId -> promise of its newest stream's end
    this.streamCount = 0; // incoming video streams so far
    this.datagramWriter = null;
    // The consumer_added events that follow the join response must not overtake the
    // caller's handling of that response (its peers list names the tiles).
    this.heldEvents = [];
    this.lastHeard = performance.now(); // anything from the relay: events, media
  }

  /** Whether the relay has resumed this peer's place (section 16) rather than joined it anew. */
  get resumed() {
    return this.joined?.resumed === true;
  }

  event(message) {
    this.lastHeard = performance.now();
    if (this.heldEvents) this.heldEvents.push(message);
    else this.onEvent(message);
  }

  releaseEvents() {
    const held = this.heldEvents ?? [];
    this.heldEvents = null;
    for (const message of held) this.onEvent(message);
  }

  /** Largest datagram both the relay and this browser accept (header included). */
  get maxDatagramSize() {
    const relay = this.joined.max_datagram_size ?? 1200;
    return Math.min(relay, this.wt.datagrams.maxDatagramSize ?? relay);
  }

  get maxFrameSize() {
    return this.joined.max_frame_size ?? 2 * 1024 * 1024;
  }

  start() {
    this.datagramWriter = this.wt.datagrams.writable.getWriter();
    this.readDatagrams();
    this.acceptStreams();
    const ended = (reason) => {
      if (this.ended) return;
      this.ended = true;
      if (!this.leaving) this.onClosed({ reason });
    };
    this.wt.closed.then(
      (info) => ended(info?.reason || `close code ${info?.closeCode ?? 0}`),
      (e) => ended(e?.message || String(e)),
    );
    // The relay finishing the control stream (without our leave) also ends the peer.
    this.control.closed.then(
      () => ended('the relay closed the control stream'),
      (e) => ended(e?.message || String(e)),
    );
  }

  request(type, fields) {
    return this.control.request(type, fields);
  }

  /** Sends one audio datagram; datagrams are unreliable, so failures are not errors. */
  sendDatagram(bytes) {
    if (this.ended) return false;
    if (bytes.byteLength > this.maxDatagramSize) return false;
    this.datagramWriter.write(bytes).catch(() => {});
    return true;
  }

  /**
   * Sends lossy data (section 15.5) to the peers `to` (none: every other peer that takes it).
   * False when the relay does not take lossy data or the datagram would be too large.
   */
  sendLossyData(payload, to = []) {
    if (!this.supports('lossy_data')) return false;
    return this.sendDatagram(encodeLossyData(payload, to));
  }

  /**
   * Opens a video stream for `producerId` (one of its layers if `layer` is given: stream
   * type 0x02) and writes its header; returns its writer.
   */
  async openVideoStream(producerId, layer = null) {
    const stream = await this.wt.createUnidirectionalStream();
    const writer = stream.getWriter();
    writer.write(encodeStreamHeader(producerId, layer)).catch(() => {});
    return writer;
  }

  async readDatagrams() {
    const reader = this.wt.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        this.lastHeard = performance.now();
        if (isLossyData(value)) {
          const data = decodeLossyData(value);
          if (data) this.onLossyData?.(data);
          continue;
        }
        const frame = decodeDatagram(value);
        if (frame) this.onAudio(frame);
      }
    } catch {
      // The session ended; wt.closed reports why.
    }
  }

  async acceptStreams() {
    const reader = this.wt.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        this.lastHeard = performance.now();
        this.receiveVideoStream(value).catch((e) => console.debug('video stream:', e));
      }
    } catch {
      // The session ended.
    }
  }

  /** Finds the sink for a producer, waiting a little for its consumer_added to arrive. */
  async waitForSink(producerId) {
    const deadline = performance.now() + UNKNOWN_PRODUCER_WAIT_MS;
    for (;;) {
      const sink = this.videoSink(producerId);
      if (sink || this.ended || performance.now() > deadline) return sink;
      await sleep(50);
    }
  }

  /**
   * One incoming video stream = one group of pictures of one producer. Browsers expose
   * no stream ids, so a producer's streams are taken in arrival order: this stream's
   * frames are read (and buffered) at once, but delivered only after the previous stream
   * of the same producer has ended, or after PREVIOUS_STREAM_WAIT_MS.
   */
  async receiveVideoStream(readable) {
    const reader = new VideoStreamReader(readable);
    const producerId = await reader.header();
    if (producerId === null) return;
    const sink = await this.waitForSink(producerId);
    if (!sink) {
      reader.cancel();
      return;
    }
    const previous = this.videoOrder.get(producerId) ?? Promise.resolve();
    let finished;
    const done = new Promise((resolve) => (finished = resolve));
    this.videoOrder.set(producerId, done);

    let myTurn = false;
    const held = [];
    const turn = Promise.race([previous, sleep(PREVIOUS_STREAM_WAIT_MS)]).then(() => {
      myTurn = true;
      for (const f of held.splice(0)) sink.frame(f);
    });
    const streamNo = ++this.streamCount;
    try {
      for (;;) {
        const frame = await reader.frame();
        if (!frame) break;
        frame.stream = streamNo; // which frames came on one stream (media.js: seq gaps)
        if (myTurn) sink.frame(frame);
        else held.push(frame);
      }
    } catch {
      // Reset by the relay (a slow consumer restarted) or the session ended: the group
      // ends here, and the next stream starts with a keyframe.
    } finally {
      await turn;
      finished();
      if (this.videoOrder.get(producerId) === done) this.videoOrder.delete(producerId);
    }
  }

  /** Sends leave, waits briefly for the answer, and closes the session. */
  leave() {
    this.leaveDone ??= (async () => {
      if (this.ended) return;
      this.leaving = true;
      try {
        await Promise.race([this.request('leave'), sleep(2000)]);
      } catch {
        // Leaving anyway.
      }
      this.close();
    })();
    return this.leaveDone;
  }

  close() {
    this.leaving = true;
    this.ended = true;
    try {
      this.wt.close({ closeCode: 0, reason: 'leaving' });
    } catch {
      // Already closed.
    }
  }
}
