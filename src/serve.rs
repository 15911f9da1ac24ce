//! Starting a node: open the store, build the ChatServer from it, serve HTTP
//! and WebSocket, and on SIGINT/SIGTERM drain sessions (close 1001) before exit.

use crate::auth::{random_password, Signer};
use crate::chat::server::Links;
use crate::chat::ChatServer;
use crate::config::{Config, ServeArgs};
use crate::http::{self, ws::ConnSocket, AppState};
use crate::store::{self, Store};
use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// Time given to connections to close after the drain, before exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Longest drain at shutdown: sessions told, writes settled, lease given up
/// (with SHUTDOWN_GRACE, well inside the 10 s a node has to stop).
const DRAIN_FOR: Duration = Duration::from_secs(6);
/// How often the heap's free pages go back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Hands the heap's free pages back to the kernel every [`TRIM_EVERY`].
/// glibc gives back only the top of each arena by itself, so the memory of
/// clients that left stays resident: after 19,500 idle clients left, the
/// server kept 287 MB without this and 48 MB with it. A trim takes 0.1 to
/// 0.3 ms under steady traffic (tens of ms after a mass disconnect).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    let trim = || loop {
        std::thread::sleep(TRIM_EVERY);
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim only returns free memory; it is thread-safe.
        unsafe { libc::malloc_trim(0) };
        log::debug!("heap trimmed in {:?}", started.elapsed());
    };
    if let Err(e) = std::thread::Builder::new().name("parley-trim".into()).spawn(trim) {
        log::warn!("cannot start the heap trim thread: {e}");
    }
}

/// Other allocators and platforms keep their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

pub fn run(args: ServeArgs) -> Result<(), String> {
    let cfg = Arc::new(Config::from_args(args)?);
    // The store's writer must be the database's only writer (it keeps each
    // open conversation's seq and client ids in memory): one server per data dir.
    // (PostgreSQL is shared by design: several nodes may use one database.)
    let _lock = match cfg.database {
        None => Some(lock_data_dir(&cfg.data_dir)?),
        Some(_) => {
            std::fs::create_dir_all(&cfg.data_dir)
                .map_err(|e| format!("cannot create data dir {}: {e}", cfg.data_dir.display()))?;
            None
        }
    };
    // Opened first: it folds what the last run logged and did not fold, so
    // the reads below see every message.
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
    let store = store::open(&cfg.store(), done_tx)?;
    {
        let admin = store::open_admin(&cfg.store())?;
        if admin.agents()?.is_empty() {
            let pw = random_password();
            admin.add_agent("admin", &pw, None, false)?;
            println!("created agent admin with password {pw}");
        }
    }
    let signer = Arc::new(
        Signer::load(cfg.secret.as_deref(), &cfg.data_dir)
            .map_err(|e| format!("cannot load the signing secret: {e}"))?,
    );
    trim_heap();
    let system = actix::System::new();
    system.block_on(async move {
        let agents = store.agents().await.map_err(|e| format!("cannot read the agents: {e}"))?;
        let open = store.open_conversations().await.map_err(|e| format!("cannot read the conversations: {e}"))?;
        let cluster = store.cluster_id().await.map_err(|e| format!("cannot read the cluster's id: {e}"))?;
        serve(cfg, signer, store, done_rx, agents, open, cluster).await
    })
}

/// Holds an exclusive lock on `DATA_DIR/parley.lock` for as long as the
/// returned file is open (the kernel drops it when the process dies, even by
/// SIGKILL). The `agent` commands do not take it: they may run beside a server.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
    let path = dir.join("parley.lock");
    let file = std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another parley server is using the data dir {}: stop it, or give this one its own --data-dir",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

async fn serve(
    cfg: Arc<Config>,
    signer: Arc<Signer>,
    store: Arc<dyn Store>,
    done_rx: tokio::sync::mpsc::UnboundedReceiver<Vec<crate::store::Completion>>,
    agents: Vec<crate::store::AgentRow>,
    open: Vec<crate::store::ConvRow>,
    cluster: String,
) -> Result<(), String> {
    let from = match &cfg.database {
        Some(url) => format!("PostgreSQL ({})", crate::store::postgres::redact(url)),
        None => cfg.db_path().display().to_string(),
    };
    log::info!("loaded {} open conversations and {} agents from {from}", open.len(), agents.len());
    // The ChatServer gets its own thread, apart from the HTTP workers.
    let arbiter = Arbiter::new();
    let webhooks = crate::webhooks::Webhooks::start(&cfg)?;
    let links = match &cfg.redis {
        Some(url) => {
            let (backplane, incoming) = crate::backplane::redis::start(url, &cluster, &cfg.node_id, &cfg.rooms)?;
            log::info!("node {} of a cluster: backplane on Redis, {} room channel(s)", cfg.node_id, cfg.rooms.len());
            Links { backplane: Box::new(backplane), incoming: Some(incoming) }
        }
        None => Links { backplane: crate::backplane::local(), incoming: None },
    };
    let (c, s) = (cfg.clone(), store.clone());
    let server = ChatServer::start_in_arbiter(&arbiter.handle(), move |_| {
        ChatServer::new(c, s, open, agents, done_rx, webhooks, links)
    });
    let guard = crate::abuse::Guard::new(&cfg);
    let state = AppState { cfg: cfg.clone(), server: server.clone(), store, signer, guard };
    if let Some((addr, explicit)) = &cfg.tcp_listen {
        match crate::session::tcp::listen(addr, state.clone()) {
            Ok(a) => println!("listening tcp={a}"),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
                log::warn!("TCP gateway off: {addr} is in use (give --tcp-listen to choose another address)")
            }
            Err(e) => return Err(format!("cannot listen on {addr} (--tcp-listen): {e}")),
        }
    }
    let http = HttpServer::new(move || App::new().app_data(web::Data::new(state.clone())).configure(http::routes))
        .on_connect(|conn, ext| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                // Chat frames are small and must leave at once, not wait for
                // the previous one's ACK (Nagle).
                let _ = tcp.set_nodelay(true);
                if let Ok(peer) = tcp.peer_addr() {
                    ext.insert(ConnSocket { fd: tcp.as_raw_fd(), peer });
                }
            }
        })
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .bind(&cfg.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    for addr in http.addrs() {
        println!("listening http={addr}");
    }
    let _ = std::io::stdout().flush();
    let running = http.run();
    let handle = running.handle();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        log::info!("shutting down: no new connections; closing sessions with 1001");
        // Stop accepting first, so that reconnects go to the other nodes
        // (a load balancer retries a refused connection elsewhere); the open
        // connections get SHUTDOWN_GRACE to close after the drain.
        let stopping = actix_web::rt::spawn(handle.stop(true));
        let drained = tokio::time::timeout(DRAIN_FOR, server.send(crate::chat::messages::Drain)).await;
        if drained.is_err() {
            log::warn!("shutting down: the drain took longer than {DRAIN_FOR:?}");
        }
        let _ = drained_tx.send(());
        let _ = stopping.await;
    });
    running.await.map_err(|e| format!("server failed: {e}"))?;
    // The drain (writes settled, lease given up) ends before the process does.
    let _ = tokio::time::timeout(DRAIN_FOR, drained_rx).await;
    arbiter.stop();
    log::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
