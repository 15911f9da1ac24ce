// The customer chat widget's logic: one conversation per room, from the intro
// (optional name) to queue position, the agent, messages with pending/sent/seen,
// typing, end of chat and rating. When nobody is online in the room (the server says
// so in welcome.rooms and room_status) the customer is told, and may leave a message
// and an email address. A site whose origin the server does not accept is told so
// instead of reconnecting forever. The DOM is widget-view.js; the connection,
// resume and outbox are client.js. What must survive a reload (resume token,
// current conversation, panel open, the agent's read position, unsent messages)
// is kept in localStorage, keyed by the Parley server's origin.

import { ChatClient, wsUrlFor } from './client.js';
import { t, setLang, errorText } from './i18n.js';
import { charCount } from './text.js';
import { Store } from './storage.js';
import { WidgetView } from './widget-view.js';

const BASE = new URL('.', import.meta.url);
const MAX_NAME = 64;

export function mount(opts = {}) {
  if (document.querySelector('parley-widget')) return null;
  return new Widget(opts);
}

const newest = (list) => list.slice().sort((a, b) => (b.created_at || 0) - (a.created_at || 0))[0] || null;

class Widget {
  constructor({ room = 'support', lang } = {}) {
    setLang(lang);
    this.room = room;
    this.store = new Store('localStorage', `parley:${BASE.origin}:`);
    this.conv = null;
    this.client = null;
    this.pendingStart = false;
    this.everOnline = false;
    this.blocked = null; // this page's origin, when the server refuses WebSockets from it
    this.embedChecking = false;
    this.roomOnline = new Map(); // room -> whether someone is online to answer there (server's word)
    this.unread = 0;
    this.peerRead = this.store.get('read', {}) || {};
    this.v = new WidgetView(BASE, {
      onToggle: (open) => this.#setOpen(open),
      onStart: (name) => this.#start(name),
      onEnd: () => this.#endChat(),
      onNewChat: () => this.#newChat(),
      onReconnect: () => this.client?.start(),
      onSend: (text) => this.#send(text),
      onTyping: (on) => {
        if (this.conv && this.conv.status !== 'closed' && this.client) this.client.typing(this.conv.id, on);
      },
      onRate: (score, comment) => this.#rate(score, comment),
      onContact: (email) => this.#contact(email),
      maxChars: () => this.client?.limits.max_body_chars ?? 4000,
      me: () => this.client?.user?.id,
    });
    this.v.nameInput.value = this.store.get('name', '') || '';
    const token = this.store.get('token');
    if (token) {
      this.#ensureClient(token);
      // Show the last known conversation at once (with any unsent messages), even offline.
      const saved = this.store.get(`conv:${room}`);
      if (saved?.id) this.#setConversation(saved);
    }
    this.#setOpen(!!this.store.get(`open:${room}`, false));
    document.addEventListener('visibilitychange', () => this.#maybeRead());
    this.#render();
  }

  #setOpen(open) {
    this.v.setOpen(open, { chatting: !!this.conv && this.conv.status !== 'closed' });
    this.store.set(`open:${this.room}`, open || null);
    // Connect when the panel opens, so that it can say at once whether anybody is online.
    if (open && !this.client) this.#ensureClient(null);
    if (open) {
      this.unread = 0;
      this.v.setUnread(0);
      this.#maybeRead();
    }
  }

  // ---- connection -----------------------------------------------------------------

  #ensureClient(token = null) {
    if (this.client) return this.client;
    const c = new ChatClient({
      url: wsUrlFor(BASE.origin),
      role: 'customer',
      token,
      name: this.store.get('name', '') || '',
      storage: this.store.backend,
      outboxKey: this.store.key('outbox'),
    });
    this.client = c;
    const v = this.v;
    // A customer who only opened the panel is not worth remembering across pages yet.
    c.on('token', (tok) => {
      if (this.conv || this.pendingStart || this.store.get('token')) this.store.set('token', tok);
    });
    c.on('welcome', (w) => this.#onWelcome(w));
    c.on('state', (s) => {
      if (s === 'online') this.everOnline = true;
      v.paintConn(s, this.everOnline, this.blocked);
      this.#render();
    });
    // A refused WebSocket upgrade (HTTP 403) surfaces as close 1006, like an outage.
    c.on('close', (ev) => {
      if (!this.everOnline && ev?.code === 1006) this.#checkEmbed();
    });
    c.on('room_status', (ev) => {
      if (typeof ev.room !== 'string') return;
      this.roomOnline.set(ev.room, !!ev.online);
      this.#render();
    });
    c.on('unauthorized', (ev) => this.#onUnauthorized(ev?.reason));
    c.on('conversation', (conv) => this.#onConversation(conv));
    c.on('messages', (ev) => this.#onMessages(ev));
    c.on('queued', (e) => {
      if (e.conversation !== this.conv?.id) return;
      v.list.addPending(e);
      v.scrollToEnd(true);
    });
    c.on('acked', ({ message }) => {
      if (message.conversation === this.conv?.id) v.list.upsert(message);
      v.hideNoticeSoon();
    });
    c.on('rate_limited', () => v.showNotice(t('chat.rate_limited'), { sticky: true }));
    c.on('send_failed', ({ entry, error }) => {
      v.list.markFailed(entry.client_id, error.code);
      v.showNotice(t('chat.error', { reason: errorText(error.code) }));
    });
    c.on('typing', (ev) => {
      if (ev.conversation === this.conv?.id && ev.from?.id !== c.user?.id) v.typing.set(ev.from, ev.on);
    });
    c.on('read', (ev) => {
      // Only an agent's read makes the customer's messages "seen".
      if (ev.from?.role === 'customer' || ev.from?.id === c.user?.id) return;
      if (ev.seq > (this.peerRead[ev.conversation] || 0)) {
        this.peerRead[ev.conversation] = ev.seq;
        this.store.set('read', this.peerRead);
      }
      if (ev.conversation === this.conv?.id) v.list.setPeerRead(ev.seq);
    });
    c.on('error', (ev) => {
      if (ev.code !== 'rate_limited') console.warn('parley:', ev.code, ev.message);
    });
    c.start();
    return c;
  }

  #onUnauthorized(reason) {
    if (/^name\b/i.test(reason || '')) {
      // The display name was refused (reserved for the system, or with invisible
      // characters): the token is fine, so keep the conversation, connect again without
      // the name, and ask for another one.
      this.store.remove('name');
      this.client.name = '';
      this.pendingStart = false;
      if (!this.conv) this.v.introFailed(/reserved/i.test(reason) ? t('widget.name_reserved') : t('widget.name_invalid'));
      this.client.start();
      this.#render();
      return;
    }
    // Refused without a token to blame: stay stopped (the banner offers Reconnect).
    if (!this.client.token) return;
    // The resume token was refused: start over as a new customer.
    this.store.remove('token');
    this.client.outbox.clear();
    this.client.token = null;
    this.#forgetConversation();
    this.client.start();
  }

  /**
   * The WebSocket failed before any welcome. Browsers do not tell scripts why, so ask the
   * server whether it accepts connections from this page's origin; if it does not, say so
   * and stop reconnecting (retrying cannot help). If the server cannot be reached at all,
   * it is an outage: keep reconnecting, and ask again after the next failure.
   */
  async #checkEmbed() {
    if (this.embedChecking || this.blocked) return;
    this.embedChecking = true;
    let verdict = null;
    try {
      const res = await fetch(new URL('/api/embed-check', BASE.origin).href, { cache: 'no-store', credentials: 'omit' });
      if (res.ok) verdict = await res.json();
    } catch {
      /* unreachable: an outage, not a refusal */
    } finally {
      this.embedChecking = false;
    }
    if (verdict?.allowed !== false || this.everOnline || !this.client) return;
    this.blocked = String(verdict.origin || location.origin);
    this.pendingStart = false;
    this.client.stop();
    this.v.paintConn(this.client.state, this.everOnline, this.blocked);
    this.#render();
  }

  /** Nobody is online to answer in the room of the conversation shown (or of the widget). */
  #away() {
    return this.roomOnline.get(this.conv?.room || this.room) === false;
  }

  /** An agent joined this conversation at some point: only then is there something to rate. */
  #served(conv) {
    if (conv.agent) return true;
    return this.client?.log(conv.id).messages().some((m) => m.kind === 'event' && (m.event?.name === 'assigned' || (m.event?.name === 'transferred' && m.event.to_agent))) || false;
  }

  #onWelcome(w) {
    for (const r of Array.isArray(w.rooms) ? w.rooms : []) if (r && typeof r.name === 'string') this.roomOnline.set(r.name, !!r.online);
    const all = w.conversations || [];
    const inRoom = all.filter((c) => c.room === this.room);
    const dismissed = this.store.get(`dismissed:${this.room}`, []) || [];
    // The conversation on screen is followed wherever it went (a transfer can change its room).
    let pick = this.conv ? all.find((c) => c.id === this.conv.id) || this.conv : null;
    if (!pick) pick = newest(inRoom.filter((c) => c.status !== 'closed'));
    if (!pick) pick = newest(inRoom.filter((c) => c.status === 'closed' && !dismissed.includes(c.id)));
    if (pick && !(this.pendingStart && pick.status === 'closed')) this.#setConversation(pick);
    if (this.pendingStart) {
      this.pendingStart = false;
      if (!this.conv || this.conv.status === 'closed') this.#openConversation();
    }
    this.#render();
  }

  async #openConversation() {
    this.v.startBtn.disabled = true;
    this.v.introFailed(null);
    try {
      const res = await this.client.request({ type: 'open', room: this.room });
      this.#setConversation(res.conversation);
      this.v.composer.focus();
    } catch (err) {
      if (err.code === 'disconnected') this.pendingStart = true; // retried after the next welcome
      else this.v.introFailed(t('chat.error', { reason: errorText(err.code) }));
    } finally {
      this.v.startBtn.disabled = false;
      this.#render();
    }
  }

  // ---- conversation --------------------------------------------------------------

  #setConversation(conv) {
    const changed = !this.conv || this.conv.id !== conv.id;
    this.conv = conv;
    this.store.set(`conv:${this.room}`, conv);
    if (this.client?.token) this.store.set('token', this.client.token);
    if (changed) {
      const { list, typing, rating } = this.v;
      list.clear();
      typing.clear();
      const log = this.client.log(conv.id);
      for (const m of log.messages()) list.upsert(m);
      for (const e of this.client.outbox.list(conv.id)) list.addPending(e);
      list.setPeerRead(Math.max(this.peerRead[conv.id] || 0, log.peerRead));
      rating.reset();
      if (this.#isRated(conv.id)) rating.setDone(true);
      this.client.track(conv.id);
      this.v.scrollToEnd(true);
    }
    this.#render();
  }

  #forgetConversation() {
    this.conv = null;
    this.store.remove(`conv:${this.room}`);
    this.v.list.clear();
    this.v.typing.clear();
    this.#render();
  }

  #onConversation(conv) {
    if (this.conv && conv.id === this.conv.id) {
      const wasClosed = this.conv.status === 'closed';
      // Keep an address the customer left if this copy of the conversation does not carry it.
      if (!conv.contact_email && this.conv.contact_email) conv = { ...conv, contact_email: this.conv.contact_email };
      this.conv = conv;
      this.store.set(`conv:${this.room}`, conv);
      if (conv.status === 'closed') this.v.typing.clear();
      if (!wasClosed && conv.status === 'closed') this.v.scrollToEnd(true);
      this.#render();
    } else if (!this.conv && conv.room === this.room && conv.status !== 'closed') {
      this.#setConversation(conv);
    }
  }

  #onMessages({ conversation, messages, live }) {
    if (conversation !== this.conv?.id) return;
    const me = this.client.user?.id;
    if (messages.some((m) => m.kind === 'event')) this.#render(); // an assignment decides whether to offer a rating
    for (const m of messages) {
      this.v.list.upsert(m);
      if (m.kind === 'event' && m.event?.name === 'rated') this.#markRated(conversation);
      if (m.from?.id !== me && m.kind === 'text') {
        this.v.typing.set(m.from, false);
        if (live && (!this.v.isOpen || document.visibilityState !== 'visible')) this.unread++;
      }
    }
    this.v.setUnread(this.unread);
    this.v.scrollToEnd();
    this.#maybeRead();
  }

  /** Tell the agent what the customer has seen: only while the panel is open and the tab visible. */
  #maybeRead() {
    if (!this.conv || !this.client || !this.v.isOpen || document.visibilityState !== 'visible') return;
    const seq = this.client.log(this.conv.id).lastSeqFromOthers(this.client.user?.id);
    if (seq > 0) this.client.markRead(this.conv.id, seq);
  }

  #isRated(id) {
    if ((this.store.get('rated', []) || []).includes(id)) return true;
    return this.client?.log(id).messages().some((m) => m.kind === 'event' && m.event?.name === 'rated') || false;
  }

  #markRated(id) {
    const rated = (this.store.get('rated', []) || []).filter((x) => x !== id).slice(-19);
    rated.push(id);
    this.store.set('rated', rated);
    if (this.conv?.id === id) this.v.rating.setDone(true);
  }

  // ---- actions ----------------------------------------------------------------------

  #start(rawName) {
    if (this.blocked) return;
    let name = String(rawName || '').trim();
    if (charCount(name) > MAX_NAME) name = [...name].slice(0, MAX_NAME).join('');
    this.store.set('name', name || null);
    const c = this.#ensureClient(this.store.get('token'));
    if (c.name !== name) {
      // The name travels in hello: say hello again.
      c.name = name;
      if (c.state === 'online' || c.state === 'connecting') {
        this.pendingStart = true;
        c.restart();
        this.#render();
        return;
      }
    }
    if (c.state === 'online') this.#openConversation();
    else {
      this.pendingStart = true;
      if (c.state === 'stopped' || c.state === 'idle' || c.state === 'unauthorized') c.start();
    }
    this.#render();
  }

  #send(text) {
    if (!this.conv || this.conv.status === 'closed' || !this.client) return false;
    const body = text.trim();
    if (!body) return false;
    this.client.send(this.conv.id, body);
    return true;
  }

  async #endChat() {
    if (!this.conv) return;
    try {
      const res = await this.client.request({ type: 'close', conversation: this.conv.id });
      this.#onConversation(res.conversation);
    } catch (err) {
      this.v.showNotice(t('chat.error', { reason: errorText(err.code) }));
      this.#render();
    }
  }

  async #rate(score, comment) {
    const req = { type: 'rate', conversation: this.conv.id, score };
    if (comment) req.comment = comment;
    await this.client.request(req);
    this.#markRated(this.conv.id);
  }

  /** Leave an email address with the waiting conversation (nobody online): `contact`. */
  async #contact(email) {
    const id = this.conv?.id;
    if (!id || !this.client) return;
    await this.client.request({ type: 'contact', conversation: id, email });
    if (this.conv?.id === id) {
      this.conv = { ...this.conv, contact_email: email };
      this.store.set(`conv:${this.room}`, this.conv);
    }
    this.#render();
  }

  #newChat() {
    if (this.conv) {
      const dismissed = (this.store.get(`dismissed:${this.room}`, []) || []).slice(-19);
      dismissed.push(this.conv.id);
      this.store.set(`dismissed:${this.room}`, dismissed);
      this.client?.untrack(this.conv.id);
    }
    this.#forgetConversation();
  }

  #render() {
    const s = this.client?.state;
    const loading = !this.blocked && !this.conv && !!this.client && !this.client.welcome && !!(this.store.get('token') || this.pendingStart) && s !== 'stopped' && s !== 'unauthorized';
    this.v.render(this.conv, {
      loading,
      away: !this.blocked && this.#away(),
      served: this.conv?.status === 'closed' ? this.#served(this.conv) : true,
      email: this.conv?.contact_email || null,
      blocked: this.blocked,
    });
  }
}
