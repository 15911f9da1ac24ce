// The message box shared by the widget and the console: Enter sends, Shift+Enter
// adds a line (and Enter while an IME is composing does neither), a counter near
// the body limit in Unicode scalar values, and typing on/off signals.

import { h, setText } from './dom.js';
import { t } from './i18n.js';
import { charCount, isBlank } from './text.js';

const TYPING_REFRESH_MS = 3000;
const TYPING_IDLE_MS = 4000;

export class Composer {
  /**
   * prefix: data-testid prefix ("widget" -> widget-input, widget-send, widget-counter).
   * maxChars(): the current limit. onSubmit(text) -> true if accepted (the box is then cleared).
   * onTyping(on): typing signal.
   */
  constructor({ prefix, maxChars, onSubmit, onTyping = () => {}, placeholder, label, extra = null }) {
    this.maxChars = maxChars;
    this.onSubmit = onSubmit;
    this.onTyping = onTyping;
    this.typingOn = false;
    this.typingSentAt = 0;
    this.idleTimer = null;
    const id = `${prefix}-input-${Math.random().toString(36).slice(2, 8)}`;
    this.label = h('label', { class: 'visually-hidden', for: id }, label || t('chat.input_label'));
    this.input = h('textarea', {
      id,
      class: 'composer__input',
      testid: `${prefix}-input`,
      rows: 1,
      placeholder: placeholder || t('chat.input_placeholder'),
      autocomplete: 'off',
      enterkeyhint: 'send',
    });
    this.counter = h('div', { class: 'composer__counter', testid: `${prefix}-counter`, aria: { live: 'polite' }, hidden: true });
    this.button = h('button', { class: 'composer__send', type: 'submit', testid: `${prefix}-send`, disabled: true }, t('chat.send'));
    this.el = h(
      'form',
      { class: 'composer', testid: `${prefix}-composer`, novalidate: true },
      this.label,
      extra,
      h('div', { class: 'composer__row' }, this.input, this.button),
      this.counter,
    );
    this.el.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.submit();
    });
    this.input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
        ev.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener('input', () => {
      this.refresh();
      this.#typed();
    });
    this.input.addEventListener('blur', () => this.#stopTyping());
  }

  #typed() {
    const now = Date.now();
    if (isBlank(this.input.value)) {
      this.#stopTyping();
      return;
    }
    if (!this.typingOn || now - this.typingSentAt > TYPING_REFRESH_MS) {
      this.typingOn = true;
      this.typingSentAt = now;
      this.onTyping(true);
    }
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.#stopTyping(), TYPING_IDLE_MS);
  }

  #stopTyping() {
    clearTimeout(this.idleTimer);
    if (this.typingOn) {
      this.typingOn = false;
      this.onTyping(false);
    }
  }

  /** Update the counter, the send button and the box height. */
  refresh() {
    const n = charCount(this.input.value);
    const max = this.maxChars();
    const over = n > max;
    const near = n >= Math.floor(max * 0.8);
    this.counter.hidden = !near;
    this.counter.classList.toggle('composer__counter--over', over);
    setText(this.counter, over ? t('chat.too_long', { n, max }) : t('chat.counter', { n, max }));
    this.input.setAttribute('aria-invalid', over ? 'true' : 'false');
    this.button.disabled = over || isBlank(this.input.value) || this.disabled;
    // Grow with the text up to a few lines (CSSOM, allowed by the CSP).
    this.input.style.height = 'auto';
    this.input.style.height = `${Math.min(this.input.scrollHeight, 140)}px`;
  }

  submit() {
    const text = this.input.value;
    if (this.disabled || isBlank(text) || charCount(text) > this.maxChars()) return;
    if (this.onSubmit(text) !== false) {
      this.input.value = '';
      this.#stopTyping();
      this.refresh();
    }
  }

  setDisabled(d) {
    this.disabled = !!d;
    this.input.disabled = !!d;
    this.refresh();
  }

  focus() {
    this.input.focus();
  }
}
