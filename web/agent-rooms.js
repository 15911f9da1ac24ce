// Rooms in the console sidebar: join by name (suggesting the server's rooms), leave,
// and per room the live queue (with waiting times ticking) and the agents present
// with availability and load. Rooms where agents accept by hand are marked.

import { h, setText } from './dom.js';
import { t, duration, errorText } from './i18n.js';
import { initial } from './text.js';
import { customerTag } from './message-list.js';

export class RoomsView {
  constructor(app) {
    this.app = app;
    this.root = document.getElementById('rooms');
    this.form = document.getElementById('join-form');
    this.input = document.getElementById('join-input');
    this.error = document.getElementById('join-error');
    this.datalist = document.getElementById('room-suggestions');
    this.onSubmit = async (ev) => {
      ev.preventDefault();
      const name = this.input.value.trim();
      if (!name) return;
      this.error.hidden = true;
      try {
        await app.join(name);
        this.input.value = '';
      } catch (err) {
        setText(this.error, err.code === 'not_found' ? t('agent.not_found') : t('chat.error', { reason: errorText(err.code) }));
        this.error.hidden = false;
      }
    };
    this.form.addEventListener('submit', this.onSubmit);
  }

  /** The console is signed out: let go of the shared form. */
  destroy() {
    this.form.removeEventListener('submit', this.onSubmit);
    this.error.hidden = true;
    this.root.replaceChildren();
  }

  render() {
    const app = this.app;
    this.datalist.replaceChildren(
      ...app
        .roomList()
        .filter((r) => !app.joined.includes(r.name))
        .map((r) => h('option', { value: r.name, label: r.manual ? t('agent.room_suggestion_manual', { room: r.name }) : r.name })),
    );
    const sections = app.joined.map((name) => this.#room(app.rooms.get(name) || { name, queue: new Map(), agents: new Map(), loaded: false }));
    // Keep keyboard focus where it was across re-renders.
    const focused = this.root.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    this.root.replaceChildren(...sections);
    if (focused) this.root.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
    this.tick();
  }

  #room(r) {
    const app = this.app;
    const queue = [...r.queue.values()].sort(
      (a, b) => (a.queue_position ?? Infinity) - (b.queue_position ?? Infinity) || (a.created_at || 0) - (b.created_at || 0),
    );
    const leave = h('button', { type: 'button', class: 'btn btn-ghost btn-tiny', testid: 'room-leave', dataset: { focusKey: `leave:${r.name}` } }, t('agent.leave'));
    leave.addEventListener('click', () => app.leave(r.name).catch(() => {}));
    const queueList = queue.length
      ? h('ul', { class: 'queue', testid: 'queue' }, queue.map((c) => this.#queueItem(c)))
      : h('p', { class: 'muted small', testid: 'queue-empty' }, r.loaded ? t('agent.queue_empty') : t('agent.loading'));
    // The join reply lists the first 100 of a longer queue.
    const total = r.queue ? app.queueCount(r) : queue.length;
    const more = total > queue.length ? h('p', { class: 'queue-more muted small', testid: 'queue-more' }, t('agent.queue_more', { n: total - queue.length })) : null;
    const manual = !!app.serverRooms?.get(r.name)?.manual;
    const agents = [...r.agents.values()].sort((a, b) => a.agent.name.localeCompare(b.agent.name));
    return h(
      'section',
      { class: 'room', testid: 'room', dataset: { room: r.name }, aria: { label: r.name } },
      h(
        'header',
        { class: 'room-head' },
        h('h3', { class: 'room-name' }, `# ${r.name}`),
        manual ? h('span', { class: 'room-tag', testid: 'room-manual', title: t('agent.room_manual_title') }, t('agent.room_manual')) : null,
        h('span', { class: ['pill', total && 'pill-warn'], testid: 'room-queue-count' }, String(total)),
        leave,
      ),
      h('h4', { class: 'sub-title' }, t('agent.queue')),
      queueList,
      more,
      h('h4', { class: 'sub-title' }, t('agent.agents')),
      h('ul', { class: 'agents', testid: 'agents' }, agents.map((p) => this.#agent(p))),
    );
  }

  #queueItem(c) {
    const app = this.app;
    const name = c.customer?.name || t('agent.customer');
    const accept = h('button', { type: 'button', class: 'btn btn-primary btn-tiny', testid: 'queue-accept', dataset: { focusKey: `accept:${c.id}` } }, t('agent.accept'));
    accept.addEventListener('click', async () => {
      accept.disabled = true;
      try {
        await app.accept(c.id);
      } catch (err) {
        accept.disabled = false;
        accept.title = errorText(err.code);
      }
    });
    const view = h('button', { type: 'button', class: 'btn btn-ghost btn-tiny', testid: 'queue-view', dataset: { focusKey: `view:${c.id}` } }, t('agent.view'));
    view.addEventListener('click', () => app.select(c.id));
    return h(
      'li',
      { class: 'queue-item', testid: 'queue-item', dataset: { conversation: c.id } },
      h('span', { class: 'avatar avatar-small', aria: { hidden: 'true' } }, initial(name)),
      h(
        'span',
        { class: 'queue-text' },
        h('span', { class: 'queue-who' }, h('span', { class: 'queue-name', testid: 'queue-name' }, name), c.customer?.name ? customerTag() : null),
        h('span', { class: 'queue-wait muted small', testid: 'queue-wait', dataset: { since: String(c.created_at || Date.now()) } }),
      ),
      h('span', { class: 'queue-btns' }, view, accept),
    );
  }

  #agent(p) {
    const me = p.agent.id === this.app.me?.id;
    // Whatever the last presence said, this agent is not reachable while the console is disconnected.
    const availability = me && this.app.client.state !== 'online' ? 'offline' : p.availability;
    return h(
      'li',
      { class: 'agent-item', testid: 'agent-item', dataset: { agent: p.agent.id, availability } },
      h('span', { class: ['dot', `dot-${availability}`], aria: { hidden: 'true' } }),
      h('span', { class: 'agent-name' }, p.agent.name, me ? h('span', { class: 'muted' }, ` (${t('chat.you')})`) : null),
      h('span', { class: 'visually-hidden' }, t(`agent.${availability}`)),
      h('span', { class: 'agent-load muted small', testid: 'agent-load', title: t(`agent.${availability}`) }, t('agent.load', { active: p.active ?? 0, max: p.max ?? '?' })),
    );
  }

  /** Refresh the "waiting 1m 20s" labels. */
  tick() {
    const now = Date.now();
    for (const el of this.root.querySelectorAll('[data-since]')) {
      setText(el, t('agent.waiting', { time: duration(now - Number(el.dataset.since)) }));
    }
  }
}
