// The WebSocket side of Parley shared by the customer widget and the agent
// console (PROTOCOL.md): hello/welcome, ref-based request/response, reconnect with
// exponential backoff and full jitter, resume with sync, and an outbox of sends
// keyed by client_id that is flushed, exactly once, whenever the connection is up.

import { Outbox } from './outbox.js';
import { ConversationLog } from './store.js';
import { randomId } from './text.js';

export const BACKOFF_MIN_MS = 500;
export const BACKOFF_MAX_MS = 20000;
const REQUEST_TIMEOUT_MS = 15000;
const SYNC_PAGE = 200;

/** Full jitter: a uniform delay in [0, min(max, min*2^attempt)). */
export function backoffDelay(attempt, rnd = Math.random) {
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(attempt, 16));
  return Math.floor(rnd() * cap);
}

export class ProtocolError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

/** ws(s)://host/ws for an http(s) origin. */
export function wsUrlFor(origin) {
  const u = new URL('/ws', origin);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

export class ChatClient {
  /**
   * url: the ws:// URL; role: 'customer' | 'agent'; token: agent token or customer
   * resume token; name: customer display name; storage + outboxKey: where the outbox lives.
   */
  constructor({ url, role, token = null, name = '', storage = null, outboxKey = 'parley.outbox' }) {
    this.url = url;
    this.role = role;
    this.token = token;
    this.name = name;
    this.user = null;
    this.welcome = null;
    this.limits = { max_body_chars: 4000, max_frame_bytes: 65536, rate_per_sec: 20, rate_burst: 40 };
    this.state = 'idle'; // idle | connecting | online | offline | stopped | unauthorized
    this.ws = null;
    this.attempt = 0;
    this.stopped = true;
    this.pending = new Map();
    this.refSeq = 0;
    this.logs = new Map();
    this.outbox = new Outbox(storage, outboxKey);
    this.listeners = new Map();
    this.flushing = false;
    this.flushTimer = null;
    this.reconnectTimer = null;
    this.heartbeat = null;
    this.lastFrameAt = 0;
    this.rateLimitedUntil = 0;
    this.onOnline = () => {
      if (this.state === 'offline') this.#connectNow();
    };
  }

  // ---- events -------------------------------------------------------------

  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  emit(type, detail) {
    for (const fn of this.listeners.get(type) || []) {
      try {
        fn(detail);
      } catch (err) {
        console.error('parley listener', type, err);
      }
    }
  }

  #setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  // ---- connection -----------------------------------------------------------

  start() {
    this.stopped = false;
    window.addEventListener('online', this.onOnline);
    if (!this.ws) this.#connectNow();
  }

  /** Close for good (logout, or the page is done with the chat). */
  stop() {
    this.stopped = true;
    window.removeEventListener('online', this.onOnline);
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.flushTimer);
    this.#stopHeartbeat();
    if (this.ws) {
      const ws = this.ws;
      this.#detach(ws);
      this.ws = null;
      try {
        ws.close(1000);
      } catch {}
    }
    this.#failPending('disconnected');
    this.#setState('stopped');
  }

  /** Drop the current connection and connect again at once (new name, new token). */
  restart() {
    this.stop();
    this.start();
  }

  #connectNow() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.#setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this.#onClose({ code: 1006, reason: String(err) });
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      const hello = { type: 'hello', role: this.role };
      if (this.token) hello.token = this.token;
      if (this.role === 'customer' && this.name) hello.name = this.name;
      this.#raw(hello);
    };
    ws.onmessage = (ev) => this.#onFrame(ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.#onClose(ev);
    };
    ws.onerror = () => {};
  }

  #detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  #onClose(ev) {
    this.#stopHeartbeat();
    this.#failPending('disconnected');
    this.welcome = null;
    if (this.stopped) {
      this.#setState('stopped');
      return;
    }
    const code = ev.code;
    this.emit('close', { code, reason: ev.reason });
    if (code >= 4500 && code <= 4999) {
      // Do not reconnect with the same credentials (§2.4): the app decides.
      this.stopped = true;
      this.#setState('unauthorized');
      this.emit('unauthorized', { code, reason: ev.reason });
      return;
    }
    if (code === 1000 || code === 1007 || code === 1008 || code === 1009) {
      this.stopped = true;
      this.#setState('stopped');
      return;
    }
    const delay = code === 1001 ? Math.floor(Math.random() * 250) : backoffDelay(this.attempt++);
    this.#setState('offline');
    this.emit('reconnecting', { code, delay });
    this.reconnectTimer = setTimeout(() => this.#connectNow(), delay);
  }

  #startHeartbeat(ms) {
    this.#stopHeartbeat();
    const every = Math.max(1000, Number(ms) || 10000);
    this.lastFrameAt = Date.now();
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastFrameAt > every * 2.5) {
        // Nothing heard for too long: the connection is dead even if the socket says not.
        const ws = this.ws;
        if (ws) {
          this.#detach(ws);
          this.ws = null;
          try {
            ws.close(4000);
          } catch {}
        }
        this.#onClose({ code: 1006, reason: 'heartbeat timeout' });
        return;
      }
      this.#raw({ type: 'ping' });
    }, every);
  }

  #stopHeartbeat() {
    clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  #raw(obj) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  #onFrame(data) {
    this.lastFrameAt = Date.now();
    if (typeof data !== 'string') return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'welcome') {
      this.#onWelcome(msg);
      return;
    }
    if (msg.ref !== undefined && msg.ref !== null && this.pending.has(msg.ref)) {
      const p = this.pending.get(msg.ref);
      this.pending.delete(msg.ref);
      clearTimeout(p.timer);
      if (msg.type === 'error') p.reject(new ProtocolError(msg.code, msg.message));
      else p.resolve(msg);
      if (msg.type === 'conversation' && msg.conversation) this.#onConversation(msg.conversation);
      return;
    }
    switch (msg.type) {
      case 'message':
        this.#onMessage(msg.message);
        break;
      case 'conversation':
        if (msg.conversation) this.#onConversation(msg.conversation);
        break;
      case 'read':
        this.#onRead(msg);
        break;
      case 'ping':
        this.#raw({ type: 'pong' });
        break;
      case 'pong':
        break;
      default:
        this.emit(msg.type, msg);
    }
  }

  #onWelcome(msg) {
    this.welcome = msg;
    this.user = msg.user;
    if (msg.limits) this.limits = { ...this.limits, ...msg.limits };
    if (this.role === 'customer' && msg.token) {
      this.token = msg.token;
      this.emit('token', msg.token);
    }
    this.attempt = 0;
    this.#startHeartbeat(msg.heartbeat_ms);
    for (const c of msg.conversations || []) this.log(c.id).conv = c;
    this.#setState('online');
    this.emit('welcome', msg);
    this.#resume();
  }

  async #resume() {
    const syncs = [...this.logs.values()].filter((l) => l.tracked).map((l) => this.syncConversation(l.id));
    await Promise.allSettled(syncs);
    this.outbox.reload();
    this.flush();
  }

  #failPending(code) {
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ProtocolError(code));
    }
    this.pending.clear();
  }

  // ---- requests -------------------------------------------------------------

  /** Send a request with a fresh ref; resolves with the reply, rejects with ProtocolError. */
  request(msg, { timeout = REQUEST_TIMEOUT_MS } = {}) {
    return new Promise((resolve, reject) => {
      if (this.state !== 'online') {
        reject(new ProtocolError('disconnected'));
        return;
      }
      const ref = `r${++this.refSeq}`;
      const timer = setTimeout(() => {
        if (this.pending.delete(ref)) reject(new ProtocolError('timeout'));
      }, timeout);
      this.pending.set(ref, { resolve, reject, timer });
      if (!this.#raw({ ...msg, ref })) {
        this.pending.delete(ref);
        clearTimeout(timer);
        reject(new ProtocolError('disconnected'));
      }
    });
  }

  /** A request with no reply of its own (typing, read): errors arrive as 'error' events. */
  notify(msg) {
    if (this.state !== 'online') return false;
    return this.#raw({ ...msg, ref: `n${++this.refSeq}` });
  }

  // ---- conversations ----------------------------------------------------------

  log(id) {
    let l = this.logs.get(id);
    if (!l) {
      l = new ConversationLog(id);
      this.logs.set(id, l);
    }
    return l;
  }

  /** Keep this conversation complete: sync now and after every reconnect or gap. */
  track(id) {
    const l = this.log(id);
    l.tracked = true;
    if (this.state === 'online') return this.syncConversation(id);
    return Promise.resolve();
  }

  untrack(id) {
    const l = this.logs.get(id);
    if (l) l.tracked = false;
  }

  /** Fetch everything after the last contiguous seq held, page by page. */
  syncConversation(id) {
    const l = this.log(id);
    const run = async () => {
      if (this.state !== 'online') return;
      let cursor = l.contiguous;
      for (let page = 0; page < 10000; page++) {
        const res = await this.request({ type: 'sync', conversation: id, after_seq: cursor, limit: SYNC_PAGE });
        if (Array.isArray(res.hidden_seqs)) l.markHidden(res.hidden_seqs);
        const added = [];
        let top = cursor;
        for (const m of res.messages || []) {
          if (m.seq > top) top = m.seq;
          this.#ownSeen(m);
          if (l.add(m)) added.push(m);
        }
        if (added.length) this.emit('messages', { conversation: id, messages: added, live: false });
        if (!res.more || top <= cursor) {
          l.settle(top);
          break;
        }
        cursor = top;
      }
      this.emit('synced', { conversation: id });
    };
    l.syncing = (l.syncing || Promise.resolve()).then(run).catch((err) => {
      this.emit('sync_error', { conversation: id, error: err });
    });
    return l.syncing;
  }

  #ownSeen(m) {
    if (m.client_id && this.user && m.from?.id === this.user.id && this.outbox.get(m.client_id)) {
      this.outbox.remove(m.client_id);
    }
  }

  #onMessage(m) {
    if (!m || !m.conversation) return;
    const l = this.log(m.conversation);
    this.#ownSeen(m);
    if (l.add(m)) this.emit('messages', { conversation: m.conversation, messages: [m], live: true });
    if (l.tracked && l.hasGap()) this.syncConversation(m.conversation);
  }

  #onConversation(c) {
    const l = this.log(c.id);
    l.conv = c;
    this.emit('conversation', c);
    if (l.tracked && typeof c.last_seq === 'number' && c.last_seq > l.contiguous && this.state === 'online') {
      this.syncConversation(c.id);
    }
  }

  #onRead(msg) {
    const l = this.log(msg.conversation);
    if (this.user && msg.from?.id !== this.user.id && msg.seq > l.peerRead) l.peerRead = msg.seq;
    if (this.user && msg.from?.id === this.user.id && msg.seq > l.myRead) l.myRead = msg.seq;
    this.emit('read', msg);
  }

  /** Tell the others how far this user has read (only ever forward). */
  markRead(id, seq) {
    const l = this.log(id);
    if (!(seq > l.myRead)) return;
    if (this.notify({ type: 'read', conversation: id, seq })) l.myRead = seq;
  }

  typing(id, on) {
    this.notify({ type: 'typing', conversation: id, on: !!on });
  }

  // ---- sending ------------------------------------------------------------------

  /** Queue a message; it is sent now if online, else when the connection returns. */
  send(conversation, body, { internal = false } = {}) {
    const entry = { client_id: randomId('k'), conversation, body, internal: !!internal, ts: Date.now() };
    this.outbox.add(entry);
    this.emit('queued', entry);
    this.flush();
    return entry;
  }

  /** Give up on a queued message (e.g. its conversation is gone). */
  discard(clientId) {
    this.outbox.remove(clientId);
  }

  /** Send outbox entries one at a time, in order, until it is empty or we are offline. */
  async flush() {
    if (this.flushing || this.state !== 'online') return;
    this.flushing = true;
    clearTimeout(this.flushTimer);
    try {
      while (this.state === 'online') {
        const e = this.outbox.first();
        if (!e) break;
        const wait = this.rateLimitedUntil - Date.now();
        if (wait > 0) {
          this.flushTimer = setTimeout(() => this.flush(), wait);
          break;
        }
        const req = { type: 'send', conversation: e.conversation, client_id: e.client_id, body: e.body };
        if (e.internal) req.internal = true;
        let ack;
        try {
          ack = await this.request(req);
        } catch (err) {
          const code = err.code;
          if (code === 'rate_limited') {
            e.tries = (e.tries || 0) + 1;
            this.rateLimitedUntil = Date.now() + 1000 + Math.floor(Math.random() * 1000 * Math.min(e.tries, 5));
            this.emit('rate_limited', { entry: e, retryAt: this.rateLimitedUntil });
            continue;
          }
          if (code === 'disconnected') break;
          if (code === 'timeout' || code === 'unavailable' || code === 'internal') {
            this.rateLimitedUntil = Date.now() + backoffDelay(Math.min((e.tries = (e.tries || 0) + 1), 6)) + 500;
            continue;
          }
          // bad_request, too_large, forbidden, not_found, conflict: retrying will not help.
          this.outbox.remove(e.client_id);
          this.emit('send_failed', { entry: e, error: err });
          continue;
        }
        this.outbox.remove(e.client_id);
        const msg = {
          id: ack.id,
          conversation: e.conversation,
          seq: ack.seq,
          ts: ack.ts,
          from: this.user,
          kind: e.internal ? 'note' : 'text',
          body: e.body,
          client_id: e.client_id,
          event: null,
        };
        const l = this.log(e.conversation);
        const added = l.add(msg);
        this.emit('acked', { entry: e, ack, message: l.get(ack.seq) || msg });
        if (added) this.emit('messages', { conversation: e.conversation, messages: [msg], live: true, own: true });
        if (l.tracked && l.hasGap()) this.syncConversation(e.conversation);
      }
    } finally {
      this.flushing = false;
    }
  }
}
