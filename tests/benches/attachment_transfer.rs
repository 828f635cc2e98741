//! Benchmark: a 256 MiB attachment from one browser to another, beside a raw data-channel
//! baseline measured in the same run between the same two browsers.
//!
//! - **Baseline**: the bench opens its own ordered `RTCDataChannel` between Alice's and Bob's
//!   pages (offer/answer exchanged through WebDriver once ICE gathering is complete; no
//!   relay) and sends the file's size in messages of 61,456 bytes (one encrypted chunk's
//!   size), pacing like the app's `serve`: send while `bufferedAmount` ≤ 4 MiB − 64 KiB,
//!   otherwise wait for `bufferedamountlow` (threshold 1 MiB), never a timer. Bob's page only
//!   counts bytes. No encryption, no storage.
//! - **App**: Alice mails Bob (online) the file with the Compose file picker; Bob's node
//!   pulls it from hers. A `MutationObserver` in Bob's page (installed before Send) opens the
//!   mail as soon as its row appears and records when `li.attachment`'s `data-done` first
//!   becomes > 0, when it reaches the size (every chunk stored), and when `data-state`
//!   becomes `complete` (which includes the whole-file check).
//!
//! Both throughputs are timed in Bob's page with `Date.now()`, from the first received
//! byte to the last (app: to `complete`; also reported up to the last stored chunk), over the
//! bytes after the first message/progress step: MB/s = (size − bytes already there at the
//! first instant) / (last − first), MB = 10⁶ bytes. Alice's encryption of the file at Send
//! is not part of the transfer; it is reported separately (click on Send → the Compose form
//! gone, in Alice's page).
//!
//! Runs: one app transfer of half the size first (warm-up, and the heap comparison), then
//! `PEERMAIL_BENCH_ROUNDS` (default 3) pairs of baseline and app runs, alternating so machine
//! noise hits both; medians; `ratio` = app ÷ baseline, goal ≥ 0.8. Bob's page polls
//! `performance.memory.usedJSHeapSize` every 100 ms (the browsers run with
//! `--enable-precise-memory-info`; a CDP garbage collection before each run); its wasm
//! memory is read through chromedriver's CDP endpoint (`Runtime.queryObjects` of
//! `WebAssembly.Memory`) after each run; Bob's page is reloaded before each app run, so
//! that is the run's peak (wasm memory never shrinks), and the baseline gets a new channel. `heap_flat`: peak(full) ≤ 1.25 × peak(half) + 8 MiB.
//! Each run also reads the CPU time of all the browsers' processes from `/proc` (the
//! transfer window only): the raw channel alone keeps most of the machine's two cores
//! busy, so what the app adds per megabyte decides the ratio.
//! - **Storage alone** (a reference for where the app's extra CPU goes): after the rounds,
//!   as many times, Bob's page writes the file's size of random bytes to IndexedDB the way
//!   the app stores received chunks and reads it back the way a sender reads them (no
//!   network, no crypto, no app code); `reference_storage_only.ratio_ceiling` is the ratio
//!   the app could reach if storage were all it added to the baseline's CPU per MB.
//!
//! When the goal is not met (or `PEERMAIL_BENCH_PROFILE=1`), one more app transfer runs
//! with the CPU profiler on in both pages, and the report lists where their main threads
//! spent the time.
//!
//! `PEERMAIL_BENCH_ATTACH_MIB` changes the size (default 256). Like the e2e tests it
//! re-executes itself in a private network namespace. Run with `cargo xtask bench`. Writes
//! `target/bench/attachment_transfer.json`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use peermail_e2e::bench::{
    app_run, baseline_run, free_bytes, mb_s, median, storage_reference, write_file, BROWSER_ARGS,
    MESSAGE_BYTES, MIB, TRANSFER_LIMIT,
};
use peermail_e2e::{Browser, Config, Harness};
use serde_json::{json, Value};

const GOAL: f64 = 0.8;

// ---------------------------------------------------------------------------------------
// Profile (when the goal is not met)

/// Starts the CPU profiler in the page (1 ms samples); returns the page's `Date.now()` just
/// after, which places the samples on the pages' common clock (within a few ms).
async fn profile_start(b: &Browser) -> Result<f64> {
    b.cdp("Profiler.enable", json!({})).await?;
    b.cdp("Profiler.setSamplingInterval", json!({ "interval": 1000 }))
        .await?;
    b.cdp("Profiler.start", json!({})).await?;
    b.eval("return Date.now();", vec![]).await
}

/// Stops the profiler and sums self time within each of `windows` (name, from, to: the
/// pages' `Date.now()`): by category (idle, program, GC, wasm, JS) and the top functions.
async fn profile_stop(b: &Browser, t0: f64, windows: &[(&str, f64, f64)]) -> Result<Value> {
    let p = b.cdp("Profiler.stop", json!({})).await?;
    let _ = b.cdp("Profiler.disable", json!({})).await;
    let p = &p["profile"];
    let mut frame: HashMap<u64, (String, String)> = HashMap::new();
    for n in p["nodes"].as_array().into_iter().flatten() {
        let cf = &n["callFrame"];
        let func = cf["functionName"].as_str().unwrap_or("").to_string();
        let url = cf["url"].as_str().unwrap_or("").to_string();
        frame.insert(n["id"].as_u64().unwrap_or(0), (func, url));
    }
    let samples = p["samples"].as_array().cloned().unwrap_or_default();
    let deltas: Vec<f64> = p["timeDeltas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d.as_f64().unwrap_or(0.0) / 1000.0)
        .collect();
    // Sample i was taken at t0 + Σ deltas[..=i]; it stands for the time until the next one.
    let mut at = Vec::with_capacity(samples.len());
    let mut t = t0;
    for d in &deltas {
        t += d;
        at.push(t);
    }
    let mut out = serde_json::Map::new();
    for &(name, from, to) in windows {
        let mut by_fn: HashMap<String, f64> = HashMap::new();
        let mut by_cat: HashMap<&str, f64> = HashMap::new();
        let mut total = 0.0;
        for (i, s) in samples.iter().enumerate() {
            let (Some(&when), Some(&ms)) = (at.get(i), deltas.get(i + 1)) else {
                continue;
            };
            if when < from || when > to {
                continue;
            }
            total += ms;
            let (func, url) = frame
                .get(&s.as_u64().unwrap_or(0))
                .cloned()
                .unwrap_or_default();
            let cat = match func.as_str() {
                "(idle)" => "idle",
                "(program)" => "program (browser internals, rendering, IPC)",
                "(garbage collector)" => "garbage collector",
                _ if url.starts_with("wasm://") || url.ends_with(".wasm") => "wasm",
                _ => "javascript and web APIs (IndexedDB, Blob, DOM, wasm-bindgen glue)",
            };
            *by_cat.entry(cat).or_default() += ms;
            let short = url.rsplit('/').next().unwrap_or("").to_string();
            let key = if func.is_empty() {
                format!("(anonymous) {short}")
            } else {
                format!("{func} {short}")
            };
            *by_fn.entry(key.trim().to_string()).or_default() += ms;
        }
        let mut top: Vec<(String, f64)> = by_fn.into_iter().collect();
        top.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        top.truncate(20);
        let pct = |ms: f64| (ms / total.max(1e-9) * 1000.0).round() / 10.0;
        let mut cats: Vec<(&str, f64)> = by_cat.into_iter().collect();
        cats.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        out.insert(
            name.to_string(),
            json!({
                "window_ms": to - from,
                "sampled_ms": total,
                "by_category": cats.iter().map(|(c, ms)| json!({ "category": c, "ms": ms.round(), "percent": pct(*ms) })).collect::<Vec<_>>(),
                "top_self_time": top.iter().map(|(f, ms)| json!({ "function": f, "ms": ms.round(), "percent": pct(*ms) })).collect::<Vec<_>>(),
            }),
        );
    }
    Ok(Value::Object(out))
}

/// Stops a profiler whose run failed.
async fn profile_abort(b: &Browser) -> Result<()> {
    b.cdp("Profiler.stop", json!({})).await?;
    b.cdp("Profiler.disable", json!({})).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------

async fn run(config: Config) -> Result<Value> {
    let rounds: usize = std::env::var("PEERMAIL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let size_mib: u64 = std::env::var("PEERMAIL_BENCH_ATTACH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let force_profile = std::env::var("PEERMAIL_BENCH_PROFILE").is_ok_and(|v| v == "1");
    let (size, half) = (size_mib * MIB, size_mib * MIB / 2);
    let h = Harness::start(config)?;
    let scratch = h.scratch.path().to_path_buf();
    // Alice's and Bob's stored copies of each run (half, rounds, a profiled one) and the files.
    let need = 2 * ((rounds as u64 + 1) * size + half) + size + half;
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
    let half_file = scratch.join(format!("bench-{}MiB.bin", size_mib / 2));
    write_file(&file, size, 4)?;
    write_file(&half_file, half, 5)?;

    let mut alice = h.browser_with_args("alice", BROWSER_ARGS).await?;
    let mut bob = h.browser_with_args("bob", BROWSER_ARGS).await?;
    alice.wait = TRANSFER_LIMIT;
    bob.wait = Duration::from_secs(60);
    alice.sign_up("alice").await?;
    bob.sign_up("bob").await?;
    let bob_addr = bob.address();
    alice.add_contact(&bob_addr).await?;
    alice.wait_presence(&bob_addr, "online").await?;
    eprintln!("bench: runs of {size_mib} MiB");

    let disk = |what: &str| {
        let free = free_bytes(&scratch).unwrap_or(0);
        eprintln!("bench: {what}; {:.1} GB free", free as f64 / 1e9);
        free
    };
    let half_run = app_run(&alice, &bob, &half_file, "bench half 0", half, true)
        .await
        .context("the half-size app run")?;
    eprintln!(
        "bench: app {} MiB: {:.2} MB/s",
        size_mib / 2,
        half_run["mb_s"].as_f64().unwrap_or(f64::NAN)
    );
    disk("after the half-size run");

    let mut base_runs = Vec::new();
    let mut app_runs = Vec::new();
    for i in 0..rounds {
        let b = baseline_run(&alice, &bob, size)
            .await
            .with_context(|| format!("baseline run {i}"))?;
        eprintln!(
            "bench: baseline {i}: {:.2} MB/s",
            b["mb_s"].as_f64().unwrap_or(f64::NAN)
        );
        base_runs.push(b);
        if disk("before an app run") < size * 3 {
            bail!("less than {} MiB free: stopping", size * 3 / MIB);
        }
        let a = app_run(&alice, &bob, &file, &format!("bench full {i}"), size, true)
            .await
            .with_context(|| format!("app run {i}"))?;
        eprintln!(
            "bench: app {i}: {:.2} MB/s (sealing {:.0} ms, check {:.0} ms)",
            a["mb_s"].as_f64().unwrap_or(f64::NAN),
            a["sealing_ms"].as_f64().unwrap_or(f64::NAN),
            a["whole_file_check_ms"].as_f64().unwrap_or(f64::NAN),
        );
        app_runs.push(a);
    }

    // What storing and reading back the file costs the browser alone (no network, no
    // crypto, no app code), as often as there were rounds.
    let mut storage_runs = Vec::new();
    for i in 0..rounds {
        let s = storage_reference(&bob, size)
            .await
            .with_context(|| format!("storage reference {i}"))?;
        eprintln!(
            "bench: storage alone {i}: write {:.1}, read {:.1} ms of CPU per MB",
            s["write"]["browser_cpu"]["cpu_ms_per_mb"]
                .as_f64()
                .unwrap_or(f64::NAN),
            s["read"]["browser_cpu"]["cpu_ms_per_mb"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
        storage_runs.push(s);
    }

    let col = |runs: &[Value], k: &str| -> Vec<f64> {
        runs.iter().filter_map(|r| r[k].as_f64()).collect()
    };
    let heap_col = |runs: &[Value]| -> Vec<f64> {
        runs.iter()
            .filter_map(|r| r["bob_heap"]["peak_used"].as_f64())
            .collect()
    };
    let base = col(&base_runs, "mb_s");
    let app = col(&app_runs, "mb_s");
    let app_stored = col(&app_runs, "mb_s_until_all_stored");
    let check = col(&app_runs, "whole_file_check_ms");
    let seal = col(&app_runs, "sealing_ms");
    let (mb, ma) = (median(&base), median(&app));
    let cpu_col = |runs: &[Value], k: &str| -> Vec<f64> {
        runs.iter()
            .filter_map(|r| r["browser_cpu"][k].as_f64())
            .collect()
    };
    // Per thread, the median over the runs of milliseconds of CPU per MB (a thread absent
    // from a run counts as 0 there).
    let by_thread = |runs: &[Value]| -> Value {
        let mut keys = std::collections::BTreeSet::new();
        for r in runs {
            if let Some(m) = r["browser_cpu"]["ms_per_mb_by_thread"].as_object() {
                keys.extend(m.keys().cloned());
            }
        }
        let mut rows: Vec<(String, f64)> = keys
            .into_iter()
            .map(|k| {
                let v: Vec<f64> = runs
                    .iter()
                    .map(|r| {
                        r["browser_cpu"]["ms_per_mb_by_thread"][&k]
                            .as_f64()
                            .unwrap_or(0.0)
                    })
                    .collect();
                (k, median(&v))
            })
            .filter(|(_, v)| *v >= 0.5)
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        Value::Array(rows.into_iter().map(|(k, v)| json!([k, v])).collect())
    };
    let ratio = ma / mb;
    let storage_col = |phase: &str| -> Vec<f64> {
        storage_runs
            .iter()
            .filter_map(|r| r[phase]["browser_cpu"]["cpu_ms_per_mb"].as_f64())
            .collect()
    };
    let (store_write, store_read) = (storage_col("write"), storage_col("read"));
    let base_cpu = median(&cpu_col(&base_runs, "cpu_ms_per_mb"));
    let store_cpu = median(&store_write) + median(&store_read);
    let heap_full = heap_col(&app_runs);
    let after_gc = |runs: &[Value]| -> Vec<f64> {
        runs.iter()
            .filter_map(|r| r["bob_heap"]["after_gc"].as_f64())
            .collect()
    };
    let peak_full = median(&heap_full);
    let peak_half = half_run["bob_heap"]["peak_used"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let heap_flat = peak_full <= 1.25 * peak_half + 8.0 * MIB as f64;
    let wasm_half = half_run["bob_wasm_memory_bytes"].clone();
    let wasm_full: Vec<Value> = app_runs
        .iter()
        .map(|r| r["bob_wasm_memory_bytes"].clone())
        .collect();
    let wasm_peak = |r: &Value| {
        r["bob_wasm_memory_bytes"]
            .as_array()
            .and_then(|a| a.iter().filter_map(Value::as_f64).reduce(f64::max))
    };
    let wasm_peak_half = wasm_peak(&half_run).unwrap_or(f64::NAN);
    let wasm_peak_full = median(&app_runs.iter().filter_map(wasm_peak).collect::<Vec<_>>());
    // Wasm memory is exact and small: no slack beyond a quarter.
    let wasm_flat = wasm_peak_full <= 1.25 * wasm_peak_half;

    let profile = if ratio < GOAL || force_profile {
        eprintln!("bench: profiling one more app run (both pages' main threads)");
        let ta = profile_start(&alice).await?;
        let tb = profile_start(&bob).await?;
        let p = app_run(&alice, &bob, &file, "bench profiled", size, false).await;
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                let _ = profile_abort(&alice).await;
                let _ = profile_abort(&bob).await;
                return Err(e.context("the profiled app run"));
            }
        };
        let f = |k: &str| p["instants"][k].as_f64().unwrap_or(f64::NAN);
        let windows = [
            (
                "sealing (click on Send to Compose gone)",
                f("send"),
                f("sent"),
            ),
            (
                "transfer (first progress to all stored)",
                f("first"),
                f("all"),
            ),
            (
                "whole-file check (all stored to complete)",
                f("all"),
                f("complete"),
            ),
        ];
        let pa = profile_stop(&alice, ta, &windows).await?;
        let pb = profile_stop(&bob, tb, &windows).await?;
        json!({
            "note": "one extra app run with the V8 CPU profiler (1 ms samples) on both pages' main threads; self time per category and function within each phase (the pages' Date.now(), within a few ms); wasm functions are unnamed in the release build",
            "run": p,
            "bob_receiver_main_thread": pb,
            "alice_sender_main_thread": pa,
        })
    } else {
        Value::Null
    };

    Ok(json!({
        "benchmark": "attachment_transfer",
        "file_bytes": size,
        "half_file_bytes": half,
        "message_bytes": MESSAGE_BYTES,
        "rounds": rounds,
        "timing": "in Bob's (the receiver's) page with Date.now(): from the first received byte (baseline: first message; app: data-done first > 0) to the last (baseline: all bytes counted; app: data-state complete, which includes the whole-file check); MB/s = bytes after the first instant / time, MB = 1e6 bytes",
        "baseline": "raw ordered RTCDataChannel between the same two pages (bench's own peer connection, no relay), messages of 61,456 bytes, sender keeps bufferedAmount <= 4 MiB - 64 KiB and resumes on bufferedamountlow (threshold 1 MiB), receiver only counts bytes",
        "baseline_mb_s": { "median": mb, "samples": base },
        "app_mb_s": { "median": ma, "samples": app },
        "app_mb_s_until_all_stored": { "median": median(&app_stored), "samples": app_stored },
        "whole_file_check_ms": { "median": median(&check), "samples": check },
        "ratio": ratio,
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
        "browser_cpu": {
            "what": "CPU of all Chromium processes (both browsers) from /proc: baseline from the first send to the last byte counted, app from the Compose form closing (sealing done) to data-state complete; cores = CPU seconds / wall seconds on this 2-core machine; per-run detail by process type and thread in runs.*[].browser_cpu",
            "baseline_cores_median": median(&cpu_col(&base_runs, "cores")),
            "baseline_cpu_ms_per_mb_median": median(&cpu_col(&base_runs, "cpu_ms_per_mb")),
            "app_cores_median": median(&cpu_col(&app_runs, "cores")),
            "app_cpu_ms_per_mb_median": median(&cpu_col(&app_runs, "cpu_ms_per_mb")),
            "by_thread_what": "[page process thread, median ms of CPU per MB] for threads using at least 0.5 ms per MB; page = the browser's profile (alice sends, bob receives); thread = its name in /proc, main = the process's main thread",
            "baseline_ms_per_mb_by_thread": by_thread(&base_runs),
            "app_ms_per_mb_by_thread": by_thread(&app_runs),
        },
        "reference_storage_only": {
            "what": "in Bob's page, the file's size of random bytes written to IndexedDB as the app stores received chunks (one Blob of 16 chunk-sized parts, one record, one transaction per segment), then every segment read back as a sender reads them (Blob.arrayBuffer()); no network, crypto or app code; CPU of all Chromium processes per phase, once per round",
            "write_cpu_ms_per_mb": { "median": median(&store_write), "samples": store_write },
            "read_cpu_ms_per_mb": { "median": median(&store_read), "samples": store_read },
            "ratio_ceiling_what": "the ratio the app could reach if moving the bytes over the channel cost what the baseline does and storage added only this: baseline CPU per MB / (baseline CPU per MB + storage write + read); on a machine whose cores both browsers keep busy (as here: see browser_cpu.*_cores_median), rate follows CPU per MB",
            "ratio_ceiling": base_cpu / (base_cpu + store_cpu),
            "runs": storage_runs,
        },
        "sealing_ms": {
            "what": "Alice's page: click on Send until the Compose form is gone (encrypting and storing the file, then sending the mail)",
            "median": median(&seal),
            "samples": seal,
            "mb_s_median": mb_s(size as f64, median(&seal)),
        },
        "bob_peak_js_heap_bytes": {
            "what": "performance.memory.usedJSHeapSize polled every 100 ms in Bob's page (--enable-precise-memory-info), after a CDP garbage collection at the start of each run",
            "half_size": peak_half,
            "full_size_median": peak_full,
            "full_size_samples": heap_full,
            "baseline_runs": heap_col(&base_runs),
            "rule": "heap_flat = peak(full) <= 1.25 * peak(half) + 8 MiB",
            "heap_flat": heap_flat,
            "after_gc": {
                "what": "usedJSHeapSize after a CDP garbage collection at the end of each run: what Bob's page still holds (the peak also counts garbage V8 has not collected yet, which can grow with a run's length even for the baseline, which keeps nothing)",
                "half_size": half_run["bob_heap"]["after_gc"],
                "full_size_samples": after_gc(&app_runs),
                "baseline_runs": after_gc(&base_runs),
            },
        },
        "bob_wasm_memory_bytes": {
            "what": "byte length of each WebAssembly.Memory in Bob's page (CDP Runtime.queryObjects) after each app run; Bob's page is reloaded before each app run and wasm memory never shrinks, so this is the run's peak (runs.app[].bob_wasm_memory_bytes_before: the same just before Send)",
            "after_half_size_run": wasm_half,
            "after_each_full_size_run": wasm_full,
            "half_size": wasm_peak_half,
            "full_size_median": wasm_peak_full,
            "growth_bytes_per_mib_of_file": (wasm_peak_full - wasm_peak_half) / ((size - half) / MIB) as f64,
            "rule": "wasm_flat = peak(full) <= 1.25 * peak(half)",
            "series": "runs.app[].bob_heap.wasm_series: [Date.now(), bytes] at each change during the run; runs.app[].instants place it",
            "wasm_flat": wasm_flat,
        },
        "runs": { "half_size_app": half_run, "baseline": base_runs, "app": app_runs },
        "profile": profile,
    }))
}

fn main() -> ExitCode {
    peermail_e2e::bench::bench_main("attachment_transfer.json", run, |report| {
        let g = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let mib = |v: &Value| g(v) / MIB as f64;
        let heap = &report["bob_peak_js_heap_bytes"];
        let wasm = &report["bob_wasm_memory_bytes"];
        format!(
        "attachment transfer ({} MiB, median of {}): app {:.2} MB/s beside a raw data channel at {:.2} MB/s: \
         ratio {:.3} (goal {GOAL}: {}); sealing at Send {:.1} s; receiver's peak JS heap {:.1} MiB \
         ({:.1} MiB at half size: {}), wasm memory {:.1} MiB ({:.1} MiB at half size: {}); \
         CPU per MB: app {:.1} ms, raw channel {:.1} ms, storing and reading the file back alone \
         {:.1} + {:.1} ms (ratio ceiling with storage alone added: {:.3})",
        g(&report["file_bytes"]) / MIB as f64,
        report["rounds"],
        g(&report["app_mb_s"]["median"]),
        g(&report["baseline_mb_s"]["median"]),
        g(&report["ratio"]),
        if report["meets_goal"] == true { "met" } else { "not met" },
        g(&report["sealing_ms"]["median"]) / 1000.0,
        mib(&heap["full_size_median"]),
        mib(&heap["half_size"]),
        if heap["heap_flat"] == true { "flat" } else { "not flat" },
        mib(&wasm["full_size_median"]),
        mib(&wasm["half_size"]),
        if wasm["wasm_flat"] == true { "flat" } else { "not flat" },
        g(&report["browser_cpu"]["app_cpu_ms_per_mb_median"]),
        g(&report["browser_cpu"]["baseline_cpu_ms_per_mb_median"]),
        g(&report["reference_storage_only"]["write_cpu_ms_per_mb"]["median"]),
        g(&report["reference_storage_only"]["read_cpu_ms_per_mb"]["median"]),
        g(&report["reference_storage_only"]["ratio_ceiling"]),
    )
    })
}
