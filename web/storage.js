// Web Storage that never throws (storage can be disabled, full, or blocked in
// third-party contexts), with JSON helpers and a key prefix.

function probe(kind) {
  try {
    const s = window[kind];
    const k = '__parley_probe__';
    s.setItem(k, '1');
    s.removeItem(k);
    return s;
  } catch {
    return null;
  }
}

export class Store {
  constructor(kind, prefix) {
    this.backend = probe(kind);
    this.prefix = prefix;
  }

  key(name) {
    return this.prefix + name;
  }

  get(name, fallback = null) {
    try {
      const raw = this.backend?.getItem(this.key(name));
      return raw === null || raw === undefined ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  }

  set(name, value) {
    try {
      if (value === null || value === undefined) this.backend?.removeItem(this.key(name));
      else this.backend?.setItem(this.key(name), JSON.stringify(value));
    } catch {}
  }

  remove(name) {
    this.set(name, null);
  }
}
