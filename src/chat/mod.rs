//! The chat core: `server` (the ChatServer actor: routing, permissions,
//! assignment), `deliver` (the one entry through which effects reach
//! sessions), `messages` (what actors say to it), `state` (its plain
//! in-memory structs and the assignment rule).

mod deliver;
pub mod messages;
pub mod server;
pub mod state;

pub use server::ChatServer;
