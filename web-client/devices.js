// The camera and microphone pickers of the call screen: a select for each, listing what
// the browser lists (enumerateDevices: labels only once the page may use the devices, i.e.
// after the join's getUserMedia), kept up to date on `devicechange`. They only draw and
// report the person's pick; app.js (Call.switchDevice) opens the device and hands its track
// to the sender. The ids and data-* attributes are read by the browser tests: keep them.
//
// Test hooks: `#camera-select` and `#mic-select` (an option's value is its deviceId), each
// with `data-device-count`; `#devices-error` says what went wrong in a sentence.

import { listDevices } from './media.js';

function option(value, text) {
  const node = document.createElement('option');
  node.value = value;
  node.textContent = text;
  return node;
}

const KINDS = {
  video: { list: 'cameras', none: 'No camera found', off: 'No camera' },
  audio: { list: 'microphones', none: 'No microphone found', off: 'No microphone' },
};

export class DevicePickers {
  /**
   * `selects`: { video, audio } select elements; `error`: the line for failures;
   * `onPick(kind, deviceId)`: the person picked a device ('video' or 'audio'); it resolves
   * once the device is in use, and rejects with an Error whose message is a sentence for
   * people. `current(kind)` is the deviceId in use, or null.
   */
  constructor({ root, selects, error, onPick, current }) {
    Object.assign(this, { root, selects, error, onPick, current });
    this.devices = { cameras: [], microphones: [] };
    this.busy = false;
    this.listeners = [];
    for (const [kind, select] of Object.entries(selects)) {
      const onChange = () => this.pick(kind, select.value);
      select.addEventListener('change', onChange);
      this.listeners.push([select, 'change', onChange]);
    }
    // A camera or microphone plugged in or out: the lists follow.
    this.onDeviceChange = () => this.refresh();
    navigator.mediaDevices?.addEventListener?.('devicechange', this.onDeviceChange);
  }

  show(shown) {
    this.root.hidden = !shown;
  }

  /** Lists the devices again, each select showing the one in use. */
  async refresh() {
    this.devices = await listDevices();
    if (this.closed) return;
    for (const [kind, select] of Object.entries(this.selects)) this.draw(kind, select);
  }

  draw(kind, select) {
    const { list, none, off } = KINDS[kind];
    const devices = this.devices[list];
    const inUse = this.current(kind);
    const options = devices.map((d) => option(d.deviceId, d.label));
    // Nothing of this kind in use (none at the join, or it stopped): say so, first.
    if (!inUse || !devices.some((d) => d.deviceId === inUse)) options.unshift(option('', devices.length ? off : none));
    select.replaceChildren(...options);
    select.value = inUse && devices.some((d) => d.deviceId === inUse) ? inUse : '';
    select.dataset.deviceCount = String(devices.length);
    select.disabled = this.busy || devices.length === 0;
  }

  async pick(kind, deviceId) {
    if (!deviceId || this.busy) {
      this.draw(kind, this.selects[kind]); // "No camera" is not something to switch to
      return;
    }
    this.busy = true;
    for (const select of Object.values(this.selects)) select.disabled = true;
    let error = '';
    try {
      await this.onPick(kind, deviceId);
    } catch (e) {
      // app.js words its failures for people; anything else is not shown as it is.
      console.warn(`switching the ${kind} failed:`, e, e?.cause);
      error = e?.readable ? e.message : `That ${kind === 'video' ? 'camera' : 'microphone'} could not be started. Pick another one.`;
    }
    this.busy = false;
    if (this.closed) return;
    // At once, from the list as it was: the selects show the devices in use (the one before,
    // after a failure), then the sentence; then the list is read again.
    for (const [k, select] of Object.entries(this.selects)) this.draw(k, select);
    this.setError(error);
    await this.refresh();
  }

  setError(text) {
    this.error.textContent = text;
    this.error.hidden = !text;
  }

  /** The lists as plain data, for window.synapse.state(). */
  snapshot() {
    return {
      cameras: this.devices.cameras.map((d) => ({ ...d })),
      microphones: this.devices.microphones.map((d) => ({ ...d })),
      error: this.error.hidden ? '' : this.error.textContent,
    };
  }

  /** Empties the pickers for the next call. */
  close() {
    this.closed = true;
    navigator.mediaDevices?.removeEventListener?.('devicechange', this.onDeviceChange);
    for (const [target, type, fn] of this.listeners) target.removeEventListener(type, fn);
    for (const select of Object.values(this.selects)) {
      select.replaceChildren();
      select.disabled = true;
    }
    this.setError('');
    this.root.hidden = true;
  }
}
