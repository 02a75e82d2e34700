// Two relays sharing a redis-server (docs/CLUSTER.md): a page opened on the relay that does
// not host the room is sent by the relay (`wrong_relay`) to the one that does, and the two
// pages end up in one call there, each decoding the other. With --span-rooms, the page
// stays on its relay, which mirrors the room, and again each decodes the other.
//
// Chromium. Needs redis-server (Debian's package, installed by the test command).
// Run: npm install --prefix tests/browser && node --test tests/browser/

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { test } from 'node:test';

import { browserKinds, freePort, joinCall, launchBrowser, log, pageState, printFailureLogs, sleep, startRelay, waitFor } from './harness.mjs';

const MEDIA = 'codec=vp8&width=320&height=240&fps=15&bitrate=300000';

async function startRedis() {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  const up = (resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.end();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  };
  for (let i = 0; i < 100 && !(await new Promise(up)); i++) await sleep(50);
  return { url: `redis://127.0.0.1:${port}/`, stop: () => proc.kill('SIGKILL') };
}

async function relayInCluster(redis, { span = false } = {}) {
  const port = await freePort();
  const env = { SYNAPSE_REDIS_URL: redis.url, SYNAPSE_PUBLIC_URL: `https://127.0.0.1:${port}/` };
  if (span) env.SYNAPSE_SPAN_ROOMS = 'true';
  return startRelay({ port, env });
}

/** Frames this page has decoded from the remote tile of `name`. */
async function framesFrom(page, name) {
  const s = await pageState(page);
  return s.shown.find((t) => t.name === name)?.video ?? 0;
}

/**
 * Ada opens the first relay's page, then bo the second's; `check(one, two, bo's status)`
 * says where bo should be; then each page must decode the other.
 */
async function twoPagesOnTwoRelays({ span, check }) {
  const redis = await startRedis();
  const relays = [];
  let browser = null;
  const pages = new Map();
  try {
    relays.push(await relayInCluster(redis, { span }));
    relays.push(await relayInCluster(redis, { span }));
    const [one, two] = relays;
    browser = await launchBrowser('chromium');
    const room = `cluster-${process.pid}-${span ? 'span' : 'placed'}`;
    const ada = await browser.newPage();
    pages.set('ada', ada);
    await joinCall(ada, `${one.base}/?room=${room}&name=ada&autojoin=1&${MEDIA}`, { name: 'ada' });
    // Bo opens the page the second relay serves, which does not host the room.
    const bo = await browser.newPage();
    pages.set('bo', bo);
    const view = await joinCall(bo, `${two.base}/?room=${room}&name=bo&autojoin=1&${MEDIA}`, { name: 'bo' });
    log(`bo: "${view.status}"`);
    assert.match(view.status, /joined the call/i, 'bo joins the call going on');
    assert.ok(view.status.includes('ada'), view.status);
    await check(one, two);
    await waitFor(
      async () => {
        const [a, b] = [await framesFrom(ada, 'bo'), await framesFrom(bo, 'ada')];
        return a >= 30 && b >= 30 ? { a, b } : null;
      },
      { timeout: 60_000, describe: async () => JSON.stringify({ ada: (await pageState(ada)).shown, bo: (await pageState(bo)).shown }) },
    );
  } catch (e) {
    printFailureLogs(pages, relays[0]);
    throw e;
  } finally {
    for (const relay of relays) await relay.stop();
    redis.stop();
    await browser?.close().catch(() => {});
  }
}

const health = async (relay) => (await fetch(`${relay.base}/healthz`)).json();
const noChromium = !browserKinds().includes('chromium') && 'BROWSERS leaves out chromium';

test('a page on the other relay is sent to the one that hosts the room', { timeout: 120_000, skip: noChromium }, async () => {
  await twoPagesOnTwoRelays({
    span: false,
    check: async (one, two) => {
      const first = await health(one);
      assert.equal(first.peers, 2, `both pages are on the first relay: ${JSON.stringify(first)}`);
      assert.equal((await health(two)).peers, 0);
    },
  });
});

test('with --span-rooms a page stays on its relay, which mirrors the room', { timeout: 120_000, skip: noChromium }, async () => {
  await twoPagesOnTwoRelays({
    span: true,
    check: async (one, two) => {
      const second = await health(two);
      const link = second.cluster?.links?.[0];
      assert.ok(link, `the second relay mirrors the room: ${JSON.stringify(second)}`);
      assert.equal(link.shadows, 1, 'bo is on the second relay, shadowed on the first');
      assert.equal(link.proxied_peers, 1, 'ada is mirrored on the second relay');
      assert.equal((await health(one)).cluster.leases, 1, 'the first relay hosts the room');
    },
  });
});
