// The widget's DOM: the bubble and the panel inside a shadow root (so host-page
// CSS does not reach in), built once; render() paints it from the widget's state.
// No server logic here: user actions go to the handlers given by widget-app.js.

import { h, setText } from './dom.js';
import { t, locale, errorText } from './i18n.js';
import { initial } from './text.js';
import { MessageList, TypingIndicator } from './message-list.js';
import { Composer } from './composer.js';
import { RatingForm } from './widget-rating.js';
import { chatIcon, closeIcon } from './icons.js';

export class WidgetView {
  /**
   * base: URL of the widget's folder (for the stylesheets). handlers: onToggle(open),
   * onStart(name), onEnd(), onNewChat(), onReconnect(), onSend(text) -> bool,
   * onTyping(on), onRate(score, comment) -> Promise, onContact(email) -> Promise,
   * maxChars() -> number, me() -> user id.
   */
  constructor(base, handlers) {
    this.handlers = handlers;
    this.isOpen = false;
    this.noticeTimer = null;
    this.host = document.createElement('parley-widget');
    this.host.style.visibility = 'hidden'; // until the stylesheets have loaded
    const root = this.host.attachShadow({ mode: 'open' });
    let waiting = 2;
    const loaded = () => {
      if (--waiting === 0) this.host.style.visibility = '';
    };
    const css = ['chat.css', 'widget.css'].map((f) => {
      const link = h('link', { rel: 'stylesheet', href: new URL(f, base).href });
      link.addEventListener('load', loaded);
      link.addEventListener('error', loaded);
      return link;
    });
    this.panel = this.#panel();
    this.bubble = this.#bubble();
    root.append(...css, h('div', { class: 'pw', lang: locale() }, this.panel, this.bubble));
    document.body.append(this.host);
  }

  #bubble() {
    this.badge = h('span', { class: 'pw-badge', testid: 'widget-unread', hidden: true });
    const b = h(
      'button',
      { class: 'pw-bubble', type: 'button', testid: 'widget-bubble', aria: { expanded: 'false', controls: 'pw-panel', label: t('widget.bubble') } },
      chatIcon('pw-bubble__icon'),
      closeIcon('pw-bubble__close'),
      this.badge,
    );
    b.addEventListener('click', () => this.handlers.onToggle(!this.isOpen));
    return b;
  }

  #panel() {
    const H = this.handlers;
    this.avatar = h('div', { class: 'pw-avatar', aria: { hidden: 'true' } }, 'P');
    this.status = h('p', { class: 'pw-status', testid: 'widget-status', role: 'status' }, t('widget.subtitle'));
    const minBtn = h('button', { class: 'pw-iconbtn', type: 'button', testid: 'widget-minimize', aria: { label: t('widget.bubble_close') } }, closeIcon('pw-iconbtn__icon'));
    minBtn.addEventListener('click', () => H.onToggle(false));
    // Plain divs, not header/footer: inside the shadow root those would add banner and
    // contentinfo landmarks to the host page.
    const header = h(
      'div',
      { class: 'pw-header' },
      this.avatar,
      h('div', { class: 'pw-header__text' }, h('h2', { class: 'pw-title', id: 'pw-title' }, t('widget.title')), this.status),
      minBtn,
    );

    // Connection banner.
    this.connText = h('span');
    this.reconnectBtn = h('button', { type: 'button', class: 'pw-link', hidden: true }, t('chat.reconnect'));
    this.reconnectBtn.addEventListener('click', () => H.onReconnect());
    this.conn = h('div', { class: 'pw-conn', testid: 'widget-conn', role: 'status', hidden: true }, this.connText, ' ', this.reconnectBtn);

    // "End this chat?" confirmation.
    const yes = h('button', { type: 'button', class: 'pw-btn pw-btn--danger', testid: 'widget-close-confirm' }, t('widget.end_yes'));
    const no = h('button', { type: 'button', class: 'pw-btn pw-btn--ghost', testid: 'widget-close-cancel' }, t('widget.end_no'));
    yes.addEventListener('click', () => {
      this.confirm.hidden = true;
      H.onEnd();
    });
    no.addEventListener('click', () => {
      this.confirm.hidden = true;
      this.endBtn.hidden = false;
      this.endBtn.focus();
    });
    this.confirm = h('div', { class: 'pw-confirm', testid: 'widget-end-confirm', hidden: true }, h('span', {}, t('widget.end_confirm')), h('div', { class: 'pw-confirm__btns' }, no, yes));
    this.endBtn = h('button', { class: 'pw-end', type: 'button', testid: 'widget-close', hidden: true }, t('widget.end'));
    this.endBtn.addEventListener('click', () => {
      this.confirm.hidden = false;
      this.endBtn.hidden = true;
      no.focus();
    });

    // Intro: optional name, then start.
    this.nameInput = h('input', { id: 'pw-name', class: 'pw-input', testid: 'widget-name-input', type: 'text', autocomplete: 'name', placeholder: t('widget.name_placeholder') });
    this.introText = h('p', { class: 'pw-intro__text', testid: 'widget-intro-text' }, t('widget.intro'));
    this.startBtn = h('button', { type: 'submit', class: 'pw-btn pw-btn--primary pw-btn--wide', testid: 'widget-start' }, t('widget.start'));
    this.introError = h('p', { class: 'pw-error', role: 'alert', testid: 'widget-intro-error', hidden: true });
    this.intro = h(
      'form',
      { class: 'pw-intro', testid: 'widget-intro', novalidate: true },
      this.introText,
      h('label', { class: 'pw-label', for: 'pw-name' }, t('widget.name_label')),
      this.nameInput,
      this.introError,
      this.startBtn,
    );
    this.intro.addEventListener('submit', (ev) => {
      ev.preventDefault();
      H.onStart(this.nameInput.value);
    });
    this.loading = h('div', { class: 'pw-loading', testid: 'widget-loading' }, h('span', { class: 'pw-spinner', aria: { hidden: 'true' } }), t('chat.connecting'));

    // The conversation, and what follows its end.
    this.list = new MessageList({ testid: 'widget-messages', perspective: 'customer', me: H.me });
    this.typing = new TypingIndicator('widget-typing');
    this.rating = new RatingForm({ onSubmit: H.onRate });
    const newChat = h('button', { type: 'button', class: 'pw-btn pw-btn--ghost pw-btn--wide', testid: 'widget-new-chat' }, t('widget.new_chat'));
    newChat.addEventListener('click', () => {
      H.onNewChat();
      this.nameInput.focus();
    });
    this.unserved = h('p', { class: 'pw-unserved', testid: 'widget-unserved', hidden: true });
    this.closedBox = h('div', { class: 'pw-closed', testid: 'widget-closed', hidden: true }, this.unserved, this.rating.el, newChat);
    this.contact = this.#contactCard();
    this.chat = h('div', { class: 'pw-chat' }, this.list.el, this.typing.el, this.contact, this.closedBox);
    this.scroller = h('div', { class: 'pw-scroll', testid: 'widget-scroll' }, this.loading, this.intro, this.chat);
    // Follow the conversation while the view is at its end; a reader who scrolled up stays put.
    this.stick = true;
    this.scroller.addEventListener('scroll', () => (this.stick = this.#nearEnd()), { passive: true });

    this.notice = h('div', { class: 'pw-notice', testid: 'widget-notice', role: 'alert', hidden: true });
    this.composer = new Composer({ prefix: 'widget', maxChars: H.maxChars, onSubmit: H.onSend, onTyping: H.onTyping });

    const panel = h(
      'section',
      { class: 'pw-panel', id: 'pw-panel', testid: 'widget-panel', role: 'dialog', aria: { labelledby: 'pw-title' }, hidden: true },
      header,
      this.conn,
      this.scroller,
      this.notice,
      this.composer.el,
      this.confirm,
      h('div', { class: 'pw-footer' }, this.endBtn, h('span', { class: 'pw-powered' }, t('widget.powered'))),
    );
    panel.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        H.onToggle(false);
        this.bubble.focus();
      }
    });
    return panel;
  }

  /**
   * Nobody online: the customer's message waits in the queue, and an email address may be
   * left with it (optional) for a reply by mail.
   */
  #contactCard() {
    const id = 'pw-email';
    this.emailInput = h('input', { id, class: 'pw-input', testid: 'widget-email-input', type: 'email', autocomplete: 'email', inputmode: 'email', placeholder: t('widget.email_placeholder') });
    this.emailBtn = h('button', { type: 'submit', class: 'pw-btn pw-btn--ghost', testid: 'widget-email-save' }, t('widget.email_save'));
    this.emailError = h('p', { class: 'pw-error', role: 'alert', testid: 'widget-email-error', hidden: true });
    this.emailSaved = h('p', { class: 'pw-contact__saved', role: 'status', testid: 'widget-email-saved' });
    const form = h(
      'form',
      { class: 'pw-contact__form', novalidate: true },
      h('label', { class: 'pw-label', for: id }, t('widget.email_label')),
      h('div', { class: 'pw-contact__row' }, this.emailInput, this.emailBtn),
      this.emailError,
    );
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const email = this.emailInput.value.trim();
      this.emailError.hidden = true;
      if (!email) {
        this.#emailFailed(t('widget.email_invalid'));
        return;
      }
      this.emailBtn.disabled = true;
      try {
        await this.handlers.onContact(email);
        this.emailInput.removeAttribute('aria-invalid');
      } catch (err) {
        this.#emailFailed(err.code === 'bad_request' ? t('widget.email_invalid') : t('chat.error', { reason: errorText(err.code) }));
      } finally {
        this.emailBtn.disabled = false;
      }
    });
    return h(
      'div',
      { class: 'pw-contact', testid: 'widget-contact', hidden: true },
      h('p', { class: 'pw-contact__text' }, t('widget.away_text')),
      form,
      this.emailSaved,
    );
  }

  #emailFailed(text) {
    setText(this.emailError, text);
    this.emailError.hidden = false;
    this.emailInput.setAttribute('aria-invalid', 'true');
    this.emailInput.focus();
  }

  setOpen(open, { chatting }) {
    this.isOpen = open;
    this.panel.hidden = !open;
    this.bubble.setAttribute('aria-expanded', String(open));
    this.bubble.classList.toggle('pw-bubble--open', open);
    if (open) {
      this.scrollToEnd(true);
      queueMicrotask(() => (chatting ? this.composer.focus() : this.nameInput.focus()));
    }
  }

  setUnread(n) {
    this.badge.hidden = n === 0;
    setText(this.badge, n > 9 ? '9+' : String(n));
  }

  #nearEnd() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
  }

  /**
   * Show the newest messages: always when forced, else only if the view was at its end
   * before the new content came (judged from the last scroll position, not from the
   * height after a whole page of history was added).
   */
  scrollToEnd(force = false) {
    if (force) this.stick = true;
    if (!this.stick) return;
    const s = this.scroller;
    requestAnimationFrame(() => (s.scrollTop = s.scrollHeight));
  }

  showNotice(text, { sticky = false } = {}) {
    clearTimeout(this.noticeTimer);
    setText(this.notice, text);
    this.notice.hidden = false;
    this.noticeShownAt = Date.now();
    if (!sticky) this.noticeTimer = setTimeout(() => (this.notice.hidden = true), 6000);
  }

  /** Hide the notice, after it has been readable for a moment. */
  hideNoticeSoon() {
    if (this.notice.hidden) return;
    clearTimeout(this.noticeTimer);
    const wait = Math.max(0, (this.noticeShownAt || 0) + 2500 - Date.now());
    this.noticeTimer = setTimeout(() => (this.notice.hidden = true), wait);
  }

  /**
   * The connection banner for a ChatClient state. blocked: the server does not accept
   * connections from this site's origin (that origin, as text), so there is no point in
   * reconnecting.
   */
  paintConn(state, everOnline, blocked = null) {
    const text = blocked
      ? t('widget.blocked', { origin: blocked })
      : state === 'offline' || (state === 'connecting' && everOnline)
        ? t('chat.offline')
        : (state === 'stopped' && everOnline) || state === 'unauthorized'
          ? t('chat.stopped')
          : '';
    setText(this.connText, text);
    this.conn.hidden = !text;
    this.conn.dataset.state = blocked ? 'blocked' : state || 'idle';
    this.reconnectBtn.hidden = !!blocked || (state !== 'stopped' && state !== 'unauthorized');
    if (blocked) this.startBtn.disabled = true;
  }

  introFailed(text) {
    setText(this.introError, text || '');
    this.introError.hidden = !text;
  }

  /**
   * conv: the Conversation shown (or null); loading: waiting for the server to say which;
   * away: the server said nobody is online to answer in the conversation's room; served:
   * an agent joined the conversation at some point (only then is there something to rate);
   * email: the address the customer left for a reply by mail; blocked: see paintConn.
   */
  render(conv, { loading, away = false, served = true, email = null, blocked = null }) {
    const closed = conv?.status === 'closed';
    const waiting = !conv || conv.status === 'queued';
    this.loading.hidden = !loading;
    this.intro.hidden = !!conv || loading;
    this.chat.hidden = !conv;
    this.closedBox.hidden = !closed;
    this.rating.el.hidden = !served;
    this.unserved.hidden = !closed || served;
    if (closed && !served) setText(this.unserved, email ? `${t('widget.closed_unserved')} ${t('widget.closed_email', { email })}` : t('widget.closed_unserved'));
    this.contact.hidden = !(conv?.status === 'queued' && away);
    if (!this.contact.hidden) {
      setText(this.emailSaved, email ? t('widget.email_saved', { email }) : '');
      this.emailSaved.hidden = !email;
      if (email && !this.emailInput.value) this.emailInput.value = email;
    }
    setText(this.introText, away ? t('widget.intro_away') : t('widget.intro'));
    this.composer.el.hidden = !conv || closed;
    if (!conv || closed) this.confirm.hidden = true;
    this.endBtn.hidden = !conv || closed || !this.confirm.hidden;

    let status = t('widget.subtitle');
    let avatar = 'P';
    if (blocked) {
      status = t('widget.unavailable');
    } else if (away && waiting) {
      status = t('widget.away');
    } else if (conv?.status === 'queued') {
      const n = conv.queue_position;
      status = typeof n === 'number' ? (n <= 1 ? t('widget.queued_next') : t('widget.queued', { n })) : t('widget.queued_wait');
    } else if (conv?.status === 'active') {
      const name = conv.agent?.name || t('chat.someone');
      status = t('widget.with_agent', { name });
      avatar = initial(name);
    } else if (closed) {
      status = t('widget.closed');
    }
    setText(this.status, status);
    setText(this.avatar, avatar);
    this.avatar.classList.toggle('pw-avatar--agent', conv?.status === 'active');
    this.panel.dataset.status = conv?.status || 'none';
    this.panel.dataset.away = String(!!away && waiting);
  }
}
