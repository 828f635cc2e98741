//! The relay's HTTP side: health check, the web client's files, and the real `relay` binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

/// A plain HTTP/1.1 GET; returns the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8_lossy(&response).into_owned()
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("response in time");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Runs the relay library on port 0 with `web_root`, calls `check`, then stops it.
async fn with_relay<F: std::future::Future<Output = ()>>(
    web_root: &Path,
    check: impl FnOnce(SocketAddr) -> F,
) {
    let data = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = peermail_relay::Config::new(addr, data.path().to_path_buf());
    config.web_root = web_root.to_path_buf();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(peermail_relay::run(listener, config, async {
        let _ = stopped.await;
    }));
    check(addr).await;
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn serves_the_web_client_with_spa_fallback() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<title>Peermail</title>").unwrap();
    std::fs::write(web.path().join("app.js"), "console.log(1)").unwrap();
    with_relay(web.path(), |addr| async move {
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
        assert_eq!(
            get(addr, "/").await,
            (200, "<title>Peermail</title>".to_string())
        );
        assert_eq!(
            get(addr, "/app.js").await,
            (200, "console.log(1)".to_string())
        );
        // Client-side routes get the app shell.
        assert_eq!(
            get(addr, "/chat/1234").await,
            (200, "<title>Peermail</title>".to_string())
        );
        assert_eq!(
            get(addr, "/inbox").await,
            (200, "<title>Peermail</title>".to_string())
        );
    })
    .await;
}

#[tokio::test]
async fn explains_a_missing_web_client_instead_of_failing() {
    let web = tempfile::tempdir().unwrap();
    let missing = web.path().join("dist");
    with_relay(&missing, |addr| async move {
        assert_eq!(get(addr, "/healthz").await.0, 200);
        for path in ["/", "/inbox", "/app.js"] {
            let (status, body) = get(addr, path).await;
            assert_eq!(status, 503, "{path}");
            assert!(body.contains("web client is not built"), "{path}: {body}");
        }
    })
    .await;
}

/// Kills the child if the test fails before it stopped it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn relay_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relay"))
}

#[test]
fn help_explains_every_flag() {
    let out = relay_bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--listen",
        "PEERMAIL_LISTEN",
        "127.0.0.1:8080",
        "--data-dir",
        "PEERMAIL_DATA_DIR",
        "--web-root",
        "PEERMAIL_WEB_ROOT",
        "--domain",
        "PEERMAIL_DOMAIN",
        "--heartbeat-interval-secs",
        "--heartbeat-timeout-secs",
        "--sign-in-timeout-secs",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn a_bad_flag_is_reported() {
    let out = relay_bin()
        .args(["--heartbeat-interval-secs", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a number of seconds"), "{err}");
}

#[tokio::test]
async fn the_binary_listens_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = relay_bin()
        .args(["--listen", "127.0.0.1:0", "--web-root"])
        .arg(dir.path().join("dist"))
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut guard = KillOnDrop(Some(child));
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(WAIT, line)
        .await
        .expect("the listening line in time")
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("relay listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0);
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
    assert!(data.join("relay.sqlite3").exists());

    let mut child = guard.0.take().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let exit = tokio::time::timeout(WAIT, exit)
        .await
        .expect("the relay stops in time")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
