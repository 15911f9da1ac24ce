// Messages typed but not yet acknowledged by the server, kept in Web Storage so
// that they survive a lost connection and a page reload. Each entry keeps its
// client_id for its whole life: the server stores a retried send only once.

export class Outbox {
  /** storage: localStorage, sessionStorage, or null (memory only). */
  constructor(storage, key) {
    this.storage = storage;
    this.key = key;
    this.entries = this.#load();
  }

  #load() {
    try {
      const raw = this.storage?.getItem(this.key);
      const list = raw ? JSON.parse(raw) : [];
      return Array.isArray(list) ? list.filter((e) => e && e.client_id && e.conversation) : [];
    } catch {
      return [];
    }
  }

  #save() {
    try {
      if (!this.storage) return;
      if (this.entries.length) this.storage.setItem(this.key, JSON.stringify(this.entries));
      else this.storage.removeItem(this.key);
    } catch {
      /* storage full or blocked: the entries stay in memory */
    }
  }

  /** Pick up entries another tab (or an earlier page) added. */
  reload() {
    this.entries = this.#load();
  }

  add(entry) {
    this.entries.push(entry);
    this.#save();
    return entry;
  }

  get(clientId) {
    return this.entries.find((e) => e.client_id === clientId) || null;
  }

  remove(clientId) {
    const before = this.entries.length;
    this.entries = this.entries.filter((e) => e.client_id !== clientId);
    if (this.entries.length !== before) this.#save();
  }

  /** Entries of one conversation (or all), oldest first. */
  list(conversation) {
    return conversation ? this.entries.filter((e) => e.conversation === conversation) : [...this.entries];
  }

  first() {
    return this.entries[0] || null;
  }

  clear() {
    this.entries = [];
    this.#save();
  }
}
