//! The floor of scripts/bench: a minimal tokio WebSocket room relay with no
//! protocol, storage or acknowledgements. A client connects to
//! `/ws?room=NAME`; every text frame it sends is copied to the other members
//! of that room. One thread, like a Parley node pinned to one core.
//!   cargo run --release --example floor-relay -- 127.0.0.1:18602 [--ack]
//!
//! With `--ack` it also answers every text frame to its sender with a short
//! frame, `ack:` and the frame's first two fields (`ack:t:MICROS`): the one
//! frame per message that Parley's protocol adds, with nothing else, so the
//! benchmark can tell what that frame alone costs on this machine.

use futures_util::{SinkExt, StreamExt};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Rooms = Rc<RefCell<HashMap<String, Vec<(u64, UnboundedSender<Message>)>>>>;

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18602".into());
    let ack = std::env::args().skip(2).any(|a| a == "--ack");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = match TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor-relay: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        println!("listening http={addr}");
        let rooms: Rooms = Rc::default();
        let mut next_id = 0u64;
        while let Ok((stream, _)) = listener.accept().await {
            next_id += 1;
            tokio::task::spawn_local(member(stream, next_id, rooms.clone(), ack));
        }
    });
}

async fn member(stream: TcpStream, id: u64, rooms: Rooms, ack: bool) {
    let _ = stream.set_nodelay(true);
    let mut room = String::from("lobby");
    // The callback's error type is tungstenite's own HTTP response.
    #[allow(clippy::result_large_err)]
    let pick_room = |req: &Request, res: Response| {
        if let Some(q) = req.uri().query() {
            if let Some(r) = q.split('&').find_map(|kv| kv.strip_prefix("room=")) {
                room = r.to_string();
            }
        }
        Ok(res)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, pick_room).await else { return };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();
    let own = tx.clone();
    rooms.borrow_mut().entry(room.clone()).or_default().push((id, tx));
    let writer = tokio::task::spawn_local(async move {
        while let Some(m) = rx.recv().await {
            // Everything already queued goes out in one flush.
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(m)) = source.next().await {
        if let Message::Text(t) = &m {
            if ack {
                let end = t.match_indices(':').nth(1).map_or(t.len(), |(i, _)| i);
                let _ = own.send(Message::Text(format!("ack:{}", &t[..end])));
            }
            if let Some(members) = rooms.borrow().get(&room) {
                for (other, tx) in members {
                    if *other != id {
                        let _ = tx.send(m.clone());
                    }
                }
            }
        }
    }
    let mut all = rooms.borrow_mut();
    if let Some(members) = all.get_mut(&room) {
        members.retain(|(other, _)| *other != id);
        if members.is_empty() {
            all.remove(&room);
        }
    }
    writer.abort();
}
