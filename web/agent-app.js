// The agent console's state and its connection: rooms joined (queue + agents
// present), own availability, the conversations assigned to this agent with unread
// counts, and the one being looked at. Views render from this object; they do not
// talk to the server themselves.

import { ChatClient, wsUrlFor } from './client.js';
import { t } from './i18n.js';
import { Store } from './storage.js';
import { alertAgent } from './notify.js';
import { RoomsView } from './agent-rooms.js';
import { ConvListView } from './agent-list.js';
import { ConvView } from './agent-view.js';
import { TopBar } from './agent-topbar.js';

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
    this.joined = this.local.get(this.roomsKey, null) ?? ['support'];
    this.knownRooms = new Set([...(this.local.get('known-rooms', []) || []), 'support', ...this.joined]);
    this.availability = this.sess.get('availability', 'online') || 'online';
    this.convs = new Map(); // id -> Conversation
    this.mine = new Set(); // ids assigned to me and active
    this.rooms = new Map(); // name -> {queue: Map id->Conversation, agents: Map id->Presence, loaded}
    this.unread = new Map(); // id -> count
    this.peerRead = new Map(); // id -> the customer's read seq
    this.lastActivity = new Map(); // id -> ts of the latest message
    this.initialSynced = new Set();
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
    this.client.start();
    this.tick = setInterval(() => this.roomsView.tick(), 1000);
    this.onVisible = () => {
      if (document.visibilityState === 'visible' && this.selected) this.#readSelected();
    };
    document.addEventListener('visibilitychange', this.onVisible);
    window.addEventListener('focus', this.onVisible);
  }

  destroy() {
    clearInterval(this.tick);
    document.removeEventListener('visibilitychange', this.onVisible);
    window.removeEventListener('focus', this.onVisible);
    this.client.stop();
    this.view.close();
    document.getElementById('app').hidden = true;
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
    c.on('state', () => this.topbar.render());
    c.on('welcome', (w) => this.#onWelcome(w));
    c.on('unauthorized', () => this.signOut(t('agent.session_expired')));
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
    if (this.selected) {
      this.client.track(this.selected);
      this.view.refresh();
    }
  }

  #isMine(conv) {
    return conv.status === 'active' && conv.agent && this.me && conv.agent.id === this.me.id;
  }

  #onConversation(conv) {
    const prev = this.convs.get(conv.id);
    this.convs.set(conv.id, conv);
    // Queues of joined rooms.
    for (const r of this.rooms.values()) r.queue.delete(conv.id);
    if (conv.status === 'queued' && this.rooms.has(conv.room)) this.#room(conv.room).queue.set(conv.id, conv);
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
    if (conv.id === this.selected) this.view.update(conv);
  }

  #onMessages({ conversation, messages, live }) {
    const me = this.client.user?.id;
    let count = 0;
    let last = null;
    for (const m of messages) {
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
    if (conversation === this.selected) {
      this.view.messages(messages);
      this.#readSelected();
    }
    if (this.mine.has(conversation)) this.listView.render();
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
    this.sess.set('availability', a);
    this.topbar.render();
    try {
      await this.client.request({ type: 'status', availability: a });
    } catch (err) {
      if (err.code !== 'disconnected') {
        this.availability = prev;
        this.sess.set('availability', prev);
        this.topbar.render();
      }
    }
  }

  select(id) {
    if (this.selected && this.selected !== id && !this.mine.has(this.selected)) this.client.untrack(this.selected);
    this.selected = id;
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
    const rooms = [...new Set([...this.knownRooms, ...this.joined])].sort();
    return { agents: [...agents.values()].sort((a, b) => a.name.localeCompare(b.name)), rooms };
  }

  signOut(message = '') {
    this.sess.remove('session');
    this.sess.remove('availability');
    this.destroy();
    this.onSignedOut(message);
  }
}
