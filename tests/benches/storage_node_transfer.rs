//! Benchmark (issue 5): a 256 MiB attachment from a browser to the recipient's storage node
//! (the real `relay node` process), beside the same file from that browser to another
//! browser and a raw data-channel baseline, all in the same run.
//!
//! Who is who: Alice sends. Bob pairs his storage node — `relay node`, the binary under
//! test, started with a data directory of its own — from his page's Storage node panel
//! (like `tests/e2e/storage_node.rs`), then closes his browser: mail to Bob goes to the relay
//! cache and its large attachment to his node, which pulls it from Alice's page over a data
//! channel (so the node is the only one pulling). Carol, who has no node, is the receiving
//! browser of the browser → browser runs and the other end of the raw channel.
//!
//! Each round (`PEERMAIL_BENCH_ROUNDS`, default 3) runs, one after the other so machine
//! noise hits all three:
//! - **baseline**: a raw ordered `RTCDataChannel` from Alice's page to Carol's, the file's
//!   size in messages of one encrypted chunk, paced like the app (`bench::baseline_run`,
//!   the same as `attachment_transfer`);
//! - **browser**: Alice mails Carol the file; Carol's page pulls it (`bench::app_run`,
//!   Carol's page reloaded first);
//! - **node**: Alice mails Bob the file; his node pulls it.
//!
//! Alice's page is reloaded before each browser and node run, so each starts with a fresh
//! page and a fresh signaling session (no channel or registry answer of an earlier run
//! carries over).
//!
//! Timing, the same two instants on both paths (MB = 10⁶ bytes):
//! - **first → done** (the headline figures and `ratio`): from the first chunk stored at the
//!   receiver to the whole file stored and verified there, over the bytes not yet stored at
//!   the first instant. Browser: Carol's page (`Date.now()` in a `MutationObserver`), from
//!   `data-done` first > 0 to `data-state` = `complete` (every chunk checked against the
//!   chunk list and stored, then the whole-file check); `…until_all_stored` stops at the last
//!   stored chunk instead. Node: the bench process (same clock), from the moment a 25 ms
//!   poller first sees the node's new `files/<id>.chunks` non-empty to the moment the node's
//!   `kept <id> (<size> bytes) from <alice>` line is read from its stdout (every chunk checked
//!   against the chunk list — itself checked against the root the mail carries — and
//!   written, and the record saved).
//! - **sent → done**: from Alice's Compose form closing after Send (the file is sealed into
//!   her IndexedDB and the mail sent; sealing is the same work on both paths and is left
//!   out) to the same end instants; includes the mail's delivery, the data channel's setup
//!   and the chunk list.
//!
//! The node's memory: `/proc/<pid>/status` polled every 25 ms during each node run (from
//! before Send to the `kept` line): `VmRSS` samples (kept every 100 ms) and `VmHWM`, its
//! peak, reset before each run (`clear_refs` 5); the node's CPU time (`/proc/<pid>/stat`)
//! over the transfer, to tell whether the node or the sender limits the rate.
//!
//! `PEERMAIL_BENCH_ATTACH_MIB` changes the size (default 256). Like the e2e tests it
//! re-executes itself in a private network namespace. Run with `cargo xtask bench`. Writes
//! `target/bench/storage_node_transfer.json`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peermail_e2e::bench::{
    app_run, baseline_run, free_bytes, mb_s, median, poll, write_file, ALICE_SEAL_OBSERVER,
    BROWSER_ARGS, MESSAGE_BYTES, MIB, TRANSFER_LIMIT,
};
use peermail_e2e::procs::StorageNodeProc;
use peermail_e2e::{Browser, Config, Harness};
use serde_json::{json, Value};

/// The goal: node ÷ browser.
const GOAL: f64 = 0.8;
/// How often the node's memory and its chunk file are looked at.
const SAMPLE_EVERY: Duration = Duration::from_millis(25);
/// Every how many samples a `VmRSS` sample is kept in the report.
const RSS_KEEP_EVERY: usize = 4;

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User and system CPU time of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `*.chunks` files in the node's `files/` and their lengths.
fn chunk_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "chunks"))
        .map(|p| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len)
        })
        .collect()
}

/// The node's log level: its loop's time summaries (`storage node loop: …`, every 2 s while
/// frames arrive) are read back from its log after each run.
const NODE_LOG: &str = "info,peermail_relay::storage_node=debug";

/// The names of the numbers in a `storage node loop:` line, in order.
const LOOP_FIELDS: [&str; 10] = [
    "frames",
    "mb",
    "wall_ms",
    "handle_ms",
    "outputs_ms",
    "put_chunk_ms",
    "records_at_once_ms",
    "flush_ms",
    "flushes",
    "waiting_ms",
];

/// Sums the node's `storage node loop:` lines written to its log from byte `from` on.
fn loop_stats(log: &Path, from: u64) -> Value {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
    let mut sums = [0.0f64; LOOP_FIELDS.len()];
    let mut lines = 0;
    for l in text.lines() {
        let Some(rest) = l.split("storage node loop:").nth(1) else {
            continue;
        };
        let nums: Vec<f64> = rest
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|w| w.parse().ok())
            .collect();
        if nums.len() != LOOP_FIELDS.len() {
            continue;
        }
        lines += 1;
        for (s, n) in sums.iter_mut().zip(nums) {
            *s += n;
        }
    }
    let mut out = serde_json::Map::new();
    out.insert("what".into(), json!("sums of the node's `storage node loop:` debug lines (relay/src/storage_node.rs LoopStats, every 2 s while frames arrive): its event loop's time in the state machine on received frames (handle), carrying out outputs (outputs, which includes put_chunk and records saved at once), periodic record saves with a sync of the chunks (flush), and waiting for frames (waiting)"));
    out.insert("lines".into(), json!(lines));
    for (k, v) in LOOP_FIELDS.iter().zip(sums) {
        out.insert((*k).into(), json!(v));
    }
    Value::Object(out)
}

/// What the sampler saw during one node run.
#[derive(Default)]
struct Samples {
    /// `(ms since the epoch, VmRSS KiB)`, every sample.
    rss: Vec<(u64, u64)>,
    /// The first sample in which the new chunk file was non-empty: `(ms, its length)`.
    first_written: Option<(u64, u64)>,
    /// `VmHWM` (KiB) at the last sample.
    hwm_kib: Option<u64>,
}

/// Polls the node's memory and its new chunk file until `stop`.
fn sample(pid: u32, files: PathBuf, old: Vec<PathBuf>, stop: Arc<AtomicBool>) -> Samples {
    let mut s = Samples::default();
    while !stop.load(Ordering::Relaxed) {
        let now = epoch_ms();
        if let Some(kib) = status_kib(pid, "VmRSS") {
            s.rss.push((now, kib));
        }
        if let Some(kib) = status_kib(pid, "VmHWM") {
            s.hwm_kib = Some(kib);
        }
        if s.first_written.is_none() {
            let written: u64 = chunk_files(&files)
                .into_iter()
                .filter(|(p, _)| !old.contains(p))
                .map(|(_, len)| len)
                .sum();
            if written > 0 {
                s.first_written = Some((now, written));
            }
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    s
}

/// Bob's storage node.
struct BobsNode {
    /// The `relay node` process.
    process: StorageNodeProc,
    /// Its `files/` directory.
    files: PathBuf,
    /// Bob's address.
    owner: String,
    /// Clock ticks per second (CPU times in `/proc/<pid>/stat`).
    ticks: f64,
}

/// One node run: Alice mails Bob (browser closed) `file`; his node pulls it.
async fn node_run(
    alice: &Browser,
    bob: &mut BobsNode,
    file: &Path,
    subject: &str,
    size: u64,
) -> Result<Value> {
    let (node, node_files, ticks) = (&mut bob.process, bob.files.as_path(), bob.ticks);
    alice.reload().await?;
    alice.wait_online().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = node.pid();
    let from_line = node.seen.len();
    let old: Vec<PathBuf> = chunk_files(node_files)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let rss_idle_kib = status_kib(pid, "VmRSS");
    let log_from = std::fs::metadata(&node.log).map(|m| m.len()).unwrap_or(0);
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (files, stop) = (node_files.to_path_buf(), stop.clone());
        std::thread::spawn(move || sample(pid, files, old, stop))
    };
    let cpu_before = cpu_ticks(pid);
    let _: bool = alice.eval(ALICE_SEAL_OBSERVER, vec![]).await?;
    let sent = alice
        .compose_with_files(&bob.owner, subject, "Benchmark file.", &[file])
        .await;
    let seal = match sent {
        Ok(()) => {
            poll(
                alice,
                "the Compose form to close",
                "const s = window.__seal; return s.closed ? s : null;",
            )
            .await
        }
        Err(e) => Err(e),
    };
    let kept = match &seal {
        Ok(_) => {
            tokio::task::block_in_place(|| node.wait_line_from("kept", from_line, TRANSFER_LIMIT))
        }
        Err(_) => Err(anyhow::anyhow!("not sent")),
    };
    stop.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    let cpu_after = cpu_ticks(pid);
    // The last summary is written with the next loop turn after the file is whole.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let node_loop = loop_stats(&node.log, log_from);
    let seal = seal?;
    let (line, kept) = kept?;
    let alice_addr = alice.address();
    ensure!(
        kept.contains(&format!("({size} bytes) from {alice_addr}")),
        "the node printed `kept {kept}`"
    );
    let done = node.seen_at[line] as f64;
    let (first, first_bytes) = samples
        .first_written
        .map(|(t, b)| (t as f64, b as f64))
        .context("the node's chunk file was never seen growing")?;
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let (click, closed) = (f(&seal, "click"), f(&seal, "closed"));
    let first_to_done = done - first;
    let sent_to_done = done - closed;
    let cpu = match (cpu_before, cpu_after) {
        (Some((u0, s0)), Some((u1, s1))) => {
            let (user, sys) = ((u1 - u0) as f64 / ticks, (s1 - s0) as f64 / ticks);
            json!({
                "what": "the node's CPU time from before Send to the kept line (s); cores = CPU time / first-to-done time",
                "user_s": user,
                "system_s": sys,
                "cores_during_transfer": (user + sys) / (first_to_done / 1e3),
            })
        }
        _ => Value::Null,
    };
    let in_transfer = |t: u64| (t as f64) >= first && (t as f64) <= done;
    let peak_rss = samples.rss.iter().map(|&(_, k)| k).max();
    let transfer_rss: Vec<u64> = samples
        .rss
        .iter()
        .filter(|&&(t, _)| in_transfer(t))
        .map(|&(_, k)| k)
        .collect();
    let mean_rss = transfer_rss.iter().sum::<u64>() as f64 / transfer_rss.len().max(1) as f64;
    Ok(json!({
        "kind": "node",
        "bytes": size,
        "subject": subject,
        "kept": kept,
        "first_stored_bytes": first_bytes,
        "first_to_done_ms": first_to_done,
        "mb_s": mb_s(size as f64 - first_bytes, first_to_done),
        "sent_to_done_ms": sent_to_done,
        "mb_s_sent_to_done": mb_s(size as f64, sent_to_done),
        "sealing_ms": closed - click,
        "node_memory_mib": {
            "rss_idle_before": rss_idle_kib.map(mib),
            "peak_vmhwm": samples.hwm_kib.map(mib),
            "vmhwm_reset_before_run": hwm_reset,
            "peak_vmrss_sampled": peak_rss.map(mib),
            "mean_vmrss_during_transfer": mean_rss / 1024.0,
            "vmrss_samples": samples
                .rss
                .iter()
                .step_by(RSS_KEEP_EVERY)
                .map(|&(t, k)| json!([t as f64 - first, (mib(k) * 10.0).round() / 10.0]))
                .collect::<Vec<_>>(),
            "vmrss_samples_what": "[ms since the first chunk stored, VmRSS MiB] every 100 ms, from before Send to the kept line",
        },
        "node_cpu": cpu,
        "node_loop": node_loop,
        "instants": {
            "send": click,
            "sent": closed,
            "first": first,
            "done": done,
        },
    }))
}

async fn run(config: Config) -> Result<Value> {
    let rounds: usize = std::env::var("PEERMAIL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let size_mib: u64 = std::env::var("PEERMAIL_BENCH_ATTACH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = size_mib * MIB;
    let ticks = clock_ticks();
    let h = Harness::start(config)?;
    let scratch = h.scratch.path().to_path_buf();
    // Alice's stored copies (two per round), Carol's, the node's, and the file.
    let need = (4 * rounds as u64 + 1) * size;
    if let Some(free) = free_bytes(&scratch) {
        eprintln!(
            "bench: {:.1} GB free in {}; this run stores about {:.1} GB",
            free as f64 / 1e9,
            scratch.display(),
            need as f64 / 1e9
        );
        ensure!(
            free > need + 2_000_000_000,
            "not enough disk space in {}",
            scratch.display()
        );
    }
    let file = scratch.join(format!("bench-{size_mib}MiB.bin"));
    write_file(&file, size, 6)?;

    let wait = h.config.wait;
    let mut alice = h.browser_with_args("alice", BROWSER_ARGS).await?;
    let mut bob = h.browser_with_args("bob", BROWSER_ARGS).await?;
    let mut carol = h.browser_with_args("carol", BROWSER_ARGS).await?;
    alice.wait = TRANSFER_LIMIT;
    carol.wait = Duration::from_secs(60);
    alice.sign_up("alice").await?;
    bob.sign_up("bob").await?;
    carol.sign_up("carol").await?;
    let (bob_addr, carol_addr) = (bob.address(), carol.address());
    let node_addr = bob_addr.replacen('@', "+node@", 1);

    // Bob pairs his storage node from his page, then goes away.
    let data_dir = scratch.join("bob-storage-node");
    let mut node = StorageNodeProc::start_with_log(&h.config, &h.relay.url, &data_dir, NODE_LOG)?;
    let code = node.wait_line("pairing code:", wait)?;
    bob.wait_for("#storage-node #node-status").await?;
    bob.type_into("#pair-code", &code).await?;
    bob.click("#pair-node").await?;
    bob.wait_for_text(
        "#pair-done",
        &format!("Paired: {node_addr} is your storage node"),
    )
    .await?;
    let online = node.wait_line("storage node", wait)?;
    ensure!(
        online == format!("{node_addr} online"),
        "the node printed `storage node {online}`"
    );
    bob.wait_for("#node-status[data-status=\"available\"]")
        .await
        .context("Bob's node shows as available")?;
    bob.close().await?;
    let rss_after_pairing = status_kib(node.pid(), "VmRSS");
    let mut bobs_node = BobsNode {
        process: node,
        files: data_dir.join("files"),
        owner: bob_addr.clone(),
        ticks,
    };

    alice.add_contact(&carol_addr).await?;
    alice.add_contact(&bob_addr).await?;
    alice.wait_presence(&carol_addr, "online").await?;
    alice.wait_presence(&bob_addr, "offline").await?;
    eprintln!(
        "bench: runs of {size_mib} MiB; Bob's node is pid {}",
        bobs_node.process.pid()
    );

    let disk = |what: &str| {
        let free = free_bytes(&scratch).unwrap_or(0);
        eprintln!("bench: {what}; {:.1} GB free", free as f64 / 1e9);
        free
    };
    let mut base_runs = Vec::new();
    let mut browser_runs = Vec::new();
    let mut node_runs = Vec::new();
    for i in 0..rounds {
        let b = baseline_run(&alice, &carol, size)
            .await
            .with_context(|| format!("baseline run {i}"))?;
        eprintln!(
            "bench: baseline {i}: {:.2} MB/s",
            b["mb_s"].as_f64().unwrap_or(f64::NAN)
        );
        base_runs.push(b);
        ensure!(
            disk("before the browser run") > size * 3,
            "less than {} MiB free: stopping",
            size * 3 / MIB
        );
        alice.reload().await?;
        alice.wait_online().await?;
        let a = app_run(
            &alice,
            &carol,
            &file,
            &format!("bench browser {i}"),
            size,
            true,
        )
        .await
        .with_context(|| format!("browser run {i}"))?;
        eprintln!(
            "bench: browser {i}: {:.2} MB/s (until all stored {:.2}; sent → complete {:.1} s)",
            a["mb_s"].as_f64().unwrap_or(f64::NAN),
            a["mb_s_until_all_stored"].as_f64().unwrap_or(f64::NAN),
            (a["instants"]["complete"].as_f64().unwrap_or(f64::NAN)
                - a["instants"]["sent"].as_f64().unwrap_or(f64::NAN))
                / 1e3,
        );
        browser_runs.push(a);
        ensure!(
            disk("before the node run") > size * 3,
            "less than {} MiB free: stopping",
            size * 3 / MIB
        );
        let n = node_run(
            &alice,
            &mut bobs_node,
            &file,
            &format!("bench node {i}"),
            size,
        )
        .await
        .with_context(|| format!("node run {i}"))?;
        eprintln!(
            "bench: node {i}: {:.2} MB/s (sent → kept {:.1} s); node peak RSS {:.1} MiB, CPU {:.2} cores",
            n["mb_s"].as_f64().unwrap_or(f64::NAN),
            n["sent_to_done_ms"].as_f64().unwrap_or(f64::NAN) / 1e3,
            n["node_memory_mib"]["peak_vmhwm"].as_f64().unwrap_or(f64::NAN),
            n["node_cpu"]["cores_during_transfer"].as_f64().unwrap_or(f64::NAN),
        );
        node_runs.push(n);
    }

    let col = |runs: &[Value], k: &str| -> Vec<f64> {
        runs.iter().filter_map(|r| r[k].as_f64()).collect()
    };
    let sent_to_complete: Vec<f64> = browser_runs
        .iter()
        .filter_map(|r| Some(r["instants"]["complete"].as_f64()? - r["instants"]["sent"].as_f64()?))
        .collect();
    let browser_sent_mb_s: Vec<f64> = sent_to_complete
        .iter()
        .map(|&ms| mb_s(size as f64, ms))
        .collect();
    let base = col(&base_runs, "mb_s");
    let browser = col(&browser_runs, "mb_s");
    let browser_stored = col(&browser_runs, "mb_s_until_all_stored");
    let node_rate = col(&node_runs, "mb_s");
    let node_sent = col(&node_runs, "mb_s_sent_to_done");
    let (mb, mw, mn) = (median(&base), median(&browser), median(&node_rate));
    let ratio = mn / mw;
    let mem = |k: &str| -> Vec<f64> {
        node_runs
            .iter()
            .filter_map(|r| r["node_memory_mib"][k].as_f64())
            .collect()
    };
    let hwm = mem("peak_vmhwm");
    let cpu: Vec<f64> = node_runs
        .iter()
        .filter_map(|r| r["node_cpu"]["cores_during_transfer"].as_f64())
        .collect();

    Ok(json!({
        "benchmark": "storage_node_transfer",
        "file_bytes": size,
        "message_bytes": MESSAGE_BYTES,
        "rounds": rounds,
        "timing": "first -> done, the same instants on both paths: from the first chunk stored at the receiver to the whole file stored and verified there, over the bytes not yet stored at the first instant (MB = 1e6 bytes). Browser (Carol's page, Date.now() in a MutationObserver): data-done first > 0 -> data-state complete (includes the whole-file check). Node (the bench process, same clock): its new files/<id>.chunks first seen non-empty by a 25 ms poller -> its `kept <id> (<size> bytes) from <sender>` line read from stdout (every chunk checked against the chunk list and written, the record saved). Baseline: first message -> last byte counted in Carol's page.",
        "timing_sent_to_done": "from Alice's Compose form closing after Send (file sealed and mail sent; sealing is left out, it is the same on both paths) to the same end instants; includes the mail's delivery, the data channel's setup and the chunk list",
        "who": "Alice sends; Carol (no storage node, page open) receives the browser runs and is the other end of the baseline; Bob's browser is closed after pairing, so his node alone pulls the node runs",
        "baseline": "raw ordered RTCDataChannel Alice -> Carol (bench's own peer connection, no relay), messages of 61,456 bytes, sender keeps bufferedAmount <= 4 MiB - 64 KiB and resumes on bufferedamountlow (threshold 1 MiB), receiver only counts bytes",
        "baseline_mb_s": { "median": mb, "samples": base },
        "browser_mb_s": { "median": mw, "samples": browser },
        "browser_mb_s_until_all_stored": { "median": median(&browser_stored), "samples": browser_stored },
        "node_mb_s": { "median": mn, "samples": node_rate },
        "ratio": ratio,
        "ratio_what": "node_mb_s ÷ browser_mb_s (medians, first -> done)",
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
        "ratio_node_to_browser_until_all_stored": mn / median(&browser_stored),
        "ratio_node_to_baseline": mn / mb,
        "ratio_browser_to_baseline": mw / mb,
        "sent_to_done": {
            "browser_ms": sent_to_complete,
            "node_ms": col(&node_runs, "sent_to_done_ms"),
            "browser_mb_s_median": median(&browser_sent_mb_s),
            "node_mb_s_median": median(&node_sent),
            "ratio": median(&node_sent) / median(&browser_sent_mb_s),
        },
        "node_memory_mib": {
            "what": "the relay node process: VmHWM (peak resident set, reset before each run) and VmRSS sampled every 25 ms from before Send to the kept line (runs.node[].node_memory_mib)",
            "rss_after_pairing": rss_after_pairing.map(mib),
            "peak_vmhwm_median": median(&hwm),
            "peak_vmhwm_samples": hwm,
            "peak_vmrss_sampled": mem("peak_vmrss_sampled"),
            "mean_vmrss_during_transfer": mem("mean_vmrss_during_transfer"),
            "rss_idle_before_each_run": mem("rss_idle_before"),
        },
        "node_cpu_cores_during_transfer": { "median": median(&cpu), "samples": cpu },
        "notes": [
            "Alice's page is reloaded before each browser and node run, so every run starts from a fresh signaling session (no channel or registry answer of an earlier run carries over)",
        ],
        "runs": { "baseline": base_runs, "browser": browser_runs, "node": node_runs },
    }))
}

fn main() -> ExitCode {
    peermail_e2e::bench::bench_main("storage_node_transfer.json", run, |report| {
        let g = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let mem = &report["node_memory_mib"];
        format!(
        "storage node transfer ({} MiB, median of {}): browser -> storage node {:.2} MB/s beside \
         browser -> browser {:.2} MB/s and a raw data channel at {:.2} MB/s: ratio {:.3} \
         (goal {GOAL}: {}), node/raw {:.2}; sent -> done ratio {:.2}; the node's peak RSS \
         {:.1} MiB (idle {:.1} MiB), {:.2} cores",
        g(&report["file_bytes"]) / MIB as f64,
        report["rounds"],
        g(&report["node_mb_s"]["median"]),
        g(&report["browser_mb_s"]["median"]),
        g(&report["baseline_mb_s"]["median"]),
        g(&report["ratio"]),
        if report["meets_goal"] == true { "met" } else { "not met" },
        g(&report["ratio_node_to_baseline"]),
        g(&report["sent_to_done"]["ratio"]),
        g(&mem["peak_vmhwm_median"]),
        g(&mem["rss_after_pairing"]),
        g(&report["node_cpu_cores_during_transfer"]["median"]),
    )
    })
}
