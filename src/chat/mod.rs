//! The chat core: `server` (the ChatServer actor: routing, permissions,
//! assignment, fan-out), `messages` (what actors say to it), `state` (its
//! plain in-memory structs and the assignment rule).

pub mod messages;
pub mod server;
pub mod state;

pub use server::ChatServer;
