// Nobody online: the widget says so plainly (from the server's welcome.rooms and
// room_status, not a guess), takes the customer's message and, if they like, an
// email address; the conversation stays queued and is served when an agent comes,
// and the console shows the address. A chat that no agent ever joined (ended, or
// closed as abandoned while queued) is not offered for rating.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { consoleMessage, customerSend, newPage } from './harness.js';
import {
  assertNoErrorsOrViolations,
  convItem,
  openConsole,
  parleySuite,
  waitChattingWith,
  waitWidgetEvent,
  waitWidgetStatus,
  widgetMessageIn,
} from './scenarios.js';

const suite = parleySuite({
  tag: 'nobody',
  agents: [['tia', 'pw-tia-123']],
  // Queued customers who left are closed as abandoned after 1.5 s instead of 5 minutes.
  serverArgs: ['--abandon-after-ms', '1500'],
});

const NOBODY = 'Nobody is available right now';

/** Open the demo page and the widget, without starting a chat. */
async function openWidget() {
  const page = await newPage(suite.browser);
  await page.goto(`${suite.server.url}/`);
  await page.getByTestId('widget-bubble').click();
  await page.getByTestId('widget-name-input').waitFor();
  return page;
}

async function startChat(page, name) {
  await page.getByTestId('widget-name-input').fill(name);
  await page.getByTestId('widget-start').click();
  await page.getByTestId('widget-input').waitFor({ state: 'visible' });
}

test('nobody online: the widget says so, takes a message and an email; an agent who comes serves it and sees the email', async () => {
  const customer = await openWidget();
  await waitWidgetStatus(customer, NOBODY);
  await customer.getByTestId('widget-intro-text').filter({ hasText: 'Nobody from our team is online right now' }).waitFor();
  assert.doesNotMatch(await customer.getByTestId('widget-status').textContent(), /usually reply|next in line/);

  // The message goes in as a normal message, and waits in the queue.
  await startChat(customer, 'Uma');
  const card = customer.getByTestId('widget-contact');
  await card.waitFor();
  await waitWidgetStatus(customer, NOBODY);
  assert.doesNotMatch(await customer.getByTestId('widget-status').textContent(), /next in line|number \d+ in line/);
  await customerSend(customer, 'My parcel never came.');
  await widgetMessageIn(customer, 'My parcel never came.', 'sent').waitFor();

  // The email address is optional, checked by the server, and sent with `contact`.
  await card.getByTestId('widget-email-input').fill('uma at example');
  await card.getByTestId('widget-email-save').click();
  await card.getByTestId('widget-email-error').filter({ hasText: 'valid email address' }).waitFor();
  await card.getByTestId('widget-email-input').fill('uma@example.com');
  await card.getByTestId('widget-email-save').click();
  await card.getByTestId('widget-email-saved').filter({ hasText: 'uma@example.com' }).waitFor();
  await card.getByTestId('widget-email-error').waitFor({ state: 'hidden' });

  // An agent comes: the conversation is assigned, the widget shows the normal chat.
  const agent = await openConsole(suite, 'tia', 'pw-tia-123');
  await waitChattingWith(customer, 'tia');
  await card.waitFor({ state: 'hidden' });
  await convItem(agent, 'Uma').click();
  await consoleMessage(agent, 'My parcel never came.').waitFor();
  const email = agent.getByTestId('conv-contact-email');
  await email.filter({ hasText: 'uma@example.com' }).waitFor();
  assert.equal(await email.getAttribute('href'), 'mailto:uma@example.com');

  // room_status, live: the agent goes away; a new visitor is told nobody is available
  // (the customer being served keeps chatting), and is told again when the agent is back.
  await agent.getByTestId('availability-toggle').click();
  await agent.locator('[data-testid="availability-toggle"][data-availability="away"]').waitFor();
  const visitor = await openWidget();
  await waitWidgetStatus(visitor, NOBODY);
  await waitChattingWith(customer, 'tia');
  await agent.getByTestId('availability-toggle').click();
  await waitWidgetStatus(visitor, 'We usually reply in a few minutes');
  await startChat(visitor, 'Vic');
  await waitChattingWith(visitor, 'tia');
  assert.equal(await visitor.getByTestId('widget-contact').isVisible(), false);

  assertNoErrorsOrViolations([customer, agent, visitor]);
  for (const p of [customer, agent, visitor]) await p.context().close();
});

test('a chat no agent ever joined is not offered for rating: ended while queued, or closed as abandoned', async () => {
  // Ended by the customer while waiting.
  const wes = await openWidget();
  await waitWidgetStatus(wes, NOBODY);
  await startChat(wes, 'Wes');
  await customerSend(wes, 'Hello?');
  await wes.getByTestId('widget-close').click();
  await wes.getByTestId('widget-close-confirm').click();
  await waitWidgetStatus(wes, 'This chat has ended');
  await wes.getByTestId('widget-new-chat').waitFor();
  await wes.getByTestId('widget-unserved').filter({ hasText: 'Nobody from our team joined this chat.' }).waitFor();
  assert.equal(await wes.getByTestId('widget-rating').isVisible(), false, 'no rating for a chat nobody joined');
  await wes.reload();
  await waitWidgetStatus(wes, 'This chat has ended');
  await wes.getByTestId('widget-unserved').waitFor();
  assert.equal(await wes.getByTestId('widget-rating').isVisible(), false, 'still none after a reload');

  // Left the page while queued: closed as abandoned; back later, the chat is over, unrated.
  const xan = await openWidget();
  await startChat(xan, 'Xan');
  await customerSend(xan, 'Anyone?');
  await widgetMessageIn(xan, 'Anyone?', 'sent').waitFor();
  await xan.getByTestId('widget-email-input').fill('xan@example.com');
  await xan.getByTestId('widget-email-save').click();
  await xan.getByTestId('widget-email-saved').waitFor();
  await xan.goto('about:blank');
  await xan.waitForTimeout(3000);
  await xan.goto(`${suite.server.url}/`);
  await waitWidgetStatus(xan, 'This chat has ended');
  await waitWidgetEvent(xan, 'This chat was closed while you were away');
  await xan.getByTestId('widget-unserved').filter({ hasText: 'xan@example.com' }).waitFor();
  assert.equal(await xan.getByTestId('widget-rating').isVisible(), false, 'no rating for an abandoned chat');

  assertNoErrorsOrViolations([wes, xan]);
  for (const p of [wes, xan]) await p.context().close();
});
