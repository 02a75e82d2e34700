// Media: camera and microphone capture, encoding to the relay (WebCodecs), and decoding
// what the relay forwards (video to a canvas, audio to an AudioWorklet). Each class
// handles one track in one direction.

import { encodeDatagram, encodeStreamFrame } from './protocol.js';

// Video codecs in order of preference when none is forced with ?codec=. H.264 uses
// Annex B so that every keyframe carries its parameter sets and the receiver's decoder
// needs no out-of-band `description`.
export const VIDEO_CODECS = [
  { name: 'vp8', codec: 'vp8' },
  { name: 'vp9', codec: 'vp09.00.10.08' },
  { name: 'h264', codec: 'avc1.42001f', extra: { avc: { format: 'annexb' } } },
  { name: 'av1', codec: 'av01.0.04M.08' },
];

const KEYFRAME_INTERVAL_US = 2_000_000;
// More encoded video frames than this waiting to be written means the network (or the
// relay) cannot keep up: drop until the next keyframe rather than grow the delay.
const MAX_QUEUED_VIDEO_FRAMES = 30;
// A decoder this far behind is dropped back to the next keyframe for the same reason.
const MAX_DECODE_QUEUE = 15;
// Receiver waits this long at a gap for a natural keyframe before asking for one.
const KEYFRAME_WAIT_MS = 1000;
// Audio: how long a missing datagram is waited for before it counts as lost. Opus
// frames are 20 ms, so this tolerates reordering by two frames.
const AUDIO_REORDER_WAIT_MS = 40;
const OPUS_BITRATE = 32_000;

/** Microseconds since the UNIX epoch: the protocol's capture_us clock. */
export function nowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** Names of the browser features this client cannot work without, if any are missing. */
export function missingFeatures() {
  const needed = {
    WebTransport: typeof WebTransport,
    VideoEncoder: typeof VideoEncoder,
    VideoDecoder: typeof VideoDecoder,
    AudioEncoder: typeof AudioEncoder,
    AudioDecoder: typeof AudioDecoder,
    MediaStreamTrackProcessor: typeof MediaStreamTrackProcessor,
    AudioWorklet: typeof AudioWorkletNode,
    getUserMedia: typeof navigator.mediaDevices?.getUserMedia,
  };
  return Object.entries(needed)
    .filter(([, type]) => type === 'undefined')
    .map(([name]) => name);
}

function videoEncoderConfig(choice, s) {
  return {
    codec: choice.codec,
    width: s.width,
    height: s.height,
    bitrate: s.bitrate,
    framerate: s.fps,
    latencyMode: 'realtime',
    ...(choice.extra ?? {}),
  };
}

/** The forced codec (?codec=), or the first of VIDEO_CODECS this browser can both encode and decode. */
export async function chooseVideoCodec(forced, settings) {
  const candidates = forced ? VIDEO_CODECS.filter((c) => c.name === forced) : VIDEO_CODECS;
  if (candidates.length === 0) {
    throw new Error(`Unknown codec "${forced}": use vp8, vp9, h264 or av1.`);
  }
  for (const choice of candidates) {
    const config = videoEncoderConfig(choice, settings);
    try {
      const [enc, dec] = await Promise.all([
        VideoEncoder.isConfigSupported(config),
        VideoDecoder.isConfigSupported({ codec: choice.codec }),
      ]);
      if (enc.supported && dec.supported) return { ...choice, config };
    } catch {
      // Treated as unsupported.
    }
  }
  throw new Error(
    forced
      ? `This browser cannot encode and decode ${forced} at ${settings.width}x${settings.height}.`
      : 'This browser can encode and decode none of VP8, VP9, H.264 and AV1.',
  );
}

/**
 * Camera and microphone, the camera asked for the configured size and rate. A device
 * that does not exist is left out (`missing` names it) rather than failing the join;
 * refused access throws.
 */
export async function openCapture(settings) {
  const video = {
    width: { ideal: settings.width },
    height: { ideal: settings.height },
    frameRate: { ideal: settings.fps },
  };
  const audio = { channelCount: { ideal: 1 }, echoCancellation: true, noiseSuppression: true };
  const attempts = [
    [{ video, audio }, []],
    [{ audio }, ['camera']],
    [{ video }, ['microphone']],
  ];
  for (const [constraints, missing] of attempts) {
    try {
      return { stream: await navigator.mediaDevices.getUserMedia(constraints), missing };
    } catch (e) {
      if (e.name !== 'NotFoundError' && e.name !== 'OverconstrainedError') throw e;
    }
  }
  return { stream: new MediaStream(), missing: ['camera', 'microphone'] };
}

/**
 * Maps encoder output timestamps back to capture times (wall clock). Video encoders keep
 * each input's timestamp; the Opus encoder counts its own from the first input on, so for
 * audio the nearest remembered input timestamp is used, shifted by the difference.
 */
class CaptureClock {
  constructor() {
    this.entries = []; // { timestamp, captureUs }, newest last
  }

  record(timestamp) {
    this.entries.push({ timestamp, captureUs: nowUs() });
    if (this.entries.length > 100) this.entries.shift();
  }

  captureUs(timestamp) {
    let best = null;
    for (const e of this.entries) {
      if (!best || Math.abs(e.timestamp - timestamp) < Math.abs(best.timestamp - timestamp)) best = e;
    }
    if (!best) return nowUs();
    return Math.max(0, Math.round(best.captureUs + (timestamp - best.timestamp)));
  }
}

/** Counts for a stats overlay; `sample()` turns them into rates since the last call. */
export class TrackStats {
  constructor() {
    this.frames = 0;
    this.bytes = 0;
    this.latencySumUs = 0;
    this.latencyCount = 0;
    this.lost = 0;
    this.lastSample = { at: performance.now(), frames: 0, bytes: 0 };
    this.latest = { fps: 0, kbps: 0, latencyMs: null };
  }

  latency(captureUs) {
    this.latencySumUs += nowUs() - captureUs;
    this.latencyCount++;
  }

  sample() {
    const at = performance.now();
    const dt = (at - this.lastSample.at) / 1000;
    if (dt > 0.2) {
      this.latest = {
        fps: (this.frames - this.lastSample.frames) / dt,
        kbps: ((this.bytes - this.lastSample.bytes) * 8) / 1000 / dt,
        latencyMs: this.latencyCount ? this.latencySumUs / this.latencyCount / 1000 : null,
      };
      this.lastSample = { at, frames: this.frames, bytes: this.bytes };
      this.latencySumUs = 0;
      this.latencyCount = 0;
    }
    return this.latest;
  }
}

// ---------------------------------------------------------------------------
// Sending.

/**
 * Camera → MediaStreamTrackProcessor → VideoEncoder → one unidirectional stream per
 * group of pictures: every keyframe finishes the current stream and opens a new one.
 */
export class VideoSender {
  constructor({ session, track, choice, settings }) {
    this.session = session;
    this.track = track;
    this.choice = choice;
    this.settings = settings;
    this.stats = new TrackStats();
    this.clock = new CaptureClock();
    this.producerId = null;
    this.paused = false;
    this.stopped = false;
    this.seq = 0;
    this.forceKey = true; // consumers cannot start before a keyframe
    this.lastKeyTimestamp = -Infinity;
    this.nextFrameDue = -Infinity;
    this.writer = null; // the open group's stream
    this.writeChain = Promise.resolve();
    this.queued = 0;
    this.waitingForKey = false; // frames were dropped; send nothing until a keyframe
    this.size = null;
    this.restarts = 0;
  }

  async start() {
    const { producer_id } = await this.session.request('produce', {
      kind: 'video',
      codec: this.choice.codec,
      params: {
        codedWidth: this.settings.width,
        codedHeight: this.settings.height,
        framerate: this.settings.fps,
      },
    });
    this.producerId = producer_id;
    this.encoder = new VideoEncoder({
      output: (chunk) => this.onChunk(chunk),
      error: (e) => this.onEncoderError(e),
    });
    this.encoder.configure(this.choice.config);
    this.size = `${this.settings.width}x${this.settings.height}`; // the encoder scales to it
    this.readLoop();
    return producer_id;
  }

  async readLoop() {
    const reader = new MediaStreamTrackProcessor({ track: this.track }).readable.getReader();
    this.reader = reader;
    const interval = 1e6 / this.settings.fps;
    while (!this.stopped) {
      let result;
      try {
        result = await reader.read();
      } catch {
        break;
      }
      if (result.done) break;
      const frame = result.value;
      // Keep to the configured frame rate (the camera may deliver more), and skip
      // frames while the encoder is behind or the camera is off.
      const ts = frame.timestamp;
      const due = ts >= this.nextFrameDue - interval / 4; // camera timestamps jitter a little
      if (this.paused || !due || this.encoder.state !== 'configured' || this.encoder.encodeQueueSize > 2) {
        frame.close();
        continue;
      }
      // Keep the schedule's phase; start it over after falling behind by a whole interval.
      const next = this.nextFrameDue + interval;
      this.nextFrameDue = next > ts ? next : ts + interval;
      const keyFrame = this.forceKey || ts - this.lastKeyTimestamp >= KEYFRAME_INTERVAL_US;
      if (keyFrame) {
        this.forceKey = false;
        this.lastKeyTimestamp = ts;
      }
      this.clock.record(ts);
      this.encoder.encode(frame, { keyFrame });
      frame.close();
    }
  }

  onChunk(chunk) {
    if (this.stopped || this.paused) return;
    const key = chunk.type === 'key';
    if (!key && this.waitingForKey) return;
    if (this.queued >= MAX_QUEUED_VIDEO_FRAMES && !key) {
      this.dropUntilKeyframe();
      return;
    }
    this.waitingForKey = false;
    const data = new Uint8Array(chunk.byteLength);
    chunk.copyTo(data);
    if (data.byteLength > this.session.maxFrameSize) {
      this.dropUntilKeyframe();
      return;
    }
    const frame = encodeStreamFrame(this.seq++, this.clock.captureUs(chunk.timestamp), key, data);
    this.queued++;
    this.writeChain = this.writeChain
      .then(() => this.write(frame, key, data.byteLength))
      .finally(() => this.queued--);
  }

  async write(frame, key, payloadBytes) {
    if (this.stopped) return;
    try {
      if (key) this.finishGroup();
      if (!this.writer) {
        if (!key) return; // a group that lost its stream waits for the next keyframe
        this.writer = await this.session.openVideoStream(this.producerId);
      }
      await this.writer.write(frame);
      this.stats.frames++;
      this.stats.bytes += payloadBytes;
    } catch (e) {
      // The relay stopped the stream (it refused a frame) or the session is gone.
      if (this.session.ended) return;
      console.warn('video stream write failed:', e);
      this.writer = null;
      this.dropUntilKeyframe();
    }
  }

  /** Ends the current group's stream; the relay reads a producer's streams in order. */
  finishGroup() {
    if (this.writer) {
      this.writer.close().catch(() => {});
      this.writer = null;
    }
  }

  dropUntilKeyframe() {
    this.waitingForKey = true;
    this.forceKey = true;
  }

  /** The relay wants a keyframe (a consumer is waiting for one). */
  requestKeyframe() {
    this.forceKey = true;
  }

  onEncoderError(e) {
    console.error('video encoder error:', e);
    if (this.stopped) return;
    if (++this.restarts > 5) {
      this.stopped = true; // an encoder that keeps failing is not retried for ever
      return;
    }
    // Start over with a fresh encoder; the next frame is a keyframe on a new stream.
    try {
      this.encoder = new VideoEncoder({ output: (c) => this.onChunk(c), error: (err) => this.onEncoderError(err) });
      this.encoder.configure(this.choice.config);
    } catch (err) {
      console.error('cannot restart the video encoder:', err);
    }
    this.writeChain = this.writeChain.then(() => this.finishGroup());
    this.dropUntilKeyframe();
  }

  /** Camera off/on. While paused nothing is sent, and the open group is finished. */
  setPaused(paused) {
    this.paused = paused;
    if (paused) {
      this.writeChain = this.writeChain.then(() => this.finishGroup());
    } else {
      this.dropUntilKeyframe();
    }
  }

  stop() {
    this.stopped = true;
    this.reader?.cancel().catch(() => {});
    this.finishGroup();
    if (this.encoder?.state !== 'closed') this.encoder?.close();
  }
}

/** Microphone → AudioEncoder (Opus, 20 ms frames) → one datagram per frame. */
export class AudioSender {
  constructor({ session, track }) {
    this.session = session;
    this.track = track;
    this.stats = new TrackStats();
    this.clock = new CaptureClock();
    this.producerId = null;
    this.paused = false;
    this.stopped = false;
    this.seq = 0;
    this.tooLarge = 0;
    this.restarts = 0;
  }

  /** Produces once the first microphone buffer shows its sample rate and channels. */
  async start() {
    this.reader = new MediaStreamTrackProcessor({ track: this.track }).readable.getReader();
    const first = await this.reader.read();
    if (first.done) throw new Error('the microphone delivered no audio');
    try {
      await this.setUp(first.value);
    } finally {
      first.value.close();
    }
    this.readLoop();
    return this.producerId;
  }

  async setUp(first) {
    const { sampleRate, numberOfChannels } = first;
    this.config = {
      codec: 'opus',
      sampleRate,
      numberOfChannels,
      bitrate: OPUS_BITRATE,
      opus: { frameDuration: 20_000 },
    };
    const { supported } = await AudioEncoder.isConfigSupported(this.config);
    if (!supported) throw new Error(`This browser cannot encode Opus at ${sampleRate} Hz.`);
    const { producer_id } = await this.session.request('produce', {
      kind: 'audio',
      codec: 'opus',
      params: { sampleRate, numberOfChannels },
    });
    this.producerId = producer_id;
    this.createEncoder();
    this.encode(first.clone());
  }

  createEncoder() {
    this.encoder = new AudioEncoder({
      output: (chunk) => this.onChunk(chunk),
      error: (e) => {
        console.error('audio encoder error:', e);
        // Carry on with a fresh encoder, but not for ever.
        if (!this.stopped && ++this.restarts <= 5) this.createEncoder();
      },
    });
    this.encoder.configure(this.config);
  }

  encode(data) {
    if (!this.paused && this.encoder.state === 'configured') {
      this.clock.record(data.timestamp);
      this.encoder.encode(data);
    }
    data.close();
  }

  async readLoop() {
    while (!this.stopped) {
      let result;
      try {
        result = await this.reader.read();
      } catch {
        break;
      }
      if (result.done) break;
      this.encode(result.value);
    }
  }

  onChunk(chunk) {
    if (this.stopped || this.paused) return;
    const payload = new Uint8Array(chunk.byteLength);
    chunk.copyTo(payload);
    const datagram = encodeDatagram(this.producerId, this.seq++, this.clock.captureUs(chunk.timestamp), payload);
    if (this.session.sendDatagram(datagram)) {
      this.stats.frames++;
      this.stats.bytes += payload.byteLength;
    } else {
      this.tooLarge++; // over max_datagram_size: dropped rather than refused by the relay
    }
  }

  /** Mute/unmute: while paused nothing is encoded or sent. */
  setPaused(paused) {
    this.paused = paused;
    if (!paused && this.encoder?.state === 'configured') {
      // A fresh encoder: Opus timestamps would otherwise continue from before the pause,
      // and its state would bridge the silence with stale audio.
      this.encoder.reset();
      this.encoder.configure(this.config);
    }
  }

  stop() {
    this.stopped = true;
    this.reader?.cancel().catch(() => {});
    if (this.encoder && this.encoder.state !== 'closed') this.encoder.close();
  }
}

// ---------------------------------------------------------------------------
// Receiving.

function base64ToBytes(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/**
 * One video consumer: frames in arrival order (session.js already orders the streams)
 * → VideoDecoder → canvas. Stale frames are dropped, and after a gap decoding waits for
 * a keyframe, asking the relay for one if the wait gets long.
 */
export class VideoReceiver {
  constructor({ consumer, canvas, requestKeyframe, onDecoded }) {
    this.consumerId = consumer.consumer_id;
    this.producer = consumer.producer;
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.requestKeyframe = requestKeyframe;
    this.onDecoded = onDecoded;
    this.stats = new TrackStats();
    this.decoded = 0;
    this.lastSeq = -1;
    this.waitingSince = performance.now(); // a new consumer starts at a keyframe
    this.lastKeyframeRequest = 0;
    this.size = null;
    this.closed = false;
    this.failure = null;
    this.restarts = 0;
    this.createDecoder();
  }

  createDecoder() {
    const params = this.producer.params ?? {};
    const config = { codec: this.producer.codec, optimizeForLatency: true };
    if (params.codedWidth && params.codedHeight) {
      config.codedWidth = params.codedWidth;
      config.codedHeight = params.codedHeight;
    }
    if (typeof params.description === 'string') config.description = base64ToBytes(params.description);
    this.decoder = new VideoDecoder({
      output: (frame) => this.render(frame),
      error: (e) => this.onDecoderError(e),
    });
    try {
      this.decoder.configure(config);
    } catch (e) {
      this.failure = `cannot decode ${this.producer.codec}`;
      console.warn(this.failure, e);
    }
  }

  /** A frame from the relay, in stream order. */
  frame(f) {
    if (this.closed || f.seq <= this.lastSeq) return; // stale: an earlier group's tail
    this.stats.bytes += f.payload.byteLength;
    if (this.lastSeq >= 0 && f.seq !== this.lastSeq + 1) {
      this.stats.lost += f.seq - this.lastSeq - 1;
      if (this.waitingSince === null) this.waitingSince = performance.now();
    }
    this.lastSeq = f.seq;
    if (this.waitingSince !== null) {
      if (!f.keyframe) {
        this.maybeRequestKeyframe();
        return;
      }
      this.waitingSince = null;
    }
    if (this.decoder.state !== 'configured') return;
    if (this.decoder.decodeQueueSize > MAX_DECODE_QUEUE && !f.keyframe) {
      this.waitingSince = performance.now(); // too far behind: skip to the next keyframe
      return;
    }
    this.decoder.decode(
      new EncodedVideoChunk({
        type: f.keyframe ? 'key' : 'delta',
        timestamp: f.captureUs, // comes back on the VideoFrame, for the latency figure
        data: f.payload,
      }),
    );
  }

  maybeRequestKeyframe() {
    const now = performance.now();
    if (now - this.waitingSince < KEYFRAME_WAIT_MS || now - this.lastKeyframeRequest < KEYFRAME_WAIT_MS) return;
    this.lastKeyframeRequest = now;
    this.requestKeyframe(this.consumerId);
  }

  render(frame) {
    if (this.closed) {
      frame.close();
      return;
    }
    const w = frame.displayWidth;
    const h = frame.displayHeight;
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    this.ctx.drawImage(frame, 0, 0, w, h);
    this.size = `${w}x${h}`;
    this.stats.frames++;
    this.stats.latency(frame.timestamp);
    frame.close();
    this.decoded++;
    this.onDecoded();
  }

  onDecoderError(e) {
    if (this.closed) return;
    console.warn('video decoder error, restarting at the next keyframe:', e);
    if (++this.restarts > 5) {
      this.failure = `cannot decode ${this.producer.codec}`; // e.g. unsupported here
      return;
    }
    this.createDecoder();
    this.waitingSince = performance.now() - KEYFRAME_WAIT_MS; // ask at once
  }

  close() {
    this.closed = true;
    if (this.decoder.state !== 'closed') this.decoder.close();
  }
}

/**
 * The page's audio output: one AudioContext, and one worklet node per remote audio
 * track (the context mixes them). The worklet holds the playout buffer (audio-worklet.js).
 */
export class AudioOutput {
  async start() {
    // 48 kHz matches Opus, so decoded audio needs no resampling.
    this.ctx = new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
    await this.ctx.audioWorklet.addModule(new URL('./audio-worklet.js', import.meta.url));
    this.ctx.resume().catch(() => {});
  }

  /** True when the browser blocks playback until the user interacts with the page. */
  get blocked() {
    return this.ctx?.state === 'suspended';
  }

  resume() {
    return this.ctx?.resume();
  }

  createPlayer(onStatus) {
    const node = new AudioWorkletNode(this.ctx, 'jitter-player', {
      numberOfInputs: 0,
      outputChannelCount: [1],
    });
    node.port.onmessage = (e) => onStatus(e.data);
    node.connect(this.ctx.destination);
    return node;
  }

  close() {
    this.ctx?.close().catch(() => {});
    this.ctx = null;
  }
}

/** Linear interpolation: good enough for speech when rates differ (rare: Opus is 48 kHz). */
function resample(samples, from, to) {
  if (from === to) return samples;
  const out = new Float32Array(Math.round((samples.length * to) / from));
  const step = from / to;
  for (let i = 0; i < out.length; i++) {
    const x = i * step;
    const j = Math.floor(x);
    const a = samples[j] ?? 0;
    const b = samples[j + 1] ?? a;
    out[i] = a + (b - a) * (x - j);
  }
  return out;
}

/**
 * One audio consumer: datagrams → reorder buffer by seq → AudioDecoder → worklet.
 * The reorder buffer waits up to AUDIO_REORDER_WAIT_MS for a missing datagram, then
 * counts it as lost; the worklet smooths the rest of the jitter.
 */
export class AudioReceiver {
  constructor({ consumer, output, onDecoded }) {
    this.consumerId = consumer.consumer_id;
    this.producer = consumer.producer;
    this.output = output;
    this.onDecoded = onDecoded;
    this.stats = new TrackStats();
    this.decoded = 0;
    this.buffered = new Map(); // seq -> { frame, arrived }
    this.captureTimes = []; // capture_us of the packets in the decoder, oldest first
    this.nextSeq = null;
    this.timer = null;
    this.closed = false;
    this.playoutMs = 0;
    this.restarts = 0;
    this.player = output.createPlayer((status) => {
      this.playoutMs = (status.buffered / output.ctx.sampleRate) * 1000;
    });
    this.createDecoder();
  }

  createDecoder() {
    const params = this.producer.params ?? {};
    this.captureTimes = [];
    this.decoder = new AudioDecoder({
      output: (data) => this.play(data),
      error: (e) => {
        // A broken packet closes the decoder; carry on with a new one.
        console.warn('audio decoder error:', e);
        if (!this.closed && ++this.restarts <= 5) this.createDecoder();
      },
    });
    try {
      this.decoder.configure({
        codec: this.producer.codec,
        sampleRate: params.sampleRate ?? 48000,
        numberOfChannels: params.numberOfChannels ?? 1,
      });
    } catch (e) {
      console.warn(`cannot decode ${this.producer.codec}:`, e);
    }
  }

  frame(f) {
    if (this.closed) return;
    if (this.nextSeq !== null && f.seq < this.nextSeq) return; // too late, or a duplicate
    if (this.buffered.has(f.seq)) return;
    this.stats.bytes += f.payload.byteLength;
    this.buffered.set(f.seq, { frame: f, arrived: performance.now() });
    this.drain();
  }

  /** Decodes every frame that is next in line; skips a gap once it has waited enough. */
  drain() {
    clearTimeout(this.timer);
    this.timer = null;
    while (this.buffered.size > 0) {
      if (this.nextSeq === null) this.nextSeq = Math.min(...this.buffered.keys());
      const entry = this.buffered.get(this.nextSeq);
      if (entry) {
        this.buffered.delete(this.nextSeq);
        this.nextSeq++;
        this.decode(entry.frame);
        continue;
      }
      // A gap: wait for the missing frame until the oldest waiting frame is too old.
      const oldest = Math.min(...[...this.buffered.values()].map((e) => e.arrived));
      const waited = performance.now() - oldest;
      if (waited < AUDIO_REORDER_WAIT_MS) {
        this.timer = setTimeout(() => this.drain(), AUDIO_REORDER_WAIT_MS - waited + 1);
        return;
      }
      const next = Math.min(...this.buffered.keys());
      this.stats.lost += next - this.nextSeq;
      this.nextSeq = next;
    }
  }

  decode(f) {
    if (this.decoder.state !== 'configured') return;
    // The decoder may number its output from its own sample count rather than from the
    // input timestamps (it does after a pause), so capture times wait in a queue instead:
    // one Opus packet in, one AudioData out, in order.
    this.captureTimes.push(f.captureUs);
    this.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: f.captureUs, data: f.payload }));
  }

  play(data) {
    if (this.closed) {
      data.close();
      return;
    }
    // Mix down to mono: one voice per tile.
    const n = data.numberOfFrames;
    const mono = new Float32Array(n);
    const plane = new Float32Array(n);
    for (let c = 0; c < data.numberOfChannels; c++) {
      data.copyTo(plane, { planeIndex: c, format: 'f32-planar' });
      for (let i = 0; i < n; i++) mono[i] += plane[i] / data.numberOfChannels;
    }
    const samples = resample(mono, data.sampleRate, this.output.ctx.sampleRate);
    this.player.port.postMessage(samples, [samples.buffer]);
    this.stats.frames++;
    const captureUs = this.captureTimes.shift();
    if (captureUs !== undefined) this.stats.latency(captureUs);
    data.close();
    this.decoded++;
    this.onDecoded();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.decoder.state !== 'closed') this.decoder.close();
    this.player.port.postMessage('stop');
    this.player.disconnect();
  }
}
