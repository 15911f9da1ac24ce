//! When nobody is online to answer: the server tells the widget so (in
//! `welcome` and as it changes), and a customer may leave an email address
//! with the conversation, which stays queued for when an agent comes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const BO: (&str, &str, u32) = ("bo", "pw-bo-1", 5);

fn room<'a>(welcome: &'a Value, name: &str) -> &'a Value {
    welcome["rooms"].as_array().and_then(|r| r.iter().find(|r| r["name"] == name)).unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_says_which_rooms_have_someone_online_and_customers_hear_when_it_changes() {
    let srv = Server::with_agents(&[BO], &["--rooms", "support,sales", "--manual-rooms", "sales"]);
    let mut ann = Client::customer(&srv, "Ann").await;
    assert_eq!(room(&ann.welcome, "support"), &json!({"name":"support","manual":false,"online":false}));
    assert_eq!(room(&ann.welcome, "sales"), &json!({"name":"sales","manual":true,"online":false}));

    // An agent signed in but not in the room is not someone to answer there.
    let mut bo = Client::agent(&srv, BO.0, BO.1).await;
    assert_eq!(room(&bo.welcome, "sales")["manual"], true, "agents learn the rooms too");
    bo.join("support").await;
    let f = ann.recv_until("room_status", |f| f["type"] == "room_status").await;
    assert_eq!(f, json!({"type":"room_status","room":"support","online":true}));
    let later = Client::customer(&srv, "Cy").await;
    assert_eq!(room(&later.welcome, "support")["online"], true);
    assert_eq!(room(&later.welcome, "sales")["online"], false);

    // Away counts as not online; back online is told again.
    bo.call(json!({"type":"status","availability":"away"}), "ack").await;
    let f = ann.recv_until("offline again", |f| f["type"] == "room_status").await;
    assert_eq!(f["online"], false, "{f}");
    bo.call(json!({"type":"status","availability":"online"}), "ack").await;
    let f = ann.recv_until("online again", |f| f["type"] == "room_status").await;
    assert_eq!(f["online"], true, "{f}");
    bo.disconnect().await;
    let f = ann.recv_until("agent gone", |f| f["type"] == "room_status").await;
    assert_eq!(f["online"], false, "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_leaves_an_email_and_is_served_when_an_agent_comes() {
    let dir = data_dir();
    add_agent(dir.path(), BO.0, BO.1, 5);
    let mut srv = Server::start_in(&dir, &[]);
    let mut ann = Client::customer(&srv, "Ann").await;
    let token = ann.token.clone().expect("resume token");
    let cid = str_of(&ann.open("support").await, "id").to_string();
    ann.say(&cid, "k1", "My parcel never came.").await;
    for bad in ["", "ann", "ann@", "@example.com", "ann@example", "a b@example.com", "ann@@example.com"] {
        let e = ann.call_err(json!({"type":"contact","conversation":cid,"email":bad}), "bad_request").await;
        assert!(str_of(&e, "message").starts_with("email:"), "{bad:?}: {e}");
    }
    let long = format!("{}@example.com", "a".repeat(250));
    ann.call_err(json!({"type":"contact","conversation":cid,"email":long}), "bad_request").await;
    ann.call(json!({"type":"contact","conversation":cid,"email":" ann@example.com "}), "ack").await;
    let mut other = Client::customer(&srv, "Eve").await;
    other.call_err(json!({"type":"contact","conversation":cid,"email":"eve@example.com"}), "not_found").await;
    srv.kill9();

    // Stored with the conversation: after a restart the agent who comes sees it.
    let srv = Server::start_in(&dir, &[]);
    let mut bo = Client::agent(&srv, BO.0, BO.1).await;
    let room = bo.join("support").await;
    assert_eq!(room["queue"][0]["contact_email"], "ann@example.com", "{room}");
    let active = bo.recv_conversation(&cid, "assigned", |c| c["status"] == "active").await;
    assert_eq!(active["contact_email"], "ann@example.com");
    bo.call_err(json!({"type":"contact","conversation":cid,"email":"x@example.com"}), "forbidden").await;
    let (_, list) = get_json(&srv, "/api/conversations?room=support", Some(&login(&srv, BO.0, BO.1).await)).await;
    assert_eq!(list[0]["contact_email"], "ann@example.com", "{list}");
    // The customer, back, sees the reply.
    let mut ann = Client::customer_with_token(&srv, "Ann", &token).await;
    bo.say(&cid, "r1", "Sorry for the wait: it ships today.").await;
    ann.recv_message("the reply", |m| m["body"] == "Sorry for the wait: it ships today.").await;
    ann.settle(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_check_tells_a_page_whether_its_origin_may_connect() {
    let srv = Server::start(&["--allowed-origins", "https://shop.example.com"]);
    for (origin, allowed) in [("https://shop.example.com", true), ("https://evil.example", false)] {
        let resp = http()
            .get(srv.url("/api/embed-check"))
            .header("Origin", origin)
            .send()
            .await
            .expect("GET /api/embed-check");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        let v: Value = resp.json().await.expect("JSON");
        assert_eq!(v["allowed"], allowed, "{origin}: {v}");
        assert_eq!(v["origin"], origin);
    }
    let refused = Client::connect_with_headers(&srv, &[("Origin", "https://evil.example")]).await;
    assert!(refused.is_err(), "the upgrade itself is refused, as embed-check said");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_flapping_between_away_and_online_does_not_flood_customers() {
    let srv = Server::with_agents(&[BO], &[]);
    let mut idle = Client::customer(&srv, "Idle").await;
    let mut bo = Client::agent_in(&srv, BO.0, BO.1, "support").await;
    for _ in 0..15 {
        bo.call(json!({"type":"status","availability":"away"}), "ack").await;
        bo.call(json!({"type":"status","availability":"online"}), "ack").await;
    }
    bo.call(json!({"type":"status","availability":"away"}), "ack").await;
    idle.settle(Duration::from_millis(2500)).await;
    let told: Vec<bool> =
        idle.seen(|f| f["type"] == "room_status").iter().map(|f| f["online"].as_bool().unwrap_or(true)).collect();
    assert!(told.len() <= 4, "31 changes in well under a second were told {} times: {told:?}", told.len());
    assert_eq!(told.last(), Some(&false), "the last word is the state as it is: {told:?}");
}
