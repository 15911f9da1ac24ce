//! The chat core, the ChatServer actor of a node, in rooms of its own:
//! - `server`   the actor: its state, start-up, and the handlers of its messages
//! - `requests` one function per client request (PROTOCOL.md §5)
//! - `access`   who may do what with a conversation
//! - `writes`   the write pipeline: submit, commit, then change memory
//! - `assign`   automatic assignment, grace periods, abandoned customers
//! - `rooms`    room status, presence and queue positions
//! - `sessions` sessions coming and going, cut-offs and revocations
//! - `deliver`  the one entry through which effects reach sessions
//! - `cluster`  a node among several: leases, presence across nodes, in-order delivery
//! - `messages` what other actors say to the ChatServer
//! - `state`    the plain in-memory structs and the assignment rule

mod access;
mod assign;
mod cluster;
mod deliver;
pub mod messages;
mod requests;
mod rooms;
pub mod server;
mod sessions;
pub mod state;
mod writes;

pub use server::ChatServer;
