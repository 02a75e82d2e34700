// The camera and microphone check before joining (web-client/prejoin.js): the preview
// shows the camera, the pickers list the devices, the meter moves with the microphone,
// and Join sends the devices checked (the same camera, no second getUserMedia prompt).
//
// Chromium and Firefox. Run: npm install --prefix tests/browser && node --test tests/browser/
// Env: as three-peer-call.test.mjs.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { browserKinds, launchBrowser, log, pageState, printFailureLogs, sleep, startRelay, waitFor } from './harness.mjs';

const MEDIA = 'codec=vp8&width=320&height=240&fps=15&bitrate=300000';

async function prejoin(kind) {
  const relay = await startRelay();
  let browser = null;
  const pages = new Map();
  try {
    browser = await launchBrowser(kind);
    const page = await browser.newPage();
    pages.set('ada', page);
    await page.goto(`${relay.base}/?room=prejoin-${kind}-${process.pid}&name=ada&${MEDIA}`);
    await waitFor(async () => (await pageState(page)).joinEnabled, { timeout: 20_000 });
    assert.equal(await page.isVisible('#preview'), false, 'no preview before it is asked for');
    await page.click('#preview-start');
    const shown = await waitFor(
      () =>
        page.evaluate(() => {
          const v = document.getElementById('preview-video');
          const cams = Number(document.getElementById('preview-camera-select').dataset.deviceCount ?? 0);
          const mics = Number(document.getElementById('preview-mic-select').dataset.deviceCount ?? 0);
          return v.videoWidth > 0 && cams > 0 && mics > 0 ? { width: v.videoWidth, height: v.videoHeight, cams, mics } : null;
        }),
      { timeout: 20_000, describe: async () => JSON.stringify((await pageState(page)).prejoin) },
    );
    log(`preview ${shown.width}x${shown.height}; ${shown.cams} camera(s), ${shown.mics} microphone(s) listed`);
    // The fake microphone beeps: the meter must rise above silence at some point.
    let loudest = -100;
    const until = Date.now() + 5000;
    while (Date.now() < until && loudest <= -60) {
      loudest = Math.max(loudest, Number(await page.evaluate(() => document.getElementById('mic-meter').dataset.level)));
      await sleep(50);
    }
    log(`loudest microphone level seen: ${loudest} dBFS`);
    assert.ok(loudest > -60, `the meter should move with the microphone (loudest ${loudest} dBFS)`);
    // Another microphone picked in the check (Chromium lists several fake ones) is used.
    if (shown.mics > 1) {
      const other = await page.evaluate(() => {
        const select = document.getElementById('preview-mic-select');
        const option = [...select.options].find((o) => o.value && o.value !== select.value);
        select.value = option.value;
        select.dispatchEvent(new Event('change'));
        return option.value;
      });
      await waitFor(async () => (await pageState(page)).prejoin.microphone === other, {
        timeout: 10_000,
        describe: async () => JSON.stringify((await pageState(page)).prejoin),
      });
      log(`picked another microphone in the check: ${other}`);
    }
    const checked = (await pageState(page)).prejoin;
    assert.ok(checked.camera, 'a camera is in use in the preview');

    await page.click('#join');
    const s = await waitFor(
      async () => {
        const v = await pageState(page);
        if (v.error) throw new Error(`ada shows an error: ${v.error}`);
        return v.inCall && v.send?.framesSent > 0 ? v : null;
      },
      { timeout: 30_000, describe: async () => JSON.stringify(await pageState(page)) },
    );
    log(`joined; sending the camera ${s.devices.camera}`);
    assert.equal(s.devices.camera, checked.camera, 'Join sends the camera that was checked');
    assert.equal(s.devices.microphone, checked.microphone, 'Join sends the microphone that was checked');
    assert.equal(await page.isVisible('#preview'), false, 'the preview is gone in the call');
    assert.deepEqual(page.pageErrors, []);
  } catch (e) {
    printFailureLogs(pages, relay);
    throw e;
  } finally {
    await relay.stop();
    await browser?.close().catch(() => {});
  }
}

for (const kind of ['chromium', 'firefox']) {
  const skip = !browserKinds().includes(kind) && `BROWSERS leaves out ${kind}`;
  test(`camera and microphone are checked before joining (${kind})`, { timeout: 90_000, skip }, () => prejoin(kind));
}
