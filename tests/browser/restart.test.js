// The server is killed (SIGKILL) mid-conversation and started again on the same
// data dir and port: both pages reconnect by themselves, resume with sync, and the
// messages typed during the outage are delivered exactly once.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  addAgent,
  agentJoin,
  agentLogin,
  agentSend,
  bodies,
  cleanup,
  consoleMessage,
  customerSend,
  customerStart,
  launchBrowser,
  newPage,
  sleep,
  startServer,
  tempDataDir,
  widgetMessage,
} from './harness.js';

let dir;
let server;
let browser;

before(async () => {
  dir = tempDataDir('restart');
  addAgent(dir, 'fay', 'pw-fay-123');
  server = await startServer({ dataDir: dir });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  cleanup(dir);
});

test('server killed and restarted: both pages reconnect, outage messages delivered exactly once', async () => {
  const agent = await newPage(browser);
  await agentLogin(agent, server.url, 'fay', 'pw-fay-123');
  await agentJoin(agent, 'support');
  const customer = await newPage(browser);
  await customerStart(customer, server.url, { name: 'Oscar' });
  await customer.getByTestId('widget-status').filter({ hasText: 'You are chatting with fay' }).waitFor();
  await customerSend(customer, 'before the crash');
  await agent.getByTestId('conv-item').filter({ hasText: 'Oscar' }).click();
  await consoleMessage(agent, 'before the crash').waitFor();
  await agentSend(agent, 'reply before the crash');
  await widgetMessage(customer, 'reply before the crash').waitFor();

  // Crash.
  const port = server.port;
  await server.kill();
  await customer.getByTestId('widget-conn').filter({ hasText: 'Reconnecting' }).waitFor();
  await agent.getByTestId('console-conn').filter({ hasText: 'Reconnecting' }).waitFor();

  // Typed while the server is down: shown as pending, kept in the outbox.
  await customerSend(customer, 'typed during the outage 1');
  await customerSend(customer, 'typed during the outage 2 🔌');
  await agentSend(agent, 'agent typed during the outage');
  await widgetMessage(customer, 'typed during the outage 2 🔌').and(customer.locator('[data-status="pending"]')).waitFor();
  await consoleMessage(agent, 'agent typed during the outage').and(agent.locator('[data-status="pending"]')).waitFor();
  await sleep(1500);

  // Back up on the same port and data dir.
  server = await startServer({ dataDir: dir, port });
  await customer.getByTestId('widget-conn').waitFor({ state: 'hidden', timeout: 45_000 });
  await agent.getByTestId('console-conn').waitFor({ state: 'hidden', timeout: 45_000 });

  await consoleMessage(agent, 'typed during the outage 2 🔌').waitFor({ timeout: 30_000 });
  await widgetMessage(customer, 'agent typed during the outage').waitFor({ timeout: 30_000 });
  await widgetMessage(customer, 'typed during the outage 2 🔌').and(customer.locator('[data-status="sent"], [data-status="seen"]')).waitFor();
  await consoleMessage(agent, 'agent typed during the outage').and(agent.locator('[data-status="sent"], [data-status="seen"]')).waitFor();

  // The conversation goes on after the restart.
  await customerSend(customer, 'after the restart');
  await consoleMessage(agent, 'after the restart').waitFor();
  await agentSend(agent, 'reply after the restart');
  await widgetMessage(customer, 'reply after the restart').waitFor();

  // The console re-joined its room by itself: a new customer is assigned to fay again.
  const second = await newPage(browser);
  await customerStart(second, server.url, { name: 'Pia' });
  await second.getByTestId('widget-status').filter({ hasText: 'You are chatting with fay' }).waitFor();
  await agent.getByTestId('conv-item').filter({ hasText: 'Pia' }).waitFor();

  const customerView = await bodies(customer, 'widget-messages');
  const agentView = await bodies(agent, 'conv-messages');
  const count = (list, x) => list.filter((b) => b === x).length;
  for (const text of ['typed during the outage 1', 'typed during the outage 2 🔌', 'agent typed during the outage']) {
    assert.equal(count(customerView, text), 1, `customer sees "${text}" once`);
    assert.equal(count(agentView, text), 1, `agent sees "${text}" once`);
  }
  assert.deepEqual(customerView.slice(0, 2), ['before the crash', 'reply before the crash']);
  assert.ok(customerView.indexOf('typed during the outage 1') < customerView.indexOf('typed during the outage 2 🔌'), 'customer order kept');

  // What the server stored: each outage message exactly once (fresh page, history from sync).
  const fresh = await newPage(browser);
  await agentLogin(fresh, server.url, 'fay', 'pw-fay-123');
  await fresh.getByTestId('conv-item').filter({ hasText: 'Oscar' }).click();
  await consoleMessage(fresh, 'reply after the restart').waitFor();
  const stored = await bodies(fresh, 'conv-messages');
  for (const text of ['typed during the outage 1', 'typed during the outage 2 🔌', 'agent typed during the outage', 'before the crash']) {
    assert.equal(count(stored, text), 1, `stored once: "${text}"`);
  }
  // Nothing left in either outbox.
  const left = await customer.evaluate(() => Object.keys(localStorage).filter((k) => k.endsWith(':outbox')).map((k) => localStorage.getItem(k)));
  assert.deepEqual(left, []);

  for (const p of [agent, customer, fresh]) assert.deepEqual(p.errors, []);
});
