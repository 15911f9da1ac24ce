// The widget's "rate this chat" form: 1 to 5 stars (a radio group, so it works
// with the keyboard and screen readers) and an optional comment.

import { h, setText } from './dom.js';
import { t, errorText } from './i18n.js';
import { charCount } from './text.js';

const MAX_COMMENT = 1000;

export class RatingForm {
  /** onSubmit(score, comment) -> Promise; rejects with an error that has .code. */
  constructor({ onSubmit }) {
    this.onSubmit = onSubmit;
    const name = `pw-rate-${Math.random().toString(36).slice(2, 8)}`;
    this.stars = [1, 2, 3, 4, 5].map((n) => {
      const input = h('input', { type: 'radio', name, value: String(n), class: 'pw-star__input', testid: `widget-star-${n}`, id: `${name}-${n}` });
      input.addEventListener('change', () => this.#paint());
      const label = h('label', { class: 'pw-star', for: `${name}-${n}`, testid: `widget-star-label-${n}`, title: t('widget.rate_star', { n }) }, h('span', { class: 'visually-hidden' }, t('widget.rate_star', { n })), h('span', { class: 'pw-star__glyph', aria: { hidden: 'true' } }, '★'));
      return { input, label };
    });
    const commentId = `${name}-comment`;
    this.comment = h('textarea', { id: commentId, class: 'pw-rate__comment', testid: 'widget-rating-comment', rows: 2 });
    this.error = h('p', { class: 'pw-rate__error', testid: 'widget-rating-error', role: 'alert', hidden: true });
    this.submitBtn = h('button', { type: 'submit', class: 'pw-btn pw-btn--primary', testid: 'widget-rating-submit', disabled: true }, t('widget.rate_submit'));
    this.form = h(
      'form',
      { class: 'pw-rate', testid: 'widget-rating', novalidate: true },
      h(
        'fieldset',
        { class: 'pw-rate__stars' },
        h('legend', { class: 'pw-rate__title' }, t('widget.rate_title')),
        h('div', { class: 'pw-rate__row' }, this.stars.map((s) => [s.input, s.label])),
      ),
      h('label', { class: 'pw-label', for: commentId }, t('widget.rate_comment')),
      this.comment,
      this.error,
      this.submitBtn,
    );
    this.thanks = h('p', { class: 'pw-rate__thanks', testid: 'widget-rating-thanks', role: 'status', hidden: true }, t('widget.rate_thanks'));
    this.el = h('div', { class: 'pw-rate-wrap' }, this.form, this.thanks);
    this.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.#submit();
    });
  }

  #score() {
    const s = this.stars.find((x) => x.input.checked);
    return s ? Number(s.input.value) : 0;
  }

  #paint() {
    const score = this.#score();
    this.stars.forEach((s, i) => s.label.classList.toggle('pw-star--on', i < score));
    this.submitBtn.disabled = score === 0;
  }

  async #submit() {
    const score = this.#score();
    if (!score) return;
    let comment = this.comment.value.trim();
    if (charCount(comment) > MAX_COMMENT) comment = [...comment].slice(0, MAX_COMMENT).join('');
    this.submitBtn.disabled = true;
    this.error.hidden = true;
    try {
      await this.onSubmit(score, comment);
      this.setDone(true);
    } catch (err) {
      setText(this.error, t('chat.error', { reason: errorText(err.code) }));
      this.error.hidden = false;
      this.submitBtn.disabled = false;
    }
  }

  /** Show the form (false) or the thank-you line (true). */
  setDone(done) {
    this.form.hidden = done;
    this.thanks.hidden = !done;
  }

  reset() {
    for (const s of this.stars) s.input.checked = false;
    this.comment.value = '';
    this.error.hidden = true;
    this.#paint();
    this.setDone(false);
  }
}
