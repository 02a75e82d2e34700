// The check before joining: on the join screen, *Check camera and microphone* opens them,
// shows the camera, lists the devices in the same pickers as the call's (devices.js), and
// shows how loud the microphone is. Joining then sends these very devices (the tracks are
// handed to the call). Without the check, Join opens the default devices as before.
//
// Test hooks: `#preview-start`, `#preview-video`, `#preview-camera-select`,
// `#preview-mic-select`, `#preview-error`, and `#mic-meter` with `data-level` (the
// microphone's level in dBFS, rounded; -100 for silence), updated about 10 times a second.

import { DevicePickers } from './devices.js';
import { openCapture, openDevice } from './media.js';

const $ = (id) => document.getElementById(id);

// The meter spans -60 dBFS (empty) to 0 dBFS (full).
const METER_FLOOR_DB = -60;

export class PreJoin {
  /**
   * `settings` are the camera's (width, height, fps); `errorText(e)` words a getUserMedia
   * failure for people.
   */
  constructor({ settings, errorText }) {
    this.settings = settings;
    this.errorText = errorText;
    this.stream = null;
    this.pickers = null;
    this.level = -100;
    this.opening = false;
    $('preview-start').addEventListener('click', () => this.open());
  }

  /** Whether the devices are open (Join will use them). */
  get active() {
    return this.stream !== null;
  }

  async open() {
    if (this.stream || this.opening) return;
    this.opening = true;
    $('preview-start').disabled = true;
    this.setError('');
    try {
      const { stream, missing } = await openCapture(this.settings);
      this.stream = stream;
      this.missing = missing;
    } catch (e) {
      console.warn('preview:', e);
      this.setError(this.errorText(e));
      $('preview-start').disabled = false;
      return;
    } finally {
      this.opening = false;
    }
    $('preview').hidden = false;
    $('preview-start').hidden = true;
    this.showVideo();
    this.startMeter();
    this.pickers = new DevicePickers({
      root: $('preview-devices'),
      selects: { video: $('preview-camera-select'), audio: $('preview-mic-select') },
      error: $('preview-error'),
      onPick: (kind, deviceId) => this.switchDevice(kind, deviceId),
      current: (kind) => this.deviceInUse(kind),
    });
    this.pickers.show(true);
    await this.pickers.refresh();
    if (this.missing.length) this.setError(`No ${this.missing.join(' or ')} found.`);
  }

  showVideo() {
    const video = $('preview-video');
    video.srcObject = new MediaStream(this.stream.getVideoTracks());
    video.play().catch(() => {}); // muted: no gesture needed
  }

  deviceInUse(kind) {
    const [track] = kind === 'video' ? this.stream?.getVideoTracks() ?? [] : this.stream?.getAudioTracks() ?? [];
    return track?.readyState === 'live' ? (track.getSettings().deviceId ?? null) : null;
  }

  /** Another device picked: opened, and the old one stopped (tried again without it if busy). */
  async switchDevice(kind, deviceId) {
    const what = kind === 'video' ? 'camera' : 'microphone';
    const [old] = kind === 'video' ? this.stream.getVideoTracks() : this.stream.getAudioTracks();
    let track;
    try {
      track = await openDevice(kind, this.settings, deviceId);
    } catch (e) {
      if (!old || (e?.name !== 'NotReadableError' && e?.name !== 'AbortError')) throw readable(what, e);
      old.stop(); // perhaps busy with the old one
      try {
        track = await openDevice(kind, this.settings, deviceId);
      } catch (e2) {
        throw readable(what, e2);
      }
    }
    if (!this.stream) {
      track.stop(); // joined or closed meanwhile
      return;
    }
    if (old) {
      this.stream.removeTrack(old);
      old.stop();
    }
    this.stream.addTrack(track);
    if (kind === 'video') this.showVideo();
    else this.startMeter();
  }

  /** The microphone's level, from an analyser in an audio context of its own. */
  startMeter() {
    this.stopMeter();
    const [track] = this.stream.getAudioTracks();
    const meter = $('mic-meter');
    if (!track) {
      meter.dataset.level = '-100';
      return;
    }
    try {
      this.ctx = new AudioContext();
      this.ctx.resume().catch(() => {});
      const source = this.ctx.createMediaStreamSource(new MediaStream([track]));
      const analyser = this.ctx.createAnalyser();
      analyser.fftSize = 1024;
      source.connect(analyser);
      const samples = new Float32Array(analyser.fftSize);
      this.meterTimer = setInterval(() => {
        analyser.getFloatTimeDomainData(samples);
        let sum = 0;
        for (const x of samples) sum += x * x;
        const rms = Math.sqrt(sum / samples.length);
        const db = rms > 0 ? Math.max(-100, 20 * Math.log10(rms)) : -100;
        this.level = Math.round(db);
        meter.dataset.level = String(this.level);
        const fill = Math.min(1, Math.max(0, (db - METER_FLOOR_DB) / -METER_FLOOR_DB));
        meter.firstElementChild.style.width = `${Math.round(fill * 100)}%`;
      }, 100);
    } catch (e) {
      console.warn('microphone meter:', e);
    }
  }

  stopMeter() {
    clearInterval(this.meterTimer);
    this.meterTimer = null;
    this.ctx?.close().catch(() => {});
    this.ctx = null;
  }

  /**
   * Hands the open devices over to the call (they are no longer the preview's): resolves
   * to `{ stream, missing }` as openCapture does, or null if nothing was opened.
   */
  take() {
    if (!this.stream) return null;
    const taken = { stream: this.stream, missing: this.missing ?? [] };
    this.stream = null;
    this.hide();
    return taken;
  }

  /** Back to the join screen without a call (the devices were taken, or stopped). */
  hide() {
    this.stopMeter();
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.pickers?.close();
    this.pickers = null;
    $('preview-video').srcObject = null;
    $('preview').hidden = true;
    $('preview-start').hidden = false;
    $('preview-start').disabled = false;
  }

  setError(text) {
    $('preview-error').textContent = text;
    $('preview-error').hidden = !text;
  }

  snapshot() {
    return {
      active: this.active,
      level: this.level,
      camera: this.deviceInUse('video'),
      microphone: this.deviceInUse('audio'),
      devices: this.pickers?.snapshot() ?? null,
    };
  }
}

function readable(what, cause) {
  const e = new Error(`That ${what} could not be started: another application may be using it, or it is gone. Pick another one.`, { cause });
  e.readable = true;
  return e;
}
