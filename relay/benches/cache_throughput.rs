//! Benchmark: the relay cache's store-and-forward throughput, beside Redis.
//!
//! `PEERMAIL_BENCH_CLIENTS` (default 50) authenticated clients, concurrently, each move
//! `PEERMAIL_BENCH_ENVELOPES` (default 1,000) sealed-size envelopes of 1 KiB through the real
//! relay's cache with its normal durability (SQLite WAL, acknowledged after commit):
//! `deposit` → `deposited` and, the recipient being online (each client mails itself), the
//! envelope pushed as `cached`; `release` → `released` and the sender's `receipt`, whose
//! acknowledgement is sent too. One envelope = one full store-and-forward. Each client
//! waits for every reply before its next request; the receipt acknowledgement, which has no
//! reply, leaves in the same write as the next deposit. The clients share one current-thread
//! runtime and are as lean as redis-benchmark, which builds its commands once and reads
//! only what it needs of each reply: each frame is [`ClientFrame::encode`]'s, formatted
//! once per client with only the Message-ID put in for each envelope, and each reply is
//! read in place for its kind, Message-ID and envelope length (they share the machine's
//! two cores with the relay, as redis-benchmark does with Redis).
//!
//! Also in the same run, as a reference for where the relay's time goes: the same clients
//! through the same relay with the storage taken out — [`ROUND_TRIPS`] `ping` → `pong`
//! round trips per envelope (its answered requests: deposit, release), no payload, no
//! database. That is the ceiling of the protocol's round trips over these WebSockets on
//! this machine. And the relay's storage alone: its database layer ([`peermail_relay::Db`],
//! the same SQLite settings, cache writer and checkpointer) driven in the bench's own process
//! by as many tasks, each envelope deposited, released and its receipt acknowledged, with
//! no sockets or frames: its rate and the CPU it uses per envelope.
//!
//! Baseline in the same run: `redis-benchmark -c 50 -d 1024 -t lpush,rpop` against a local
//! `redis-server --appendonly yes --appendfsync everysec`. Its envelope rate is one LPUSH
//! plus one RPOP: 1 / (1/lpush_rps + 1/rpop_rps). The relay's per-sender rate limit is a
//! policy, not a cost, so it is lifted for the run. `PEERMAIL_BENCH_ROUNDS` (default 3)
//! rounds of relay, reference and Redis, one after the other; the medians are reported and
//! compared (single runs of either side varied by a tenth on this machine). Beside each
//! rate, the CPU each server (the relay process, redis-server) and each load generator
//! (these clients, redis-benchmark) used per envelope, from `/proc`: steadier than the
//! rates from run to run. Writes `target/bench/cache_throughput.json`.
//!
//! `cargo bench -p peermail-relay --bench cache_throughput` (needs redis-server and
//! redis-benchmark on PATH; `cargo xtask bench` installs them).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use peermail_core::identity::{register_message, Identity};
use peermail_core::wire::signal::{parse_server_frame, ClientFrame, ServerFrame};
use peermail_core::{Address, MessageId};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{spawn_and_wait, Ws};

const GOAL_RATIO: f64 = 0.5;

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn send(ws: &mut Ws, frame: ClientFrame) {
    ws.send(Message::text(frame.encode()))
        .await
        .expect("send frame");
}

/// Reads frames until `want` accepts one; other frames (waiting notices, receipts) pass by.
async fn until<T>(ws: &mut Ws, what: &str, mut want: impl FnMut(ServerFrame) -> Option<T>) -> T {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match parse_server_frame(&t) {
                Ok(ServerFrame::Error { code, message, .. }) => {
                    panic!("{what}: relay error {code:?}: {message}")
                }
                Ok(f) => {
                    if let Some(v) = want(f) {
                        return v;
                    }
                }
                Err(e) => panic!("{what}: unreadable frame: {e}"),
            },
            Some(Ok(_)) => {}
            other => panic!("{what}: connection ended: {other:?}"),
        }
    }
}

/// Requests per envelope that wait for an answer: `deposit`, `release`.
const ROUND_TRIPS: usize = 2;

/// One client of the storage-free reference: [`ROUND_TRIPS`] pings per envelope; `n` times.
async fn pinger(mut ws: Ws, n: usize) {
    for k in 0..n * ROUND_TRIPS {
        let nonce = k as u64;
        send(&mut ws, ClientFrame::Ping { nonce }).await;
        until(&mut ws, "pong", |f| {
            matches!(f, ServerFrame::Pong { nonce: got } if got == nonce).then_some(())
        })
        .await;
    }
}

/// The fields of a relay frame the load generator looks at, read in place (no copies, and
/// none of serde's buffering of internally tagged enums, which a full
/// [`parse_server_frame`] costs): like redis-benchmark, the client checks each reply's kind
/// and what it is about, and leaves the relay as the only party that parses frames in full.
#[derive(serde::Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message_id: Option<&'a str>,
    sealed: Option<&'a str>,
}

/// Reads frames, each in place as a [`Reply`], until `want` accepts one; other frames pass
/// by. An error frame or an unreadable one ends the run.
async fn until_reply<T>(
    ws: &mut Ws,
    what: &str,
    mut want: impl FnMut(Reply<'_>) -> Option<T>,
) -> T {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let reply: Reply<'_> = serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("{what}: unreadable frame {e}: {}", t.as_str()));
                assert!(reply.kind != "error", "{what}: relay error: {}", t.as_str());
                if let Some(v) = want(reply) {
                    return v;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("{what}: connection ended: {other:?}"),
        }
    }
}

/// A client frame as [`ClientFrame::encode`] writes it, with the place of its Message-ID.
struct Template {
    head: String,
    tail: String,
}

impl Template {
    fn new(frame: ClientFrame, id: &MessageId) -> Self {
        let text = frame.encode();
        let (head, tail) = text
            .split_once(id.as_str())
            .expect("the id is in the frame");
        Template {
            head: head.to_string(),
            tail: tail.to_string(),
        }
    }

    /// The frame about Message-ID `id` (which needs no JSON escapes).
    fn with(&self, id: &str) -> String {
        format!("{}{id}{}", self.head, self.tail)
    }
}

/// One client: deposits an envelope for itself, takes it as pushed, releases it; `n` times.
/// Its frames are [`ClientFrame::encode`]'s, built as redis-benchmark builds its commands:
/// formatted once, with only the Message-ID put in for each envelope.
async fn client(mut ws: Ws, me: Address, i: usize, n: usize) {
    let sealed = base64::engine::general_purpose::STANDARD.encode(vec![(i % 251) as u8; 1024]);
    let id_of = |k: usize| format!("<b{i}-{k}@bench.test>");
    let id0 = MessageId::parse(&id_of(0)).expect("message id");
    let deposit = Template::new(
        ClientFrame::Deposit {
            to: me.clone(),
            message_id: id0.clone(),
            sealed: sealed.clone(),
        },
        &id0,
    );
    let release = Template::new(
        ClientFrame::Release {
            message_id: id0.clone(),
        },
        &id0,
    );
    let ack = Template::new(
        ClientFrame::AckReceipt {
            to: me.clone(),
            message_id: id0.clone(),
        },
        &id0,
    );
    for k in 0..n {
        let id = id_of(k);
        if k < 2 {
            let message_id = MessageId::parse(&id).expect("message id");
            let deposit_frame = ClientFrame::Deposit {
                to: me.clone(),
                message_id,
                sealed: sealed.clone(),
            };
            assert_eq!(
                deposit.with(&id),
                deposit_frame.encode(),
                "frames as encode() makes them"
            );
        }
        ws.send(Message::text(deposit.with(&id)))
            .await
            .expect("send deposit");
        // The acknowledgement and the pushed envelope, in the order they come.
        let (mut deposited, mut got) = (false, None);
        while !deposited || got.is_none() {
            let about_it = |r: &Reply<'_>| r.message_id == Some(id.as_str());
            match until_reply(&mut ws, "deposit", |r| match r.kind {
                "deposited" if about_it(&r) => Some(None),
                "cached" if about_it(&r) => Some(Some(r.sealed.map_or(0, str::len))),
                _ => None,
            })
            .await
            {
                None => deposited = true,
                Some(len) => got = Some(len),
            }
        }
        assert_eq!(
            got,
            Some(sealed.len()),
            "the pushed envelope has the deposited size"
        );
        ws.send(Message::text(release.with(&id)))
            .await
            .expect("send release");
        until_reply(&mut ws, "release", |r| {
            (r.kind == "released" && r.message_id == Some(id.as_str())).then_some(())
        })
        .await;
        // The receipt is acknowledged without waiting for anything: queued here, it leaves
        // with the next deposit in one write (as a client with both frames ready would send
        // them), and with the final flush after the last one.
        ws.feed(Message::text(ack.with(&id)))
            .await
            .expect("queue frame");
    }
    ws.flush().await.expect("flush");
}

/// Opens a client WebSocket and registers `name@domain` (key derived from `key_seed`), as
/// `common::register` does, but configured like a lean client: Nagle's algorithm off (as
/// browsers do for WebSockets and redis-benchmark for its connections; with it on, a small
/// frame sent right after another one that is not yet acknowledged waits for the server's
/// delayed ACK, tens of milliseconds on Linux, which would measure TCP timers instead of the
/// relay), and an 8 KiB read buffer (tungstenite's 128 KiB default is zero-filled before
/// every read, which cost the client a fifth of its CPU here).
async fn client_session(addr: &str, name: &str, key_seed: u64, domain: &str) -> Ws {
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/ws"), Some(config), true)
            .await
            .expect("connect");
    let nonce = match ws.next().await {
        Some(Ok(Message::Text(t))) => match parse_server_frame(&t) {
            Ok(ServerFrame::Challenge { nonce, .. }) => nonce,
            other => panic!("expected challenge, got {other:?}"),
        },
        other => panic!("expected challenge, got {other:?}"),
    };
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&key_seed.to_le_bytes());
    let id = Identity::from_seed(Address::new(name, domain).unwrap(), seed);
    let public_key = id.public_key();
    let signature = id.sign(&register_message(&nonce, name, &public_key));
    let frame = ClientFrame::Register {
        name: name.to_string(),
        public_key,
        signature,
    };
    send(&mut ws, frame).await;
    until(&mut ws, "register", |f| {
        matches!(f, ServerFrame::Registered { .. }).then_some(())
    })
    .await;
    ws
}

/// Envelopes per second through the relay, and the seconds the run took; `ping_only`: the
/// storage-free reference (see the module docs).
async fn relay_rate(clients: usize, per_client: usize, ping_only: bool) -> (f64, f64, Cpu) {
    let data = tempfile::tempdir().unwrap();
    let domain = "bench.test";
    let mut cmd = Command::new(common::relay_bin());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--domain",
        domain,
        "--web-root",
        "/nonexistent",
    ])
    .args(["--deposit-rate-per-minute", "1000000000"])
    .arg("--data-dir")
    .arg(data.path())
    .env("RUST_LOG", "warn");
    let (mut relay, addr) = spawn_and_wait(cmd);
    let mut sessions = Vec::new();
    for i in 0..clients {
        let name = format!("c{i}");
        let ws = client_session(&addr, &name, i as u64, domain).await;
        sessions.push((ws, Address::new(&name, domain).unwrap()));
    }
    let relay_pid = relay.id().to_string();
    let (started, relay_cpu, client_cpu) =
        (Instant::now(), cpu_of(&relay_pid, false), process_cpu());
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, (ws, me))| {
            if ping_only {
                tokio::spawn(pinger(ws, per_client))
            } else {
                tokio::spawn(client(ws, me, i, per_client))
            }
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let secs = started.elapsed().as_secs_f64();
    let envelopes = clients * per_client;
    let cpu = Cpu {
        server: (cpu_of(&relay_pid, false) - relay_cpu) / envelopes as u32,
        client: (process_cpu() - client_cpu) / envelopes as u32,
    };
    let _ = relay.kill();
    let _ = relay.wait();
    (envelopes as f64 / secs, secs, cpu)
}

/// CPU per envelope of the server (the relay, or Redis) and of its load generator.
#[derive(Clone, Copy)]
struct Cpu {
    server: Duration,
    client: Duration,
}

/// LPUSH and RPOP requests per second, and the CPU per LPUSH+RPOP pair of redis-server and
/// redis-benchmark.
fn redis_rates(clients: usize, requests: usize) -> (f64, f64, Cpu) {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--appendonly",
            "yes",
        ])
        .args([
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server (install it: apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let server_pid = server.id().to_string();
    let (server_cpu, client_cpu) = (cpu_of(&server_pid, false), cpu_of("self", true));
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            &clients.to_string(),
        ])
        .args([
            "-n",
            &requests.to_string(),
            "-d",
            "1024",
            "-t",
            "lpush,rpop",
            "--csv",
        ])
        .output()
        .expect("run redis-benchmark");
    let cpu = Cpu {
        server: (cpu_of(&server_pid, false) - server_cpu) / requests as u32,
        // The waited-for children's CPU: only redis-benchmark ended in between.
        client: (cpu_of("self", true) - client_cpu) / requests as u32,
    };
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = |test: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("\"{test}\"")))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no {test} figure in redis-benchmark output:\n{text}"))
    };
    (rate("LPUSH"), rate("RPOP"), cpu)
}

/// CPU time process `pid` (`"self"`: this one) has used, all its threads, from
/// `/proc/<pid>/stat`; with `children`, that of its children it has waited for instead.
fn cpu_of(pid: &str, children: bool) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/*/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> u64 { fields[i].parse().expect("a tick count") };
    // utime, stime, cutime, cstime: fields 14 to 17 of the line, 12 to 15 after the name.
    // Linux reports them in USER_HZ, 100 per second.
    let first = if children { 13 } else { 11 };
    Duration::from_millis((ticks(first) + ticks(first + 1)) * 10)
}

/// CPU time this process has used.
fn process_cpu() -> Duration {
    cpu_of("self", false)
}

/// The relay's storage alone: its own [`Db`] (the same SQLite settings, cache writer and
/// checkpointer) driven in this process by `clients` tasks, each doing per envelope what a
/// session asks of it: deposit, release, and the receipt acknowledged along with the next
/// deposit. No sockets, no frames. Envelopes per second and CPU per envelope (this whole
/// process: the tasks, the writer and the checkpointer).
async fn storage_rate(clients: usize, per_client: usize) -> (f64, Duration) {
    use peermail_core::wire::signal::ReceiptOutcome;
    use peermail_relay::Db;
    use peermail_signaling::cache::{Deposit, NewMail};
    use peermail_signaling::MailCache;
    use std::sync::Arc;

    let data = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(data.path()).expect("open the relay database"));
    let quota = 100 * 1024 * 1024;
    let (started, cpu) = (Instant::now(), process_cpu());
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let me = Address::new(&format!("c{i}"), "bench.test").unwrap();
                let sealed = vec![(i % 251) as u8; 1024];
                let mut ack = None;
                for k in 0..per_client {
                    let message_id = MessageId::parse(&format!("<b{i}-{k}@bench.test>")).unwrap();
                    let mail = NewMail {
                        recipient: me.clone(),
                        message_id: message_id.clone(),
                        sender: me.clone(),
                        sealed: sealed.clone(),
                        deposited_at: 1,
                        expires_at: u64::MAX / 2,
                    };
                    let deposited = db.clone().deposit_async(mail, quota);
                    if let Some(ack) = ack.take() {
                        let ack: peermail_signaling::cache::CacheFuture<()> = ack;
                        ack.await.expect("acknowledge the receipt");
                    }
                    assert_eq!(deposited.await.expect("deposit"), Deposit::Stored);
                    let told = db
                        .clone()
                        .release_async(me.clone(), message_id.clone(), ReceiptOutcome::Delivered, 2)
                        .await
                        .expect("release");
                    assert_eq!(told, std::slice::from_ref(&me));
                    ack = Some(
                        db.clone()
                            .ack_receipt_async(me.clone(), me.clone(), message_id),
                    );
                }
                if let Some(ack) = ack {
                    ack.await.expect("acknowledge the receipt");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("storage task");
    }
    let (secs, cpu) = (started.elapsed().as_secs_f64(), process_cpu() - cpu);
    let envelopes = clients * per_client;
    assert_eq!(db.cached_count().unwrap(), 0, "every envelope released");
    (envelopes as f64 / secs, cpu / envelopes as u32)
}

/// The middle value (the upper one of the two middle values for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let clients = env_or("PEERMAIL_BENCH_CLIENTS", 50);
    let per_client = env_or("PEERMAIL_BENCH_ENVELOPES", 1000);
    // Rounds alternate relay, reference and Redis, so that the machine's slower and faster
    // moments fall on all three alike; the medians are compared.
    let rounds = env_or("PEERMAIL_BENCH_ROUNDS", 3).max(1);
    let (mut relay, mut round_trips, mut redis) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lpush, mut rpop, mut seconds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut storage, mut storage_cpu_us) = (Vec::new(), Vec::new());
    let (mut relay_cpu, mut redis_cpu) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (rate, secs, cpu) = relay_rate(clients, per_client, false).await;
        relay.push(rate);
        seconds.push(secs);
        relay_cpu.push(cpu);
        round_trips.push(relay_rate(clients, per_client, true).await.0);
        let (rate, cpu) = storage_rate(clients, per_client).await;
        storage.push(rate);
        storage_cpu_us.push(cpu.as_secs_f64() * 1e6);
        let (l, r, cpu) = redis_rates(clients, clients * per_client);
        redis_cpu.push(cpu);
        lpush.push(l);
        rpop.push(r);
        redis.push(1.0 / (1.0 / l + 1.0 / r));
    }
    let (relay_m, round_trips_m, redis_m) = (median(&relay), median(&round_trips), median(&redis));
    let ratio = relay_m / redis_m;
    let (storage_m, storage_cpu_m) = (median(&storage), median(&storage_cpu_us));
    let micros = |cpu: &[Cpu], of: fn(&Cpu) -> Duration| -> Vec<f64> {
        cpu.iter().map(|c| of(c).as_secs_f64() * 1e6).collect()
    };
    let (relay_server_us, relay_client_us) = (
        micros(&relay_cpu, |c| c.server),
        micros(&relay_cpu, |c| c.client),
    );
    let (redis_server_us, redis_client_us) = (
        micros(&redis_cpu, |c| c.server),
        micros(&redis_cpu, |c| c.client),
    );
    let report = serde_json::json!({
        "benchmark": "cache_throughput",
        "clients": clients,
        "envelope_bytes": 1024,
        "envelopes": clients * per_client,
        "rounds": rounds,
        "relay": { "envelopes_per_sec": relay_m, "rounds_envelopes_per_sec": relay,
                   "rounds_seconds": seconds,
                   "cpu_us_per_envelope": median(&relay_server_us),
                   "rounds_cpu_us_per_envelope": relay_server_us,
                   "bench_client_cpu_us_per_envelope": median(&relay_client_us),
                   "durability": "SQLite WAL, synchronous=NORMAL, deposit acknowledged after commit" },
        "baseline_redis": { "envelopes_per_sec": redis_m, "rounds_envelopes_per_sec": redis,
                            "rounds_lpush_per_sec": lpush, "rounds_rpop_per_sec": rpop,
                            "cpu_us_per_envelope": median(&redis_server_us),
                            "rounds_cpu_us_per_envelope": redis_server_us,
                            "redis_benchmark_cpu_us_per_envelope": median(&redis_client_us),
                            "durability": "appendonly yes, appendfsync everysec" },
        "ratio_relay_to_redis": ratio,
        "rounds_ratio": relay.iter().zip(&redis).map(|(a, b)| a / b).collect::<Vec<_>>(),
        "reference_round_trips_only": {
            "envelopes_per_sec": round_trips_m,
            "rounds_envelopes_per_sec": round_trips,
            "ratio_to_redis": round_trips_m / redis_m,
            "what": format!("the same clients and relay, {ROUND_TRIPS} ping/pong round trips per envelope: no payload, no storage"),
        },
        "reference_storage_only": {
            "envelopes_per_sec": storage_m,
            "cpu_us_per_envelope": storage_cpu_m,
            "rounds_envelopes_per_sec": storage,
            "rounds_cpu_us_per_envelope": storage_cpu_us,
            "what": "the relay's own database layer (SQLite WAL, cache writer, checkpointer) driven in the bench's process by the same number of tasks, each envelope deposited, released and its receipt acknowledged: no sockets, no frames; CPU of the whole process",
        },
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio >= GOAL_RATIO,
    });
    std::fs::write(
        common::out_dir().join("cache_throughput.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "cache throughput (median of {rounds} rounds): relay {relay_m:.0} envelopes/s \
         (deposit, pushed envelope, release, receipt; {clients} clients; rounds {}), \
         redis {redis_m:.0} envelopes/s (LPUSH + RPOP; rounds {}); ratio {ratio:.3} (goal ≥ {GOAL_RATIO}); \
         reference: the relay's round trips alone ({ROUND_TRIPS} pings per envelope, no storage) \
         {round_trips_m:.0}/s, {:.2} of redis; the relay's storage alone (its database layer \
         in-process, no network) {storage_m:.0}/s using {storage_cpu_m:.1} µs of CPU per envelope; \
         CPU per envelope: relay {:.1} µs (its client {:.1}), redis-server {:.1} µs (redis-benchmark {:.1})",
        list(&relay),
        list(&redis),
        round_trips_m / redis_m,
        median(&relay_server_us),
        median(&relay_client_us),
        median(&redis_server_us),
        median(&redis_client_us),
    );
}
