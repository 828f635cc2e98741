//! The Peermail relay: the server a self-hoster runs.
//!
//! It mounts the signaling endpoint (`/ws`, from `peermail-signaling`), serves the built web
//! client, answers `GET /healthz`, and keeps its state in one SQLite database under the
//! data directory. It never sees mail plaintext: the mail cache holds envelopes sealed end to
//! end for their recipients, and a periodic sweep deletes those past the retention time.
//!
//! Modules:
//! - [`db`]: the SQLite database, the account directory and the mail cache kept in it (and
//!   the durability choice: WAL with `synchronous=NORMAL`, see there).
//! - [`migrations`]: the database schema, versioned by `PRAGMA user_version`.
//! - [`web`]: static files of the web client with the single-page-app fallback.
//!
//! Entry points: [`Config`] (command line and environment), [`Relay::open`], [`router`],
//! [`serve`] and [`run`]. The `relay` binary only parses the configuration, binds and calls
//! these.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::serve::ListenerExt as _;
use axum::Router;
use peermail_core::address::Address;
use peermail_signaling::{CachePolicy, Signaling, SignalingConfig};
use tokio::net::TcpListener;

pub mod db;
pub mod files_db;
pub mod migrations;
pub mod native;
pub mod storage_node;
pub mod web;

pub use db::Db;

/// The one error type of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("database error: {0}")]
    Vfs(String),
    #[error(
        "the database schema is version {found}, newer than this relay understands ({supported}); \
         run a newer relay"
    )]
    SchemaTooNew { found: usize, supported: usize },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// How the relay runs. Every flag can also be given as an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "relay",
    version,
    about = "Peermail relay: signaling, presence and the web client for peer-to-peer mail",
    long_about = "Peermail relay: signaling, presence and the web client for peer-to-peer mail.\n\n\
        Serves the built web client, the signaling WebSocket at /ws and a health check at \
        /healthz. Mail travels browser to browser; the relay never sees it in plain text. \
        For recipients who are offline it keeps mail sealed end to end for them (a \
        store-and-forward cache with a retention time, a quota per recipient and a deposit \
        rate limit per sender). All state is kept in one SQLite database inside the data \
        directory.\n\n\
        `relay node --relay-url URL` runs a storage node instead (see `relay node --help`).\n\n\
        Logging is set with RUST_LOG (default: info)."
)]
pub struct Config {
    /// Address and port to listen on for HTTP and WebSocket. Port 0 picks a free port; the
    /// actual address is printed as "relay listening on http://ADDRESS".
    #[arg(long, env = "PEERMAIL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Folder for the relay's state (the SQLite database relay.sqlite3); created if missing.
    #[arg(long, env = "PEERMAIL_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Folder with the built web client (index.html and its assets), served at /.
    #[arg(long, env = "PEERMAIL_WEB_ROOT", default_value = "./dist")]
    pub web_root: PathBuf,

    /// Host part of the addresses of this relay's accounts (name@DOMAIN). Normally the public
    /// host name people reach the relay by.
    #[arg(long, env = "PEERMAIL_DOMAIN", default_value = "localhost")]
    pub domain: String,

    /// Seconds between the heartbeat pings the relay sends on each WebSocket (fractions
    /// allowed).
    #[arg(
        long = "heartbeat-interval-secs",
        env = "PEERMAIL_HEARTBEAT_INTERVAL_SECS",
        value_name = "SECS",
        default_value = "10",
        value_parser = parse_secs
    )]
    pub heartbeat_interval: Duration,

    /// Seconds of silence after which a WebSocket is considered dead: it is dropped and its
    /// address shows offline to those who watch it. Must exceed the heartbeat interval.
    #[arg(
        long = "heartbeat-timeout-secs",
        env = "PEERMAIL_HEARTBEAT_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "30",
        value_parser = parse_secs
    )]
    pub heartbeat_timeout: Duration,

    /// Seconds a new WebSocket may stay without registering or signing in before it is
    /// closed (clients reconnect), so idle anonymous connections do not pile up.
    #[arg(
        long = "sign-in-timeout-secs",
        env = "PEERMAIL_SIGN_IN_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "120",
        value_parser = parse_secs
    )]
    pub sign_in_timeout: Duration,

    /// Seconds without a heartbeat after which a storage node is marked unavailable (its
    /// session is closed; senders fall back to the relay or keep large files). Nodes send one
    /// every 10 s.
    #[arg(
        long = "node-timeout-secs",
        env = "PEERMAIL_NODE_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "30",
        value_parser = parse_secs
    )]
    pub node_timeout: Duration,

    /// Days a sealed mail waits in the relay cache for its recipient (fractions allowed).
    /// Older undelivered mail is deleted by the periodic sweep and its sender is told it
    /// expired.
    #[arg(
        long = "cache-retention-days",
        env = "PEERMAIL_CACHE_RETENTION_DAYS",
        value_name = "DAYS",
        default_value = "30",
        value_parser = parse_days
    )]
    pub cache_retention: Duration,

    /// Most sealed mail, in MiB, that may wait in the relay cache for one recipient
    /// (fractions allowed). A deposit beyond it is refused with quota_exceeded; the sender
    /// keeps the mail.
    #[arg(
        long = "cache-quota-mib",
        env = "PEERMAIL_CACHE_QUOTA_MIB",
        value_name = "MIB",
        default_value = "100",
        value_parser = parse_mib
    )]
    pub cache_quota_bytes: u64,

    /// Most mails one sender may deposit in the relay cache per minute. Beyond it deposits
    /// are refused with rate_limited; the sender keeps the mail.
    #[arg(
        long = "deposit-rate-per-minute",
        env = "PEERMAIL_DEPOSIT_RATE_PER_MINUTE",
        value_name = "N",
        default_value = "600",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub deposit_rate_per_minute: u32,

    /// Largest attachment kept for offline recipients, in MiB (files count against the
    /// recipient's quota, separately from mail). Larger files stay on the sender's node
    /// until each recipient fetches them.
    #[arg(
        long = "inline-attachment-mib",
        env = "PEERMAIL_INLINE_ATTACHMENT_MIB",
        value_name = "MIB",
        default_value = "8",
        value_parser = parse_mib
    )]
    pub inline_limit_bytes: u64,

    /// Seconds between sweeps of the relay cache for expired mail (fractions allowed).
    #[arg(
        long = "sweep-interval-secs",
        env = "PEERMAIL_SWEEP_INTERVAL_SECS",
        value_name = "SECS",
        default_value = "60",
        value_parser = parse_secs
    )]
    pub sweep_interval: Duration,
}

fn parse_positive(text: &str, unit: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of {unit}"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("must be more than 0 {unit}"));
    }
    Ok(v)
}

fn parse_days(text: &str) -> Result<Duration, String> {
    let days = parse_positive(text, "days")?;
    Duration::try_from_secs_f64(days * 86_400.0).map_err(|e| e.to_string())
}

fn parse_mib(text: &str) -> Result<u64, String> {
    let mib = parse_positive(text, "MiB")?;
    let bytes = (mib * 1024.0 * 1024.0).round();
    if bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err("out of range".into());
    }
    Ok(bytes as u64)
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

impl Config {
    /// The configuration with every default, listening on `listen` and keeping state in
    /// `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Config {
            listen,
            data_dir,
            web_root: PathBuf::from("./dist"),
            domain: "localhost".into(),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            sign_in_timeout: Duration::from_secs(120),
            node_timeout: Duration::from_secs(30),
            cache_retention: CachePolicy::default().retention,
            cache_quota_bytes: CachePolicy::default().quota_bytes,
            deposit_rate_per_minute: CachePolicy::default().deposit_rate_per_minute,
            inline_limit_bytes: CachePolicy::default().inline_limit,
            sweep_interval: Duration::from_secs(60),
        }
    }

    fn signaling(&self) -> Result<SignalingConfig, Error> {
        if Address::new("name", &self.domain).is_err() {
            return Err(Error::Config(format!(
                "--domain {:?} is not a valid host name",
                self.domain
            )));
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(Error::Config(
                "--heartbeat-timeout-secs must be longer than --heartbeat-interval-secs".into(),
            ));
        }
        if self.deposit_rate_per_minute == 0 {
            return Err(Error::Config(
                "--deposit-rate-per-minute must be at least 1".into(),
            ));
        }
        Ok(SignalingConfig {
            domain: self.domain.clone(),
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            sign_in_timeout: self.sign_in_timeout,
            node_timeout: self.node_timeout,
            pairing_ttl: Duration::from_secs(600),
            cache: CachePolicy {
                retention: self.cache_retention,
                quota_bytes: self.cache_quota_bytes,
                deposit_rate_per_minute: self.deposit_rate_per_minute,
                inline_limit: self.inline_limit_bytes,
            },
        })
    }
}

/// The relay's shared state, cheap to clone.
#[derive(Debug, Clone)]
pub struct Relay {
    /// Sessions, presence and signaling.
    pub signaling: Arc<Signaling>,
    /// The database (also the signaling directory and mail cache).
    pub db: Arc<Db>,
    /// Where the built web client is.
    pub web_root: PathBuf,
    /// Time between sweeps of the mail cache for expired mail.
    pub sweep_interval: Duration,
}

impl Relay {
    /// Checks the configuration and opens (creating and migrating if needed) the database.
    pub fn open(config: &Config) -> Result<Self, Error> {
        let signaling_config = config.signaling()?;
        let db = Arc::new(Db::open(&config.data_dir)?);
        let signaling = Signaling::new(signaling_config, db.clone(), db.clone(), db.clone());
        Ok(Relay {
            signaling,
            db,
            web_root: config.web_root.clone(),
            sweep_interval: config.sweep_interval,
        })
    }
}

/// All routes: `/ws` (signaling), `GET /healthz`, and the web client for everything else.
pub fn router(relay: &Relay) -> Router {
    peermail_signaling::router(relay.signaling.clone())
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(web::router(relay.web_root.clone()))
}

/// Serves `relay` on `listener` until `shutdown` completes, then closes every WebSocket
/// session (code 1001) and waits briefly for them to go.
pub async fn serve(
    listener: TcpListener,
    relay: Relay,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let app = router(&relay);
    let signaling = relay.signaling.clone();
    let sweeper = tokio::spawn(sweep(relay.signaling.clone(), relay.sweep_interval));
    // Replies and pushed frames are small and often written back to back (a reply, then a
    // notice for the same client): with Nagle's algorithm on, the second waits for the
    // client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            signaling.close_all();
        })
        .await;
    sweeper.abort();
    served?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while relay.signaling.online_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Sweeps the mail cache for expired mail every `interval`, the first time at once.
async fn sweep(signaling: Arc<Signaling>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match signaling.sweep_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired mail deleted from the cache"),
            Err(e) => tracing::warn!(error = %e, "sweeping the mail cache failed"),
        }
    }
}

/// [`Relay::open`] then [`serve`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let relay = Relay::open(&config)?;
    serve(listener, relay, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_and_defaults() {
        let c = Config::try_parse_from(["relay"]).unwrap();
        assert_eq!(
            c.listen,
            "127.0.0.1:8080".parse::<std::net::SocketAddr>().unwrap()
        );
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.web_root, PathBuf::from("./dist"));
        assert_eq!(c.domain, "localhost");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(30));
        assert_eq!(c.cache_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.cache_quota_bytes, 100 * 1024 * 1024);
        assert_eq!(c.deposit_rate_per_minute, 600);
        assert_eq!(c.sweep_interval, Duration::from_secs(60));
        let c = Config::try_parse_from([
            "relay",
            "--cache-retention-days",
            "0.5",
            "--cache-quota-mib",
            "0.5",
            "--deposit-rate-per-minute",
            "10",
            "--sweep-interval-secs",
            "2",
        ])
        .unwrap();
        assert_eq!(c.cache_retention, Duration::from_secs(43_200));
        assert_eq!(c.cache_quota_bytes, 512 * 1024);
        assert_eq!(c.deposit_rate_per_minute, 10);
        assert_eq!(c.sweep_interval, Duration::from_secs(2));
        for (flag, bad) in [
            ("--cache-retention-days", "0"),
            ("--cache-quota-mib", "-1"),
            ("--deposit-rate-per-minute", "0"),
            ("--sweep-interval-secs", "x"),
        ] {
            assert!(
                Config::try_parse_from(["relay", flag, bad]).is_err(),
                "{flag} {bad}"
            );
        }
        let c = Config::try_parse_from(["relay", "--heartbeat-interval-secs", "0.25"]).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        for bad in ["0", "-1", "soon", "NaN"] {
            assert!(
                Config::try_parse_from(["relay", "--heartbeat-timeout-secs", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn inconsistent_settings_are_refused_before_anything_is_opened() {
        let dir = std::env::temp_dir().join("peermail-relay-never-created");
        let mut c = Config::new("127.0.0.1:0".parse().unwrap(), dir.clone());
        c.domain = "not a host".into();
        assert!(matches!(Relay::open(&c), Err(Error::Config(_))));
        let mut c = Config::new("127.0.0.1:0".parse().unwrap(), dir.clone());
        c.heartbeat_timeout = c.heartbeat_interval;
        assert!(matches!(Relay::open(&c), Err(Error::Config(_))));
        assert!(!dir.exists());
    }
}
