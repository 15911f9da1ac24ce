// The whole support flow in a real browser: a customer on the demo page, two agents
// in the console, each in its own browser context.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agentSend, bodies, consoleMessage, customerSend, screenshotPath, widgetMessage } from './harness.js';
import {
  agentSendsToCustomer,
  assertNoErrorsOrViolations,
  consoleMessageIn,
  convItem,
  customerSendsToAgent,
  openAssignedChat,
  openConsole,
  parleySuite,
  waitChattingWith,
  waitWidgetEvent,
  waitWidgetStatus,
  widgetMessageIn,
} from './scenarios.js';

const suite = parleySuite({
  tag: 'flow',
  agents: [
    ['bo', 'pw-bo-123'],
    ['cy', 'pw-cy-123'],
  ],
});

test('full flow: assign, chat both ways, typing, seen, internal note, transfer, close, rating', async () => {
  const bo = await openConsole(suite, 'bo', 'pw-bo-123');

  // The customer starts a chat and is assigned to bo automatically.
  const customerName = 'Ann 安 😀';
  const customer = await openAssignedChat(suite, { name: customerName, agent: 'bo' });
  await waitWidgetEvent(customer, 'bo joined the chat');

  // bo gets it in "My conversations". Pretend bo's tab is in the background: a beep/notification fires.
  const item = convItem(bo, customerName);
  await item.waitFor();
  await bo.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.hasFocus = () => false;
  });

  // Customer -> agent, with CJK and emoji; pending, then sent.
  const first = 'Hello, my order #1042 has not arrived 📦 我的订单还没到';
  await customerSend(customer, first);
  const mine = widgetMessage(customer, first);
  await mine.waitFor();
  await customer.waitForFunction(
    (text) => {
      const root = document.querySelector('parley-widget').shadowRoot;
      const li = [...root.querySelectorAll('[data-testid="message"]')].find((x) => x.querySelector('.msg__body')?.textContent === text);
      return li && (li.dataset.status === 'sent' || li.dataset.status === 'seen');
    },
    first,
  );
  await item.getByTestId('conv-unread').filter({ hasText: '1' }).waitFor();
  assert.ok((await bo.evaluate(() => window.__parleyAlerts || 0)) >= 1, 'a background tab is alerted');
  await bo.evaluate(() => {
    delete document.visibilityState;
    delete document.hasFocus;
  });

  // bo opens the conversation: the unread count clears and the customer sees "Seen".
  await item.click();
  await consoleMessage(bo, first).waitFor();
  await item.getByTestId('conv-unread').waitFor({ state: 'detached' });
  await widgetMessageIn(customer, first, 'seen').waitFor();
  assert.equal(await mine.getByTestId('message-status').textContent(), 'Seen');

  // Typing, both ways.
  await customer.getByTestId('widget-input').pressSequentially('Are you th', { delay: 20 });
  await bo.getByTestId('conv-typing').filter({ hasText: `${customerName} is typing…` }).waitFor();
  await customer.getByTestId('widget-input').fill('');
  await bo.getByTestId('conv-input').pressSequentially('Checking', { delay: 20 });
  await customer.getByTestId('widget-typing').filter({ hasText: 'bo is typing…' }).waitFor();
  await bo.getByTestId('conv-input').fill('');

  // Agent -> customer; the customer has the panel open, so bo sees "Seen by customer".
  const reply = 'Sorry to hear that! Let me check the tracking for you.';
  await agentSendsToCustomer(bo, customer, reply);
  await customer.getByTestId('widget-typing').waitFor({ state: 'hidden' });
  await consoleMessageIn(bo, reply, 'seen').waitFor();
  assert.equal(await consoleMessage(bo, reply).getByTestId('message-status').textContent(), 'Seen by customer');

  // An internal note: shown (distinctly) to agents, never to the customer.
  const note = 'VIP customer, refund is fine (internal)';
  await agentSend(bo, note, { internal: true });
  const noteEl = consoleMessage(bo, note);
  await noteEl.waitFor();
  assert.equal(await noteEl.getAttribute('data-kind'), 'note');
  await noteEl.getByTestId('note-label').waitFor();
  const after = 'Found it: the parcel is at your local depot.';
  await agentSendsToCustomer(bo, customer, after);
  await customerSendsToAgent(customer, bo, 'Great, thank you! 🙏');

  // Screenshots of both pages mid-conversation.
  await customer.screenshot({ path: screenshotPath('widget.png') });
  await bo.screenshot({ path: screenshotPath('console.png') });

  // Transfer to cy.
  const cy = await openConsole(suite, 'cy', 'pw-cy-123');
  await bo.locator('[data-testid="room"][data-room="support"] [data-testid="agent-item"]').filter({ hasText: 'cy' }).waitFor();
  const select = bo.getByTestId('conv-transfer-select');
  await select.locator('option', { hasText: 'Agent: cy' }).waitFor({ state: 'attached' });
  await select.selectOption({ label: 'Agent: cy' });
  await bo.getByTestId('conv-transfer').click();
  await waitChattingWith(customer, 'cy');
  await waitWidgetEvent(customer, 'Chat transferred to cy');
  await convItem(bo, customerName).waitFor({ state: 'detached' });
  await convItem(cy, customerName).click();
  await consoleMessage(cy, first).waitFor();
  await consoleMessage(cy, note).waitFor(); // notes travel with the conversation, for agents
  await agentSendsToCustomer(cy, customer, 'Hi, cy here. Anything else I can do?');
  await customerSendsToAgent(customer, cy, 'No, that is all.');

  // The customer never saw the note, live or from history.
  const widgetText = await customer.evaluate(() => document.querySelector('parley-widget').shadowRoot.textContent);
  assert.ok(!widgetText.includes(note), 'internal note leaked to the customer');

  // Everything arrived once, in order.
  assert.deepEqual(await bodies(customer, 'widget-messages'), [
    first,
    reply,
    after,
    'Great, thank you! 🙏',
    'Hi, cy here. Anything else I can do?',
    'No, that is all.',
  ]);
  assert.deepEqual(await bodies(cy, 'conv-messages'), [first, reply, note, after, 'Great, thank you! 🙏', 'Hi, cy here. Anything else I can do?', 'No, that is all.']);

  // cy closes the chat; the customer rates it.
  await cy.getByTestId('conv-close').click();
  await cy.getByTestId('conv-status').filter({ hasText: 'Closed' }).waitFor();
  await waitWidgetStatus(customer, 'This chat has ended');
  await customer.getByTestId('widget-rating').waitFor();
  await customer.getByTestId('widget-input').waitFor({ state: 'hidden' });
  await customer.getByTestId('widget-star-label-4').click();
  await customer.getByTestId('widget-rating-comment').fill('Quick and friendly 👍 谢谢');
  await customer.getByTestId('widget-rating-submit').click();
  await customer.getByTestId('widget-rating-thanks').waitFor();
  await cy.getByTestId('conv-messages').locator('[data-event="rated"]').filter({ hasText: 'Rated 4 out of 5' }).waitFor();

  assertNoErrorsOrViolations([customer, bo, cy], 'no page errors', 'no CSP violations');
});
