// Helpers for the browser tests: start a relay on a free port (and a shaper in front of
// it), launch the system Chromium (playwright-core) or Firefox ESR (puppeteer-core over
// WebDriver BiDi) with fake camera/microphone behind one small page interface, read what
// a page of the web client shows, join calls, and poll pages until a condition holds.

import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const FIREFOX_PATH = process.env.FIREFOX_PATH || '/usr/bin/firefox-esr';

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
];

// Firefox preferences: fake camera and microphone without a permission prompt, and
// nothing that phones home or updates itself. A machine without a sound device (these test
// machines have none) leaves every AudioContext suspended, click or not, and the web
// client reads the microphone through one in Firefox: a mock audio device runs them.
const FIREFOX_PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.cubeb.force_mock_context': true,
  'app.update.enabled': false,
  'browser.shell.checkDefaultBrowser': false,
  'datareporting.policy.dataSubmissionEnabled': false,
  'toolkit.telemetry.enabled': false,
};

/** GET a JSON document without keep-alive (a pooled socket would hold the test runner open). */
function getJson(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`HTTP ${res.statusCode}`));
        else resolve(JSON.parse(body));
      });
    });
    req.on('error', reject);
    req.setTimeout(2000, () => req.destroy(new Error('timeout')));
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function log(...args) {
  const t = new Date().toISOString().slice(11, 23);
  console.log(`[${t}]`, ...args);
}

function tcpPortFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

function udpPortFree(port) {
  return new Promise((resolve) => {
    const socket = dgram.createSocket('udp4');
    socket.once('error', () => resolve(false));
    socket.bind(port, '127.0.0.1', () => socket.close(() => resolve(true)));
  });
}

/** A port free on 127.0.0.1 for both TCP (HTTP) and UDP (WebTransport). */
export async function freePort() {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await new Promise((resolve, reject) => {
      const server = net.createServer();
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address();
        server.close(() => resolve(port));
      });
    });
    if ((await tcpPortFree(port)) && (await udpPortFree(port))) return port;
  }
  throw new Error('no free port for the relay');
}

export function relayBinary() {
  const bin = process.env.SYNAPSE_BIN || path.join(REPO_ROOT, 'target/debug/synapse-sfu');
  if (!fs.existsSync(bin)) {
    throw new Error(`relay binary not found: ${bin} (build it with cargo build, or set SYNAPSE_BIN)`);
  }
  return bin;
}

/**
 * Spawns `bin args`, keeping the last of its output. `stop()` sends SIGINT (both the relay
 * and the shaper shut down gracefully on it), then SIGKILL after 5 s.
 */
function spawnLogged(bin, args, env) {
  const output = [];
  const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const keep = (chunk) => {
    output.push(chunk.toString());
    if (output.length > 5000) output.splice(0, 1000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const proc = {
    exited: null,
    logs: () => output.join(''),
    async stop(signal = 'SIGINT') {
      if (proc.exited) return;
      child.kill(signal);
      let timer;
      const stopped = await Promise.race([exit, new Promise((r) => (timer = setTimeout(r, 5000)))]);
      clearTimeout(timer); // a pending timer would keep the test runner alive
      if (!stopped) {
        child.kill('SIGKILL');
        await exit;
      }
    },
  };
  const exit = new Promise((resolve) => child.once('exit', (code, signal) => resolve((proc.exited = { code, signal }))));
  return proc;
}

function childEnv() {
  // Only the flags decide where the client comes from: an inherited SYNAPSE_WEB_ROOT is
  // passed explicitly or not at all.
  const env = { ...process.env };
  delete env.SYNAPSE_WEB_ROOT;
  env.NO_COLOR = '1'; // plain logs in CI output
  return env;
}

/**
 * Starts `synapse-sfu serve` (SYNAPSE_BIN, or the debug build) on a free port with a
 * fresh certificate directory. With SYNAPSE_WEB_ROOT set the web client is served from
 * that directory; otherwise the copy embedded in the binary is tested. `options.env` adds
 * environment variables for the relay (e.g. SYNAPSE_API_KEY and SYNAPSE_API_SECRET, so
 * that joins require access tokens).
 */
export async function startRelay({ env = {}, port = null, certsDir = null } = {}) {
  const bin = relayBinary();
  port ??= await freePort();
  // A relay started again (`port` and `certsDir` of one stopped) keeps its certificate:
  // the directory is then the caller's to remove.
  const ownCerts = !certsDir;
  certsDir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'synapse-browser-test-'));
  const args = ['serve', '--bind', `127.0.0.1:${port}`, '--certs-dir', certsDir];
  const webRoot = process.env.SYNAPSE_WEB_ROOT;
  if (webRoot) args.push('--web-root', webRoot);
  const proc = spawnLogged(bin, args, { ...childEnv(), ...env });

  const relay = {
    port,
    certsDir,
    base: `http://127.0.0.1:${port}`,
    logs: proc.logs,
    /**
     * Stops the relay (SIGINT: it sends going_away and drains); `keepCerts` keeps its
     * certificate directory, to start it again; `kill` ends it at once (SIGKILL: a crash,
     * no going_away).
     */
    async stop({ keepCerts = false, kill = false } = {}) {
      await proc.stop(kill ? 'SIGKILL' : 'SIGINT');
      if (ownCerts && !keepCerts) fs.rmSync(certsDir, { recursive: true, force: true });
    },
  };

  log(`relay: ${bin} ${args.join(' ')}`);
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (proc.exited) {
      await relay.stop();
      throw new Error(`relay exited early (${JSON.stringify(proc.exited)}):\n${relay.logs()}`);
    }
    try {
      relay.health = await getJson(`${relay.base}/healthz`);
      break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      await relay.stop();
      throw new Error(`relay did not answer /healthz within 20 s:\n${relay.logs()}`);
    }
    await sleep(100);
  }
  log(`relay up on port ${port}: ${JSON.stringify(relay.health)}`);
  return relay;
}

/**
 * Starts `synapse-sfu shaper` in front of the relay's UDP port: a page whose WebTransport
 * session goes to `shaper.addr` (?quic=) gets the impaired link. `options` are shaper
 * flags without the dashes, e.g. { 'up-kbps': 300, 'up-queue': '1000ms' }. Resolves once
 * the shaper has said where it listens. `listen` is its address (default: a free port); the
 * shaper cannot be reconfigured while it runs, so a test changes the link by stopping it
 * and starting another on the same address.
 */
export async function startShaper(relayPort, options, { listen = '127.0.0.1:0' } = {}) {
  const bin = relayBinary();
  const args = ['shaper', '--listen', listen, '--upstream', `127.0.0.1:${relayPort}`];
  for (const [name, value] of Object.entries(options)) args.push(`--${name}`, String(value));
  const proc = spawnLogged(bin, args, childEnv());
  log(`shaper: ${bin} ${args.join(' ')}`);
  const deadline = Date.now() + 20_000;
  for (;;) {
    const said = /shaper listening on (\S+)/.exec(proc.logs());
    if (said) {
      log(`shaper up on ${said[1]}`);
      return { addr: said[1], logs: proc.logs, stop: () => proc.stop() };
    }
    if (proc.exited || Date.now() > deadline) {
      await proc.stop();
      const why = proc.exited ? `exited (${JSON.stringify(proc.exited)})` : 'said nothing within 20 s';
      throw new Error(`the shaper ${why}:\n${proc.logs()}`);
    }
    await sleep(50);
  }
}

/**
 * Launches a headless browser, `kind` 'chromium' (Debian's chromium, playwright-core) or
 * 'firefox' (Debian's firefox-esr, puppeteer-core over WebDriver BiDi), with a fake camera
 * and microphone. Both answer the same small interface (see BrowserPage): tests are
 * written once. Each `newPage()` is a page of its own context (its own cookies, storage
 * and devices) and, in Firefox, its own window: a background tab would be hidden, and a
 * hidden page pauses its video consumers. `soundDevice: false` launches Firefox without
 * its mock sound device, as on a machine with no sound at all (Chromium ignores it).
 * `chromiumArgs` are more Chromium switches, e.g. from `fakeMicrophoneArgs` (Firefox
 * ignores them).
 */
export async function launchBrowser(kind = 'chromium', { soundDevice = true, chromiumArgs = [] } = {}) {
  if (kind === 'chromium') {
    const browser = await chromium.launch({
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: [...CHROMIUM_ARGS, ...chromiumArgs],
    });
    return {
      kind,
      version: `chromium ${browser.version()}`,
      async newPage({ viewport } = {}) {
        const context = await browser.newContext(viewport ? { viewport } : {});
        return new BrowserPage(kind, await context.newPage());
      },
      close: () => browser.close(),
    };
  }
  if (kind === 'firefox') {
    if (!fs.existsSync(FIREFOX_PATH)) throw new Error(`Firefox not found: ${FIREFOX_PATH} (apt-get install firefox-esr, or set FIREFOX_PATH)`);
    const browser = await puppeteer.launch({
      browser: 'firefox',
      executablePath: FIREFOX_PATH,
      headless: true,
      extraPrefsFirefox: { ...FIREFOX_PREFS, 'media.cubeb.force_mock_context': soundDevice },
    });
    return {
      kind,
      version: await browser.version(), // "firefox/153.7.0"
      async newPage({ viewport } = {}) {
        const context = await browser.createBrowserContext();
        const page = await context.newPage({ type: 'window' });
        await page.setViewport(viewport ?? { width: 1280, height: 720 });
        return new BrowserPage(kind, page);
      },
      close: () => browser.close(),
    };
  }
  throw new Error(`unknown browser ${kind}: chromium or firefox`);
}

/**
 * Chromium switches that make the fake microphone play a WAV file (looped) instead of its
 * beep, which sounds for ~80 ms every 500 ms: too short to count as speech for a speaker
 * detector (docs/PROTOCOL.md section 15.3 needs 40% of a 400 ms window). `sound` is
 * 'voice' (syllables of a gliding buzz at about -12 dBFS, 250 ms on and 50 ms off) or
 * 'silence'.
 */
export function fakeMicrophoneArgs(sound) {
  // The same bytes every time: written once per machine, through a rename so that a test
  // running meanwhile never reads half a file.
  const file = path.join(os.tmpdir(), `synapse-fake-mic-${sound}.wav`);
  if (!fs.existsSync(file)) {
    fs.writeFileSync(`${file}.${process.pid}`, wav(sound));
    fs.renameSync(`${file}.${process.pid}`, file);
  }
  return [`--use-file-for-fake-audio-capture=${file}`];
}

/** 4 s of 48 kHz mono 16-bit PCM as a WAV file (see fakeMicrophoneArgs). */
function wav(sound) {
  const rate = 48000;
  const n = rate * 4;
  const out = Buffer.alloc(44 + n * 2);
  let phase = 0;
  for (let i = 0; sound === 'voice' && i < n; i++) {
    const t = i / rate;
    phase += (2 * Math.PI * (140 + 40 * Math.sin(2 * Math.PI * 0.7 * t))) / rate;
    let x = 0;
    for (let h = 1; h <= 6; h++) x += Math.sin(h * phase) / h;
    const inSyllable = t % 0.3 < 0.25 ? Math.sqrt(Math.sin((Math.PI * (t % 0.3)) / 0.25)) : 0;
    out.writeInt16LE(Math.round(((0.35 * x * inSyllable) / 1.5) * 32767), 44 + i * 2);
  }
  out.write('RIFF', 0);
  out.writeUInt32LE(36 + n * 2, 4);
  out.write('WAVEfmt ', 8);
  out.writeUInt32LE(16, 16); // fmt chunk size
  out.writeUInt16LE(1, 20); // PCM
  out.writeUInt16LE(1, 22); // mono
  out.writeUInt32LE(rate, 24);
  out.writeUInt32LE(rate * 2, 28); // bytes per second
  out.writeUInt16LE(2, 32); // bytes per frame
  out.writeUInt16LE(16, 34); // bits per sample
  out.write('data', 36);
  out.writeUInt32LE(n * 2, 40);
  return out;
}

/**
 * One page, whichever browser drives it: the few things the tests do with pages. Console
 * lines and uncaught errors are kept (`consoleLines`, `pageErrors`) for failure reports.
 */
export class BrowserPage {
  constructor(kind, page) {
    this.kind = kind;
    this.page = page; // playwright's or puppeteer's Page, for what is not covered here
    this.consoleLines = [];
    this.pageErrors = [];
    page.on('console', (m) => this.consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => {
      this.consoleLines.push(`pageerror: ${e.message}`);
      // Firefox reports a WebSocket that cannot connect (the fallback racing a relay that
      // has just gone) as a page error, which no page can catch; the page handles it.
      if (/establish a connection to the server at wss?:\/\//.test(e.message)) return;
      this.pageErrors.push(e.message);
    });
  }

  /** Loads `url`; resolves to the HTTP status. */
  async goto(url) {
    const res = await this.page.goto(url);
    return res?.status() ?? null;
  }

  /** Runs `fn(arg)` in the page; resolves to its (JSON-able) result. */
  evaluate(fn, arg) {
    return this.page.evaluate(fn, arg);
  }

  /** A real click (a user gesture: it lets an audio context run) on the element `selector`. */
  click(selector) {
    return this.page.click(selector);
  }

  /** Whether the element `selector` is rendered and visible. */
  isVisible(selector) {
    return this.page.evaluate((sel) => {
      const el = document.querySelector(sel);
      return !!el && el.checkVisibility({ visibilityProperty: true }) && el.getClientRects().length > 0;
    }, selector);
  }

  /** Runs `fn` in every document this page loads from now on, before the page's scripts. */
  addInitScript(fn) {
    return this.kind === 'chromium' ? this.page.addInitScript(fn) : this.page.evaluateOnNewDocument(fn);
  }

  /** A PNG of the viewport (also written to `path` if given), as a Buffer. */
  async screenshot(path) {
    return Buffer.from(await this.page.screenshot(path ? { path } : {}));
  }
}

/** The browsers of the suite: BROWSERS=chromium,firefox (default both). */
export function browserKinds() {
  return (process.env.BROWSERS || 'chromium,firefox').split(',').map((k) => k.trim()).filter(Boolean);
}

/**
 * What a page of the web client shows and knows: window.synapse.state() (producers, send
 * state, tiles with their consumers) plus the status line, the error box, which screen is
 * up, the stats overlays, and each remote tile as drawn (`shown`: name, decoded video and
 * audio frames, badges).
 */
export function pageState(page) {
  return page.evaluate(() => {
    const $ = (id) => document.getElementById(id);
    return {
      ...window.synapse.state(),
      status: $('call-status')?.textContent ?? '',
      error: $('error')?.hidden ? '' : ($('error')?.textContent ?? ''),
      progress: $('join-progress')?.textContent ?? '',
      inCall: !$('call-screen')?.hidden,
      joinScreen: !$('join-screen')?.hidden,
      joinEnabled: !$('join')?.disabled,
      tokenOpen: !!$('token-details')?.open,
      shown: [...document.querySelectorAll('[data-peer-name]')].map((t) => ({
        name: t.dataset.peerName,
        video: Number(t.dataset.videoFrames ?? 0),
        audio: Number(t.dataset.audioFrames ?? 0),
        badges: t.querySelector('.badges')?.textContent ?? '',
      })),
      overlays: Object.fromEntries(
        [...document.querySelectorAll('[data-peer-name]')].map((t) => [t.dataset.peerName, t.querySelector('.stats')?.textContent ?? '']),
      ),
      localOverlay: document.querySelector('[data-local] .stats')?.textContent ?? '',
    };
  });
}

/**
 * Opens `url` (a page of the web client) in `page` and joins its call: with ?autojoin=1 in
 * the URL the page joins by itself, otherwise the test clicks Join as a person would (in
 * Firefox that click is what lets the page's audio run). Resolves to the page's state once
 * it is in the call; throws if it shows an error first.
 */
export async function joinCall(page, url, { name = '', timeout = 30_000 } = {}) {
  const status = await page.goto(url);
  if (status !== 200) {
    throw new Error(
      `the relay answered ${status} for the web client at / (a binary built before web-client/ existed? set SYNAPSE_WEB_ROOT)`,
    );
  }
  if (!/[?&]autojoin=1\b/.test(url)) {
    await waitFor(async () => (await pageState(page)).joinEnabled, {
      timeout,
      describe: async () => `${name}: Join stays disabled: ${JSON.stringify(await pageState(page))}`,
    });
    await page.click('#join');
  }
  return waitFor(
    async () => {
      const s = await pageState(page);
      if (s.error) throw new Error(`${name} shows an error: ${s.error}`);
      return s.inCall && s.status ? s : null;
    },
    { timeout, describe: async () => `${name}: ${JSON.stringify(await pageState(page))}` },
  );
}

/** Throws if a page of `pages` (name -> BrowserPage) shows an error or threw one. */
export async function assertNoPageErrors(pages) {
  for (const [name, page] of pages) {
    if (page.pageErrors.length) throw new Error(`${name} threw: ${page.pageErrors.join('; ')}`);
    const { error } = await pageState(page);
    if (error) throw new Error(`${name} shows an error: ${error}`);
  }
}

/** Prints each page's last console lines and the relay's last log lines (after a failure). */
export function printFailureLogs(pages, relay) {
  for (const [name, page] of pages) {
    console.log(`---- console of ${name} (${page.kind}, last 50 lines) ----\n${page.consoleLines.slice(-50).join('\n')}`);
  }
  if (relay) console.log(`---- relay log (last 200 lines) ----\n${relay.logs().split('\n').slice(-200).join('\n')}`);
}

/** Polls `check()` until it returns a truthy value; throws `describe()` on timeout. */
export async function waitFor(check, { timeout, interval = 250, describe }) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) {
      const detail = describe ? await describe() : '';
      throw new Error(`timed out after ${timeout} ms${detail ? `: ${detail}` : ''}`);
    }
    await sleep(interval);
  }
}
