//! `parley agent add|list|passwd|remove`: account management on the data dir,
//! safe to run while a server uses it (SQLite locking).

use crate::config::AgentCommand;
use crate::store::{self, StoreConfig};
use std::io::BufRead;

pub fn agent(cmd: AgentCommand) -> Result<(), String> {
    match cmd {
        AgentCommand::Add { name, password, password_stdin, max_active, bot, data } => {
            let password = password_from(password, password_stdin)?;
            let a = admin(&data)?.add_agent(&name, &password, max_active, bot)?;
            println!("added agent {} ({}){}", a.name, a.id, if bot { " [bot]" } else { "" });
            Ok(())
        }
        AgentCommand::List { data } => {
            let agents = admin(&data)?.agents()?;
            if agents.is_empty() {
                println!("no agents");
            }
            for a in agents {
                let max = a.max_active.map(|m| m.to_string()).unwrap_or_else(|| "default".into());
                println!("{}\t{}\tmax_active={}{}", a.name, a.id, max, if a.bot { "\tbot" } else { "" });
            }
            Ok(())
        }
        AgentCommand::Passwd { name, password, password_stdin, data } => {
            let password = password_from(password, password_stdin)?;
            admin(&data)?.set_password(&name, &password)?;
            println!("changed the password of agent {name}; tokens issued before are revoked");
            Ok(())
        }
        AgentCommand::Remove { name, data } => {
            admin(&data)?.remove_agent(&name)?;
            println!("removed agent {name}");
            Ok(())
        }
    }
}

/// The password from `--password PW`, or the first line of standard input.
fn password_from(password: Option<String>, stdin: bool) -> Result<String, String> {
    match (password, stdin) {
        (Some(p), false) => Ok(p),
        (None, true) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
            Ok(line.trim_end_matches(['\r', '\n']).to_string())
        }
        _ => Err("give the password with --password PW or --password-stdin".into()),
    }
}

/// The configured storage's account management (the same place `serve` opens it).
fn admin(data: &crate::config::DataDirArg) -> Result<Box<dyn store::Admin>, String> {
    store::open_admin(&StoreConfig {
        data_dir: data.data_dir.clone(),
        full_sync: true,
        fold_after: std::time::Duration::from_secs(4),
        cache_mib: 4,
        database: data.database.clone(),
    })
}

/// `parley migrate --from-sqlite FILE --database URL`.
pub fn migrate(from: &std::path::Path, database: &str) -> Result<(), String> {
    if !(database.starts_with("postgres://") || database.starts_with("postgresql://")) {
        return Err("--database: give the PostgreSQL database to copy into (postgres://USER@HOST:PORT/DB)".into());
    }
    let dump = store::sqlite::export(from)?;
    println!(
        "read {} agents, {} conversations, {} messages, {} read markers from {}",
        dump.agents.len(),
        dump.conversations.len(),
        dump.messages.len(),
        dump.read_markers.len(),
        from.display()
    );
    let n = store::postgres::import(database, dump)?;
    println!(
        "copied {} agents, {} conversations, {} messages, {} read markers into {}",
        n.agents,
        n.conversations,
        n.messages,
        n.read_markers,
        store::postgres::redact(database)
    );
    Ok(())
}
