//! Memory goes back to the system once clients leave: the server hands the
//! heap's free pages back to the kernel every few seconds.

mod common;

use common::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the server's status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in KiB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_clients_that_left_goes_back_to_the_system() {
    const N: usize = 1500;
    // Every test client comes from 127.0.0.1: lift the per-address bounds.
    let srv = Server::start(&["--max-conns-per-address", "0", "--opens-per-minute", "0"]);
    let base = rss_kib(srv.pid());
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = Client::customer(&srv, &format!("c{i}")).await;
        c.open("support").await;
        clients.push(c);
    }
    let connected = rss_kib(srv.pid());
    let grown = connected.saturating_sub(base);
    assert!(grown > 5_000, "{N} connected clients grew the server by only {grown} KiB");
    drop(clients);
    // Within two trims (5 s apart), most of what the clients took is back.
    let mut rss = connected;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        rss = rss_kib(srv.pid());
        if connected.saturating_sub(rss) > grown / 2 {
            return;
        }
    }
    panic!("RSS {base} KiB at start, {connected} KiB with {N} clients, still {rss} KiB 15 s after they left");
}
