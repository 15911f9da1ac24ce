// Accessibility: axe-core (from this folder's npm packages) checks both pages in the
// states people see them in, and fails on serious or critical violations. The widget
// draws in an open shadow root, which axe walks; each widget check also makes sure
// that axe did look inside it. axe adds inline styles while it measures, which the
// pages' CSP refuses, so these pages run with the CSP bypassed (the other tests
// check it).

import { test } from 'node:test';
import { agentSend, assertAccessible, consoleMessage, customerSend, newPage, widgetMessage } from './harness.js';
import { assertNoErrorsOrViolations, openConsole, openConversation, parleySuite, waitChattingWith, waitWidgetStatus } from './scenarios.js';

const PHONE = { width: 375, height: 740 };
const page = (options = {}) => newPage(suite.browser, { ...options, bypassCSP: true });
const suite = parleySuite({ tag: 'a11y', agents: [['ana', 'pw-ana-123']] });

test('the widget: nobody online, intro, chatting, closed with the rating form; also at phone width', async () => {
  for (const viewport of [undefined, PHONE]) {
    const customer = await page(viewport ? { viewport } : {});
    await customer.goto(`${suite.server.url}/`);
    await customer.getByTestId('widget-bubble').waitFor();
    await assertAccessible(customer, 'demo page, widget closed', { shadow: true });
    await customer.getByTestId('widget-bubble').click();
    await customer.getByTestId('widget-name-input').waitFor();
    await waitWidgetStatus(customer, 'Nobody is available');
    await assertAccessible(customer, 'widget intro, nobody online', { shadow: true });
    await customer.getByTestId('widget-name-input').fill(viewport ? 'Bea' : 'Abe');
    await customer.getByTestId('widget-start').click();
    await customer.getByTestId('widget-contact').waitFor();
    await customerSend(customer, 'Is anyone there?');
    await assertAccessible(customer, 'widget queued, nobody online (leave a message)', { shadow: true });
    await customer.getByTestId('widget-close').click();
    await customer.getByTestId('widget-close-confirm').click();
    await waitWidgetStatus(customer, 'This chat has ended');
    await assertAccessible(customer, 'widget closed, never served', { shadow: true });
    assertNoErrorsOrViolations([customer]);
    await customer.context().close();
  }
});

test('the console signed out and signed in, and the widget chatting, with a conversation open on both sides', async () => {
  const signedOut = await page();
  await signedOut.goto(`${suite.server.url}/agent`);
  await signedOut.getByTestId('login-form').waitFor();
  await assertAccessible(signedOut, 'console sign-in page');
  await signedOut.getByTestId('login-submit').click();
  await signedOut.getByTestId('login-error').waitFor();
  await assertAccessible(signedOut, 'console sign-in page with an error');
  await signedOut.context().close();

  const agent = await openConsole(suite, 'ana', 'pw-ana-123', { page: { bypassCSP: true } });
  await assertAccessible(agent, 'console signed in, no conversation');

  const customer = await page();
  await customer.goto(`${suite.server.url}/`);
  await customer.getByTestId('widget-bubble').click();
  await waitWidgetStatus(customer, 'We usually reply');
  await assertAccessible(customer, 'widget intro, someone online', { shadow: true });
  await customer.getByTestId('widget-name-input').fill('Cleo');
  await customer.getByTestId('widget-start').click();
  await waitChattingWith(customer, 'ana');
  await customerSend(customer, 'Hello, I have a question about my order.');
  await openConversation(agent, 'Cleo');
  await consoleMessage(agent, 'Hello, I have a question about my order.').waitFor();
  await agentSend(agent, 'Happy to help. Which order is it?');
  await agentSend(agent, 'Regular customer (internal)', { internal: true });
  await widgetMessage(customer, 'Happy to help. Which order is it?').waitFor();
  await assertAccessible(customer, 'widget chatting', { shadow: true });
  await assertAccessible(agent, 'console with a conversation open');

  // The chat ends and is rated: the rating form, then the closed conversation in the console.
  await agent.getByTestId('conv-close').click();
  await waitWidgetStatus(customer, 'This chat has ended');
  await customer.getByTestId('widget-rating').waitFor();
  await assertAccessible(customer, 'widget closed, rating form', { shadow: true });
  await customer.getByTestId('widget-star-label-5').click();
  await customer.getByTestId('widget-rating-comment').fill('Very helpful');
  await customer.getByTestId('widget-rating-submit').click();
  await customer.getByTestId('widget-rating-thanks').waitFor();
  await agent.getByTestId('conv-messages').locator('[data-event="rated"]').waitFor();
  await assertAccessible(agent, 'console with a closed, rated conversation');
  assertNoErrorsOrViolations([agent, customer]);
  await agent.context().close();
  await customer.context().close();
});
