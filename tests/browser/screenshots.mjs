// Screenshots of the web client for the README (not a test): starts the relay, shows the
// check before joining, holds a call of three Chromium pages (fake cameras; Ada's fake
// microphone speaks, the others are silent), writes a few chat messages, and saves what
// Cy's page shows:
//
//   docs/screenshots/prejoin.png       the join screen with the camera and microphone checked:
//                                      the camera's preview, the pickers, the level meter up
//   docs/screenshots/call.png          the call: three tiles (Ada's glowing as the main
//                                      speaker) with their stats (the Stats button), the
//                                      device pickers, the participant list and the chat
//   docs/screenshots/phone.png         the same call on a phone (Cy's page at 390x844, stats
//                                      off as by default): the header wrapped, one tile a row
//   docs/screenshots/screen-share.png  the same room while Bo shares a screen, laid out large
//
// Each picture of the call is taken once every remote canvas of Cy's page (on the phone:
// every one in view) shows decoded, moving video (not a black or frozen tile), Ada's tile is
// marked as the main speaker, and the latencies on the tiles have settled, and is kept only
// if that still holds right after it (else taken again; the script fails after a minute).
// The check before joining is taken while the preview plays and the meter is up. While the screen is shared, Ada's and Bo's pages
// count as hidden (as background tabs: their video consumers pause), so that only Cy's page
// decodes the 1920x1080 screen on this 2-core machine: only Cy's page is photographed.
//
// Run: npm install --prefix tests/browser && node tests/browser/screenshots.mjs
// Env: as the browser tests (SYNAPSE_BIN, SYNAPSE_WEB_ROOT, CHROMIUM_PATH); OUT_DIR to write
// elsewhere than docs/screenshots/.

import fs from 'node:fs';
import path from 'node:path';

import { REPO_ROOT, fakeMicrophoneArgs, joinCall, launchBrowser, log, pageState, printFailureLogs, sleep, startRelay, waitFor } from './harness.mjs';

const OUT_DIR = process.env.OUT_DIR || path.join(REPO_ROOT, 'docs/screenshots');
const VIEWPORT = { width: 1440, height: 900 };
const PHONE = { width: 390, height: 844 };
const PREJOIN_VIEWPORT = { width: 960, height: 720 };
// Moderate settings: three pages encode and decode on a 2-core machine (at 640x480 with
// simulcast it falls behind, and the latencies on the tiles show it).
const MEDIA = 'width=480&height=360&fps=15&bitrate=500000&simulcast=0&screenBitrate=1000000';
const TIMEOUT_MS = 60_000;
const CHAT = [
  ['Ada', 'Morning! Can everyone see me?'],
  ['Bo', 'Loud and clear. I will share the build dashboard in a minute.'],
  ['Cy', 'Great, go ahead.'],
];

/** Pixel spread and change of every remote canvas (camera and screen), twice 600 ms apart. */
function canvases(page) {
  return page.evaluate(async () => {
    // Sampled at 160x90: reading a 1920x1080 screen every second would load the machine.
    const small = document.createElement('canvas');
    small.width = 160;
    small.height = 90;
    const ctx = small.getContext('2d', { willReadFrequently: true });
    const sample = () =>
      [...document.querySelectorAll('#tiles canvas')].map((canvas) => {
        ctx.drawImage(canvas, 0, 0, small.width, small.height);
        const data = ctx.getImageData(0, 0, small.width, small.height).data;
        let sum = 0;
        let sumSq = 0;
        let hash = 0;
        for (let i = 0; i < data.length; i += 4) {
          const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
          sum += y;
          sumSq += y * y;
          hash = (hash * 31 + data[i] + (data[i + 1] << 8) + (data[i + 2] << 16)) >>> 0;
        }
        const n = data.length / 4;
        const mean = sum / n;
        const tile = canvas.closest('.tile');
        const r = canvas.getBoundingClientRect();
        return {
          tile: tile.dataset.peerName ?? `${tile.dataset.screenPeerName}'s screen`,
          // Whether any of it is in the viewport (a tile out of sight receives no video).
          inView: r.bottom > 0 && r.top < window.innerHeight && r.right > 0 && r.left < window.innerWidth,
          size: `${canvas.width}x${canvas.height}`,
          stddev: Math.sqrt(Math.max(0, sumSq / n - mean * mean)),
          hash,
        };
      });
    const first = sample();
    await new Promise((r) => setTimeout(r, 600));
    const second = sample();
    return first.map((c, i) => ({ ...c, changed: second[i]?.hash !== c.hash }));
  });
}

/**
 * Whether Cy's page is ready for a picture: `canvasCount` remote canvases with live video,
 * Ada marked as the main speaker, video latency under 400 ms and audio latency (with its
 * playout buffer) under 1.5 s on every remote tile (with three pages on two cores the
 * audio figure sits near 1 s; with two pages near 0.15 s). With `inViewOnly` only the
 * canvases and tiles in the viewport count (the others receive no video). Resolves to a
 * reason it is not, or ''.
 */
async function notReady(page, canvasCount, { inViewOnly = false } = {}) {
  const s = await pageState(page);
  if (s.error) throw new Error(`Cy shows an error: ${s.error}`);
  const c = await canvases(page);
  if (c.length !== canvasCount) return `${c.length} canvases`;
  const dead = c.filter((x) => (x.inView || !inViewOnly) && !(x.stddev > 5 && x.changed));
  if (dead.length) return `not live: ${JSON.stringify(dead)}`;
  const ada = await page.evaluate(() => document.querySelector('[data-peer-name="Ada"]')?.dataset.mainSpeaker === 'true');
  if (!ada) return 'Ada is not marked as speaking';
  const seen = new Set(c.filter((x) => x.inView || !inViewOnly).map((x) => x.tile));
  for (const [name, text] of Object.entries(s.overlays)) {
    if (!seen.has(name)) continue;
    const video = /video (\d+) ms/.exec(text);
    const audio = /audio (\d+) ms/.exec(text);
    if (!video || Number(video[1]) > 400 || !audio || Number(audio[1]) > 1500) return `${name}: ${text.replace(/\n/g, ' | ')}`;
  }
  return '';
}

/**
 * Takes the picture once Cy's page is ready, and keeps it if it still is right after:
 * the part of the viewport with something in it, the whole page (`fullPage`), or the
 * viewport as it is (`viewport`, the phone).
 */
async function capture(page, file, canvasCount, { fullPage = false, viewport = false } = {}) {
  const deadline = Date.now() + TIMEOUT_MS;
  const ready = { inViewOnly: viewport };
  let why = '';
  while (Date.now() < deadline) {
    why = await notReady(page, canvasCount, ready);
    if (!why) {
      const options = fullPage ? { fullPage: true } : viewport ? {} : { clip: await contentBox(page) };
      const png = await page.page.screenshot(options);
      why = await notReady(page, canvasCount, ready);
      if (!why) {
        fs.writeFileSync(file, png);
        log(`wrote ${file}: ${JSON.stringify(await canvases(page))}`);
        return;
      }
    }
    log(`not yet: ${why}`);
    await sleep(1000);
  }
  throw new Error(`${file}: Cy's page was not ready within ${TIMEOUT_MS} ms: ${why}`);
}

/** The part of the viewport with something in it: down to the lowest of tiles, notes and panels. */
function contentBox(page) {
  return page.evaluate(() => {
    const bottom = Math.max(
      ...['stage', 'side'].map((id) => document.getElementById(id).getBoundingClientRect().bottom),
    );
    return { x: 0, y: 0, width: window.innerWidth, height: Math.min(window.innerHeight, Math.ceil(bottom + 16)) };
  });
}

/**
 * The check before joining, in a page of its own (`browser`'s fake microphone speaks): the
 * camera's preview playing, the pickers filled, the meter up. Taken while the microphone
 * is loud (the voice pauses between syllables), and kept if it still is right after.
 */
async function capturePrejoin(browser, url, file) {
  const page = await browser.newPage({ viewport: PREJOIN_VIEWPORT });
  try {
    await page.goto(url);
    await waitFor(async () => (await pageState(page)).joinEnabled, { timeout: TIMEOUT_MS });
    await page.click('#preview-start');
    const preview = () =>
      page.evaluate(() => {
        const video = document.getElementById('preview-video');
        return {
          playing: video.videoWidth > 0 && !video.paused && video.currentTime > 0.5,
          cameras: Number(document.getElementById('preview-camera-select').dataset.deviceCount ?? 0),
          microphones: Number(document.getElementById('preview-mic-select').dataset.deviceCount ?? 0),
          level: Number(document.getElementById('mic-meter').dataset.level),
          fill: document.querySelector('#mic-meter > div').style.width,
          error: document.getElementById('preview-error').hidden ? '' : document.getElementById('preview-error').textContent,
        };
      });
    await waitFor(
      async () => {
        const p = await preview();
        if (p.error) throw new Error(`the check before joining shows an error: ${p.error}`);
        return p.playing && p.cameras > 0 && p.microphones > 0;
      },
      { timeout: TIMEOUT_MS, describe: async () => JSON.stringify(await preview()) },
    );
    // Loud enough to fill a good part of the meter (-60 dBFS empty, 0 dBFS full).
    const loud = (p) => p.level > -24;
    const deadline = Date.now() + TIMEOUT_MS;
    let last = null;
    while (Date.now() < deadline) {
      last = await preview();
      if (loud(last)) {
        await sleep(120); // the meter's bar follows the level in 0.1 s
        const clip = await page.evaluate(() => {
          const bottom = document.getElementById('join-screen').getBoundingClientRect().bottom;
          return { x: 0, y: 0, width: window.innerWidth, height: Math.min(window.innerHeight, Math.ceil(bottom + 16)) };
        });
        const png = await page.page.screenshot({ clip });
        const after = await preview();
        if (loud(after)) {
          fs.writeFileSync(file, png);
          log(`wrote ${file}: ${JSON.stringify(after)}`);
          return;
        }
      }
      await sleep(30);
    }
    throw new Error(`${file}: the meter never showed a loud microphone: ${JSON.stringify(last)}`);
  } finally {
    await page.page.context().close().catch(() => {});
  }
}

/** Shows or hides the stats on the tiles of `page` (the Stats button). */
async function setStats(page, on) {
  const pressed = await page.evaluate(() => document.getElementById('stats-toggle').getAttribute('aria-pressed') === 'true');
  if (pressed !== on) await page.click('#stats-toggle');
}

/** Makes `page` count as hidden (a background tab): its video consumers pause. */
function hide(page) {
  return page.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
}

async function send(page, text) {
  await page.evaluate((t) => {
    document.getElementById('chat-input').value = t;
  }, text);
  await page.click('#chat-send');
  await waitFor(() => page.evaluate((t) => [...document.querySelectorAll('#chat-messages .chat-text')].some((m) => m.textContent === t), text), {
    timeout: TIMEOUT_MS,
  });
}

async function main() {
  fs.mkdirSync(OUT_DIR, { recursive: true });
  const relay = await startRelay();
  const browsers = [];
  const pages = new Map();
  try {
    const voice = await launchBrowser('chromium', { chromiumArgs: fakeMicrophoneArgs('voice') });
    browsers.push(voice);
    const silence = await launchBrowser('chromium', { chromiumArgs: fakeMicrophoneArgs('silence') });
    browsers.push(silence);
    log(`${voice.version}; web client from ${process.env.SYNAPSE_WEB_ROOT || 'the binary (embedded copy)'}`);
    const room = 'design-review';

    // (0) The check before joining, as a fourth person about to join would see it.
    await capturePrejoin(voice, `${relay.base}/?room=${room}&name=Dee&${MEDIA}`, path.join(OUT_DIR, 'prejoin.png'));

    for (const [name, browser] of [['Ada', voice], ['Bo', silence], ['Cy', silence]]) {
      const page = await browser.newPage({ viewport: VIEWPORT });
      pages.set(name, page);
      await joinCall(page, `${relay.base}/?room=${room}&name=${name}&autojoin=1&${MEDIA}`, { name, timeout: TIMEOUT_MS });
      log(`${name} joined`);
    }
    const cy = pages.get('Cy');
    for (const [name, text] of CHAT) await send(pages.get(name), text);

    // (a) The call: Ada speaks, everyone's video is decoded, the chat has its messages; the
    // stats are shown (the Stats button).
    await setStats(cy, true);
    await capture(cy, path.join(OUT_DIR, 'call.png'), 2);

    // (a') The same page on a phone, as it starts: no stats over the pictures.
    await setStats(cy, false);
    await cy.page.setViewportSize(PHONE);
    await cy.evaluate(() => window.scrollTo(0, 0));
    await sleep(1500); // the tiles in view ask for their video again
    await capture(cy, path.join(OUT_DIR, 'phone.png'), 2, { viewport: true });
    await cy.page.setViewportSize(VIEWPORT);
    await setStats(cy, true);

    // (b) Bo shares a screen: a large tile first, across the grid.
    const bo = pages.get('Bo');
    await hide(pages.get('Ada'));
    await hide(bo);
    await bo.click('#screen');
    await waitFor(async () => (await pageState(bo)).screen?.framesSent > 5, {
      timeout: TIMEOUT_MS,
      describe: async () => JSON.stringify((await pageState(bo)).screen),
    });
    await send(bo, 'Here it is: the dashboard is up.');
    await waitFor(async () => (await pageState(cy)).screens[0]?.videoFrames > 30, {
      timeout: TIMEOUT_MS,
      describe: async () => JSON.stringify((await pageState(cy)).screens),
    });
    await capture(cy, path.join(OUT_DIR, 'screen-share.png'), 3, { fullPage: true });
  } catch (e) {
    log(`FAILED: ${e.message}`);
    printFailureLogs(pages, relay);
    process.exitCode = 1;
  } finally {
    for (const browser of browsers) await browser.close().catch(() => {});
    await relay.stop();
  }
}

await main();
