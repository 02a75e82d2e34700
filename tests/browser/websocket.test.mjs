// The WebSocket fallback (docs/PROTOCOL.md section 17) in the web client.
//
// 1. A Chromium page forced onto the WebSocket (?transport=ws) and a Chromium page on
//    WebTransport (?transport=wt) hold a call: each decodes the other's video and audio,
//    and each says which transport it uses (document.body.dataset.transport).
// 2. The same with the WebSocket page in Firefox.
// 3. 'auto' where WebTransport cannot connect (?quic= points it at a port where nothing
//    listens): the page joins over the WebSocket and remembers that for the relay
//    (localStorage); loaded again without the dead UDP path it still starts with the
//    remembered WebSocket, which wins its head start; a fresh page (nothing remembered)
//    takes WebTransport.
// 4. Resuming over the WebSocket: a page that reaches the relay through a TCP proxy loses
//    its connection (the proxy cuts it); it reconnects over the WebSocket and takes its
//    place back (same peer id), and the other page decodes its video again.
//
// Run: npm install --prefix tests/browser && node --test tests/browser/websocket.test.mjs
// Env: as three-peer-call.test.mjs (SYNAPSE_BIN, SYNAPSE_WEB_ROOT, CHROMIUM_PATH, FIREFOX_PATH, BROWSERS).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { test } from 'node:test';

import {
  FIREFOX_PATH,
  browserKinds,
  freePort,
  joinCall,
  launchBrowser,
  log,
  pageState,
  printFailureLogs,
  startRelay,
  waitFor,
} from './harness.mjs';

// Little video: two pages and their encoders and decoders share two cores.
const MEDIA = 'codec=vp8&width=320&height=240&fps=15&bitrate=300000';
// About 2 s of video at 15 fps and 1 s of audio (20 ms frames): enough to call it flowing.
const MIN_VIDEO_FRAMES = 30;
const MIN_AUDIO_FRAMES = 50;
const MEDIA_TIMEOUT_MS = 30_000;
const TEST_TIMEOUT_MS = 90_000; // they take 15 to 40 s; the margin is for a busy machine

const tileOf = (s, name) => s.tiles.find((t) => t.name === name);
const transportOf = (page) => page.evaluate(() => document.body.dataset.transport ?? null);
// The remembered winner's kind ({kind, at} in localStorage), or null.
const rememberedFor = (page, relayHost) =>
  page.evaluate((host) => JSON.parse(localStorage.getItem(`synapse.transport.${host}`) ?? 'null')?.kind ?? null, relayHost);

/** Opens the web client at `origin` in a new page of `browser` and joins `room` as `name`. */
async function openCall(browser, origin, room, name, extra = '') {
  const page = await browser.newPage();
  // Chromium joins by itself; in Firefox the test clicks Join (a gesture lets audio run).
  const auto = browser.kind === 'chromium' ? '&autojoin=1' : '';
  const state = await joinCall(page, `${origin}/?room=${room}&name=${name}${auto}&${MEDIA}${extra}`, { name });
  log(`${name} (${browser.kind}) joined as peer ${state.peerId} over ${await transportOf(page)}: "${state.status}"`);
  return page;
}

/** Waits until `page` has decoded more than `after` video frames and some audio from `other`. */
function decodes(page, pageName, other, { video = MIN_VIDEO_FRAMES, audio = MIN_AUDIO_FRAMES } = {}) {
  return waitFor(
    async () => {
      const s = await pageState(page);
      if (s.error) throw new Error(`${pageName} shows an error: ${s.error}`);
      const t = tileOf(s, other);
      return t && t.videoFrames >= video && t.audioFrames >= audio ? t : null;
    },
    {
      timeout: MEDIA_TIMEOUT_MS,
      interval: 500,
      describe: async () => `${pageName} does not decode ${other}: ${JSON.stringify(tileOf(await pageState(page), other))}`,
    },
  );
}

async function assertClean(pages) {
  for (const [name, page] of pages) {
    const s = await pageState(page);
    assert.equal(s.error, '', `${name} shows an error`);
    assert.deepEqual(page.pageErrors, [], `${name} threw`);
  }
}

/** Tests 1 and 2: a page of `wsKind` on the WebSocket, a Chromium page on WebTransport. */
async function mixedTransports(wsKind) {
  const started = Date.now();
  const relay = await startRelay();
  const browsers = [];
  const pages = new Map();
  try {
    const chromium = await launchBrowser('chromium');
    browsers.push(chromium);
    const wsBrowser = wsKind === 'chromium' ? chromium : await launchBrowser(wsKind);
    if (wsBrowser !== chromium) browsers.push(wsBrowser);
    log(`${wsBrowser.version}; web client from ${process.env.SYNAPSE_WEB_ROOT || 'the binary (embedded copy)'}`);
    const room = `websocket-${wsKind}-${process.pid}`;
    const sock = await openCall(wsBrowser, relay.base, room, 'sock', '&transport=ws');
    pages.set('sock', sock);
    const quic = await openCall(chromium, relay.base, room, 'quic', '&transport=wt');
    pages.set('quic', quic);
    assert.equal(await transportOf(sock), 'websocket', 'the page forced onto the WebSocket should say so');
    assert.equal(await transportOf(quic), 'webtransport', 'the page forced onto WebTransport should say so');
    assert.equal((await pageState(sock)).transport, 'websocket');

    const onSock = await decodes(sock, 'sock', 'quic');
    const onQuic = await decodes(quic, 'quic', 'sock');
    log(`sock decodes quic: v${onSock.videoFrames}/a${onSock.audioFrames}; quic decodes sock: v${onQuic.videoFrames}/a${onQuic.audioFrames}`);
    // The page on the WebSocket sends video that the relay takes (streams over the socket).
    const sent = (await pageState(sock)).send;
    assert.ok(sent.framesSent > 0, `the WebSocket page should have delivered video frames: ${JSON.stringify(sent)}`);
    // Neither page stored a choice it was forced into.
    assert.equal(await rememberedFor(sock, `127.0.0.1:${relay.port}`), null, 'a forced transport is not remembered');
    await assertClean(pages);
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    log(`FAILED (${wsKind}): ${e.message}`);
    printFailureLogs(pages, relay);
    throw e;
  } finally {
    await relay.stop();
    for (const browser of browsers) await browser.close().catch(() => {});
  }
}

/** Test 3: 'auto' falls back to the WebSocket, remembers it, and starts with it next time. */
async function autoFallback() {
  const started = Date.now();
  const relay = await startRelay();
  const relayHost = `127.0.0.1:${relay.port}`;
  let browser = null;
  const pages = new Map();
  try {
    browser = await launchBrowser('chromium');
    const room = `websocket-auto-${process.pid}`;
    const dead = await freePort(); // nothing listens there: WebTransport cannot connect
    const t0 = Date.now();
    const page = await openCall(browser, relay.base, room, 'auto', `&quic=127.0.0.1:${dead}`);
    pages.set('auto', page);
    log(`joined over the fallback in ${Date.now() - t0} ms (page load included)`);
    assert.equal(await transportOf(page), 'websocket', 'with WebTransport failing, the page should join over the WebSocket');
    assert.equal(await rememberedFor(page, relayHost), 'websocket', 'the winner should be remembered for the relay');

    // The same page again, WebTransport reachable now: the remembered WebSocket starts
    // first and opens within its head start, so it carries the call again.
    const again = await joinCall(page, `${relay.base}/?room=${room}&name=again&autojoin=1&${MEDIA}`, { name: 'again' });
    log(`loaded again: joined as peer ${again.peerId} over ${await transportOf(page)}`);
    assert.equal(await transportOf(page), 'websocket', 'the remembered transport should be tried first');

    // A fresh page (its own storage, nothing remembered): WebTransport first, and it wins.
    const fresh = await openCall(browser, relay.base, room, 'fresh');
    pages.set('fresh', fresh);
    assert.equal(await transportOf(fresh), 'webtransport', 'a page that remembers nothing should take WebTransport');
    assert.equal(await rememberedFor(fresh, relayHost), 'webtransport');
    // And the two, on different transports, hear and see each other.
    await decodes(fresh, 'fresh', 'again');
    await decodes(page, 'again', 'fresh');
    await assertClean(pages);
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    log(`FAILED: ${e.message}`);
    printFailureLogs(pages, relay);
    throw e;
  } finally {
    await relay.stop();
    await browser?.close().catch(() => {});
  }
}

/** A TCP proxy to 127.0.0.1:`port`; `cut()` drops every connection it carries now. */
async function startTcpProxy(port) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', end);
      s.on('close', end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const cut = () => {
    const n = sockets.size / 2;
    for (const s of [...sockets]) s.destroy();
    return n;
  };
  return { port: server.address().port, cut, close: () => (cut(), new Promise((r) => server.close(r))) };
}

/** Test 4: a page on the WebSocket loses its connection and takes its place back. */
async function resumeOverWebSocket() {
  const started = Date.now();
  const relay = await startRelay();
  const proxy = await startTcpProxy(relay.port);
  let browser = null;
  const pages = new Map();
  try {
    browser = await launchBrowser('chromium');
    const room = `websocket-resume-${process.pid}`;
    // Page a is served through the proxy, so that its relay (HTTP and WebSocket) is the proxy.
    const a = await openCall(browser, `http://127.0.0.1:${proxy.port}`, room, 'a', '&transport=ws');
    pages.set('a', a);
    const b = await openCall(browser, relay.base, room, 'b');
    pages.set('b', b);
    const before = await pageState(a);
    assert.equal(before.transport, 'websocket');
    const aOnB = await decodes(b, 'b', 'a');
    await decodes(a, 'a', 'b');

    const cut = Date.now();
    log(`cutting ${proxy.cut()} connection(s) of page a`);
    const after = await waitFor(
      async () => {
        const s = await pageState(a);
        if (s.error) throw new Error(`a shows an error: ${s.error}`);
        return !s.reconnecting && s.reconnects.resumed + s.reconnects.rejoined > 0 ? s : null;
      },
      { timeout: 20_000, describe: async () => JSON.stringify(await pageState(a)) },
    );
    log(`a is back after ${Date.now() - cut} ms: ${JSON.stringify(after.reconnects)}, "${after.status}"`);
    assert.equal(after.reconnects.resumed, 1, 'a should have its place resumed');
    assert.equal(after.peerId, before.peerId, 'a should be back with the same peer id');
    assert.deepEqual(after.producers, before.producers, "a's producers should be the same");
    assert.equal(after.transport, 'websocket', 'a should be back over the WebSocket');
    assert.equal(await transportOf(a), 'websocket');
    const aMid = tileOf(await pageState(b), 'a');
    const again = await decodes(b, 'b', 'a', { video: aMid.videoFrames + 10, audio: aMid.audioFrames + 25 });
    assert.equal(again.video.producerId, aOnB.video.producerId, "b should decode a's same producer");
    const bMid = tileOf(await pageState(a), 'b');
    await decodes(a, 'a', 'b', { video: bMid.videoFrames + 10, audio: bMid.audioFrames + 25 });
    await assertClean(pages);
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    log(`FAILED: ${e.message}`);
    printFailureLogs(pages, relay);
    throw e;
  } finally {
    await relay.stop();
    await proxy.close();
    await browser?.close().catch(() => {});
  }
}

const skipUnless = (kinds) => {
  const left = kinds.filter((k) => !browserKinds().includes(k));
  if (left.length) return `BROWSERS leaves out ${left.join(' and ')}`;
  if (kinds.includes('firefox') && !fs.existsSync(FIREFOX_PATH)) return `Firefox not found at ${FIREFOX_PATH}`;
  return false;
};

test('a Chromium page on the WebSocket and one on WebTransport see and hear each other', {
  timeout: TEST_TIMEOUT_MS,
  skip: skipUnless(['chromium']),
}, () => mixedTransports('chromium'));

test('a Firefox page on the WebSocket and a Chromium page on WebTransport see and hear each other', {
  timeout: TEST_TIMEOUT_MS,
  skip: skipUnless(['chromium', 'firefox']),
}, () => mixedTransports('firefox'));

test('auto: without a UDP path the page joins over the WebSocket, and remembers it', {
  timeout: TEST_TIMEOUT_MS,
  skip: skipUnless(['chromium']),
}, () => autoFallback());

test('a page on the WebSocket that loses its connection takes its place back', {
  timeout: TEST_TIMEOUT_MS,
  skip: skipUnless(['chromium']),
}, () => resumeOverWebSocket());
