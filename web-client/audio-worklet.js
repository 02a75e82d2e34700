// Audio worklet processors, running on the audio rendering thread:
// - `jitter-player`: playout buffer for one remote audio track. The main thread posts
//   decoded mono Float32Array chunks (already in seq order); this plays them back at a
//   steady pace, absorbing network jitter with a small buffer.
// - `mic-capture`: the microphone's PCM for browsers without MediaStreamTrackProcessor
//   (media.js, audioDataReader): mono chunks of `chunkFrames` samples posted to the main
//   thread, which turns them into AudioData for the Opus encoder.

// Start (and restart after running dry) only once this much audio is buffered.
const TARGET_MS = 60;
// More than this buffered means we fell behind (e.g. the tab was throttled): skip ahead
// to the target rather than keep the extra delay for the rest of the call.
const MAX_MS = 250;
// A buffer that never drops below the target for this long holds more delay than the
// jitter needs (e.g. after a burst at the start): the excess is skipped.
const TRIM_WINDOW_MS = 1000;
const TRIM_SLACK_MS = 20;
// How often the buffer level is reported to the main thread, for the stats overlay.
const REPORT_EVERY_MS = 500;

class JitterPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunks = []; // queued Float32Arrays, oldest first
    this.offset = 0; // read position in chunks[0]
    this.buffered = 0; // samples queued, not yet played
    this.playing = false;
    this.stopped = false;
    this.target = Math.round((TARGET_MS / 1000) * sampleRate);
    this.max = Math.round((MAX_MS / 1000) * sampleRate);
    this.sinceReport = 0;
    this.underruns = 0;
    this.windowMin = Infinity; // lowest buffer level in the current trim window
    this.windowSamples = 0;
    this.trimWindow = Math.round((TRIM_WINDOW_MS / 1000) * sampleRate);
    this.trimSlack = Math.round((TRIM_SLACK_MS / 1000) * sampleRate);
    this.port.onmessage = (e) => {
      if (e.data === 'stop') {
        this.stopped = true;
        return;
      }
      this.chunks.push(e.data);
      this.buffered += e.data.length;
      if (this.buffered > this.max) this.skip(this.buffered - this.target);
    };
  }

  skip(samples) {
    while (samples > 0 && this.chunks.length) {
      const left = this.chunks[0].length - this.offset;
      const n = Math.min(left, samples);
      this.offset += n;
      this.buffered -= n;
      samples -= n;
      if (this.offset >= this.chunks[0].length) {
        this.chunks.shift();
        this.offset = 0;
      }
    }
  }

  trim(played) {
    if (!this.playing) {
      this.windowMin = Infinity;
      this.windowSamples = 0;
      return;
    }
    this.windowMin = Math.min(this.windowMin, this.buffered);
    this.windowSamples += played;
    if (this.windowSamples < this.trimWindow) return;
    if (this.windowMin > this.target + this.trimSlack) this.skip(this.windowMin - this.target);
    this.windowMin = Infinity;
    this.windowSamples = 0;
  }

  process(_inputs, outputs) {
    if (this.stopped) return false; // lets the node be garbage-collected
    const out = outputs[0][0];
    if (!this.playing && this.buffered >= this.target) this.playing = true;
    let i = 0;
    if (this.playing) {
      while (i < out.length && this.chunks.length) {
        const chunk = this.chunks[0];
        const n = Math.min(out.length - i, chunk.length - this.offset);
        out.set(chunk.subarray(this.offset, this.offset + n), i);
        i += n;
        this.offset += n;
        this.buffered -= n;
        if (this.offset >= chunk.length) {
          this.chunks.shift();
          this.offset = 0;
        }
      }
      if (i < out.length) {
        // Ran dry: play silence and build the buffer up again.
        this.playing = false;
        this.underruns++;
      }
    }
    out.fill(0, i);
    this.trim(out.length);
    this.sinceReport += out.length;
    if (this.sinceReport >= (REPORT_EVERY_MS / 1000) * sampleRate) {
      this.sinceReport = 0;
      this.port.postMessage({ buffered: this.buffered, underruns: this.underruns });
    }
    return true;
  }
}

registerProcessor('jitter-player', JitterPlayer);

class MicCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.chunkFrames = options.processorOptions?.chunkFrames ?? 960;
    this.chunk = new Float32Array(this.chunkFrames);
    this.filled = 0;
    this.stopped = false;
    this.port.onmessage = (e) => {
      if (e.data === 'stop') this.stopped = true;
    };
  }

  process(inputs) {
    if (this.stopped) return false;
    const input = inputs[0]?.[0]; // mono (channelCount 1); absent while nothing is connected
    if (!input) return true;
    let i = 0;
    while (i < input.length) {
      const n = Math.min(input.length - i, this.chunkFrames - this.filled);
      this.chunk.set(input.subarray(i, i + n), this.filled);
      this.filled += n;
      i += n;
      if (this.filled === this.chunkFrames) {
        this.port.postMessage(this.chunk, [this.chunk.buffer]);
        this.chunk = new Float32Array(this.chunkFrames);
        this.filled = 0;
      }
    }
    return true; // the output stays silent
  }
}

registerProcessor('mic-capture', MicCapture);
