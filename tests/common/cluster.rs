//! A cluster on this machine for the tests: node processes on one fresh
//! PostgreSQL database sharing a Redis, and nginx in front, configured from
//! the repository's own `nginx.conf` (its upstream and port replaced).
//!
//! Redis: the machine's (`PARLEY_TEST_REDIS`, default redis://127.0.0.1:6379)
//! for tests that leave it alone; [`OwnRedis`] for a test that stops it.
//! Each cluster's channels are named by its database, so clusters of tests
//! running at once never hear each other.

use super::pg::TestDb;
use super::*;
use std::net::TcpListener;
use std::time::Instant as StdInstant;

/// The Redis the cluster tests share (never stopped by them).
pub fn machine_redis() -> String {
    std::env::var("PARLEY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

/// Waits (at most 10 s) until something listens on `port`: `what` was just started.
fn wait_listening(port: u16, what: &str) {
    let deadline = StdInstant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(StdInstant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` of the test's own, on a free port, keeping nothing on disk.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (Debian's redis-server package)");
        wait_listening(port, "redis-server");
        OwnRedis { port, child: Some(child) }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Nodes sharing one database and one Redis.
pub struct Cluster {
    pub db: TestDb,
    pub redis: String,
    nodes: Vec<Option<Server>>,
    dirs: Vec<DataDir>,
    args: Vec<String>,
}

/// The signing secret every node of a test cluster shares.
const SECRET: &str = "cluster-test-secret-0123456789abcdef";

impl Cluster {
    /// `n` nodes named n1…nN with these agent accounts; None when the tests
    /// were told to skip PostgreSQL.
    pub fn start(n: usize, redis: &str, agents: &[(&str, &str, u32)], args: &[&str]) -> Option<Cluster> {
        let db = TestDb::create()?;
        let mut c = Cluster { db, redis: redis.to_string(), nodes: Vec::new(), dirs: Vec::new(), args: Vec::new() };
        c.args = args.iter().map(|s| s.to_string()).collect();
        // One node first (it migrates the schema), then the agents, then the rest.
        c.add_node();
        for (name, pw, max) in agents {
            let out = Command::new(BIN)
                .args(["agent", "add", name, "--password-stdin", "--max-active", &max.to_string()])
                .args(["--database", &c.db.url])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    child.stdin.take().expect("stdin").write_all(pw.as_bytes())?;
                    child.wait_with_output()
                })
                .expect("run parley agent add");
            assert!(out.status.success(), "agent add {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        for _ in 1..n {
            c.add_node();
        }
        Some(c)
    }

    /// Starts one more node.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let dir = data_dir();
        let id = format!("n{}", i + 1);
        let mut args: Vec<&str> = vec![
            "--database",
            &self.db.url,
            "--redis",
            &self.redis,
            "--secret",
            SECRET,
            "--node-id",
            &id,
            "--trusted-proxies",
            "127.0.0.1",
        ];
        args.extend(self.args.iter().map(|s| s.as_str()));
        let srv = Server::start_in(&dir, &args);
        self.nodes.push(Some(srv));
        self.dirs.push(dir);
        i
    }

    /// Node `i` (0-based), which must be running.
    pub fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().unwrap_or_else(|| panic!("node n{} was stopped", i + 1))
    }

    pub fn running(&self) -> Vec<&Server> {
        self.nodes.iter().flatten().collect()
    }

    /// SIGKILL node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].take() {
            s.kill9();
        }
    }

    /// SIGTERM node `i`; returns how long it took to exit, and its status.
    pub fn sigterm(&mut self, i: usize) -> (Duration, std::process::ExitStatus) {
        let mut s = self.nodes[i].take().expect("node running");
        s.terminate(Duration::from_secs(15))
    }
}

/// nginx from the repository's `nginx.conf`, in front of `nodes`, as the test's own process.
pub struct Nginx {
    pub front: Server,
    _dir: tempfile::TempDir,
}

/// Where Debian's nginx is (scripts/test installs it).
fn nginx_bin() -> String {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!("nginx is not installed: `apt-get install -y nginx` (scripts/test does it)");
}

impl Drop for Nginx {
    /// A clean stop: SIGTERM to the master, which takes its workers along
    /// (SIGKILL would leave them serving the port).
    fn drop(&mut self) {
        self.front.terminate(Duration::from_secs(5));
    }
}

impl Nginx {
    pub fn start(nodes: &[&Server]) -> Nginx {
        let conf =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/nginx.conf")).expect("read nginx.conf");
        let port = free_port();
        let dir = tempfile::tempdir().expect("nginx prefix dir");
        std::fs::create_dir_all(dir.path().join("logs")).expect("nginx logs dir");
        // The deployer's file, with this test's nodes and port.
        let mut out = String::new();
        let mut servers_written = false;
        for line in conf.lines() {
            let t = line.trim_start();
            if t.starts_with("server 127.0.0.1:808") {
                if !servers_written {
                    for n in nodes {
                        out.push_str(&format!("        server {} max_fails=1 fail_timeout=5s;\n", n.addr));
                    }
                    servers_written = true;
                }
                continue;
            }
            if t.starts_with("listen 127.0.0.1:8080;") {
                out.push_str(&format!("        listen 127.0.0.1:{port};\n"));
                continue;
            }
            if t.starts_with("worker_processes") {
                out.push_str("worker_processes 1;\n");
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        assert!(servers_written, "nginx.conf has no `server 127.0.0.1:808x` upstream lines to replace");
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, out).expect("write nginx config");
        let prefix = format!("{}/", dir.path().display());
        let globals = format!("daemon off; pid {prefix}nginx.pid; error_log {prefix}logs/error.log warn;");
        let child = Command::new(nginx_bin())
            .args(["-p", &prefix, "-c", &path.display().to_string(), "-g", &globals])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        wait_listening(port, "nginx");
        Nginx { front: Server::adopt(format!("127.0.0.1:{port}"), child), _dir: dir }
    }
}
