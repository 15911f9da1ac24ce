// "My conversations": the agent's active assignments, most recent activity first,
// each with the customer's name, room, last message and an unread count; below them,
// in a "Closed" group that starts collapsed, the agent's conversations that ended,
// marked closed and with the customer's rating. The unread total goes in the tab title.

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
    this.closedOpen = false;
  }

  render() {
    const app = this.app;
    const ids = new Set(app.mine);
    const sel = app.selected ? app.convs.get(app.selected) : null;
    if (sel && sel.status !== 'closed' && sel.agent?.id === app.me?.id) ids.add(app.selected);
    const byActivity = (a, b) => (app.lastActivity.get(b.id) || b.created_at || 0) - (app.lastActivity.get(a.id) || a.created_at || 0);
    const open = [...ids]
      .filter((id) => !app.closed.has(id))
      .map((id) => app.convs.get(id))
      .filter(Boolean)
      .sort(byActivity);
    const closed = [...app.closed.values()].reverse(); // most recently closed first
    const focused = this.root.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    const items = open.map((c) => h('li', {}, this.#item(c)));
    if (closed.length) items.push(this.#closedGroup(closed));
    this.root.replaceChildren(...items);
    if (focused) this.root.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
    this.empty.hidden = open.length > 0;
    app.paintTitle();
  }

  #closedGroup(closed) {
    const list = h('ul', { class: 'conv-list' }, closed.map((c) => h('li', {}, this.#item(c))));
    const details = h(
      'details',
      { testid: 'conv-closed-group', open: this.closedOpen },
      h('summary', { testid: 'conv-closed-summary', dataset: { focusKey: 'closed-summary' } }, t('agent.closed_group', { n: closed.length })),
      list,
    );
    details.addEventListener('toggle', () => (this.closedOpen = details.open));
    return h('li', { class: 'conv-group' }, details);
  }

  #item(c) {
    const app = this.app;
    const closed = c.status === 'closed';
    const name = c.customer?.name || t('agent.customer');
    const unread = closed ? 0 : app.unread.get(c.id) || 0;
    const rating = app.ratings.get(c.id);
    const log = app.client.log(c.id);
    const last = [...log.bySeq.values()].filter((m) => m.kind !== 'event').sort((a, b) => b.seq - a.seq)[0];
    const preview = last ? (last.kind === 'note' ? `${t('agent.internal')}: ${last.body}` : last.body) : '';
    const btn = h(
      'button',
      {
        type: 'button',
        class: ['conv-item', c.id === app.selected && 'conv-item--selected', unread && 'conv-item--unread', closed && 'conv-item--closed'],
        testid: 'conv-item',
        dataset: { conversation: c.id, status: c.status, focusKey: `conv:${c.id}` },
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
        closed
          ? h(
              'span',
              { class: 'conv-item-tags' },
              h('span', { class: 'status-tag', testid: 'conv-item-closed' }, t('agent.closed_tag')),
              rating
                ? h(
                    'span',
                    { class: 'rating-tag', testid: 'conv-item-rating', title: t('agent.rating', { score: rating.score }) },
                    h('span', { aria: { hidden: 'true' } }, `★ ${rating.score}`),
                    h('span', { class: 'visually-hidden' }, t('agent.rating', { score: rating.score })),
                  )
                : null,
            )
          : null,
      ),
      unread
        ? h('span', { class: 'badge', testid: 'conv-unread' }, h('span', { aria: { hidden: 'true' } }, String(unread)), h('span', { class: 'visually-hidden' }, t('agent.unread', { n: unread })))
        : null,
    );
    btn.addEventListener('click', () => app.select(c.id));
    return btn;
  }
}
