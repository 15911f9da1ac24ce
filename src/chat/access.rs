//! Who may do what (PROTOCOL.md §5 "member"): access to a conversation,
//! capacity, and what a customer may see of a page of history.

use super::messages::*;
use super::server::*;
use super::state::*;
use crate::error::ApiError;
use crate::protocol::{Message, Role, User};

impl ChatServer {
    pub(super) fn access(&self, who: &Who, conv: &Conv) -> Result<Access, ApiError> {
        match who.user.role {
            Role::Customer if conv.customer.id == who.user.id => Ok(Access::Customer),
            Role::Customer | Role::System => Err(not_found_conv(&conv.id)),
            Role::Agent => {
                if conv.agent.as_ref().is_some_and(|a| a.id == who.user.id) {
                    return Ok(Access::Assignee);
                }
                match who.sid {
                    None => Ok(Access::RoomAgent),
                    Some(sid) if self.sessions.get(&sid).is_some_and(|s| s.rooms.contains(&conv.room)) => {
                        Ok(Access::RoomAgent)
                    }
                    Some(_) => Err(ApiError::forbidden(format!(
                        "not a member of conversation {}: join room `{}` or be its assignee",
                        conv.id, conv.room
                    ))),
                }
            }
        }
    }

    pub(super) fn conv_for(&self, who: &Who, cid: &str) -> Result<(&Conv, Access), ApiError> {
        let conv = self.st.convs.get(cid).ok_or_else(|| not_found_conv(cid))?;
        let access = self.access(who, conv)?;
        Ok((conv, access))
    }

    pub(super) fn check_capacity(&self, agent_id: &str) -> Result<(), ApiError> {
        match self.st.agents.get(agent_id) {
            Some(a) if (a.load() as u32) < a.max => Ok(()),
            Some(a) => Err(ApiError::conflict(format!("{} is at capacity ({} of {})", a.user.name, a.load(), a.max))),
            None => Err(ApiError::not_found(format!("no agent {agent_id}"))),
        }
    }
}

/// The caller of a request, for permission checks.
pub(super) struct Who {
    pub(super) user: User,
    /// The WebSocket session, if any (HTTP callers have none).
    pub(super) sid: Option<u64>,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub(super) enum Access {
    Customer,
    Assignee,
    RoomAgent,
}

pub(super) fn not_found_conv(cid: &str) -> ApiError {
    ApiError::not_found(format!("no conversation {cid}"))
}

pub(super) fn no_room(room: &str) -> ApiError {
    ApiError::not_found(format!("no room `{room}`"))
}

pub(super) fn agent_only(who: &Who, what: &str) -> Result<(), ApiError> {
    if who.user.role == Role::Agent {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("{what}: agents only")))
    }
}

/// What a caller may see of a page of history: customers never see notes,
/// and learn their seqs instead so a gap is not mistaken for a loss.
pub(super) fn page_for(access: Access, messages: Vec<Message>, more: bool) -> HistoryPage {
    if access != Access::Customer {
        return HistoryPage { messages, more, hidden_seqs: None };
    }
    let (notes, visible): (Vec<Message>, Vec<Message>) = messages.into_iter().partition(|m| m.hidden_from_customers());
    HistoryPage { messages: visible, more, hidden_seqs: Some(notes.iter().map(|m| m.seq).collect()) }
}
