// Reloading either page mid-conversation keeps everything: the customer's
// conversation (resume token in localStorage), statuses, the panel; the agent's
// session (token in sessionStorage) and conversation list.

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
  startServer,
  tempDataDir,
  widgetMessage,
} from './harness.js';

let dir;
let server;
let browser;

before(async () => {
  dir = tempDataDir('reload');
  addAgent(dir, 'eve', 'pw-eve-123');
  server = await startServer({ dataDir: dir });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  cleanup(dir);
});

test('reloading the widget and the console mid-conversation keeps everything', async () => {
  const agent = await newPage(browser);
  await agentLogin(agent, server.url, 'eve', 'pw-eve-123');
  await agentJoin(agent, 'support');
  const customer = await newPage(browser);
  await customerStart(customer, server.url, { name: 'Noor نور' });
  await customer.getByTestId('widget-status').filter({ hasText: 'You are chatting with eve' }).waitFor();

  await customerSend(customer, 'First question 🙂');
  await agent.getByTestId('conv-item').filter({ hasText: 'Noor نور' }).click();
  await consoleMessage(agent, 'First question 🙂').waitFor();
  await widgetMessage(customer, 'First question 🙂').and(customer.locator('[data-status="seen"]')).waitFor();
  await agentSend(agent, 'First answer');
  await agentSend(agent, 'Internal: check order 77', { internal: true });
  await widgetMessage(customer, 'First answer').waitFor();

  // Reload the customer's page: same conversation, same agent, nothing doubled, "seen" kept, panel still open.
  await customer.reload();
  await customer.getByTestId('widget-panel').waitFor({ state: 'visible' });
  await customer.getByTestId('widget-status').filter({ hasText: 'You are chatting with eve' }).waitFor();
  await widgetMessage(customer, 'First answer').waitFor();
  assert.deepEqual(await bodies(customer, 'widget-messages'), ['First question 🙂', 'First answer']);
  assert.equal(await widgetMessage(customer, 'First question 🙂').getAttribute('data-status'), 'seen');
  await customerSend(customer, 'Second question, after a reload');
  await consoleMessage(agent, 'Second question, after a reload').waitFor();

  // Reload the console: still signed in, the conversation is still ours, history is complete.
  await agent.reload();
  await agent.getByTestId('console').waitFor({ state: 'visible' });
  await agent.getByTestId('me-name').filter({ hasText: 'eve' }).waitFor({ state: 'attached' });
  await agent.getByTestId('conv-item').filter({ hasText: 'Noor نور' }).click();
  await consoleMessage(agent, 'Second question, after a reload').waitFor();
  assert.deepEqual(await bodies(agent, 'conv-messages'), ['First question 🙂', 'First answer', 'Internal: check order 77', 'Second question, after a reload']);
  await agentSend(agent, 'Second answer, after a reload');
  await widgetMessage(customer, 'Second answer, after a reload').waitFor();
  await consoleMessage(agent, 'Second answer, after a reload').and(agent.locator('[data-status="seen"]')).waitFor();

  // The customer ends the chat and rates it; a reload shows the closed chat, already rated.
  await customer.getByTestId('widget-close').click();
  await customer.getByTestId('widget-close-confirm').click();
  await customer.getByTestId('widget-status').filter({ hasText: 'This chat has ended' }).waitFor();
  await agent.getByTestId('conv-status').filter({ hasText: 'Closed' }).waitFor();
  await customer.getByTestId('widget-star-label-5').click();
  assert.equal(await customer.getByTestId('widget-star-5').isChecked(), true);
  await customer.getByTestId('widget-rating-submit').click();
  await customer.getByTestId('widget-rating-thanks').waitFor();
  await customer.reload();
  await customer.getByTestId('widget-status').filter({ hasText: 'This chat has ended' }).waitFor();
  await customer.getByTestId('widget-rating-thanks').waitFor();
  assert.equal(await customer.getByTestId('widget-rating').isVisible(), false);

  // A new chat after that starts fresh.
  await customer.getByTestId('widget-new-chat').click();
  await customer.getByTestId('widget-name-input').waitFor();
  assert.equal(await customer.getByTestId('widget-name-input').inputValue(), 'Noor نور');
  await customer.getByTestId('widget-start').click();
  await customer.getByTestId('widget-status').filter({ hasText: 'You are chatting with eve' }).waitFor();
  assert.equal(await customer.getByTestId('widget-messages').locator('[data-kind="text"]').count(), 0);

  // Signing out forgets the console session.
  await agent.getByTestId('logout').click();
  await agent.getByTestId('login-form').waitFor({ state: 'visible' });
  await agent.reload();
  await agent.getByTestId('login-form').waitFor({ state: 'visible' });

  for (const p of [agent, customer]) {
    assert.deepEqual(p.errors, []);
    assert.deepEqual(p.cspViolations, []);
  }
});

test('a long history is paged in with sync, in order, on both sides', async () => {
  const agent = await newPage(browser);
  await agentLogin(agent, server.url, 'eve', 'pw-eve-123');
  await agentJoin(agent, 'support');
  const customer = await newPage(browser);
  await customerStart(customer, server.url, { name: 'Quinn' });
  await customer.getByTestId('widget-status').filter({ hasText: 'You are chatting with eve' }).waitFor();
  await customerSend(customer, 'start of a long chat');
  const item = agent.getByTestId('conv-item').filter({ hasText: 'Quinn' });
  await item.waitFor();
  const id = await item.getAttribute('data-conversation');

  // 450 agent messages through the HTTP API (the same send path), more than two sync pages.
  const login = await (await fetch(`${server.url}/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'eve', password: 'pw-eve-123' }) })).json();
  const N = 450;
  for (let i = 1; i <= N; i++) {
    const res = await fetch(`${server.url}/api/conversations/${id}/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${login.token}` },
      body: JSON.stringify({ client_id: `bulk-${i}`, body: `bulk ${i}`, internal: false }),
    });
    assert.equal(res.status, 200, `POST message ${i}`);
  }
  const expected = ['start of a long chat', ...Array.from({ length: N }, (_, i) => `bulk ${i + 1}`)];

  // A fresh console page syncs it all, page by page.
  await agent.reload();
  await agent.getByTestId('conv-item').filter({ hasText: 'Quinn' }).click();
  await consoleMessage(agent, `bulk ${N}`).waitFor();
  assert.deepEqual(await bodies(agent, 'conv-messages'), expected);

  // So does the customer after a reload.
  await customer.reload();
  await widgetMessage(customer, `bulk ${N}`).waitFor();
  assert.deepEqual(await bodies(customer, 'widget-messages'), expected);
  assert.deepEqual(agent.errors, []);
  assert.deepEqual(customer.errors, []);
});
