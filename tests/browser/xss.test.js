// User text is rendered as text, everywhere: customer names, agent names and
// messages full of markup show literally and run nothing. The pages run with the
// CSP bypassed here, so that only the rendering (textContent, never innerHTML)
// stands between a payload and script execution.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agentSend, consoleMessage, customerSend, newPage, widgetMessage } from './harness.js';
import { openAssignedChat, openConsole, parleySuite, waitWidgetEvent } from './scenarios.js';

const PAYLOADS = [
  `<img src=x onerror="window.__xss='img'">`,
  `<script>window.__xss='script'</script>`,
  `"><svg onload="window.__xss='svg'">`,
  `<a href="javascript:window.__xss='link'">click me</a>`,
  `javascript:window.__xss='js-url'`,
  `<iframe srcdoc="<script>parent.__xss='iframe'</script>">`,
  `'><details open ontoggle="window.__xss='details'">`,
  `<style>*{display:none!important}</style>still visible`,
  `{{constructor.constructor('window.__xss="tpl"')()}}`,
  `&lt;b&gt;not bold&lt;/b&gt; &amp; &#x3C;`,
  `<math><mtext><table><mglyph><style><img src=x onerror="window.__xss='mxss'">`,
  `<b onmouseover="window.__xss='hover'">hover me</b> 你好 🙂`,
];
const AGENT_NAME = `"><svg onload="window.__xss='agent'">`;
const CUSTOMER_NAMES = [PAYLOADS[0], PAYLOADS[2], `<script>window.__xss='name'</script>`];

const INJECTED = [
  'img[src="x"]',
  'svg[onload]',
  'script:not([src])',
  'iframe',
  'details[ontoggle]',
  'a[href^="javascript:"]',
  'b[onmouseover]',
  'mglyph',
  'body style',
].join(', ');

const suite = parleySuite({
  tag: 'xss',
  agents: [
    [AGENT_NAME, 'pw-xss-123'],
    ['plain', 'pw-plain-123'],
  ],
});

async function assertClean(page, label) {
  assert.equal(await page.evaluate(() => window.__xss), undefined, `${label}: a payload ran`);
  assert.equal(await page.locator(INJECTED).count(), 0, `${label}: markup from user text became elements`);
  assert.deepEqual(page.errors, [], `${label}: page errors`);
}

test('XSS payloads as names and messages show as plain text and run nothing', async () => {
  const agent = await openConsole(suite, AGENT_NAME, 'pw-xss-123', { page: { bypassCSP: true } });

  const customers = [];
  for (const name of CUSTOMER_NAMES) {
    customers.push(await openAssignedChat(suite, { name, agent: AGENT_NAME, page: { bypassCSP: true } }));
  }
  const [customer] = customers;
  await waitWidgetEvent(customer, `${AGENT_NAME} joined the chat`);

  // Names in the console: conversation list items.
  for (const name of CUSTOMER_NAMES) {
    await agent.getByTestId('conv-item-name').getByText(name, { exact: true }).waitFor();
  }

  // Every payload as a customer message, and back as agent messages and a note.
  for (const p of PAYLOADS) await customerSend(customer, p);
  await agent.getByTestId('conv-item').filter({ has: agent.getByTestId('conv-item-name').getByText(CUSTOMER_NAMES[0], { exact: true }) }).click();
  await agent.getByTestId('conv-title').filter({ hasText: CUSTOMER_NAMES[0] }).waitFor();
  await customer.getByTestId('widget-input').pressSequentially('typing…', { delay: 10 });
  await agent.getByTestId('conv-typing').filter({ hasText: `${CUSTOMER_NAMES[0]} is typing…` }).waitFor();
  await customer.getByTestId('widget-input').fill('');
  for (const p of PAYLOADS) await consoleMessage(agent, p).waitFor();
  for (const p of PAYLOADS) await agentSend(agent, p);
  await agentSend(agent, PAYLOADS[1], { internal: true });
  for (const p of PAYLOADS) {
    await widgetMessage(customer, p).first().waitFor();
    assert.equal(await widgetMessage(customer, p).count(), 2, `widget shows "${p}" from both sides`);
    assert.ok(await widgetMessage(customer, p).first().isVisible(), `"${p}" is visible`);
  }
  await agent
    .getByTestId('conv-messages')
    .locator('[data-kind="note"]')
    .filter({ has: agent.getByTestId('message-body').getByText(PAYLOADS[1], { exact: true }) })
    .waitFor();

  // A rating comment full of markup: shown as text in the event line and the header.
  await customer.getByTestId('widget-close').click();
  await customer.getByTestId('widget-close-confirm').click();
  await customer.getByTestId('widget-star-label-3').click();
  await customer.getByTestId('widget-rating-comment').fill(PAYLOADS[0]);
  await customer.getByTestId('widget-rating-submit').click();
  await customer.getByTestId('widget-rating-thanks').waitFor();
  await agent.getByTestId('conv-rating').filter({ hasText: PAYLOADS[0] }).waitFor();
  await agent.getByTestId('conv-messages').locator('[data-event="rated"]').filter({ hasText: PAYLOADS[0] }).waitFor();

  // A second agent sees the first one's name in the room's agent list.
  const plain = await openConsole(suite, 'plain', 'pw-plain-123', { page: { bypassCSP: true } });
  await plain.locator('[data-testid="room"][data-room="support"] [data-testid="agent-item"] .agent-name').getByText(AGENT_NAME).waitFor();

  // Let any deferred handler (onerror of a broken image, onload, ontoggle) have its chance.
  await agent.waitForTimeout(500);
  await assertClean(agent, 'console');
  await assertClean(plain, 'second console');
  for (const [i, p] of customers.entries()) await assertClean(p, `widget ${i}`);
});

test('pages are served with the CSP from DEV-CONTRACT.md and load without violations', async () => {
  for (const path of ['/', '/agent', '/widget.js']) {
    const res = await fetch(`${suite.server.url}${path}`);
    assert.equal(res.status, 200, path);
    const csp = res.headers.get('content-security-policy') || '';
    assert.match(csp, /script-src 'self'/, `${path} CSP`);
    assert.match(csp, /style-src 'self'/, `${path} CSP`);
  }
  const page = await newPage(suite.browser);
  await page.goto(`${suite.server.url}/`);
  await page.getByTestId('widget-bubble').click();
  await page.getByTestId('widget-name-input').waitFor();
  const agent = await newPage(suite.browser);
  await agent.goto(`${suite.server.url}/agent`);
  await agent.getByTestId('login-form').waitFor();
  await page.waitForTimeout(300);
  assert.deepEqual(page.cspViolations, []);
  assert.deepEqual(agent.cspViolations, []);
  assert.deepEqual(page.errors, []);
  assert.deepEqual(agent.errors, []);
});
