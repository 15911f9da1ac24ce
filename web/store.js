// What a client knows of one conversation: the Conversation object and its
// messages by seq, with enough bookkeeping to find gaps and to resume with
// sync{after_seq} after a disconnect (PROTOCOL.md §7).

export class ConversationLog {
  constructor(id) {
    this.id = id;
    this.conv = null; // the latest Conversation object seen
    this.bySeq = new Map(); // seq -> Message
    this.hidden = new Set(); // seqs of notes a customer may not see
    this.contiguous = 0; // every seq <= this is held (or hidden)
    this.maxSeq = 0;
    this.tracked = false; // resynced on reconnect and on gaps
    this.myRead = 0; // the last read{seq} this session sent
    this.peerRead = 0; // the other side's read position (from relayed read events)
    this.syncing = null; // promise chain of sync loops
  }

  /** Add a message; false if its seq was already held. */
  add(msg) {
    if (!msg || typeof msg.seq !== 'number' || this.bySeq.has(msg.seq)) return false;
    this.bySeq.set(msg.seq, msg);
    if (msg.seq > this.maxSeq) this.maxSeq = msg.seq;
    this.#advance();
    return true;
  }

  markHidden(seqs) {
    for (const s of seqs || []) if (typeof s === 'number') this.hidden.add(s);
    this.#advance();
  }

  /** After a complete sync, whatever the server did not send is not there to get. */
  settle(upTo) {
    if (upTo > this.contiguous) this.contiguous = upTo;
    if (this.maxSeq > this.contiguous) this.contiguous = this.maxSeq;
  }

  #advance() {
    while (this.bySeq.has(this.contiguous + 1) || this.hidden.has(this.contiguous + 1)) this.contiguous++;
  }

  hasGap() {
    return this.maxSeq > this.contiguous;
  }

  /** Messages in seq order. */
  messages() {
    return [...this.bySeq.values()].sort((a, b) => a.seq - b.seq);
  }

  get(seq) {
    return this.bySeq.get(seq) || null;
  }

  /** The highest seq held of a message not written by userId (for read receipts). */
  lastSeqFromOthers(userId) {
    let best = 0;
    for (const m of this.bySeq.values()) if (m.from?.id !== userId && m.seq > best) best = m.seq;
    return best;
  }
}
