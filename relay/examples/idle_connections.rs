//! Measures the relay's resident memory per idle authenticated WebSocket.
//!
//! Starts the `relay` binary given by `--relay` (default `target/release/relay`) with a
//! fresh data directory, opens `--connections` WebSockets (default 5000), registers each as
//! a new account, lets them idle (answering heartbeats), and prints the relay's RSS before
//! and after as one JSON line. Needs a file-descriptor limit above twice the connection
//! count (`ulimit -n`).
//!
//! `cargo run --release -p peermail-relay --example idle_connections -- --connections 5000`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peermail_core::address::Address;
use peermail_core::identity::{register_message, Identity};
use peermail_core::wire::signal::{parse_server_frame, ClientFrame, ServerFrame};
use tokio_tungstenite::tungstenite::Message;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() {
    let relay_bin = arg("--relay", "target/release/relay");
    let n: usize = arg("--connections", "5000")
        .parse()
        .expect("--connections N");
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(&relay_bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--web-root")
        .arg(data.path().join("dist"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {relay_bin}: {e}"));
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("relay listening on http://")
        .expect("listening line")
        .to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);

    let mut tasks = Vec::with_capacity(n);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
    // Few sign-ins at a time, so that no connection waits long enough to miss a heartbeat.
    let signing_in = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..n {
        let url = format!("ws://{addr}/ws");
        let ready = ready_tx.clone();
        let permit = signing_in.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let nonce = match ws.next().await {
                Some(Ok(Message::Text(t))) => match parse_server_frame(t.as_str()) {
                    Ok(ServerFrame::Challenge { nonce, .. }) => nonce,
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            };
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let name = format!("idle{i}");
            let id = Identity::from_seed(Address::new(&name, "localhost").unwrap(), seed);
            let public_key = id.public_key();
            let signature = id.sign(&register_message(&nonce, &name, &public_key));
            ws.send(Message::text(
                ClientFrame::Register {
                    name,
                    public_key,
                    signature,
                }
                .encode(),
            ))
            .await
            .unwrap();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(ServerFrame::Registered { .. }) = parse_server_frame(t.as_str()) {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
            drop(permit);
            ready.send(()).await.unwrap();
            // Idle: only answer heartbeats.
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    for _ in 0..n {
        ready_rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    println!(
        "{{\"connections\":{n},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"bytes_per_connection\":{per_conn:.0}}}"
    );
    let _ = child.kill();
    let _ = child.wait();
    for t in tasks {
        t.abort();
    }
}
