// The meeting page as people use it, in real browser pages against a real relay:
//
// (a) on a phone (390x844, Chromium) the call fits: Leave lies wholly inside the viewport,
//     also after scrolling to the bottom (the header stays), nothing scrolls sideways, the
//     header does not overflow, and the tiles stand in one column;
// (b) Copy invite link copies this page's address with the room and the relay/quic/transport
//     parameters, never the token or the name; the link, opened in a page of its own, shows
//     the join screen with the room filled in and no token or name. Chromium reads the link
//     back from the clipboard (permission granted) and, in a page without the Clipboard API,
//     from the selected read-only field; Firefox checks the link and what the page says;
// (c) the stats overlay on the tiles (local and remote) is hidden until the Stats button
//     shows it, and hidden again by a second click.
//
// Run: npm install --prefix tests/browser && node --test tests/browser/meeting-page.test.mjs
// Env: as three-peer-call.test.mjs (SYNAPSE_BIN, SYNAPSE_WEB_ROOT, CHROMIUM_PATH, FIREFOX_PATH, BROWSERS).

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { test } from 'node:test';

import {
  assertNoPageErrors,
  browserKinds,
  joinCall,
  launchBrowser,
  log,
  pageState,
  printFailureLogs,
  startRelay,
  waitFor,
} from './harness.mjs';

// Small settings: two pages encode and decode on a shared 2-core machine.
const MEDIA = 'codec=vp8&width=320&height=240&fps=15&bitrate=300000';
const PHONE = { width: 390, height: 844 };
const TIMEOUT_MS = 30_000;
const TEST_TIMEOUT_MS = 150_000;

const KEYS = {
  SYNAPSE_API_KEY: 'APImeeting',
  SYNAPSE_API_SECRET: 'meeting-page-test-secret-long-enough-0123456789',
};

/** An HS256 access token of KEYS for `room` (docs/PROTOCOL.md section 4.3). */
function mintToken({ identity, room }) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: KEYS.SYNAPSE_API_KEY, sub: identity, name: identity, room, nbf: now - 60, exp: now + 600, grants: {} };
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const signature = crypto.createHmac('sha256', KEYS.SYNAPSE_API_SECRET).update(body).digest('base64url');
  return `${body}.${signature}`;
}

/** Runs `body({ relay, browser, pages })`, printing the pages' consoles and the relay's log on failure. */
async function withCall(kind, { env = {} } = {}, body) {
  const relay = await startRelay({ env });
  let browser = null;
  const pages = new Map();
  try {
    browser = await launchBrowser(kind);
    await body({ relay, browser, pages });
    await assertNoPageErrors(pages);
  } catch (e) {
    printFailureLogs(pages, relay);
    throw e;
  } finally {
    await browser?.close().catch(() => {});
    await relay.stop();
  }
}

/** Waits until `page` decodes video from every one of `names`. */
function waitForVideoFrom(page, names) {
  return waitFor(
    async () => {
      const s = await pageState(page);
      if (s.error) throw new Error(`the page shows an error: ${s.error}`);
      return names.every((n) => s.shown.some((t) => t.name === n && t.video > 0)) ? s : null;
    },
    { timeout: TIMEOUT_MS, describe: async () => JSON.stringify((await pageState(page)).shown) },
  );
}

/** Where Leave, the header, the page and the tiles are (viewport coordinates). */
function phoneLayout(page) {
  return page.evaluate(() => {
    const box = (el) => {
      const r = el.getBoundingClientRect();
      return { left: r.left, right: r.right, top: r.top, bottom: r.bottom };
    };
    const leave = document.getElementById('leave');
    const header = document.querySelector('header');
    const r = leave.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return {
      viewport: { width: window.innerWidth, height: window.innerHeight },
      scrollY: window.scrollY,
      leave: box(leave),
      leaveOnTop: hit === leave || leave.contains(hit),
      header: { scrollWidth: header.scrollWidth, clientWidth: header.clientWidth, height: header.getBoundingClientRect().height },
      page: { scrollWidth: document.documentElement.scrollWidth, scrollHeight: document.documentElement.scrollHeight },
      tiles: [...document.querySelectorAll('#tiles .tile')].map((t) => ({ name: t.dataset.peerName ?? 'you', ...box(t) })),
    };
  });
}

function assertLeaveInside(layout, when) {
  const { viewport, leave } = layout;
  const all = JSON.stringify(layout);
  assert.ok(leave.left >= 0 && leave.top >= 0, `${when}: Leave starts inside the viewport: ${all}`);
  assert.ok(leave.right <= viewport.width && leave.bottom <= viewport.height, `${when}: Leave ends inside the viewport: ${all}`);
  assert.ok(leave.right - leave.left > 20 && leave.bottom - leave.top > 20, `${when}: Leave has a size: ${all}`);
  assert.ok(layout.leaveOnTop, `${when}: nothing covers Leave: ${all}`);
}

// (a) A phone.
async function phone(kind) {
  await withCall(kind, {}, async ({ relay, browser, pages }) => {
    const room = `phone-${kind}-${process.pid}`;
    const ada = await browser.newPage({ viewport: PHONE });
    pages.set('ada', ada);
    const bo = await browser.newPage();
    pages.set('bo', bo);
    // Clicked Join, as a person on a phone would (a long name, for the header's sake).
    await joinCall(ada, `${relay.base}/?room=${room}&name=ada-lovelace&${MEDIA}`, { name: 'ada', timeout: TIMEOUT_MS });
    await joinCall(bo, `${relay.base}/?room=${room}&name=bo&autojoin=1&${MEDIA}`, { name: 'bo', timeout: TIMEOUT_MS });
    await waitForVideoFrom(ada, ['bo']);

    const top = await phoneLayout(ada);
    log(`390x844, top of the page: ${JSON.stringify(top)}`);
    assert.equal(top.viewport.width, PHONE.width);
    assert.equal(top.viewport.height, PHONE.height);
    assertLeaveInside(top, 'top of the page');
    assert.ok(top.header.scrollWidth <= top.header.clientWidth, `the header does not overflow: ${JSON.stringify(top.header)}`);
    assert.ok(top.page.scrollWidth <= PHONE.width, `the page does not scroll sideways: scrollWidth ${top.page.scrollWidth}`);
    // One column: every tile starts at the same x, each as wide as the column allows, one below the other.
    assert.equal(top.tiles.length, 2, `ada's tile and bo's: ${JSON.stringify(top.tiles)}`);
    const [first, second] = [...top.tiles].sort((a, b) => a.top - b.top);
    assert.equal(first.left, second.left, `the tiles are in one column: ${JSON.stringify(top.tiles)}`);
    assert.ok(second.top >= first.bottom, `one tile below the other: ${JSON.stringify(top.tiles)}`);
    for (const t of top.tiles) {
      assert.ok(t.left >= 0 && t.right <= PHONE.width, `tile ${t.name} fits across: ${JSON.stringify(t)}`);
      assert.ok(t.right - t.left > PHONE.width * 0.8, `tile ${t.name} takes the width: ${JSON.stringify(t)}`);
    }
    // The stats are not over the pictures on a phone either.
    assert.equal(await ada.isVisible('[data-peer-name="bo"] .stats'), false, "bo's tile shows no stats by default");

    // Scrolled to the bottom (the participant list and the chat are below the tiles): the
    // header stays at the top, Leave with it.
    await ada.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight));
    const bottom = await phoneLayout(ada);
    log(`390x844, scrolled to ${bottom.scrollY} of ${bottom.page.scrollHeight}: Leave at ${JSON.stringify(bottom.leave)}`);
    assert.ok(bottom.scrollY > 0, `the page is longer than the screen and was scrolled: ${JSON.stringify(bottom)}`);
    assertLeaveInside(bottom, 'scrolled to the bottom');
    assert.ok(bottom.page.scrollWidth <= PHONE.width, `no sideways scroll at the bottom either: ${bottom.page.scrollWidth}`);

    // And Leave works from there.
    await ada.click('#leave');
    await waitFor(async () => (await pageState(ada)).joinScreen, { timeout: TIMEOUT_MS });
  });
}

// (b) The invite link.
async function invite(kind) {
  await withCall(kind, { env: KEYS }, async ({ relay, browser, pages }) => {
    const room = `invite-${kind}-${process.pid}`;
    const host = `127.0.0.1:${relay.port}`;
    // Everything a link may carry, and what it must not: the token, the name, the media settings.
    const carried = { relay: host, quic: host, transport: 'ws' };
    const query = (name) =>
      `room=${room}&name=${name}&token=${mintToken({ identity: name, room })}&relay=${host}&quic=${host}&transport=ws&${MEDIA}`;

    const ada = await browser.newPage();
    pages.set('ada', ada);
    if (kind === 'chromium') {
      await ada.page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: relay.base });
    }
    await joinCall(ada, `${relay.base}/?${query('ada')}`, { name: 'ada', timeout: TIMEOUT_MS });
    assert.equal(await ada.isVisible('#invite'), true, 'Copy invite link is in the call header');
    assert.equal(await ada.isVisible('#invite-url'), false, 'no invite field before the button is clicked');

    await ada.click('#invite');
    const copied = await waitFor(
      () =>
        ada.evaluate(() => {
          const button = document.getElementById('invite');
          const via = button.dataset.copiedVia;
          return via ? { via, field: document.getElementById('invite-url').value, note: document.getElementById('invite-status').textContent } : null;
        }),
      { timeout: TIMEOUT_MS },
    );
    log(`${kind}: copied via ${copied.via}: ${copied.field} ("${copied.note}")`);
    let link = copied.field;
    if (kind === 'chromium') {
      assert.equal(copied.via, 'clipboard', 'with clipboard permission the Clipboard API writes the link');
      assert.equal(copied.note, 'Link copied');
      link = await ada.evaluate(() => navigator.clipboard.readText());
      assert.equal(link, copied.field, 'the clipboard holds the link');
    } else {
      // Firefox: the Clipboard API (a click lets it write), or the field and the copy command.
      assert.ok(['clipboard', 'command', 'manual'].includes(copied.via), copied.via);
      assert.ok(copied.note.length > 0, 'the page says what happened');
      if (copied.via !== 'manual') assert.equal(copied.note, 'Link copied');
    }
    assertInviteLink(link, relay, room, carried);
    // The note goes by itself.
    if (copied.note === 'Link copied') {
      await waitFor(() => ada.evaluate(() => document.getElementById('invite-status').textContent === ''), { timeout: 10_000 });
    }

    // The link opened by someone else: the join screen, the room filled in, no token, no name.
    const guest = await browser.newPage();
    pages.set('guest', guest);
    assert.equal(await guest.goto(link), 200);
    const form = await waitFor(
      async () => {
        const s = await pageState(guest);
        if (!s.joinEnabled) return null;
        return guest.evaluate(() => ({
          room: document.getElementById('room').value,
          name: document.getElementById('name').value,
          token: document.getElementById('token').value,
          tokenOpen: document.getElementById('token-details').open,
          focused: document.activeElement?.id ?? null,
          joinScreen: !document.getElementById('join-screen').hidden,
          inCall: !document.getElementById('call-screen').hidden,
        }));
      },
      { timeout: TIMEOUT_MS, describe: async () => JSON.stringify(await pageState(guest)) },
    );
    log(`${kind}: the invite link opens ${JSON.stringify(form)}`);
    assert.equal(form.joinScreen, true, 'the invite link opens the join screen');
    assert.equal(form.inCall, false, 'and does not join by itself');
    assert.equal(form.room, room, 'the room is filled in');
    assert.equal(form.name, '', 'no name is filled in');
    assert.equal(form.token, '', 'no token is filled in');
    assert.equal(form.tokenOpen, false, 'the token field stays collapsed');
    assert.equal(form.focused, 'name', 'the name, all that is left to type, has the focus');

    // A browser without the Clipboard API: the link in a read-only field, selected.
    if (kind === 'chromium') {
      const bo = await browser.newPage();
      pages.set('bo', bo);
      await bo.addInitScript(() => {
        Object.defineProperty(Navigator.prototype, 'clipboard', { configurable: true, get: () => undefined });
      });
      await joinCall(bo, `${relay.base}/?${query('bo')}`, { name: 'bo', timeout: TIMEOUT_MS });
      assert.equal(await bo.evaluate(() => navigator.clipboard), undefined, 'the Clipboard API is gone from this page');
      await bo.click('#invite');
      const fallback = await waitFor(
        () =>
          bo.evaluate(() => {
            const field = document.getElementById('invite-url');
            const via = document.getElementById('invite').dataset.copiedVia;
            return via
              ? {
                  via,
                  value: field.value,
                  readOnly: field.readOnly,
                  selected: field.value.slice(field.selectionStart, field.selectionEnd),
                  focused: document.activeElement === field,
                  note: document.getElementById('invite-status').textContent,
                }
              : null;
          }),
        { timeout: TIMEOUT_MS },
      );
      log(`without the Clipboard API: ${JSON.stringify(fallback)}`);
      assert.ok(['command', 'manual'].includes(fallback.via), fallback.via);
      assert.equal(await bo.isVisible('#invite-url'), true, 'the link is shown in a field');
      assert.equal(fallback.readOnly, true, 'a read-only field');
      assert.equal(fallback.focused, true, 'the field has the focus');
      assert.equal(fallback.selected, fallback.value, 'the whole link is selected, ready to copy');
      assert.ok(fallback.note.length > 0, 'the page says what to do');
      assertInviteLink(fallback.value, relay, room, carried);
      // Leaving takes the field away.
      await bo.click('#leave');
      await waitFor(async () => (await pageState(bo)).joinScreen, { timeout: TIMEOUT_MS });
      assert.equal(await bo.isVisible('#invite-url'), false, 'the invite field goes with the call');
    }
  });
}

/** The link is this page with the room and `carried`, and nothing else (no token, no name). */
function assertInviteLink(link, relay, room, carried) {
  const url = new URL(link);
  assert.equal(url.origin, relay.base, `the link is to this relay's page: ${link}`);
  assert.equal(url.pathname, '/', link);
  assert.equal(url.searchParams.get('room'), room, `the link names the room: ${link}`);
  for (const [name, value] of Object.entries(carried)) {
    assert.equal(url.searchParams.get(name), value, `the link keeps ${name}: ${link}`);
  }
  assert.equal(url.searchParams.has('token'), false, `no token in the link: ${link}`);
  assert.equal(url.searchParams.has('name'), false, `no name in the link: ${link}`);
  assert.deepEqual([...url.searchParams.keys()].sort(), ['room', ...Object.keys(carried)].sort(), `nothing else in the link: ${link}`);
  assert.equal(url.hash, '', link);
}

// (c) The stats overlay, on demand.
async function stats(kind) {
  await withCall(kind, {}, async ({ relay, browser, pages }) => {
    const room = `stats-${kind}-${process.pid}`;
    const ada = await browser.newPage();
    pages.set('ada', ada);
    const bo = await browser.newPage();
    pages.set('bo', bo);
    // Both click Join (in Firefox that click is what lets the page's audio run).
    await joinCall(ada, `${relay.base}/?room=${room}&name=ada&${MEDIA}`, { name: 'ada', timeout: TIMEOUT_MS });
    await joinCall(bo, `${relay.base}/?room=${room}&name=bo&${MEDIA}`, { name: 'bo', timeout: TIMEOUT_MS });
    await waitForVideoFrom(ada, ['bo']);
    // The overlays are kept up to date while hidden (the tests and the toggle read them).
    const s = await waitFor(
      async () => {
        const v = await pageState(ada);
        return /video /.test(v.overlays.bo) && /sending /.test(v.localOverlay) ? v : null;
      },
      { timeout: TIMEOUT_MS, describe: async () => JSON.stringify((await pageState(ada)).overlays) },
    );
    const shown = () =>
      ada.evaluate(() => {
        const visible = (el) => !!el && el.checkVisibility({ visibilityProperty: true }) && el.getClientRects().length > 0;
        return {
          local: visible(document.querySelector('[data-local] .stats')),
          remote: visible(document.querySelector('[data-peer-name="bo"] .stats')),
          notes: [...document.querySelectorAll('.stats-note')].map(visible),
          pressed: document.getElementById('stats-toggle').getAttribute('aria-pressed'),
        };
      });

    const before = await shown();
    log(`stats by default: ${JSON.stringify(before)} (overlay text: ${JSON.stringify(s.overlays.bo)})`);
    assert.deepEqual(before, { local: false, remote: false, notes: [false, false], pressed: 'false' }, 'no stats over the pictures by default');
    assert.equal(await ada.isVisible('#stats-toggle'), true, 'the Stats button is in the header');

    await ada.click('#stats-toggle');
    const after = await shown();
    log(`after Stats: ${JSON.stringify(after)}`);
    assert.deepEqual(after, { local: true, remote: true, notes: [true, true], pressed: 'true' }, 'Stats shows them on every tile');
    // The overlay sits over the top of the picture, with the figures in it.
    const text = await ada.evaluate(() => document.querySelector('[data-peer-name="bo"] .stats').innerText);
    assert.match(text, /video vp8/, `bo's overlay shows the video's stats: ${text}`);

    await ada.click('#stats-toggle');
    assert.deepEqual(await shown(), before, 'a second click hides them again');
  });
}

const TESTS = [
  ['on a phone (390x844) Leave stays in view, nothing scrolls sideways, the tiles are one column', phone, ['chromium']],
  ['Copy invite link copies the room without the token or name, and the link opens the join screen', invite, ['chromium', 'firefox']],
  ['the stats overlay is hidden until the Stats button shows it', stats, ['chromium', 'firefox']],
];

for (const [name, run, kinds] of TESTS) {
  for (const kind of kinds) {
    const skip = !browserKinds().includes(kind) && `BROWSERS leaves out ${kind}`;
    test(`${name} (${kind})`, { timeout: TEST_TIMEOUT_MS, skip }, () => run(kind));
  }
}
