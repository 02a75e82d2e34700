// Helpers for the browser tests: start a relay on a free port (and a shaper in front of
// it), launch the system Chromium with fake camera/microphone, and poll pages until a
// condition holds.

import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

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
    async stop() {
      if (proc.exited) return;
      child.kill('SIGINT');
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
export async function startRelay({ env = {} } = {}) {
  const bin = relayBinary();
  const port = await freePort();
  const certsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'synapse-browser-test-'));
  const args = ['serve', '--bind', `127.0.0.1:${port}`, '--certs-dir', certsDir];
  const webRoot = process.env.SYNAPSE_WEB_ROOT;
  if (webRoot) args.push('--web-root', webRoot);
  const proc = spawnLogged(bin, args, { ...childEnv(), ...env });

  const relay = {
    port,
    base: `http://127.0.0.1:${port}`,
    logs: proc.logs,
    async stop() {
      await proc.stop();
      fs.rmSync(certsDir, { recursive: true, force: true });
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
 * the shaper has said where it listens.
 */
export async function startShaper(relayPort, options) {
  const bin = relayBinary();
  const args = ['shaper', '--listen', '127.0.0.1:0', '--upstream', `127.0.0.1:${relayPort}`];
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

export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
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
