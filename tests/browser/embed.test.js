// The widget embedded on another site (another origin) with the one-line script
// tag: it finds the server from its own script URL, draws in a shadow root that
// the host page's CSS cannot reach, and chats over ws://SERVER/ws.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { newPage } from './harness.js';
import { customerWritesAgentOpens, openConsole, parleySuite, waitChattingWith, widgetMessageIn } from './scenarios.js';

let host;
let hostUrl;

// A "customer's site" with aggressive global CSS that must not reach the widget.
const hostPage = (parley) => `<!doctype html>
<html><head><meta charset="utf-8"><title>Some other shop</title>
<style>* { font-family: "Comic Sans MS", cursive !important; color: red !important; } button { display: none !important; } div { border: 5px solid lime !important; }</style>
</head><body><h1>Another site</h1>
<script src="${parley}/widget.js" data-room="support" async></script>
</body></html>`;

const suite = parleySuite({
  tag: 'embed',
  agents: [['ida', 'pw-ida-123']],
  // The host site is up before the server, which allows its origin.
  beforeServer: async () => {
    host = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(hostPage(suite.server.url));
    });
    await new Promise((r) => host.listen(0, '127.0.0.1', r));
    hostUrl = `http://127.0.0.1:${host.address().port}`;
  },
  serverArgs: () => ['--allowed-origins', hostUrl],
  afterServer: async () => {
    await new Promise((r) => host?.close(r));
  },
});

test('widget embedded on another origin loads from its script URL and chats', async () => {
  const agent = await openConsole(suite, 'ida', 'pw-ida-123');

  const page = await newPage(suite.browser);
  const failed = [];
  page.on('requestfailed', (r) => failed.push(`${r.url()} ${r.failure()?.errorText}`));
  page.on('console', (m) => m.type() === 'error' && failed.push(m.text()));
  await page.goto(hostUrl);
  const bubble = page.getByTestId('widget-bubble');
  try {
    await bubble.waitFor({ state: 'visible', timeout: 10_000 });
  } catch (err) {
    throw new Error(`the widget did not appear on ${hostUrl}: ${failed.join(' | ') || err.message}`);
  }
  // Host CSS does not reach into the shadow root.
  const color = await bubble.evaluate((el) => getComputedStyle(el).display);
  assert.notEqual(color, 'none', 'host page CSS hid the widget button');
  await bubble.click();
  await page.getByTestId('widget-name-input').fill('Jo');
  await page.getByTestId('widget-start').click();
  await waitChattingWith(page, 'ida');
  await customerWritesAgentOpens(page, agent, 'Jo', 'hello from another site');
  await widgetMessageIn(page, 'hello from another site', 'seen').waitFor();
  // The resume token is kept in the host site's localStorage, keyed by the Parley origin.
  const keys = await page.evaluate(() => Object.keys(localStorage));
  assert.ok(keys.includes(`parley:${new URL(suite.server.url).origin}:token`), keys.join(','));
  assert.deepEqual(page.errors, []);
});

test('widget embedded on an origin the server does not allow: says so plainly and stops reconnecting', async () => {
  // Another site, whose origin is not in --allowed-origins.
  const other = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(hostPage(suite.server.url));
  });
  await new Promise((r) => other.listen(0, '127.0.0.1', r));
  const otherUrl = `http://127.0.0.1:${other.address().port}`;
  try {
    const page = await newPage(suite.browser);
    const sockets = [];
    page.on('websocket', (ws) => sockets.push(ws.url()));
    await page.goto(otherUrl);
    await page.getByTestId('widget-bubble').click();
    const banner = page.getByTestId('widget-conn');
    await banner.filter({ hasText: `Chat cannot connect from this site (${otherUrl})` }).waitFor();
    assert.equal(await banner.getAttribute('data-state'), 'blocked');
    assert.doesNotMatch(await banner.textContent(), /Reconnecting/);
    assert.equal(await page.getByTestId('widget-start').isDisabled(), true, 'nothing to start');
    assert.equal(await page.getByTestId('widget-status').textContent(), 'Chat is not available here');

    // No more connection attempts (the backoff would have tried again within these seconds).
    const tried = sockets.length;
    assert.ok(tried >= 1);
    await page.waitForTimeout(3000);
    assert.equal(sockets.length, tried, 'the widget stopped reconnecting');
    assert.doesNotMatch(await banner.textContent(), /Reconnecting/);
    assert.deepEqual(page.errors, []);
    await page.context().close();
  } finally {
    await new Promise((r) => other.close(r));
  }
});
