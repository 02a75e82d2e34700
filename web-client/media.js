// Media: camera and microphone capture, encoding to the relay (WebCodecs), and decoding
// what the relay forwards (video to a canvas, audio to an AudioWorklet). Each class
// handles one track in one direction.

import { audioLevel, encodeDatagram, encodeStreamFrame } from './protocol.js';
import { EncoderRate, MIN_VIDEO_BITRATE, videoShareBps } from './encoder-rate.js';
import { SendQueue } from './send-queue.js';

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
// Default bound of the video send backlog (?maxSendDelay=): see VideoSender.
export const DEFAULT_MAX_SEND_DELAY_MS = 300;
// A backlog check this long after the previous one (the page was busy) is put off a frame.
const LATE_CHECK_MS = 150;
// A decoder this far behind is dropped back to the next keyframe for the same reason.
const MAX_DECODE_QUEUE = 15;
// Receiver waits this long at a gap for a natural keyframe before asking for one.
const KEYFRAME_WAIT_MS = 1000;
// Audio: how long a missing datagram is waited for before it counts as lost. Opus
// frames are 20 ms, so this tolerates reordering by two frames.
const AUDIO_REORDER_WAIT_MS = 40;
const OPUS_BITRATE = 32_000;

/**
 * Audio levels (0 loudest to 127 silence, section 15.2) of the last second: `loudest` is what
 * a level meter shows, steadier than the last frame's level between two syllables.
 */
export class RecentLevels {
  constructor(windowMs = 1000) {
    this.windowMs = windowMs;
    this.entries = []; // { at, level }, oldest first
    this.last = null;
  }

  add(level) {
    const at = performance.now();
    this.last = level;
    this.entries.push({ at, level });
    while (this.entries.length && at - this.entries[0].at > this.windowMs) this.entries.shift();
  }

  /** The loudest level of the last second, or null if none came in it. */
  get loudest() {
    const now = performance.now();
    let best = null;
    for (const e of this.entries) if (now - e.at <= this.windowMs && (best === null || e.level < best)) best = e.level;
    return best;
  }
}

/** Microseconds since the UNIX epoch: the protocol's capture_us clock. */
export function nowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/**
 * Whether camera and microphone frames come from `MediaStreamTrackProcessor` (Chromium).
 * Where it is missing (Firefox) they are taken from a video element and an AudioWorklet
 * instead (see `videoFrameReader` and `audioDataReader`); the senders do not know which.
 */
export const hasTrackProcessor = typeof MediaStreamTrackProcessor !== 'undefined';

/** Names of the browser features this client cannot work without, if any are missing. */
export function missingFeatures() {
  // No WebTransport here: without it the call goes over the WebSocket fallback (session.js).
  const needed = {
    VideoEncoder: typeof VideoEncoder,
    VideoDecoder: typeof VideoDecoder,
    AudioEncoder: typeof AudioEncoder,
    AudioDecoder: typeof AudioDecoder,
    AudioWorklet: typeof AudioWorkletNode,
    getUserMedia: typeof navigator.mediaDevices?.getUserMedia,
  };
  if (!hasTrackProcessor) {
    // The capture fallback builds its frames itself.
    needed.VideoFrame = typeof VideoFrame;
    needed.AudioData = typeof AudioData;
  }
  return Object.entries(needed)
    .filter(([, type]) => type === 'undefined')
    .map(([name]) => name);
}

// ---------------------------------------------------------------------------
// Capture: a reader of a track's frames, whichever way this browser gives them.

/**
 * A reader of `VideoFrame`s from a camera track (`read()`, `cancel()`, as a
 * ReadableStream's). With MediaStreamTrackProcessor the camera's own frames; without, a
 * muted video element plays the track and a frame is taken from it at `fps` (paced by
 * requestVideoFrameCallback where it fires, so a slower camera is not sent twice per
 * picture; a timer otherwise), timestamped with this page's clock in microseconds.
 */
export function videoFrameReader(track, fps) {
  if (hasTrackProcessor) return new MediaStreamTrackProcessor({ track }).readable.getReader();
  const video = document.createElement('video');
  video.muted = true;
  video.playsInline = true;
  video.srcObject = new MediaStream([track]);
  const playing = video.play().catch(() => {}); // muted playback needs no gesture
  const interval = 1000 / fps;
  let next = 0;
  // requestVideoFrameCallback says when the element has a new picture; where it does not
  // fire (or stops), frames are taken on the timer alone.
  let fresh = false; // a new picture since the last frame taken
  let lastPictureAt = -Infinity;
  const watch = () => {
    if (typeof video.requestVideoFrameCallback !== 'function') return;
    video.requestVideoFrameCallback(() => {
      fresh = true;
      lastPictureAt = performance.now();
      if (track.readyState === 'live') watch();
    });
  };
  watch();
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  let cancelled = false; // by the sender (another camera was picked): stop quietly
  const stream = new ReadableStream(
    {
      async pull(controller) {
        await playing;
        for (;;) {
          if (cancelled) return;
          if (track.readyState !== 'live') {
            controller.close();
            return;
          }
          const wait = next - performance.now();
          if (wait > 0) await sleep(wait);
          else if (video.readyState >= 2 && video.videoWidth > 0 && (fresh || performance.now() - lastPictureAt > 500)) break;
          else await sleep(Math.min(interval / 4, 10));
        }
        if (cancelled) return;
        fresh = false;
        const now = performance.now();
        next = Math.max(next + interval, now + interval / 2); // keep the phase; never burst
        try {
          controller.enqueue(new VideoFrame(video, { timestamp: Math.round(now * 1000) }));
        } catch (e) {
          // Between pictures (a resize, say) the element may have none to give: try again.
          console.warn('cannot take a frame from the camera:', e);
          next = now + interval;
          await sleep(interval);
        }
      },
      cancel() {
        cancelled = true;
        video.pause();
        video.srcObject = null;
      },
    },
    { highWaterMark: 0 }, // a frame is taken when the sender asks for one: never a stale one
  );
  return stream.getReader();
}

/**
 * A reader of `AudioData` from a microphone track. With MediaStreamTrackProcessor the
 * microphone's own buffers; without, the track plays into an AudioWorklet in `audioContext`
 * (its module is audio-worklet.js, loaded by AudioOutput) that hands over 20 ms of mono PCM
 * at a time. That context must be running: a browser may hold it suspended until the
 * person clicks the page (AudioOutput.resume).
 */
export function audioDataReader(track, audioContext) {
  if (hasTrackProcessor) return new MediaStreamTrackProcessor({ track }).readable.getReader();
  let source = null;
  let node = null;
  const stop = () => {
    node?.port.postMessage('stop');
    node?.disconnect();
    source?.disconnect();
  };
  const stream = new ReadableStream({
    start(controller) {
      const sampleRate = audioContext.sampleRate;
      source = audioContext.createMediaStreamSource(new MediaStream([track]));
      node = new AudioWorkletNode(audioContext, 'mic-capture', {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        channelCount: 1,
        channelCountMode: 'explicit', // mixed down to mono: one voice
        processorOptions: { chunkFrames: Math.round(sampleRate / 50) },
      });
      let timestampUs = null; // continuous: counted in samples from the first chunk
      node.port.onmessage = (e) => {
        const samples = e.data;
        timestampUs ??= Math.round(performance.now() * 1000);
        try {
          controller.enqueue(
            new AudioData({
              format: 'f32-planar',
              sampleRate,
              numberOfFrames: samples.length,
              numberOfChannels: 1,
              timestamp: timestampUs,
              data: samples,
            }),
          );
        } catch {
          return; // cancelled meanwhile
        }
        timestampUs += Math.round((samples.length / sampleRate) * 1e6);
      };
      source.connect(node);
      // Connected to the output (it writes silence), so that every browser runs it.
      node.connect(audioContext.destination);
      track.addEventListener('ended', () => {
        stop();
        try {
          controller.close();
        } catch {
          // Already cancelled.
        }
      });
    },
    cancel: stop,
  });
  return stream.getReader();
}

/**
 * Wraps a reader of VideoFrames: when the track delivers nothing for `intervalMs` (a
 * screen capture only delivers frames that changed), the last frame is handed out again
 * with a timestamp moved on by the time that passed.
 */
export function repeatingReader(reader, intervalMs) {
  let last = null; // { frame, at }
  let pending = null; // the read in progress on the track
  const sleep = (ms) => new Promise((resolve) => setTimeout(() => resolve(null), ms));
  return {
    async read() {
      pending ??= reader.read().finally(() => {
        pending = null;
      });
      const wait = last ? Math.max(0, last.at + intervalMs - performance.now()) : Infinity;
      const result = await (wait === Infinity ? pending : Promise.race([pending, sleep(wait).then(() => null)]));
      if (result === null) {
        const at = performance.now();
        const timestamp = last.frame.timestamp + Math.round((at - last.at) * 1000);
        const frame = new VideoFrame(last.frame, { timestamp });
        last.frame.close();
        last = { frame: frame.clone(), at };
        return { value: frame, done: false };
      }
      if (result.done) {
        last?.frame.close();
        last = null;
        return result;
      }
      last?.frame.close();
      last = { frame: result.value.clone(), at: performance.now() };
      return result;
    },
    cancel() {
      last?.frame.close();
      last = null;
      return reader.cancel();
    },
  };
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

/** What the camera is asked for: the configured size and rate, of one device if `deviceId`. */
export function cameraConstraints(settings, deviceId = null) {
  const video = {
    width: { ideal: settings.width },
    height: { ideal: settings.height },
    frameRate: { ideal: settings.fps },
  };
  if (deviceId) video.deviceId = { exact: deviceId };
  return video;
}

/** What the microphone is asked for: one voice, of one device if `deviceId`. */
export function microphoneConstraints(deviceId = null) {
  const audio = { channelCount: { ideal: 1 }, echoCancellation: true, noiseSuppression: true };
  if (deviceId) audio.deviceId = { exact: deviceId };
  return audio;
}

/**
 * Camera and microphone, the camera asked for the configured size and rate. A device
 * that does not exist is left out (`missing` names it) rather than failing the join;
 * refused access throws.
 */
export async function openCapture(settings) {
  const video = cameraConstraints(settings);
  const audio = microphoneConstraints();
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
 * Opens one camera (`kind` 'video') or microphone ('audio') by its deviceId and resolves
 * to its track. Rejects with the browser's error (a DOMException: NotFoundError,
 * NotReadableError, ...); app.js words it for people.
 */
export async function openDevice(kind, settings, deviceId) {
  const constraints = kind === 'video' ? { video: cameraConstraints(settings, deviceId) } : { audio: microphoneConstraints(deviceId) };
  const stream = await navigator.mediaDevices.getUserMedia(constraints);
  const [track] = kind === 'video' ? stream.getVideoTracks() : stream.getAudioTracks();
  if (!track) {
    stream.getTracks().forEach((t) => t.stop());
    throw new DOMException(`no ${kind} track`, 'NotFoundError');
  }
  return track;
}

/**
 * The cameras and microphones this browser lists: `{ cameras, microphones }`, each
 * `{ deviceId, label }`. Labels are empty until the page may use the devices (after the
 * join's getUserMedia); such a device is called "Camera 2" and the like. Entries without a
 * deviceId (listed before permission) are left out: they cannot be picked.
 */
export async function listDevices() {
  let all = [];
  try {
    all = await navigator.mediaDevices.enumerateDevices();
  } catch (e) {
    console.warn('enumerateDevices:', e);
  }
  const pick = (kind, word) =>
    all
      .filter((d) => d.kind === kind && d.deviceId)
      .map((d, i) => ({ deviceId: d.deviceId, label: d.label || `${word} ${i + 1}` }));
  return { cameras: pick('videoinput', 'Camera'), microphones: pick('audioinput', 'Microphone') };
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

// Simulcast (several encodings of the camera, "layers", of which the relay forwards one per
// consumer): the ladder is the top size, a half and a quarter, lowest first; a layer
// narrower than MIN_LAYER_WIDTH is left out, so a small camera publishes fewer layers.
const MAX_LAYERS = 3;
const MIN_LAYER_WIDTH = 160;
// A lower layer's bitrate is the top layer's times its share of the pixels to this power: a
// quarter of the pixels gets 38% of the bitrate, a sixteenth 14% (small pictures need more
// bits per pixel). 1.2 Mbit/s at 1280x720 gives 455 and 173 kbit/s.
const LAYER_BITRATE_EXPONENT = 0.7;
const MIN_LAYER_BITRATE = 50_000;
// Captured frames whose seq and capture time are remembered for the encoders' outputs.
const MAX_PENDING_CAPTURES = 120;
// A layer that gave way to a lower one (see VideoLayer.checkBacklog) waits this long before
// it tries again with a keyframe, twice as long after each try that fails, up to the max.
const YIELD_MIN_MS = 500;
const YIELD_MAX_MS = 8_000;
// The measured send rate that an encoder's bitrate is cut to (encoder-rate.js): the video
// this page's streams delivered (acknowledged) over this long.
const SEND_RATE_WINDOW_MS = 1_000;
// A queue at the uplink, seen in the relay's round-trip time to this page (transport_stats,
// once a second): the page's acknowledgements wait in it. Its base is the lowest of this
// long; the queue counts as built when the round trip stays this far above the base for
// this many reports in a row (a host that stalls for a moment raises one or two).
const RTT_BASE_WINDOW_MS = 30_000;
const UPLINK_QUEUE_MS = 200;
const UPLINK_QUEUE_REPORTS = 3;
// A queue reported longer ago than this no longer holds a layer back.
const UPLINK_QUEUE_FRESH_MS = 3_000;

/**
 * The simulcast ladder for a top size `{ width, height, bitrate }`, lowest layer first, as
 * `produce` takes it: `{ width, height, max_bitrate }`. Sizes are even (H.264 needs them).
 */
export function simulcastLadder(top) {
  const layers = [];
  for (let i = 0; i < MAX_LAYERS; i++) {
    const width = Math.round(top.width / 2 ** i) & ~1;
    const height = Math.round(top.height / 2 ** i) & ~1;
    if (i > 0 && (width < MIN_LAYER_WIDTH || height < 2)) break;
    const share = (width * height) / (top.width * top.height);
    const bitrate = i === 0 ? top.bitrate : Math.round(top.bitrate * share ** LAYER_BITRATE_EXPONENT);
    layers.unshift({ width, height, max_bitrate: Math.max(MIN_LAYER_BITRATE, Math.min(top.bitrate, bitrate)) });
  }
  return layers;
}

/**
 * Camera (videoFrameReader) → one VideoEncoder per layer → the relay, a group of
 * pictures (a keyframe and the delta frames after it) at a time, each as a run of short
 * streams (send-queue.js says why).
 *
 * Without simulcast (?simulcast=0, a camera too small for two layers, or a relay that does
 * not know layers: its `produce` result has no `layers`) there is one layer and its streams
 * are type 0x01, as in protocol version 1 from the start. With simulcast each layer has
 * its own encoder, keyframes and streams (type 0x02, with the layer index); every layer is
 * fed the same captured frames, and the encodings of one captured frame carry the same seq
 * and capture time in every layer. Layers the relay does not want (`layers_wanted`) are
 * not encoded at all until it wants them again; they restart with a keyframe.
 *
 * The send backlog (how long the oldest frame not yet sent has waited, see send-queue.js)
 * is kept under `maxSendDelayMs` per layer: on a weak uplink, late video is worth less
 * than none. Past the bound the late groups' streams are reset (the relay discards a
 * partial frame and moves on), every frame is skipped up to the next keyframe, and the
 * encoder is asked for one at once. Audio is not touched (its datagrams go outside these
 * streams), but it gains: video that fills the uplink loses audio datagrams too. Such a
 * skip also lowers that encoder's bitrate to what the uplink measurably carries, and 2 s
 * without one raises it again step by step (encoder-rate.js: the native client's rule);
 * a layer's share is what is left after the layers below it.
 */
export class VideoSender {
  /**
   * `source` is the `produce` source (section 15.6): null for the camera (the field is left
   * out, as for a relay without it), 'screen' for a shared screen. `minFps`: a track that
   * delivers fewer frames (a screen that does not change) has its last frame sent again at
   * this rate, so that a consumer who joins or asks for a keyframe gets one soon.
   */
  constructor({ session, track, choice, settings, maxSendDelayMs = DEFAULT_MAX_SEND_DELAY_MS, simulcast = true, source = null, minFps = 0 }) {
    this.session = session;
    this.track = track;
    this.choice = choice;
    this.settings = settings;
    this.source = source;
    this.minFps = minFps;
    this.maxSendDelayMs = maxSendDelayMs;
    this.simulcast = simulcast; // publish layers if the relay accepts them
    this.stats = new TrackStats(); // frames: captured frames delivered in some layer
    this.clock = new CaptureClock();
    this.producerId = null;
    this.layered = false;
    this.layers = [];
    this.layersWanted = null; // the relay's latest layers_wanted; null: every layer
    this.paused = false;
    this.stopped = false;
    this.seq = 0;
    this.lastCountedSeq = -1;
    this.captures = new Map(); // frame timestamp -> { seq, captureUs } (layered only)
    this.nextFrameDue = -Infinity;
    this.deliveries = []; // { at, bytes } of video delivered in every layer, oldest first
    this.sendingSince = null; // first frame encoded (since the last pause)
    this.reading = false; // readLoop runs
    this.trackChanges = 0; // replaceTrack calls
    this.trackChangesSeen = 0; // of them, those whose track has delivered a frame
    this.lastTimestamp = -Infinity; // of the last frame read (after tsOffset)
    this.tsOffset = 0; // added to the current track's timestamps
    this.rtts = []; // { at, ms } of the relay's round-trip times, oldest first
    this.rttAt = -Infinity; // when the latest came
    this.uplinkQueueMs = 0; // the latest round trip over its base
    this.queuedReports = 0; // reports in a row with a queue at the uplink
    this.uplinkQueueCuts = 0; // times a layer gave way to a queue at the uplink
  }

  // The send backlog over all layers: the worst layer, and the sums of what was given up.
  get backlogMs() {
    return Math.max(0, ...this.layers.map((l) => l.queue.backlogMs));
  }

  get maxBacklogMs() {
    return Math.max(0, ...this.layers.map((l) => l.maxBacklogMs));
  }

  get skippedFrames() {
    return this.layers.reduce((n, l) => n + l.skippedFrames, 0);
  }

  get abandonedGroups() {
    return this.layers.reduce((n, l) => n + l.abandonedGroups, 0);
  }

  get networkMs() {
    return Math.max(0, ...this.layers.map((l) => l.queue.networkMs));
  }

  /** The size being sent: the largest layer that is encoding. */
  get size() {
    const running = this.layers.filter((l) => l.running);
    const top = running.at(-1) ?? this.layers.at(-1);
    return top ? `${top.width}x${top.height}` : null;
  }

  /** The largest size to encode: the settings, or the camera's if it delivers fewer pixels (no upscaling). */
  topSize() {
    const { width, height, bitrate } = this.settings;
    const camera = this.track.getSettings?.() ?? {};
    if (camera.width > 0 && camera.height > 0 && camera.width * camera.height < width * height) {
      return { width: camera.width & ~1, height: camera.height & ~1, bitrate };
    }
    return { width, height, bitrate };
  }

  /** The layers of the ladder this browser can encode with the chosen codec. */
  async supportedLadder(top) {
    const ladder = simulcastLadder(top);
    const supported = [];
    for (const layer of ladder) {
      try {
        const config = { ...this.choice.config, width: layer.width, height: layer.height, bitrate: layer.max_bitrate };
        if ((await VideoEncoder.isConfigSupported(config)).supported) supported.push(layer);
      } catch {
        // Treated as unsupported.
      }
    }
    return supported;
  }

  async start() {
    await this.produce();
    this.readLoop();
    return this.producerId;
  }

  /** Asks the relay for a producer (with layers if it takes them) and sets up the encoders. */
  async produce() {
    let top = this.settings;
    let ladder = [];
    if (this.simulcast) {
      top = this.topSize();
      ladder = await this.supportedLadder(top);
      if (ladder.length > 0) top = { ...top, width: ladder.at(-1).width, height: ladder.at(-1).height };
    }
    const request = {
      kind: 'video',
      codec: this.choice.codec,
      params: { codedWidth: top.width, codedHeight: top.height, framerate: this.settings.fps },
    };
    if (this.source) request.source = this.source;
    if (ladder.length > 1) request.layers = ladder;
    let result;
    try {
      result = await this.session.request('produce', request);
    } catch (e) {
      // A relay that refuses these layers (more than it takes, say) may still take one
      // encoding: the camera is sent without simulcast rather than not at all.
      if (e.code !== 'bad_request' || !request.layers) throw e;
      console.warn('the relay refused simulcast layers, sending one encoding:', e);
      delete request.layers;
      result = await this.session.request('produce', request);
    }
    this.producerId = result.producer_id;
    // The relay says how many layers it takes (the lowest ones, as their indexes are
    // positions in the list); a relay without simulcast says nothing: one ordinary stream.
    const accepted = request.layers && Number.isInteger(result.layers) ? Math.min(result.layers, ladder.length) : 0;
    if (accepted > 0) {
      this.layered = true;
      this.layers = ladder
        .slice(0, accepted)
        .map((l, i) => new VideoLayer(this, i, { width: l.width, height: l.height, bitrate: l.max_bitrate }));
    } else {
      this.layers = [new VideoLayer(this, null, { width: top.width, height: top.height, bitrate: top.bitrate })];
    }
  }

  /**
   * The session is gone (docs/PROTOCOL.md section 16): nothing is encoded or sent until
   * `resumeOn` or `republish`, and what was not delivered is given up (its streams died
   * with the session). Not a slow uplink: the encoders' bitrates are left as they are.
   */
  suspend() {
    this.suspended = true;
    this.sendingSince = null;
    for (const layer of this.layers) {
      layer.queue.abandon({ all: true });
      layer.queue.close();
    }
  }

  /**
   * Goes on in a resumed place on `session`: the same producer, `seq` carrying on where it
   * left off (it must keep increasing), and a keyframe first in every layer.
   */
  resumeOn(session) {
    this.session = session;
    this.sendingSince = null;
    this.captures.clear();
    for (const layer of this.layers) {
      layer.wanted = true; // until the relay's next layers_wanted
      layer.queue.close();
      layer.dropUntilKeyframe();
    }
    this.layersWanted = null;
    this.suspended = false;
  }

  /**
   * The place could not be resumed: the same track is produced anew on `session` (a new
   * producer id). `seq` still carries on: any increasing sequence will do.
   */
  async republish(session) {
    this.session = session;
    for (const layer of this.layers) layer.stop();
    this.layers = [];
    this.layered = false;
    this.layersWanted = null;
    this.captures.clear();
    this.producerId = null;
    this.sendingSince = null;
    await this.produce();
    this.suspended = false;
    if (!this.reading && this.track.readyState === 'live') this.readLoop();
    return this.producerId;
  }

  /**
   * Reads the track's frames until the sender stops. When `replaceTrack` gives it another
   * track (another camera was picked), the old reader is cancelled and the new track is read
   * from then on, into the same encoders and producer: its first frame is encoded as a
   * keyframe (consumers see the new camera at once, without a gap to decode across), and its
   * timestamps are moved on, if need be, to follow the old track's (the encoders and the
   * frame schedule expect them to grow). A track that ends without being replaced ends the
   * loop; `replaceTrack` starts it again.
   */
  async readLoop() {
    if (this.reading) return;
    this.reading = true;
    const interval = 1e6 / this.settings.fps;
    try {
      while (!this.stopped) {
        const track = this.track;
        let reader = videoFrameReader(track, this.settings.fps);
        if (this.minFps > 0) reader = repeatingReader(reader, 1000 / this.minFps);
        this.reader = reader;
        let first = true;
        for (;;) {
          let result;
          try {
            result = await reader.read();
          } catch {
            break;
          }
          if (result.done) break;
          let frame = result.value;
          if (this.stopped || this.track !== track) {
            frame.close(); // replaced meanwhile
            break;
          }
          if (first) {
            first = false;
            if (this.trackChanges > this.trackChangesSeen) {
              this.trackChangesSeen = this.trackChanges;
              this.tsOffset = frame.timestamp > this.lastTimestamp ? 0 : this.lastTimestamp + interval - frame.timestamp;
              this.nextFrameDue = -Infinity;
              this.requestKeyframe(); // the new camera's first frame: a keyframe in every layer
            }
          }
          if (frame.format === null) {
            frame = this.convertFrame(frame, frame.timestamp + this.tsOffset);
          } else if (this.tsOffset) {
            const moved = new VideoFrame(frame, { timestamp: frame.timestamp + this.tsOffset });
            frame.close();
            frame = moved;
          }
          this.lastTimestamp = Math.max(this.lastTimestamp, frame.timestamp);
          try {
            this.captured(frame, interval);
          } finally {
            frame.close();
          }
        }
        if (this.track === track) break; // ended, not replaced
      }
    } finally {
      this.reading = false;
    }
  }

  /**
   * A frame in a pixel format the encoders cannot take (`format` null: e.g. the 16-bit grey
   * of a depth camera, as Chromium's second fake camera delivers) drawn into an RGB frame.
   * Closes `frame`.
   */
  convertFrame(frame, timestamp) {
    const w = frame.displayWidth;
    const h = frame.displayHeight;
    if (!this.convertCanvas || this.convertCanvas.width !== w || this.convertCanvas.height !== h) {
      this.convertCanvas = new OffscreenCanvas(w, h);
      this.convertContext = this.convertCanvas.getContext('2d');
    }
    try {
      this.convertContext.drawImage(frame, 0, 0, w, h);
    } finally {
      frame.close();
    }
    return new VideoFrame(this.convertCanvas, { timestamp });
  }

  /**
   * Sends another camera's track from now on, with the same encoders and producer (the
   * person picked another camera). The caller stops the old track afterwards.
   */
  replaceTrack(track) {
    if (this.stopped || track === this.track) return;
    this.track = track;
    this.trackChanges++;
    const old = this.reader;
    if (this.reading) old?.cancel().catch(() => {});
    else if (this.producerId) this.readLoop(); // the old track had ended: start again
  }

  /** One camera frame: encoded in every layer that runs, or skipped. */
  captured(frame, interval) {
    if (this.suspended) return; // reconnecting: nothing can be sent
    if (!this.paused) for (const layer of this.layers) layer.checkBacklog(); // at the camera's rate
    // Keep to the configured frame rate (the camera may deliver more), and skip frames
    // while an encoder is behind or the camera is off. All running layers encode the same
    // frames, so that a layer skips a seq only where it waits for a keyframe anyway.
    const ts = frame.timestamp;
    const due = ts >= this.nextFrameDue - interval / 4; // camera timestamps jitter a little
    const running = this.layers.filter((l) => l.running);
    if (this.paused || !due || running.length === 0 || running.some((l) => l.encoder.encodeQueueSize > 2)) return;
    // Keep the schedule's phase; start it over after falling behind by a whole interval.
    const next = this.nextFrameDue + interval;
    this.nextFrameDue = next > ts ? next : ts + interval;
    let encoded = false;
    for (const layer of running) encoded = layer.encode(frame, ts) || encoded;
    if (!encoded) return;
    this.sendingSince ??= performance.now();
    this.clock.record(ts);
    if (this.layered) {
      this.captures.set(ts, { seq: this.seq++, captureUs: this.clock.captureUs(ts) });
      if (this.captures.size > MAX_PENDING_CAPTURES) this.captures.delete(this.captures.keys().next().value);
    }
  }

  /** Whether a running layer below `layer` has a send backlog over the bound. */
  lowerLayerLate(layer) {
    if (layer.index === null) return false;
    return this.layers.some(
      (l) => l.index < layer.index && l.running && l.queue.backlogMs > this.maxSendDelayMs,
    );
  }

  /** The seq and capture time of an encoder output; null if it cannot be told (then it is dropped). */
  frameInfo(timestamp) {
    if (!this.layered) return { seq: this.seq++, captureUs: this.clock.captureUs(timestamp) };
    return this.captures.get(timestamp) ?? null;
  }

  /** A frame of some layer was delivered: counted once per captured frame. */
  delivered(seq, bytes) {
    this.stats.bytes += bytes;
    const now = performance.now();
    this.deliveries.push({ at: now, bytes });
    while (now - this.deliveries[0].at > SEND_RATE_WINDOW_MS) this.deliveries.shift();
    if (seq > this.lastCountedSeq) {
      this.lastCountedSeq = seq;
      this.stats.frames++;
    }
  }

  /**
   * The video this page's streams delivered over the last SEND_RATE_WINDOW_MS, in bit/s
   * (every layer: they share the uplink); null until it has been sending that long.
   */
  sentBps(now) {
    if (this.sendingSince === null || now - this.sendingSince < SEND_RATE_WINDOW_MS) return null;
    while (this.deliveries.length && now - this.deliveries[0].at > SEND_RATE_WINDOW_MS) this.deliveries.shift();
    const bytes = this.deliveries.reduce((n, d) => n + d.bytes, 0);
    return (bytes * 8 * 1000) / SEND_RATE_WINDOW_MS;
  }

  /** What the running layers below `layer` aim at (bit/s): they go first on the uplink. */
  lowerTargetsBps(layer) {
    if (layer.index === null) return 0;
    return this.layers
      .filter((l) => l.index < layer.index && l.running)
      .reduce((n, l) => n + l.rate.targetBps, 0);
  }

  /** What the running encoders aim at together (bit/s). */
  get targetBitrate() {
    return this.layers.filter((l) => l.running).reduce((n, l) => n + l.rate.targetBps, 0);
  }

  /** Starts the maximum backlog over (a test observes a period of its choice). */
  resetMaxBacklog() {
    for (const layer of this.layers) {
      layer.maxBacklogMs = layer.queue.backlogMs;
      layer.maxBacklogContext = null;
    }
  }

  /**
   * The relay's round-trip time to this page: the network's part of every layer's backlog,
   * and the sign of a queue at the uplink.
   *
   * Why both. The send backlog (send-queue.js) is what waits in this browser; a browser
   * whose congestion controller fills the uplink's queue (Firefox does, to the 1 s of a
   * drop-tail queue) keeps that backlog short while every frame, and every audio datagram
   * behind it, waits a second in the network, and datagrams that find the queue full are
   * lost. Skipping frames cannot empty a queue already built; sending less can. So when
   * the round trip stays UPLINK_QUEUE_MS over its base, the video this page delivered is
   * shared out again from the lowest layer up, as the relay shares a consumer's estimate
   * out to layers: each encoder is cut to what is left for it, and a layer above the base
   * that would get less than the lowest bitrate stops for a while (the same wait as when
   * a lower layer is late). Nothing probes up while the queue is there.
   */
  setRelayRtt(ms) {
    for (const layer of this.layers) layer.queue.setRelayRtt(ms);
    if (!Number.isFinite(ms)) return;
    const now = performance.now();
    this.rttAt = now;
    this.rtts.push({ at: now, ms });
    while (now - this.rtts[0].at > RTT_BASE_WINDOW_MS) this.rtts.shift();
    const base = Math.min(...this.rtts.map((r) => r.ms));
    this.uplinkQueueMs = ms - base;
    if (!this.uplinkQueued || this.paused || this.suspended || this.stopped) {
      this.queuedReports = 0;
      return;
    }
    if (++this.queuedReports < UPLINK_QUEUE_REPORTS) return;
    this.queuedReports = 0;
    const sent = this.sentBps(now);
    if (sent === null) return;
    const sending = this.layers.filter((l) => l.running && !l.yielding(now)).sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
    if (sending.length === 0) return;
    this.uplinkQueueCuts++;
    let left = videoShareBps(sent);
    for (const [i, layer] of sending.entries()) {
      if (i > 0 && left < MIN_VIDEO_BITRATE) {
        layer.yieldToLower(now, { forQueue: true });
        continue;
      }
      if (layer.rate.cutTo(now, left) !== null) layer.applyBitrate();
      left -= layer.rate.targetBps;
    }
  }

  /**
   * The relay's round trip to this page shows a queue at the uplink. Only while its reports
   * come: without them (a relay that stopped sending them) nothing is held back for it.
   */
  get uplinkQueued() {
    return this.uplinkQueueMs > UPLINK_QUEUE_MS && performance.now() - this.rttAt < UPLINK_QUEUE_FRESH_MS;
  }

  /** The relay wants a keyframe: of one layer, or (`layer` absent) of every layer. */
  requestKeyframe(layer = null) {
    for (const l of this.layers) if (layer === null || layer === undefined || l.index === layer) l.forceKey = true;
  }

  /** The layers some consumer needs (layers_wanted): the others stop encoding until wanted. */
  setWantedLayers(indexes) {
    if (!this.layered || !Array.isArray(indexes)) return;
    this.layersWanted = [...indexes];
    for (const layer of this.layers) layer.setWanted(indexes.includes(layer.index));
  }

  /** Camera off/on. While paused nothing is sent, and the open groups are finished. */
  setPaused(paused) {
    this.paused = paused;
    this.sendingSince = null; // a pause is not a slow uplink
    for (const layer of this.layers) {
      if (paused) layer.queue.finishGroup();
      else layer.dropUntilKeyframe();
    }
  }

  /** Plain data for window.synapse.state(). */
  layerSnapshot() {
    return this.layers.map((l) => ({
      layer: l.index,
      width: l.width,
      height: l.height,
      bitrate: l.bitrate, // configured: the most the encoder is given
      targetBitrate: l.rate.targetBps, // what it is given now (encoder-rate.js)
      lowestTargetBitrate: l.rate.lowestBps,
      bitrateCuts: l.rate.cuts,
      wanted: l.wanted,
      running: l.running,
      encoder: l.encoder?.state ?? null,
      framesEncoded: l.framesEncoded,
      keyframes: l.keyframes,
      framesSent: l.stats.frames,
      backlogMs: l.queue.backlogMs,
      maxBacklogMs: l.maxBacklogMs,
      maxBacklogContext: l.maxBacklogContext,
      skippedFrames: l.skippedFrames,
      yields: l.yields, // times it gave way to a lower layer on a congested uplink
      firstFrameAfterSwitch: l.firstFrameAfterSwitch, // of the last camera switch
    }));
  }

  stop() {
    this.stopped = true;
    this.reader?.cancel().catch(() => {});
    for (const layer of this.layers) layer.stop();
  }

  /**
   * Stops, and resolves once what was written has been delivered to the relay (or after
   * `timeoutMs`): frames that arrive after `close_producer` are refused.
   */
  async finish(timeoutMs = 1000) {
    const pending = this.layers.flatMap((l) => l.queue.groups.flatMap((g) => g.segments.map((s) => s.delivered)));
    this.stop();
    let timer;
    await Promise.race([Promise.all(pending), new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
  }
}

/**
 * One encoding of the camera: its encoder, keyframe schedule and streams with their send
 * backlog. `index` is the layer index on the wire (null for a producer without layers).
 */
class VideoLayer {
  constructor(sender, index, { width, height, bitrate }) {
    this.sender = sender;
    this.index = index;
    this.width = width;
    this.height = height;
    this.bitrate = bitrate;
    this.config = { ...sender.choice.config, width, height, bitrate };
    this.stats = new TrackStats();
    this.wanted = true; // until the relay's first layers_wanted, every layer is sent
    this.failed = false; // the encoder kept failing
    this.forceKey = true; // consumers cannot start before a keyframe
    this.lastKeyTimestamp = -Infinity;
    this.framesEncoded = 0;
    this.keyframes = 0;
    this.trackChangesSeen = sender.trackChangesSeen; // camera switches this layer has encoded
    this.firstFrameAfterSwitch = null; // 'key' or 'delta': how the last switch began
    const maxSendDelayMs = sender.maxSendDelayMs;
    this.queue = new SendQueue({
      openStream: () => sender.session.openVideoStream(sender.producerId, index),
      clock: () => performance.now(),
      // The backlog is known to within a segment: a fifth of the bound is precise enough
      // and keeps the streams to about ten a second.
      segmentMs: Math.max(40, maxSendDelayMs / 5),
      onWriteError: (e) => this.onWriteError(e),
    });
    this.waitingForKey = false; // frames were dropped; send nothing until a keyframe
    this.keyWhenDrained = false; // ask for that keyframe once the backlog is under the bound
    this.lastKeyframeReset = false; // the last late keyframe was reset (not kept)
    this.keptGroup = null; // the group whose late keyframe is let through
    this.lastCheckAt = -Infinity;
    this.skippedFrames = 0; // captured or encoded but not sent: late, or waiting for a keyframe
    this.abandonedGroups = 0; // streams reset because their frames were late
    this.maxBacklogMs = 0;
    this.maxBacklogContext = null;
    this.yieldUntil = -Infinity; // gives way to a lower layer until then
    this.yieldForQueue = false; // and, if a queue at the uplink made it, until that is gone
    this.yieldBackoffMs = 0;
    this.yields = 0;
    this.restarts = 0;
    this.rate = new EncoderRate(bitrate); // the encoder's bitrate, following the uplink
    this.createEncoder();
  }

  /** Encoding: wanted by the relay, and with a working encoder. */
  get running() {
    return this.wanted && !this.failed && this.encoder?.state === 'configured';
  }

  createEncoder() {
    this.encoder = new VideoEncoder({
      output: (chunk) => this.onChunk(chunk),
      error: (e) => this.onEncoderError(e),
    });
    this.encoder.configure(this.encoderConfig());
  }

  encoderConfig() {
    return { ...this.config, bitrate: this.rate.targetBps };
  }

  /** Gives the encoder the bitrate `rate` now aims at (a closed one gets it when restarted). */
  applyBitrate() {
    if (this.encoder?.state !== 'configured') return;
    try {
      this.encoder.configure(this.encoderConfig());
    } catch (e) {
      console.warn(`cannot set the video bitrate${this.index === null ? '' : ` (layer ${this.index})`}:`, e);
    }
  }

  /** Video of this layer was skipped at `now`: the uplink could not carry it. */
  uplinkSkip(now) {
    const sender = this.sender;
    if (this.rate.onSkip(now, sender.sentBps(now), sender.lowerTargetsBps(this)) !== null) this.applyBitrate();
  }

  /** Encodes one captured frame (the encoder scales it); false if the layer skips it. */
  encode(frame, ts) {
    if (this.yielding(performance.now())) {
      this.skippedFrames++; // giving way to a lower layer: not even a requested keyframe
      return false;
    }
    // 2 s without a skip, and no queue at the uplink: probe up.
    if (!this.sender.uplinkQueued && this.rate.onFrame(performance.now()) !== null) this.applyBitrate();
    const keyFrame = this.forceKey || ts - this.lastKeyTimestamp >= KEYFRAME_INTERVAL_US;
    if (this.waitingForKey && !keyFrame) {
      // It would be dropped anyway: do not spend the encoder on it.
      this.skippedFrames++;
      return false;
    }
    if (keyFrame) {
      this.forceKey = false;
      this.lastKeyTimestamp = ts;
    }
    if (this.trackChangesSeen !== this.sender.trackChangesSeen) {
      // The first frame of another camera (test hook: it must be a keyframe).
      this.trackChangesSeen = this.sender.trackChangesSeen;
      this.firstFrameAfterSwitch = keyFrame ? 'key' : 'delta';
    }
    this.encoder.encode(frame, { keyFrame });
    this.framesEncoded++;
    return true;
  }

  /** The relay wants this layer (again), or no consumer needs it now. */
  setWanted(wanted) {
    if (wanted === this.wanted) return;
    this.wanted = wanted;
    if (wanted) this.dropUntilKeyframe(); // it restarts with a keyframe
    else this.queue.finishGroup(); // what was written still goes out
  }

  /** Measures the backlog (once per camera frame) and gives up what is late. */
  checkBacklog() {
    const queue = this.queue;
    // After a pause of the page (a busy machine) acknowledgements that arrived meanwhile
    // may not have been handled yet: decide at the next frame rather than on stale news.
    const now = performance.now();
    const late = now - this.lastCheckAt > LATE_CHECK_MS;
    this.lastCheckAt = now;
    if (late) return;
    const backlog = queue.update();
    if (backlog > this.maxBacklogMs) {
      // What the worst moment looked like, for whoever reads a test's log.
      this.maxBacklogMs = backlog;
      this.maxBacklogContext = {
        networkMs: Math.round(queue.networkMs),
        keyframeGoingOut: queue.keyframeGoingOut,
        keptKeyframe: queue.current !== null && queue.current === this.keptGroup,
        targetBitrate: this.rate.targetBps,
      };
    }
    // Layers share the uplink, and a lower layer goes first: it is the one every consumer
    // can fall back to (the relay forwards the highest layer that is sending). While a
    // lower layer is late, this one gives up everything it has not delivered, keyframe
    // included, and waits; an uplink that cannot carry it with the layers below never gets
    // more than a short try of it, from 0.5 s to 8 s apart.
    if (this.sender.lowerLayerLate(this)) {
      this.yieldToLower(now);
      return;
    }
    if (this.yielding(now)) return;
    if (backlog > this.sender.maxSendDelayMs) {
      this.uplinkSkip(now);
      // A late keyframe is reset too and a fresh one sent (it may be waiting for a lost
      // packet), but never two in a row: a keyframe too large to cross the uplink within
      // the bound would be followed by one as large, and nothing would ever get through.
      let resetKeyframe = false;
      if (queue.keyframeGoingOut && queue.current !== this.keptGroup) {
        resetKeyframe = !this.lastKeyframeReset;
        this.lastKeyframeReset = resetKeyframe;
        if (!resetKeyframe) this.keptGroup = queue.current; // until it is delivered
      }
      const cut = queue.abandon({ all: resetKeyframe });
      this.abandonedGroups += cut.groups;
      this.skippedFrames += cut.frames;
      if (queue.keyframeGoingOut) {
        this.waitingForKey = true;
        this.keyWhenDrained = true;
      } else if (!queue.current) {
        this.dropUntilKeyframe();
      }
      // Otherwise only finished groups were late, and the open one goes on.
    } else if (this.keyWhenDrained) {
      this.keyWhenDrained = false;
      this.forceKey = true;
    }
  }

  /**
   * Giving way to the layers below: for the wait, and after a queue at the uplink made it
   * give way (`forQueue`), until that queue is gone too.
   */
  yielding(now) {
    if (now < this.yieldUntil) return true;
    if (this.yieldForQueue && this.sender.uplinkQueued) return true;
    this.yieldForQueue = false;
    return false;
  }

  yieldToLower(now, { forQueue = false } = {}) {
    const waiting = this.yielding(now);
    if (forQueue) this.yieldForQueue = true;
    this.uplinkSkip(now); // with the layers below, the uplink cannot carry this one
    const cut = this.queue.abandon({ all: true });
    this.abandonedGroups += cut.groups;
    this.skippedFrames += cut.frames;
    if (!waiting) {
      // Not already waiting: the first time, or a try that failed.
      this.yieldBackoffMs = this.yieldBackoffMs ? Math.min(YIELD_MAX_MS, this.yieldBackoffMs * 2) : YIELD_MIN_MS;
      this.yields++;
    }
    this.yieldUntil = now + this.yieldBackoffMs;
    this.waitingForKey = true;
    this.keyWhenDrained = true; // once the wait is over and the backlog is under the bound
  }

  onChunk(chunk) {
    const sender = this.sender;
    if (sender.stopped || sender.paused || sender.suspended || !this.wanted) return;
    const key = chunk.type === 'key';
    if (this.yielding(performance.now()) || (!key && (this.waitingForKey || !this.queue.current))) {
      this.skippedFrames++;
      return;
    }
    const data = new Uint8Array(chunk.byteLength);
    chunk.copyTo(data);
    const info = data.byteLength > sender.session.maxFrameSize ? null : sender.frameInfo(chunk.timestamp);
    if (!info) {
      // Too large for the relay, or (layered) an output whose captured frame is forgotten.
      this.skippedFrames++;
      this.dropUntilKeyframe();
      return;
    }
    if (key) {
      this.waitingForKey = false;
      this.keyWhenDrained = false;
      this.keyframes++;
      this.queue.startGroup(); // finishes the previous group's stream
    }
    const frame = encodeStreamFrame(info.seq, info.captureUs, key, data);
    this.queue.write(frame)?.then((delivered) => {
      if (!delivered) return;
      if (key) this.yieldBackoffMs = 0; // the uplink carried this layer's keyframe
      this.stats.frames++;
      this.stats.bytes += data.byteLength;
      sender.delivered(info.seq, data.byteLength);
    });
  }

  /** The relay stopped the stream (it refused a frame), or the session is gone. */
  onWriteError(e) {
    if (this.sender.session.ended || this.sender.stopped || this.sender.suspended) return;
    console.warn(`video stream write failed${this.index === null ? '' : ` (layer ${this.index})`}:`, e);
    this.dropUntilKeyframe();
  }

  dropUntilKeyframe() {
    this.waitingForKey = true;
    this.forceKey = true;
  }

  onEncoderError(e) {
    console.error(`video encoder error${this.index === null ? '' : ` (layer ${this.index})`}:`, e);
    if (this.sender.stopped || this.failed) return;
    if (++this.restarts > 5) {
      this.failed = true; // an encoder that keeps failing is not retried for ever
      this.queue.finishGroup();
      return;
    }
    // Start over with a fresh encoder; the next frame is a keyframe on a new stream.
    try {
      this.createEncoder();
    } catch (err) {
      console.error('cannot restart the video encoder:', err);
    }
    this.queue.finishGroup();
    this.dropUntilKeyframe();
  }

  stop() {
    this.queue.close();
    if (this.encoder && this.encoder.state !== 'closed') this.encoder.close();
  }
}

/**
 * Microphone → AudioEncoder (Opus, 20 ms frames) → one datagram per frame. `audioContext`
 * is the page's (AudioOutput's): without MediaStreamTrackProcessor the microphone is read
 * through it.
 *
 * Each frame's level (docs/PROTOCOL.md section 15.2) is measured from the PCM handed to
 * the encoder, whichever capture path delivered it, and sent in the datagram when
 * `sendLevel` (the relay lists `audio_level`). The encoder takes buffers of any length and
 * cuts 20 ms frames from them, so the energy of what went in waits in a queue of sample
 * runs, and each encoded frame takes its duration's worth of samples from the front.
 */
export class AudioSender {
  constructor({ session, track, audioContext, sendLevel = false }) {
    this.session = session;
    this.track = track;
    this.audioContext = audioContext;
    this.sendLevel = sendLevel;
    this.energy = []; // { frames, sumSquares } of the PCM given to the encoder, oldest first
    this.levels = new RecentLevels(); // of the frames sent (0 loudest to 127 silence)
    this.stats = new TrackStats();
    this.clock = new CaptureClock();
    this.producerId = null;
    this.paused = false;
    this.stopped = false;
    this.seq = 0;
    this.tooLarge = 0;
    this.restarts = 0;
    this.reading = false; // readLoop runs
    this.trackChanges = 0; // replaceTrack calls
    this.trackChangesSeen = 0; // of them, those whose track has delivered audio
  }

  /** Produces once the first microphone buffer shows its sample rate and channels. */
  async start() {
    this.reader = audioDataReader(this.track, this.audioContext);
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
    await this.produce();
    this.createEncoder();
    this.encode(first.clone());
  }

  async produce() {
    const { sampleRate, numberOfChannels } = this.config;
    const { producer_id } = await this.session.request('produce', {
      kind: 'audio',
      codec: 'opus',
      params: { sampleRate, numberOfChannels },
    });
    this.producerId = producer_id;
  }

  /** The session is gone: nothing is sent until `resumeOn` or `republish`. */
  suspend() {
    this.suspended = true;
  }

  /** Goes on in a resumed place: the same producer, `seq` carrying on. */
  resumeOn(session) {
    this.session = session;
    this.suspended = false;
  }

  /** The place could not be resumed: the microphone is produced anew (a new producer id). */
  async republish(session) {
    this.session = session;
    this.producerId = null;
    await this.produce();
    this.suspended = false;
    return this.producerId;
  }

  createEncoder() {
    this.energy = []; // a new encoder starts with nothing of the old one's input
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
      this.measure(data);
      this.encoder.encode(data);
    }
    data.close();
  }

  /** Remembers the energy of a buffer the encoder is given (every channel's samples). */
  measure(data) {
    const frames = data.numberOfFrames;
    let sumSquares = 0;
    try {
      const plane = (this.plane = this.plane?.length >= frames ? this.plane : new Float32Array(frames));
      for (let c = 0; c < data.numberOfChannels; c++) {
        data.copyTo(plane, { planeIndex: c, format: 'f32-planar' });
        for (let i = 0; i < frames; i++) sumSquares += plane[i] * plane[i];
      }
      sumSquares /= data.numberOfChannels;
    } catch {
      sumSquares = 0; // a format this browser cannot convert: reported as silence
    }
    this.energy.push({ frames, sumSquares });
    // The encoder holds little back; a long queue means outputs were lost (a reset).
    let queued = 0;
    for (const e of this.energy) queued += e.frames;
    while (this.energy.length > 1 && queued - this.energy[0].frames > data.sampleRate) queued -= this.energy.shift().frames;
  }

  /** The level of an encoded frame of `durationUs`: that many samples off the energy queue. */
  takeLevel(durationUs) {
    let want = Math.round(((durationUs || 20_000) / 1e6) * this.config.sampleRate);
    let frames = 0;
    let sumSquares = 0;
    while (want > 0 && this.energy.length) {
      const run = this.energy[0];
      const n = Math.min(want, run.frames);
      const share = n / run.frames;
      sumSquares += run.sumSquares * share;
      frames += n;
      want -= n;
      run.sumSquares -= run.sumSquares * share;
      run.frames -= n;
      if (run.frames === 0) this.energy.shift();
    }
    return audioLevel(sumSquares, frames);
  }

  /**
   * Reads the microphone until the sender stops. When `replaceTrack` gives it another
   * track (another microphone was picked), the old capture is cancelled and the new one
   * opened (a MediaStreamTrackProcessor, or a worklet in the page's audio context), into
   * the same producer: the encoder starts over (configured for the new microphone's sample
   * rate and channels, if they differ), so that no audio of the old one is bridged into
   * the new. A track that ends without being replaced ends the loop; `replaceTrack` starts
   * it again.
   */
  async readLoop() {
    if (this.reading) return;
    this.reading = true;
    try {
      let track = this.track;
      let reader = this.reader;
      while (!this.stopped) {
        let first = true;
        for (;;) {
          let result;
          try {
            result = await reader.read();
          } catch {
            break;
          }
          if (result.done) break;
          const data = result.value;
          if (this.stopped || this.track !== track) {
            data.close(); // replaced meanwhile
            break;
          }
          if (first) {
            first = false;
            if (this.trackChanges > this.trackChangesSeen) {
              this.trackChangesSeen = this.trackChanges;
              this.restartEncoder(data);
            }
          }
          this.encode(data);
        }
        if (this.stopped || this.track === track) break; // ended, not replaced
        track = this.track;
        reader = this.reader = audioDataReader(track, this.audioContext);
      }
    } finally {
      this.reading = false;
    }
  }

  /** The first buffer of another microphone: a fresh encoder, for its rate and channels. */
  restartEncoder(data) {
    const { sampleRate, numberOfChannels } = data;
    this.config = { ...this.config, sampleRate, numberOfChannels };
    this.clock = new CaptureClock(); // the new track's timestamps may start anywhere
    this.energy = [];
    try {
      if (this.encoder.state === 'closed') {
        this.restarts = 0;
        this.createEncoder();
      } else {
        this.encoder.reset();
        this.encoder.configure(this.config);
      }
    } catch (e) {
      console.error('cannot set up the audio encoder for the new microphone:', e);
    }
  }

  /**
   * Sends another microphone's track from now on, into the same producer (the person
   * picked another microphone). The caller stops the old track afterwards.
   */
  replaceTrack(track) {
    if (this.stopped || track === this.track) return;
    this.track = track;
    this.trackChanges++;
    if (this.reading) {
      this.reader?.cancel().catch(() => {});
    } else if (this.producerId) {
      // The old track had ended: read the new one.
      this.reader = audioDataReader(track, this.audioContext);
      this.readLoop();
    }
  }

  onChunk(chunk) {
    if (this.stopped || this.paused || this.suspended) return;
    const payload = new Uint8Array(chunk.byteLength);
    chunk.copyTo(payload);
    const measured = this.takeLevel(chunk.duration);
    this.levels.add(measured);
    const level = this.sendLevel ? measured : null;
    const datagram = encodeDatagram(this.producerId, this.seq++, this.clock.captureUs(chunk.timestamp), payload, level);
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
      this.energy = [];
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
 *
 * Of a producer with layers (simulcast) the relay forwards one layer at a time and says
 * which (`layer_changed`); a switch starts with a keyframe of the new layer, at which the
 * decoder takes the new size. Such a layer may skip a seq that another layer used (its
 * encoder skipped a captured frame), so a gap between two frames of one stream is not a
 * loss there: the relay ends a stream when it drops frames, and the next one starts with
 * a keyframe.
 */
export class VideoReceiver {
  constructor({ consumer, canvas, requestKeyframe, onDecoded }) {
    this.consumerId = consumer.consumer_id;
    this.producer = consumer.producer;
    this.layers = Array.isArray(consumer.producer.layers) ? consumer.producer.layers : [];
    this.layer = null; // the layer the relay forwards, from layer_changed
    this.layerSize = null; // { width, height } of that layer
    this.layerChanges = 0;
    this.reconfigureAtKey = false;
    this.decodedWidth = null;
    this.decodedHeight = null;
    this.lastStream = null;
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

  decoderConfig() {
    const params = this.producer.params ?? {};
    const config = { codec: this.producer.codec, optimizeForLatency: true };
    if (params.codedWidth && params.codedHeight) {
      config.codedWidth = params.codedWidth;
      config.codedHeight = params.codedHeight;
    }
    if (typeof params.description === 'string') config.description = base64ToBytes(params.description);
    return config;
  }

  createDecoder() {
    this.decoder = new VideoDecoder({
      output: (frame) => this.render(frame),
      error: (e) => this.onDecoderError(e),
    });
    try {
      this.decoder.configure(this.decoderConfig());
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
      const skippedByLayer = this.layers.length > 0 && f.stream !== undefined && f.stream === this.lastStream;
      if (!skippedByLayer) {
        this.stats.lost += f.seq - this.lastSeq - 1;
        if (this.waitingSince === null) this.waitingSince = performance.now();
      }
    }
    this.lastSeq = f.seq;
    this.lastStream = f.stream;
    if (this.waitingSince !== null) {
      if (!f.keyframe) {
        this.maybeRequestKeyframe();
        return;
      }
      this.waitingSince = null;
    }
    if (f.keyframe && this.reconfigureAtKey) {
      // A decoder that does not follow a change of size by itself (H.264 may not) starts
      // over at the new layer's first keyframe.
      this.reconfigureAtKey = false;
      if (this.decoder.state === 'configured') {
        this.decoder.reset();
        this.decoder.configure(this.decoderConfig());
      }
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

  /** The relay now forwards another layer (layer_changed); its first frame is a keyframe. */
  layerChanged({ layer, width, height }) {
    this.layer = Number.isInteger(layer) ? layer : null;
    this.layerSize = width > 0 && height > 0 ? { width, height } : null;
    this.layerChanges++;
    // VP8, VP9 and AV1 decoders take a new size at a keyframe; H.264 is started over.
    if (this.producer.codec.startsWith('avc')) this.reconfigureAtKey = true;
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
    this.decodedWidth = w;
    this.decodedHeight = h;
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
  /**
   * Creates the context. Called from the Join click itself (before anything is awaited), so
   * that a browser that keeps audio suspended until a user gesture (Firefox) lets it run.
   */
  open() {
    // 48 kHz matches Opus, so decoded audio needs no resampling.
    this.ctx ??= new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
    this.ctx.resume().catch(() => {});
  }

  /** Loads the worklets (playout, and microphone capture where it is needed). */
  async start() {
    this.open();
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
    this.levels = new RecentLevels(); // the level bytes received, if the sender sends them
    this.player = output.createPlayer((status) => {
      // A status can still arrive after the output closed (leaving): nothing to measure then.
      const ctx = output.ctx;
      if (ctx) this.playoutMs = (status.buffered / ctx.sampleRate) * 1000;
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
    if (f.level !== null && f.level !== undefined) this.levels.add(f.level); // the sender's level byte (15.2)
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
    // The relay forwards an empty payload as it came; it is no Opus packet, and a decoder
    // given one may close for good. Treat it as a lost packet.
    if (f.payload.byteLength === 0) return;
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
