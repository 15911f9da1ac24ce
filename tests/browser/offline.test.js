// The customer's network drops (the server stays up): messages typed offline wait
// in the localStorage outbox, survive a page reload made while still offline, and
// are sent exactly once when the network returns.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agentSend, bodies, consoleMessage, customerSend, newPage, sleep, widgetMessage } from './harness.js';
import { customerWritesAgentOpens, openConsole, parleySuite, startChatWith, widgetMessageIn } from './scenarios.js';

const suite = parleySuite({ tag: 'offline', agents: [['hana', 'pw-hana-123']] });

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
  const agent = await openConsole(suite, 'hana', 'pw-hana-123');

  const customer = await newPage(suite.browser);
  const net = await switchableNetwork(customer);
  await startChatWith(customer, suite.server.url, { name: 'Rae', agent: 'hana' });
  await customerWritesAgentOpens(customer, agent, 'Rae', 'online message');

  await net.cut();
  await customer.getByTestId('widget-conn').filter({ hasText: 'Reconnecting' }).waitFor();
  await customerSend(customer, 'offline 1');
  await customerSend(customer, 'offline 2 ✈️');
  await widgetMessageIn(customer, 'offline 2 ✈️', 'pending').waitFor();
  // Meanwhile the agent writes; the customer will get it with sync.
  await agentSend(agent, 'agent wrote while you were away');

  // Reload while still offline: the pending messages come back from the outbox.
  await customer.reload();
  await widgetMessageIn(customer, 'offline 1', 'pending').waitFor();
  await widgetMessageIn(customer, 'offline 2 ✈️', 'pending').waitFor();
  await sleep(1000);
  assert.equal(await consoleMessage(agent, 'offline 1').count(), 0, 'nothing got through while offline');

  net.restore();
  await widgetMessageIn(customer, 'offline 2 ✈️', 'sent', 'seen').waitFor({ timeout: 45_000 });
  await consoleMessage(agent, 'offline 2 ✈️').waitFor();
  await widgetMessage(customer, 'agent wrote while you were away').waitFor();
  await sleep(500);
  const expected = ['online message', 'agent wrote while you were away', 'offline 1', 'offline 2 ✈️'];
  assert.deepEqual(await bodies(agent, 'conv-messages'), expected);
  assert.deepEqual(await bodies(customer, 'widget-messages'), expected);
  assert.deepEqual(customer.errors, []);
});
