// Reloading either page mid-conversation keeps everything: the customer's
// conversation (resume token in localStorage), statuses, the panel; the agent's
// session (token in sessionStorage) and conversation list.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agentSend, bodies, consoleMessage, customerSend, waitSignedIn, widgetMessage } from './harness.js';
import {
  agentSendsToCustomer,
  assertNoErrorsOrViolations,
  consoleMessageIn,
  conversationUnderWay,
  convItem,
  customerSendsToAgent,
  openAssignedChat,
  openConsole,
  openConversation,
  parleySuite,
  waitChattingWith,
  waitWidgetStatus,
  widgetMessageIn,
} from './scenarios.js';

// The long-history test posts 450 messages over HTTP as fast as it can:
// above the default per-agent rate limit, which is not what it tests.
const suite = parleySuite({ tag: 'reload', agents: [['eve', 'pw-eve-123']], serverArgs: ['--rate-per-sec', '1000', '--rate-burst', '1000'] });

test('reloading the widget and the console mid-conversation keeps everything', async () => {
  const { agent, customer } = await conversationUnderWay(suite, { agentName: 'eve', password: 'pw-eve-123', customerName: 'Noor نور', firstMessage: 'First question 🙂' });
  await widgetMessageIn(customer, 'First question 🙂', 'seen').waitFor();
  await agentSend(agent, 'First answer');
  await agentSend(agent, 'Internal: check order 77', { internal: true });
  await widgetMessage(customer, 'First answer').waitFor();

  // Reload the customer's page: same conversation, same agent, nothing doubled, "seen" kept, panel still open.
  await customer.reload();
  await customer.getByTestId('widget-panel').waitFor({ state: 'visible' });
  await waitChattingWith(customer, 'eve');
  await widgetMessage(customer, 'First answer').waitFor();
  assert.deepEqual(await bodies(customer, 'widget-messages'), ['First question 🙂', 'First answer']);
  assert.equal(await widgetMessage(customer, 'First question 🙂').getAttribute('data-status'), 'seen');
  await customerSendsToAgent(customer, agent, 'Second question, after a reload');

  // Reload the console: still signed in, the conversation is still ours, history is complete.
  await agent.reload();
  await waitSignedIn(agent, 'eve');
  await openConversation(agent, 'Noor نور');
  await consoleMessage(agent, 'Second question, after a reload').waitFor();
  assert.deepEqual(await bodies(agent, 'conv-messages'), ['First question 🙂', 'First answer', 'Internal: check order 77', 'Second question, after a reload']);
  await agentSendsToCustomer(agent, customer, 'Second answer, after a reload');
  await consoleMessageIn(agent, 'Second answer, after a reload', 'seen').waitFor();

  // The customer ends the chat and rates it; a reload shows the closed chat, already rated.
  await customer.getByTestId('widget-close').click();
  await customer.getByTestId('widget-close-confirm').click();
  await waitWidgetStatus(customer, 'This chat has ended');
  await agent.getByTestId('conv-status').filter({ hasText: 'Closed' }).waitFor();
  await customer.getByTestId('widget-star-label-5').click();
  assert.equal(await customer.getByTestId('widget-star-5').isChecked(), true);
  await customer.getByTestId('widget-rating-submit').click();
  await customer.getByTestId('widget-rating-thanks').waitFor();
  await customer.reload();
  await waitWidgetStatus(customer, 'This chat has ended');
  await customer.getByTestId('widget-rating-thanks').waitFor();
  assert.equal(await customer.getByTestId('widget-rating').isVisible(), false);

  // A new chat after that starts fresh.
  await customer.getByTestId('widget-new-chat').click();
  await customer.getByTestId('widget-name-input').waitFor();
  assert.equal(await customer.getByTestId('widget-name-input').inputValue(), 'Noor نور');
  await customer.getByTestId('widget-start').click();
  await waitChattingWith(customer, 'eve');
  assert.equal(await customer.getByTestId('widget-messages').locator('[data-kind="text"]').count(), 0);

  // Signing out forgets the console session.
  await agent.getByTestId('logout').click();
  await agent.getByTestId('login-form').waitFor({ state: 'visible' });
  await agent.reload();
  await agent.getByTestId('login-form').waitFor({ state: 'visible' });

  assertNoErrorsOrViolations([agent, customer]);
});

test('a long history is paged in with sync, in order, on both sides', async () => {
  const agent = await openConsole(suite, 'eve', 'pw-eve-123');
  const customer = await openAssignedChat(suite, { name: 'Quinn', agent: 'eve' });
  await customerSend(customer, 'start of a long chat');
  const item = convItem(agent, 'Quinn');
  await item.waitFor();
  const id = await item.getAttribute('data-conversation');

  // 450 agent messages through the HTTP API (the same send path), more than two sync pages.
  const login = await (await fetch(`${suite.server.url}/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'eve', password: 'pw-eve-123' }) })).json();
  const N = 450;
  for (let i = 1; i <= N; i++) {
    const res = await fetch(`${suite.server.url}/api/conversations/${id}/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${login.token}` },
      body: JSON.stringify({ client_id: `bulk-${i}`, body: `bulk ${i}`, internal: false }),
    });
    assert.equal(res.status, 200, `POST message ${i}`);
  }
  const expected = ['start of a long chat', ...Array.from({ length: N }, (_, i) => `bulk ${i + 1}`)];

  // A fresh console page syncs it all, page by page.
  await agent.reload();
  await openConversation(agent, 'Quinn');
  await consoleMessage(agent, `bulk ${N}`).waitFor();
  assert.deepEqual(await bodies(agent, 'conv-messages'), expected);

  // So does the customer after a reload.
  await customer.reload();
  await widgetMessage(customer, `bulk ${N}`).waitFor();
  assert.deepEqual(await bodies(customer, 'widget-messages'), expected);
  assert.deepEqual(agent.errors, []);
  assert.deepEqual(customer.errors, []);
});

test('after a reload the open widget shows the newest messages, scrolled to the bottom', async () => {
  const agent = await openConsole(suite, 'eve', 'pw-eve-123');
  const customer = await openAssignedChat(suite, { name: 'Rosa', agent: 'eve' });
  await customerSend(customer, 'a question with a long answer');
  await openConversation(agent, 'Rosa');
  await consoleMessage(agent, 'a question with a long answer').waitFor();
  for (let i = 1; i <= 30; i++) await agentSend(agent, `answer line ${i}`);
  await widgetMessage(customer, 'answer line 30').waitFor();

  await waitAtBottom(customer, 'widget-scroll', 'the widget follows the conversation while it is open');

  await customer.reload();
  await widgetMessage(customer, 'answer line 30').waitFor();
  await customer.waitForTimeout(300); // let any late scrolling happen
  await waitAtBottom(customer, 'widget-scroll', 'after a reload the widget shows the newest messages');
  assert.ok(await widgetMessage(customer, 'answer line 30').isVisible());

  // The console too, after a reload with the conversation selected.
  await agent.reload();
  await consoleMessage(agent, 'answer line 30').waitFor();
  await agent.waitForTimeout(300);
  await waitAtBottom(agent, 'conv-scroll', 'after a reload the console shows the newest messages');
  assertNoErrorsOrViolations([agent, customer]);
  await agent.context().close();
  await customer.context().close();
});

/** Wait (briefly) until the scroller with that testid, in the page or the widget's shadow root, overflows and is scrolled to its end. */
async function waitAtBottom(page, testid, what) {
  try {
    await page.waitForFunction(
      (testid) => {
        const find = (root) => root.querySelector(`[data-testid="${testid}"]`) || [...root.querySelectorAll('*')].map((e) => e.shadowRoot && find(e.shadowRoot)).find(Boolean);
        const s = find(document);
        return s && s.scrollHeight > s.clientHeight + 200 && s.scrollHeight - s.scrollTop - s.clientHeight < 4;
      },
      testid,
      { timeout: 3000 },
    );
  } catch {
    assert.fail(`${what}: not scrolled to the bottom`);
  }
}
