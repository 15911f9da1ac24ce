// The agent console's state and its connection: rooms joined (queue + agents
// present), own availability, the conversations assigned to this agent with unread
// counts, and the one being looked at. Views render from this object; they do not
// talk to the server themselves.
//
// What this tab was doing is kept per agent so that it outlives the session that did
// it: rooms joined (localStorage), and in sessionStorage the availability, the
// conversation selected, the agent's conversations that closed (with their ratings),
// unsent messages (the outbox) and, when the server ends the session (close 4501:
// token expired, password changed, account removed), the text being typed. Signing in
// again resumes all of it; only an explicit sign-out forgets it.
//
// The server's rooms (welcome.rooms: name, manual) feed the join suggestions and the
// transfer targets; the unread count is also shown in the tab's title.

import { ChatClient, wsUrlFor } from './client.js';
import { t } from './i18n.js';
import { Store } from './storage.js';
import { alertAgent } from './notify.js';
import { RoomsView } from './agent-rooms.js';
import { ConvListView } from './agent-list.js';
import { ConvView } from './agent-view.js';
import { TopBar } from './agent-topbar.js';

/** The login form's explanation for a close 4501, from its reason (PROTOCOL.md §2.4). */
export function signedOutMessage(reason) {
  const r = String(reason || '').trim();
  if (/password/i.test(r)) return t('agent.signed_out_password');
  if (/removed|no longer exists/i.test(r)) return t('agent.signed_out_removed');
  if (!r || /expired/i.test(r)) return t('agent.session_expired');
  return t('agent.signed_out_other', { reason: r.slice(0, 100) });
}

export class AgentApp {
  /** session: {token, agent}; onSignedOut(message) returns to the login form. */
  constructor({ session, onSignedOut }) {
    this.session = session;
    this.onSignedOut = onSignedOut;
    this.me = session.agent || null;
    this.local = new Store('localStorage', 'parley.agent:');
    this.sess = new Store('sessionStorage', 'parley.agent:');
    const agentKey = this.me?.id || this.me?.name || 'me';
    this.roomsKey = `rooms:${agentKey}`;
    this.availKey = `availability:${agentKey}`;
    this.selectedKey = `selected:${agentKey}`;
    this.draftKey = `draft:${agentKey}`;
    this.closedKey = `closed:${agentKey}`;
    this.baseTitle = document.title;
    this.joined = this.local.get(this.roomsKey, null) ?? ['support'];
    this.knownRooms = new Set([...(this.local.get('known-rooms', []) || []), 'support', ...this.joined]);
    this.serverRooms = null; // name -> {name, manual, online}, from welcome.rooms (null: the server did not say)
    this.availability = this.sess.get(this.availKey) === 'away' ? 'away' : 'online';
    this.convs = new Map(); // id -> Conversation
    this.mine = new Set(); // ids assigned to me and active
    this.rooms = new Map(); // name -> {queue: Map id->Conversation, agents: Map id->Presence, loaded}
    this.unread = new Map(); // id -> count
    this.peerRead = new Map(); // id -> the customer's read seq
    this.lastActivity = new Map(); // id -> ts of the latest message
    this.initialSynced = new Set();
    this.ratings = new Map(); // id -> {score, comment}, from the rated events
    this.closed = new Map(); // id -> Conversation: my conversations that closed, oldest first
    for (const e of this.sess.get(this.closedKey, []) || []) {
      if (!e?.conv?.id) continue;
      this.closed.set(e.conv.id, e.conv);
      this.convs.set(e.conv.id, e.conv);
      if (e.rating) this.ratings.set(e.conv.id, e.rating);
    }
    this.selected = null;
    for (const r of this.joined) this.#room(r);

    this.client = new ChatClient({
      url: wsUrlFor(location.origin),
      role: 'agent',
      token: session.token,
      storage: this.sess.backend,
      outboxKey: this.sess.key(`outbox:${agentKey}`),
    });

    this.topbar = new TopBar(this);
    this.roomsView = new RoomsView(this);
    this.listView = new ConvListView(this);
    this.view = new ConvView(this);
    this.#wire();
    document.getElementById('app').hidden = false;
    this.topbar.render();
    this.roomsView.render();
    this.listView.render();
    this.#restoreSelection();
    this.client.start();
    this.tick = setInterval(() => this.roomsView.tick(), 1000);
    this.onVisible = () => {
      if (document.visibilityState === 'visible' && this.selected) this.#readSelected();
    };
    document.addEventListener('visibilitychange', this.onVisible);
    window.addEventListener('focus', this.onVisible);
  }

  destroy() {
    this.destroyed = true;
    clearInterval(this.tick);
    document.removeEventListener('visibilitychange', this.onVisible);
    window.removeEventListener('focus', this.onVisible);
    this.client.stop();
    // The next sign-in builds the views anew on the same page.
    this.view.destroy();
    this.roomsView.destroy();
    document.getElementById('layout').classList.remove('layout--conv');
    document.getElementById('app').hidden = true;
    document.title = this.baseTitle;
  }

  /** Reopen the conversation this tab had selected (and the text typed in it) before a reload or a sign-in. */
  #restoreSelection() {
    const saved = this.sess.get(this.selectedKey);
    if (saved?.id) {
      this.select(saved.id);
      const draft = this.sess.get(this.draftKey);
      if (draft?.conversation === saved.id && typeof draft.text === 'string') this.view.setDraft(draft.text, !!draft.internal);
    }
    this.sess.remove(this.draftKey);
  }

  #saveSelection() {
    const id = this.selected;
    if (!id) {
      this.sess.remove(this.selectedKey);
      return;
    }
    const prev = this.sess.get(this.selectedKey);
    const room = this.convs.get(id)?.room || (prev?.id === id ? prev.room : null) || null;
    if (prev?.id !== id || prev?.room !== room) this.sess.set(this.selectedKey, { id, room });
  }

  /**
   * The selected conversation is neither assigned to me nor queued in a room I joined
   * (closed, or taken by someone else while I was away): fetch its current state so the
   * header does not show a stale one, or none.
   */
  async #refreshSelected(id) {
    const before = this.convs.get(id);
    const room = before?.room || this.sess.get(this.selectedKey)?.room;
    if (!room) return;
    try {
      const res = await fetch(`/api/conversations?room=${encodeURIComponent(room)}`, {
        headers: { authorization: `Bearer ${this.session.token}` },
      });
      if (!res.ok) return;
      const list = await res.json();
      const conv = Array.isArray(list) ? list.find((c) => c?.id === id) : null;
      // Only if nothing newer arrived meanwhile.
      if (conv && !this.destroyed && this.convs.get(id) === before) this.#onConversation(conv);
    } catch {
      /* keep what is shown */
    }
  }

  #room(name) {
    let r = this.rooms.get(name);
    if (!r) {
      r = { name, queue: new Map(), agents: new Map(), loaded: false };
      this.rooms.set(name, r);
    }
    return r;
  }

  #wire() {
    const c = this.client;
    c.on('state', () => {
      this.topbar.render();
      this.roomsView.render();
    });
    c.on('welcome', (w) => this.#onWelcome(w));
    // The server ended this session (token expired, password changed, account removed):
    // back to the login form with the reason, keeping this tab's work for the next sign-in.
    c.on('unauthorized', (ev) => this.signOut(signedOutMessage(ev?.reason), { keep: true }));
    c.on('conversation', (conv) => this.#onConversation(conv));
    c.on('messages', (ev) => this.#onMessages(ev));
    c.on('synced', ({ conversation }) => {
      this.initialSynced.add(conversation);
      if (conversation === this.selected) this.view.synced();
    });
    c.on('presence', (p) => this.#onPresence(p));
    c.on('typing', (ev) => {
      if (ev.conversation === this.selected && ev.from?.id !== c.user?.id) this.view.typing(ev.from, ev.on);
    });
    c.on('read', (ev) => {
      if (ev.from?.role !== 'customer') return;
      if (ev.seq > (this.peerRead.get(ev.conversation) || 0)) this.peerRead.set(ev.conversation, ev.seq);
      if (ev.conversation === this.selected) this.view.peerRead(ev.seq);
    });
    c.on('queued', (e) => e.conversation === this.selected && this.view.pending(e));
    c.on('acked', ({ message }) => message.conversation === this.selected && this.view.upsert(message));
    c.on('rate_limited', () => this.view.notice(t('chat.rate_limited'), true));
    c.on('send_failed', ({ entry, error }) => this.view.failed(entry, error));
    c.on('error', (ev) => {
      if (ev.code !== 'rate_limited') console.warn('parley:', ev.code, ev.message);
    });
  }

  // ---- server events ----------------------------------------------------------------

  async #onWelcome(w) {
    this.me = w.user;
    if (Array.isArray(w.rooms)) {
      this.serverRooms = new Map(w.rooms.filter((r) => r && typeof r.name === 'string').map((r) => [r.name, r]));
      this.knownRooms = new Set(this.serverRooms.keys());
      this.local.set('known-rooms', [...this.knownRooms]);
      this.roomsView.render();
      this.view.refreshTargets();
    }
    this.topbar.render();
    // Rebuild "mine" from the server's view: assignments may have moved while we were away.
    const ids = new Set();
    for (const conv of w.conversations || []) {
      this.convs.set(conv.id, conv);
      ids.add(conv.id);
      this.client.track(conv.id);
    }
    for (const id of this.mine) if (!ids.has(id)) this.client.untrack(id);
    this.mine = ids;
    this.listView.render();
    if (this.availability === 'away') this.setAvailability('away');
    const results = await Promise.allSettled(this.joined.map((r) => this.#joinRequest(r)));
    const gone = this.joined.filter((r, i) => results[i].status === 'rejected' && results[i].reason?.code === 'not_found');
    if (gone.length) {
      this.joined = this.joined.filter((r) => !gone.includes(r));
      for (const r of gone) this.rooms.delete(r);
      this.local.set(this.roomsKey, this.joined);
      this.roomsView.render();
    }
    if (this.selected && !this.destroyed) {
      const id = this.selected;
      this.client.track(id);
      this.view.refresh();
      if (!ids.has(id) && ![...this.rooms.values()].some((r) => r.queue.has(id))) this.#refreshSelected(id);
    }
  }

  #isMine(conv) {
    return conv.status === 'active' && conv.agent && this.me && conv.agent.id === this.me.id;
  }

  #onConversation(conv) {
    const prev = this.convs.get(conv.id);
    this.convs.set(conv.id, conv);
    // Queues of joined rooms. Once pushes come, the queue positions they carry give the
    // length of a queue longer than the join reply listed (queue_total).
    for (const r of this.rooms.values()) {
      if (r.queue.delete(conv.id)) r.queueTotal = null;
    }
    if (conv.status === 'queued' && this.rooms.has(conv.room)) {
      const r = this.#room(conv.room);
      r.queue.set(conv.id, conv);
      r.queueTotal = null;
    }
    // My conversations that closed stay listed, apart, with their rating.
    if (conv.status === 'closed' && this.me && conv.agent?.id === this.me.id && (this.mine.has(conv.id) || this.closed.has(conv.id) || conv.id === this.selected)) {
      this.closed.delete(conv.id);
      this.closed.set(conv.id, conv);
      this.#saveClosed();
    } else if (conv.status !== 'closed' && this.closed.delete(conv.id)) {
      this.#saveClosed();
    }
    // My assignments.
    const wasMine = this.mine.has(conv.id);
    const isMine = this.#isMine(conv);
    if (isMine && !wasMine) {
      this.mine.add(conv.id);
      this.client.track(conv.id);
      const name = conv.customer?.name || t('agent.customer');
      if (!prev || !this.#isMine(prev)) alertAgent(t('agent.new_assignment', { name }), '', { tag: conv.id, onClick: () => this.select(conv.id) });
    } else if (!isMine && wasMine) {
      this.mine.delete(conv.id);
      if (conv.id !== this.selected) this.client.untrack(conv.id);
    }
    this.roomsView.render();
    this.listView.render();
    if (conv.id === this.selected) {
      this.view.update(conv);
      this.#saveSelection();
    }
  }

  #onMessages({ conversation, messages, live }) {
    const me = this.client.user?.id;
    let count = 0;
    let last = null;
    let rated = false;
    for (const m of messages) {
      if (m.kind === 'event' && m.event?.name === 'rated' && typeof m.event.score === 'number') {
        this.ratings.set(conversation, { score: m.event.score, comment: typeof m.event.comment === 'string' ? m.event.comment : '' });
        rated = true;
      }
      if (!this.lastActivity.has(conversation) || m.ts > this.lastActivity.get(conversation)) this.lastActivity.set(conversation, m.ts);
      if (m.from?.id !== me && m.kind === 'text' && m.from?.role === 'customer') {
        count++;
        last = m;
      }
    }
    const counted = live || this.initialSynced.has(conversation);
    const looking = conversation === this.selected && document.visibilityState === 'visible';
    if (count && counted && !looking && (this.mine.has(conversation) || conversation === this.selected)) {
      this.unread.set(conversation, (this.unread.get(conversation) || 0) + count);
    }
    if (count && counted && this.mine.has(conversation) && last) {
      const name = last.from?.name || t('agent.customer');
      alertAgent(t('agent.new_message', { name }), last.body.slice(0, 140), { tag: conversation, onClick: () => this.select(conversation) });
    }
    if (rated && this.closed.has(conversation)) this.#saveClosed();
    if (conversation === this.selected) {
      this.view.messages(messages);
      this.#readSelected();
    }
    if (this.mine.has(conversation) || this.closed.has(conversation)) this.listView.render();
    else this.paintTitle();
  }

  #saveClosed() {
    while (this.closed.size > 20) this.closed.delete(this.closed.keys().next().value);
    this.sess.set(this.closedKey, [...this.closed.values()].map((conv) => ({ conv, rating: this.ratings.get(conv.id) || null })));
  }

  /** Unread customer messages in my conversations (and the one looked at). */
  unreadTotal() {
    let n = 0;
    for (const [id, k] of this.unread) if (k > 0 && (this.mine.has(id) || id === this.selected)) n += k;
    return n;
  }

  /** "(3) Parley — agent console" while there is something unread. */
  paintTitle() {
    const n = this.unreadTotal();
    const title = n > 0 ? `(${n}) ${this.baseTitle}` : this.baseTitle;
    if (document.title !== title) document.title = title;
  }

  #onPresence(p) {
    if (!p?.agent || !p.room) return;
    const r = this.rooms.get(p.room);
    if (!r) return;
    if (p.availability === 'offline') r.agents.delete(p.agent.id);
    else r.agents.set(p.agent.id, p);
    this.roomsView.render();
    this.view.refreshTargets();
  }

  #readSelected() {
    const id = this.selected;
    if (!id || document.visibilityState !== 'visible') return;
    const log = this.client.log(id);
    const seq = log.lastSeqFromOthers(this.client.user?.id);
    if (seq > 0) this.client.markRead(id, seq);
    if (this.unread.get(id)) {
      this.unread.set(id, 0);
      this.listView.render();
    }
  }

  // ---- actions (called by the views) ---------------------------------------------------

  async #joinRequest(name) {
    const res = await this.client.request({ type: 'join', room: name });
    const r = this.#room(res.room || name);
    r.queue = new Map((res.queue || []).map((c) => [c.id, c]));
    r.queueTotal = typeof res.queue_total === 'number' ? res.queue_total : null;
    for (const c of res.queue || []) this.convs.set(c.id, c);
    r.agents = new Map((res.agents || []).filter((p) => p.availability !== 'offline').map((p) => [p.agent.id, p]));
    r.loaded = true;
    this.roomsView.render();
    this.view.refreshTargets();
    return r;
  }

  /** Join a room; resolves to null or rejects with a ProtocolError. */
  async join(name) {
    await this.#joinRequest(name);
    if (!this.joined.includes(name)) this.joined.push(name);
    this.knownRooms.add(name);
    this.local.set(this.roomsKey, this.joined);
    this.local.set('known-rooms', [...this.knownRooms]);
    this.roomsView.render();
    this.view.refreshTargets();
  }

  /** The queue's length: the join reply's queue_total until pushes tell more. */
  queueCount(r) {
    let n = Math.max(r.queue.size, r.queueTotal || 0);
    for (const c of r.queue.values()) if (typeof c.queue_position === 'number' && c.queue_position > n) n = c.queue_position;
    return n;
  }

  /** The server's rooms (or, from an older server, the rooms this browser has seen), with whether agents accept by hand. */
  roomList() {
    const names = this.serverRooms ? [...this.serverRooms.keys()] : [...new Set([...this.knownRooms, ...this.joined])];
    return names.sort().map((name) => ({ name, manual: !!this.serverRooms?.get(name)?.manual }));
  }

  async leave(name) {
    try {
      await this.client.request({ type: 'leave', room: name });
    } finally {
      this.joined = this.joined.filter((r) => r !== name);
      this.rooms.delete(name);
      this.local.set(this.roomsKey, this.joined);
      this.roomsView.render();
      this.view.refreshTargets();
    }
  }

  async setAvailability(a) {
    const prev = this.availability;
    this.availability = a;
    this.sess.set(this.availKey, a);
    this.topbar.render();
    try {
      await this.client.request({ type: 'status', availability: a });
    } catch (err) {
      if (err.code !== 'disconnected') {
        this.availability = prev;
        this.sess.set(this.availKey, prev);
        this.topbar.render();
      }
    }
  }

  select(id) {
    if (this.selected && this.selected !== id && !this.mine.has(this.selected)) this.client.untrack(this.selected);
    this.selected = id;
    this.#saveSelection();
    document.getElementById('layout').classList.toggle('layout--conv', !!id);
    if (!id) {
      this.view.close();
      this.listView.render();
      return;
    }
    this.view.open(id);
    this.client.track(id);
    this.#readSelected();
    this.listView.render();
  }

  async accept(id) {
    const res = await this.client.request({ type: 'accept', conversation: id });
    this.select(res.conversation.id);
    return res.conversation;
  }

  async transfer(id, target) {
    const req = { type: 'transfer', conversation: id };
    if (target.agent) req.to_agent = target.agent;
    else req.to_room = target.room;
    return (await this.client.request(req)).conversation;
  }

  async close(id) {
    return (await this.client.request({ type: 'close', conversation: id })).conversation;
  }

  send(id, body, internal) {
    return this.client.send(id, body, { internal });
  }

  /** Agents (online, not me) and rooms a conversation can be transferred to. */
  transferTargets() {
    const agents = new Map();
    for (const r of this.rooms.values()) {
      for (const p of r.agents.values()) {
        if (p.agent.id !== this.me?.id && p.availability === 'online') agents.set(p.agent.id, p.agent);
      }
    }
    return { agents: [...agents.values()].sort((a, b) => a.name.localeCompare(b.name)), rooms: this.roomList() };
  }

  /**
   * Back to the login form with message. keep: the server ended the session, and what
   * this tab was doing (availability, selected conversation, unsent messages, the text
   * being typed) is kept for the next sign-in; otherwise the agent signed out and it is
   * forgotten.
   */
  signOut(message = '', { keep = false } = {}) {
    this.sess.remove('session');
    if (keep) {
      const draft = this.view.draft();
      this.sess.set(this.draftKey, draft && this.view.id ? { conversation: this.view.id, ...draft } : null);
    }
    const name = this.me?.name || this.session.agent?.name || '';
    this.destroy();
    if (!keep) {
      this.sess.remove(this.availKey);
      this.sess.remove(this.selectedKey);
      this.sess.remove(this.draftKey);
      this.sess.remove(this.closedKey);
      this.sess.remove('availability'); // the key before it was kept per agent
      this.client.outbox.clear();
    }
    this.onSignedOut(message, { name: keep ? name : '' });
  }
}
