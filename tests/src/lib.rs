//! End-to-end test harness for Peermail: the real `relay` binary and headless Chromium
//! browsers driven over WebDriver, asserting what a person sees on the page.
//!
//! - [`netns`]: WebRTC tests run only inside a private network namespace; the test binary
//!   re-executes itself there.
//! - [`procs`]: the relay and chromedriver child processes (killed on drop).
//! - [`browser`]: one browser = one WebDriver session with its own profile directory, plus
//!   the helpers a scenario uses (`sign_up`, `compose`, `open_folder`, `wait_for_text`, …)
//!   written against `docs/ui-contract.md`.
//! - [`native`]: a native signaling client (no browser) with its own account keys, for
//!   parties the web client would never be, such as an attacker depositing forged mail.
//! - [`bench`](mod@bench): what the browser transfer benchmarks share (test files, the raw
//!   data-channel baseline, one browser-to-browser transfer timed in the receiving page).
//! - [`runner`]: runs scenarios in order, prints `test <name> ... ok|FAILED` and
//!   `N passed, M failed`.
//!
//! The artefacts come from the environment (set by `cargo xtask e2e`):
//! `PEERMAIL_RELAY_BIN` (the relay binary), `PEERMAIL_DIST` (the built web client),
//! `PEERMAIL_E2E_OUT` (where screenshots and logs of failures go), and optionally
//! `CHROMEDRIVER`, `CHROMIUM`, `PEERMAIL_E2E_WAIT_SECS` (per wait, default 30) and
//! `PEERMAIL_E2E_CAPTURE=always` (screenshots after passing scenarios too).

pub mod bench;
pub mod browser;
pub mod native;
pub mod netns;
pub mod procs;
pub mod runner;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub use browser::Browser;

/// Everything a scenario needs that outlives a single browser: one relay, one
/// chromedriver, a scratch directory, and the settings.
pub struct Harness {
    /// Settings read from the environment.
    pub config: Config,
    /// The relay under test (serves the web client and the signaling WebSocket).
    pub relay: procs::Relay,
    /// The chromedriver all browsers are sessions of.
    pub driver: procs::ChromeDriver,
    /// Scratch space: relay data, browser profiles, logs. Removed on drop.
    pub scratch: tempfile::TempDir,
}

impl Drop for Harness {
    /// A browser a failed scenario did not close would go on writing its profile while the
    /// scratch directory is removed, which then stops half-way and leaves hundreds of MB
    /// behind: every process still using the scratch directory is killed first.
    fn drop(&mut self) {
        procs::kill_users_of(self.scratch.path());
    }
}

/// Settings for a run, from the environment.
#[derive(Clone, Debug)]
pub struct Config {
    pub relay_bin: PathBuf,
    pub dist: PathBuf,
    pub chromedriver: PathBuf,
    pub chromium: PathBuf,
    /// Where failure screenshots, page dumps and process logs are written.
    pub out_dir: PathBuf,
    /// How long a single `wait_for…` keeps polling before it fails.
    pub wait: Duration,
    /// The mail domain the relay is started with (`--domain`).
    pub domain: String,
}

impl Config {
    pub fn from_env() -> Result<Self> {
        let need = |var: &str| -> Result<PathBuf> {
            let v = std::env::var_os(var).with_context(|| {
                format!("{var} is not set; run the end-to-end tests with `cargo xtask e2e`")
            })?;
            let p = PathBuf::from(v);
            if !p.exists() {
                bail!(
                    "{var}={} does not exist; `cargo xtask e2e` builds it",
                    p.display()
                );
            }
            Ok(p)
        };
        let path_or = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| default.into())
        };
        let wait = std::env::var("PEERMAIL_E2E_WAIT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30);
        let out_dir = std::env::var_os("PEERMAIL_E2E_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("peermail-e2e"));
        Ok(Self {
            relay_bin: need("PEERMAIL_RELAY_BIN")?,
            dist: need("PEERMAIL_DIST")?,
            chromedriver: path_or("CHROMEDRIVER", "/usr/bin/chromedriver"),
            chromium: path_or("CHROMIUM", "/usr/bin/chromium"),
            out_dir,
            wait: Duration::from_secs(wait),
            domain: "localhost".into(),
        })
    }
}

impl Harness {
    /// Starts the relay (fresh data directory) and chromedriver.
    pub fn start(config: Config) -> Result<Self> {
        std::fs::create_dir_all(&config.out_dir)
            .with_context(|| format!("creating {}", config.out_dir.display()))?;
        // Screenshots and logs of an earlier run would only mislead.
        for entry in std::fs::read_dir(&config.out_dir)?.flatten() {
            let p = entry.path();
            if p.extension()
                .is_some_and(|e| e == "png" || e == "html" || e == "log")
            {
                let _ = std::fs::remove_file(p);
            }
        }
        let scratch = tempfile::Builder::new().prefix("peermail-e2e-").tempdir()?;
        let relay = procs::Relay::start(&config, &scratch.path().join("relay-data"))?;
        let driver = procs::ChromeDriver::start(&config, scratch.path().join("chromedriver.log"))?;
        Ok(Self {
            config,
            relay,
            driver,
            scratch,
        })
    }

    /// The page a person opens. The relay reports `http://127.0.0.1:PORT`; the page is
    /// opened as `http://localhost:PORT` so the origin matches the mail domain (both are
    /// secure contexts, which WebCrypto and service workers need).
    pub fn app_url(&self) -> String {
        self.relay.url.replacen("127.0.0.1", &self.config.domain, 1)
    }

    /// The profile directory of a named person's browser; stable across close/reopen so
    /// IndexedDB survives, like a person closing and reopening their browser.
    pub fn profile_dir(&self, name: &str) -> PathBuf {
        self.scratch.path().join("profiles").join(name)
    }

    /// Opens a new browser for `name` (with that person's profile directory) on the app.
    pub async fn browser(&self, name: &str) -> Result<Browser> {
        Browser::open(self, name).await
    }

    /// Like [`Harness::browser`], with Chromium flags added to the usual ones.
    pub async fn browser_with_args(&self, name: &str, extra_args: &[&str]) -> Result<Browser> {
        Browser::open_with_args(self, name, extra_args).await
    }

    /// `name@domain`.
    pub fn address(&self, name: &str) -> String {
        format!("{name}@{}", self.config.domain)
    }
}
