// Sessions end with their credentials: when the agent's token expires the server
// closes the console's WebSocket with 4501 ("token expired"). The console returns
// to the login form and says why; signing in again resumes the work where it was:
// the same rooms, the same availability, the same conversation selected with its
// messages, the text being typed, and the messages not yet acknowledged are sent
// exactly once.
//
// The token lives 6 s, so the first part of the test has to be quick; so does the
// part after signing in again (the new token lives 6 s too).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { BIN, agentJoin, agentLogin, agentSend, bodies, consoleMessage, customerSend, newPage, waitSignedIn, widgetMessage } from './harness.js';
import { assertNoErrorsOrViolations, consoleMessageIn, convItem, openChat, parleySuite, widgetMessageIn } from './scenarios.js';

const TTL_SECS = 6;
const suite = parleySuite({
  tag: 'expiry',
  agents: [
    ['ivy', 'pw-ivy-123'],
    ['jo', 'pw-jo-123'],
    ['kim', 'pw-kim-123'],
    ['lee', 'pw-lee-123'],
  ],
  serverArgs: ['--rooms', 'support,sales', '--agent-token-ttl-secs', String(TTL_SECS)],
});

const CUSTOMER = 'Dana';
const FIRST = 'Where is my parcel?';
const ACK_LOST = 'Stored by the server, but its ack was lost';
const QUEUED = 'Typed while the first one waited for its ack';
const DRAFT = 'half-typed reply';

/**
 * Route the console's WebSocket through the test, which can swallow one send (hold.drop
 * 'send': the server never sees it) or the server's ack of it ('ack': the message is
 * stored, the console never hears so). Either way the console keeps that message, and
 * everything typed after it, in its outbox.
 */
async function routeConsoleSocket(page) {
  const hold = { body: null, drop: 'ack', clientId: null, dropped: 0 };
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((msg) => {
      if (hold.body && typeof msg === 'string') {
        const f = JSON.parse(msg);
        if (f.type === 'send' && f.body === hold.body) {
          hold.clientId = f.client_id;
          if (hold.drop === 'send') {
            hold.dropped++;
            return;
          }
        }
      }
      server.send(msg);
    });
    server.onMessage((msg) => {
      if (hold.clientId && hold.drop === 'ack' && typeof msg === 'string') {
        const f = JSON.parse(msg);
        if (f.type === 'ack' && f.client_id === hold.clientId) {
          hold.dropped++;
          return;
        }
      }
      ws.send(msg);
    });
    // Pass closes on with their code and reason, both ways.
    ws.onClose((code, reason) => server.close({ code, reason }));
    server.onClose((code, reason) => ws.close({ code, reason }));
  });
  return hold;
}

async function waitFor(cond, what, timeoutMs = 5000) {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test('token expiry: back to the login form with the reason; signing in again resumes where it was', async () => {
  // The customer is waiting before the agent signs in (the token's clock starts at the login).
  const customer = await openChat(suite, { name: CUSTOMER });
  await customerSend(customer, FIRST);
  await widgetMessageIn(customer, FIRST, 'sent').waitFor();

  const agent = await newPage(suite.browser);
  const hold = await routeConsoleSocket(agent);
  await agent.goto(`${suite.server.url}/agent`);
  await agent.getByTestId('login-name').fill('ivy');
  await agent.getByTestId('login-password').fill('pw-ivy-123');
  await agent.getByTestId('login-submit').click();
  const signedInAt = Date.now();
  await waitSignedIn(agent, 'ivy');

  // The chat is assigned to ivy; she opens it, joins a second room, and goes away.
  const item = convItem(agent, CUSTOMER);
  await item.click();
  const id = await item.getAttribute('data-conversation');
  await consoleMessage(agent, FIRST).waitFor();
  await agentJoin(agent, 'sales');
  await agent.getByTestId('availability-toggle').click();
  await agent.locator('[data-testid="availability-toggle"][data-availability="away"]').waitFor();

  // One reply is stored but its ack never arrives; the next one queues behind it; a third is only typed.
  hold.body = ACK_LOST;
  await agentSend(agent, ACK_LOST);
  await waitFor(() => hold.dropped > 0, 'the ack to swallow');
  await agentSend(agent, QUEUED);
  await consoleMessageIn(agent, QUEUED, 'pending').waitFor();
  await agent.getByTestId('conv-input').fill(DRAFT);
  assert.ok(Date.now() - signedInAt < TTL_SECS * 1000, 'the set-up took longer than the token lives; the test cannot tell anything');
  assert.equal(await agent.getByTestId('login-form').isVisible(), false);

  // The token expires: the server closes with 4501 and the console says why.
  await agent.getByTestId('login-form').waitFor({ state: 'visible', timeout: (TTL_SECS + 10) * 1000 });
  await agent.getByTestId('login-error').filter({ hasText: 'Your session has expired. Please sign in again.' }).waitFor();
  assert.equal(await agent.getByTestId('console').isVisible(), false);
  assert.equal(await agent.getByTestId('login-name').inputValue(), 'ivy', 'the name is filled in');
  hold.body = hold.clientId = null; // from here on the socket is left alone

  // Sign in again (only the password to type).
  await agent.getByTestId('login-password').fill('pw-ivy-123');
  await agent.getByTestId('login-submit').click();
  await waitSignedIn(agent, 'ivy');

  // The same conversation is selected, with its messages; the same rooms; still away; the draft is back.
  await agent.locator(`[data-testid="conv-view"][data-conversation="${id}"]`).waitFor({ state: 'visible' });
  await agent.getByTestId('conv-title').filter({ hasText: CUSTOMER }).waitFor();
  await consoleMessage(agent, FIRST).waitFor();
  assert.equal(await convItem(agent, CUSTOMER).getAttribute('aria-current'), 'true');
  for (const room of ['support', 'sales']) await agent.locator(`[data-testid="room"][data-room="${room}"]`).waitFor();
  await agent.locator('[data-testid="availability-toggle"][data-availability="away"]').waitFor();
  await agent.locator('[data-testid="room"][data-room="support"] [data-testid="agent-item"][data-availability="away"]').filter({ hasText: 'ivy' }).waitFor();
  assert.equal(await agent.getByTestId('conv-input').inputValue(), DRAFT);

  // The two unacknowledged replies arrive, each exactly once, in order, on both sides.
  await consoleMessageIn(agent, QUEUED, 'sent', 'seen').waitFor();
  await consoleMessageIn(agent, ACK_LOST, 'sent', 'seen').waitFor();
  await widgetMessage(customer, QUEUED).waitFor();
  await agent.waitForTimeout(300);
  assert.deepEqual(await bodies(agent, 'conv-messages'), [FIRST, ACK_LOST, QUEUED]);
  assert.deepEqual(await bodies(customer, 'widget-messages'), [FIRST, ACK_LOST, QUEUED]);
  assert.equal(await agent.locator('[data-testid="conv-messages"] [data-status="pending"], [data-testid="conv-messages"] [data-status="failed"]').count(), 0);

  assertNoErrorsOrViolations([agent, customer], 'no page errors', 'no CSP violations');
  await agent.context().close();
  await customer.context().close();
});

test('signing out forgets what the tab was doing: selection, availability, unsent messages', async () => {
  const customer = await openChat(suite, { name: 'Eli' });
  await customerSend(customer, 'Hello?');
  const agent = await newPage(suite.browser);
  const hold = await routeConsoleSocket(agent);
  await agentLogin(agent, suite.server.url, 'jo', 'pw-jo-123');
  await convItem(agent, 'Eli').click();
  await consoleMessage(agent, 'Hello?').waitFor();
  await agent.getByTestId('availability-toggle').click();
  await agent.locator('[data-testid="availability-toggle"][data-availability="away"]').waitFor();
  hold.drop = 'send';
  hold.body = 'never sent';
  await agentSend(agent, 'never sent');
  await waitFor(() => hold.dropped > 0, 'the send to swallow');
  await consoleMessageIn(agent, 'never sent', 'pending').waitFor();

  await agent.getByTestId('logout').click();
  await agent.getByTestId('login-form').waitFor({ state: 'visible' });
  assert.equal(await agent.getByTestId('login-error').isVisible(), false, 'no message after signing out on purpose');
  hold.body = hold.clientId = null;
  // Sign in again on the same page (no reload).
  await agent.getByTestId('login-name').fill('jo');
  await agent.getByTestId('login-password').fill('pw-jo-123');
  await agent.getByTestId('login-submit').click();
  await waitSignedIn(agent, 'jo');
  await convItem(agent, 'Eli').waitFor();
  assert.equal(await agent.getByTestId('conv-placeholder').isVisible(), true, 'no conversation selected');
  assert.equal(await agent.getByTestId('conv-view').count(), 1, 'one conversation view on the page');
  await agent.locator('[data-testid="availability-toggle"][data-availability="online"]').waitFor();
  await convItem(agent, 'Eli').click();
  await consoleMessage(agent, 'Hello?').waitFor();
  await agent.waitForTimeout(500);
  assert.deepEqual(await bodies(agent, 'conv-messages'), ['Hello?'], 'the unsent message was dropped with the session');
  assert.deepEqual(await bodies(customer, 'widget-messages'), ['Hello?']);
  assertNoErrorsOrViolations([agent, customer], 'no page errors', 'no CSP violations');
  await agent.context().close();
  await customer.context().close();
});

test('a changed password or a removed account ends the session, and the login form says which', async () => {
  const parley = (...args) => execFileSync(BIN, ['agent', ...args, '--data-dir', suite.dir], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });

  const kim = await newPage(suite.browser);
  await agentLogin(kim, suite.server.url, 'kim', 'pw-kim-123');
  parley('passwd', 'kim', '--password', 'pw-kim-456');
  await kim.getByTestId('login-error').filter({ hasText: 'Your password was changed' }).waitFor({ timeout: 5000 });
  await kim.getByTestId('login-password').fill('pw-kim-456');
  await kim.getByTestId('login-submit').click();
  await waitSignedIn(kim, 'kim');

  const lee = await newPage(suite.browser, { locale: 'zh-CN' });
  await agentLogin(lee, suite.server.url, 'lee', 'pw-lee-123');
  parley('remove', 'lee');
  await lee.getByTestId('login-error').filter({ hasText: '您的客服账号已被删除' }).waitFor({ timeout: 5000 });
  assertNoErrorsOrViolations([kim, lee], 'no page errors', 'no CSP violations');
  await kim.context().close();
  await lee.context().close();
});
