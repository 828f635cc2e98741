//! What the browser transfer benchmarks share (`benches/attachment_transfer.rs`,
//! `benches/storage_node_transfer.rs`): the test file, polling a page, the receiving page's
//! JS heap and wasm memory, the raw data-channel baseline between two pages, and one app
//! transfer from one browser to another timed in the receiving page. In the JSON of a run,
//! `bob_…` is the receiving page (whoever receives), `alice_…` the sending one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::Browser;

pub const MIB: u64 = 1024 * 1024;
/// One encrypted chunk (60 KiB of plaintext + 16 bytes of tag): one peer frame.
pub const MESSAGE_BYTES: u64 = 61_456;
/// The app's `SERVE_HIGH_WATER` / `SERVE_LOW_WATER` (web-client/src/runtime.rs).
pub const HIGH_WATER: u64 = 4 * MIB - 64 * 1024;
pub const LOW_WATER: u64 = MIB;
/// Chromium flags for both browsers: exact `performance.memory` figures.
pub const BROWSER_ARGS: &[&str] = &["--enable-precise-memory-info"];
/// The longest a single transfer or sealing may take.
pub const TRANSFER_LIMIT: Duration = Duration::from_secs(900);

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn mb_s(bytes: f64, ms: f64) -> f64 {
    bytes / 1e6 / (ms / 1e3)
}

/// Writes `len` bytes of pseudo-random data (xorshift; incompressible enough) to `path`.
pub fn write_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(
        4 * MIB as usize,
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut x = seed | 1;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Free space (bytes) on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-k", "--output=avail"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

/// Polls `script` (returning null while not done, a string on failure, an object when done)
/// every half second until it answers or `TRANSFER_LIMIT` passes.
pub async fn poll(b: &Browser, what: &str, script: &str) -> Result<Value> {
    let deadline = Instant::now() + TRANSFER_LIMIT;
    loop {
        let v: Value = b.eval(script, vec![]).await?;
        match v {
            Value::Null => {}
            Value::String(e) => bail!("{}: {what}: {e}", b.name),
            v => return Ok(v),
        }
        if Instant::now() > deadline {
            bail!(
                "{}: {what}: not done after {}s",
                b.name,
                TRANSFER_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Bob's page: JS heap and wasm memory

/// Collects garbage in the page (CDP), then polls `performance.memory` every 100 ms, and
/// the wasm memory found by [`wasm_memory`] (each change, with its `Date.now()`).
pub async fn heap_start(b: &Browser) -> Result<()> {
    b.cdp("HeapProfiler.collectGarbage", json!({})).await?;
    let _: bool = b
        .eval(
            "if (window.__heapTimer) clearInterval(window.__heapTimer); \
             const m = performance.memory; \
             const wasm = () => (window.__wasmMems || []).reduce((a, w) => a + w.buffer.byteLength, 0); \
             window.__heap = { start: m.usedJSHeapSize, peak_used: m.usedJSHeapSize, \
                               peak_total: m.totalJSHeapSize, samples: 1, \
                               wasm_series: [[Date.now(), wasm()]] }; \
             window.__heapTimer = setInterval(() => { const m = performance.memory, h = window.__heap; \
               h.samples += 1; h.peak_used = Math.max(h.peak_used, m.usedJSHeapSize); \
               h.peak_total = Math.max(h.peak_total, m.totalJSHeapSize); \
               const w = wasm(); if (w !== h.wasm_series[h.wasm_series.length - 1][1]) h.wasm_series.push([Date.now(), w]); \
             }, 100); \
             return true;",
            vec![],
        )
        .await?;
    Ok(())
}

/// Stops the heap poller; `{start, peak_used, peak_total, samples, after_gc}` in bytes:
/// `after_gc` is the used heap after a garbage collection at the end, what the page still
/// holds (the peak also counts garbage not collected yet).
pub async fn heap_stop(b: &Browser) -> Result<Value> {
    let mut heap: Value = b
        .eval(
            "clearInterval(window.__heapTimer); window.__heapTimer = null; return window.__heap;",
            vec![],
        )
        .await?;
    b.cdp("HeapProfiler.collectGarbage", json!({})).await?;
    let after: f64 = b
        .eval("return performance.memory.usedJSHeapSize;", vec![])
        .await?;
    heap["after_gc"] = json!(after);
    Ok(heap)
}

/// The byte size of each `WebAssembly.Memory` of the page (CDP `Runtime.queryObjects`).
/// Wasm memory only grows, so this is its peak so far.
pub async fn wasm_memory(b: &Browser) -> Result<Vec<u64>> {
    let proto = b
        .cdp(
            "Runtime.evaluate",
            json!({ "expression": "WebAssembly.Memory.prototype" }),
        )
        .await?;
    let proto_id = proto["result"]["objectId"]
        .as_str()
        .context("no object id for WebAssembly.Memory.prototype")?;
    let found = b
        .cdp(
            "Runtime.queryObjects",
            json!({ "prototypeObjectId": proto_id }),
        )
        .await?;
    let arr_id = found["objects"]["objectId"]
        .as_str()
        .context("Runtime.queryObjects returned no array")?;
    let sizes = b
        .cdp(
            "Runtime.callFunctionOn",
            json!({
                "objectId": arr_id,
                // Kept in the page too, so the heap poller can follow it (`heap_start`).
                "functionDeclaration": "function() { window.__wasmMems = this.slice(); return this.map(m => m.buffer.byteLength); }",
                "returnByValue": true,
            }),
        )
        .await?;
    let _ = b
        .cdp("Runtime.releaseObjectGroup", json!({ "objectGroup": "" }))
        .await;
    Ok(sizes["result"]["value"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default())
}

// ---------------------------------------------------------------------------------------
// Baseline: a raw data channel between the two pages

/// Opens an ordered data channel from Alice's page (offerer, sender) to Bob's.
pub async fn open_raw_channel(alice: &Browser, bob: &Browser) -> Result<()> {
    const GATHERED: &str = "const gathered = (pc) => pc.iceGatheringState === 'complete' \
        ? Promise.resolve() : new Promise((ok) => pc.addEventListener('icegatheringstatechange', \
          () => { if (pc.iceGatheringState === 'complete') ok(); }));";
    let offer: Value = alice
        .eval_async(
            &format!(
                "const done = arguments[arguments.length - 1]; {GATHERED} \
                 (async () => {{ \
                   if (window.__rawPc) window.__rawPc.close(); \
                   const pc = new RTCPeerConnection({{ iceServers: [] }}); \
                   const ch = pc.createDataChannel('bench', {{ ordered: true }}); \
                   ch.binaryType = 'arraybuffer'; \
                   window.__rawPc = pc; window.__rawCh = ch; \
                   await pc.setLocalDescription(await pc.createOffer()); \
                   await gathered(pc); \
                   return pc.localDescription.sdp; \
                 }})().then(done, (e) => done({{ error: String(e) }}));"
            ),
            vec![],
        )
        .await?;
    let offer = offer
        .as_str()
        .with_context(|| format!("Alice's offer: {offer}"))?
        .to_string();
    let answer: Value = bob
        .eval_async(
            &format!(
                "const [sdp, done] = arguments; {GATHERED} \
                 (async () => {{ \
                   const pc = new RTCPeerConnection({{ iceServers: [] }}); \
                   window.__rawPc = pc; window.__rawRx = null; \
                   pc.ondatachannel = (e) => {{ \
                     const ch = e.channel; ch.binaryType = 'arraybuffer'; window.__rawCh = ch; \
                     ch.onmessage = (m) => {{ \
                       const r = window.__rawRx; if (!r) return; \
                       const n = m.data.byteLength; \
                       if (r.bytes === 0) {{ r.first = Date.now(); r.first_bytes = n; }} \
                       r.bytes += n; r.messages += 1; \
                       if (r.bytes >= r.target && !r.last) r.last = Date.now(); \
                     }}; \
                   }}; \
                   await pc.setRemoteDescription({{ type: 'offer', sdp }}); \
                   await pc.setLocalDescription(await pc.createAnswer()); \
                   await gathered(pc); \
                   return pc.localDescription.sdp; \
                 }})().then(done, (e) => done({{ error: String(e) }}));"
            ),
            vec![json!(offer)],
        )
        .await?;
    let answer = answer
        .as_str()
        .with_context(|| format!("Bob's answer: {answer}"))?
        .to_string();
    let _: Value = alice
        .eval_async(
            "const [sdp, done] = arguments; \
             window.__rawPc.setRemoteDescription({ type: 'answer', sdp }) \
               .then(() => done(true), (e) => done({ error: String(e) }));",
            vec![json!(answer)],
        )
        .await?;
    poll(
        alice,
        "the raw data channel to open",
        "const a = window.__rawCh; return a && a.readyState === 'open' ? true : null;",
    )
    .await?;
    poll(
        bob,
        "the raw data channel to open",
        "const a = window.__rawCh; return a && a.readyState === 'open' ? true : null;",
    )
    .await?;
    Ok(())
}

/// CPU time (seconds) used so far by the running Chromium processes, by process type
/// (`browser`, `renderer`, `gpu-process`, `network`, other utilities by their sub-type),
/// from `/proc` (clock ticks of 1/100 s, Linux's fixed `USER_HZ`). Both pages' renderers
/// add up under `renderer`. Also, under keys `thread:<page> <type> <thread>`, the same per
/// thread: `<page>` is the last part of the browser's `--user-data-dir` (the profile, named
/// after the person), `<thread>` the thread's name (`main` for a process's main thread).
pub fn browser_cpu() -> std::collections::BTreeMap<String, f64> {
    use crate::browser::{chromium_processes, profile_of};
    let mut out = std::collections::BTreeMap::new();
    // utime and stime are the 12th and 13th fields after the command name.
    let ticks = |f: &[String]| -> f64 {
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (t(11) + t(12)) / 100.0
    };
    let procs = chromium_processes();
    for (&pid, p) in &procs {
        *out.entry(p.kind.clone()).or_insert(0.0) += ticks(&p.stat);
        // The page: the profile of the browser process this one descends from.
        let page = profile_of(&procs, pid)
            .and_then(|d| d.file_name())
            .map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned());
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let name = match (stat.find('('), stat.rfind(')')) {
                (Some(a), Some(b)) if a < b => &stat[a + 1..b],
                _ => "?",
            };
            let name = if t.file_name().to_string_lossy() == pid.to_string() {
                "main"
            } else {
                name
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            *out.entry(format!("thread:{page} {} {name}", p.kind))
                .or_insert(0.0) += ticks(&f);
        }
    }
    out
}

/// The CPU used between two [`browser_cpu`] readings over `wall` seconds while `bytes`
/// moved: cores in all and by process type, milliseconds of CPU per MB, and the threads
/// that used at least 0.5 ms per MB (`ms_per_mb_by_thread`).
pub fn cpu_used(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    wall: f64,
    bytes: f64,
) -> Value {
    let mut by = serde_json::Map::new();
    let mut threads: Vec<(String, f64)> = Vec::new();
    let mut total = 0.0;
    let mb = bytes / 1e6;
    for (k, v) in after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        if d <= 0.0 {
            continue;
        }
        if let Some(thread) = k.strip_prefix("thread:") {
            if d * 1000.0 / mb >= 0.5 {
                threads.push((thread.to_string(), d * 1000.0 / mb));
            }
        } else {
            total += d;
            by.insert(k.clone(), json!(d / wall));
        }
    }
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let threads: serde_json::Map<String, Value> = threads
        .into_iter()
        .map(|(k, v)| (k, json!((v * 10.0).round() / 10.0)))
        .collect();
    json!({
        "cores": total / wall,
        "cores_by_process": by,
        "cpu_ms_per_mb": total * 1000.0 / mb,
        "ms_per_mb_by_thread": threads,
        "wall_s": wall,
    })
}

/// One baseline transfer of `total` bytes over a new raw channel; Bob's page times it.
pub async fn baseline_run(alice: &Browser, bob: &Browser, total: u64) -> Result<Value> {
    open_raw_channel(alice, bob)
        .await
        .context("opening the baseline data channel")?;
    let _: bool = bob
        .eval(
            "window.__rawRx = { target: arguments[0], bytes: 0, messages: 0, first: 0, \
                                first_bytes: 0, last: 0 }; return true;",
            vec![json!(total)],
        )
        .await?;
    heap_start(bob).await?;
    let (cpu0, t0) = (browser_cpu(), Instant::now());
    let _: bool = alice
        .eval(
            "const [total, size, high, low] = arguments; const ch = window.__rawCh; \
             ch.bufferedAmountLowThreshold = low; \
             const buf = new Uint8Array(size); crypto.getRandomValues(buf); \
             const tx = window.__rawTx = { start: Date.now(), end: 0, waits: 0 }; \
             let sent = 0; \
             const pump = () => { \
               while (sent < total) { \
                 if (ch.bufferedAmount > high) { tx.waits += 1; \
                   ch.addEventListener('bufferedamountlow', pump, { once: true }); return; } \
                 const n = Math.min(size, total - sent); \
                 ch.send(n === size ? buf : buf.subarray(0, n)); sent += n; \
               } \
               tx.end = Date.now(); \
             }; \
             pump(); return true;",
            vec![
                json!(total),
                json!(MESSAGE_BYTES),
                json!(HIGH_WATER),
                json!(LOW_WATER),
            ],
        )
        .await?;
    let rx = poll(
        bob,
        "the baseline transfer",
        "const r = window.__rawRx; \
         if (!window.__rawCh || window.__rawCh.readyState !== 'open') return 'the raw channel closed'; \
         return r.last ? r : null;",
    )
    .await?;
    let cpu = cpu_used(
        &cpu0,
        &browser_cpu(),
        t0.elapsed().as_secs_f64(),
        total as f64,
    );
    let heap = heap_stop(bob).await?;
    let tx: Value = alice.eval("return window.__rawTx;", vec![]).await?;
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let ms = f(&rx, "last") - f(&rx, "first");
    let rate = mb_s(total as f64 - f(&rx, "first_bytes"), ms);
    Ok(json!({
        "kind": "baseline",
        "bytes": total,
        "messages": rx["messages"],
        "first_to_last_ms": ms,
        "mb_s": rate,
        "sender_start_to_last_ms": f(&rx, "last") - f(&tx, "start"),
        "sender_waits_on_bufferedamountlow": tx["waits"],
        "browser_cpu": cpu,
        "bob_heap": heap,
    }))
}

// ---------------------------------------------------------------------------------------
// The app

/// In Bob's page: opens the mail `subject` when its row appears and records the progress of
/// its attachment `name`.
pub const BOB_OBSERVER: &str = r#"
const [subject, name, size] = arguments;
if (window.__appObs) window.__appObs.disconnect();
const r = window.__app = { subject, name, size, row: 0, seen: 0, seen_done: null, first: 0,
  first_done: 0, all: 0, checking: 0, complete: 0, failed: null, states: [], mutations: 0,
  done_updates: 0, last_done: -1 };
const check = () => {
  r.mutations += 1;
  const now = Date.now();
  if (!r.row) {
    for (const row of document.querySelectorAll('#message-list .message-row')) {
      const s = row.querySelector('.subject');
      if (s && s.textContent.includes(subject)) { r.row = now; row.click(); break; }
    }
  }
  const pane = document.querySelector('#reading-pane .subject');
  if (!pane || !pane.textContent.includes(subject)) return;
  const li = document.querySelector(`#attachments li.attachment[data-name="${name}"]`);
  if (!li) return;
  const done = Number(li.getAttribute('data-done') || 0);
  const st = li.getAttribute('data-state');
  if (!r.seen) { r.seen = now; r.seen_done = done; }
  if (done !== r.last_done) { r.done_updates += 1; r.last_done = done; }
  if (done > 0 && !r.first) { r.first = now; r.first_done = done; }
  if (done >= size && !r.all) r.all = now;
  if (st !== (r.states.length ? r.states[r.states.length - 1][0] : null)) r.states.push([st, now, done]);
  if (st === 'checking' && !r.checking) r.checking = now;
  if (st === 'complete' && !r.complete) { r.complete = now; obs.disconnect(); }
  if ((st === 'failed' || st === 'cancelled') && !r.failed) {
    const s = li.querySelector('.attachment-status');
    r.failed = st + ': ' + (s ? s.textContent : '');
  }
};
const obs = window.__appObs = new MutationObserver(check);
obs.observe(document.body, { subtree: true, childList: true, characterData: true,
  attributes: true, attributeFilter: ['data-done', 'data-state'] });
check();
return true;
"#;

/// In Alice's page: the click on Send and the moment the Compose form is gone.
pub const ALICE_SEAL_OBSERVER: &str = r#"
window.__seal = { click: 0, closed: 0 };
if (!window.__sealListener) {
  window.__sealListener = true;
  document.addEventListener('click', (e) => {
    const s = window.__seal;
    if (!s.click && e.target.closest && e.target.closest('#compose-send')) s.click = Date.now();
  }, true);
}
if (window.__sealObs) window.__sealObs.disconnect();
const obs = window.__sealObs = new MutationObserver(() => {
  const s = window.__seal;
  if (s.click && !s.closed && !document.getElementById('compose-to')) { s.closed = Date.now(); obs.disconnect(); }
});
obs.observe(document.body, { subtree: true, childList: true });
return true;
"#;

/// One app transfer: Alice mails Bob `file`; Bob's page times the pull.
pub async fn app_run(
    alice: &Browser,
    bob: &Browser,
    file: &Path,
    subject: &str,
    size: u64,
    fresh_page: bool,
) -> Result<Value> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .context("file name")?;
    // A fresh page for each app run: its wasm memory (which never shrinks) and JS heap
    // then belong to this transfer alone.
    if fresh_page {
        bob.reload().await?;
        bob.wait_online().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        alice.wait_presence(&bob.address(), "online").await?;
    }
    let wasm_before = wasm_memory(bob).await.unwrap_or_default();
    bob.open_folder("inbox").await?;
    let _: bool = bob
        .eval(BOB_OBSERVER, vec![json!(subject), json!(name), json!(size)])
        .await?;
    let _: bool = alice.eval(ALICE_SEAL_OBSERVER, vec![]).await?;
    heap_start(bob).await?;
    alice
        .compose_with_files(&bob.address(), subject, "Benchmark file.", &[file])
        .await?;
    let seal = poll(
        alice,
        "the Compose form to close",
        "const s = window.__seal; return s.closed ? s : null;",
    )
    .await?;
    let (cpu0, t0) = (browser_cpu(), Instant::now());
    let r = poll(
        bob,
        &format!("{name} to be complete"),
        "const r = window.__app; return r.failed ? r.failed : (r.complete ? r : null);",
    )
    .await?;
    let cpu = cpu_used(
        &cpu0,
        &browser_cpu(),
        t0.elapsed().as_secs_f64(),
        size as f64,
    );
    let heap = heap_stop(bob).await?;
    let wasm = wasm_memory(bob).await.unwrap_or_else(|e| {
        eprintln!("bench: wasm memory not measured: {e:#}");
        Vec::new()
    });
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let (first, first_done) = (f(&r, "first"), f(&r, "first_done"));
    ensure!(
        first > 0.0,
        "Bob's page never showed part of {name} (states {})",
        r["states"]
    );
    let moved = size as f64 - first_done;
    let to_complete = f(&r, "complete") - first;
    let to_all = f(&r, "all") - first;
    let seal_ms = f(&seal, "closed") - f(&seal, "click");
    Ok(json!({
        "kind": "app",
        "bytes": size,
        "subject": subject,
        "first_progress_bytes": first_done,
        "first_to_complete_ms": to_complete,
        "mb_s": mb_s(moved, to_complete),
        "first_to_all_stored_ms": to_all,
        "mb_s_until_all_stored": mb_s(moved, to_all),
        "whole_file_check_ms": f(&r, "complete") - f(&r, "all"),
        "row_to_complete_ms": f(&r, "complete") - f(&r, "row"),
        "row_to_first_progress_ms": first - f(&r, "row"),
        "progress_updates_seen": r["done_updates"],
        "dom_mutation_batches": r["mutations"],
        "states": r["states"],
        "sealing_ms": seal_ms,
        "sealing_mb_s": mb_s(size as f64, seal_ms),
        "send_to_complete_ms": f(&r, "complete") - f(&seal, "click"),
        "browser_cpu": cpu,
        "bob_heap": heap,
        "bob_wasm_memory_bytes": wasm,
        "bob_wasm_memory_bytes_before": wasm_before,
        "instants": {
            "send": f(&seal, "click"),
            "sent": f(&seal, "closed"),
            "row": f(&r, "row"),
            "first": first,
            "all": f(&r, "all"),
            "complete": f(&r, "complete"),
        },
    }))
}

pub fn report_dir() -> PathBuf {
    std::env::var_os("PEERMAIL_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench"))
}

/// The entry point of a browser benchmark: reads the configuration, enters a private
/// network namespace, runs `run` (an hour at most) on a two-thread runtime, writes its report
/// as `target/bench/<file>` and prints `summary(report)`.
pub fn bench_main<F, Fut>(file: &str, run: F, summary: impl FnOnce(&Value) -> String) -> ExitCode
where
    F: FnOnce(crate::Config) -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let config = match crate::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(code) = crate::netns::enter("bench") {
        return code;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(3600), run(config)).await })
    {
        Ok(Ok(report)) => {
            let dir = report_dir();
            let _ = std::fs::create_dir_all(&dir);
            let text = serde_json::to_string_pretty(&report).expect("json");
            if let Err(e) = std::fs::write(dir.join(file), &text) {
                eprintln!("bench: writing the report: {e}");
                return ExitCode::FAILURE;
            }
            println!("{}", summary(&report));
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("bench: timed out after an hour");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// The storage reference

/// Chunks per stored segment (web-client `chunks::SEGMENT_CHUNKS`): one Blob per segment.
pub const SEGMENT_CHUNKS: u64 = 16;

/// What storing a received file and reading it back costs the browser, alone: in Bob's page,
/// `total` bytes of random data written to IndexedDB the way the app stores received chunks
/// (one Blob of [`SEGMENT_CHUNKS`] chunk-sized parts per segment, one record and one
/// transaction per segment, in a database of its own), then every segment read back the way
/// a sender reads them (`Blob.arrayBuffer()`). No network, no crypto, no app code. CPU of
/// all Chromium processes, per phase; the database is deleted afterwards.
pub async fn storage_reference(bob: &Browser, total: u64) -> Result<Value> {
    let _: bool = bob
        .eval_async(
            "const [segBytes, done] = [arguments[0], arguments[arguments.length - 1]]; \
             const mem = new Uint8Array(segBytes); \
             for (let i = 0; i < segBytes; i += 65536) \
               crypto.getRandomValues(mem.subarray(i, Math.min(segBytes, i + 65536))); \
             const q = indexedDB.open('bench-storage-reference', 1); \
             q.onupgradeneeded = () => q.result.createObjectStore('segments'); \
             q.onsuccess = () => { window.__storage = { db: q.result, mem }; done(true); }; \
             q.onerror = () => done(false);",
            vec![json!(SEGMENT_CHUNKS * MESSAGE_BYTES)],
        )
        .await?;
    let segments = total.div_ceil(SEGMENT_CHUNKS * MESSAGE_BYTES);
    let phase = |script: &'static str| async move {
        let (cpu0, t0) = (browser_cpu(), Instant::now());
        let r: Value = bob
            .eval_async(
                script,
                vec![json!(segments), json!(SEGMENT_CHUNKS), json!(MESSAGE_BYTES)],
            )
            .await?;
        if let Some(e) = r.as_str() {
            bail!("the storage reference: {e}");
        }
        let wall = t0.elapsed().as_secs_f64();
        let bytes = (segments * SEGMENT_CHUNKS * MESSAGE_BYTES) as f64;
        Ok::<_, anyhow::Error>(json!({
            "page_ms": r["ms"],
            "browser_cpu": cpu_used(&cpu0, &browser_cpu(), wall, bytes),
        }))
    };
    let write = phase(
        "const [n, chunks, chunk, done] = arguments; const { db, mem } = window.__storage; \
         const t0 = performance.now(); \
         (async () => { \
           for (let s = 0; s < n; s++) { \
             mem[0] = s & 255; mem[1] = s >> 8; \
             const parts = []; \
             for (let c = 0; c < chunks; c++) parts.push(mem.subarray(c * chunk, (c + 1) * chunk)); \
             const value = { b: new Blob(parts), o: new Uint32Array(chunks + 1) }; \
             await new Promise((ok, fail) => { \
               const tx = db.transaction('segments', 'readwrite'); \
               tx.objectStore('segments').put(value, s); \
               tx.oncomplete = ok; tx.onerror = () => fail(tx.error); tx.onabort = () => fail(tx.error); }); \
           } \
         })().then(() => done({ ms: performance.now() - t0 }), e => done('writing: ' + e));",
    )
    .await?;
    let read = phase(
        "const [n, chunks, chunk, done] = arguments; const { db } = window.__storage; \
         const t0 = performance.now(); \
         (async () => { \
           for (let s = 0; s < n; s++) { \
             const v = await new Promise((ok, fail) => { \
               const r = db.transaction('segments').objectStore('segments').get(s); \
               r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); }); \
             const bytes = await v.b.arrayBuffer(); \
             if (bytes.byteLength !== chunks * chunk) throw new Error('segment ' + s + ' is short'); \
           } \
         })().then(() => done({ ms: performance.now() - t0 }), e => done('reading: ' + e));",
    )
    .await?;
    let _: bool = bob
        .eval_async(
            "const done = arguments[arguments.length - 1]; \
             window.__storage.db.close(); window.__storage = null; \
             const q = indexedDB.deleteDatabase('bench-storage-reference'); \
             q.onsuccess = () => done(true); q.onerror = () => done(false);",
            vec![],
        )
        .await?;
    Ok(json!({ "write": write, "read": read, "bytes": segments * SEGMENT_CHUNKS * MESSAGE_BYTES }))
}
