// The widget embedded on another site (another origin) with the one-line script
// tag: it finds the server from its own script URL, draws in a shadow root that
// the host page's CSS cannot reach, and chats over ws://SERVER/ws.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import {
  addAgent,
  agentJoin,
  agentLogin,
  cleanup,
  consoleMessage,
  customerSend,
  launchBrowser,
  newPage,
  startServer,
  tempDataDir,
  widgetMessage,
} from './harness.js';

let dir;
let server;
let browser;
let host;
let hostUrl;

// A "customer's site" with aggressive global CSS that must not reach the widget.
const hostPage = (parley) => `<!doctype html>
<html><head><meta charset="utf-8"><title>Some other shop</title>
<style>* { font-family: "Comic Sans MS", cursive !important; color: red !important; } button { display: none !important; } div { border: 5px solid lime !important; }</style>
</head><body><h1>Another site</h1>
<script src="${parley}/widget.js" data-room="support" async></script>
</body></html>`;

before(async () => {
  dir = tempDataDir('embed');
  addAgent(dir, 'ida', 'pw-ida-123');
  host = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(hostPage(server.url));
  });
  await new Promise((r) => host.listen(0, '127.0.0.1', r));
  hostUrl = `http://127.0.0.1:${host.address().port}`;
  server = await startServer({ dataDir: dir, args: ['--allowed-origins', hostUrl] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await new Promise((r) => host?.close(r));
  cleanup(dir);
});

test('widget embedded on another origin loads from its script URL and chats', async () => {
  const agent = await newPage(browser);
  await agentLogin(agent, server.url, 'ida', 'pw-ida-123');
  await agentJoin(agent, 'support');

  const page = await newPage(browser);
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
  await page.getByTestId('widget-status').filter({ hasText: 'You are chatting with ida' }).waitFor();
  await customerSend(page, 'hello from another site');
  await agent.getByTestId('conv-item').filter({ hasText: 'Jo' }).click();
  await consoleMessage(agent, 'hello from another site').waitFor();
  await widgetMessage(page, 'hello from another site').and(page.locator('[data-status="seen"]')).waitFor();
  // The resume token is kept in the host site's localStorage, keyed by the Parley origin.
  const keys = await page.evaluate(() => Object.keys(localStorage));
  assert.ok(keys.includes(`parley:${new URL(server.url).origin}:token`), keys.join(','));
  assert.deepEqual(page.errors, []);
});
