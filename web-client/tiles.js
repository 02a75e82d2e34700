// The tiles of the call grid: one for this peer (camera preview) and one per remote peer
// (canvas, name, stats overlay). The data-* attributes on remote tiles are read by the
// browser test (tests/browser/): keep their names stable.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = (n, digits = 0) => (Number.isFinite(n) ? n.toFixed(digits) : '–');

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

  setBadges({ micMuted, cameraOff }) {
    this.badges.textContent = [micMuted && 'muted', cameraOff && 'camera off'].filter(Boolean).join(' · ');
    this.video.style.visibility = cameraOff ? 'hidden' : '';
  }

  /** `video`/`audio` are the senders (or null while they start). */
  updateStats(video, audio, codecName) {
    const lines = [];
    if (video) {
      const s = video.stats.sample();
      lines.push(`sending ${codecName} ${video.size ?? '–'} ${fmt(s.fps, 1)} fps ${fmt(s.kbps)} kbit/s`);
    }
    if (audio) {
      const s = audio.stats.sample();
      lines.push(`sending opus ${fmt(s.kbps)} kbit/s`);
    }
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
    this.writeCounters();
    container.append(this.root);
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

  /** `video`/`audio` are this peer's receivers (either may be missing). */
  updateStats(video, audio) {
    const lines = [];
    const latency = [];
    if (video) {
      const s = video.stats.sample();
      const failed = video.failure ? ` (${video.failure})` : '';
      lines.push(`video ${video.producer.codec} ${video.size ?? '–'} ${fmt(s.fps, 1)} fps ${fmt(s.kbps)} kbit/s${failed}`);
      if (s.latencyMs !== null) latency.push(`video ${fmt(s.latencyMs)} ms`);
      if (video.stats.lost) lines.push(`video frames lost: ${video.stats.lost}`);
    }
    if (audio) {
      const s = audio.stats.sample();
      lines.push(`audio ${audio.producer.codec} ${fmt(s.fps)} frames/s ${fmt(s.kbps)} kbit/s`);
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
      paused: { ...this.paused },
    };
  }

  remove() {
    this.root.remove();
  }
}
