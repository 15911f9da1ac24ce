// The agent console's own state: the server's rooms as join suggestions and transfer
// targets (manual rooms marked); closed chats kept apart, marked, with the customer's
// rating and comment; the connection shown apart from the availability; the unread
// count in the tab title.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agentJoin, agentLogin, consoleMessage, customerSend, newPage, waitSignedIn } from './harness.js';
import {
  assertNoErrorsOrViolations,
  convItem,
  customerSendsToAgent,
  openAssignedChat,
  openConsole,
  parleySuite,
  waitWidgetEvent,
  waitWidgetStatus,
} from './scenarios.js';

const suite = parleySuite({
  tag: 'console',
  agents: [['zed', 'pw-zed-123']],
  serverArgs: ['--rooms', 'support,sales,billing', '--manual-rooms', 'sales'],
});

const TITLE = 'Parley — agent console';

async function suggestions(page) {
  return page.locator('#room-suggestions option').evaluateAll((os) => os.map((o) => `${o.value}|${o.label}`));
}

async function transferOptions(page) {
  return page.getByTestId('conv-transfer-select').locator('option').allTextContents();
}

test('rooms: the server’s rooms are suggested and are transfer targets, manual ones marked, kept current', async () => {
  // A fresh browser, which has joined nothing but the default room.
  const agent = await openConsole(suite, 'zed', 'pw-zed-123');
  await agent.waitForFunction(() => document.querySelectorAll('#room-suggestions option').length === 2);
  assert.deepEqual(await suggestions(agent), ['billing|billing', 'sales|sales (manual accept)']);

  const customer = await openAssignedChat(suite, { name: 'Ola', agent: 'zed' });
  await convItem(agent, 'Ola').click();
  await agent.getByTestId('conv-transfer-select').locator('option', { hasText: 'Room: billing' }).waitFor({ state: 'attached' });
  assert.deepEqual(await transferOptions(agent), ['Transfer to…', 'Room: billing', 'Room: sales (manual accept)', 'Room: support']);

  // Joining a room: no longer suggested, marked manual in the sidebar, still a transfer target.
  await agentJoin(agent, 'sales');
  await agent.locator('[data-testid="room"][data-room="sales"] [data-testid="room-manual"]').waitFor();
  assert.equal(await agent.locator('[data-testid="room"][data-room="support"] [data-testid="room-manual"]').count(), 0);
  assert.deepEqual(await suggestions(agent), ['billing|billing']);
  assert.deepEqual(await transferOptions(agent), ['Transfer to…', 'Room: billing', 'Room: sales (manual accept)', 'Room: support']);

  // A room this browser never joined is a working target.
  await agent.getByTestId('conv-transfer-select').selectOption({ label: 'Room: billing' });
  await agent.getByTestId('conv-transfer').click();
  await waitWidgetEvent(customer, 'Chat transferred to the billing team');
  await agent.getByTestId('conv-status').filter({ hasText: '#billing' }).waitFor();
  assertNoErrorsOrViolations([agent, customer]);
  for (const p of [agent, customer]) await p.context().close();
});

test('closed chats: marked, moved into a collapsed group, the box says why, the rating and comment are shown', async () => {
  const agent = await openConsole(suite, 'zed', 'pw-zed-123');
  const amy = await openAssignedChat(suite, { name: 'Amy', agent: 'zed' });
  const ben = await openAssignedChat(suite, { name: 'Ben', agent: 'zed' });
  await customerSend(ben, 'Thanks, that was all.');
  await convItem(agent, 'Amy').click();
  await customerSendsToAgent(amy, agent, 'One more thing');

  // Ben ends his chat and rates it, while the agent looks at Amy's.
  await ben.getByTestId('widget-close').click();
  await ben.getByTestId('widget-close-confirm').click();
  await waitWidgetStatus(ben, 'This chat has ended');
  await ben.getByTestId('widget-star-label-4').click();
  await ben.getByTestId('widget-rating-comment').fill('Quick, thanks');
  await ben.getByTestId('widget-rating-submit').click();
  await ben.getByTestId('widget-rating-thanks').waitFor();

  const group = agent.getByTestId('conv-closed-group');
  await group.getByTestId('conv-closed-summary').filter({ hasText: 'Closed (1)' }).waitFor();
  const benItem = group.getByTestId('conv-item').filter({ hasText: 'Ben' });
  await benItem.getByTestId('conv-item-rating').filter({ hasText: '4' }).waitFor({ state: 'attached' });
  assert.equal(await benItem.isVisible(), false, 'the closed group starts collapsed');
  assert.equal(await benItem.getAttribute('data-status'), 'closed');
  // The open conversation comes first; the group is last.
  const order = await agent.getByTestId('conv-list').locator(':scope > li').evaluateAll((lis) => lis.map((li) => (li.querySelector('details') ? 'group' : li.textContent)));
  assert.equal(order.length, 2);
  assert.match(order[0], /Amy/);
  assert.equal(order[1], 'group');

  await group.getByTestId('conv-closed-summary').click();
  await benItem.getByTestId('conv-item-closed').filter({ hasText: 'Closed' }).waitFor();
  await benItem.click();
  await agent.getByTestId('conv-title').filter({ hasText: 'Ben' }).waitFor();
  await agent.getByTestId('conv-rating').filter({ hasText: 'Customer rating: 4 out of 5' }).filter({ hasText: 'Quick, thanks' }).waitFor();
  await agent.getByTestId('conv-messages').locator('[data-event="rated"]').filter({ hasText: 'Rated 4 out of 5: “Quick, thanks”' }).waitFor();
  await agent.getByTestId('conv-closed-note').filter({ hasText: 'This chat is closed' }).waitFor();
  assert.equal(await agent.getByTestId('conv-input').isDisabled(), true);
  assert.equal(await agent.getByTestId('conv-input').getAttribute('placeholder'), 'This chat is closed');

  // The agent closes Amy's chat: it joins the group; the box says why.
  await convItem(agent, 'Amy').click();
  await agent.getByTestId('conv-close').click();
  await agent.getByTestId('conv-status').filter({ hasText: 'Closed' }).waitFor();
  await agent.getByTestId('conv-closed-note').waitFor();
  await group.getByTestId('conv-closed-summary').filter({ hasText: 'Closed (2)' }).waitFor();
  await agent.locator('#conv-empty').waitFor();

  // A reload keeps the closed chats and the rating.
  await agent.reload();
  await waitSignedIn(agent, 'zed');
  await group.getByTestId('conv-closed-summary').filter({ hasText: 'Closed (2)' }).waitFor();
  await benItem.getByTestId('conv-item-rating').filter({ hasText: '4' }).waitFor({ state: 'attached' });
  assertNoErrorsOrViolations([agent, amy, ben]);
  for (const p of [agent, amy, ben]) await p.context().close();
});

test('connection: no green "Online" while disconnected; availability comes back with the connection', async () => {
  const agent = await newPage(suite.browser);
  const net = { down: false, open: new Set() };
  await agent.context().routeWebSocket(/\/ws$/, (ws) => {
    if (net.down) {
      ws.close({ code: 4000, reason: 'network down (test)' });
      return;
    }
    ws.connectToServer();
    net.open.add(ws);
    ws.onClose(() => net.open.delete(ws));
  });
  await agentLogin(agent, suite.server.url, 'zed', 'pw-zed-123');
  await agentJoin(agent, 'support');
  const toggle = agent.getByTestId('availability-toggle');
  await agent.locator('[data-testid="availability-toggle"][data-connected="true"]').filter({ hasText: 'Online' }).waitFor();

  net.down = true;
  for (const ws of [...net.open]) await ws.close({ code: 4000, reason: 'network down (test)' }).catch(() => {});
  await agent.getByTestId('console-conn').filter({ hasText: 'Reconnecting' }).waitFor();
  await agent.locator('[data-testid="availability-toggle"][data-connected="false"]').waitFor();
  assert.equal(await toggle.textContent(), 'Offline');
  assert.match(await toggle.getAttribute('aria-label'), /not connected/);
  assert.equal(await toggle.isDisabled(), true);
  await agent.locator('[data-testid="room"][data-room="support"] [data-testid="agent-item"][data-availability="offline"]').filter({ hasText: 'zed' }).waitFor();

  net.down = false;
  await agent.getByTestId('console-conn').waitFor({ state: 'hidden', timeout: 30_000 });
  await agent.locator('[data-testid="availability-toggle"][data-connected="true"]').filter({ hasText: 'Online' }).waitFor();
  await agent.locator('[data-testid="room"][data-room="support"] [data-testid="agent-item"][data-availability="online"]').filter({ hasText: 'zed' }).waitFor();
  assertNoErrorsOrViolations([agent]);
  await agent.context().close();
});

test('the unread count is in the tab title, and clears as conversations are read', async () => {
  const agent = await openConsole(suite, 'zed', 'pw-zed-123');
  assert.equal(await agent.title(), TITLE);
  const cat = await openAssignedChat(suite, { name: 'Cat', agent: 'zed' });
  const dan = await openAssignedChat(suite, { name: 'Dan', agent: 'zed' });
  await customerSend(cat, 'hello from Cat');
  await convItem(agent, 'Cat').click();
  await consoleMessage(agent, 'hello from Cat').waitFor();

  await customerSend(dan, 'first from Dan');
  await customerSend(dan, 'second from Dan');
  await customerSend(cat, 'Cat again, read at once');
  await consoleMessage(agent, 'Cat again, read at once').waitFor();
  await agent.waitForFunction((t) => document.title === `(2) ${t}`, TITLE);

  await convItem(agent, 'Dan').click();
  await consoleMessage(agent, 'second from Dan').waitFor();
  await agent.waitForFunction((t) => document.title === t, TITLE);
  assertNoErrorsOrViolations([agent, cat, dan]);
  for (const p of [agent, cat, dan]) await p.context().close();
});
