//! Private network namespace for WebRTC tests.
//!
//! On the machine's own network Chromium gathers ICE candidates on the external interface,
//! so peer traffic would leave loopback; with only `lo` it gathers none at all. A fresh
//! namespace with a veth pair and a default route makes Chromium gather private candidates
//! that never leave the namespace (TOOLCHAIN.md). The namespace also gets its own PID
//! namespace, so every process started inside (relay, chromedriver, Chromium) is killed by
//! the kernel when the test binary — PID 1 there — exits, however it exits.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Set in the environment of the re-executed test binary.
pub const MARKER: &str = "PEERMAIL_IN_NETNS";

/// Run inside the new namespaces; `"$@"` is the command to exec afterwards.
const RECIPE: &str = r#"set -e
PATH="$PATH:/usr/sbin:/sbin"
ip link set lo up
ip link add veth0 type veth peer name veth1
ip addr add 10.203.0.1/24 dev veth0
ip addr add 10.203.0.2/24 dev veth1
ip link set veth0 up
ip link set veth1 up
ip route add default via 10.203.0.2 dev veth0
exec "$@""#;

/// Puts the calling binary into the private namespace: outside, it re-executes itself there
/// and returns `Some(exit code)` for the caller to return; inside, it checks that the network
/// is the private one and returns `None` (go on), or `Some(failure)` if it is not.
/// `who` prefixes error messages.
pub fn enter(who: &str) -> Option<std::process::ExitCode> {
    use std::process::ExitCode;
    if !inside() {
        return Some(match reexec_isolated() {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("{who}: {e:#}");
                ExitCode::FAILURE
            }
        });
    }
    if let Err(e) = check_private() {
        eprintln!("{who}: {e:#}");
        return Some(ExitCode::FAILURE);
    }
    None
}

/// Whether this process is the re-executed one inside the namespace.
pub fn inside() -> bool {
    std::env::var_os(MARKER).is_some_and(|v| v == "1")
}

/// Re-executes the current binary, with the same arguments, inside a fresh network and PID
/// namespace, and returns its exit code.
pub fn reexec_isolated() -> Result<i32> {
    let exe = std::env::current_exe().context("finding the test binary")?;
    // Unprivileged: map ourselves to root in a new user namespace so `ip` may work.
    let user_ns: &[&str] = if is_root() { &[] } else { &["--map-root-user"] };
    let probe = Command::new("unshare")
        .args(user_ns)
        .args([
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "bash",
            "-c",
            RECIPE,
            "_",
            "true",
        ])
        .output()
        .context("running `unshare` (util-linux) to create a private network namespace")?;
    if !probe.status.success() {
        bail!(
            "cannot create a private network namespace with a veth pair (needs root, or \
             unprivileged user namespaces, plus `ip` from iproute2): {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
    }
    let mut cmd = Command::new("unshare");
    cmd.args(user_ns);
    cmd.args([
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "bash",
        "-c",
        RECIPE,
        "_",
    ])
    .arg(exe)
    .args(std::env::args_os().skip(1))
    .env(MARKER, "1");
    let status = cmd
        .status()
        .context("running `unshare` (util-linux) to create a private network namespace")?;
    match status.code() {
        Some(code) => Ok(code),
        None => bail!("the isolated test run was killed: {status}"),
    }
}

/// Refuses to go on unless the only network interfaces are `lo` and the private veth pair.
pub fn check_private() -> Result<()> {
    // /proc/self/net follows the network namespace of the process (unlike /sys/class/net,
    // which follows the namespace sysfs was mounted in).
    let dev =
        std::fs::read_to_string("/proc/self/net/dev").context("reading /proc/self/net/dev")?;
    let mut names: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    names.sort_unstable();
    if names != ["lo", "veth0", "veth1"] {
        bail!("not in the private network namespace (interfaces: {names:?}); refusing to run WebRTC tests");
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
