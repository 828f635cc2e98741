//! The Peermail relay: the server a self-hoster runs.
//!
//! It mounts the signaling endpoint (`/ws`, from `peermail-signaling`), serves the built web
//! client, answers `GET /healthz`, and keeps its state in one SQLite database under the
//! data directory. It never sees mail plaintext.
//!
//! Modules:
//! - [`db`]: the SQLite database and the account directory kept in it.
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
use axum::Router;
use peermail_core::address::Address;
use peermail_signaling::{Signaling, SignalingConfig};
use tokio::net::TcpListener;

pub mod db;
pub mod migrations;
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
        All state is kept in one SQLite database inside the data directory.\n\n\
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
        Ok(SignalingConfig {
            domain: self.domain.clone(),
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            sign_in_timeout: self.sign_in_timeout,
        })
    }
}

/// The relay's shared state, cheap to clone.
#[derive(Debug, Clone)]
pub struct Relay {
    /// Sessions, presence and signaling.
    pub signaling: Arc<Signaling>,
    /// The database (also the signaling directory).
    pub db: Arc<Db>,
    /// Where the built web client is.
    pub web_root: PathBuf,
}

impl Relay {
    /// Checks the configuration and opens (creating and migrating if needed) the database.
    pub fn open(config: &Config) -> Result<Self, Error> {
        let signaling_config = config.signaling()?;
        let db = Arc::new(Db::open(&config.data_dir)?);
        let signaling = Signaling::new(signaling_config, db.clone());
        Ok(Relay {
            signaling,
            db,
            web_root: config.web_root.clone(),
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
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            signaling.close_all();
        })
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while relay.signaling.online_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
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
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.web_root, PathBuf::from("./dist"));
        assert_eq!(c.domain, "localhost");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(30));
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
