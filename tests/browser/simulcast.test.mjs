// Simulcast in real browsers. A publisher page sends its camera in three layers (640x480,
// 320x240 and 160x120: three encoders); a subscriber page shows it in a tile that is then
// made smaller step by step. The subscriber must decode each smaller layer in turn (the
// relay switches it down when the tile asks for less, with set_preferred_layers), the
// publisher must stop encoding the layers nobody needs any more (dynacast, layers_wanted),
// a tile moved out of sight must pause its consumer and resume it when it shows again, and
// a tile made large again must get the top layer back. Neither page may show an error.
//
// Runs in Chromium and in Firefox (both pages in the same browser).
//
// Run: npm install --prefix tests/browser && node --test tests/browser/
// Env: as three-peer-call.test.mjs (SYNAPSE_BIN, SYNAPSE_WEB_ROOT, CHROMIUM_PATH, FIREFOX_PATH, BROWSERS).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertNoPageErrors,
  browserKinds,
  joinCall,
  launchBrowser,
  log,
  pageState,
  printFailureLogs,
  sleep,
  startRelay,
  waitFor,
} from './harness.mjs';

const PUBLISHER_MEDIA = 'codec=vp8&width=640&height=480&fps=15&bitrate=800000';
// The subscriber sends too (every page does): little, and in one layer.
const SUBSCRIBER_MEDIA = 'codec=vp8&width=160&height=120&fps=10&bitrate=100000&simulcast=0';
const LADDER = ['160x120', '320x240', '640x480'];
// Generous: the machine is slow and shared. A switch down waits for a keyframe of the new
// layer (asked for at once); a switch up also waits for the relay's up-switch hold (4 s).
const SWITCH_TIMEOUT_MS = 20_000;
const UP_SWITCH_TIMEOUT_MS = 30_000;

/** Sets the CSS size of the subscriber's tile of `name` (null: back to the grid's). */
function setTileStyle(page, name, style) {
  return page.evaluate(
    ({ name, style }) => {
      const tile = document.querySelector(`[data-peer-name="${name}"]`);
      for (const [key, value] of Object.entries(style)) tile.style[key] = value ?? '';
      const canvas = tile.querySelector('canvas');
      return { width: canvas.clientWidth, height: canvas.clientHeight };
    },
    { name, style },
  );
}

async function simulcast(kind) {
  const started = Date.now();
  const relay = await startRelay();
  let browser = null;
  const pages = new Map(); // name -> page
  try {
    browser = await launchBrowser(kind);
    log(`${browser.version}; web client from ${process.env.SYNAPSE_WEB_ROOT || 'the binary (embedded copy)'}`);
    const room = `simulcast-${kind}-${process.pid}`;
    const open = async (name, media) => {
      const page = await browser.newPage();
      pages.set(name, page);
      // Chromium joins by itself; in Firefox the test clicks Join.
      const auto = kind === 'chromium' ? '&autojoin=1' : '';
      const state = await joinCall(page, `${relay.base}/?room=${room}&name=${name}${auto}&${media}`, { name });
      log(`${name} joined: "${state.status}"`);
      return page;
    };
    const noErrors = () => assertNoPageErrors(pages);

    // The publisher: the relay accepts three layers, and each layer's encoder encodes.
    const pub = await open('pub', PUBLISHER_MEDIA);
    const pubSend = async () => (await pageState(pub)).send;
    const firstSend = await waitFor(
      async () => {
        await noErrors();
        const send = await pubSend();
        return send?.layers?.length === 3 && send.layers.every((l) => l.framesEncoded > 0) ? send : null;
      },
      { timeout: 20_000, describe: async () => JSON.stringify(await pubSend()) },
    );
    log(`pub encodes three layers: ${JSON.stringify(firstSend.layers)}`);
    assert.equal(firstSend.simulcast, true, 'the publisher should publish layers');
    assert.deepEqual(firstSend.layers.map((l) => `${l.width}x${l.height}`), LADDER);
    assert.deepEqual(firstSend.layers.map((l) => l.layer), [0, 1, 2]);
    for (const l of firstSend.layers) assert.equal(l.encoder, 'configured', `layer ${l.layer}'s encoder`);
    assert.ok(
      firstSend.layers[0].bitrate < firstSend.layers[1].bitrate && firstSend.layers[1].bitrate < firstSend.layers[2].bitrate,
      'bitrates should rise with the layers',
    );

    // The subscriber, its tile at the grid's size (about 410x307 at 1280x720): larger than
    // the middle layer, so it asks for no limit and gets the top layer.
    const sub = await open('sub', SUBSCRIBER_MEDIA);
    const video = async () => (await pageState(sub)).tiles.find((t) => t.name === 'pub')?.video ?? null;
    const waitForSize = async (size, layer, timeout, what) => {
      const [w, h] = size.split('x').map(Number);
      const t0 = Date.now();
      const v = await waitFor(
        async () => {
          await noErrors();
          const v = await video();
          return v && v.decodedWidth === w && v.decodedHeight === h && v.layer === layer ? v : null;
        },
        { timeout, describe: async () => `${what}: ${JSON.stringify({ sub: await video(), pub: (await pubSend())?.layersWanted })}` },
      );
      log(`${what}: sub decodes ${size} (layer ${layer}) after ${Date.now() - t0} ms: ${JSON.stringify(v)}`);
      return v;
    };
    await waitForSize('640x480', 2, UP_SWITCH_TIMEOUT_MS, 'large tile');

    // Smaller tiles: the middle layer, then the lowest.
    log(`tile set to ${JSON.stringify(await setTileStyle(sub, 'pub', { width: '300px', height: '225px' }))}`);
    const mid = await waitForSize('320x240', 1, SWITCH_TIMEOUT_MS, 'tile 300x225');
    assert.deepEqual(mid.preferred, { max_width: 320, max_height: 240 });
    log(`tile set to ${JSON.stringify(await setTileStyle(sub, 'pub', { width: '160px', height: '90px' }))}`);
    const low = await waitForSize('160x120', 0, SWITCH_TIMEOUT_MS, 'tile 160x90');
    assert.deepEqual(low.preferred, { max_width: 160, max_height: 120 });
    assert.ok(low.layerChanges >= 3, `three layer_changed events expected (start, two switches): ${low.layerChanges}`);
    // The overlay says so, for people.
    await waitFor(async () => /layer 0 \(160x120\) of 3/.test((await pageState(sub)).overlays.pub), {
      timeout: 5_000,
      describe: async () => (await pageState(sub)).overlays.pub,
    });
    const overlay = (await pageState(sub)).overlays.pub;
    log(`sub's overlay of pub:\n${overlay}`);
    assert.match(overlay, /vp8 160x120/, 'the overlay should show the decoded size');

    // Dynacast: only layer 0 is needed now, so the publisher stops the other two encoders.
    const idle = await waitFor(
      async () => {
        const send = await pubSend();
        const running = send.layers.map((l) => l.running);
        return JSON.stringify(send.layersWanted) === '[0]' && running.join() === 'true,false,false' ? send : null;
      },
      { timeout: 20_000, describe: async () => JSON.stringify(await pubSend()) },
    );
    await sleep(1500);
    const later = await pubSend();
    log(`pub after layers_wanted [0]: encoded ${idle.layers.map((l) => l.framesEncoded)} then ${later.layers.map((l) => l.framesEncoded)}`);
    assert.ok(later.layers[0].framesEncoded > idle.layers[0].framesEncoded, 'layer 0 should keep encoding');
    for (const i of [1, 2]) {
      assert.ok(later.layers[i].framesEncoded <= idle.layers[i].framesEncoded + 1, `layer ${i} should stop encoding`);
    }
    assert.match((await pageState(pub)).localOverlay, /layers 120p \d+k · 240p off · 480p off/);

    // Out of sight: the tile's consumer is paused, its video stops, and with no consumer
    // left the publisher stops encoding altogether. Back in sight, it resumes.
    await setTileStyle(sub, 'pub', { position: 'fixed', left: '-5000px' });
    await waitFor(async () => (await video()).paused === true, {
      timeout: 10_000,
      describe: async () => JSON.stringify(await video()),
    });
    let before = await video();
    let after = before;
    await waitFor(
      async () => {
        before = await video();
        await sleep(1500);
        after = await video();
        return after.decoded === before.decoded;
      },
      { timeout: 20_000, interval: 0, describe: async () => `video kept coming: ${JSON.stringify(await video())}` },
    );
    log(`hidden tile: sub's consumer paused, decoded frames stand at ${after.decoded}`);
    await waitFor(
      async () => {
        const send = await pubSend();
        return JSON.stringify(send.layersWanted) === '[]' && send.runningEncoders === 0;
      },
      { timeout: 20_000, describe: async () => JSON.stringify(await pubSend()) },
    );
    log('pub encodes nothing while no one watches');
    await setTileStyle(sub, 'pub', { position: null, left: null });
    await waitFor(
      async () => {
        await noErrors();
        const v = await video();
        return !v.paused && v.decoded >= after.decoded + 10 && v.decodedWidth === 160 ? v : null;
      },
      { timeout: SWITCH_TIMEOUT_MS, describe: async () => JSON.stringify({ sub: await video(), pub: await pubSend() }) },
    );
    log(`tile visible again: ${JSON.stringify(await video())}`);

    // Large again: the top layer comes back (its encoder restarts with a keyframe).
    await setTileStyle(sub, 'pub', { width: null, height: null });
    await waitForSize('640x480', 2, UP_SWITCH_TIMEOUT_MS, 'tile back to the grid size');

    await noErrors();
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    log(`FAILED (${kind}): ${e.message}`);
    printFailureLogs(pages, relay);
    throw e;
  } finally {
    await relay.stop();
    await browser?.close().catch(() => {});
  }
}

for (const kind of ['chromium', 'firefox']) {
  test(
    `simulcast in ${kind}: three layers, the layer follows the tile size, dynacast, hidden tiles pause`,
    { timeout: 150_000, skip: !browserKinds().includes(kind) && `BROWSERS leaves out ${kind}` },
    () => simulcast(kind),
  );
}
