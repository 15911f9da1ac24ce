// Scenario helpers for the browser tests: the setup every test file shares (a data
// dir with agents, a running server, a browser) and the steps most tests start
// with (an agent signed in to a room, a customer whose chat got assigned, the
// first message going across). Built on the lower-level helpers in harness.js.

import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  addAgent,
  agentJoin,
  agentLogin,
  agentSend,
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

// ---- the suite: data dir, agents, server, browser ------------------------------------------

/**
 * Registers the file's `before`/`after` hooks: a temporary data dir named after tag,
 * the given agents (`[[name, password], ...]`), `parley serve` with serverArgs, and
 * Chromium; afterwards everything is closed and the data dir removed.
 * Returns the suite, whose dir, server and browser are filled in by `before`
 * (a test that restarts the server assigns suite.server, so `after` stops the new one).
 *   - serverArgs may be a function of the suite, called after beforeServer;
 *   - beforeServer(suite) runs after the agents are added, before the server starts;
 *   - afterServer(suite) runs after the server stopped, before the data dir is removed.
 */
export function parleySuite({ tag, agents = [], serverArgs = [], beforeServer, afterServer } = {}) {
  const suite = { dir: undefined, server: undefined, browser: undefined };
  before(async () => {
    suite.dir = tempDataDir(tag);
    for (const [name, password] of agents) addAgent(suite.dir, name, password);
    if (beforeServer) await beforeServer(suite);
    const args = typeof serverArgs === 'function' ? serverArgs(suite) : serverArgs;
    suite.server = await startServer({ dataDir: suite.dir, args });
    suite.browser = await launchBrowser();
  });
  after(async () => {
    await suite.browser?.close();
    await suite.server?.stop();
    if (afterServer) await afterServer(suite);
    cleanup(suite.dir);
  });
  return suite;
}

// ---- the agent's console -------------------------------------------------------------------

/** A new page in the console, signed in as name and (unless room is null) joined to room. */
export async function openConsole(suite, name, password, { room = 'support', page: pageOptions } = {}) {
  const page = await newPage(suite.browser, pageOptions);
  await agentLogin(page, suite.server.url, name, password);
  if (room !== null) await agentJoin(page, room);
  return page;
}

/** The console's list item of the customer's conversation. */
export function convItem(page, customerName) {
  return page.getByTestId('conv-item').filter({ hasText: customerName });
}

/** Open the customer's conversation from the console's list. */
export async function openConversation(page, customerName) {
  await convItem(page, customerName).click();
}

// ---- the customer's widget -----------------------------------------------------------------

/** A new page on the demo page with a chat started (see customerStart). */
export async function openChat(suite, { name = '', room = null, page: pageOptions } = {}) {
  const page = await newPage(suite.browser, pageOptions);
  await customerStart(page, suite.server.url, { name, room });
  return page;
}

/** Wait for the widget's status line to contain text. */
export async function waitWidgetStatus(page, text) {
  await page.getByTestId('widget-status').filter({ hasText: text }).waitFor();
}

/** Wait until the widget says the customer is chatting with agent. */
export async function waitChattingWith(page, agent) {
  await waitWidgetStatus(page, `You are chatting with ${agent}`);
}

/** Start a chat on an existing page and wait until it is assigned to agent. */
export async function startChatWith(page, baseUrl, { name = '', agent, room = null }) {
  await customerStart(page, baseUrl, { name, room });
  await waitChattingWith(page, agent);
}

/** A new page with a chat started (as name) and assigned to agent. */
export async function openAssignedChat(suite, { name = '', agent, room = null, page: pageOptions } = {}) {
  const page = await openChat(suite, { name, room, page: pageOptions });
  await waitChattingWith(page, agent);
  return page;
}

/** Wait for an event line ("bo joined the chat", ...) in the widget. */
export async function waitWidgetEvent(page, text) {
  await page.getByTestId('widget-messages').locator('[data-kind="event"]').filter({ hasText: text }).waitFor();
}

// ---- messages going across -----------------------------------------------------------------

const statusSelector = (page, statuses) => page.locator(statuses.map((s) => `[data-status="${s}"]`).join(', '));

/** The widget message with body text, in one of the given statuses ("pending", "sent", "seen"). */
export function widgetMessageIn(page, text, ...statuses) {
  return widgetMessage(page, text).and(statusSelector(page, statuses));
}

/** The console message with body text, in one of the given statuses. */
export function consoleMessageIn(page, text, ...statuses) {
  return consoleMessage(page, text).and(statusSelector(page, statuses));
}

/** The customer writes text; the agent opens that customer's conversation and sees it. */
export async function customerWritesAgentOpens(customer, agent, customerName, text) {
  await customerSend(customer, text);
  await openConversation(agent, customerName);
  await consoleMessage(agent, text).waitFor();
}

/** The customer sends text and it shows in the agent's open conversation. */
export async function customerSendsToAgent(customer, agent, text) {
  await customerSend(customer, text);
  await consoleMessage(agent, text).waitFor();
}

/** The agent sends text and it shows in the customer's widget. */
export async function agentSendsToCustomer(agent, customer, text) {
  await agentSend(agent, text);
  await widgetMessage(customer, text).waitFor();
}

// ---- a conversation under way ----------------------------------------------------------------

/**
 * The usual start: agentName signed in to "support", a customer (customerName) whose
 * chat got assigned to that agent, who writes firstMessage; the agent opens the
 * conversation and sees it. Returns the two pages.
 */
export async function conversationUnderWay(suite, { agentName, password, customerName, firstMessage }) {
  const agent = await openConsole(suite, agentName, password);
  const customer = await openAssignedChat(suite, { name: customerName, agent: agentName });
  await customerWritesAgentOpens(customer, agent, customerName, firstMessage);
  return { agent, customer };
}

// ---- checks --------------------------------------------------------------------------------

/** No page errors and no CSP violations on any of the pages. */
export function assertNoErrorsOrViolations(pages, errorsMessage, violationsMessage) {
  for (const p of pages) {
    assert.deepEqual(p.errors, [], errorsMessage);
    assert.deepEqual(p.cspViolations, [], violationsMessage);
  }
}
