// "My conversations": the agent's active assignments, most recent activity first,
// each with the customer's name, room, last message and an unread count.

import { h } from './dom.js';
import { customerTag } from './message-list.js';
import { t } from './i18n.js';
import { initial, formatTime } from './text.js';
import { locale } from './i18n.js';

export class ConvListView {
  constructor(app) {
    this.app = app;
    this.root = document.getElementById('conv-list');
    this.empty = document.getElementById('conv-empty');
  }

  render() {
    const app = this.app;
    const ids = new Set(app.mine);
    if (app.selected && app.convs.get(app.selected)?.agent?.id === app.me?.id) ids.add(app.selected);
    const items = [...ids]
      .map((id) => app.convs.get(id))
      .filter(Boolean)
      .sort((a, b) => (app.lastActivity.get(b.id) || b.created_at || 0) - (app.lastActivity.get(a.id) || a.created_at || 0));
    const focused = this.root.contains(document.activeElement) ? document.activeElement.dataset.conversation : null;
    this.root.replaceChildren(...items.map((c) => this.#item(c)));
    if (focused) this.root.querySelector(`button[data-conversation="${CSS.escape(focused)}"]`)?.focus();
    this.empty.hidden = items.length > 0;
  }

  #item(c) {
    const app = this.app;
    const name = c.customer?.name || t('agent.customer');
    const unread = app.unread.get(c.id) || 0;
    const log = app.client.log(c.id);
    const last = [...log.bySeq.values()].filter((m) => m.kind !== 'event').sort((a, b) => b.seq - a.seq)[0];
    const preview = last ? (last.kind === 'note' ? `${t('agent.internal')}: ${last.body}` : last.body) : '';
    const btn = h(
      'button',
      {
        type: 'button',
        class: ['conv-item', c.id === app.selected && 'conv-item--selected', unread && 'conv-item--unread'],
        testid: 'conv-item',
        dataset: { conversation: c.id, status: c.status },
        aria: { current: c.id === app.selected ? 'true' : 'false' },
      },
      h('span', { class: 'avatar', aria: { hidden: 'true' } }, initial(name)),
      h(
        'span',
        { class: 'conv-item-text' },
        h(
          'span',
          { class: 'conv-item-top' },
          h('span', { class: 'conv-item-who' }, h('span', { class: 'conv-item-name', testid: 'conv-item-name' }, name), c.customer?.name ? customerTag() : null),
          last ? h('time', { class: 'muted small' }, formatTime(last.ts, locale())) : null,
        ),
        h('span', { class: 'conv-item-preview muted small' }, `#${c.room}${preview ? ' · ' : ''}`, preview),
      ),
      unread ? h('span', { class: 'badge', testid: 'conv-unread', aria: { label: t('agent.unread', { n: unread }) } }, String(unread)) : null,
    );
    btn.addEventListener('click', () => app.select(c.id));
    return h('li', {}, btn);
  }
}
