//! `parley agent add|list|remove`: account management on the data dir,
//! safe to run while a server uses it (SQLite locking).

use crate::config::AgentCommand;
use crate::store::sqlite;
use std::io::BufRead;

pub fn agent(cmd: AgentCommand) -> Result<(), String> {
    match cmd {
        AgentCommand::Add { name, password, password_stdin, max_active, bot, data } => {
            let password = match (password, password_stdin) {
                (Some(p), false) => p,
                (None, true) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
                _ => return Err("give the password with --password PW or --password-stdin".into()),
            };
            let conn = sqlite::open_admin(&data.data_dir)?;
            let a = sqlite::add_agent(&conn, &name, &password, max_active, bot)?;
            println!("added agent {} ({}){}", a.name, a.id, if bot { " [bot]" } else { "" });
            Ok(())
        }
        AgentCommand::List { data } => {
            let conn = sqlite::open_admin(&data.data_dir)?;
            let agents = sqlite::all_agents(&conn).map_err(|e| format!("cannot list agents: {e}"))?;
            if agents.is_empty() {
                println!("no agents");
            }
            for a in agents {
                let max = a.max_active.map(|m| m.to_string()).unwrap_or_else(|| "default".into());
                println!("{}\t{}\tmax_active={}{}", a.name, a.id, max, if a.bot { "\tbot" } else { "" });
            }
            Ok(())
        }
        AgentCommand::Remove { name, data } => {
            let conn = sqlite::open_admin(&data.data_dir)?;
            sqlite::remove_agent(&conn, &name)?;
            println!("removed agent {name}");
            Ok(())
        }
    }
}
