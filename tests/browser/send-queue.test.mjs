// The web client's send backlog bookkeeping (web-client/send-queue.js) with fake streams
// and a fake clock: segments, the backlog from acknowledgements less the network's part,
// and what abandon() resets. Runs in Node, no browser; weak-uplink.test.mjs runs it for real.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';

import { REPO_ROOT } from './harness.mjs';

const { SendQueue } = await import(pathToFileURL(path.join(REPO_ROOT, 'web-client/send-queue.js')).href);

/** A stream whose close (delivery) the test settles; records writes, close and abort. */
function fakeStream() {
  let deliver;
  let fail;
  const delivery = new Promise((resolve, reject) => {
    deliver = resolve;
    fail = reject;
  });
  delivery.catch(() => {});
  const stream = {
    writes: [],
    closed: false,
    aborted: false,
    deliver: () => deliver(),
    fail: (e) => fail(e),
    writer: {
      write: async (bytes) => void stream.writes.push(bytes.length),
      close: () => {
        stream.closed = true;
        return delivery;
      },
      abort: async () => {
        stream.aborted = true;
        fail(new Error('aborted'));
      },
    },
  };
  return stream;
}

function setUp() {
  const t = { now: 0, streams: [], errors: [] };
  t.queue = new SendQueue({
    openStream: async () => {
      const s = fakeStream();
      t.streams.push(s);
      return s.writer;
    },
    clock: () => t.now,
    segmentMs: 60,
    onWriteError: (e) => t.errors.push(e.message),
  });
  return t;
}

const settle = () => new Promise((resolve) => setImmediate(resolve));
const frame = (n) => new Uint8Array(n);

test('frames go out in short streams; the backlog is the oldest undelivered one less the network', async () => {
  const t = setUp();
  const q = t.queue;
  q.startGroup();
  const delivered = [];
  for (const at of [0, 33, 66, 100, 133, 166]) {
    t.now = at;
    q.write(frame(1000)).then((ok) => delivered.push([at, ok]));
  }
  await settle();
  assert.equal(t.streams.length, 2, 'a segment is finished once it spans segmentMs (60 ms)');
  assert.deepEqual(t.streams[0].writes, [1000, 1000, 1000]);
  assert.equal(t.streams[0].closed, true);
  assert.equal(t.streams[1].closed, true);

  t.now = 250;
  // Nothing delivered, nothing known of the network: the first segment, finished at 66, has
  // waited since then and its frames at most 60 ms before that.
  assert.equal(q.update(), 250 - 6);
  assert.equal(q.keyframeGoingOut, true);

  t.now = 280; // 214 ms after the first segment was finished
  t.streams[0].deliver();
  await settle();
  assert.deepEqual(delivered, [[0, true], [33, true], [66, true]]);
  assert.equal(q.keyframeGoingOut, false);
  t.now = 400;
  assert.equal(q.update(), 400 - 106 - 214, 'the second segment (finished at 166) less the 214 the network took');
  assert.equal(q.networkMs, 214);

  q.setRelayRtt(40);
  assert.equal(q.update(), 400 - 106 - 40, "the relay's round-trip time is the network's part when it is fresh");
  t.now = 3500;
  q.update();
  assert.equal(q.networkMs, 0, 'a stale round-trip time and old deliveries are forgotten');
});

test('a segment kept open by a pause is not late for it, and is finished when nothing comes', async () => {
  const t = setUp();
  const q = t.queue;
  q.startGroup();
  q.write(frame(1000)); // t=0
  t.now = 100;
  assert.equal(q.update(), 60, 'an open segment counts at most segmentMs');
  await settle();
  assert.equal(t.streams[0].closed, false);
  t.now = 130;
  q.update();
  await settle();
  assert.equal(t.streams[0].closed, true, 'no frame for twice segmentMs: finished');
  t.now = 1000;
  q.write(frame(1000)); // the pause ends: the next frame opens a new segment
  t.now = 1040;
  q.write(frame(1000));
  await settle();
  assert.equal(t.streams.length, 2);
  assert.equal(q.update(), 1040 - 130 + 60, 'the finished segment waits from when it was finished');
});

test("abandon() resets late groups, and spares the open group's keyframe unless told", async () => {
  const t = setUp();
  const q = t.queue;
  q.startGroup();
  q.write(frame(5000)); // keyframe, t=0
  t.now = 70;
  q.write(frame(1000)); // closes the first segment
  q.startGroup(); // a new keyframe: the first group is finished, undelivered
  q.write(frame(5000));
  await settle();
  assert.equal(t.streams.length, 2);

  let cut = q.abandon();
  await settle();
  assert.deepEqual(cut, { groups: 1, frames: 2 }, 'the finished group is given up');
  assert.equal(t.streams[0].aborted, true);
  assert.equal(t.streams[1].aborted, false, "the open group's keyframe is still going out: spared");
  assert.equal(q.keyframeGoingOut, true);

  cut = q.abandon({ all: true });
  await settle();
  assert.deepEqual(cut, { groups: 1, frames: 1 });
  assert.equal(t.streams[1].aborted, true);
  assert.equal(q.current, null, 'no open group: the sender must start over at a keyframe');
  assert.equal(q.write(frame(10)), null);
  assert.deepEqual(t.errors, [], 'an abandoned stream is not a write error');
  t.now = 1000;
  assert.equal(q.update(), 0, 'nothing is waiting any more');
});

test('a stream the relay stops is a write error, reported once for its group', async () => {
  const t = setUp();
  const q = t.queue;
  q.startGroup();
  q.write(frame(100));
  t.now = 70;
  q.write(frame(100));
  q.write(frame(100)); // second segment
  await settle();
  t.streams[0].fail(new Error('stopped by the relay'));
  await settle();
  assert.deepEqual(t.errors, ['stopped by the relay']);
  assert.equal(t.streams[1].aborted, true, 'the rest of the group is given up with it');
  assert.equal(q.current, null);
});
