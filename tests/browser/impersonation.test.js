// Display names are chosen by customers, so they may try to pass for staff or for
// the system: the console marks every customer name with a "customer" tag (queue,
// conversation list, conversation header, message author, typing line), event lines
// never carry a customer-chosen name, and the widget shows the customer's own
// messages as their own (and asks for another name when the server refuses one).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agentSend, consoleMessage, customerSend, newPage, widgetMessage } from './harness.js';
import { assertNoErrorsOrViolations, convItem, openChat, openConsole, parleySuite, waitChattingWith, waitWidgetEvent, waitWidgetStatus } from './scenarios.js';

const suite = parleySuite({
  tag: 'impersonation',
  agents: [['ada', 'pw-ada-123']],
  serverArgs: ['--rooms', 'support,sales', '--manual-rooms', 'sales'],
});

const SPOOF = 'Parley Support (agent)';

/** WCAG contrast of an element's text against its own background colour. */
async function contrast(locator) {
  return locator.evaluate((el) => {
    const rgb = (s) => s.match(/[\d.]+/g).slice(0, 3).map(Number);
    const lum = (c) => {
      const [r, g, b] = c.map((v) => {
        const x = v / 255;
        return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const st = getComputedStyle(el);
    const [a, b] = [lum(rgb(st.color)), lum(rgb(st.backgroundColor))];
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  });
}

test('a customer named like staff is marked as a customer everywhere in the console', async () => {
  const agent = await openConsole(suite, 'ada', 'pw-ada-123', { room: 'sales' });
  const sales = agent.locator('[data-testid="room"][data-room="sales"]');

  // Waiting in the queue of a manual room.
  const customer = await openChat(suite, { name: SPOOF, room: 'sales' });
  await waitWidgetStatus(customer, 'You are next in line');
  await customerSend(customer, 'This is Parley Support. Please confirm your password.');
  const queued = sales.getByTestId('queue-item').filter({ hasText: SPOOF });
  await queued.waitFor();
  assert.equal(await queued.getByTestId('queue-name').textContent(), SPOOF);
  assert.equal(await queued.getByTestId('customer-tag').textContent(), 'customer');

  // Accepted: the list entry and the header carry the tag.
  await queued.getByTestId('queue-accept').click();
  const item = convItem(agent, SPOOF);
  await item.waitFor();
  assert.equal(await item.getByTestId('conv-item-name').textContent(), SPOOF);
  assert.equal(await item.getByTestId('customer-tag').textContent(), 'customer');
  await agent.getByTestId('conv-title').filter({ hasText: SPOOF }).getByTestId('customer-tag').waitFor();

  // The customer's messages carry it; the agent's own and the event lines do not.
  const fromCustomer = consoleMessage(agent, 'This is Parley Support. Please confirm your password.');
  await fromCustomer.waitFor();
  assert.equal(await fromCustomer.getAttribute('data-role'), 'customer');
  assert.equal(await fromCustomer.getByTestId('message-author').textContent(), SPOOF);
  assert.equal(await fromCustomer.getByTestId('customer-tag').textContent(), 'customer');
  await agentSend(agent, 'Hello, this is ada.');
  await widgetMessage(customer, 'Hello, this is ada.').waitFor();
  assert.equal(await consoleMessage(agent, 'Hello, this is ada.').getByTestId('customer-tag').count(), 0);
  const events = agent.getByTestId('conv-messages').locator('[data-kind="event"]');
  await events.first().waitFor();
  assert.equal(await events.getByTestId('customer-tag').count(), 0);
  assert.equal(await events.getByTestId('message-author').count(), 0, 'event lines have no author');

  // Typing.
  await customer.getByTestId('widget-input').pressSequentially('one more', { delay: 20 });
  const typing = agent.getByTestId('conv-typing').filter({ hasText: `${SPOOF} is typing…` });
  await typing.getByTestId('customer-tag').waitFor();
  await customer.getByTestId('widget-input').fill('');

  // The tag and the event lines are readable (WCAG AA: at least 4.5:1).
  assert.ok((await contrast(item.getByTestId('customer-tag'))) >= 4.5, 'customer tag contrast');
  assert.ok((await contrast(events.first())) >= 4.5, 'event line contrast');

  // In the widget the customer's own message is theirs ("You"), the agent's shows the agent's name.
  const own = widgetMessage(customer, 'This is Parley Support. Please confirm your password.');
  assert.match(await own.getAttribute('class'), /msg--mine/);
  assert.equal(await own.getByTestId('message-author').textContent(), 'You');
  assert.equal(await widgetMessage(customer, 'Hello, this is ada.').getByTestId('message-author').textContent(), 'ada');

  // The customer ends the chat: the event line does not repeat the chosen name.
  await customer.getByTestId('widget-close').click();
  await customer.getByTestId('widget-close-confirm').click();
  await waitWidgetEvent(customer, 'You ended the chat');
  const closed = agent.getByTestId('conv-messages').locator('[data-event="closed"]');
  await closed.filter({ hasText: 'Chat ended by the customer' }).waitFor();
  assert.ok(!(await closed.textContent()).includes(SPOOF));

  // "Parley" itself is the system's name: the server refuses it and the widget asks for
  // another; a name close to it is tagged like any other.
  const other = await newPage(suite.browser);
  await other.goto(`${suite.server.url}/`);
  await other.getByTestId('widget-bubble').click();
  await other.getByTestId('widget-name-input').fill('Parley');
  await other.getByTestId('widget-start').click();
  await other.getByTestId('widget-intro-error').filter({ hasText: 'This name is reserved' }).waitFor();
  await other.getByTestId('widget-name-input').fill('Parley Team');
  await other.getByTestId('widget-start').click();
  await waitChattingWith(other, 'ada');
  await other.getByTestId('widget-intro-error').waitFor({ state: 'hidden' });
  await convItem(agent, 'Parley Team').getByTestId('customer-tag').waitFor();

  assertNoErrorsOrViolations([agent, customer, other], 'no page errors', 'no CSP violations');
});
