//! Shared by the relay benchmarks: starting a server process and signing up a session.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use peermail_core::identity::{register_message, Identity};
use peermail_core::wire::signal::{parse_server_frame, ClientFrame, ServerFrame};
use peermail_core::Address;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Where reports go: `PEERMAIL_BENCH_OUT` (set by `cargo xtask bench`) or `target/bench`.
pub fn out_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("PEERMAIL_BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
        });
    std::fs::create_dir_all(&dir).expect("create the bench output directory");
    dir
}

/// The relay binary: `PEERMAIL_RELAY_BIN`, or the one cargo built with this bench.
pub fn relay_bin() -> String {
    std::env::var("PEERMAIL_RELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_relay").to_string())
}

/// Spawns `cmd` and waits for a stdout line containing `http://ADDR` or `ws://ADDR`.
pub fn spawn_and_wait(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(i) = line.find("://") {
            let addr = line[i + 3..].trim().trim_end_matches('/').to_string();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return (child, addr);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not report its address");
}

/// Opens a WebSocket to the relay at `addr` and registers the account `bench{i}@domain`
/// (key derived from `i`), returning the signed-in session.
pub async fn relay_session(addr: String, i: usize, domain: String) -> Ws {
    let name = format!("bench{i}");
    register(addr, &name, i as u64, &domain).await
}

/// Registers `name@domain` over a new WebSocket; the key is derived from `key_seed`.
pub async fn register(addr: String, name: &str, key_seed: u64, domain: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect");
    let nonce = match ws.next().await {
        Some(Ok(Message::Text(t))) => match parse_server_frame(&t) {
            Ok(ServerFrame::Challenge { nonce, .. }) => nonce,
            other => panic!("expected challenge, got {other:?}"),
        },
        other => panic!("expected challenge, got {other:?}"),
    };
    let name = name.to_string();
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&key_seed.to_le_bytes());
    let id = Identity::from_seed(Address::new(&name, domain).unwrap(), seed);
    let public_key = id.public_key();
    let signature = id.sign(&register_message(&nonce, &name, &public_key));
    let frame = ClientFrame::Register {
        name,
        public_key,
        signature,
    };
    ws.send(Message::text(frame.encode())).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => match parse_server_frame(&t) {
            Ok(ServerFrame::Registered { .. }) => {}
            other => panic!("expected registered, got {other:?}"),
        },
        other => panic!("expected registered, got {other:?}"),
    }
    ws
}
