//! The `relay` binary: parse the configuration, open the state, bind, serve until Ctrl-C or
//! SIGTERM; or, as `relay node`, run a storage node (`peermail_relay::storage_node`).
//! Everything else lives in the library.

use anyhow::Context;
use clap::Parser;
use peermail_relay::storage_node::{self, NodeConfig};
use peermail_relay::{serve, Config, Relay};
use std::io::Write;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: sessions allocate and free many short-lived
/// buffers (frames, JSON, envelopes) on one thread and the cache writer on another, where
/// glibc's malloc spent about a tenth of the relay's time. Built without transparent huge
/// pages (`no_thp`): with them, idle connections cost about 1 KiB more resident memory each
/// (signaling_memory bench: 10.0–10.6 KiB against 9.6 without, 9.2 with glibc).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The runtime: tokio's multi-threaded one, except that each worker looks at the queue of
/// tasks woken from outside the runtime every 7 tasks instead of tokio's self-tuned
/// interval. The cache writer's answers arrive there (it is a thread of its own), and a
/// session waiting for one waited behind the local tasks; in the cache benchmark (9
/// alternating single rounds each) the relay ran at a median of 25,014 against 23,519
/// envelopes/s, at 47.9 against 49.9 µs of CPU per envelope (3 and 15: no better).
fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .global_queue_interval(7)
        .build()?
        .block_on(relay_main())
}

async fn relay_main() -> anyhow::Result<()> {
    // `relay node …` runs a storage node instead of a relay.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let node = args.get(1).is_some_and(|a| a == "node");
    let node_config = node.then(|| {
        NodeConfig::parse_from(
            std::iter::once(std::ffi::OsString::from("relay node")).chain(args[2..].to_vec()),
        )
    });
    let config = if node { None } else { Some(Config::parse()) };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(config) = config else {
        let node_config = node_config.context("the storage node's options")?;
        return storage_node::run(node_config, shutdown_signal()).await;
    };

    // Before the listening line (see `shutdown_signal`).
    let shutdown = shutdown_signal();
    let relay = Relay::open(&config).with_context(|| {
        format!(
            "cannot open the relay state in {}",
            config.data_dir.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(data_dir = %config.data_dir.display(), web_root = %config.web_root.display(),
        domain = %config.domain, "relay started");
    // Scripts and tests wait for this line.
    println!("relay listening on http://{addr}");
    std::io::stdout().flush()?;

    serve(listener, relay, shutdown).await?;
    Ok(())
}

/// Completes on Ctrl-C or (on Unix) SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: axum polls it from a task of its own, and a
/// SIGTERM arriving before that task ran (right after the listening line, as scripts and
/// tests send it) would otherwise kill the process instead of stopping it cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for {name}");
                None
            }
        };
        (
            install(SignalKind::interrupt(), "Ctrl-C"),
            install(SignalKind::terminate(), "SIGTERM"),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
