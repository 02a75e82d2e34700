// A publisher on a weak uplink: its page sends 640x480 video at up to 1 Mbit/s through
// `synapse-sfu shaper` (300 kbit/s up, 1 s drop-tail queue) while a subscriber page is
// connected directly. The publisher must keep its send backlog bounded (?maxSendDelay=)
// by skipping frames and resetting late groups, and lower its encoder's target bitrate
// below the configured one, the subscriber must still get its video and audio, and
// neither page may throw.
//
// It must also keep the uplink's queue from filling: audio datagrams share that queue
// and are lost when it is full, so the subscriber must get most of the publisher's audio.
// Chromium's streams hold back what the uplink cannot take, and the send backlog shows
// it; Firefox's streams hand everything to the network, whose 1 s queue filled while the
// send backlog stayed short (the relay measured ~0.9 s of round trip to it, and ~100 audio
// frames reached the subscriber in a minute, against ~500 in 10 s from Chromium). The
// page now also watches the relay's round trip to it and gives way to a queue
// (VideoSender.setRelayRtt in web-client/media.js).
//
// Run: npm install --prefix tests/browser && node --test tests/browser/
// Env: as three-peer-call.test.mjs (SYNAPSE_BIN, SYNAPSE_WEB_ROOT, CHROMIUM_PATH, FIREFOX_PATH, BROWSERS).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  browserKinds,
  joinCall,
  launchBrowser,
  log,
  pageState as fullPageState,
  printFailureLogs,
  sleep,
  startRelay,
  startShaper,
  waitFor,
} from './harness.mjs';

const MAX_SEND_DELAY_MS = 300;
// The backlog is checked once per camera frame, from acknowledgements that a busy machine
// delivers late (web-client/send-queue.js): it overshoots the bound by up to ~0.5 s here,
// more on a slower machine. Without the bound it passes 2 s within these 10 s.
const BACKLOG_MARGIN_MS = 1000;
// Most of the time the backlog is within the bound: the test samples it as it polls (every
// 250 ms or slower), and nine samples in ten must be within the bound plus this. With the
// policy off (?maxSendDelay=60000) they were 3.6 s here, the worst case 4.3 s.
const BACKLOG_P90_MARGIN_MS = 200;
// The first seconds after the subscriber's first picture still carry the start: the
// layers it asks for begin with keyframes, and a host busy starting pages delivers
// acknowledgements late (a CI run once saw 1.4 s there). The worst case counts after them;
// the samples count from the start.
const SETTLE_MS = 2000;
const UPLINK = { 'up-kbps': 300, 'up-queue': '1000ms' };
const PUBLISHER_MEDIA = `codec=vp8&width=640&height=480&fps=30&bitrate=1000000&maxSendDelay=${MAX_SEND_DELAY_MS}`;
// The subscriber sends too (every page does): little, to leave the machine to the publisher.
const SUBSCRIBER_MEDIA = 'codec=vp8&width=160&height=120&fps=10&bitrate=100000';
const OBSERVE_MS = 10_000;
// Over OBSERVE_MS: audio is 50 frames/s, video up to 30; a weak uplink and a slow
// machine leave less, but never nothing.
const MIN_VIDEO_FRAMES = 10;
const MIN_AUDIO_FRAMES = 100;
// Audio is 50 frames a second, and the uplink has room for it: within OBSERVE_MS at least
// this many must reach the subscriber. A publisher that lets its video keep the uplink's
// queue full loses most of it (Firefox did: 107 in 30 s, about 35 in 10 s); with the page
// giving way to the queue, Firefox got 270-463 here, Chromium ~500.
const MIN_AUDIO_FRAMES_OBSERVED = 150;

/** window.synapse.state() plus what the page shows; `overlay` is the local tile's stats. */
async function pageState(page) {
  const s = await fullPageState(page);
  return { ...s, overlay: s.localOverlay };
}

async function weakUplink(kind) {
  const started = Date.now();
  const relay = await startRelay();
  let shaper = null;
  let browser = null;
  const pages = new Map(); // name -> page
  try {
    shaper = await startShaper(relay.port, UPLINK);
    browser = await launchBrowser(kind);
    log(`${browser.version}; web client from ${process.env.SYNAPSE_WEB_ROOT || 'the binary (embedded copy)'}`);
    const room = `weak-uplink-${kind}-${process.pid}`;
    // Chromium joins by itself; in Firefox the test clicks Join.
    const auto = kind === 'chromium' ? '&autojoin=1' : '';
    const urls = {
      pub: `${relay.base}/?room=${room}&name=pub${auto}&${PUBLISHER_MEDIA}&quic=${shaper.addr}&transport=wt`, // the shaper carries UDP only
      sub: `${relay.base}/?room=${room}&name=sub${auto}&${SUBSCRIBER_MEDIA}`,
    };
    for (const [name, url] of Object.entries(urls)) {
      const page = await browser.newPage();
      pages.set(name, page);
      const state = await joinCall(page, url, { name });
      log(`${name} joined: "${state.status}"`);
    }
    const pub = pages.get('pub');
    const sub = pages.get('sub');
    const pubOnSub = async () => (await pageState(sub)).tiles.find((t) => t.name === 'pub');

    // The policy needs video flowing: wait for the publisher's first frames to arrive.
    await waitFor(async () => (await pubOnSub())?.videoFrames > 0, {
      timeout: 30_000,
      describe: async () => JSON.stringify({ pub: (await pageState(pub)).send, sub: await pubOnSub() }),
    });
    const before = await pubOnSub();
    // The maximum counts from here: not while the pages were still starting (a busy
    // machine then delays the acknowledgements the backlog is measured by).
    await pub.evaluate(() => window.synapse.resetMaxBacklog());
    log(`sub decodes pub's video; observing for ${OBSERVE_MS / 1000} s`);
    // The lowest target bitrate seen per encoder (layer), polled: the encoders start at
    // their configured bitrate and must come down on this uplink.
    const lowestTargets = new Map(); // layer index -> { bitrate, lowest }
    const noteTargets = (send) => {
      for (const l of send?.layers ?? []) {
        const seen = lowestTargets.get(l.layer) ?? { bitrate: l.bitrate, lowest: l.targetBitrate };
        seen.lowest = Math.min(seen.lowest, l.targetBitrate);
        lowestTargets.set(l.layer, seen);
      }
    };
    const observeFrom = Date.now();
    const observeUntil = observeFrom + OBSERVE_MS;
    let lastReport = 0;
    let settled = false;
    const backlogSamples = []; // ms, one per poll
    while (Date.now() < observeUntil) {
      if (!settled && Date.now() - observeFrom >= SETTLE_MS) {
        settled = true;
        await pub.evaluate(() => window.synapse.resetMaxBacklog());
      }
      const [p, s] = await Promise.all([pageState(pub), pubOnSub()]);
      noteTargets(p.send);
      backlogSamples.push(p.send.backlogMs);
      for (const [n, v] of [['pub', p], ['sub', await pageState(sub)]]) if (v.error) throw new Error(`${n} shows an error: ${v.error}`);
      if (Date.now() - lastReport > 2000) {
        lastReport = Date.now();
        log(`pub send ${JSON.stringify(p.send)} | sub <- pub v${s?.videoFrames}/a${s?.audioFrames} latency ${s?.videoLatencyMs}`);
      }
      await sleep(250);
    }
    const pubState = await pageState(pub);
    noteTargets(pubState.send);
    const observed = await pubOnSub();
    // Delivery is checked as an event, not a rate: a slow machine gets longer to decode.
    const after = await waitFor(
      async () => {
        const s = await pubOnSub();
        return s.videoFrames - before.videoFrames >= MIN_VIDEO_FRAMES && s.audioFrames - before.audioFrames >= MIN_AUDIO_FRAMES && s;
      },
      { timeout: 60_000, describe: async () => `sub decoded too little from pub: ${JSON.stringify(await pubOnSub())}` },
    );
    const send = pubState.send;
    log(`pub overlay:\n${pubState.overlay}`);
    log(`pub link (relay's view): ${JSON.stringify(pubState.link)}`);
    const sorted = [...backlogSamples].sort((a, b) => a - b);
    const backlogP90 = sorted[Math.floor(sorted.length * 0.9)] ?? 0;
    log(
      `pub: backlog max ${Math.round(send.maxBacklogMs)} ms after the first ${SETTLE_MS / 1000} s, ` +
        `p90 of ${sorted.length} samples ${Math.round(backlogP90)} ms (bound ${send.maxSendDelayMs} ms), ` +
        `skipped ${send.skippedFrames} frames, reset ${send.abandonedGroups} groups, sent ${send.framesSent} frames`,
    );
    for (const l of send.layers ?? []) {
      log(`pub layer ${l.layer}: backlog max ${Math.round(l.maxBacklogMs)} ms, then ${JSON.stringify(l.maxBacklogContext)}`);
    }
    const kbps = (bps) => Math.round(bps / 1000);
    const targets = [...lowestTargets].map(([layer, t]) => `layer ${layer}: ${kbps(t.lowest)} of ${kbps(t.bitrate)} kbit/s`);
    log(
      `pub: lowest target bitrate polled ${targets.join(', ')}; ` +
        `now ${send.layers.map((l) => kbps(l.targetBitrate)).join('/')} kbit/s, cuts ${send.layers.map((l) => l.bitrateCuts).join('/')}`,
    );
    const gotVideo = after.videoFrames - before.videoFrames;
    const gotAudio = after.audioFrames - before.audioFrames;
    log(`sub got ${gotVideo} video and ${gotAudio} audio frames from pub (${observed.audioFrames - before.audioFrames} audio in the ${OBSERVE_MS / 1000} s observed); pub: uplink queue ${Math.round(send.uplinkQueueMs)} ms now, layers gave way to it ${send.uplinkQueueCuts} times`);
    const shaperSaid = shaper.logs().trim();
    if (shaperSaid) log(`shaper log:\n${shaperSaid.split('\n').slice(-5).join('\n')}`);

    assert.equal(send.maxSendDelayMs, MAX_SEND_DELAY_MS, '?maxSendDelay= should set the bound');
    assert.ok(
      send.maxBacklogMs <= MAX_SEND_DELAY_MS + BACKLOG_MARGIN_MS,
      `the publisher's send backlog reached ${Math.round(send.maxBacklogMs)} ms (bound ${MAX_SEND_DELAY_MS} ms)`,
    );
    assert.ok(
      backlogP90 <= MAX_SEND_DELAY_MS + BACKLOG_P90_MARGIN_MS,
      `the publisher's send backlog was over ${Math.round(backlogP90)} ms in one sample in ten (bound ${MAX_SEND_DELAY_MS} ms)`,
    );
    // 1 Mbit/s does not fit in 300 kbit/s: the policy must have acted, or this test proves nothing.
    assert.ok(send.skippedFrames > 0, 'the publisher skipped no frame on a 300 kbit/s uplink');
    // Acted on what waits in the browser (late groups reset), or on what waits in the
    // network (the relay's round trip to it: layers cut or stopped). Chromium does the
    // first; Firefox, whose streams take what the uplink's queue takes, the second.
    assert.ok(
      send.abandonedGroups > 0 || send.uplinkQueueCuts > 0,
      'the publisher neither reset a late group nor gave way to the queue on a 300 kbit/s uplink',
    );
    assert.ok(
      [...lowestTargets.values()].some((t) => t.lowest < t.bitrate),
      `the publisher never lowered an encoder's target bitrate on a 300 kbit/s uplink: ${targets.join(', ')}`,
    );
    assert.ok(gotVideo >= MIN_VIDEO_FRAMES, `sub decoded only ${gotVideo} video frames from pub`);
    assert.ok(gotAudio >= MIN_AUDIO_FRAMES, `sub decoded only ${gotAudio} audio frames from pub`);
    const audioObserved = observed.audioFrames - before.audioFrames;
    assert.ok(
      audioObserved >= MIN_AUDIO_FRAMES_OBSERVED,
      `sub decoded only ${audioObserved} audio frames from pub in ${OBSERVE_MS / 1000} s (50 a second were sent)`,
    );
    assert.match(pubState.overlay, /backlog \d+ ms/, "the publisher's overlay should show its send backlog");
    assert.match(pubState.overlay, /target \d+/, "the publisher's overlay should show its target bitrate");
    for (const [name, page] of pages) assert.equal((await pageState(page)).error, '', `${name} shows an error`);
    for (const [name, page] of pages) assert.deepEqual(page.pageErrors, [], `${name} threw`);
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    log(`FAILED (${kind}): ${e.message}`);
    printFailureLogs(pages, null);
    if (shaper) console.log(`---- shaper log (last 50 lines) ----\n${shaper.logs().split('\n').slice(-50).join('\n')}`);
    console.log(`---- relay log (last 200 lines) ----\n${relay.logs().split('\n').slice(-200).join('\n')}`);
    throw e;
  } finally {
    // Relay first: pages that get its going_away leave at once (the publisher's leave
    // still goes through the shaper), then the shaper, then the browser.
    await relay.stop();
    await shaper?.stop();
    await browser?.close().catch(() => {});
  }
}

for (const kind of ['chromium', 'firefox']) {
  const skip = !browserKinds().includes(kind) && `BROWSERS leaves out ${kind}`;
  test(`a publisher on a weak uplink keeps its send backlog bounded (${kind})`, { timeout: 180_000, skip }, () => weakUplink(kind));
}
