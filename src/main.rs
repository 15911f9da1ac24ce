//! The `parley` binary: parse the command line, start logging, run.

use clap::Parser;
use parley::config::{Cli, Command};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => parley::serve::run(cli.serve),
        Some(Command::Serve(args)) => parley::serve::run(*args),
        Some(Command::Agent { command }) => parley::cli::agent(command),
        Some(Command::Migrate { from_sqlite, database }) => parley::cli::migrate(&from_sqlite, &database),
    };
    if let Err(e) = result {
        eprintln!("parley: {e}");
        // A database that cannot be used (bad URL, unreachable, login
        // refused) is told apart from other errors: exit status 2.
        std::process::exit(if e.starts_with("--database") || e.starts_with("--redis") { 2 } else { 1 });
    }
}
