// The tiles of the call grid: one for this peer (camera preview) and one per remote peer
// (canvas, name, stats overlay). The data-* attributes on the tiles are read by the
// browser tests (tests/browser/): keep their names stable.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = (n, digits = 0) => (Number.isFinite(n) ? n.toFixed(digits) : '–');

function fmtRate(kbps) {
  return kbps >= 10_000 ? `${fmt(kbps / 1000, 1)} Mbit/s` : `${fmt(kbps)} kbit/s`;
}

// A transport_stats event older than this is shown as such (the relay sends one a second).
const LINK_STALE_MS = 5000;

/**
 * The relay's view of its connection to this page (a transport_stats event), for people:
 * "link RTT 23 ms · loss 1.2% · 813 kbit/s · est. 5.0 Mbit/s" and "relay queue 35 ms ·
 * skipped 12". A field the relay did not send is left out.
 */
function linkLines(link) {
  const num = (name) => (Number.isFinite(link[name]) ? link[name] : null);
  const first = [];
  const second = [];
  if (num('rtt_ms') !== null) first.push(`RTT ${fmt(link.rtt_ms)} ms`);
  if (num('loss') !== null) first.push(`loss ${fmt(link.loss * 100, 1)}%`);
  if (num('send_kbps') !== null) first.push(fmtRate(link.send_kbps));
  // What the relay reckons the path carries (it picks simulcast layers within it).
  if (num('available_kbps') !== null) first.push(`est. ${fmtRate(link.available_kbps)}`);
  if (num('queue_ms') !== null) second.push(`queue ${fmt(link.queue_ms)} ms`);
  if (num('skipped_frames') !== null) second.push(`skipped ${link.skipped_frames}`);
  const stale = performance.now() - link.receivedAt > LINK_STALE_MS ? ' (no update)' : '';
  const lines = [];
  if (first.length) lines.push(`link ${first.join(' · ')}${stale}`);
  if (second.length) lines.push(`relay ${second.join(' · ')}`);
  return lines;
}

/**
 * Speaking (the relay's active_speakers, docs/PROTOCOL.md section 15.3): a glow around the
 * tile, stronger for the main speaker. `data-speaking` is read by the browser tests.
 */
function markSpeaking(root, rank) {
  const speaking = rank !== null && rank !== undefined;
  root.dataset.speaking = String(speaking);
  root.classList.toggle('speaking', speaking);
  root.classList.toggle('main-speaker', rank === 0);
  if (rank === 0) root.dataset.mainSpeaker = 'true';
  else delete root.dataset.mainSpeaker;
}

/** This peer's own tile: a mirror of the camera plus what is being sent. */
export class LocalTile {
  constructor(container, name, stream) {
    this.root = el('div', 'tile local');
    this.root.dataset.local = '';
    this.video = el('video');
    this.video.muted = true;
    this.video.autoplay = true;
    this.video.playsInline = true;
    this.video.srcObject = stream;
    this.nameEl = el('div', 'name', `${name} (you)`);
    this.badges = el('span', 'badges');
    this.nameEl.append(this.badges);
    this.statsEl = el('pre', 'stats');
    this.root.append(this.video, this.nameEl, this.statsEl);
    container.prepend(this.root);
  }

  /** Marks the tile as speaking (rank 0: the main speaker) or not (rank null). */
  setSpeaking(rank) {
    markSpeaking(this.root, rank);
  }

  /** Shows another camera (the person picked one): a new stream of the capture's tracks. */
  setStream(stream) {
    this.video.srcObject = new MediaStream(stream.getTracks());
    this.video.play().catch(() => {}); // muted: no gesture needed
  }

  setBadges({ micMuted, cameraOff }) {
    this.badges.textContent = [micMuted && 'muted', cameraOff && 'camera off'].filter(Boolean).join(' · ');
    this.video.style.visibility = cameraOff ? 'hidden' : '';
  }

  /**
   * `video`/`audio` are the senders (or null while they start); `link` is the relay's
   * latest transport_stats about its connection to this page, or null.
   */
  updateStats(video, audio, codecName, link) {
    const lines = [];
    if (video) {
      const s = video.stats.sample();
      lines.push(`sending ${codecName} ${video.size ?? '–'} ${fmt(s.fps, 1)} fps ${fmt(s.kbps)} kbit/s`);
      if (video.layered) {
        // Simulcast: each layer's size and rate, or "off" when no one needs it now.
        const layers = video.layers.map((l) => `${l.height}p ${l.running ? `${fmt(l.stats.sample().kbps)}k` : 'off'}`);
        lines.push(`layers ${layers.join(' · ')}`);
      }
      // The encoders' bitrate, lowered while the uplink cannot carry the configured one.
      if (video.layered) {
        lines.push(`target ${video.layers.map((l) => `${l.height}p ${fmt(l.rate.targetBps / 1000)}k`).join(' · ')}`);
      } else if (video.layers[0]) {
        const rate = video.layers[0].rate;
        lines.push(`target ${fmt(rate.targetBps / 1000)} kbit/s (max ${fmt(rate.maxBps / 1000)})`);
      }
      // The send backlog: how long the oldest unsent frame has waited (kept under a bound),
      // and what keeping it there cost.
      lines.push(`backlog ${fmt(video.backlogMs)} ms (max ${fmt(video.maxBacklogMs)})`);
      if (video.skippedFrames || video.abandonedGroups) {
        const groups = `${video.abandonedGroups} ${video.abandonedGroups === 1 ? 'group' : 'groups'} reset`;
        lines.push(`skipped ${video.skippedFrames} ${video.skippedFrames === 1 ? 'frame' : 'frames'} · ${groups}`);
      }
      const d = this.root.dataset;
      d.sendBacklogMs = String(Math.round(video.backlogMs));
      d.maxSendBacklogMs = String(Math.round(video.maxBacklogMs));
      d.skippedFrames = String(video.skippedFrames);
      d.abandonedGroups = String(video.abandonedGroups);
      d.layers = String(video.layered ? video.layers.length : 1);
      d.runningEncoders = String(video.layers.filter((l) => l.running).length);
    }
    if (audio) {
      const s = audio.stats.sample();
      lines.push(`sending opus ${fmt(s.kbps)} kbit/s`);
    }
    if (link) lines.push(...linkLines(link));
    this.statsEl.textContent = lines.join('\n');
  }

  remove() {
    this.video.srcObject = null;
    this.root.remove();
  }
}

/** A remote peer's tile. Receivers report decoded frames through countVideo/countAudio. */
export class RemoteTile {
  constructor(container, peerId, name) {
    this.peerId = peerId;
    this.name = name;
    this.videoFrames = 0;
    this.audioFrames = 0;
    this.root = el('div', 'tile remote');
    this.root.dataset.peerId = String(peerId);
    this.root.dataset.peerName = name;
    this.canvas = el('canvas');
    this.canvas.width = 320;
    this.canvas.height = 240;
    this.nameEl = el('div', 'name', name);
    this.badges = el('span', 'badges');
    this.nameEl.append(this.badges);
    this.statsEl = el('pre', 'stats', 'waiting for media…');
    this.root.append(this.canvas, this.nameEl, this.statsEl);
    this.paused = { audio: false, video: false };
    this.speakingRank = null;
    this.interrupted = false;
    this.interruptedEl = null;
    this.root.dataset.reconnecting = 'false';
    this.writeCounters();
    markSpeaking(this.root, null);
    container.append(this.root);
  }

  /** Marks the tile as speaking (rank 0: the main speaker) or not (rank null). */
  setSpeaking(rank) {
    this.speakingRank = rank;
    markSpeaking(this.root, rank);
  }

  /**
   * Marks the peer as reconnecting (its session dropped and the relay keeps its place,
   * docs/PROTOCOL.md section 16) or back: the tile stays, dimmed, with a note.
   */
  setInterrupted(on) {
    this.interrupted = on;
    this.root.classList.toggle('interrupted', on);
    this.root.dataset.reconnecting = String(on);
    if (on && !this.interruptedEl) {
      this.interruptedEl = el('div', 'interrupted-note', 'reconnecting…');
      this.root.append(this.interruptedEl);
    } else if (!on && this.interruptedEl) {
      this.interruptedEl.remove();
      this.interruptedEl = null;
    }
  }

  countVideo() {
    this.videoFrames++;
    this.root.dataset.videoFrames = String(this.videoFrames);
  }

  countAudio() {
    this.audioFrames++;
    this.root.dataset.audioFrames = String(this.audioFrames);
  }

  writeCounters() {
    this.root.dataset.videoFrames = String(this.videoFrames);
    this.root.dataset.audioFrames = String(this.audioFrames);
  }

  setPaused(kind, paused) {
    this.paused[kind] = paused;
    this.root.classList.toggle('video-off', this.paused.video); // hide the frozen last frame
    this.badges.textContent = [this.paused.audio && 'muted', this.paused.video && 'camera off']
      .filter(Boolean)
      .join(' · ');
  }

  /**
   * `video`/`audio` are this peer's receivers (either may be missing); `view` is what the
   * video tile asks of the relay (consumer-view.js).
   */
  updateStats(video, audio, view) {
    const lines = [];
    const latency = [];
    if (video) {
      const s = video.stats.sample();
      const failed = video.failure ? ` (${video.failure})` : '';
      lines.push(`video ${video.producer.codec} ${video.size ?? '–'} ${fmt(s.fps, 1)} fps ${fmt(s.kbps)} kbit/s${failed}`);
      if (video.layers.length > 0) {
        // Simulcast: the layer the relay forwards (the decoded size is on the line above).
        const layer = video.layer === null ? '–' : String(video.layer);
        const size = video.layerSize ? ` (${video.layerSize.width}x${video.layerSize.height})` : '';
        lines.push(`layer ${layer}${size} of ${video.layers.length}`);
      }
      if (view?.paused) lines.push('video paused while not visible');
      const d = this.root.dataset;
      d.videoWidth = String(video.decodedWidth ?? 0);
      d.videoHeight = String(video.decodedHeight ?? 0);
      d.videoLayer = video.layer === null ? '' : String(video.layer);
      if (s.latencyMs !== null) latency.push(`video ${fmt(s.latencyMs)} ms`);
      this.videoLatencyMs = s.latencyMs;
      if (video.stats.lost) lines.push(`video frames lost: ${video.stats.lost}`);
    }
    if (audio) {
      const s = audio.stats.sample();
      // The sender's level (section 15.2), when its datagrams carry one: the loudest of the
      // last second, as a meter shows it.
      const loudest = audio.levels.loudest;
      const level = loudest === null ? '' : loudest >= 127 ? ' · silent' : ` · level -${loudest} dB`;
      lines.push(`audio ${audio.producer.codec} ${fmt(s.fps)} frames/s ${fmt(s.kbps)} kbit/s${level}`);
      if (loudest !== null) this.root.dataset.audioLevel = String(loudest);
      else delete this.root.dataset.audioLevel;
      if (s.latencyMs !== null) latency.push(`audio ${fmt(s.latencyMs + audio.playoutMs)} ms`);
      if (audio.stats.lost) lines.push(`audio frames lost: ${audio.stats.lost}`);
    }
    if (latency.length) lines.push(`latency* ${latency.join(', ')}`);
    this.statsEl.textContent = lines.length ? lines.join('\n') : 'no media';
  }

  /** Plain data for window.synapse.state(). */
  snapshot() {
    return {
      peerId: this.peerId,
      name: this.name,
      videoFrames: this.videoFrames,
      audioFrames: this.audioFrames,
      videoLatencyMs: this.videoLatencyMs ?? null, // capture to render, over the last second
      paused: { ...this.paused },
      speaking: this.speakingRank !== null,
      speakingRank: this.speakingRank,
      reconnecting: this.interrupted === true,
    };
  }

  remove() {
    this.root.remove();
  }
}

/**
 * A screen shared by a remote peer: a large tile of its own, laid out first and across the
 * grid (style.css), with the peer's name. Its test hooks are `data-screen-peer-name`,
 * `data-screen-peer-id`, `data-video-frames`, `data-video-width` and `data-video-height`
 * (not `data-peer-name`: that names the peers' own tiles).
 */
export class ScreenTile {
  constructor(container, peerId, name, producerId) {
    this.peerId = peerId;
    this.name = name;
    this.producerId = producerId;
    this.videoFrames = 0;
    this.root = el('div', 'tile screen');
    this.root.dataset.screenPeerId = String(peerId);
    this.root.dataset.screenPeerName = name;
    this.root.dataset.videoFrames = '0';
    this.canvas = el('canvas');
    this.canvas.width = 640;
    this.canvas.height = 360;
    this.nameEl = el('div', 'name', `${name}'s screen`);
    this.statsEl = el('pre', 'stats', 'waiting for the screen…');
    this.root.append(this.canvas, this.nameEl, this.statsEl);
    container.prepend(this.root);
  }

  countVideo() {
    this.videoFrames++;
    this.root.dataset.videoFrames = String(this.videoFrames);
  }

  setName(name) {
    this.name = name;
    this.root.dataset.screenPeerName = name;
    this.nameEl.textContent = `${name}'s screen`;
  }

  updateStats(video) {
    if (!video) return;
    const s = video.stats.sample();
    const failed = video.failure ? ` (${video.failure})` : '';
    this.statsEl.textContent = `screen ${video.producer.codec} ${video.size ?? '–'} ${fmt(s.fps, 1)} fps ${fmt(s.kbps)} kbit/s${failed}`;
    this.root.dataset.videoWidth = String(video.decodedWidth ?? 0);
    this.root.dataset.videoHeight = String(video.decodedHeight ?? 0);
  }

  snapshot() {
    return { peerId: this.peerId, name: this.name, producerId: this.producerId, videoFrames: this.videoFrames };
  }

  remove() {
    this.root.remove();
  }
}

/** The preview of this page's own shared screen (not mirrored, unlike the camera). */
export class LocalScreenTile {
  constructor(container, stream) {
    this.root = el('div', 'tile local-screen');
    this.root.dataset.localScreen = '';
    this.video = el('video');
    this.video.muted = true;
    this.video.autoplay = true;
    this.video.playsInline = true;
    this.video.srcObject = stream;
    this.nameEl = el('div', 'name', 'Your screen (shared)');
    this.statsEl = el('pre', 'stats');
    this.root.append(this.video, this.nameEl, this.statsEl);
    const camera = container.querySelector('[data-local]');
    if (camera) camera.after(this.root);
    else container.prepend(this.root);
  }

  updateStats(sender, codecName) {
    if (!sender) return;
    const s = sender.stats.sample();
    this.statsEl.textContent = `sending ${codecName} ${sender.size ?? '–'} ${fmt(s.fps, 1)} fps ${fmt(s.kbps)} kbit/s`;
  }

  remove() {
    this.video.srcObject = null;
    this.root.remove();
  }
}
