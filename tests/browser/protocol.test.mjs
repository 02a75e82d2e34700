// The web client's wire code (web-client/protocol.js) against the examples of
// docs/PROTOCOL.md. Runs in Node, no browser: a quick check before the call test.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';

import { REPO_ROOT } from './harness.mjs';

const protocol = await import(pathToFileURL(path.join(REPO_ROOT, 'web-client/protocol.js')).href);
const {
  ControlChannel,
  VideoStreamReader,
  audioLevel,
  decodeDatagram,
  decodeLossyData,
  encodeControl,
  encodeDatagram,
  encodeLossyData,
  isLossyData,
  encodeStreamFrame,
  encodeStreamHeader,
  encodeVarint,
  readVarint,
} = protocol;

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const fromHex = (text) => new Uint8Array(Buffer.from(text.replace(/[^0-9a-f]/gi, ''), 'hex'));

/** A ReadableStream handing over `bytes` in chunks of `size` (reads do not align with messages). */
function chunked(bytes, size) {
  let pos = 0;
  return new ReadableStream({
    pull(controller) {
      if (pos >= bytes.length) return controller.close();
      controller.enqueue(bytes.slice(pos, pos + size));
      pos += size;
    },
  });
}

test('varints: the examples of section 5.1, and every length', () => {
  assert.deepEqual(readVarint(fromHex('25'), 0), [37, 1]);
  assert.deepEqual(readVarint(fromHex('7bbd'), 0), [15293, 2]);
  assert.deepEqual(readVarint(fromHex('9d7f3e7d'), 0), [494878333, 4]);
  assert.equal(readVarint(fromHex('7b'), 0), null, 'a truncated varint reads as null');
  for (const value of [0, 63, 64, 16383, 16384, 1073741823, 1073741824, 1_700_000_000_000_000, 2 ** 53 - 1]) {
    const bytes = encodeVarint(value);
    assert.deepEqual(readVarint(bytes, 0), [value, bytes.length], `round trip of ${value}`);
  }
  assert.equal(hex(encodeVarint(1_700_000_000_000_000)), 'c0060a24181e4000');
});

test('audio datagram: the example of section 5.3', () => {
  const payload = fromHex('deadbeef');
  const datagram = encodeDatagram(2, 70, 1_700_000_000_000_000, payload);
  assert.equal(hex(datagram), '02' + '4046' + 'c0060a24181e4000' + '00' + 'deadbeef');
  const parsed = decodeDatagram(datagram);
  assert.equal(parsed.producerId, 2);
  assert.equal(parsed.seq, 70);
  assert.equal(parsed.captureUs, 1_700_000_000_000_000);
  assert.equal(hex(parsed.payload), 'deadbeef');
  assert.equal(decodeDatagram(fromHex('0240')), null, 'a truncated header is refused');
});

test('audio level byte: section 15.2, written and read back', () => {
  // -20 log10(rms): full scale is 0, a sine of amplitude 0.1 (rms 0.0707) is 23 dBov.
  assert.equal(audioLevel(1, 1), 0);
  assert.equal(audioLevel(0.1 * 0.1 * 480, 480), 20);
  const sine = Array.from({ length: 960 }, (_, i) => 0.1 * Math.sin((2 * Math.PI * 440 * i) / 48000));
  assert.equal(audioLevel(sine.reduce((n, x) => n + x * x, 0), sine.length), 23);
  assert.equal(audioLevel(0, 960), 127, 'digital silence is 127');
  assert.equal(audioLevel(1e-20 * 960, 960), 127, 'quieter than -127 dBov is clamped to 127');
  assert.equal(audioLevel(4 * 960, 960), 0, 'louder than full scale is clamped to 0');

  const payload = fromHex('deadbeef');
  const datagram = encodeDatagram(2, 70, 1_700_000_000_000_000, payload, 35);
  assert.equal(hex(datagram), '02' + '4046' + 'c0060a24181e4000' + '02' + '23' + 'deadbeef');
  const parsed = decodeDatagram(datagram);
  assert.deepEqual([parsed.producerId, parsed.seq, parsed.level, parsed.voice], [2, 70, 35, false]);
  assert.equal(hex(parsed.payload), 'deadbeef', 'the payload starts after the level byte');
  const voiced = decodeDatagram(fromHex('02' + '4046' + 'c0060a24181e4000' + '02' + '85' + 'aa'));
  assert.deepEqual([voiced.level, voiced.voice, hex(voiced.payload)], [5, true, 'aa'], 'bit 7 is the voice activity bit');
  assert.equal(decodeDatagram(fromHex('02' + '4046' + 'c0060a24181e4000' + '02')), null, 'flag 0x02 without its level byte');
  assert.equal(decodeDatagram(encodeDatagram(2, 70, 5, payload)).level, null, 'no level without flag 0x02');
});

test('lossy data datagrams: section 15.5', () => {
  const out = encodeLossyData(fromHex('6869'), [3, 70]);
  assert.equal(hex(out), '00' + '02' + '03' + '4046' + '6869');
  assert.equal(hex(encodeLossyData(fromHex('6869'))), '00' + '00' + '6869', 'no recipients: everyone who takes it');
  const incoming = fromHex('00' + '4046' + '6869');
  assert.ok(isLossyData(incoming));
  assert.ok(!isLossyData(encodeDatagram(2, 70, 5, fromHex('aa'))), 'audio is not lossy data');
  const d = decodeLossyData(incoming);
  assert.deepEqual([d.from, hex(d.payload)], [70, '6869']);
  assert.equal(decodeLossyData(fromHex('0003')), null, 'an empty payload is no message');
});

test('video stream: the example of section 5.4, read back across chunk boundaries', async () => {
  const header = encodeStreamHeader(3);
  assert.equal(hex(header), '0103');
  const key = new Uint8Array(15000).fill(7);
  const first = encodeStreamFrame(120, 1_700_000_000_000_000 + 0xdc40 - 0x4000, true, key);
  assert.equal(hex(first.subarray(0, 13)), '4078' + 'c0060a24181edc40' + '01' + '7a98');
  const second = encodeStreamFrame(121, 1_700_000_000_033_333, false, fromHex('0102'));
  const stream = new Uint8Array([...header, ...first, ...second, ...fromHex('7b')]); // ends mid-frame
  const reader = new VideoStreamReader(chunked(stream, 1000));
  assert.equal(await reader.header(), 3);
  const f1 = await reader.frame();
  assert.deepEqual([f1.seq, f1.keyframe, f1.payload.length], [120, true, 15000]);
  const f2 = await reader.frame();
  assert.deepEqual([f2.seq, f2.captureUs, f2.keyframe, hex(f2.payload)], [121, 1_700_000_000_033_333, false, '0102']);
  assert.equal(await reader.frame(), null, 'a frame cut off by the end of the stream is dropped');
});

test('control framing: the join example of section 3, and requests matched to answers', async () => {
  const join = { id: 1, type: 'join', version: 1, room: 'demo', name: 'Ada' };
  const framed = encodeControl(join);
  assert.equal(hex(framed.subarray(0, 4)), '0000003d');
  assert.equal(framed.length, 4 + 61);

  // The relay's side: answers (one refused), an event, in chunks of 7 bytes.
  const messages = [
    { type: 'response', id: 1, result: { peer_id: 4 } },
    { type: 'peer_joined', peer: { peer_id: 5, name: 'Bo', producers: [] } },
    { type: 'error', id: 2, code: 'unknown_producer', message: 'no producer 9' },
    { type: 'error', id: null, code: 'malformed_frame', message: 'bad flags' },
  ];
  const incoming = new Uint8Array(messages.flatMap((m) => [...encodeControl(m)]));
  const sent = [];
  const bidi = {
    readable: chunked(incoming, 7),
    writable: new WritableStream({ write: (chunk) => void sent.push(chunk) }),
  };
  const events = [];
  const control = new ControlChannel(bidi, { onEvent: (m) => events.push(m) });
  const answer = control.request('join', { version: 1 });
  const refused = control.request('consume', { producer_id: 9 });
  assert.deepEqual(await answer, { peer_id: 4 });
  await assert.rejects(refused, (e) => e.code === 'unknown_producer' && e.relayMessage === 'no producer 9');
  await control.closed;
  assert.deepEqual(events.map((e) => e.type), ['peer_joined', 'error']);
  const first = JSON.parse(Buffer.from(sent[0].subarray(4)).toString());
  assert.deepEqual(first, { id: 1, type: 'join', version: 1 });
});
