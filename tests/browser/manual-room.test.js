// A room with manual assignment: customers wait in line with their live position,
// the agent sees the queue with waiting times and accepts.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agentJoin, consoleMessage, customerSend, widgetMessage } from './harness.js';
import {
  agentSendsToCustomer,
  assertNoErrorsOrViolations,
  convItem,
  customerSendsToAgent,
  openChat,
  openConsole,
  parleySuite,
  waitWidgetStatus,
} from './scenarios.js';

const suite = parleySuite({
  tag: 'manual',
  agents: [['dee', 'pw-dee-123']],
  serverArgs: ['--rooms', 'support,sales', '--manual-rooms', 'sales'],
});

test('manual room: queue positions, waiting times, accept from the queue and from the view, availability', async () => {
  const agent = await openConsole(suite, 'dee', 'pw-dee-123', { room: 'sales' });
  const sales = agent.locator('[data-testid="room"][data-room="sales"]');
  await sales.locator('[data-testid="agent-item"][data-availability="online"]').filter({ hasText: 'dee' }).waitFor();

  // Three customers open chats in "sales"; nobody is assigned automatically.
  const names = ['Kai', 'Lin 林', 'Mo'];
  const customers = [];
  for (const name of names) customers.push(await openChat(suite, { name, room: 'sales' }));
  await waitWidgetStatus(customers[0], 'You are next in line');
  await waitWidgetStatus(customers[1], 'You are number 2 in line');
  await waitWidgetStatus(customers[2], 'You are number 3 in line');
  await customerSend(customers[0], 'Do you ship to Norway?');

  // The agent sees all three waiting, oldest first, with ticking waiting times.
  const queue = sales.getByTestId('queue-item');
  await queue.nth(2).waitFor();
  assert.deepEqual(await sales.getByTestId('queue-name').allTextContents(), names);
  await sales.getByTestId('room-queue-count').filter({ hasText: '3' }).waitFor();
  const wait = queue.first().getByTestId('queue-wait');
  assert.match(await wait.textContent(), /^waiting \d+s$/);
  const before = await wait.textContent();
  await agent.waitForFunction((b) => document.querySelector('[data-testid="queue-wait"]').textContent !== b, before);

  // Accept the first from the queue.
  await queue.first().getByTestId('queue-accept').click();
  await agent.getByTestId('conv-title').filter({ hasText: 'Kai' }).waitFor();
  await agent.getByTestId('conv-status').filter({ hasText: 'Active' }).waitFor();
  await consoleMessage(agent, 'Do you ship to Norway?').waitFor();
  await waitWidgetStatus(customers[0], 'You are chatting with dee');
  await waitWidgetStatus(customers[1], 'You are next in line');
  await waitWidgetStatus(customers[2], 'You are number 2 in line');
  await agentSendsToCustomer(agent, customers[0], 'Yes, we do! Delivery takes about a week.');
  await sales.locator('[data-testid="agent-item"]').filter({ hasText: 'dee' }).getByTestId('agent-load').filter({ hasText: /^1\// }).waitFor();

  // "View" a queued conversation, then accept it from the conversation view.
  await sales.getByTestId('queue-item').filter({ hasText: 'Lin 林' }).getByTestId('queue-view').click();
  await agent.getByTestId('conv-title').filter({ hasText: 'Lin 林' }).waitFor();
  await agent.getByTestId('conv-status').filter({ hasText: 'Queued' }).waitFor();
  await agent.getByTestId('conv-accept').click();
  await agent.getByTestId('conv-status').filter({ hasText: 'Active' }).waitFor();
  await waitWidgetStatus(customers[1], 'You are chatting with dee');
  await waitWidgetStatus(customers[2], 'You are next in line');
  assert.deepEqual(await sales.getByTestId('queue-name').allTextContents(), ['Mo']);
  assert.equal(await agent.getByTestId('conv-item').count(), 2);

  // Transfer to a room: back into that room's queue (the server does not hand it straight back to dee).
  await agent.getByTestId('conv-transfer-select').selectOption({ label: 'Room: support' });
  await agent.getByTestId('conv-transfer').click();
  await customers[1]
    .getByTestId('widget-messages')
    .locator('[data-event="transferred"]')
    .filter({ hasText: 'Chat transferred to the support team' })
    .waitFor();
  await agent.getByTestId('conv-status').filter({ hasText: '#support' }).waitFor();
  await waitWidgetStatus(customers[1], 'You are next in line');
  const support = agent.locator('[data-testid="room"][data-room="support"]');
  await support.getByTestId('queue-item').filter({ hasText: 'Lin 林' }).waitFor();
  await convItem(agent, 'Lin 林').waitFor({ state: 'detached' });
  // The widget (opened for "sales") follows its conversation into "support", also after a reload.
  await customerSendsToAgent(customers[1], agent, 'still here after the transfer');
  await customers[1].reload();
  await widgetMessage(customers[1], 'still here after the transfer').waitFor();
  await waitWidgetStatus(customers[1], 'You are next in line');

  // Availability: away, and back online; the presence list follows.
  await agent.getByTestId('availability-toggle').click();
  await sales.locator('[data-testid="agent-item"][data-availability="away"]').filter({ hasText: 'dee' }).waitFor();
  assert.equal(await agent.getByTestId('availability-toggle').textContent(), 'Away');
  await agent.getByTestId('availability-toggle').click();
  await sales.locator('[data-testid="agent-item"][data-availability="online"]').filter({ hasText: 'dee' }).waitFor();

  // Leave and re-join the room.
  await sales.getByTestId('room-leave').click();
  await sales.waitFor({ state: 'detached' });
  await agentJoin(agent, 'sales');
  assert.deepEqual(await agent.locator('[data-testid="room"][data-room="sales"]').getByTestId('queue-name').allTextContents(), ['Mo']);

  // An unknown room is refused with a clear message.
  await agent.getByTestId('room-join-input').fill('no-such-room');
  await agent.getByTestId('room-join-submit').click();
  await agent.getByTestId('room-join-error').filter({ hasText: 'No such room.' }).waitFor();

  assertNoErrorsOrViolations([agent, ...customers]);
});
