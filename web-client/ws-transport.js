// The WebSocket fallback (docs/PROTOCOL.md section 17): one WebSocket that looks, to
// session.js, like the part of a WebTransport session it uses. The control stream,
// datagrams and unidirectional streams become typed binary messages of the one socket.
// WebSocket offers no backpressure but `bufferedAmount`, so writers poll it: stream writes
// wait while much is queued, datagrams (lossy by contract) are dropped instead, and control
// messages always go out, so that the relay hears control before audio before video.

import { readVarint, varintLength, writeVarint } from './protocol.js';

const CONTROL = 0x00;
const DATAGRAM = 0x01;
const STREAM = 0x02;
const STREAM_FIN = 0x03;
const STREAM_RESET = 0x04;
const STOP_SENDING = 0x05;

const SUBPROTOCOL = 'synapse.v1';
// Stream data goes in messages of at most this much, so control and audio can go between.
const MAX_CHUNK = 64 * 1024;
// Stream writes wait while more than this waits in the socket; datagrams are dropped above
// the lower mark (audio that waits behind video is late anyway).
const STREAM_HIGH_WATER = 256 * 1024;
const DATAGRAM_HIGH_WATER = 64 * 1024;
const POLL_MS = 10;
// At most this many streams of one side open at once (section 17.2).
const MAX_OPEN_STREAMS = 256;
// Stream codes (section 11): a stream refused by its receiver, late video.
const CODE_REFUSED = 4;
const CODE_LATE = 7;
const CODE_PROTOCOL = 1;
// Incoming datagrams the page has not read yet: more are dropped, as a browser drops them.
const DATAGRAM_QUEUE = 64;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const encoder = new TextEncoder();

/** An error with a stream code, shaped like a WebTransportError (send-queue.js reads it). */
function streamError(message, code) {
  const e = new Error(message);
  e.name = 'WebTransportError';
  e.source = 'stream';
  e.streamErrorCode = code;
  return e;
}

/** One WebSocket message: the type byte, varints, then `body`. */
function encode(type, varints, body = null) {
  let length = 1 + (body ? body.byteLength : 0);
  for (const v of varints) length += varintLength(v);
  const out = new Uint8Array(length);
  out[0] = type;
  let pos = 1;
  for (const v of varints) pos = writeVarint(out, pos, v);
  if (body) out.set(body, pos);
  return out;
}

function toBytes(chunk) {
  if (chunk instanceof Uint8Array) return chunk;
  if (ArrayBuffer.isView(chunk)) return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return new Uint8Array(chunk);
}

export class WebSocketTransport {
  constructor(url) {
    const ws = new WebSocket(url, [SUBPROTOCOL]);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.error = null; // once the session is over: why (what pending operations fail with)
    this.sent = 0; // bytes handed to ws.send(): with bufferedAmount, what has left the page
    this.outgoing = new Map(); // our stream id -> its WritableStream's controller
    this.nextOutgoing = 0;
    this.incoming = new Map(); // the relay's stream id -> its ReadableStream's controller
    this.highestIncoming = -1;
    this.droppedDatagrams = 0;

    let opened = false;
    this.ready = new Promise((resolve, reject) => {
      ws.addEventListener('open', () => {
        opened = true;
        resolve();
      });
      this.rejectReady = reject;
    });
    this.closed = new Promise((resolve, reject) => {
      ws.addEventListener('close', (e) => {
        // 4000 + the session close code (section 17.4); 1000 and 1005 are a plain close.
        const ours = e.code >= 4000 && e.code <= 4999;
        const clean = ours || e.code === 1000 || e.code === 1005;
        const why = e.reason ? `: ${e.reason}` : '';
        const error = new Error(
          clean
            ? `The relay closed the WebSocket session (code ${e.code}${why}).`
            : opened
              ? `The WebSocket connection to the relay broke off (code ${e.code}${why}).`
              : `The WebSocket connection to the relay could not be opened (code ${e.code}${why}).`,
        );
        this.rejectReady(error); // no effect once open
        // Settled before the streams fail, so that session.js reports this reason.
        if (clean) resolve({ closeCode: ours ? e.code - 4000 : 0, reason: e.reason });
        else reject(error);
        this.teardown(error);
      });
    });
    // Handled here too: a loser of session.js's race may never be awaited.
    this.ready.catch(() => {});
    this.closed.catch(() => {});

    this.controlReadable = new ReadableStream({ start: (c) => (this.controlIn = c) });
    this.incomingUnidirectionalStreams = new ReadableStream({ start: (c) => (this.streamsIn = c) });
    this.datagrams = {
      maxDatagramSize: 1200, // session.js takes the smaller of this and the join result's
      readable: new ReadableStream({ start: (c) => (this.datagramsIn = c) }, { highWaterMark: DATAGRAM_QUEUE }),
      writable: new WritableStream({ write: (chunk) => this.sendDatagram(toBytes(chunk)) }),
    };
    ws.addEventListener('message', (e) => this.receive(e.data));
  }

  /** Hands a message to the socket; throws once the session is over. */
  send(bytes) {
    if (this.error) throw this.error;
    if (this.ws.readyState !== WebSocket.OPEN) throw new Error('The WebSocket session is not open.');
    this.ws.send(bytes);
    this.sent += bytes.byteLength;
  }

  /** Waits while more than `limit` bytes wait in the socket (or until `signal` aborts). */
  async below(limit, signal) {
    while (this.ws.bufferedAmount > limit && !this.error && !signal?.aborted) await sleep(POLL_MS);
  }

  sendDatagram(bytes) {
    if (this.error) throw this.error;
    if (this.ws.bufferedAmount > DATAGRAM_HIGH_WATER) {
      this.droppedDatagrams++;
      return; // too late by the time it would go out: lost, as a datagram may be
    }
    this.send(encode(DATAGRAM, [], bytes));
  }

  /** The control stream: its bytes are the CONTROL messages' bodies, both ways. */
  async createBidirectionalStream() {
    await this.ready;
    if (this.error) throw this.error;
    const writable = new WritableStream({
      write: (chunk) => {
        const bytes = toBytes(chunk);
        for (let at = 0; at < bytes.length; at += MAX_CHUNK) this.send(encode(CONTROL, [], bytes.subarray(at, at + MAX_CHUNK)));
      },
      // Finishing the control stream is closing the WebSocket (section 17.2).
      close: () => this.close({ closeCode: 0, reason: 'leaving' }),
    });
    return { readable: this.controlReadable, writable };
  }

  /**
   * A stream to the relay, numbered 0, 1, 2, ... An empty STREAM message opens it at once,
   * so the relay sees the ids in order however the streams' writes interleave.
   */
  async createUnidirectionalStream() {
    await this.ready;
    if (this.outgoing.size >= MAX_OPEN_STREAMS) throw new Error('Too many streams are open on the WebSocket session.');
    const id = this.nextOutgoing++;
    this.send(encode(STREAM, [id]));
    let controller;
    const live = () => {
      if (this.error) throw this.error;
      if (controller.signal?.aborted) throw controller.signal.reason;
      if (!this.outgoing.has(id)) throw streamError('The relay stopped the stream.', CODE_REFUSED);
    };
    return new WritableStream(
      {
        start: (c) => {
          controller = c;
          this.outgoing.set(id, c);
        },
        write: async (chunk) => {
          const bytes = toBytes(chunk);
          for (let at = 0; at < bytes.length; at += MAX_CHUNK) {
            await this.below(STREAM_HIGH_WATER, controller.signal);
            live();
            this.send(encode(STREAM, [id], bytes.subarray(at, at + MAX_CHUNK)));
          }
        },
        close: async () => {
          live();
          this.outgoing.delete(id);
          this.send(encode(STREAM_FIN, [id]));
          // WebTransport's close() resolves once the relay has acknowledged the stream, and
          // send-queue.js measures the send backlog by it: the nearest a WebSocket can tell
          // is when the FIN has left the page.
          const mark = this.sent;
          while (this.sent - this.ws.bufferedAmount < mark && !this.error) await sleep(POLL_MS);
          if (this.error) throw this.error;
        },
        abort: (reason) => {
          if (!this.outgoing.delete(id) || this.error) return;
          const code = Number.isInteger(reason?.streamErrorCode) ? reason.streamErrorCode : CODE_LATE;
          this.send(encode(STREAM_RESET, [id, code]));
        },
      },
      // So that writer.desiredSize and writer.ready tell when writes are piling up.
      { highWaterMark: MAX_CHUNK, size: (chunk) => chunk.byteLength ?? 0 },
    );
  }

  receive(data) {
    // The relay sends binary only; nothing is delivered once the session is over.
    if (this.error || !(data instanceof ArrayBuffer) || data.byteLength === 0) return;
    const buf = new Uint8Array(data);
    const type = buf[0];
    if (type === CONTROL) {
      this.controlIn.enqueue(buf.subarray(1));
      return;
    }
    if (type === DATAGRAM) {
      if (this.datagramsIn.desiredSize > 0) this.datagramsIn.enqueue(buf.subarray(1));
      return;
    }
    const idField = readVarint(buf, 1);
    if (!idField) return;
    const [id, idLength] = idField;
    const rest = 1 + idLength;
    const code = readVarint(buf, rest)?.[0] ?? 0;
    let stream = this.incoming.get(id);
    switch (type) {
      case STREAM:
        if (!stream && id > this.highestIncoming) stream = this.openIncoming(id);
        // Bytes for a stream no longer open (ended, reset or stopped) are discarded.
        if (stream && buf.length > rest) stream.enqueue(buf.subarray(rest));
        break;
      case STREAM_FIN:
        this.incoming.delete(id);
        stream?.close();
        break;
      case STREAM_RESET:
        this.incoming.delete(id);
        stream?.error(streamError(`The relay reset the stream (code ${code}).`, code));
        break;
      case STOP_SENDING: {
        const out = this.outgoing.get(id);
        this.outgoing.delete(id);
        out?.error(streamError(`The relay stopped the stream (code ${code}).`, code));
        break;
      }
      default:
        break; // unknown types are not ours to judge
    }
  }

  /** A STREAM message with a new, higher id: the relay opened a stream. */
  openIncoming(id) {
    if (this.incoming.size >= MAX_OPEN_STREAMS) {
      this.close({ closeCode: CODE_PROTOCOL, reason: 'too many streams open' });
      return null;
    }
    this.highestIncoming = id;
    let controller;
    const readable = new ReadableStream({
      start: (c) => (controller = c),
      // The reader gives up on it: ask the relay to stop sending it.
      cancel: () => {
        if (this.incoming.get(id) !== controller) return;
        this.incoming.delete(id);
        if (!this.error) this.send(encode(STOP_SENDING, [id, CODE_REFUSED]));
      },
    });
    this.incoming.set(id, controller);
    this.streamsIn.enqueue(readable);
    return controller;
  }

  /** Ends the session: WebSocket close code 4000 + `closeCode` (section 17.4). */
  close({ closeCode = 0, reason = '' } = {}) {
    if (this.ws.readyState === WebSocket.CLOSING || this.ws.readyState === WebSocket.CLOSED) return;
    // A close reason may hold 123 bytes of UTF-8.
    let text = String(reason);
    while (encoder.encode(text).length > 123) text = text.slice(0, -1);
    this.ws.close(4000 + closeCode, text);
    // As with WebTransport, what is open fails now, not when the relay answers.
    this.teardown(new Error('The WebSocket session was closed by this page.'));
  }

  /** Fails everything still open with `error`, once. */
  teardown(error) {
    if (this.error) return;
    this.error = error;
    const fail = (controller) => {
      try {
        controller.error(error);
      } catch {
        // Already closed or errored.
      }
    };
    for (const c of [this.controlIn, this.streamsIn, this.datagramsIn, ...this.incoming.values(), ...this.outgoing.values()]) fail(c);
    this.incoming.clear();
    this.outgoing.clear();
  }
}
