// Language, phone width, the body-length counter, the keyboard, and the
// rate-limit notice. The server runs with a small body limit and a tight rate
// limit so both are easy to reach.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bodies, customerSend, newPage, screenshotPath, widgetMessage } from './harness.js';
import { convItem, openChat, openConsole, parleySuite, waitWidgetStatus, widgetMessageIn } from './scenarios.js';

const PHONE = { width: 375, height: 740 };
const suite = parleySuite({
  tag: 'ux',
  agents: [['gus', 'pw-gus-123']],
  serverArgs: ['--max-body-chars', '20', '--rate-per-sec', '1', '--rate-burst', '3'],
});

test('widget in Chinese at 375 px: full-screen panel, nobody online, counter in Unicode scalar values, Shift+Enter', async () => {
  const page = await newPage(suite.browser, { locale: 'zh-CN', viewport: PHONE });
  await page.goto(`${suite.server.url}/`);
  const bubble = page.getByTestId('widget-bubble');
  assert.equal(await bubble.getAttribute('aria-label'), '联系客服');
  await bubble.click();
  const panel = page.getByTestId('widget-panel');
  const box = await panel.boundingBox();
  assert.equal(Math.round(box.width), PHONE.width, 'panel fills the phone screen');
  assert.equal(await page.getByTestId('widget-start').textContent(), '开始聊天');
  await page.getByTestId('widget-name-input').fill('小王 🐼');
  await page.getByTestId('widget-start').press('Enter');
  // Nobody is online yet: said plainly, with the offer to leave an email address.
  await waitWidgetStatus(page, '目前没有客服在线');
  await page.getByTestId('widget-contact').getByText('您的邮箱（可选）').waitFor();

  // The counter shows near the limit and counts emoji and CJK as one each.
  const input = page.getByTestId('widget-input');
  const counter = page.getByTestId('widget-counter');
  await input.fill('你好😀'.repeat(5)); // 15 of 20
  assert.equal(await counter.isVisible(), false);
  await input.fill('你好😀'.repeat(6)); // 18
  await counter.filter({ hasText: '18 / 20' }).waitFor();
  await input.fill('😀'.repeat(21)); // 21 scalar values, 42 UTF-16 units
  await counter.filter({ hasText: '太长了：21 / 20 字' }).waitFor();
  assert.equal(await page.getByTestId('widget-send').isDisabled(), true);
  await input.press('Enter');
  assert.equal(await page.getByTestId('widget-messages').locator('[data-kind="text"]').count(), 0, 'too long is not sent');

  // Exactly at the limit is fine (20 emoji = 40 UTF-16 units).
  await input.fill('😀'.repeat(20));
  await input.press('Enter');
  await widgetMessageIn(page, '😀'.repeat(20), 'sent').waitFor();

  // Shift+Enter is a new line, Enter sends.
  await input.fill('第一行');
  await input.press('Shift+Enter');
  await input.pressSequentially('second line');
  await input.press('Enter');
  await widgetMessage(page, '第一行\nsecond line').waitFor();
  assert.equal(await page.getByTestId('widget-send').textContent(), '发送');
  await page.screenshot({ path: screenshotPath('widget-phone-zh.png') });
  assert.deepEqual(page.errors, []);
});

test('rate limited: a clear notice, the text stays queued and is sent once, in order', async () => {
  const page = await openChat(suite, { name: 'Hal' });
  const texts = ['one', 'two', 'three', 'four', 'five', 'six', 'seven'];
  for (const t of texts) await customerSend(page, t);
  await page.getByTestId('widget-notice').filter({ hasText: 'slowing down' }).waitFor();
  // Still pending, not dropped.
  await widgetMessage(page, 'seven').waitFor();
  for (const t of texts) {
    await widgetMessageIn(page, t, 'sent').waitFor({ timeout: 30_000 });
  }
  assert.deepEqual(await bodies(page, 'widget-messages'), texts);
  await page.getByTestId('widget-notice').waitFor({ state: 'hidden', timeout: 15_000 });
  // After a reload (history from the server) still exactly once each, in order.
  await page.reload();
  await widgetMessage(page, 'seven').waitFor();
  assert.deepEqual(await bodies(page, 'widget-messages'), texts);
  assert.deepEqual(page.errors, []);
});

test('console at 375 px: list, conversation full screen, back', async () => {
  const page = await openConsole(suite, 'gus', 'pw-gus-123', { page: { viewport: PHONE } });
  const item = convItem(page, '小王 🐼');
  await item.click();
  const view = page.getByTestId('conv-view');
  await view.waitFor({ state: 'visible' });
  await widgetlessCheck(page);
  const box = await view.boundingBox();
  assert.ok(box.width <= PHONE.width, 'conversation fits the screen');
  assert.equal(await page.locator('#sidebar').isVisible(), false, 'sidebar hidden while reading');
  await page.getByTestId('conv-messages').getByTestId('message-body').filter({ hasText: '第一行' }).waitFor();
  await page.screenshot({ path: screenshotPath('console-phone.png') });
  await page.getByTestId('conv-back').click();
  await item.waitFor({ state: 'visible' });
  assert.deepEqual(page.errors, []);
});

async function widgetlessCheck(page) {
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling (overflow ${overflow}px)`);
}
