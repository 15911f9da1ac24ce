//! Every setting: its flag, its `PARLEY_*` environment variable, its default,
//! validated once into [`Config`].

use clap::{Args, Parser, Subcommand};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Default interval between server pings, in milliseconds.
pub const DEFAULT_HEARTBEAT_MS: u64 = 10_000;
/// Default time a new connection has to send `hello`, in milliseconds.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 10_000;
/// Default time a vanished agent keeps their conversations, in milliseconds.
pub const DEFAULT_AGENT_GRACE_MS: u64 = 30_000;
/// Default lifetime of an agent token, in seconds (12 hours).
pub const DEFAULT_AGENT_TOKEN_TTL_SECS: u64 = 12 * 3600;
/// Lifetime of a customer resume token, in seconds (30 days).
pub const CUSTOMER_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;

#[derive(Parser, Debug)]
#[command(name = "parley", version, about = "Parley: a self-hosted live-chat customer-support server")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default when no command is given).
    Serve(Box<ServeArgs>),
    /// Copy a single node's SQLite data into an empty PostgreSQL database
    /// (agents, conversations, messages, read markers, ratings), in one
    /// transaction; the counts are checked before it commits.
    Migrate {
        /// The SQLite database to copy (DATA_DIR/parley.db); its server must be stopped.
        #[arg(long)]
        from_sqlite: PathBuf,
        /// The PostgreSQL database to copy into: postgres://USER@HOST:PORT/DB (must be empty).
        #[arg(long, env = "PARLEY_DATABASE", hide_env_values = true)]
        database: String,
    },
    /// Manage agent accounts.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
}

#[derive(Args, Debug, Clone)]
pub struct DataDirArg {
    /// Folder holding parley.db and the signing secret.
    #[arg(long, env = "PARLEY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// PostgreSQL instead of the SQLite file: postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "PARLEY_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Create an agent account.
    Add {
        name: String,
        /// The password (visible in the process list; prefer --password-stdin).
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// How many conversations this agent serves at once (default: the server's --max-active).
        #[arg(long)]
        max_active: Option<u32>,
        /// The account is a bot (served over the TCP gateway or HTTP).
        #[arg(long)]
        bot: bool,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// List agent accounts.
    List {
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Change an agent's password; every token issued before is revoked and
    /// the agent's open sessions end within seconds (they sign in again).
    Passwd {
        name: String,
        /// The new password (visible in the process list; prefer --password-stdin).
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the new password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Remove an agent account (a running server ends its sessions within
    /// seconds and returns its conversations to the queue at once).
    Remove {
        name: String,
        #[command(flatten)]
        data: DataDirArg,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// HTTP and WebSocket address.
    #[arg(long, env = "PARLEY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    #[command(flatten)]
    pub data: DataDirArg,
    /// Rooms (queues), comma separated.
    #[arg(long, env = "PARLEY_ROOMS", value_delimiter = ',', default_value = "support")]
    pub rooms: Vec<String>,
    /// Rooms where agents `accept` conversations instead of automatic assignment.
    #[arg(long, env = "PARLEY_MANUAL_ROOMS", value_delimiter = ',')]
    pub manual_rooms: Vec<String>,
    /// Origins allowed to open a WebSocket, comma separated (the server's own origin always is).
    #[arg(long, env = "PARLEY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Interval between server pings; 3 x this of silence closes a connection.
    #[arg(long, env = "PARLEY_HEARTBEAT_MS", default_value_t = DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    /// How long a new connection has to send `hello`.
    #[arg(long, env = "PARLEY_HELLO_TIMEOUT_MS", default_value_t = DEFAULT_HELLO_TIMEOUT_MS)]
    pub hello_timeout_ms: u64,
    /// Default capacity of an agent (conversations at once).
    #[arg(long, env = "PARLEY_MAX_ACTIVE", default_value_t = 5)]
    pub max_active: u32,
    /// How long an agent whose sessions all went away keeps their conversations.
    #[arg(long, env = "PARLEY_AGENT_GRACE_MS", default_value_t = DEFAULT_AGENT_GRACE_MS)]
    pub agent_grace_ms: u64,
    /// Longest message body, in Unicode scalar values.
    #[arg(long, env = "PARLEY_MAX_BODY_CHARS", default_value_t = 4000)]
    pub max_body_chars: usize,
    /// Largest WebSocket frame accepted, in bytes (larger: close 1009).
    #[arg(long, env = "PARLEY_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: usize,
    /// Sustained requests per second per connection.
    #[arg(long, env = "PARLEY_RATE_PER_SEC", default_value_t = 20)]
    pub rate_per_sec: u32,
    /// Burst of requests per connection above the sustained rate.
    #[arg(long, env = "PARLEY_RATE_BURST", default_value_t = 40)]
    pub rate_burst: u32,
    /// Outbound queue bound per session, in messages (overflow: close 4008).
    #[arg(long, env = "PARLEY_QUEUE_MESSAGES", default_value_t = 1024)]
    pub queue_messages: usize,
    /// Outbound queue bound per session, in bytes (overflow: close 4008).
    #[arg(long, env = "PARLEY_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub queue_bytes: usize,
    /// Token signing secret (otherwise generated once and kept in the data dir).
    #[arg(long, env = "PARLEY_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Name of this node, reported in `welcome.node` and unique in a cluster
    /// (default: the host name and the --listen port, e.g. chat-1:8080).
    #[arg(long, env = "PARLEY_NODE_ID")]
    pub node_id: Option<String>,
    /// Redis for a cluster's backplane: redis://HOST:PORT. With --database
    /// postgres://…, this node serves as one of several behind a load balancer.
    #[arg(long, env = "PARLEY_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// Lifetime of agent tokens, in seconds.
    #[arg(long, env = "PARLEY_AGENT_TOKEN_TTL_SECS", default_value_t = DEFAULT_AGENT_TOKEN_TTL_SECS)]
    pub agent_token_ttl_secs: u64,
    /// TCP gateway for bots and services (4-byte length + JSON frames); empty disables it.
    /// Default 127.0.0.1:9000 (if that port is taken and the flag was not given, the gateway stays off).
    #[arg(long, env = "PARLEY_TCP_LISTEN")]
    pub tcp_listen: Option<String>,
    /// Rooms whose new conversations go to a bot first while it is connected: ROOM=BOTNAME, comma separated.
    #[arg(long, env = "PARLEY_BOT_FIRST", value_delimiter = ',')]
    pub bot_first: Vec<String>,
    /// Webhook receiver URL (repeatable).
    #[arg(long = "webhook", env = "PARLEY_WEBHOOKS", value_delimiter = ',')]
    pub webhooks: Vec<String>,
    /// Webhook events to send, comma separated (default: all).
    #[arg(long, env = "PARLEY_WEBHOOK_EVENTS", value_delimiter = ',')]
    pub webhook_events: Vec<String>,
    /// Key for the HMAC-SHA256 signature of webhook bodies (X-Parley-Signature); required with --webhook.
    #[arg(long, env = "PARLEY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Time a webhook receiver has to answer, per try.
    #[arg(long, env = "PARLEY_WEBHOOK_TIMEOUT_MS", default_value_t = 500)]
    pub webhook_timeout_ms: u64,
    /// Also send internal notes as message.created webhooks.
    #[arg(long, env = "PARLEY_WEBHOOK_NOTES")]
    pub webhook_notes: bool,
    /// Proxies whose X-Forwarded-For (client address) and X-Forwarded-Host/-Proto
    /// headers are believed: IP addresses or CIDR networks, comma separated.
    #[arg(long, env = "PARLEY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// The address users reach the server at (e.g. https://chat.example.com):
    /// when set, it alone defines the server's own origin for the Origin check.
    #[arg(long, env = "PARLEY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Open connections (WebSocket and TCP gateway) one client address may hold; 0: no limit.
    #[arg(long, env = "PARLEY_MAX_CONNS_PER_ADDRESS", default_value_t = 200)]
    pub max_conns_per_address: usize,
    /// New conversations one client address may open per minute; 0: no limit.
    #[arg(long, env = "PARLEY_OPENS_PER_MINUTE", default_value_t = 30)]
    pub opens_per_minute: u32,
    /// Wrong passwords one client address may try per minute before logins from it get 429.
    #[arg(long, env = "PARLEY_LOGIN_FAILURES_PER_ADDRESS", default_value_t = 10)]
    pub login_failures_per_address: u32,
    /// Wrong passwords for one account name per minute, from anywhere, before its logins get 429.
    #[arg(long, env = "PARLEY_LOGIN_FAILURES_PER_ACCOUNT", default_value_t = 30)]
    pub login_failures_per_account: u32,
    /// A queued conversation whose customer has had no session for this long
    /// leaves the queue as abandoned (closed, with an event), in milliseconds.
    #[arg(long, env = "PARLEY_ABANDON_AFTER_MS", default_value_t = 300_000)]
    pub abandon_after_ms: u64,
    /// How long automatic assignment passes over the agent who transferred a
    /// conversation back to a queue, in milliseconds; after it they may get it
    /// again if nobody else can take it.
    #[arg(long, env = "PARLEY_TRANSFER_PASS_OVER_MS", default_value_t = 60_000)]
    pub transfer_pass_over_ms: u64,
    /// SQLite durability: `full` fsyncs every commit (survives power loss),
    /// `normal` survives a process crash but may lose the last commits on power loss.
    #[arg(long, env = "PARLEY_SYNC", default_value = "full", value_parser = ["full", "normal"])]
    pub sync: String,
    /// How long (ms) new messages may stay in the store's append-only message
    /// log before they are folded into the message table, both under
    /// traffic and once writes stop. Longer: fewer pages written per
    /// message, more memory and a longer fold at the next start after a crash.
    #[arg(long, env = "PARLEY_FOLD_AFTER_MS", default_value_t = 4000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub fold_after_ms: u64,
    /// Page cache of the store's connections together, in MiB (half for the
    /// writer, half shared by the readers). More: fewer reads from disk.
    #[arg(long, env = "PARLEY_STORE_CACHE_MIB", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(4..=65_536))]
    pub store_cache_mib: u32,
}

/// Validated settings of a running server.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub rooms: Vec<String>,
    pub manual_rooms: BTreeSet<String>,
    pub allowed_origins: Vec<String>,
    pub heartbeat_ms: u64,
    pub hello_timeout_ms: u64,
    pub max_active: u32,
    pub agent_grace_ms: u64,
    pub max_body_chars: usize,
    pub max_frame_bytes: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub secret: Option<String>,
    pub node_id: String,
    /// Redis URL (`--redis`): this node is part of a cluster.
    pub redis: Option<String>,
    pub agent_token_ttl_secs: u64,
    pub sync_full: bool,
    pub fold_after: std::time::Duration,
    pub store_cache_mib: u32,
    /// PostgreSQL URL (`--database`); None: SQLite in the data dir.
    pub database: Option<String>,
    /// TCP gateway address, and whether it was asked for explicitly.
    pub tcp_listen: Option<(String, bool)>,
    /// Room -> bot account name.
    pub bot_first: std::collections::BTreeMap<String, String>,
    pub webhooks: Vec<String>,
    pub webhook_events: BTreeSet<String>,
    pub webhook_secret: Option<String>,
    pub webhook_timeout_ms: u64,
    pub webhook_notes: bool,
    pub trusted_proxies: Vec<crate::abuse::Net>,
    /// The server's own origin (`scheme://host[:port]`), from --public-url.
    pub public_origin: Option<String>,
    pub max_conns_per_address: usize,
    pub opens_per_minute: u32,
    pub login_failures_per_address: u32,
    pub login_failures_per_account: u32,
    pub abandon_after: std::time::Duration,
    pub transfer_pass_over: std::time::Duration,
}

/// Every webhook event name.
pub const WEBHOOK_EVENTS: &[&str] =
    &["conversation.created", "conversation.assigned", "conversation.closed", "conversation.rated", "message.created"];
/// Default TCP gateway address.
pub const DEFAULT_TCP_LISTEN: &str = "127.0.0.1:9000";

/// `scheme://host[:port]` of an http(s) URL, lower-cased, without path.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    if host.is_empty() || host.contains('@') {
        return None;
    }
    let host = match (scheme.as_str(), host.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
        _ => host,
    };
    Some(format!("{scheme}://{host}"))
}

fn valid_room_name(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Config {
    /// Checks every setting once; the error says which flag to fix.
    pub fn from_args(a: ServeArgs) -> Result<Config, String> {
        let rooms: Vec<String> = a.rooms.iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
        if rooms.is_empty() {
            return Err("--rooms: give at least one room".into());
        }
        for r in &rooms {
            if !valid_room_name(r) {
                return Err(format!("--rooms: `{r}` is not a valid room name (letters, digits, - and _, at most 64)"));
            }
        }
        let mut seen = BTreeSet::new();
        for r in &rooms {
            if !seen.insert(r) {
                return Err(format!("--rooms: `{r}` is listed twice"));
            }
        }
        let manual_rooms: BTreeSet<String> =
            a.manual_rooms.iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
        for r in &manual_rooms {
            if !rooms.contains(r) {
                return Err(format!("--manual-rooms: `{r}` is not one of --rooms ({})", rooms.join(",")));
            }
        }
        let positive = |name: &str, v: u64| {
            if v == 0 {
                Err(format!("--{name}: must be greater than 0"))
            } else {
                Ok(())
            }
        };
        positive("heartbeat-ms", a.heartbeat_ms)?;
        positive("hello-timeout-ms", a.hello_timeout_ms)?;
        positive("max-active", a.max_active as u64)?;
        positive("max-body-chars", a.max_body_chars as u64)?;
        positive("rate-per-sec", a.rate_per_sec as u64)?;
        positive("rate-burst", a.rate_burst as u64)?;
        positive("queue-messages", a.queue_messages as u64)?;
        positive("agent-token-ttl-secs", a.agent_token_ttl_secs)?;
        if a.max_frame_bytes < 1024 {
            return Err("--max-frame-bytes: must be at least 1024".into());
        }
        if a.queue_bytes < a.max_frame_bytes {
            return Err("--queue-bytes: must be at least --max-frame-bytes".into());
        }
        if let Some(s) = &a.secret {
            if s.len() < 16 {
                return Err("--secret: use at least 16 characters".into());
            }
        }
        let allowed_origins = a
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        let tcp_listen = match a.tcp_listen {
            None => Some((DEFAULT_TCP_LISTEN.to_string(), false)),
            Some(s) if s.trim().is_empty() => None,
            Some(s) => Some((s.trim().to_string(), true)),
        };
        let mut bot_first = std::collections::BTreeMap::new();
        for item in a.bot_first.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let Some((room, bot)) = item.split_once('=') else {
                return Err(format!("--bot-first: `{item}` is not ROOM=BOTNAME"));
            };
            if !rooms.iter().any(|r| r == room.trim()) {
                return Err(format!("--bot-first: `{}` is not one of --rooms", room.trim()));
            }
            bot_first.insert(room.trim().to_string(), bot.trim().to_string());
        }
        let webhooks: Vec<String> = a.webhooks.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        for w in &webhooks {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                return Err(format!("--webhook: `{w}` is not an http:// or https:// URL"));
            }
        }
        if !webhooks.is_empty() && a.webhook_secret.as_deref().is_none_or(|s| s.len() < 16) {
            return Err("--webhook-secret: give a key of at least 16 characters to sign webhooks with".into());
        }
        let mut webhook_events: BTreeSet<String> =
            a.webhook_events.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        for e in &webhook_events {
            if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                return Err(format!("--webhook-events: `{e}` is not one of {}", WEBHOOK_EVENTS.join(",")));
            }
        }
        if webhook_events.is_empty() {
            webhook_events = WEBHOOK_EVENTS.iter().map(|s| s.to_string()).collect();
        }
        positive("webhook-timeout-ms", a.webhook_timeout_ms)?;
        let trusted_proxies = a
            .trusted_proxies
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| crate::abuse::Net::parse(s).map_err(|e| format!("--trusted-proxies: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let public_origin = match a.public_url.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(u) => Some(origin_of(u).ok_or_else(|| {
                format!("--public-url: `{u}` is not an http:// or https:// URL (e.g. https://chat.example.com)")
            })?),
        };
        positive("login-failures-per-address", a.login_failures_per_address as u64)?;
        positive("login-failures-per-account", a.login_failures_per_account as u64)?;
        positive("abandon-after-ms", a.abandon_after_ms)?;
        let database = a.data.database.filter(|d| !d.trim().is_empty());
        let redis = a.redis.filter(|r| !r.trim().is_empty());
        if redis.is_some() && database.is_none() {
            return Err("--redis makes this node one of a cluster, whose nodes share one PostgreSQL database: \
                 give --database postgres://USER@HOST:PORT/DB too (SQLite serves a single node)"
                .into());
        }
        let node_id = match a.node_id.map(|n| n.trim().to_string()).filter(|n| !n.is_empty()) {
            Some(n) if n.len() > 128 || n.chars().any(|c| c.is_control() || c.is_whitespace()) => {
                return Err(format!("--node-id: `{n}` must be at most 128 characters, without spaces"))
            }
            Some(n) => n,
            None => {
                let port = a.listen.rsplit(':').next().unwrap_or("8080");
                format!("{}:{port}", host_name())
            }
        };
        Ok(Config {
            trusted_proxies,
            public_origin,
            max_conns_per_address: a.max_conns_per_address,
            opens_per_minute: a.opens_per_minute,
            login_failures_per_address: a.login_failures_per_address,
            login_failures_per_account: a.login_failures_per_account,
            abandon_after: std::time::Duration::from_millis(a.abandon_after_ms),
            transfer_pass_over: std::time::Duration::from_millis(a.transfer_pass_over_ms),
            tcp_listen,
            bot_first,
            webhooks,
            webhook_events,
            webhook_secret: a.webhook_secret,
            webhook_timeout_ms: a.webhook_timeout_ms,
            webhook_notes: a.webhook_notes,
            listen: a.listen,
            database,
            data_dir: a.data.data_dir,
            rooms,
            manual_rooms,
            allowed_origins,
            heartbeat_ms: a.heartbeat_ms,
            hello_timeout_ms: a.hello_timeout_ms,
            max_active: a.max_active,
            agent_grace_ms: a.agent_grace_ms,
            max_body_chars: a.max_body_chars,
            max_frame_bytes: a.max_frame_bytes,
            rate_per_sec: a.rate_per_sec,
            rate_burst: a.rate_burst,
            queue_messages: a.queue_messages,
            queue_bytes: a.queue_bytes,
            secret: a.secret,
            node_id,
            redis,
            agent_token_ttl_secs: a.agent_token_ttl_secs,
            sync_full: a.sync == "full",
            fold_after: std::time::Duration::from_millis(a.fold_after_ms),
            store_cache_mib: a.store_cache_mib,
        })
    }

    pub fn limits(&self) -> crate::protocol::Limits {
        crate::protocol::Limits {
            max_body_chars: self.max_body_chars,
            max_frame_bytes: self.max_frame_bytes,
            rate_per_sec: self.rate_per_sec,
            rate_burst: self.rate_burst,
        }
    }

    /// The store's settings.
    pub fn store(&self) -> crate::store::StoreConfig {
        crate::store::StoreConfig {
            data_dir: self.data_dir.clone(),
            full_sync: self.sync_full,
            fold_after: self.fold_after,
            cache_mib: self.store_cache_mib,
            database: self.database.clone(),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("parley.db")
    }
}

/// This machine's host name (for the default node id).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "parley".into())
}
