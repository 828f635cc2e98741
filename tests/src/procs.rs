//! Child processes: the relay under test and chromedriver. Both are killed on drop; their
//! output goes to log files in the scratch directory, copied to the output directory when
//! a scenario fails.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::Config;

/// What the relay prints on stdout once it accepts connections.
const LISTENING: &str = "relay listening on ";

/// The relay's `--cache-quota-mib`: the most sealed mail that may wait for one recipient.
pub const CACHE_QUOTA_MIB: &str = "1";

/// The relay binary, started on a free port of 127.0.0.1 with a fresh data directory.
pub struct Relay {
    child: Child,
    /// `http://127.0.0.1:PORT`, as printed by the relay.
    pub url: String,
    /// stdout and stderr of the relay.
    pub log: PathBuf,
}

impl Relay {
    pub fn start(config: &Config, data_dir: &Path) -> Result<Self> {
        Self::start_on(config, data_dir, "127.0.0.1:0")
    }

    /// Stops the relay (SIGKILL) and starts it again with the same data and port, so pages
    /// opened on it reconnect to it.
    pub fn restart(&mut self, config: &Config, data_dir: &Path) -> Result<()> {
        self.stop();
        let listen = self.url.trim_start_matches("http://").to_string();
        *self = Self::start_on(config, data_dir, &listen)?;
        Ok(())
    }

    /// Kills the relay process.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn start_on(config: &Config, data_dir: &Path, listen: &str) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let log = data_dir.with_file_name("relay.log");
        let stderr = File::options().create(true).append(true).open(&log)?;
        let mut stdout_log = stderr.try_clone()?;
        let mut child = Command::new(&config.relay_bin)
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .arg("--web-root")
            .arg(&config.dist)
            .args(["--domain", &config.domain])
            // A small per-recipient cache quota, so a scenario can fill it (with a few dozen
            // deposits of ~45 KiB) and see the relay refuse; the other scenarios deposit
            // only a few small mails.
            .args(["--cache-quota-mib", CACHE_QUOTA_MIB])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", config.relay_bin.display()))?;

        // Copy stdout to the log (so the pipe never fills) and report the address line.
        let stdout = child.stdout.take().context("relay stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(stdout_log, "{line}");
                if let Some(rest) = line.split(LISTENING).nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
            }
        });

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(url) => {
                    return Ok(Self {
                        child,
                        url: url.trim_end_matches('/').to_string(),
                        log,
                    })
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait()?;
                    bail!(
                        "the relay exited ({status}) without printing `{LISTENING}…`; its output:\n{}",
                        tail(&log, 40)
                    );
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the relay exited ({status}) during start-up; its output:\n{}",
                    tail(&log, 40)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "the relay did not print `{LISTENING}…` within 60 s; its output:\n{}",
                    tail(&log, 40)
                );
            }
        }
    }

    /// Whether the relay process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free port of 127.0.0.1.
pub struct ChromeDriver {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// chromedriver's own log.
    pub log: PathBuf,
}

impl ChromeDriver {
    /// Starts chromedriver, writing its output to `log`.
    pub fn start(config: &Config, log: PathBuf) -> Result<Self> {
        let port = free_port()?;
        let out = File::create(&log)?;
        let mut child = Command::new(&config.chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", config.chromedriver.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("chromedriver exited ({status}):\n{}", tail(&log, 20));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "chromedriver did not listen on port {port} within 30 s:\n{}",
                    tail(&log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        })
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills (SIGKILL) every process whose command line names `dir` (browsers with their
/// profile in it, a storage node with its data there) and waits up to 5 s for them to go.
pub fn kill_users_of(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let users: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()) && *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle.as_str()))
        })
        .collect();
    if users.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(&users)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && users.iter().any(|pid| {
            // Gone, or a zombie its parent has not reaped yet (it holds no files).
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        })
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago (chromedriver cannot be told to pick one itself).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Milliseconds since the epoch.
fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A storage node: the real `relay node` process, its stdout lines kept for the scenario
/// (and copied to its log). Killed on drop.
pub struct StorageNodeProc {
    child: Child,
    lines: mpsc::Receiver<(u64, String)>,
    /// Every line seen so far.
    pub seen: Vec<String>,
    /// When each line of `seen` was read from the node's stdout (ms since the epoch, like a
    /// page's `Date.now()`).
    pub seen_at: Vec<u64>,
    pub log: PathBuf,
}

impl StorageNodeProc {
    /// Starts `relay node --relay-url RELAY --data-dir DATA_DIR`.
    pub fn start(config: &Config, relay_url: &str, data_dir: &Path) -> Result<Self> {
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        Self::start_with_log(config, relay_url, data_dir, &rust_log)
    }

    /// Like [`StorageNodeProc::start`], with the node's `RUST_LOG` (its log goes to `log`).
    pub fn start_with_log(
        config: &Config,
        relay_url: &str,
        data_dir: &Path,
        rust_log: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        // In the output directory, next to the relay's log, so it outlives the run.
        let name = data_dir
            .file_name()
            .map_or("storage-node".into(), |n| n.to_string_lossy().into_owned());
        let log = config.out_dir.join(format!("{name}.log"));
        let stderr = File::options().create(true).append(true).open(&log)?;
        let mut stdout_log = stderr.try_clone()?;
        let mut child = Command::new(&config.relay_bin)
            .args(["node", "--relay-url", relay_url, "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} node", config.relay_bin.display()))?;
        let stdout = child.stdout.take().context("storage node stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = epoch_ms();
                let _ = writeln!(stdout_log, "{line}");
                if tx.send((at, line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
            seen_at: Vec::new(),
            log,
        })
    }

    /// The process id (in the namespace the tests run in).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to `wait`) for a line starting with `prefix`, seen before or now; returns
    /// the rest of it.
    pub fn wait_line(&mut self, prefix: &str, wait: Duration) -> Result<String> {
        self.wait_line_from(prefix, 0, wait).map(|(_, rest)| rest)
    }

    /// Like [`StorageNodeProc::wait_line`], among the lines from index `from` of `seen` on;
    /// returns the line's index (see `seen_at`) and the rest of it.
    pub fn wait_line_from(
        &mut self,
        prefix: &str,
        from: usize,
        wait: Duration,
    ) -> Result<(usize, String)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((i, l)) = self
                .seen
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.starts_with(prefix))
            {
                return Ok((i, l[prefix.len()..].trim().to_string()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok((at, line)) => {
                    self.seen.push(line);
                    self.seen_at.push(at);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "the storage node printed no `{prefix}…` within {wait:?}; its output:\n{}",
                    tail(&self.log, 40)
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the storage node ended without printing `{prefix}…`; its output:\n{}",
                    tail(&self.log, 40)
                ),
            }
        }
    }

    /// Waits (up to `wait`) for the process to end by itself; its exit status.
    pub fn wait_exit(&mut self, wait: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "the storage node still runs after {wait:?}; its output:\n{}",
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StorageNodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn kill_users_of_kills_the_processes_naming_the_directory_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "").unwrap();
        let mut user = Command::new("tail").arg("-f").arg(&log).spawn().unwrap();
        let mut bystander = Command::new("sleep").arg("30").spawn().unwrap();
        kill_users_of(dir.path());
        // kill_users_of returns once its victims are gone or zombies: reaped at once.
        let status = user.try_wait().unwrap();
        if status.is_none() {
            let _ = user.kill();
            let _ = user.wait();
        }
        assert_eq!(status.and_then(|s| s.signal()), Some(9), "{status:?}");
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "an unrelated process died"
        );
        let _ = bystander.kill();
        let _ = bystander.wait();
    }
}
