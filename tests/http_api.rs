//! HTTP API (PROTOCOL §9): login, conversation lists, messages, health.

mod common;

use common::*;
use serde_json::{json, Value};

const ANN: (&str, &str, u32) = ("ann", "pw-ann-1", 5);

fn assert_json_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "error body must be JSON {{code,message}}: {body}");
    assert!(body["message"].is_string(), "error body must be JSON {{code,message}}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_returns_token_and_agent_user() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (status, body) = post_json(&srv, "/api/login", None, &json!({"name":"ann","password":"pw-ann-1"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["token"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    assert_eq!(body["agent"]["role"], "agent", "{body}");
    assert_eq!(body["agent"]["name"], "ann", "{body}");
    assert!(body["agent"]["id"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_wrong_name_or_password_is_401_with_identical_bodies() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (s1, wrong_name) = post_json(&srv, "/api/login", None, &json!({"name":"nobody","password":"pw-ann-1"})).await;
    let (s2, wrong_pw) = post_json(&srv, "/api/login", None, &json!({"name":"ann","password":"not-it"})).await;
    assert_json_error(s1, &wrong_name, 401, "unauthorized");
    assert_json_error(s2, &wrong_pw, 401, "unauthorized");
    assert_eq!(wrong_name, wrong_pw, "the bodies must not hint which part was wrong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_conversations_needs_an_agent_token_and_filters_by_room_and_status() {
    let srv = Server::with_agents(&[ANN], &["--rooms", "support,sales"]);
    let token = login(&srv, ANN.0, ANN.1).await;
    let mut a = Client::customer(&srv, "A").await;
    let ca = str_of(&a.open("support").await, "id").to_string();
    let mut b = Client::customer(&srv, "B").await;
    let cb = str_of(&b.open("sales").await, "id").to_string();

    let support = list_conversations(&srv, &token, "support", "queued").await;
    let ids: Vec<&str> = support.iter().map(|c| str_of(c, "id")).collect();
    assert_eq!(ids, vec![ca.as_str()], "{support:?}");
    assert_eq!(support[0]["room"], "support");
    assert_eq!(support[0]["status"], "queued");
    assert_eq!(support[0]["customer"]["id"], a.user["id"]);
    let sales = list_conversations(&srv, &token, "sales", "queued").await;
    let ids: Vec<&str> = sales.iter().map(|c| str_of(c, "id")).collect();
    assert_eq!(ids, vec![cb.as_str()], "{sales:?}");
    assert!(list_conversations(&srv, &token, "support", "active").await.is_empty());
    assert!(list_conversations(&srv, &token, "support", "closed").await.is_empty());

    let (status, body) = get_json(&srv, "/api/conversations?room=support&status=queued", None).await;
    assert_json_error(status, &body, 401, "unauthorized");
    let (status, body) = get_json(&srv, "/api/conversations?room=support&status=queued", Some("bogus")).await;
    assert_json_error(status, &body, 401, "unauthorized");
    // A customer's token is not an agent's.
    let ctoken = a.token.clone().expect("customer token");
    let (status, body) = get_json(&srv, "/api/conversations?room=support&status=queued", Some(&ctoken)).await;
    assert!(status == 401 || status == 403, "customer token listed conversations: {status} {body}");
    assert!(body["code"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_messages_pages_with_after_seq_and_limit() {
    let srv = Server::with_agents(&[ANN], &[]);
    let token = login(&srv, ANN.0, ANN.1).await;
    let mut c = Client::customer(&srv, "Ann").await;
    let cid = str_of(&c.open("support").await, "id").to_string();
    for i in 1..=5 {
        c.say(&cid, &format!("k{i}"), &format!("m{i}")).await;
    }
    let seqs = |b: &Value| -> Vec<u64> {
        b["messages"].as_array().unwrap_or_else(|| panic!("{b}")).iter().map(|m| u64_of(m, "seq")).collect()
    };
    let path = |after: u64, limit: u64| format!("/api/conversations/{cid}/messages?after_seq={after}&limit={limit}");
    let (s, b) = get_json(&srv, &path(0, 2), Some(&token)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((seqs(&b), b["more"].clone()), (vec![1, 2], json!(true)), "{b}");
    let (_, b) = get_json(&srv, &path(2, 10), Some(&token)).await;
    assert_eq!((seqs(&b), b["more"].clone()), (vec![3, 4, 5], json!(false)), "{b}");
    assert_eq!(b["messages"][0]["body"], "m3");

    // The owning customer may read it; another customer may not.
    let ctoken = c.token.clone().expect("token");
    let (s, b) = get_json(&srv, &path(0, 10), Some(&ctoken)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(seqs(&b), vec![1, 2, 3, 4, 5]);
    let other = Client::customer(&srv, "Other").await;
    let otoken = other.token.clone().expect("token");
    let (s, b) = get_json(&srv, &path(0, 10), Some(&otoken)).await;
    assert_json_error(s, &b, 404, "not_found");
    let (s, b) = get_json(&srv, &path(0, 10), None).await;
    assert_json_error(s, &b, 401, "unauthorized");
}

/// Agent ANN in `support` with a customer's conversation assigned to her, and
/// her HTTP token: (agent, customer, conversation id, token).
async fn assigned_with_token(srv: &Server) -> (Client, Client, String, String) {
    let mut ann = Client::agent_in(srv, ANN.0, ANN.1, "support").await;
    let mut cust = Client::customer(srv, "Ann").await;
    let cid = str_of(&cust.open("support").await, "id").to_string();
    ann.recv_event(&cid, "assigned").await;
    let token = login(srv, ANN.0, ANN.1).await;
    (ann, cust, cid, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_message_is_idempotent_and_reaches_the_customer_over_websocket() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut ann, mut cust, cid, token) = assigned_with_token(&srv).await;
    let path = format!("/api/conversations/{cid}/messages");
    let body = json!({"client_id":"h-1","body":"Hello from the API","internal":false});
    let (s, first) = post_json(&srv, &path, Some(&token), &body).await;
    assert!((200..300).contains(&s), "{s} {first}");
    assert!(first["id"].is_string(), "{first}");
    assert!(first["seq"].is_u64(), "{first}");
    assert!(first["ts"].is_u64(), "{first}");

    let m = cust.recv_message("HTTP-posted message", |m| m["id"] == first["id"]).await;
    assert_eq!(m["body"], "Hello from the API");
    assert_eq!(m["seq"], first["seq"]);
    assert_eq!(m["from"]["role"], "agent");
    assert_eq!(m["from"]["id"], ann.user["id"]);

    let (s, again) = post_json(&srv, &path, Some(&token), &body).await;
    assert!((200..300).contains(&s), "{s} {again}");
    assert_eq!((&again["id"], &again["seq"]), (&first["id"], &first["seq"]));
    let (msgs, _) = cust.sync_all(&cid).await;
    assert_eq!(msgs.iter().filter(|m| m["client_id"] == "h-1").count(), 1, "{msgs:?}");

    // An internal note over HTTP is not delivered to the customer.
    let note = json!({"client_id":"h-2","body":"note via API","internal":true});
    let (s, n) = post_json(&srv, &path, Some(&token), &note).await;
    assert!((200..300).contains(&s), "{s} {n}");
    let after = ann.say(&cid, "a-1", "after the note").await;
    cust.recv_message("message after note", |m| m["id"] == after["id"]).await;
    assert!(cust.seen(|f| f["type"] == "message" && f["message"]["id"] == n["id"]).is_empty());

    // Without an agent token: refused.
    let (s, b) = post_json(&srv, &path, None, &json!({"client_id":"h-3","body":"x","internal":false})).await;
    assert_json_error(s, &b, 401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_are_200() {
    let srv = Server::start(&[]);
    for path in ["/healthz", "/readyz"] {
        let resp = http().get(srv.url(path)).send().await.expect("GET");
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_json_code_and_message() {
    let srv = Server::with_agents(&[ANN], &[]);
    let token = login(&srv, ANN.0, ANN.1).await;
    let (s, b) = get_json(&srv, "/api/conversations/c_does_not_exist/messages?after_seq=0", Some(&token)).await;
    assert_json_error(s, &b, 404, "not_found");

    let resp = http()
        .post(srv.url("/api/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("POST");
    let s = resp.status().as_u16();
    let b: Value = serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    assert_json_error(s, &b, 400, "bad_request");

    let mut c = Client::customer(&srv, "Ann").await;
    let cid = str_of(&c.open("support").await, "id").to_string();
    let (s, b) = post_json(
        &srv,
        &format!("/api/conversations/{cid}/messages"),
        Some(&token),
        &json!({"client_id":"x","body":"x".repeat(5000),"internal":false}),
    )
    .await;
    assert_json_error(s, &b, 413, "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seq_follows_the_newest_message_while_open_and_after_close_and_rating() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (_ann, mut cust, cid, token) = assigned_with_token(&srv).await;
    let last_seq_in = |list: Vec<Value>| {
        list.iter().find(|c| c["id"] == cid.as_str()).map(|c| c["last_seq"].as_u64().unwrap()).expect("listed")
    };

    cust.say(&cid, "k-1", "one").await;
    let two = cust.say(&cid, "k-2", "two").await;
    let open = list_conversations(&srv, &token, "support", "active").await;
    assert_eq!(last_seq_in(open), u64_of(&two, "seq"), "open: the newest message's seq");

    let closed = cust.call(json!({"type":"close","conversation":cid}), "conversation").await;
    let closed_seq = closed["conversation"]["last_seq"].as_u64().expect("last_seq");
    assert!(closed_seq > u64_of(&two, "seq"), "the close event took a seq: {closed}");
    let list = list_conversations(&srv, &token, "support", "closed").await;
    assert_eq!(last_seq_in(list), closed_seq, "closed: from the row");

    cust.call(json!({"type":"rate","conversation":cid,"score":5}), "ack").await;
    let list = list_conversations(&srv, &token, "support", "closed").await;
    assert_eq!(last_seq_in(list), closed_seq + 1, "the rating event is counted");
}
