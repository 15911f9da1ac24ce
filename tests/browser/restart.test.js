// The server is killed (SIGKILL) mid-conversation and started again on the same
// data dir and port: both pages reconnect by themselves, resume with sync, and the
// messages typed during the outage are delivered exactly once.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agentSend, bodies, consoleMessage, customerSend, sleep, startServer, widgetMessage } from './harness.js';
import {
  agentSendsToCustomer,
  consoleMessageIn,
  conversationUnderWay,
  convItem,
  customerSendsToAgent,
  openAssignedChat,
  openConsole,
  openConversation,
  parleySuite,
  widgetMessageIn,
} from './scenarios.js';

const suite = parleySuite({ tag: 'restart', agents: [['fay', 'pw-fay-123']] });

test('server killed and restarted: both pages reconnect, outage messages delivered exactly once', async () => {
  const { agent, customer } = await conversationUnderWay(suite, { agentName: 'fay', password: 'pw-fay-123', customerName: 'Oscar', firstMessage: 'before the crash' });
  await agentSendsToCustomer(agent, customer, 'reply before the crash');

  // Crash.
  const port = suite.server.port;
  await suite.server.kill();
  await customer.getByTestId('widget-conn').filter({ hasText: 'Reconnecting' }).waitFor();
  await agent.getByTestId('console-conn').filter({ hasText: 'Reconnecting' }).waitFor();

  // Typed while the server is down: shown as pending, kept in the outbox.
  await customerSend(customer, 'typed during the outage 1');
  await customerSend(customer, 'typed during the outage 2 🔌');
  await agentSend(agent, 'agent typed during the outage');
  await widgetMessageIn(customer, 'typed during the outage 2 🔌', 'pending').waitFor();
  await consoleMessageIn(agent, 'agent typed during the outage', 'pending').waitFor();
  await sleep(1500);

  // Back up on the same port and data dir.
  suite.server = await startServer({ dataDir: suite.dir, port });
  await customer.getByTestId('widget-conn').waitFor({ state: 'hidden', timeout: 45_000 });
  await agent.getByTestId('console-conn').waitFor({ state: 'hidden', timeout: 45_000 });

  await consoleMessage(agent, 'typed during the outage 2 🔌').waitFor({ timeout: 30_000 });
  await widgetMessage(customer, 'agent typed during the outage').waitFor({ timeout: 30_000 });
  await widgetMessageIn(customer, 'typed during the outage 2 🔌', 'sent', 'seen').waitFor();
  await consoleMessageIn(agent, 'agent typed during the outage', 'sent', 'seen').waitFor();

  // The conversation goes on after the restart.
  await customerSendsToAgent(customer, agent, 'after the restart');
  await agentSendsToCustomer(agent, customer, 'reply after the restart');

  // The console re-joined its room by itself: a new customer is assigned to fay again.
  await openAssignedChat(suite, { name: 'Pia', agent: 'fay' });
  await convItem(agent, 'Pia').waitFor();

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
  const fresh = await openConsole(suite, 'fay', 'pw-fay-123', { room: null });
  await openConversation(fresh, 'Oscar');
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
