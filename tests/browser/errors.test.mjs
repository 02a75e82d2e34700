// What a person sees when things go wrong, in real Chromium and Firefox: an unreachable
// relay, a relay that refuses the access token (or wants one), a microphone that never
// delivers, and the call screen on a phone-sized window. Every message must be a sentence
// for people: no browser error text ("Failed to fetch", "Network error"), no internal names
// ("InvalidToken", "ConnectError", "unauthorized").
//
// Run: npm install --prefix tests/browser && node --test tests/browser/
// Env: as three-peer-call.test.mjs (SYNAPSE_BIN, SYNAPSE_WEB_ROOT, CHROMIUM_PATH, FIREFOX_PATH, BROWSERS).

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';

import { browserKinds, freePort, launchBrowser, log, pageState, relayBinary, startRelay, waitFor } from './harness.mjs';

// Small settings: these pages only need a call to exist, not good video.
const MEDIA = 'width=320&height=240&fps=15&bitrate=300000';
// Generous: the machine is slow and shared.
const UI_TIMEOUT_MS = 60_000;
const TEST_TIMEOUT_MS = 150_000;

const KEYS = {
  SYNAPSE_API_KEY: 'APIbrowser',
  SYNAPSE_API_SECRET: 'browser-test-secret-long-enough-0123456789',
};

// Text that must never reach the person: browser errors, internal and protocol names.
const RAW = [
  /worklet/i,
  /failed to/i,
  /network ?error/i,
  /TypeError/,
  /InvalidToken/i,
  /invalid access token/i,
  /\bunauthorized\b/i,
  /ConnectError|RelayError/,
  /handshake/i,
  /net::/,
  /signature/i,
  /\bHTTP \d/,
  /undefined|null|\[object/,
];

function assertReadable(text, what) {
  assert.ok(text.trim().length > 20, `${what}: expected a sentence, got "${text}"`);
  assert.match(text.trim(), /[.!?]$/, `${what}: not a sentence: "${text}"`);
  for (const raw of RAW) assert.doesNotMatch(text, raw, `${what}: shows raw text: "${text}"`);
}

/** What the page shows: the error box, which screen, the token field. */
async function pageView(page) {
  const { error, progress, joinScreen, inCall, joinEnabled, tokenOpen, status } = await pageState(page);
  return { error, progress, joinScreen, inCall, joinEnabled, tokenOpen, status };
}

/** A page of its own context in `browser`. */
const openPage = (browser, options) => browser.newPage(options);

/** Waits until the page shows an error after a failed join, and returns its view. */
function waitForJoinError(page, what) {
  return waitFor(
    async () => {
      const v = await pageView(page);
      return v.error && v.joinScreen && v.joinEnabled ? v : null;
    },
    {
      timeout: UI_TIMEOUT_MS,
      describe: async () =>
        `${what}: no join error shown: ${JSON.stringify(await pageView(page))}\n${page.consoleLines.join('\n')}`,
    },
  );
}

const TESTS = [];

TESTS.push(['an unreachable relay is reported in words, before anything else is loaded', async (kind) => {
  const relay = await startRelay();
  let stopped = false;
  let browser = null;
  try {
    browser = await launchBrowser(kind);

    // 1. The page (served by a running relay) is pointed at a port where nothing runs.
    const deadPort = await freePort();
    const pointed = await openPage(browser);
    await pointed.goto(`${relay.base}/?room=errors-${process.pid}&name=ada&relay=127.0.0.1:${deadPort}&autojoin=1&${MEDIA}`);
    const v1 = await waitForJoinError(pointed, '?relay= a dead port');
    log(`?relay= a dead port: "${v1.error}"`);
    assertReadable(v1.error, '?relay= a dead port');
    assert.match(v1.error, /Cannot reach the relay/);
    assert.ok(v1.error.includes(`127.0.0.1:${deadPort}`), `the message names the address: "${v1.error}"`);

    // 2. The relay that served the page goes away before Join is clicked: the relay is
    // checked first, so the person reads that, not that the audio worklet failed to load.
    const orphan = await openPage(browser);
    await orphan.goto(`${relay.base}/?room=errors-${process.pid}&name=bo&${MEDIA}`);
    await waitFor(async () => (await pageView(orphan)).joinEnabled, { timeout: UI_TIMEOUT_MS });
    await relay.stop();
    stopped = true;
    await orphan.click('#join');
    const v2 = await waitForJoinError(orphan, 'relay stopped before Join');
    log(`relay stopped before Join: "${v2.error}"`);
    assertReadable(v2.error, 'relay stopped before Join');
    assert.match(v2.error, /Cannot reach the relay/);
    assert.equal(v2.inCall, false);
  } finally {
    await browser?.close();
    if (!stopped) await relay.stop();
  }
}]);

TESTS.push(['a relay that requires access tokens: a wrong one, and none at all', async (kind) => {
  const relay = await startRelay({ env: KEYS });
  let browser = null;
  try {
    const room = `tokens-${process.pid}`;
    // A real token of this relay's key, but for another room.
    const minted = spawnSync(relayBinary(), ['token', '--room', `elsewhere-${process.pid}`, '--identity', 'ada', '--ttl', '10m'], {
      env: { ...process.env, ...KEYS },
      encoding: 'utf8',
    });
    assert.equal(minted.status, 0, `synapse-sfu token failed: ${minted.stderr}`);
    const otherRoomToken = minted.stdout.trim();
    assert.equal(otherRoomToken.split('.').length, 3, `a JWT: ${otherRoomToken}`);

    browser = await launchBrowser(kind);
    for (const [what, token] of [
      ['a forged token', 'not-a-real-token'],
      ['a token for another room', otherRoomToken],
    ]) {
      const page = await openPage(browser);
      await page.goto(`${relay.base}/?room=${room}&name=ada&token=${encodeURIComponent(token)}&autojoin=1&${MEDIA}`);
      const v = await waitForJoinError(page, what);
      log(`${what}: "${v.error}"`);
      assertReadable(v.error, what);
      assert.match(v.error, /access token/, `${what}: the message says what is wrong`);
      assert.equal(v.inCall, false);
    }

    // No token: the (otherwise collapsed) token field opens with a sentence saying why.
    const page = await openPage(browser);
    await page.goto(`${relay.base}/?room=${room}&name=bo&${MEDIA}`);
    await waitFor(async () => (await pageView(page)).joinEnabled, { timeout: UI_TIMEOUT_MS });
    assert.equal(await page.isVisible('#token'), false, 'the token field starts collapsed');
    await page.click('#join');
    const v = await waitForJoinError(page, 'no token');
    log(`no token: "${v.error}"`);
    assertReadable(v.error, 'no token');
    assert.match(v.error, /needs an access token/);
    await waitFor(() => page.isVisible('#token'), {
      timeout: UI_TIMEOUT_MS,
      describe: async () => `the token field stays hidden: ${JSON.stringify(await pageView(page))}`,
    });
  } finally {
    await browser?.close();
    await relay.stop();
  }
}]);

TESTS.push(['a microphone that never delivers does not hold back Camera off', async (kind) => {
  const relay = await startRelay();
  let browser = null;
  try {
    // Chromium: the fake microphone is swapped for a track that never delivers a buffer.
    // Firefox reads the microphone through the page's audio context, and on a machine
    // without a sound device (a Firefox without the mock device) that context never runs:
    // the microphone delivers nothing, and the page asks for a click that cannot help.
    browser = await launchBrowser(kind, { soundDevice: false });
    const page = await openPage(browser);
    if (kind === 'chromium') {
      await page.addInitScript(() => {
        const devices = navigator.mediaDevices;
        const getUserMedia = devices.getUserMedia.bind(devices);
        devices.getUserMedia = async (constraints) => {
          const stream = await getUserMedia(constraints);
          for (const track of stream.getAudioTracks()) {
            stream.removeTrack(track);
            track.stop();
            stream.addTrack(new MediaStreamTrackGenerator({ kind: 'audio' }));
          }
          return stream;
        };
      });
    }
    await page.goto(`${relay.base}/?room=silent-mic-${process.pid}&name=ada&autojoin=1&${MEDIA}`);
    const describe = async () =>
      `${JSON.stringify(await pageView(page))} ${JSON.stringify(
        await page.evaluate(() => ({
          mic: document.getElementById('mic').disabled,
          camera: document.getElementById('camera').disabled,
          producers: window.synapse.state().producers,
        })),
      )}\n${page.consoleLines.join('\n')}`;
    // In the call, with the camera sent (the buttons are enabled on the join screen too).
    await waitFor(
      async () => {
        const v = await pageView(page);
        if (v.error) throw new Error(`the page shows an error: ${v.error}`);
        return v.inCall && (await page.evaluate(() => window.synapse.state().producers?.video ?? null)) !== null;
      },
      { timeout: UI_TIMEOUT_MS, describe },
    );
    // Camera off is enabled when the camera's producer exists (before the fix it waited
    // for the microphone too, that is for ever).
    await waitFor(() => page.evaluate(() => !document.getElementById('camera').disabled), {
      timeout: UI_TIMEOUT_MS,
      describe,
    });
    const state = await page.evaluate(() => ({
      mic: document.getElementById('mic').disabled,
      producers: window.synapse.state().producers,
      error: document.getElementById('error').textContent,
    }));
    assert.ok(state.producers.video !== null, `the camera is sent: ${JSON.stringify(state)}`);
    assert.equal(state.producers.audio, null, 'the silent microphone has no producer');
    assert.equal(state.mic, true, 'Mute stays disabled while there is nothing to mute');
    assert.equal(state.error, '');
    if (kind === 'firefox') {
      // The page says why, in words.
      const hint = await waitFor(
        () => page.evaluate(() => !document.getElementById('audio-blocked').hidden && document.getElementById('audio-blocked').textContent),
        { timeout: UI_TIMEOUT_MS, describe },
      );
      log(`firefox without sound: "${hint}"`);
      assertReadable(hint, 'the blocked-sound hint');
      assert.match(hint, /let them hear you/);
    }

    await page.click('#camera');
    await waitFor(
      () => page.evaluate(() => window.synapse.state().cameraOff && document.getElementById('camera').textContent === 'Camera on'),
      { timeout: UI_TIMEOUT_MS, describe },
    );
  } finally {
    await browser?.close();
    await relay.stop();
  }
}]);

TESTS.push(['on a phone (390x844) the call header fits and Leave can be clicked', async (kind) => {
  const relay = await startRelay();
  let browser = null;
  try {
    browser = await launchBrowser(kind);
    const page = await openPage(browser, { viewport: { width: 390, height: 844 } });
    // A long room name (64 characters is the most the relay allows).
    const room = `the-weekly-planning-call-of-the-platform-team-${process.pid}`.slice(0, 64);
    await page.goto(`${relay.base}/?room=${room}&name=ada-lovelace&autojoin=1&${MEDIA}`);
    await waitFor(
      async () => {
        const v = await pageView(page);
        if (v.error) throw new Error(`the page shows an error: ${v.error}`);
        return v.inCall && v.status;
      },
      {
        timeout: UI_TIMEOUT_MS,
        describe: async () => `not in the call: ${JSON.stringify(await pageView(page))}\n${page.consoleLines.join('\n')}`,
      },
    );
    const layout = await page.evaluate(() => {
      const leave = document.getElementById('leave');
      const header = document.querySelector('header');
      const r = leave.getBoundingClientRect();
      const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      return {
        viewport: { width: window.innerWidth, height: window.innerHeight },
        leave: { left: r.left, right: r.right, top: r.top, bottom: r.bottom },
        leaveOnTop: hit === leave || leave.contains(hit),
        header: { scrollWidth: header.scrollWidth, clientWidth: header.clientWidth },
        page: { scrollWidth: document.documentElement.scrollWidth },
      };
    });
    log(`390x844 layout: ${JSON.stringify(layout)}`);
    const { viewport, leave } = layout;
    assert.equal(viewport.width, 390);
    assert.ok(leave.left >= 0 && leave.top >= 0, `Leave starts inside the viewport: ${JSON.stringify(layout)}`);
    assert.ok(leave.right <= viewport.width && leave.bottom <= viewport.height, `Leave ends inside the viewport: ${JSON.stringify(layout)}`);
    assert.ok(layout.leaveOnTop, `nothing covers Leave: ${JSON.stringify(layout)}`);
    assert.ok(layout.header.scrollWidth <= layout.header.clientWidth, `the header does not overflow: ${JSON.stringify(layout)}`);
    assert.ok(layout.page.scrollWidth <= viewport.width, `the page does not scroll sideways: ${JSON.stringify(layout)}`);

    await page.click('#leave');
    const after = await waitFor(
      async () => {
        const v = await pageView(page);
        return v.joinScreen && !v.inCall ? v : null;
      },
      { timeout: UI_TIMEOUT_MS, describe: async () => `Leave did not leave: ${JSON.stringify(await pageView(page))}` },
    );
    assert.equal(after.error, '', 'leaving shows no error');
  } finally {
    await browser?.close();
    await relay.stop();
  }
}]);

for (const kind of ['chromium', 'firefox']) {
  for (const [name, run] of TESTS) {
    test(`${name} (${kind})`, { timeout: TEST_TIMEOUT_MS, skip: !browserKinds().includes(kind) && `BROWSERS leaves out ${kind}` }, () =>
      run(kind),
    );
  }
}
