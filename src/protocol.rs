//! Protocol v1 (PROTOCOL.md): the objects, the client requests, the server
//! frames, close codes, and the one encoder used for every outgoing frame.

use crate::error::{ApiError, ErrorCode};
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Unix milliseconds.
pub type Ts = i64;

/// Close codes of PROTOCOL.md §2.4.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const INVALID_UTF8: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    /// Reconnect and `sync`: the client went silent past the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    pub const TOO_SLOW: u16 = 4008;
    pub const UNAUTHORIZED: u16 = 4501;
}

pub const MAX_REF_CHARS: usize = 64;
pub const MAX_CLIENT_ID_CHARS: usize = 64;
pub const MAX_NAME_CHARS: usize = 64;

/// Why a display name cannot be used, or `None` when it can: control
/// characters, bidirectional overrides and invisible format characters
/// (which let a name show as something else), and names that pass for the
/// system ("Parley", "system").
pub fn name_problem(name: &str) -> Option<&'static str> {
    if char_len(name) > MAX_NAME_CHARS {
        return Some("at most 64 characters");
    }
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{061C}' | '\u{FEFF}')
    };
    if name.chars().any(hidden) {
        return Some("control, direction-changing and invisible characters are not allowed");
    }
    let plain: String = name.chars().filter(|c| c.is_alphanumeric()).collect::<String>().to_lowercase();
    if plain == "parley" || plain == "system" {
        return Some("that name is reserved for the system");
    }
    None
}
pub const MAX_COMMENT_CHARS: usize = 1000;
pub const SYNC_DEFAULT_LIMIT: u32 = 100;
pub const SYNC_MAX_LIMIT: u32 = 500;

pub fn now_ms() -> Ts {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Agent,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::System => "system",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "customer" => Some(Role::Customer),
            "agent" => Some(Role::Agent),
            "system" => Some(Role::System),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub role: Role,
    pub name: String,
}

impl User {
    pub fn system() -> User {
        User { id: "system".into(), role: Role::System, name: "Parley".into() }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConvStatus {
    Queued,
    Active,
    Closed,
}

impl ConvStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvStatus::Queued => "queued",
            ConvStatus::Active => "active",
            ConvStatus::Closed => "closed",
        }
    }
    pub fn parse(s: &str) -> Option<ConvStatus> {
        match s {
            "queued" => Some(ConvStatus::Queued),
            "active" => Some(ConvStatus::Active),
            "closed" => Some(ConvStatus::Closed),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Conversation {
    pub id: String,
    pub room: String,
    pub status: ConvStatus,
    pub customer: User,
    pub agent: Option<User>,
    pub created_at: Ts,
    pub last_seq: u64,
    pub queue_position: Option<u32>,
    /// An email address the customer left for a reply by mail (`contact`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_email: Option<String>,
}

/// A room as `welcome` describes it: whether agents take conversations
/// themselves (`manual`), and whether anyone is online to answer.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RoomInfo {
    pub name: String,
    pub manual: bool,
    pub online: bool,
}

/// Longest email address a customer may leave (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;

/// Whether `s` looks like an email address: one `@` with text on both sides,
/// a dot in the domain, no spaces or control characters.
pub fn plausible_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && char_len(s) <= MAX_EMAIL_CHARS
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MsgKind {
    Text,
    Note,
    Event,
}

impl MsgKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MsgKind::Text => "text",
            MsgKind::Note => "note",
            MsgKind::Event => "event",
        }
    }
    pub fn parse(s: &str) -> Option<MsgKind> {
        match s {
            "text" => Some(MsgKind::Text),
            "note" => Some(MsgKind::Note),
            "event" => Some(MsgKind::Event),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Message {
    pub id: String,
    pub conversation: String,
    pub seq: u64,
    pub ts: Ts,
    pub from: User,
    pub kind: MsgKind,
    pub body: String,
    pub client_id: Option<String>,
    pub event: Option<Value>,
}

impl Message {
    /// What customers never receive: agents' notes, and events marked
    /// `"internal": true` (the team's own churn, such as a conversation going
    /// back to the queue because its agent went away; the customer sees the
    /// conversation waiting again, not why). Both show in `hidden_seqs`.
    pub fn hidden_from_customers(&self) -> bool {
        match self.kind {
            MsgKind::Note => true,
            MsgKind::Event => self.event.as_ref().is_some_and(|e| e["internal"] == true),
            MsgKind::Text => false,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Online,
    Away,
    Offline,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Presence {
    pub agent: User,
    pub room: String,
    pub availability: Availability,
    pub active: u32,
    pub max: u32,
}

#[derive(Serialize, Clone, Copy, Debug)]
pub struct Limits {
    pub max_body_chars: usize,
    pub max_frame_bytes: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

// ---------------------------------------------------------------- requests

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub role: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Open {
    #[serde(default)]
    pub room: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Send {
    pub conversation: String,
    pub client_id: String,
    pub body: String,
    #[serde(default)]
    pub internal: bool,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    pub conversation: String,
    #[serde(default)]
    pub after_seq: u64,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Typing {
    pub conversation: String,
    pub on: bool,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Read {
    pub conversation: String,
    pub seq: u64,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RoomReq {
    pub room: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConvReq {
    pub conversation: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub conversation: String,
    #[serde(default)]
    pub to_agent: Option<String>,
    #[serde(default)]
    pub to_room: Option<String>,
}

/// `contact`: the customer leaves an email address for a reply by mail.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub conversation: String,
    pub email: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub conversation: String,
    pub score: i64,
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub availability: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// A client request after decoding, without its `ref`.
#[derive(Debug, Clone)]
pub enum Request {
    Hello(Hello),
    Open(Open),
    Send(Send),
    Sync(Sync),
    Typing(Typing),
    Read(Read),
    Join(RoomReq),
    Leave(RoomReq),
    Accept(ConvReq),
    Transfer(Transfer),
    Close(ConvReq),
    Rate(Rate),
    Contact(Contact),
    Status(Status),
    Ping,
    Pong,
}

impl Request {
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::Open(_) => "open",
            Request::Send(_) => "send",
            Request::Sync(_) => "sync",
            Request::Typing(_) => "typing",
            Request::Read(_) => "read",
            Request::Join(_) => "join",
            Request::Leave(_) => "leave",
            Request::Accept(_) => "accept",
            Request::Transfer(_) => "transfer",
            Request::Close(_) => "close",
            Request::Rate(_) => "rate",
            Request::Contact(_) => "contact",
            Request::Status(_) => "status",
            Request::Ping => "ping",
            Request::Pong => "pong",
        }
    }
}

/// A decoded frame: the request and the `ref` to echo on every direct reply.
#[derive(Debug, Clone)]
pub struct Frame {
    pub r#ref: Option<String>,
    pub req: Request,
}

/// A frame that could not be decoded: the error to send, with the `ref` when
/// one could still be read.
#[derive(Debug)]
pub struct DecodeError {
    pub r#ref: Option<String>,
    pub error: ApiError,
}

fn field<T: serde::de::DeserializeOwned>(map: Map<String, Value>, ty: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::bad_request(format!("{ty}: {inner}"))
        } else {
            ApiError::bad_request(format!("{ty}: field `{path}`: {inner}"))
        }
    })
}

/// Decodes one text frame. Every failure names what is wrong (PROTOCOL.md §3).
pub fn decode(text: &str) -> Result<Frame, DecodeError> {
    let fail = |r: Option<String>, e: ApiError| DecodeError { r#ref: r, error: e };
    let mut map = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(fail(None, ApiError::bad_request("a frame must be a JSON object"))),
        Err(e) => return Err(fail(None, ApiError::bad_request(format!("invalid JSON: {e}")))),
    };
    let r#ref = match map.remove("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_REF_CHARS => Some(s),
        Some(Value::String(_)) => {
            return Err(fail(None, ApiError::bad_request(format!("ref: longer than {MAX_REF_CHARS} characters"))))
        }
        Some(_) => return Err(fail(None, ApiError::bad_request("ref: must be a string"))),
    };
    let ty = match map.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(fail(r#ref, ApiError::bad_request("type: must be a string"))),
        None => return Err(fail(r#ref, ApiError::bad_request("type: missing field `type`"))),
    };
    let req = match ty.as_str() {
        "hello" => field(map, "hello").map(Request::Hello),
        "open" => field(map, "open").map(Request::Open),
        "send" => field(map, "send").map(Request::Send),
        "sync" => field(map, "sync").map(Request::Sync),
        "typing" => field(map, "typing").map(Request::Typing),
        "read" => field(map, "read").map(Request::Read),
        "join" => field(map, "join").map(Request::Join),
        "leave" => field(map, "leave").map(Request::Leave),
        "accept" => field(map, "accept").map(Request::Accept),
        "transfer" => field(map, "transfer").map(Request::Transfer),
        "close" => field(map, "close").map(Request::Close),
        "rate" => field(map, "rate").map(Request::Rate),
        "contact" => field(map, "contact").map(Request::Contact),
        "status" => field(map, "status").map(Request::Status),
        "ping" => field::<Empty>(map, "ping").map(|_| Request::Ping),
        "pong" => field::<Empty>(map, "pong").map(|_| Request::Pong),
        other => Err(ApiError::bad_request(format!("type: unknown type `{other}`"))),
    };
    match req {
        Ok(req) => Ok(Frame { r#ref, req }),
        Err(e) => Err(fail(r#ref, e)),
    }
}

// ---------------------------------------------------------------- server frames

#[derive(Serialize)]
pub struct HistoryBody<'a> {
    pub conversation: &'a str,
    pub messages: &'a [Message],
    pub more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_seqs: Option<&'a [u64]>,
    /// Every member's read position (a compatible addition): a client that
    /// reconnects shows "seen" without keeping it itself.
    pub reads: &'a [ReadMark],
}

/// How far one member has read a conversation.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ReadMark {
    pub user: String,
    pub seq: u64,
}

/// Every frame the server sends (PROTOCOL.md §6).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Out<'a> {
    Welcome {
        session: &'a str,
        node: &'a str,
        user: &'a User,
        token: Option<&'a str>,
        conversations: &'a [Conversation],
        heartbeat_ms: u64,
        limits: Limits,
        /// The server's rooms (a compatible addition to version 1).
        rooms: &'a [RoomInfo],
    },
    /// Whether anyone is online to answer in a room changed (to customers).
    RoomStatus {
        room: &'a str,
        online: bool,
    },
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        conversation: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ts: Option<Ts>,
    },
    Message {
        message: &'a Message,
    },
    Conversation {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        conversation: &'a Conversation,
    },
    History {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        #[serde(flatten)]
        body: HistoryBody<'a>,
    },
    Typing {
        conversation: &'a str,
        from: &'a User,
        on: bool,
    },
    Read {
        conversation: &'a str,
        from: &'a User,
        seq: u64,
    },
    Room {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        room: &'a str,
        /// The oldest queued conversations, at most [`ROOM_QUEUE_LISTED`].
        queue: &'a [Conversation],
        /// How many wait in all (the rest: `GET /api/conversations?room=&status=queued`).
        queue_total: usize,
        agents: &'a [Presence],
    },
    Presence(&'a Presence),
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        code: ErrorCode,
        message: &'a str,
    },
    Ping {},
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
}

impl Out<'_> {
    /// Serializes once; the result is shared by every recipient (cheap clones).
    pub fn encode(&self) -> ByteString {
        // Serializing these plain structs cannot fail: no maps with non-string
        // keys, no custom serializers that error.
        ByteString::from(serde_json::to_string(self).unwrap_or_default())
    }
}

pub fn ack(r#ref: Option<&str>) -> ByteString {
    Out::Ack { r#ref, client_id: None, conversation: None, seq: None, id: None, ts: None }.encode()
}

pub fn error_frame(r#ref: Option<&str>, e: &ApiError) -> ByteString {
    Out::Error { r#ref, code: e.code, message: &e.message }.encode()
}

/// A shared, serialized frame.
pub type Encoded = ByteString;

/// Queued conversations listed in a `room` reply (the oldest first); the
/// reply's `queue_total` says how many wait in all.
pub const ROOM_QUEUE_LISTED: usize = 100;

/// Shared user record (cloned into many places).
pub type SharedUser = Arc<User>;

/// Counts Unicode scalar values, the unit of every length limit in the protocol.
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}
