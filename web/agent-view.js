// The console's conversation view: history (synced page by page), live messages,
// internal notes shown apart, the customer's typing and read receipts, and the
// accept / transfer / close actions. The header also shows the email address a
// customer left (for a reply by mail) and the customer's rating; a closed chat's
// message box says that it is closed.

import { h, setChildren, setText } from './dom.js';
import { t, errorText } from './i18n.js';
import { MessageList, TypingIndicator, customerTag } from './message-list.js';
import { Composer } from './composer.js';
import { backIcon } from './icons.js';

export class ConvView {
  constructor(app) {
    this.app = app;
    this.id = null;
    this.main = document.getElementById('main');
    this.placeholder = document.getElementById('placeholder');
    this.#build();
  }

  #build() {
    const app = this.app;
    this.title = h('h2', { class: 'conv-title', testid: 'conv-title' });
    this.status = h('p', { class: 'conv-status muted small', testid: 'conv-status' });
    this.contactLink = h('a', { testid: 'conv-contact-email' });
    this.contact = h('p', { class: 'conv-contact', testid: 'conv-contact', hidden: true }, `${t('agent.contact_email')}: `, this.contactLink);
    this.ratingEl = h('p', { class: 'conv-rating', testid: 'conv-rating', hidden: true });
    const back = h('button', { type: 'button', class: 'icon-btn conv-back', testid: 'conv-back', aria: { label: t('agent.back') } }, backIcon('icon'));
    back.addEventListener('click', () => app.select(null));

    this.acceptBtn = h('button', { type: 'button', class: 'btn btn-primary btn-small', testid: 'conv-accept' }, t('agent.accept'));
    this.acceptBtn.addEventListener('click', () => this.#act(() => app.accept(this.id), this.acceptBtn));

    const selId = 'conv-transfer-select';
    this.transferSelect = h('select', { id: selId, class: 'field field-small', testid: 'conv-transfer-select' });
    this.transferBtn = h('button', { type: 'button', class: 'btn btn-ghost btn-small', testid: 'conv-transfer' }, t('agent.transfer'));
    this.transferBtn.addEventListener('click', () => {
      const v = this.transferSelect.value;
      if (!v) return;
      const target = v.startsWith('agent:') ? { agent: v.slice(6) } : { room: v.slice(5) };
      this.#act(async () => this.update(await app.transfer(this.id, target)), this.transferBtn);
    });
    this.transferBox = h(
      'div',
      { class: 'transfer' },
      h('label', { class: 'visually-hidden', for: selId }, t('agent.transfer_to')),
      this.transferSelect,
      this.transferBtn,
    );

    this.closeBtn = h('button', { type: 'button', class: 'btn btn-danger btn-small', testid: 'conv-close' }, t('agent.close'));
    this.closeBtn.addEventListener('click', () => this.#act(async () => this.update(await app.close(this.id)), this.closeBtn));

    const head = h(
      'header',
      { class: 'conv-head' },
      back,
      h('div', { class: 'conv-head-text' }, this.title, this.status, this.contact, this.ratingEl),
      h('div', { class: 'conv-actions' }, this.acceptBtn, this.transferBox, this.closeBtn),
    );

    this.list = new MessageList({ testid: 'conv-messages', perspective: 'agent', me: () => app.client.user?.id, seenLabel: t('agent.seen_by_customer') });
    this.typingLine = new TypingIndicator('conv-typing', 'agent');
    this.loading = h('p', { class: 'muted small center', testid: 'conv-loading' }, t('agent.loading'));
    this.scroller = h('div', { class: 'conv-scroll', testid: 'conv-scroll' }, this.loading, this.list.el, this.typingLine.el);
    // Follow the conversation while the view is at its end (judged before new content comes).
    this.stick = true;
    this.scroller.addEventListener('scroll', () => (this.stick = this.#nearEnd()), { passive: true });
    this.noticeEl = h('div', { class: 'conv-notice', testid: 'conv-notice', role: 'alert', hidden: true });

    this.internal = h('input', { type: 'checkbox', id: 'conv-internal', testid: 'conv-internal' });
    this.internal.addEventListener('change', () => this.#paintNoteMode());
    const noteToggle = h('label', { class: 'note-toggle', for: 'conv-internal' }, this.internal, h('span', {}, t('agent.internal')));
    this.composer = new Composer({
      prefix: 'conv',
      maxChars: () => app.client.limits.max_body_chars ?? 4000,
      onSubmit: (text) => {
        const body = text.trim();
        if (!this.id || !body) return false;
        app.send(this.id, body, this.internal.checked);
        return true;
      },
      onTyping: (on) => {
        // A note is not something the customer should see being typed.
        if (this.id && (!this.internal.checked || !on)) app.client.typing(this.id, on);
      },
      extra: noteToggle,
    });

    this.closedNote = h('p', { class: 'conv-closed-note', testid: 'conv-closed-note', role: 'status', hidden: true }, t('agent.closed_note'));
    this.el = h('section', { class: 'conv', testid: 'conv-view', hidden: true }, head, this.scroller, this.noticeEl, this.closedNote, this.composer.el);
    this.main.append(this.el);
  }

  #paintNoteMode() {
    const note = this.internal.checked;
    this.composer.el.classList.toggle('composer--note', note);
    this.composer.input.placeholder = this.closed ? t('agent.closed_placeholder') : note ? t('agent.note_placeholder') : t('chat.input_placeholder');
  }

  async #act(fn, btn) {
    btn.disabled = true;
    this.noticeEl.hidden = true;
    try {
      await fn();
    } catch (err) {
      this.notice(t('chat.error', { reason: errorText(err.code) }));
    } finally {
      btn.disabled = false;
      this.#paintHeader();
    }
  }

  open(id) {
    const app = this.app;
    const changed = this.id !== id;
    this.id = id;
    this.el.hidden = false;
    this.placeholder.hidden = true;
    this.el.dataset.conversation = id;
    if (changed) {
      this.list.clear();
      this.typingLine.clear();
      this.noticeEl.hidden = true;
      this.internal.checked = false;
      this.#paintNoteMode();
      const log = app.client.log(id);
      for (const m of log.messages()) this.list.upsert(m);
      for (const e of app.client.outbox.list(id)) this.list.addPending(e);
      this.list.setPeerRead(app.peerRead.get(id) || 0);
      this.loading.hidden = app.initialSynced.has(id);
      this.#scroll(true);
    }
    this.refreshTargets();
    this.#paintHeader();
    if (window.matchMedia('(min-width: 721px)').matches) this.composer.focus();
  }

  close() {
    this.id = null;
    this.el.hidden = true;
    this.placeholder.hidden = false;
  }

  /** Take the view off the page (the console is signed out). */
  destroy() {
    this.close();
    clearTimeout(this.noticeTimer);
    this.typingLine.clear();
    this.el.remove();
  }

  /** The text typed and not sent, or null. */
  draft() {
    const text = this.composer.input.value;
    return text.trim() ? { text, internal: this.internal.checked } : null;
  }

  setDraft(text, internal) {
    this.internal.checked = internal;
    this.#paintNoteMode();
    this.composer.input.value = text;
    this.composer.refresh();
  }

  refresh() {
    if (this.id) this.#paintHeader();
  }

  update(conv) {
    if (!conv || conv.id !== this.id) return;
    if (conv.status === 'closed') this.typingLine.clear();
    this.#paintHeader();
  }

  synced() {
    this.loading.hidden = true;
  }

  messages(msgs) {
    for (const m of msgs) {
      this.list.upsert(m);
      if (m.kind === 'text' && m.from?.role === 'customer') this.typingLine.set(m.from, false);
    }
    if (msgs.some((m) => m.kind === 'event')) this.#paintHeader();
    this.#scroll();
  }

  upsert(m) {
    this.list.upsert(m);
    if (!this.noticeEl.hidden && this.noticeSticky) this.noticeEl.hidden = true;
    this.#scroll(true);
  }

  pending(e) {
    this.list.addPending(e);
    this.#scroll(true);
  }

  failed(entry, error) {
    this.list.markFailed(entry.client_id, error.code);
    if (entry.conversation === this.id) this.notice(t('chat.error', { reason: errorText(error.code) }));
  }

  typing(from, on) {
    this.typingLine.set(from, on);
    if (on) this.#scroll();
  }

  peerRead(seq) {
    this.list.setPeerRead(seq);
  }

  notice(text, sticky = false) {
    clearTimeout(this.noticeTimer);
    setText(this.noticeEl, text);
    this.noticeEl.hidden = false;
    this.noticeSticky = sticky;
    if (!sticky) this.noticeTimer = setTimeout(() => (this.noticeEl.hidden = true), 6000);
  }

  /** Fill the transfer select with online agents and the server's rooms (manual ones marked). */
  refreshTargets() {
    const { agents, rooms } = this.app.transferTargets();
    const prev = this.transferSelect.value;
    const opts = [h('option', { value: '' }, `${t('agent.transfer_to')}…`)];
    for (const a of agents) opts.push(h('option', { value: `agent:${a.id}` }, t('agent.transfer_agent', { name: a.name })));
    for (const r of rooms) {
      opts.push(h('option', { value: `room:${r.name}` }, r.manual ? t('agent.transfer_room_manual', { room: r.name }) : t('agent.transfer_room', { room: r.name })));
    }
    this.transferSelect.replaceChildren(...opts);
    if ([...this.transferSelect.options].some((o) => o.value === prev)) this.transferSelect.value = prev;
  }

  #paintHeader() {
    const app = this.app;
    const conv = app.convs.get(this.id) || app.client.log(this.id).conv;
    if (!conv) {
      this.titleName = undefined;
      setText(this.title, '…');
      setText(this.status, '');
      this.acceptBtn.hidden = this.transferBox.hidden = this.closeBtn.hidden = true;
      this.contact.hidden = this.ratingEl.hidden = this.closedNote.hidden = true;
      return;
    }
    const mineActive = conv.status === 'active' && conv.agent?.id === app.me?.id;
    const name = conv.customer?.name;
    if (this.titleName !== (name || '')) {
      this.titleName = name || '';
      if (name) setChildren(this.title, h('span', { class: 'conv-title-name' }, name), ' ', customerTag());
      else setText(this.title, t('agent.customer'));
    }
    const who = conv.agent ? t('agent.assigned_to', { name: conv.agent.name }) : t('agent.unassigned');
    setText(this.status, `${t(`agent.status.${conv.status}`)} · #${conv.room} · ${who}`);
    this.el.dataset.status = conv.status;
    this.acceptBtn.hidden = conv.status !== 'queued';
    this.transferBox.hidden = !mineActive;
    this.closeBtn.hidden = !mineActive;

    // The address the customer left for a reply by mail.
    const email = typeof conv.contact_email === 'string' ? conv.contact_email : '';
    this.contact.hidden = !email;
    if (email) {
      setText(this.contactLink, email);
      // Only characters that would start a query or fragment are escaped; the server checked the rest.
      this.contactLink.setAttribute('href', `mailto:${email.replace(/[?#&%]/g, encodeURIComponent)}`);
    }

    // The customer's rating, with the comment.
    const rating = app.ratings.get(this.id);
    this.ratingEl.hidden = !rating;
    if (rating) {
      const stars = '★'.repeat(rating.score) + '☆'.repeat(Math.max(0, 5 - rating.score));
      const parts = [h('span', { class: 'stars', aria: { hidden: 'true' } }, stars), t('agent.rating', { score: rating.score })];
      if (rating.comment) parts.push(` · ${t('agent.rating_comment', { comment: rating.comment })}`);
      setChildren(this.ratingEl, ...parts);
    }

    // A closed chat's message box says why it cannot be used.
    const closed = conv.status === 'closed';
    if (this.closed !== closed) {
      this.closed = closed;
      this.#paintNoteMode();
    }
    this.closedNote.hidden = !closed;
    this.internal.disabled = closed;
    this.composer.setDisabled(closed);
  }

  #nearEnd() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 160;
  }

  #scroll(force = false) {
    if (force) this.stick = true;
    if (!this.stick) return;
    const s = this.scroller;
    requestAnimationFrame(() => (s.scrollTop = s.scrollHeight));
  }
}
