// The message list shared by the widget and the console: text, internal notes and
// event lines in seq order, the sender's own pending messages at the end, and the
// pending -> sent -> seen status of one's own messages. All user text goes in as
// text nodes.

import { h, setChildren, setText } from './dom.js';
import { t, locale, errorText } from './i18n.js';
import { formatTime, formatFull } from './text.js';

/**
 * The "customer" tag put after a customer's name wherever the console shows it, so that
 * a display name such as "Parley Support (agent)" cannot pass for staff or the system.
 * (Display names are chosen by customers; agents' names are set by an administrator.)
 */
export function customerTag() {
  return h('span', { class: 'role-tag role-tag--customer', testid: 'customer-tag' }, t('agent.customer_tag'));
}

/**
 * Human text for a kind:"event" message. Event fields beyond `name` are read defensively.
 * perspective ('customer' or 'agent') decides how a customer's own action is told: a
 * customer-chosen name is never put into an event line, which must read as the system's.
 */
export function eventText(m, perspective = 'agent') {
  const ev = m.event || {};
  const name = ev.name;
  const nameOf = (u) => (u && typeof u === 'object' ? u.name : typeof u === 'string' ? u : '') || '';
  if (name === 'assigned') {
    const who = nameOf(ev.agent) || nameOf(ev.to_agent) || nameOf(ev.to);
    return who ? t('event.assigned', { name: who }) : m.body || t('event.transferred');
  }
  if (name === 'transferred') {
    const who = nameOf(ev.to_agent) || nameOf(ev.agent);
    if (who) return t('event.transferred_agent', { name: who });
    const room = ev.to_room || ev.room;
    if (room) return t('event.transferred_room', { room });
    return t('event.transferred');
  }
  if (name === 'closed') {
    if (ev.reason === 'abandoned') return perspective === 'customer' ? t('event.closed_abandoned_customer') : t('event.closed_abandoned');
    const by = ev.by || ev.closed_by;
    if (by && typeof by === 'object' && by.role === 'customer') {
      return perspective === 'customer' ? t('event.closed_by_you') : t('event.closed_by_customer');
    }
    const who = nameOf(by);
    return who ? t('event.closed_by', { name: who }) : t('event.closed');
  }
  if (name === 'rated') {
    if (typeof ev.score !== 'number') return t('event.rated_plain');
    const comment = typeof ev.comment === 'string' ? ev.comment.trim() : '';
    return comment ? t('event.rated_comment', { score: ev.score, comment }) : t('event.rated', { score: ev.score });
  }
  if (name === 'reopened') return t('event.reopened');
  return m.body || String(name || '');
}

export class MessageList {
  /**
   * perspective: 'customer' or 'agent'. me(): the current user's id. seenLabel: the text for
   * an own message the other side has read (the apps decide whose read events count).
   */
  constructor({ testid = 'messages', perspective, me, seenLabel }) {
    this.perspective = perspective;
    this.me = me;
    this.seenLabel = seenLabel || t('chat.seen');
    this.peerRead = 0;
    this.el = h('ol', { class: 'msglist', testid, aria: { live: 'polite', label: t('chat.input_label') } });
    this.empty = h('li', { class: 'msglist__empty', testid: 'messages-empty' }, t('chat.empty'));
    this.el.append(this.empty);
  }

  clear() {
    this.peerRead = 0;
    this.el.replaceChildren(this.empty);
    this.empty.hidden = false;
  }

  #mine(m) {
    if (!m.from) return false;
    // Only the customer who owns a conversation writes in it as a customer: in the widget a
    // customer's message is always the viewer's own, whatever name it carries.
    if (this.perspective === 'customer' && m.from.role === 'customer') return true;
    return m.from.id === this.me();
  }

  #status(li) {
    return li.querySelector('.msg__status');
  }

  #render(m, { pending = false } = {}) {
    const kind = pending ? (m.internal ? 'note' : 'text') : m.kind;
    if (kind === 'event') {
      return h(
        'li',
        { class: 'msg msg--event', testid: 'message', dataset: { seq: String(m.seq), kind: 'event', event: m.event?.name || '' } },
        h('span', { class: 'msg__eventtext' }, eventText(m, this.perspective)),
        h('time', { class: 'msg__time', datetime: new Date(m.ts).toISOString(), title: formatFull(m.ts, locale()) }, formatTime(m.ts, locale())),
      );
    }
    const mine = pending || this.#mine(m);
    const author = pending ? t('chat.you') : mine ? t('chat.you') : m.from?.name || (m.from?.role === 'customer' ? t('agent.customer') : t('chat.someone'));
    const ts = m.ts;
    const li = h(
      'li',
      {
        class: ['msg', mine ? 'msg--mine' : 'msg--theirs', kind === 'note' && 'msg--note'],
        testid: 'message',
        dataset: { kind, role: pending ? this.perspective : m.from?.role || '' },
      },
      kind === 'note' ? h('div', { class: 'msg__notelabel', testid: 'note-label' }, t('agent.note_label')) : null,
      h(
        'div',
        { class: 'msg__meta' },
        h('span', { class: 'msg__author', testid: 'message-author' }, author),
        !mine && this.perspective === 'agent' && m.from?.role === 'customer' && m.from.name ? customerTag() : null,
        h('time', { class: 'msg__time', datetime: new Date(ts).toISOString(), title: formatFull(ts, locale()) }, formatTime(ts, locale())),
      ),
      h('div', { class: 'msg__body', testid: 'message-body' }, m.body ?? ''),
    );
    if (m.client_id) li.dataset.clientId = m.client_id;
    if (!pending) li.dataset.seq = String(m.seq);
    if (mine) {
      li.append(h('div', { class: 'msg__status', testid: 'message-status', aria: { live: 'off' } }));
      this.#setStatus(li, pending ? 'pending' : kind !== 'note' && m.seq <= this.peerRead ? 'seen' : 'sent');
    }
    return li;
  }

  #setStatus(li, status, reason) {
    li.dataset.status = status;
    const el = this.#status(li);
    if (!el) return;
    const text =
      status === 'pending' ? t('chat.pending') : status === 'seen' ? this.seenLabel : status === 'failed' ? t('chat.failed', { reason }) : t('chat.sent');
    setText(el, text);
  }

  /** Insert or keep a stored message (has seq); replaces the pending copy with the same client_id. */
  upsert(m) {
    if (typeof m.seq !== 'number') return;
    if (this.el.querySelector(`li[data-seq="${m.seq}"]`)) return;
    if (m.client_id) {
      for (const p of this.el.querySelectorAll('li[data-status="pending"], li[data-status="failed"]')) {
        if (p.dataset.clientId === m.client_id && !p.dataset.seq) p.remove();
      }
    }
    const li = this.#render(m);
    // Before the first seq'd message with a larger seq, else before the pending block.
    let before = null;
    for (const other of this.el.children) {
      if (other === this.empty) continue;
      const s = other.dataset.seq;
      if (s === undefined ? true : Number(s) > m.seq) {
        before = other;
        break;
      }
    }
    this.el.insertBefore(li, before);
    this.empty.hidden = true;
  }

  /** A message the user typed that has not been acknowledged yet. */
  addPending(entry) {
    for (const p of this.el.children) if (p.dataset.clientId === entry.client_id) return;
    this.el.append(this.#render(entry, { pending: true }));
    this.empty.hidden = true;
  }

  markFailed(clientId, code) {
    for (const p of this.el.children) {
      if (p.dataset.clientId === clientId && !p.dataset.seq) this.#setStatus(p, 'failed', errorText(code));
    }
  }

  /** The other side has read up to seq: own messages up to it are "seen". */
  setPeerRead(seq) {
    if (!(seq > this.peerRead)) return;
    this.peerRead = seq;
    for (const li of this.el.querySelectorAll('li[data-status="sent"]:not([data-kind="note"])')) {
      if (Number(li.dataset.seq) <= seq) this.#setStatus(li, 'seen');
    }
  }
}

/**
 * "X is typing…" line with an automatic timeout in case the "off" never comes. In the
 * console (perspective 'agent') a typing customer is marked with the customer tag.
 */
export class TypingIndicator {
  constructor(testid = 'typing', perspective = 'customer') {
    this.perspective = perspective;
    this.el = h('div', { class: 'typing', testid, aria: { live: 'polite' }, hidden: true });
    this.timer = null;
    this.who = null;
  }

  set(from, on) {
    clearTimeout(this.timer);
    if (on) {
      this.who = from?.id || null;
      const text = t('chat.typing', { name: from?.name || t('chat.someone') });
      if (this.perspective !== 'agent' || from?.role !== 'customer') setText(this.el, text);
      else if (this.el.textContent !== `${t('agent.customer_tag')} ${text}`) setChildren(this.el, customerTag(), ' ', text);
      this.el.hidden = false;
      this.timer = setTimeout(() => this.clear(), 8000);
    } else if (!from || !this.who || from.id === this.who) {
      this.clear();
    }
  }

  clear() {
    clearTimeout(this.timer);
    this.who = null;
    this.el.hidden = true;
  }
}
