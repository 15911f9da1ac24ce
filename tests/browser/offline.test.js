// The customer's network drops (the server stays up): messages typed offline wait
// in the localStorage outbox, survive a page reload made while still offline, and
// are sent exactly once when the network returns.

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
  dir = tempDataDir('offline');
  addAgent(dir, 'hana', 'pw-hana-123');
  server = await startServer({ dataDir: dir });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  cleanup(dir);
});

/** Route the page's WebSockets through Playwright so the "network" can be cut and restored. */
async function switchableNetwork(page) {
  const net = { down: false, open: new Set() };
  await page.context().routeWebSocket(/\/ws$/, (ws) => {
    if (net.down) {
      ws.close({ code: 4000, reason: 'network down (test)' });
      return;
    }
    ws.connectToServer();
    net.open.add(ws);
    ws.onClose(() => net.open.delete(ws));
  });
  net.cut = async () => {
    net.down = true;
    for (const ws of [...net.open]) await ws.close({ code: 4000, reason: 'network down (test)' }).catch(() => {});
  };
  net.restore = () => {
    net.down = false;
  };
  return net;
}

test('offline: typed messages survive a reload while offline and are sent once on return', async () => {
  const agent = await newPage(browser);
  await agentLogin(agent, server.url, 'hana', 'pw-hana-123');
  await agentJoin(agent, 'support');

  const customer = await newPage(browser);
  const net = await switchableNetwork(customer);
  await customerStart(customer, server.url, { name: 'Rae' });
  await customer.getByTestId('widget-status').filter({ hasText: 'You are chatting with hana' }).waitFor();
  await customerSend(customer, 'online message');
  await agent.getByTestId('conv-item').filter({ hasText: 'Rae' }).click();
  await consoleMessage(agent, 'online message').waitFor();

  await net.cut();
  await customer.getByTestId('widget-conn').filter({ hasText: 'Reconnecting' }).waitFor();
  await customerSend(customer, 'offline 1');
  await customerSend(customer, 'offline 2 ✈️');
  await widgetMessage(customer, 'offline 2 ✈️').and(customer.locator('[data-status="pending"]')).waitFor();
  // Meanwhile the agent writes; the customer will get it with sync.
  await agentSend(agent, 'agent wrote while you were away');

  // Reload while still offline: the pending messages come back from the outbox.
  await customer.reload();
  await widgetMessage(customer, 'offline 1').and(customer.locator('[data-status="pending"]')).waitFor();
  await widgetMessage(customer, 'offline 2 ✈️').and(customer.locator('[data-status="pending"]')).waitFor();
  await sleep(1000);
  assert.equal(await consoleMessage(agent, 'offline 1').count(), 0, 'nothing got through while offline');

  net.restore();
  await widgetMessage(customer, 'offline 2 ✈️').and(customer.locator('[data-status="sent"], [data-status="seen"]')).waitFor({ timeout: 45_000 });
  await consoleMessage(agent, 'offline 2 ✈️').waitFor();
  await widgetMessage(customer, 'agent wrote while you were away').waitFor();
  await sleep(500);
  const expected = ['online message', 'agent wrote while you were away', 'offline 1', 'offline 2 ✈️'];
  assert.deepEqual(await bodies(agent, 'conv-messages'), expected);
  assert.deepEqual(await bodies(customer, 'widget-messages'), expected);
  assert.deepEqual(customer.errors, []);
});
