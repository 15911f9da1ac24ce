// Shared helpers for the browser tests: start/stop a real `parley` server on a
// temporary data dir, create agents, launch Debian's Chromium through
// playwright-core, and drive the widget and the console.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, '../..');
export const BIN = process.env.PARLEY_BIN ? resolve(process.env.PARLEY_BIN) : resolve(HERE, '../../target/debug/parley');
// The README's screenshots are refreshed only on request (PARLEY_SCREENSHOTS=1),
// so an ordinary test run leaves the work tree as it was.
export const SCREENSHOTS = process.env.PARLEY_SCREENSHOTS
  ? join(REPO, 'docs', 'screenshots')
  : join(tmpdir(), 'parley-screenshots');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'];

export function tempDataDir(tag = 'parley') {
  return mkdtempSync(join(tmpdir(), `${tag}-browser-`));
}

/** `parley agent add NAME --password PW --data-dir DIR` */
export function addAgent(dataDir, name, password, extra = []) {
  execFileSync(BIN, ['agent', 'add', name, '--password', password, '--data-dir', dataDir, ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 60_000,
  });
}

/**
 * Start `parley serve --listen 127.0.0.1:PORT --data-dir DIR [args]` and wait for
 * its `listening http=IP:PORT` line. port 0 picks a free one.
 */
export async function startServer({ dataDir, port = 0, args = [], timeoutMs = 30_000 } = {}) {
  const proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    // No TCP gateway: tests must not take (or fight over) its default port.
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn', PARLEY_TCP_LISTEN: '' },
  });
  const stderr = [];
  proc.stderr.on('data', (d) => {
    stderr.push(d.toString());
    if (process.env.PARLEY_TEST_VERBOSE) process.stderr.write(`[parley] ${d}`);
  });
  const lines = createInterface({ input: proc.stdout });
  const addr = await new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`parley did not print "listening" in ${timeoutMs} ms; stderr:\n${stderr.join('')}`)), timeoutMs);
    proc.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`parley exited early (code ${code}, signal ${sig}); stderr:\n${stderr.join('')}`));
    });
    lines.on('line', (line) => {
      const m = /^listening http=(\S+)$/.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        resolvePromise(m[1]);
      }
    });
  });
  proc.removeAllListeners('exit');
  const [host, p] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
  const server = {
    proc,
    port: p,
    url: `http://${host}:${p}`,
    stderr,
    exited: new Promise((r) => proc.once('exit', r)),
    /** SIGKILL: no goodbye to anyone. */
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await server.exited;
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
        await server.exited;
        clearTimeout(t);
      }
    },
  };
  return server;
}

export async function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
}

/** A context with English UI (unless locale given), a desktop viewport, and console errors collected. */
export async function newPage(browser, { locale = 'en-US', viewport = { width: 1280, height: 800 }, bypassCSP = false, permissions = [] } = {}) {
  const context = await browser.newContext({ locale, viewport, bypassCSP, permissions });
  const page = await context.newPage();
  page.errors = [];
  page.cspViolations = [];
  page.on('pageerror', (err) => page.errors.push(String(err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      const text = msg.text();
      if (/Content Security Policy|Refused to/i.test(text)) page.cspViolations.push(text);
    }
    if (process.env.PARLEY_TEST_VERBOSE) console.log(`[page ${msg.type()}] ${msg.text()}`);
  });
  return page;
}

export function screenshotPath(name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  return join(SCREENSHOTS, name);
}

export function cleanup(dir) {
  try {
    rmSync(dir, { recursive: true, force: true });
  } catch {}
}

// ---- widget -------------------------------------------------------------------------

/** Open the demo page, open the widget, give a name, start a chat. */
export async function customerStart(page, baseUrl, { name = '', room = null } = {}) {
  await page.goto(room ? `${baseUrl}/?room=${encodeURIComponent(room)}` : `${baseUrl}/`);
  await page.getByTestId('widget-bubble').click();
  await page.getByTestId('widget-name-input').fill(name);
  await page.getByTestId('widget-start').click();
  await page.getByTestId('widget-input').waitFor({ state: 'visible' });
}

export async function customerSend(page, text) {
  const input = page.getByTestId('widget-input');
  await input.fill(text);
  await input.press('Enter');
}

/** The widget message <li> whose body is exactly text. */
export function widgetMessage(page, text) {
  return page.getByTestId('widget-messages').getByTestId('message').filter({ has: page.getByTestId('message-body').getByText(text, { exact: true }) });
}

// ---- console ----------------------------------------------------------------------------

export async function agentLogin(page, baseUrl, name, password) {
  await page.goto(`${baseUrl}/agent`);
  await page.getByTestId('login-name').fill(name);
  await page.getByTestId('login-password').fill(password);
  await page.getByTestId('login-submit').click();
  await waitSignedIn(page, name);
}

/** The console shows the signed-in agent (after a login or a reload). */
export async function waitSignedIn(page, name) {
  await page.getByTestId('console').waitFor({ state: 'visible' });
  await page.getByTestId('me-name').filter({ hasText: name }).waitFor({ state: 'attached' });
}

/** Join a room from the sidebar (no-op if already in it) and wait for its snapshot. */
export async function agentJoin(page, room) {
  const section = page.locator(`[data-testid="room"][data-room="${room}"]`);
  if ((await section.count()) === 0) {
    await page.getByTestId('room-join-input').fill(room);
    await page.getByTestId('room-join-submit').click();
  }
  await section.getByTestId('agents').waitFor();
  await section.locator('[data-testid="queue"], [data-testid="queue-empty"]').first().waitFor();
  // "Loading…" is replaced by the real queue once the room reply came back.
  await page.waitForFunction((r) => {
    const el = document.querySelector(`[data-testid="room"][data-room="${r}"] [data-testid="queue-empty"]`);
    return !el || !/Loading/.test(el.textContent);
  }, room);
}

export async function agentSend(page, text, { internal = false } = {}) {
  const box = page.getByTestId('conv-internal');
  if ((await box.isChecked()) !== internal) await box.setChecked(internal);
  const input = page.getByTestId('conv-input');
  await input.fill(text);
  await input.press('Enter');
}

export function consoleMessage(page, text) {
  return page.getByTestId('conv-messages').getByTestId('message').filter({ has: page.getByTestId('message-body').getByText(text, { exact: true }) });
}

/** Bodies of all messages in a list, in DOM order. */
export async function bodies(page, listTestId) {
  return page.getByTestId(listTestId).getByTestId('message-body').allTextContents();
}

// ---- accessibility ----------------------------------------------------------------------

// axe-core from this folder's npm packages (nothing is downloaded at test time). It is
// evaluated through the DevTools protocol, which the pages' CSP does not apply to.
const AXE_SOURCE = readFileSync(join(HERE, 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');

/**
 * Run axe-core on the whole page, open shadow roots included (axe walks them), and return
 * the violations of the given impacts, plus how many checked nodes were inside a shadow
 * root (axe names those by a selector path through the host), so that a caller can make
 * sure the widget's shadow content was looked at.
 */
export async function axeCheck(page, { impacts = ['serious', 'critical'] } = {}) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(AXE_SOURCE);
  return page.evaluate(async (impacts) => {
    const res = await window.axe.run(document, { resultTypes: ['violations'] });
    const inShadow = (n) => n.target.some((t) => Array.isArray(t));
    const shadowNodes = [...res.passes, ...res.violations, ...res.incomplete].reduce((k, r) => k + r.nodes.filter(inShadow).length, 0);
    const violations = res.violations
      .filter((v) => impacts.includes(v.impact))
      .map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => `${JSON.stringify(n.target)}: ${n.failureSummary}`) }));
    return { violations, shadowNodes };
  }, impacts);
}

/** Fail with a readable list when axe finds serious or critical violations on the page. */
export async function assertAccessible(page, label, { shadow = false } = {}) {
  const { violations, shadowNodes } = await axeCheck(page);
  const report = violations.map((v) => `${v.impact} ${v.id} (${v.help}):\n    ${v.nodes.join('\n    ')}`).join('\n  ');
  if (violations.length) throw new Error(`${label}: axe found ${violations.length} serious or critical violation(s):\n  ${report}`);
  if (shadow && shadowNodes === 0) throw new Error(`${label}: axe checked nothing inside the widget's shadow root`);
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}
