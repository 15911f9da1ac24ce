// Text measures and formats shared by the widget and the console.

/** Length in Unicode scalar values, the unit of welcome.limits.max_body_chars. */
export function charCount(s) {
  return [...String(s ?? '')].length;
}

/** A body worth sending: not only whitespace. */
export function isBlank(s) {
  return String(s ?? '').trim() === '';
}

/** "14:05" today, "Mar 3, 14:05" on another day. */
export function formatTime(ts, locale) {
  const d = new Date(ts);
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  const opts = sameDay
    ? { hour: '2-digit', minute: '2-digit' }
    : { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' };
  try {
    return new Intl.DateTimeFormat(locale, opts).format(d);
  } catch {
    return d.toLocaleTimeString();
  }
}

/** Full date and time for a title/tooltip. */
export function formatFull(ts, locale) {
  try {
    return new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeStyle: 'medium' }).format(new Date(ts));
  } catch {
    return new Date(ts).toString();
  }
}

/** A random id for client_id and ref values; works outside secure contexts too. */
export function randomId(prefix = '') {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return prefix + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** Initials for an avatar: first letter (or first CJK character) of the name. */
export function initial(name) {
  const first = [...String(name || '').trim()][0];
  return first ? first.toUpperCase() : '?';
}
