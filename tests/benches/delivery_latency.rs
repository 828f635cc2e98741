//! Benchmark: time from Send to "delivered" for a 4 KiB mail between two real browsers.
//!
//! Two series, median of `PEERMAIL_BENCH_ROUNDS` (default 20) each:
//! - **connected**: the peers already have an open data channel;
//! - **with setup**: the sender reloads its page first, so each mail includes signaling
//!   authentication, the WebRTC offer/answer/ICE exchange and the data channel opening.
//!
//! Beside them, in the same run and through the same relay, the **baseline**: a raw
//! WebSocket round trip (`ping` → `pong` on `/ws`) measured in the sender's page.
//! Latencies are taken from the page itself: `data-sent-at` / `data-delivered-at` on the
//! recipient status (the sender node's clock, ms) and `performance.now()` for the baseline,
//! so WebDriver polling does not enter the figures.
//!
//! Like the e2e tests it re-executes itself in a private network namespace. Run with
//! `cargo xtask bench` (which sets `PEERMAIL_RELAY_BIN` and `PEERMAIL_DIST`). Writes
//! `target/bench/delivery_latency.json`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peermail_e2e::{netns, Browser, Config, Harness};
use serde_json::{json, Value};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Opens Compose, fills it (the 4 KiB body is set directly, not typed key by key) and sends.
async fn send(b: &Browser, to: &str, subject: &str, body: &str) -> Result<()> {
    b.click("#compose-button").await?;
    b.wait_for("#compose-to").await?;
    let _: bool = b
        .eval(
            "const set = (id, v) => { const e = document.getElementById(id); e.value = v; \
             e.dispatchEvent(new Event('input', {bubbles: true})); }; \
             set('compose-to', arguments[0]); set('compose-subject', arguments[1]); \
             set('compose-body', arguments[2]); return true;",
            vec![json!(to), json!(subject), json!(body)],
        )
        .await?;
    b.click("#compose-send").await?;
    b.wait_gone("#compose-to").await
}

/// Sends one mail and returns delivered − sent in ms, as recorded by the sender's node.
async fn one_mail(alice: &Browser, bob: &str, subject: &str, body: &str) -> Result<f64> {
    send(alice, bob, subject, body).await?;
    alice
        .wait_recipient(&["sent", "outbox"], subject, bob, "delivered")
        .await?;
    let (sent, delivered): (String, String) = alice
        .eval(
            "const r = document.querySelector(`#reading-pane .recipient-status[data-address=\"${arguments[0]}\"]`); \
             return [r.dataset.sentAt, r.dataset.deliveredAt];",
            vec![json!(bob)],
        )
        .await?;
    let ms = delivered.parse::<f64>()? - sent.parse::<f64>()?;
    ensure!(ms >= 0.0, "delivered before sent? {sent} {delivered}");
    Ok(ms)
}

/// Raw WebSocket round trips through the same relay, measured in the page.
async fn ws_round_trips(b: &Browser, rounds: usize) -> Result<Vec<f64>> {
    let _: bool = b
        .eval(
            "window.__rtt = null; const n = arguments[0]; \
             const ws = new WebSocket(location.origin.replace(/^http/, 'ws') + '/ws'); \
             const out = []; let t0 = 0; let i = 0; \
             const ping = () => { t0 = performance.now(); ws.send(JSON.stringify({v: 1, type: 'ping', nonce: i})); }; \
             ws.onmessage = (m) => { const f = JSON.parse(m.data); \
               if (f.type === 'challenge') { ping(); return; } \
               if (f.type === 'pong') { out.push(performance.now() - t0); i += 1; \
                 if (i < n) { ping(); } else { ws.close(); window.__rtt = out; } } }; \
             ws.onerror = () => { window.__rtt = 'error'; }; return true;",
            vec![json!(rounds + 2)],
        )
        .await?;
    let v: Vec<f64> = b
        .wait_until("the WebSocket round trips", || async move {
            let r: Value = b.eval("return window.__rtt;", vec![]).await?;
            Ok(match r {
                Value::Array(a) => Ok(a.iter().filter_map(Value::as_f64).collect()),
                other => Err(format!("{other}")),
            })
        })
        .await?;
    // The first two warm the connection up.
    Ok(v[2..].to_vec())
}

async fn run(config: Config) -> Result<Value> {
    let rounds: usize = std::env::var("PEERMAIL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let h = Harness::start(config)?;
    let alice = h.browser("alice").await?;
    let bob = h.browser("bob").await?;
    alice.sign_up("alice").await?;
    bob.sign_up("bob").await?;
    let bob_addr = bob.address();
    alice.add_contact(&bob_addr).await?;
    alice.wait_presence(&bob_addr, "online").await?;
    let body: String = "Peermail benchmark body. ".repeat(4096 / 25 + 1)[..4096].to_string();

    // Warm up: the first mail opens the channel.
    one_mail(&alice, &bob_addr, "warm-up", &body)
        .await
        .context("warm-up mail")?;

    let mut connected = Vec::new();
    for i in 0..rounds {
        connected.push(one_mail(&alice, &bob_addr, &format!("connected {i}"), &body).await?);
    }

    let mut with_setup = Vec::new();
    for i in 0..rounds {
        alice.reload().await?;
        alice.wait_online().await?;
        alice.wait_presence(&bob_addr, "online").await?;
        with_setup.push(one_mail(&alice, &bob_addr, &format!("setup {i}"), &body).await?);
    }

    let mut ws = ws_round_trips(&alice, rounds).await?;
    ensure!(
        ws.len() == rounds,
        "expected {rounds} round trips, got {}",
        ws.len()
    );
    let (mc, ms, mw) = (
        median(&mut connected.clone()),
        median(&mut with_setup.clone()),
        median(&mut ws),
    );
    Ok(json!({
        "benchmark": "delivery_latency",
        "mail_body_bytes": body.len(),
        "rounds": rounds,
        "send_to_delivered_connected_ms": { "median": mc, "samples": connected },
        "send_to_delivered_with_setup_ms": { "median": ms, "samples": with_setup },
        "baseline_websocket_round_trip_ms": { "median": mw, "samples": ws },
        "ratio_connected_to_baseline": mc / mw.max(0.001),
        "ratio_with_setup_to_baseline": ms / mw.max(0.001),
        "note": "sent/delivered instants are whole milliseconds (Date.now) from the sender's node",
    }))
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(code) = netns::enter("bench") {
        return code;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(900), run(config)).await }) {
        Ok(Ok(report)) => {
            let dir = std::env::var_os("PEERMAIL_BENCH_OUT")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
                });
            let _ = std::fs::create_dir_all(&dir);
            let text = serde_json::to_string_pretty(&report).expect("json");
            if let Err(e) = std::fs::write(dir.join("delivery_latency.json"), &text) {
                eprintln!("bench: writing the report: {e}");
                return ExitCode::FAILURE;
            }
            println!(
                "delivery latency (4 KiB, median of {}): connected {:.1} ms, with connection setup {:.1} ms; \
                 baseline WebSocket round trip {:.2} ms; ratios {:.1} and {:.1}",
                report["rounds"],
                report["send_to_delivered_connected_ms"]["median"].as_f64().unwrap_or(f64::NAN),
                report["send_to_delivered_with_setup_ms"]["median"].as_f64().unwrap_or(f64::NAN),
                report["baseline_websocket_round_trip_ms"]["median"].as_f64().unwrap_or(f64::NAN),
                report["ratio_connected_to_baseline"].as_f64().unwrap_or(f64::NAN),
                report["ratio_with_setup_to_baseline"].as_f64().unwrap_or(f64::NAN),
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("bench: timed out after 15 minutes");
            ExitCode::FAILURE
        }
    }
}
