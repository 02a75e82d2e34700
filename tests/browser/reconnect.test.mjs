// Reconnecting (docs/PROTOCOL.md section 16) in the web client.
//
// 1. A network blackout: page A reaches the relay through `synapse-sfu shaper`, page B
//    directly. Once they see each other, the shaper drops everything both ways for ~7 s
//    (the shaper cannot be reconfigured while it runs: it is stopped and started again on
//    the same address with --up-loss 1 --down-loss 1, then once more without loss). Two
//    shapers in a row carry A's path, and only the inner one is restarted: while no process
//    has its port, the kernel answers with ICMP "port unreachable", which Chromium takes as
//    the end of the connection at once; the outer shaper swallows those, so that A sees a
//    silent path, as on a real blackout, and has to notice the silence itself (5 s). A must
//    show "Reconnecting…", then be back in the call with the same peer id (its place
//    resumed) and decode B again; B must never remove A's tile, must show it as
//    reconnecting meanwhile (the relay's peer_interrupted; if A's resume takes over before
//    the relay noticed the old session was dead, peer_interrupted and peer_resumed come
//    back to back, so B's tile is watched with a MutationObserver rather than polled), and
//    decode A's video again from the same producer.
// 2. A relay restart: the relay is stopped (going_away) and started again on the same port
//    with the same certificate directory. Both pages show "Reconnecting…", join anew (the
//    new relay knows nothing of them: new peer ids, new producers) and see each other's
//    video again.
//
// Chromium and Firefox. Run: npm install --prefix tests/browser && node --test tests/browser/
// Env: as three-peer-call.test.mjs (SYNAPSE_BIN, SYNAPSE_WEB_ROOT, CHROMIUM_PATH, FIREFOX_PATH, BROWSERS).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';

import {
  browserKinds,
  joinCall,
  launchBrowser,
  log,
  pageState,
  printFailureLogs,
  sleep,
  startRelay,
  startShaper,
  waitFor,
} from './harness.mjs';

// Little video: two pages and their encoders and decoders share two cores.
const MEDIA = 'codec=vp8&width=320&height=240&fps=15&bitrate=300000';
const BLACKOUT_MS = 7000;
// Frames decoded after the link is back, to count as "decoding again".
const AGAIN_FRAMES = 10;
const GIVE_UP_SENTENCE = /could not be restored|could not be reached again/;

/** The remote tile of `name` in page state `s`, with its video consumer. */
const tileOf = (s, name) => s.tiles.find((t) => t.name === name);

async function openCall(browser, kind, relay, room, name, extra = '') {
  const page = await browser.newPage();
  // Chromium joins by itself; in Firefox the test clicks Join (a gesture lets audio run).
  const auto = kind === 'chromium' ? '&autojoin=1' : '';
  const state = await joinCall(page, `${relay.base}/?room=${room}&name=${name}${auto}&${MEDIA}${extra}`, { name });
  log(`${name} joined as peer ${state.peerId}: "${state.status}"`);
  return page;
}

/** Waits until `page` decodes video from `other` (more than `after` frames); resolves to its tile. */
function decodes(page, pageName, other, after = 0, timeout = 30_000) {
  return waitFor(
    async () => {
      const t = tileOf(await pageState(page), other);
      return t && t.videoFrames > after && t.video?.producerId ? t : null;
    },
    { timeout, describe: async () => `${pageName} decodes no video from ${other}: ${JSON.stringify(tileOf(await pageState(page), other))}` },
  );
}

/** Whether the "Reconnecting…" banner shows now. */
function bannerShows(page) {
  return page.evaluate(() => {
    const b = document.getElementById('reconnecting');
    return !!b && !b.hidden && b.textContent.startsWith('Reconnecting…') ? b.textContent : '';
  });
}

/**
 * Records, in `page`, whether the "Reconnecting…" banner shows at any moment from now on
 * (a reconnection can be over between two polls); `bannerSeen(page)` reads it.
 */
function watchBanner(page) {
  return page.evaluate(() => {
    const banner = document.getElementById('reconnecting');
    window.__bannerSeen = '';
    const check = () => {
      if (!banner.hidden && banner.textContent.startsWith('Reconnecting…')) window.__bannerSeen ||= banner.textContent;
    };
    new MutationObserver(check).observe(banner, { attributes: true, childList: true, characterData: true, subtree: true });
    check();
  });
}

const bannerSeen = (page) => page.evaluate(() => window.__bannerSeen);

/** Watches, in `page`, the tile of peer `peerId`: whether it was removed, whether it showed "reconnecting". */
function watchTile(page, peerId) {
  return page.evaluate((id) => {
    const seen = { removed: false, reconnecting: false };
    window.__tileWatch = seen;
    const tile = document.querySelector(`[data-peer-id="${id}"]`);
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.type === 'attributes' && tile.dataset.reconnecting === 'true') seen.reconnecting = true;
        if (r.type === 'childList' && [...r.removedNodes].includes(tile)) seen.removed = true;
      }
    }).observe(tile, { attributes: true, attributeFilter: ['data-reconnecting'] });
    new MutationObserver((records) => {
      for (const r of records) if ([...r.removedNodes].includes(tile)) seen.removed = true;
    }).observe(tile.parentNode, { childList: true });
    // The participant list is redrawn; a line marked reconnecting counts too.
    new MutationObserver(() => {
      if (document.querySelector(`#people-list [data-participant-id="${id}"][data-reconnecting="true"]`)) seen.reconnecting = true;
    }).observe(document.getElementById('people-list'), { childList: true, subtree: true });
    return !!tile;
  }, peerId);
}

async function assertClean(pages) {
  for (const [name, page] of pages) {
    const s = await pageState(page);
    assert.equal(s.error, '', `${name} shows an error`);
    assert.deepEqual(page.pageErrors, [], `${name} threw`);
  }
}

async function blackout(kind) {
  const started = Date.now();
  const relay = await startRelay();
  let shaper = null;
  let front = null;
  let browser = null;
  const pages = new Map();
  try {
    shaper = await startShaper(relay.port, {});
    const addr = shaper.addr; // the inner shaper, restarted on this address
    front = await startShaper(Number(addr.split(':').pop()), {});
    browser = await launchBrowser(kind);
    log(`${browser.version}; web client from ${process.env.SYNAPSE_WEB_ROOT || 'the binary (embedded copy)'}`);
    const room = `reconnect-${kind}-${process.pid}`;
    // WebTransport only: with `auto` the page would come back over the WebSocket (TCP is
    // not shaped), and this test is about resuming over the path that was cut.
    const a = await openCall(browser, kind, relay, room, 'a', `&quic=${front.addr}&transport=wt`);
    pages.set('a', a);
    const b = await openCall(browser, kind, relay, room, 'b');
    pages.set('b', b);
    const aBefore = await pageState(a);
    assert.ok(aBefore.extensions.includes('resume'), `the relay should offer resume: ${aBefore.extensions}`);
    assert.ok(aBefore.resumeGraceMs > 0, 'the join result should carry resume_grace_ms');
    const aOnB = await decodes(b, 'b', 'a');
    await decodes(a, 'a', 'b');
    log(`both decode each other; a is peer ${aBefore.peerId}, its video producer ${aOnB.video.producerId} (b's consumer ${aOnB.video.consumerId})`);
    assert.ok(await watchTile(b, aBefore.peerId), "b should have a's tile");

    // The blackout: everything dropped both ways.
    await shaper.stop();
    shaper = await startShaper(relay.port, { 'up-loss': 1, 'down-loss': 1 }, { listen: addr });
    const blackoutAt = Date.now();
    log(`blackout for ${BLACKOUT_MS / 1000} s`);
    let banner = '';
    let bannerAfter = null;
    let attemptsSeen = 0;
    while (Date.now() - blackoutAt < BLACKOUT_MS) {
      const text = await bannerShows(a);
      if (text && !banner) {
        banner = text;
        bannerAfter = Date.now() - blackoutAt;
        log(`a shows after ${bannerAfter} ms: "${text}"`);
      }
      const s = await pageState(a);
      attemptsSeen = Math.max(attemptsSeen, s.reconnecting?.attempts ?? 0);
      assert.equal(s.inCall, true, 'a should stay on the call screen while it reconnects');
      assert.ok(tileOf(s, 'b'), "a should keep b's tile while it reconnects");
      await sleep(250);
    }
    await shaper.stop();
    shaper = await startShaper(relay.port, {}, { listen: addr });
    const restoredAt = Date.now();
    log(`link restored; a had made ${attemptsSeen} attempt(s)`);
    assert.ok(banner, 'a should show "Reconnecting…" during the blackout');
    // Nothing closed A's session: it must have noticed the silence (5 s without a word).
    assert.ok(bannerAfter >= 4000, `a showed "Reconnecting…" after ${bannerAfter} ms: before any silence timeout`);

    const aAfter = await waitFor(
      async () => {
        const s = await pageState(a);
        if (s.error) throw new Error(`a shows an error: ${s.error}`);
        return !s.reconnecting && s.reconnects.resumed + s.reconnects.rejoined > 0 ? s : null;
      },
      { timeout: 30_000, describe: async () => JSON.stringify(await pageState(a)) },
    );
    log(`a is back after ${Date.now() - restoredAt} ms: ${JSON.stringify(aAfter.reconnects)}, "${aAfter.status}"`);
    assert.ok(aAfter.reconnects.resumed >= 1, 'a should have its place resumed');
    assert.equal(aAfter.reconnects.rejoined, 0, 'a should not have joined anew');
    assert.equal(aAfter.peerId, aBefore.peerId, 'a should be back with the same peer id');
    assert.deepEqual(aAfter.producers, aBefore.producers, "a's producers should be the same");
    assert.equal(await bannerShows(a), '', 'the banner should be gone');

    const bMid = tileOf(await pageState(b), 'a');
    const aMid = tileOf(await pageState(a), 'b');
    const aOnBAgain = await decodes(b, 'b', 'a', bMid.videoFrames + AGAIN_FRAMES);
    const bOnAAgain = await decodes(a, 'a', 'b', aMid.videoFrames + AGAIN_FRAMES);
    log(`b decodes a again (producer ${aOnBAgain.video.producerId}, ${aOnBAgain.videoFrames} frames); a decodes b again (consumer ${bOnAAgain.video.consumerId})`);
    assert.equal(aOnBAgain.video.producerId, aOnB.video.producerId, "b should decode a's same producer");
    assert.equal(aOnBAgain.peerId, aBefore.peerId);
    const watched = await b.evaluate(() => window.__tileWatch);
    log(`b's tile of a: ${JSON.stringify(watched)}`);
    assert.equal(watched.removed, false, "b should never remove a's tile");
    assert.equal(watched.reconnecting, true, 'b should show a as reconnecting');
    assert.equal(tileOf(await pageState(b), 'a').reconnecting, false, 'b should show a as back');
    await assertClean(pages);
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    log(`FAILED (${kind}): ${e.message}`);
    printFailureLogs(pages, relay);
    if (shaper) console.log(`---- shaper log ----\n${shaper.logs().split('\n').slice(-20).join('\n')}`);
    throw e;
  } finally {
    await relay.stop();
    await shaper?.stop();
    await front?.stop();
    await browser?.close().catch(() => {});
  }
}

/**
 * `crash`: the relay is killed (no going_away): the pages still hold resume tokens, the new
 * relay answers resume_failed, and they join anew on the same session.
 */
async function relayRestart(kind, { crash = false } = {}) {
  const started = Date.now();
  let relay = await startRelay();
  const { port, certsDir } = relay;
  let browser = null;
  const pages = new Map();
  try {
    browser = await launchBrowser(kind);
    const room = `restart-${kind}-${process.pid}`;
    for (const name of ['a', 'b']) pages.set(name, await openCall(browser, kind, relay, room, name));
    const [a, b] = [pages.get('a'), pages.get('b')];
    const before = { a: await pageState(a), b: await pageState(b) };
    await decodes(b, 'b', 'a');
    await decodes(a, 'a', 'b');
    log('both decode each other; restarting the relay');

    for (const page of pages.values()) await watchBanner(page);
    const stopping = Date.now();
    await relay.stop({ keepCerts: true, kill: crash });
    log(`relay ${crash ? 'killed' : 'stopped'} in ${Date.now() - stopping} ms`);
    relay = await startRelay({ port, certsDir });
    log(`relay up again on port ${port} ${Date.now() - stopping} ms after the stop began`);

    for (const [name, page] of pages) {
      const s = await waitFor(
        async () => {
          const v = await pageState(page);
          if (v.error) throw new Error(`${name} shows an error: ${v.error}`);
          return !v.reconnecting && v.reconnects.rejoined > 0 ? v : null;
        },
        { timeout: 30_000, describe: async () => JSON.stringify(await pageState(page)) },
      );
      log(`${name} rejoined as peer ${s.peerId} (was ${before[name].peerId}): ${JSON.stringify(s.reconnects)} "${s.status}"`);
      if (crash) assert.equal(s.reconnects.resumeFailed, 1, `${name} should have been told resume_failed, then joined anew`);
      else assert.equal(s.reconnects.resumeFailed, 0, `${name} left on going_away: nothing to resume`);
      assert.ok(await bannerSeen(page), `${name} should have shown "Reconnecting…"`);
      assert.equal(s.inCall, true);
    }
    // Each sees the other's new producer (the old tile went with the old peer).
    const aOnB = await decodes(b, 'b', 'a', AGAIN_FRAMES);
    const bOnA = await decodes(a, 'a', 'b', AGAIN_FRAMES);
    const after = { a: await pageState(a), b: await pageState(b) };
    log(`b decodes a's producer ${aOnB.video.producerId}, a decodes b's ${bOnA.video.producerId}`);
    assert.equal(aOnB.video.producerId, after.a.producers.video, "b should decode a's new video producer");
    assert.equal(bOnA.video.producerId, after.b.producers.video, "a should decode b's new video producer");
    for (const s of Object.values(after)) assert.equal(s.tiles.length, 1, `one remote tile each: ${JSON.stringify(s.tiles.map((t) => t.name))}`);
    await assertClean(pages);
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    log(`FAILED (${kind}): ${e.message}`);
    printFailureLogs(pages, relay);
    throw e;
  } finally {
    await relay.stop();
    fs.rmSync(certsDir, { recursive: true, force: true });
    await browser?.close().catch(() => {});
  }
}

/**
 * The window passing: the page goes back to the join screen and says so. `crash`: the relay
 * is killed (no going_away: the page tries for the grace period); otherwise it is stopped
 * (going_away: the page tries for 10 s).
 */
async function givesUp(kind, { crash = false } = {}) {
  let relay = await startRelay();
  const { port, certsDir } = relay;
  let browser = null;
  const pages = new Map();
  try {
    browser = await launchBrowser(kind);
    const a = await openCall(browser, kind, relay, `gone-${kind}-${process.pid}`, 'a');
    pages.set('a', a);
    await relay.stop({ keepCerts: true, kill: crash });
    relay = null;
    const s = await waitFor(
      async () => {
        const v = await pageState(a);
        return !v.inCall && v.error ? v : null;
      },
      { timeout: 45_000, describe: async () => JSON.stringify(await pageState(a)) },
    );
    log(`a after the relay stayed away: "${s.error}"`);
    assert.match(s.error, crash ? /The connection to the relay was lost and could not be restored/ : /relay is going away/);
    assert.match(s.error, GIVE_UP_SENTENCE);
    assert.match(s.error, /Join again/);
    assert.equal(s.joinScreen, true);
    assert.deepEqual(a.pageErrors, []);
  } catch (e) {
    printFailureLogs(pages, relay);
    throw e;
  } finally {
    await relay?.stop();
    fs.rmSync(certsDir, { recursive: true, force: true });
    await browser?.close().catch(() => {});
  }
}

for (const kind of ['chromium', 'firefox']) {
  const skip = !browserKinds().includes(kind) && `BROWSERS leaves out ${kind}`;
  test(`a page behind a blackout takes its place back (${kind})`, { timeout: 150_000, skip }, () => blackout(kind));
  test(`pages rejoin a relay that restarts (${kind})`, { timeout: 150_000, skip }, () => relayRestart(kind));
  test(`pages rejoin a relay that crashed and restarted: resume_failed, then join anew (${kind})`, { timeout: 150_000, skip }, () =>
    relayRestart(kind, { crash: true }),
  );
  test(`a relay that stays away sends the page back to the join screen (${kind})`, { timeout: 90_000, skip }, () => givesUp(kind));
  test(`a relay that crashes and stays away: the page tries for the grace period (${kind})`, { timeout: 90_000, skip }, () =>
    givesUp(kind, { crash: true }),
  );
}
