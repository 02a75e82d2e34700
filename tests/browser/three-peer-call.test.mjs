// Three real browsers (headless Chromium, fake camera and microphone) hold a call
// through the relay: each must decode the others' video and audio, one pauses and
// resumes its camera and microphone, one leaves and disappears from the others, and the
// relay's shutdown makes the last two leave. A screenshot of the call is kept.
//
// Run: npm install --prefix tests/browser && node --test tests/browser/
// Env: SYNAPSE_BIN (relay binary, default target/debug/synapse-sfu),
//      SYNAPSE_WEB_ROOT (serve the web client from a directory instead of the binary),
//      CHROMIUM_PATH (default /usr/bin/chromium).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { REPO_ROOT, launchBrowser, log, sleep, startRelay, waitFor } from './harness.mjs';

const NAMES = ['ada', 'bo', 'cy'];
// Small settings so that three encoders and six decoders fit on a 2-core machine.
const MEDIA = 'width=320&height=240&fps=15&bitrate=300000';
const MIN_VIDEO_FRAMES = 60;
const MIN_AUDIO_FRAMES = 100;
const MEDIA_TIMEOUT_MS = 90_000;
const ARTIFACTS = path.join(REPO_ROOT, 'test-artifacts');
const SCREENSHOT = path.join(ARTIFACTS, 'three-peer-call.png');

/** What a page shows: status texts and its remote tiles' counters (from the DOM). */
function pageView(page) {
  return page.evaluate(() => ({
    status: document.getElementById('call-status')?.textContent ?? '',
    error: document.getElementById('error')?.textContent ?? '',
    inCall: !document.getElementById('call-screen')?.hidden,
    tiles: [...document.querySelectorAll('[data-peer-name]')].map((t) => ({
      name: t.dataset.peerName,
      video: Number(t.dataset.videoFrames ?? 0),
      audio: Number(t.dataset.audioFrames ?? 0),
      badges: t.querySelector('.badges')?.textContent ?? '',
    })),
  }));
}

/**
 * Pixel statistics of every remote video canvas, taken twice 600 ms apart: the fake
 * camera draws a moving pattern, so a live canvas has spread-out pixel values and
 * changes over time. A blank, frozen or never-drawn canvas fails one of the two.
 */
function canvasCheck(page) {
  return page.evaluate(async () => {
    const sample = () =>
      [...document.querySelectorAll('[data-peer-name] canvas')].map((canvas) => {
        const { width, height } = canvas;
        const data = canvas.getContext('2d').getImageData(0, 0, width, height).data;
        let sum = 0;
        let sumSq = 0;
        let hash = 0;
        const n = width * height;
        for (let i = 0; i < data.length; i += 4) {
          const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
          sum += y;
          sumSq += y * y;
          hash = (hash * 31 + data[i] + (data[i + 1] << 8) + (data[i + 2] << 16)) >>> 0;
        }
        const mean = sum / n;
        return {
          name: canvas.closest('[data-peer-name]').dataset.peerName,
          width,
          height,
          stddev: Math.sqrt(Math.max(0, sumSq / n - mean * mean)),
          hash,
        };
      });
    const first = sample();
    await new Promise((r) => setTimeout(r, 600));
    const second = sample();
    return first.map((a, i) => ({ ...a, changed: second[i]?.hash !== a.hash }));
  });
}

/** Distinct colours in a PNG, counted by the browser itself (no PNG decoder needed here). */
function pngColourCount(page, png) {
  return page.evaluate(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) {
      colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
      if (colours.size > 1000) break;
    }
    return { width: bitmap.width, height: bitmap.height, colours: colours.size };
  }, png.toString('base64'));
}

test('three browsers hold a call through the relay', { timeout: 150_000 }, async () => {
  const started = Date.now();
  // No picture from an earlier run may pass for this run's.
  for (const file of fs.existsSync(ARTIFACTS) ? fs.readdirSync(ARTIFACTS) : []) {
    if (file === path.basename(SCREENSHOT) || /^failure-.*\.png$/.test(file)) fs.rmSync(path.join(ARTIFACTS, file));
  }
  const relay = await startRelay();
  let browser = null;
  const pages = new Map(); // name -> page
  const pageLogs = new Map(); // name -> console lines, printed on failure
  try {
    browser = await launchBrowser();
    log(`chromium ${browser.version()}; web client from ${process.env.SYNAPSE_WEB_ROOT || 'the binary (embedded copy)'}`);
    const room = `browser-test-${process.pid}`;

    for (const name of NAMES) {
      const context = await browser.newContext();
      const page = await context.newPage();
      const lines = [];
      pageLogs.set(name, lines);
      page.on('console', (m) => lines.push(`${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => lines.push(`pageerror: ${e.message}`));
      pages.set(name, page);
      const res = await page.goto(`${relay.base}/?room=${room}&name=${name}&autojoin=1&${MEDIA}`);
      assert.equal(
        res.status(),
        200,
        'the relay does not serve the web client at / (a binary built before web-client/ existed? set SYNAPSE_WEB_ROOT)',
      );
      // Join one after the other, so the join result of each names the ones before.
      const view = await waitFor(
        async () => {
          const v = await pageView(page);
          if (v.error) throw new Error(`${name} shows an error: ${v.error}`);
          return v.inCall && v.status ? v : null;
        },
        { timeout: 20_000, describe: async () => JSON.stringify(await pageView(page)) },
      );
      log(`${name} joined: "${view.status}"`);
      const before = NAMES.slice(0, NAMES.indexOf(name));
      if (before.length === 0) {
        assert.match(view.status, /started a new call/i, `${name} should start the call`);
      } else {
        assert.match(view.status, /joined the call/i, `${name} should join an ongoing call`);
        for (const other of before) assert.ok(view.status.includes(other), `${name}'s status should name ${other}`);
      }
    }

    log(`waiting for each page to decode >= ${MIN_VIDEO_FRAMES} video and >= ${MIN_AUDIO_FRAMES} audio frames from each other page`);
    let lastReport = 0;
    await waitFor(
      async () => {
        const views = await Promise.all(NAMES.map(async (n) => [n, await pageView(pages.get(n))]));
        for (const [n, v] of views) if (v.error) throw new Error(`${n} shows an error: ${v.error}`);
        if (Date.now() - lastReport > 5000) {
          lastReport = Date.now();
          const summary = views
            .map(([n, v]) => `${n} <- ${v.tiles.map((t) => `${t.name}:v${t.video}/a${t.audio}`).join(' ')}`)
            .join(' | ');
          log(`progress: ${summary}`);
        }
        return views.every(([n, v]) =>
          NAMES.filter((o) => o !== n).every((other) => {
            const tile = v.tiles.find((t) => t.name === other);
            return tile && tile.video >= MIN_VIDEO_FRAMES && tile.audio >= MIN_AUDIO_FRAMES;
          }),
        );
      },
      {
        timeout: MEDIA_TIMEOUT_MS,
        interval: 500,
        describe: async () => JSON.stringify(await Promise.all(NAMES.map((n) => pageView(pages.get(n))))),
      },
    );
    log('all pages decode video and audio from both others');

    for (const name of NAMES) {
      const canvases = await canvasCheck(pages.get(name));
      log(`${name} canvases: ${JSON.stringify(canvases)}`);
      assert.equal(canvases.length, 2, `${name} should show two remote video canvases`);
      for (const c of canvases) {
        assert.ok(c.stddev > 5, `${name}'s canvas of ${c.name} looks blank (stddev ${c.stddev.toFixed(2)})`);
        assert.ok(c.changed, `${name}'s canvas of ${c.name} did not change in 600 ms (frozen video)`);
      }
    }

    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const png = await pages.get('ada').screenshot({ path: SCREENSHOT });
    const shot = await pngColourCount(pages.get('ada'), png);
    log(`screenshot ${SCREENSHOT}: ${shot.width}x${shot.height}, ${shot.colours}${shot.colours > 1000 ? '+' : ''} colours`);
    assert.ok(shot.colours > 50, `the screenshot is (nearly) a single colour: ${shot.colours} colours`);

    // bo turns camera and microphone off: ada sees it and stops receiving bo's media;
    // turned on again, bo's media comes back (the resumed video starts at a keyframe).
    const bo = pages.get('bo');
    const ada = pages.get('ada');
    const boOnAda = async () => (await pageView(ada)).tiles.find((t) => t.name === 'bo');
    await bo.click('#camera');
    await bo.click('#mic');
    await waitFor(async () => /camera off/.test((await boOnAda()).badges) && /muted/.test((await boOnAda()).badges), {
      timeout: 10_000,
      describe: async () => JSON.stringify(await boOnAda()),
    });
    // Frames already in flight may still land, however long a slow machine takes to
    // deliver them; then the counters must stand still for 1.5 s. Live media would move
    // them by ~22 video and ~75 audio frames in that time, so the wait cannot pass while
    // bo's media keeps coming.
    const paused = await boOnAda();
    let stillPaused = paused;
    await waitFor(
      async () => {
        const before = await boOnAda();
        await sleep(1500);
        stillPaused = await boOnAda();
        return stillPaused.video === before.video && stillPaused.audio === before.audio;
      },
      { timeout: 30_000, interval: 0, describe: async () => `counters for bo kept moving: ${JSON.stringify(await boOnAda())}` },
    );
    log(`bo paused: ada's counters for bo went from v${paused.video}/a${paused.audio} to v${stillPaused.video}/a${stillPaused.audio}, then stood still for 1.5 s`);
    await bo.click('#camera');
    await bo.click('#mic');
    await waitFor(
      async () => {
        const t = await boOnAda();
        return t.badges === '' && t.video >= stillPaused.video + 15 && t.audio >= stillPaused.audio + 25;
      },
      { timeout: 20_000, describe: async () => JSON.stringify(await boOnAda()) },
    );
    log(`bo resumed: ${JSON.stringify(await boOnAda())}`);

    // cy leaves: its tile must go from the other two pages, and cy returns to the join screen.
    const leaver = pages.get('cy');
    await leaver.click('#leave');
    for (const name of ['ada', 'bo']) {
      await waitFor(
        async () => !(await pageView(pages.get(name))).tiles.some((t) => t.name === 'cy'),
        { timeout: 15_000, describe: async () => JSON.stringify(await pageView(pages.get(name))) },
      );
      log(`${name} no longer shows cy`);
    }
    const after = await pageView(leaver);
    assert.equal(after.inCall, false, 'cy should be back on the join screen');
    assert.equal(after.error, '', 'leaving should not show an error');
    assert.deepEqual(after.tiles, [], 'cy should show no tiles after leaving');
    // The two who stayed still see each other, and nothing went wrong on their pages.
    for (const name of ['ada', 'bo']) {
      const v = await pageView(pages.get(name));
      assert.deepEqual(v.tiles.map((t) => t.name), [name === 'ada' ? 'bo' : 'ada']);
      assert.equal(v.error, '', `${name} shows an error`);
    }

    // Stopping the relay (SIGINT) sends going_away: the pages still in the call leave
    // and say why, instead of waiting to be cut off.
    const stopping = Date.now();
    await relay.stop();
    log(`relay stopped in ${Date.now() - stopping} ms`);
    for (const name of ['ada', 'bo']) {
      const v = await waitFor(
        async () => {
          const view = await pageView(pages.get(name));
          return !view.inCall && view.error ? view : null;
        },
        { timeout: 10_000, describe: async () => JSON.stringify(await pageView(pages.get(name))) },
      );
      log(`${name} after the relay stopped: "${v.error}"`);
      assert.match(v.error, /relay is going away/, `${name} should say that the relay is going away`);
    }
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    log(`FAILED: ${e.message}`);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    for (const [name, page] of pages) {
      await page.screenshot({ path: path.join(ARTIFACTS, `failure-${name}.png`) }).catch(() => {});
      console.log(`---- console of ${name} (last 50 lines) ----\n${(pageLogs.get(name) ?? []).slice(-50).join('\n')}`);
    }
    console.log(`---- relay log (last 200 lines) ----\n${relay.logs().split('\n').slice(-200).join('\n')}`);
    throw e;
  } finally {
    // Relay first: pages that get its going_away leave at once, so it need not wait out
    // its drain deadline for sessions of a browser that vanished.
    await relay.stop();
    await browser?.close().catch(() => {});
  }
});
