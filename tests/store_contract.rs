//! The `Store` contract (src/store/mod.rs), checked on the trait itself:
//! ordering and gapless seqs, idempotent retries, closed conversations,
//! read markers, history paging, ratings, and the conditional routing writes
//! the store must refuse (applying nothing) when their expectation no longer
//! holds. Every test runs against each implementation `stores()` returns.

mod common;

use std::sync::Arc;
use std::time::Duration;

use parley::error::StoreError;
use parley::protocol::{ConvStatus, MsgKind, Role, User};
use parley::store::{self, Completion, ConvRow, Expect, NewMessage, Store, StoreConfig, WriteOp, WriteOutcome};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// A store under test and the channel its completions arrive on.
struct Under {
    name: &'static str,
    store: Arc<dyn Store>,
    done: UnboundedReceiver<Vec<Completion>>,
    next: u64,
    _dir: tempfile::TempDir,
    _db: Option<common::pg::TestDb>,
}

impl Under {
    /// Submits one write and waits for its completion.
    async fn write(&mut self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        self.next += 1;
        let token = self.next;
        self.store.submit(token, op);
        loop {
            let batch = tokio::time::timeout(Duration::from_secs(10), self.done.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no completion within 10 s", self.name))
                .expect("completion channel open");
            if let Some(c) = batch.into_iter().find(|c| c.token == token) {
                return c.result;
            }
        }
    }

    async fn conv(&self, id: &str) -> ConvRow {
        self.store.conversation(id).await.expect("read").unwrap_or_else(|| panic!("{}: no {id}", self.name))
    }
}

/// Every implementation of the contract, each fresh.
async fn stores() -> Vec<Under> {
    let dir = tempfile::tempdir().expect("temp dir");
    let (tx, done) = unbounded_channel();
    let cfg = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        full_sync: true,
        fold_after: Duration::from_millis(50),
        cache_mib: 8,
        database: None,
    };
    let sqlite = store::open(&cfg, tx).expect("open SQLite store");
    let mut all = vec![Under { name: "sqlite", store: sqlite, done, next: 0, _dir: dir, _db: None }];
    // PostgreSQL: a fresh database for each test, dropped after it.
    if let Some(db) = common::pg::TestDb::create() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (tx, done) = unbounded_channel();
        let cfg = StoreConfig { data_dir: dir.path().to_path_buf(), database: Some(db.url.clone()), ..cfg };
        let pg = tokio::task::block_in_place(|| store::open(&cfg, tx)).expect("open PostgreSQL store");
        all.push(Under { name: "postgres", store: pg, done, next: 0, _dir: dir, _db: Some(db) });
    }
    all
}

fn customer(n: u32) -> User {
    User { id: format!("v_{n}"), role: Role::Customer, name: format!("Customer {n}") }
}

fn agent(id: &str) -> User {
    User { id: id.to_string(), role: Role::Agent, name: id.to_string() }
}

fn new_conv(id: &str, who: &User) -> ConvRow {
    ConvRow {
        id: id.to_string(),
        room: "support".into(),
        status: ConvStatus::Queued,
        customer: who.clone(),
        agent: None,
        created_at: 1,
        queued_at: 1,
        last_seq: 0,
        rated: false,
        contact_email: None,
    }
}

fn text(conv: &str, from: &User, client_id: &str, body: &str) -> NewMessage {
    NewMessage {
        id: parley::auth::new_id("m_"),
        conversation: conv.to_string(),
        ts: 2,
        from: from.clone(),
        kind: MsgKind::Text,
        body: body.to_string(),
        client_id: Some(client_id.to_string()),
        event: None,
    }
}

fn event(conv: &str, name: &str) -> NewMessage {
    NewMessage {
        id: parley::auth::new_id("m_"),
        conversation: conv.to_string(),
        ts: 3,
        from: User::system(),
        kind: MsgKind::Event,
        body: name.to_string(),
        client_id: None,
        event: Some(serde_json::json!({ "name": name })),
    }
}

/// A routing change decided on `expect`.
fn update(conv: &str, expect: Expect, status: ConvStatus, to: Option<&User>, capacity: Option<u32>) -> WriteOp {
    WriteOp::Update {
        expect,
        status,
        agent: to.cloned(),
        room: "support".into(),
        queued_at: 1,
        capacity,
        absent: None,
        event: event(conv, "changed"),
    }
}

fn queued() -> Expect {
    Expect { status: ConvStatus::Queued, agent: None }
}

fn active_with(a: &User) -> Expect {
    Expect { status: ConvStatus::Active, agent: Some(a.id.clone()) }
}

fn appended(r: Result<WriteOutcome, StoreError>) -> (Arc<parley::protocol::Message>, bool) {
    match r {
        Ok(WriteOutcome::Appended { message, duplicate }) => (message, duplicate),
        other => panic!("expected an appended message, got {other:?}"),
    }
}

fn is_conflict(r: &Result<WriteOutcome, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_are_gapless_in_order_and_a_retry_returns_the_original() {
    for mut s in stores().await {
        let ann = customer(1);
        s.write(WriteOp::CreateConversation(new_conv("c_1", &ann))).await.expect("create");
        let mut seqs = Vec::new();
        for i in 0..5 {
            let (m, dup) = appended(s.write(WriteOp::Append(text("c_1", &ann, &format!("k{i}"), "hi"))).await);
            assert!(!dup);
            seqs.push(m.seq);
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5], "{}", s.name);
        let (orig, _) = appended(s.write(WriteOp::Append(text("c_1", &ann, "k2", "hi again"))).await);
        let (again, dup) = appended(s.write(WriteOp::Append(text("c_1", &ann, "k2", "hi again"))).await);
        assert!(dup, "{}: a retry is a duplicate", s.name);
        assert_eq!((again.id.clone(), again.seq), (orig.id.clone(), orig.seq), "{}", s.name);
        assert_eq!(orig.seq, 3, "{}: k2 was stored once, as seq 3", s.name);
        let (all, more) = s.store.history("c_1", 0, 100).await.expect("history");
        assert!(!more);
        assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5], "{}", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_and_read_markers_only_move_forward() {
    for mut s in stores().await {
        let ann = customer(1);
        s.write(WriteOp::CreateConversation(new_conv("c_1", &ann))).await.expect("create");
        for i in 0..7 {
            s.write(WriteOp::Append(text("c_1", &ann, &format!("k{i}"), "x"))).await.expect("append");
        }
        let (page, more) = s.store.history("c_1", 0, 3).await.expect("page 1");
        assert_eq!((page.iter().map(|m| m.seq).collect::<Vec<_>>(), more), (vec![1, 2, 3], true), "{}", s.name);
        let (page, more) = s.store.history("c_1", 3, 3).await.expect("page 2");
        assert_eq!((page.iter().map(|m| m.seq).collect::<Vec<_>>(), more), (vec![4, 5, 6], true), "{}", s.name);
        let (page, more) = s.store.history("c_1", 6, 3).await.expect("page 3");
        assert_eq!((page.iter().map(|m| m.seq).collect::<Vec<_>>(), more), (vec![7], false), "{}", s.name);

        for seq in [4, 2, 6, 5] {
            s.write(WriteOp::Read { conversation: "c_1".into(), user_id: "a_1".into(), seq }).await.expect("read");
        }
        let marks = s.store.read_markers("c_1").await.expect("markers");
        assert_eq!(marks, vec![("a_1".to_string(), 6)], "{}: read markers never move back", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_conversations_refuse_texts_and_are_rated_once() {
    for mut s in stores().await {
        let ann = customer(1);
        let bo = agent("a_bo");
        s.write(WriteOp::CreateConversation(new_conv("c_1", &ann))).await.expect("create");
        let rate = |score| WriteOp::Rate { score, comment: Some("ok".into()), event: event("c_1", "rated") };
        assert!(is_conflict(&s.write(rate(4)).await), "{}: an open conversation is not rated", s.name);
        s.write(update("c_1", queued(), ConvStatus::Active, Some(&bo), Some(5))).await.expect("assign");
        s.write(update("c_1", active_with(&bo), ConvStatus::Closed, Some(&bo), None)).await.expect("close");
        let before = s.conv("c_1").await.last_seq;
        let r = s.write(WriteOp::Append(text("c_1", &ann, "late", "too late"))).await;
        assert!(is_conflict(&r), "{}: texts to a closed conversation are refused: {r:?}", s.name);
        s.write(rate(5)).await.expect("rate once");
        assert!(is_conflict(&s.write(rate(3)).await), "{}: rated once only", s.name);
        let row = s.conv("c_1").await;
        assert!(row.rated);
        assert_eq!(row.last_seq, before + 1, "{}: only the rating's event was added", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_assignment_of_a_taken_conversation_is_refused_and_applies_nothing() {
    for mut s in stores().await {
        let ann = customer(1);
        let (bo, cy) = (agent("a_bo"), agent("a_cy"));
        s.write(WriteOp::CreateConversation(new_conv("c_1", &ann))).await.expect("create");
        s.write(update("c_1", queued(), ConvStatus::Active, Some(&bo), Some(5))).await.expect("first assignment");
        let before = s.conv("c_1").await;
        // Decided on the same stale view (queued, nobody): refused.
        let r = s.write(update("c_1", queued(), ConvStatus::Active, Some(&cy), Some(5))).await;
        assert!(is_conflict(&r), "{}: {r:?}", s.name);
        let after = s.conv("c_1").await;
        assert_eq!(after.agent.as_ref().map(|a| a.id.as_str()), Some("a_bo"), "{}", s.name);
        assert_eq!(after.last_seq, before.last_seq, "{}: no event was written", s.name);
        let (msgs, _) = s.store.history("c_1", 0, 100).await.expect("history");
        assert_eq!(msgs.len() as u64, before.last_seq, "{}", s.name);
        // A transfer decided on the current view goes through.
        s.write(update("c_1", active_with(&bo), ConvStatus::Active, Some(&cy), Some(5))).await.expect("transfer");
        assert_eq!(s.conv("c_1").await.agent.map(|a| a.id), Some("a_cy".to_string()), "{}", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_past_the_agents_capacity_is_refused() {
    for mut s in stores().await {
        let bo = agent("a_bo");
        for (i, id) in ["c_1", "c_2", "c_3"].into_iter().enumerate() {
            s.write(WriteOp::CreateConversation(new_conv(id, &customer(i as u32)))).await.expect("create");
        }
        s.write(update("c_1", queued(), ConvStatus::Active, Some(&bo), Some(2))).await.expect("1 of 2");
        s.write(update("c_2", queued(), ConvStatus::Active, Some(&bo), Some(2))).await.expect("2 of 2");
        let r = s.write(update("c_3", queued(), ConvStatus::Active, Some(&bo), Some(2))).await;
        assert!(is_conflict(&r), "{}: a third past a capacity of 2: {r:?}", s.name);
        let row = s.conv("c_3").await;
        assert_eq!((row.status, row.agent.is_none(), row.last_seq), (ConvStatus::Queued, true, 0), "{}", s.name);
        // Once one closes there is room again.
        s.write(update("c_1", active_with(&bo), ConvStatus::Closed, Some(&bo), None)).await.expect("close");
        s.write(update("c_3", queued(), ConvStatus::Active, Some(&bo), Some(2))).await.expect("now it fits");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_of_a_closed_conversation_is_refused_and_so_is_a_second_open_one() {
    for mut s in stores().await {
        let ann = customer(1);
        s.write(WriteOp::CreateConversation(new_conv("c_1", &ann))).await.expect("create");
        let r = s.write(WriteOp::CreateConversation(new_conv("c_2", &ann))).await;
        assert!(is_conflict(&r), "{}: one open conversation per customer and room: {r:?}", s.name);
        assert!(s.store.conversation("c_2").await.expect("read").is_none(), "{}: nothing stored", s.name);
        s.write(update("c_1", queued(), ConvStatus::Closed, None, None)).await.expect("close");
        let last = s.conv("c_1").await.last_seq;
        let r = s.write(update("c_1", queued(), ConvStatus::Closed, None, None)).await;
        assert!(is_conflict(&r), "{}: closing a closed conversation: {r:?}", s.name);
        assert_eq!(s.conv("c_1").await.last_seq, last, "{}: no second event", s.name);
        // Closed, the customer may open again.
        s.write(WriteOp::CreateConversation(new_conv("c_3", &ann))).await.expect("a new one after the close");
    }
}

/// Two store instances (two pools, as two nodes have) on one PostgreSQL
/// database append to the same conversations at once, each retrying some of
/// the other's client ids: every seq is unique and gapless, every retry maps
/// to the one original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_stores_append_to_the_same_conversations_without_gaps_or_duplicates() {
    let Some(db) = common::pg::TestDb::create() else {
        eprintln!("PARLEY_TEST_DATABASE=none: skipped");
        return;
    };
    let open = || {
        let dir = tempfile::tempdir().expect("temp dir");
        let (tx, done) = unbounded_channel();
        let cfg = StoreConfig {
            data_dir: dir.path().to_path_buf(),
            full_sync: true,
            fold_after: Duration::from_millis(50),
            cache_mib: 8,
            database: Some(db.url.clone()),
        };
        let store = tokio::task::block_in_place(|| store::open(&cfg, tx)).expect("open PostgreSQL store");
        Under { name: "postgres", store, done, next: 0, _dir: dir, _db: None }
    };
    let (mut a, b) = (open(), open());
    let convs = ["c_1", "c_2", "c_3"];
    for (i, c) in convs.iter().enumerate() {
        a.write(WriteOp::CreateConversation(new_conv(c, &customer(i as u32)))).await.expect("create");
    }
    const EACH: usize = 60;
    let ann = customer(0);
    // Both instances send the same client ids (k0..k59) for the same sender:
    // one of each pair is stored, the other is its retry.
    let run = |mut s: Under, tag: &'static str| {
        let ann = ann.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..EACH {
                let conv = convs[i % 3];
                let r = s.write(WriteOp::Append(text(conv, &ann, &format!("k{i}"), tag))).await;
                let (m, dup) = appended(r);
                out.push((conv.to_string(), format!("k{i}"), m.id.clone(), m.seq, dup));
            }
            out
        })
    };
    let (ra, rb) = tokio::join!(run(a, "from a"), run(b, "from b"));
    let (ra, rb) = (ra.expect("instance a"), rb.expect("instance b"));
    for (x, y) in ra.iter().zip(rb.iter()) {
        assert_eq!((&x.0, &x.1), (&y.0, &y.1));
        assert_eq!((&x.2, x.3), (&y.2, y.3), "both got the one original for {}", x.1);
        assert!(x.4 != y.4, "exactly one of the two was a duplicate: {x:?} {y:?}");
    }
    let c = open();
    for conv in convs {
        let (msgs, more) = c.store.history(conv, 0, 500).await.expect("history");
        assert!(!more);
        let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=(EACH as u64 / 3)).collect::<Vec<_>>(), "{conv}: gapless and unique");
        let row = c.conv(conv).await;
        assert_eq!(row.last_seq, EACH as u64 / 3, "{conv}");
    }
    drop(c);
}
