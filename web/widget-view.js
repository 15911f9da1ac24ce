// The widget's DOM: the bubble and the panel inside a shadow root (so host-page
// CSS does not reach in), built once; render() paints it from the widget's state.
// No server logic here: user actions go to the handlers given by widget-app.js.

import { h, setText } from './dom.js';
import { t, locale } from './i18n.js';
import { initial } from './text.js';
import { MessageList, TypingIndicator } from './message-list.js';
import { Composer } from './composer.js';
import { RatingForm } from './widget-rating.js';
import { chatIcon, closeIcon } from './icons.js';

export class WidgetView {
  /**
   * base: URL of the widget's folder (for the stylesheets). handlers: onToggle(open),
   * onStart(name), onEnd(), onNewChat(), onReconnect(), onSend(text) -> bool,
   * onTyping(on), onRate(score, comment) -> Promise, maxChars() -> number, me() -> user id.
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
    const header = h(
      'header',
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
    this.startBtn = h('button', { type: 'submit', class: 'pw-btn pw-btn--primary pw-btn--wide', testid: 'widget-start' }, t('widget.start'));
    this.introError = h('p', { class: 'pw-error', role: 'alert', testid: 'widget-intro-error', hidden: true });
    this.intro = h(
      'form',
      { class: 'pw-intro', testid: 'widget-intro', novalidate: true },
      h('p', { class: 'pw-intro__text' }, t('widget.intro')),
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
    this.closedBox = h('div', { class: 'pw-closed', testid: 'widget-closed', hidden: true }, this.rating.el, newChat);
    this.chat = h('div', { class: 'pw-chat' }, this.list.el, this.typing.el, this.closedBox);
    this.scroller = h('div', { class: 'pw-scroll', testid: 'widget-scroll' }, this.loading, this.intro, this.chat);

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
      h('footer', { class: 'pw-footer' }, this.endBtn, h('span', { class: 'pw-powered' }, t('widget.powered'))),
    );
    panel.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        H.onToggle(false);
        this.bubble.focus();
      }
    });
    return panel;
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

  scrollToEnd(force = false) {
    const s = this.scroller;
    const nearEnd = s.scrollHeight - s.scrollTop - s.clientHeight < 120;
    if (force || nearEnd) requestAnimationFrame(() => (s.scrollTop = s.scrollHeight));
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

  /** The connection banner for a ChatClient state. */
  paintConn(state, everOnline) {
    const text =
      state === 'offline' || (state === 'connecting' && everOnline)
        ? t('chat.offline')
        : (state === 'stopped' && everOnline) || state === 'unauthorized'
          ? t('chat.stopped')
          : '';
    setText(this.connText, text);
    this.conn.hidden = !text;
    this.conn.dataset.state = state || 'idle';
    this.reconnectBtn.hidden = state !== 'stopped' && state !== 'unauthorized';
  }

  introFailed(text) {
    setText(this.introError, text || '');
    this.introError.hidden = !text;
  }

  /** conv: the Conversation shown (or null); loading: waiting for the server to say which. */
  render(conv, { loading }) {
    const closed = conv?.status === 'closed';
    this.loading.hidden = !loading;
    this.intro.hidden = !!conv || loading;
    this.chat.hidden = !conv;
    this.closedBox.hidden = !closed;
    this.composer.el.hidden = !conv || closed;
    if (!conv || closed) this.confirm.hidden = true;
    this.endBtn.hidden = !conv || closed || !this.confirm.hidden;

    let status = t('widget.subtitle');
    let avatar = 'P';
    if (conv?.status === 'queued') {
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
  }
}
