//! Parley: a live-chat customer-support server.
//!
//! Crate map (data flows down: transport -> session -> ChatServer -> store):
//! - `config`   every setting, its default and its environment variable
//! - `protocol` protocol v1 types, close codes and the frame encoder
//! - `error`    the error enum and its mapping to codes and HTTP statuses
//! - `abuse`    per-client limits: client address, login throttle, connections
//!   per address, keyed token buckets
//! - `auth`     password hashes, signed tokens, ids
//! - `session`  one actor per connection (WebSocket), rate limit, jam switch
//! - `chat`     the ChatServer actor: routing, permissions, assignment;
//!   `chat::deliver`, the one entry through which effects reach sessions
//! - `backplane` where committed effects go (in-process loopback on one node)
//! - `store`    the Store and Admin traits (the store arbitrates routing), and
//!   one place that opens the configured store; `store::sqlite` in a folder:
//!   schema, writer, apply, msglog, reads, admin
//! - `http`     REST API, WebSocket upgrade, pages, metrics
//! - `serve`    wiring it all together and running until a signal
//! - `cli`      the `parley agent ...` commands
//! - `webhooks` signed event posts to outside receivers, from a bounded queue

pub mod abuse;
pub mod auth;
pub mod backplane;
pub mod chat;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod protocol;
pub mod serve;
pub mod session;
pub mod store;
pub mod webhooks;
