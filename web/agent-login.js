// The console's sign-in form: POST /api/login {name, password} -> {token, agent}.

import { setText } from './dom.js';
import { t } from './i18n.js';
import { unlockAudio } from './notify.js';

export async function login(name, password) {
  let res;
  try {
    res = await fetch('/api/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name, password }),
    });
  } catch (err) {
    return { error: t('agent.login_error', { reason: String(err.message || err) }) };
  }
  if (res.status === 401) return { error: t('agent.login_failed') };
  let body = null;
  try {
    body = await res.json();
  } catch {}
  if (!res.ok || !body?.token) {
    return { error: t('agent.login_error', { reason: body?.message || `HTTP ${res.status}` }) };
  }
  return { token: body.token, agent: body.agent };
}

export class LoginView {
  /** onLogin({token, agent}) is called after a successful sign-in. */
  constructor({ onLogin }) {
    this.root = document.getElementById('login');
    this.form = document.getElementById('login-form');
    this.name = document.getElementById('login-name');
    this.password = document.getElementById('login-password');
    this.error = document.getElementById('login-error');
    this.button = this.form.querySelector('button[type=submit]');
    this.form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      unlockAudio();
      const name = this.name.value.trim();
      const password = this.password.value;
      if (!name || !password) {
        this.showError(t('agent.login_failed'));
        return;
      }
      this.button.disabled = true;
      this.error.hidden = true;
      const r = await login(name, password);
      this.button.disabled = false;
      if (r.error) {
        this.showError(r.error);
        return;
      }
      this.password.value = '';
      onLogin(r);
    });
  }

  /** message: why the agent is here (shown as the form's alert); name: prefill (after the server ended a session). */
  show(message = '', { name = '' } = {}) {
    this.root.hidden = false;
    if (name) this.name.value = name;
    if (message) this.showError(message);
    else this.error.hidden = true;
    (this.name.value ? this.password : this.name).focus();
  }

  hide() {
    this.root.hidden = true;
    this.error.hidden = true;
  }

  showError(text) {
    setText(this.error, text);
    this.error.hidden = false;
  }
}
