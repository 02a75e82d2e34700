// Synapse SFU wire protocol, version 1 (docs/PROTOCOL.md): QUIC varints, the
// length-prefixed JSON control channel, and the binary audio/video frame layouts.
// Nothing here knows about WebCodecs or the page; it only turns bytes into values.

export const PROTOCOL_VERSION = 1;

// The relay may send control messages larger than it accepts (a big room's join result),
// so accept up to 16 MiB before calling the framing broken.
const MAX_INCOMING_CONTROL = 16 * 1024 * 1024;

// Type byte that opens every video stream: "a group of frames of one producer", and for a
// producer that publishes several layers (simulcast), "a group of frames of one layer".
// Consumers always receive type 0x01: the relay forwards one layer at a time.
const STREAM_TYPE_GROUP = 0x01;
const STREAM_TYPE_LAYER_GROUP = 0x02;
const FLAG_KEYFRAME = 0x01;
// Audio datagrams (section 15.2): a level byte follows the flags byte. Only sent to a relay
// that lists `audio_level`, and only received by a client that asked for it in `join`.
const FLAG_AUDIO_LEVEL = 0x02;
const LEVEL_SILENCE = 127;
// Producer id 0 is no producer: a datagram with it carries lossy data (section 15.5).
const LOSSY_DATA_ID = 0;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---------------------------------------------------------------------------
// QUIC variable-length integers (RFC 9000 §16). Exact for values below 2^53, which is
// all JavaScript numbers can hold; the relay's ids and microsecond timestamps stay below.

/** Reads a varint at `pos`. Returns [value, length], or null if the bytes end first. */
export function readVarint(buf, pos) {
  if (pos >= buf.length) return null;
  const len = 1 << (buf[pos] >> 6);
  if (pos + len > buf.length) return null;
  let value = buf[pos] & 0x3f;
  for (let i = 1; i < len; i++) value = value * 256 + buf[pos + i];
  return [value, len];
}

export function varintLength(value) {
  if (value < 0x40) return 1;
  if (value < 0x4000) return 2;
  if (value < 0x40000000) return 4;
  return 8;
}

/** Writes `value` (a non-negative integer below 2^53) at `pos`; returns the new position. */
export function writeVarint(buf, pos, value) {
  const len = varintLength(value);
  // Big-endian, least significant byte last; division keeps it exact above 2^32.
  let v = value;
  for (let i = len - 1; i >= 0; i--) {
    buf[pos + i] = v % 256;
    v = Math.floor(v / 256);
  }
  buf[pos] |= [0, 0x00, 0x40, 0, 0x80, 0, 0, 0, 0xc0][len];
  return pos + len;
}

export function encodeVarint(value) {
  const out = new Uint8Array(varintLength(value));
  writeVarint(out, 0, value);
  return out;
}

// ---------------------------------------------------------------------------
// Media frames.

/**
 * The level byte of section 15.2 for PCM whose squared samples (full scale ±1.0) sum to
 * `sumSquares` over `count` samples: round(-20 log10(rms)) in -dBov, 0 (loudest) to 127
 * (silence). No voice activity bit: this client has no detector.
 */
export function audioLevel(sumSquares, count) {
  if (!(count > 0) || !(sumSquares > 0)) return LEVEL_SILENCE;
  const db = -20 * Math.log10(Math.sqrt(sumSquares / count));
  return Math.min(LEVEL_SILENCE, Math.max(0, Math.round(db)));
}

/**
 * Audio datagram: producer_id | seq | capture_us | flags | [level] | payload (to the end).
 * With `level` (0 to 127) flag 0x02 is set and the level byte written.
 */
export function encodeDatagram(producerId, seq, captureUs, payload, level = null) {
  const withLevel = level !== null && level !== undefined;
  const head = varintLength(producerId) + varintLength(seq) + varintLength(captureUs) + 1 + (withLevel ? 1 : 0);
  const out = new Uint8Array(head + payload.byteLength);
  let pos = writeVarint(out, 0, producerId);
  pos = writeVarint(out, pos, seq);
  pos = writeVarint(out, pos, captureUs);
  out[pos++] = withLevel ? FLAG_AUDIO_LEVEL : 0; // the keyframe flag means nothing for audio
  if (withLevel) out[pos++] = level & 0x7f;
  out.set(payload, pos);
  return out;
}

/**
 * Parses an audio datagram; null if it is too short for its header (or for the level byte
 * its flags announce). `level` is the sender's level (0 to 127, -dBov) or null without one;
 * `voice` its voice-activity bit.
 */
export function decodeDatagram(buf) {
  let pos = 0;
  const fields = [];
  for (let i = 0; i < 3; i++) {
    const v = readVarint(buf, pos);
    if (!v) return null;
    fields.push(v[0]);
    pos += v[1];
  }
  if (pos >= buf.length) return null;
  const flags = buf[pos++];
  let level = null;
  let voice = false;
  if (flags & FLAG_AUDIO_LEVEL) {
    if (pos >= buf.length) return null;
    level = buf[pos] & 0x7f;
    voice = (buf[pos] & 0x80) !== 0;
    pos++;
  }
  const [producerId, seq, captureUs] = fields;
  return { producerId, seq, captureUs, keyframe: (flags & FLAG_KEYFRAME) !== 0, level, voice, payload: buf.subarray(pos) };
}

/** Whether a datagram from the relay is lossy data (producer id 0) rather than audio. */
export function isLossyData(buf) {
  return readVarint(buf, 0)?.[0] === LOSSY_DATA_ID;
}

/** Lossy data to the relay: 0 | n | n peer ids | payload; no ids: every other peer that takes it. */
export function encodeLossyData(payload, to = []) {
  let len = 1 + varintLength(to.length) + payload.byteLength;
  for (const id of to) len += varintLength(id);
  const out = new Uint8Array(len);
  let pos = writeVarint(out, 0, LOSSY_DATA_ID);
  pos = writeVarint(out, pos, to.length);
  for (const id of to) pos = writeVarint(out, pos, id);
  out.set(payload, pos);
  return out;
}

/** Lossy data from the relay: 0 | from_peer_id | payload. Null if malformed or empty. */
export function decodeLossyData(buf) {
  const id = readVarint(buf, 0);
  if (!id || id[0] !== LOSSY_DATA_ID) return null;
  const from = readVarint(buf, id[1]);
  if (!from) return null;
  const payload = buf.subarray(id[1] + from[1]);
  return payload.length > 0 ? { from: from[0], payload } : null;
}

/**
 * The first bytes of a video stream: type 0x01 and the producer id, or for one layer of a
 * layered producer (`layer` given), type 0x02, the producer id and the layer index.
 */
export function encodeStreamHeader(producerId, layer = null) {
  const layered = layer !== null && layer !== undefined;
  const out = new Uint8Array(1 + varintLength(producerId) + (layered ? varintLength(layer) : 0));
  out[0] = layered ? STREAM_TYPE_LAYER_GROUP : STREAM_TYPE_GROUP;
  const pos = writeVarint(out, 1, producerId);
  if (layered) writeVarint(out, pos, layer);
  return out;
}

/** One video frame on a stream: seq | capture_us | flags | length | payload. */
export function encodeStreamFrame(seq, captureUs, keyframe, payload) {
  const head = varintLength(seq) + varintLength(captureUs) + 1 + varintLength(payload.byteLength);
  const out = new Uint8Array(head + payload.byteLength);
  let pos = writeVarint(out, 0, seq);
  pos = writeVarint(out, pos, captureUs);
  out[pos++] = keyframe ? FLAG_KEYFRAME : 0;
  pos = writeVarint(out, pos, payload.byteLength);
  out.set(payload, pos);
  return out;
}

/**
 * Pulls bytes from a ReadableStream on demand. Streams hand over arbitrary chunks, so a
 * varint or frame may straddle two reads; this keeps the unread rest between calls.
 */
export class ByteReader {
  constructor(readable) {
    this.reader = readable.getReader();
    this.buf = new Uint8Array(0);
    this.pos = 0;
  }

  /** Makes at least `n` unread bytes available; false if the stream ended first. */
  async fill(n) {
    if (this.buf.length - this.pos >= n) return true;
    // Collect chunks and join them once: a 50 KB keyframe arrives in dozens of chunks.
    const parts = [this.buf.subarray(this.pos)];
    let have = parts[0].length;
    let ended = false;
    while (have < n) {
      const { value, done } = await this.reader.read();
      if (done) {
        ended = true;
        break;
      }
      parts.push(value);
      have += value.length;
    }
    this.buf = new Uint8Array(have);
    let at = 0;
    for (const part of parts) {
      this.buf.set(part, at);
      at += part.length;
    }
    this.pos = 0;
    return !ended;
  }

  /** Next varint, or null at the end of the stream. */
  async varint() {
    if (!(await this.fill(1))) return null;
    const len = 1 << (this.buf[this.pos] >> 6);
    if (!(await this.fill(len))) return null;
    const [value] = readVarint(this.buf, this.pos);
    this.pos += len;
    return value;
  }

  /** Next `n` bytes (a copy, so the caller may keep it), or null at the end. */
  async bytes(n) {
    if (!(await this.fill(n))) return null;
    const out = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  cancel() {
    this.reader.cancel().catch(() => {});
  }
}

/**
 * Reads an incoming video stream: `header()` gives its producer id, then `frame()` gives
 * frames until the stream ends (null). A frame cut off by the end is dropped, as the
 * protocol says. A reset stream makes the reads throw; callers treat that as the end.
 */
export class VideoStreamReader extends ByteReader {
  async header() {
    const type = await this.varint();
    if (type === null) return null;
    if (type !== STREAM_TYPE_GROUP && type !== STREAM_TYPE_LAYER_GROUP) throw new Error(`unknown stream type ${type}`);
    const producerId = await this.varint();
    // A relay sends consumers type 0x01 only; a layer index would be read and set aside.
    this.layer = type === STREAM_TYPE_LAYER_GROUP && producerId !== null ? await this.varint() : null;
    return producerId;
  }

  async frame() {
    const seq = await this.varint();
    if (seq === null) return null;
    const captureUs = await this.varint();
    if (captureUs === null || !(await this.fill(1))) return null;
    const flags = this.buf[this.pos++];
    const len = await this.varint();
    if (len === null) return null;
    const payload = await this.bytes(len);
    if (payload === null) return null;
    return { seq, captureUs, keyframe: (flags & FLAG_KEYFRAME) !== 0, payload };
  }
}

// ---------------------------------------------------------------------------
// Control channel.

/** A refusal from the relay: `code` is for programs, `message` for people. */
export class RelayError extends Error {
  constructor(code, message, relayUrl = null) {
    super(`${code}: ${message}`);
    this.name = 'RelayError';
    this.code = code;
    this.relayMessage = message;
    this.relayUrl = relayUrl; // with `wrong_relay`: where the room is (docs/CLUSTER.md)
  }
}

export function encodeControl(message) {
  const body = encoder.encode(JSON.stringify(message));
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length); // big-endian
  out.set(body, 4);
  return out;
}

/**
 * The control stream: requests matched to answers by id, everything else delivered to
 * `onEvent`. `closed` settles when the relay ends the stream (or it breaks).
 */
export class ControlChannel {
  constructor(bidi, { onEvent }) {
    this.writer = bidi.writable.getWriter();
    this.reader = new ByteReader(bidi.readable);
    this.onEvent = onEvent;
    this.nextId = 1;
    this.pending = new Map(); // id -> { resolve, reject }
    this.closed = this.readLoop();
    this.closed.catch(() => {}); // reported through Session; not an unhandled rejection
  }

  /** Sends a request; resolves with its `result`, rejects with a RelayError. */
  request(type, fields = {}) {
    const id = this.nextId++;
    const answer = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.writer.write(encodeControl({ id, type, ...fields })).catch((e) => this.failPending(e));
    return answer;
  }

  async readLoop() {
    try {
      for (;;) {
        if (!(await this.reader.fill(4))) break;
        const r = this.reader;
        const len = new DataView(r.buf.buffer, r.buf.byteOffset + r.pos, 4).getUint32(0);
        if (len > MAX_INCOMING_CONTROL) throw new Error(`control message of ${len} bytes`);
        r.pos += 4;
        const body = await r.bytes(len);
        if (body === null) break;
        this.dispatch(JSON.parse(decoder.decode(body)));
      }
      this.failPending(new Error('control stream ended'));
    } catch (e) {
      this.failPending(e);
      throw e;
    }
  }

  dispatch(message) {
    // A response, or an error with a non-null id, answers a request; the rest are events.
    const waiting = message.id != null ? this.pending.get(message.id) : undefined;
    if (waiting && (message.type === 'response' || message.type === 'error')) {
      this.pending.delete(message.id);
      if (message.type === 'response') waiting.resolve(message.result ?? {});
      else waiting.reject(new RelayError(message.code, message.message, message.relay_url ?? null));
      return;
    }
    this.onEvent(message);
  }

  failPending(error) {
    for (const { reject } of this.pending.values()) reject(error);
    this.pending.clear();
  }

  close() {
    this.writer.close().catch(() => {});
    this.reader.cancel();
  }
}
