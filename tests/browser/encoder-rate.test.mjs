// The web client's encoder bitrate rule (web-client/encoder-rate.js) on a fake clock: the
// cut on a skip, the cut to a share of the uplink when it holds a queue, and the probe up
// after 2 s of neither. Runs in Node, no browser; weak-uplink.test.mjs runs it for real.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';

import { REPO_ROOT } from './harness.mjs';

const { EncoderRate, MIN_VIDEO_BITRATE, RATE_HOLD_MS } = await import(
  pathToFileURL(path.join(REPO_ROOT, 'web-client/encoder-rate.js')).href
);

test('a skip cuts to 80% of what was sent less audio, once per hold, and 2 s without one probes up', () => {
  const rate = new EncoderRate(1_000_000);
  assert.equal(rate.onFrame(0), null, 'nothing to probe before any change');
  assert.equal(rate.onSkip(0, 564_000), 400_000);
  assert.equal(rate.onSkip(100, 200_000), null, 'a second skip within the hold is the same episode');
  assert.equal(rate.onFrame(100 + RATE_HOLD_MS - 1), null);
  assert.equal(rate.onFrame(100 + RATE_HOLD_MS), 440_000);
  assert.equal(rate.cuts, 1);
});

test('cutTo lowers to a share, never under the floor or up, and holds the probe', () => {
  const rate = new EncoderRate(1_000_000);
  assert.equal(rate.cutTo(0, 250_000), 250_000);
  assert.equal(rate.cutTo(10, 300_000), null, 'a larger share does not raise it');
  assert.equal(rate.cutTo(20, 5_000), MIN_VIDEO_BITRATE, 'never under the floor');
  assert.equal(rate.cutTo(30, -40_000), null, 'already at the floor');
  assert.equal(rate.lowestBps, MIN_VIDEO_BITRATE);
  assert.equal(rate.cuts, 2);
  // Each call holds the probe up for RATE_HOLD_MS, a cut or not.
  assert.equal(rate.onFrame(30 + RATE_HOLD_MS - 1), null);
  assert.equal(rate.onFrame(30 + RATE_HOLD_MS), 110_000);
});
