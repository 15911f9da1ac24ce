//! PostgreSQL for the tests: a fresh database per test server (or per
//! store under test), created on the PostgreSQL that `PARLEY_TEST_DATABASE`
//! points at (default: this machine's, `postgres://postgres@127.0.0.1:5432/test`)
//! and dropped when the test is done. `PARLEY_TEST_DATABASE=none` skips the
//! PostgreSQL side (the SQLite side still runs).

/// The server the test databases are created on.
pub fn base_url() -> Option<String> {
    match std::env::var("PARLEY_TEST_DATABASE") {
        Ok(u) if u == "none" => None,
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => Some("postgres://postgres@127.0.0.1:5432/test".to_string()),
    }
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = url.split_once('?').map_or((url, None), |(h, q)| (h, Some(q)));
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Runs one statement on the base database, from any context (its own thread and runtime).
pub fn admin_exec(base: &str, sql: &str) -> Result<(), String> {
    let (base, sql) = (base.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) =
                tokio_postgres::connect(&base, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            client.batch_execute(&sql).await.map_err(|e| e.to_string())
        })
    })
    .join()
    .unwrap_or_else(|_| Err("admin thread panicked".into()))
}

/// A database made for one test, dropped with it.
pub struct TestDb {
    pub url: String,
    pub name: String,
    base: String,
}

impl TestDb {
    /// A fresh, empty database; None when the tests were told to skip PostgreSQL.
    pub fn create() -> Option<TestDb> {
        let base = base_url()?;
        let prefix = std::env::var("PARLEY_TEST_DB_PREFIX").unwrap_or_else(|_| "parley_t_".into());
        let name = format!("{prefix}{:016x}", rand::random::<u64>());
        if let Err(e) = admin_exec(&base, &format!("CREATE DATABASE {name}")) {
            panic!(
                "cannot create a test database on {base}: {e}\n\
                 PostgreSQL is needed for these tests: point PARLEY_TEST_DATABASE at one \
                 (postgres://USER@HOST:PORT/DB), or set it to `none` to skip the PostgreSQL side"
            );
        }
        Some(TestDb { url: with_database(&base, &name), name, base })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = admin_exec(&self.base, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
