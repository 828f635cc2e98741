//! Benchmark: the relay's resident memory per idle, authenticated WebSocket session.
//!
//! Starts the real `relay` binary (built with this bench, or PEERMAIL_RELAY_BIN), opens N sessions that each register
//! an account and then stay idle, and reads the relay's VmRSS before and after. Beside it,
//! in the same run, the same measurement against a plain tokio-tungstenite echo server with
//! default settings (this binary re-executed with `--echo-server`). Writes
//! `target/bench/signaling_memory.json`.
//!
//! `cargo bench -p peermail-relay --bench signaling_memory` (needs `ulimit -n` above 2 × N;
//! N = PEERMAIL_BENCH_CONNECTIONS, default 5000).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{relay_session, spawn_and_wait, Ws};

const GOAL_KIB: f64 = 16.0;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn echo_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("echo listening on ws://{}", listener.local_addr().unwrap());
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            }
        });
    }
}

async fn echo_session(addr: String) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .expect("connect");
    ws.send(Message::text("hello")).await.unwrap();
    ws.next().await.expect("echo").expect("echo");
    ws
}

/// Idle sessions kept alive by reader tasks (which answer the relay's heartbeat pings).
struct Sessions {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    closed: Arc<AtomicUsize>,
}

impl Drop for Sessions {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens `n` sessions with `open`, 100 at a time, each then read by its own task.
async fn open_many<F, Fut>(n: usize, open: F) -> Sessions
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Ws> + Send + 'static,
{
    let closed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 100).min(n))
            .map(|k| tokio::spawn(open(k)))
            .collect();
        for h in batch {
            let mut ws = h.await.expect("session task");
            let closed = closed.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(_)) = ws.next().await {}
                closed.fetch_add(1, Ordering::SeqCst);
            }));
        }
        i += 100;
    }
    Sessions { tasks, closed }
}

/// Memory in KiB per session: RSS after `n` idle sessions minus RSS after a warm-up of 100,
/// divided by `n - 100`.
async fn measure<F, Fut>(pid: u32, n: usize, open: F) -> (u64, u64, f64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Ws> + Send + 'static,
{
    let warm = open_many(100, &open).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let rest = open_many(n - 100, |k| open(k + 100)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let closed = warm.closed.load(Ordering::SeqCst) + rest.closed.load(Ordering::SeqCst);
    assert_eq!(
        closed, 0,
        "{closed} sessions were closed by the server during the measurement"
    );
    drop(warm);
    drop(rest);
    (
        before,
        after,
        (after.saturating_sub(before)) as f64 / (n - 100) as f64,
    )
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--echo-server") {
        return echo_server().await;
    }
    let n: usize = std::env::var("PEERMAIL_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let relay_bin = common::relay_bin();
    let data = tempfile::tempdir().unwrap();
    let domain = "bench.test".to_string();

    let mut cmd = Command::new(&relay_bin);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--domain",
        &domain,
        "--web-root",
        "/nonexistent",
    ])
    .arg("--data-dir")
    .arg(data.path())
    .env("RUST_LOG", "warn");
    let (mut relay, relay_addr) = spawn_and_wait(cmd);
    let d = domain.clone();
    let a = relay_addr.clone();
    let (relay_before, relay_after, relay_per) = measure(relay.id(), n, move |i| {
        relay_session(a.clone(), i, d.clone())
    })
    .await;
    let _ = relay.kill();
    let _ = relay.wait();

    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("--echo-server");
    let (mut echo, echo_addr) = spawn_and_wait(cmd);
    let a = echo_addr.clone();
    let (echo_before, echo_after, echo_per) =
        measure(echo.id(), n, move |_| echo_session(a.clone())).await;
    let _ = echo.kill();
    let _ = echo.wait();

    let report = serde_json::json!({
        "benchmark": "signaling_memory",
        "connections": n,
        "relay": { "rss_before_kib": relay_before, "rss_after_kib": relay_after, "per_connection_kib": relay_per },
        "baseline_tungstenite_echo": { "rss_before_kib": echo_before, "rss_after_kib": echo_after, "per_connection_kib": echo_per },
        "ratio_relay_to_baseline": relay_per / echo_per.max(0.001),
        "goal_per_connection_kib": GOAL_KIB,
        "meets_goal": relay_per <= GOAL_KIB,
    });
    let dir = common::out_dir();
    std::fs::write(
        dir.join("signaling_memory.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!(
        "signaling memory: relay {relay_per:.1} KiB/connection (goal ≤ {GOAL_KIB}), \
         baseline tungstenite echo {echo_per:.1} KiB/connection, ratio {:.2}, {n} idle connections",
        relay_per / echo_per.max(0.001)
    );
}
