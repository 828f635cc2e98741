//! The project's commands: `cargo xtask <setup|serve|test|e2e|bench>`.
//!
//! - `setup`: install what is missing (Chromium + chromedriver, the wasm target, pinned
//!   wasm-bindgen-cli and trunk, wasm-opt from npm), each only when absent.
//! - `serve`: setup, build the web client (release) and run the relay on it.
//! - `test`: setup, native tests, wasm browser tests, release web build, relay build,
//!   end-to-end tests with real browsers. `.ci/run` calls this.
//! - `e2e`: only the end-to-end tests (builds the artefacts when they are missing).
//! - `bench [NAMES]`: the benchmarks (or only those named), each beside a baseline measured
//!   in the same run; JSON reports under `target/bench/`.
//!
//! No dependencies beyond `anyhow`: everything is `std::process::Command`.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Pinned tool versions (see TOOLCHAIN.md). The wasm-bindgen CLI must equal the
/// `wasm-bindgen` crate version pinned in the workspace Cargo.toml.
const WASM_BINDGEN_VERSION: &str = "0.2.130";
const TRUNK_VERSION: &str = "0.21.14";
const BINARYEN_VERSION: &str = "132";
const WASM_TARGET: &str = "wasm32-unknown-unknown";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  setup          install missing tools (chromium, chromedriver, wasm target, wasm-bindgen-cli,
                 trunk, wasm-opt); does nothing for tools already at the pinned version
  serve [ARGS]   setup, build the web client (release) and run the relay on it;
                 ARGS go to the relay (see `cargo run -p peermail-relay --bin relay -- --help`)
  test           everything CI runs: native tests, wasm browser tests, web build, relay build,
                 end-to-end browser tests
  e2e [ARGS]     only the end-to-end browser tests (builds missing artefacts first);
                 ARGS go to the e2e test binary (scenario name filters)
  bench [NAMES]  benchmarks with same-run baselines (relay memory per idle connection,
                 relay cache throughput beside Redis, browser-to-browser delivery latency,
                 a 256 MiB attachment beside a raw data channel, the same file to a storage
                 node beside browser to browser); JSON reports in target/bench/. NAMES
                 (e.g. storage_node_transfer) run only those: signaling_memory,
                 cache_throughput, delivery_latency, attachment_transfer,
                 storage_node_transfer
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::FAILURE;
    };
    let ws = match Workspace::locate() {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cmd.as_str() {
        "setup" => setup(&ws),
        // `cargo xtask serve -- --listen …` is a common way to write it; `--` is not the
        // relay's.
        "serve" => serve(
            &ws,
            rest.strip_prefix(&["--".to_string()][..]).unwrap_or(rest),
        ),
        "test" => test(&ws),
        "e2e" => e2e(&ws, rest, true),
        "bench" => bench(&ws, rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask {cmd}: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Paths of the workspace the commands work on.
struct Workspace {
    /// The repository root (holds the workspace Cargo.toml and Trunk.toml).
    root: PathBuf,
    /// Cargo's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
    target: PathBuf,
}

impl Workspace {
    fn locate() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let target = match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    root.join(dir)
                }
            }
            None => root.join("target"),
        };
        Ok(Self { root, target })
    }

    /// Where `npm install --prefix` puts binaryen.
    fn tools_dir(&self) -> PathBuf {
        self.target.join("tools")
    }

    fn wasm_opt_dir(&self) -> PathBuf {
        self.tools_dir().join("node_modules/binaryen/bin")
    }

    /// The built web client (trunk's default `dist` next to Trunk.toml).
    fn dist(&self) -> PathBuf {
        self.root.join("dist")
    }

    /// The relay binary as built for the tests (dev profile: shares its dependency builds
    /// with `cargo test`, which saves minutes on a 2-core CI machine).
    fn relay_bin(&self) -> PathBuf {
        self.target.join("debug").join("relay")
    }

    /// PATH with wasm-opt from npm first, so trunk finds version 132, not Debian's.
    fn path_with_tools(&self) -> Result<OsString> {
        let mut paths = vec![self.wasm_opt_dir()];
        if let Some(home) = env::var_os("CARGO_HOME") {
            paths.push(PathBuf::from(home).join("bin"));
        } else if let Some(home) = env::var_os("HOME") {
            paths.push(PathBuf::from(home).join(".cargo/bin"));
        }
        paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
        Ok(env::join_paths(paths)?)
    }
}

// ---------------------------------------------------------------------------------------
// setup

fn setup(ws: &Workspace) -> Result<()> {
    step("setup: checking tools");
    let mut apt = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        apt.push("chromium");
    }
    if !Path::new(CHROMEDRIVER).exists() {
        apt.push("chromium-driver");
    }
    if which("ip").is_none() {
        apt.push("iproute2");
    }
    if which("unshare").is_none() {
        apt.push("util-linux");
    }
    if which("npm").is_none() && !ws.wasm_opt_dir().join("wasm-opt").exists() {
        apt.push("npm");
    }
    if apt.is_empty() {
        say("system packages: chromium, chromedriver, ip, unshare present");
    } else {
        say(&format!("system packages: installing {}", apt.join(" ")));
        run(sudo("apt-get").arg("update"))?;
        run(sudo("apt-get")
            .args(["install", "-y"])
            .args(&apt)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is needed to add the wasm target")?;
    if installed.lines().any(|l| l.trim() == WASM_TARGET) {
        say(&format!("rust target {WASM_TARGET}: present"));
    } else {
        say(&format!("rust target {WASM_TARGET}: adding"));
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }

    let path = ws.path_with_tools()?;
    let have = |tool: &str| output(Command::new(tool).arg("--version").env("PATH", &path)).ok();

    // Both wasm-bindgen and wasm-bindgen-test-runner come from wasm-bindgen-cli.
    let wb = have("wasm-bindgen").unwrap_or_default();
    let wbtr = have("wasm-bindgen-test-runner").unwrap_or_default();
    if wb.contains(WASM_BINDGEN_VERSION) && wbtr.contains(WASM_BINDGEN_VERSION) {
        say(&format!("wasm-bindgen-cli {WASM_BINDGEN_VERSION}: present"));
    } else {
        say(&format!(
            "wasm-bindgen-cli {WASM_BINDGEN_VERSION}: installing (found {:?}; takes a few minutes)",
            wb.trim()
        ));
        // Not --locked: its lockfile wants a crate version the registry lacks (TOOLCHAIN.md).
        run(Command::new("cargo").args([
            "install",
            "--force",
            &format!("wasm-bindgen-cli@{WASM_BINDGEN_VERSION}"),
        ]))?;
    }

    let trunk = have("trunk").unwrap_or_default();
    if trunk.split_whitespace().any(|w| w == TRUNK_VERSION) {
        say(&format!("trunk {TRUNK_VERSION}: present"));
    } else {
        say(&format!(
            "trunk {TRUNK_VERSION}: installing (found {:?}; takes about ten minutes)",
            trunk.trim()
        ));
        // --locked is required: without it lightningcss fails to compile (TOOLCHAIN.md).
        run(Command::new("cargo").args([
            "install",
            "--locked",
            "--force",
            &format!("trunk@{TRUNK_VERSION}"),
        ]))?;
    }

    let wasm_opt = ws.wasm_opt_dir().join("wasm-opt");
    if wasm_opt.exists() {
        say(&format!("wasm-opt (binaryen {BINARYEN_VERSION}): present"));
    } else {
        say(&format!(
            "wasm-opt: installing binaryen@{BINARYEN_VERSION} from npm into {}",
            ws.tools_dir().display()
        ));
        std::fs::create_dir_all(ws.tools_dir())?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(ws.tools_dir())
            .arg(format!("binaryen@{BINARYEN_VERSION}")))?;
        if !wasm_opt.exists() {
            bail!("npm finished but {} does not exist", wasm_opt.display());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// serve

fn serve(ws: &Workspace, relay_args: &[String]) -> Result<()> {
    setup(ws)?;
    trunk_build(ws)?;
    step("serve: building the relay (release)");
    run(cargo(ws)
        .args(["build", "--release"])
        .args(NATIVE)
        .args(["--bin", "relay"]))?;
    let bin = ws.target.join("release").join("relay");
    let mut cmd = Command::new(&bin);
    let given = |flag: &str| {
        relay_args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    if !given("--web-root") && env::var_os("PEERMAIL_WEB_ROOT").is_none() {
        cmd.arg("--web-root").arg(ws.dist());
    }
    // Run from the repository root so the default `./data` lands there (git-ignored).
    cmd.args(relay_args).current_dir(&ws.root);
    step(&format!("serve: {} (Ctrl-C stops it)", describe(&cmd)));
    // Replace this process with the relay: Ctrl-C then reaches the relay itself, which shuts
    // down cleanly, and the terminal waits for it (cargo, too, execs `cargo xtask`).
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    Err(err).with_context(|| format!("starting {}", bin.display()))
}

// ---------------------------------------------------------------------------------------
// test

fn test(ws: &Workspace) -> Result<()> {
    let started = Instant::now();
    let mut done: Vec<String> = Vec::new();
    let mut stage = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = Instant::now();
        f().with_context(|| format!("stage `{name}` failed"))?;
        done.push(format!("{name} ({}s)", t.elapsed().as_secs()));
        Ok(())
    };

    stage("setup", &mut || setup(ws))?;
    stage("native tests", &mut || {
        step("test: native tests (cargo test --workspace)");
        // The e2e scenarios need the built artefacts and run in their own stage below
        // (their target has `test = false`, so `--workspace` leaves them out).
        run(cargo(ws).arg("test").args(NATIVE))
    })?;
    stage("wasm browser tests", &mut || wasm_tests(ws))?;
    stage("web build", &mut || trunk_build(ws))?;
    stage("relay build", &mut || build_relay(ws))?;
    stage("e2e tests", &mut || e2e(ws, &[], false))?;

    println!(
        "\nxtask test: all stages passed in {}s: {}",
        started.elapsed().as_secs(),
        done.join(", ")
    );
    Ok(())
}

fn wasm_tests(ws: &Workspace) -> Result<()> {
    step("test: web client tests in headless Chromium (wasm-bindgen-test)");
    let client_dir = ws.root.join("web-client");
    let mut cmd = cargo(ws);
    // `--tests`: library and test targets, no doctests (they do not run under the runner).
    cmd.args([
        "test",
        "-p",
        "peermail-web-client",
        "--target",
        WASM_TARGET,
        "--tests",
    ])
    .env(
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
        "wasm-bindgen-test-runner",
    )
    .env("CHROMEDRIVER", CHROMEDRIVER)
    .env("PATH", ws.path_with_tools()?);
    if env::var_os("WASM_BINDGEN_TEST_TIMEOUT").is_none() {
        // The default 20 s is tight on a loaded 2-core machine.
        cmd.env("WASM_BINDGEN_TEST_TIMEOUT", "120");
    }
    // wasm-bindgen-test-runner reads webdriver.json (Chromium flags such as --no-sandbox)
    // from its working directory.
    if client_dir.join("webdriver.json").exists() {
        cmd.current_dir(&client_dir);
    } else {
        say("note: web-client/webdriver.json not found; the runner uses default Chromium flags");
    }
    // chromedriver gives each session a profile under $TMPDIR and does not always remove it
    // (tens of MB each, with the tests' IndexedDB data).
    with_scratch_tmp(ws, "wasm-tests", |tmp| run(cmd.env("TMPDIR", tmp)))
}

fn trunk_build(ws: &Workspace) -> Result<()> {
    step("build: web client (trunk build --release --offline)");
    run(Command::new("trunk")
        .args(["build", "--release", "--offline"])
        .current_dir(&ws.root)
        .env("PATH", ws.path_with_tools()?))?;
    if !ws.dist().join("index.html").exists() {
        bail!(
            "trunk finished but {} is missing",
            ws.dist().join("index.html").display()
        );
    }
    Ok(())
}

fn build_relay(ws: &Workspace) -> Result<()> {
    step("build: relay binary (cargo build --bin relay)");
    run(cargo(ws).arg("build").args(NATIVE).args(["--bin", "relay"]))?;
    if !ws.relay_bin().exists() {
        bail!("cargo finished but {} is missing", ws.relay_bin().display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// e2e

/// Runs the end-to-end tests. Standalone (`cargo xtask e2e`) it first builds whatever
/// artefact is missing; from `test` the artefacts were just built.
fn e2e(ws: &Workspace, args: &[String], standalone: bool) -> Result<()> {
    if standalone {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            setup(ws)?;
        }
        if ws.dist().join("index.html").exists() {
            say("using the existing dist/ (`cargo xtask test` rebuilds it; so does deleting it)");
        } else {
            setup(ws)?;
            trunk_build(ws)?;
        }
        // Always let cargo decide whether the relay is up to date (cheap when it is).
        build_relay(ws)?;
    }
    step("test: end-to-end (real relay, headless Chromium, private network namespace)");
    let out = ws.target.join("e2e");
    std::fs::create_dir_all(&out)?;
    with_scratch_tmp(ws, "e2e", |tmp| {
        run(cargo(ws)
            .arg("test")
            .args(NATIVE)
            // Only the scenario binary: its `N passed, M failed` is the run's last test line.
            .args(["--test", "e2e", "--"])
            .args(args)
            .env("PEERMAIL_RELAY_BIN", ws.relay_bin())
            .env("PEERMAIL_DIST", ws.dist())
            .env("PEERMAIL_E2E_OUT", &out)
            .env("CHROMEDRIVER", CHROMEDRIVER)
            .env("CHROMIUM", CHROMIUM)
            .env("TMPDIR", tmp))
    })
}

// ---------------------------------------------------------------------------------------
// bench

/// The benchmarks `bench` runs, in order; each writes `target/bench/<name>.json`.
const BENCHES: &[&str] = &[
    "signaling_memory",
    "cache_throughput",
    "delivery_latency",
    "attachment_transfer",
    "storage_node_transfer",
];

/// Runs the benchmarks (release builds) and prints each report. Each benchmark measures its
/// own baseline in the same run; compare ratios, not absolute times (the machines are noisy).
fn bench(ws: &Workspace, names: &[String]) -> Result<()> {
    if let Some(unknown) = names.iter().find(|n| !BENCHES.contains(&n.as_str())) {
        bail!(
            "no benchmark `{unknown}`; there are: {}",
            BENCHES.join(", ")
        );
    }
    let wanted = |name: &str| names.is_empty() || names.iter().any(|n| n == name);
    setup(ws)?;
    trunk_build(ws)?;
    step("bench: building the relay (release)");
    run(cargo(ws)
        .args(["build", "--release"])
        .args(NATIVE)
        .args(["--bin", "relay"]))?;
    let relay = ws.target.join("release").join("relay");
    let out = ws.target.join("bench");
    std::fs::create_dir_all(&out)?;

    if wanted("signaling_memory") {
        step("bench: relay memory per idle authenticated WebSocket (5,000 connections)");
        run(cargo(ws)
            .arg("bench")
            .args(NATIVE)
            .args(["--bench", "signaling_memory"])
            .env("PEERMAIL_RELAY_BIN", &relay)
            .env("PEERMAIL_BENCH_OUT", &out))?;
    }

    if wanted("cache_throughput") {
        step("bench: relay cache store-and-forward throughput beside Redis (50 clients, 1 KiB)");
        if which("redis-server").is_none() || which("redis-benchmark").is_none() {
            say("redis-server: installing (the baseline of the cache benchmark)");
            run(sudo("apt-get").arg("update"))?;
            run(sudo("apt-get").args(["install", "-y", "redis-server"]))?;
        }
        let cache_bench = || {
            let mut cmd = cargo(ws);
            cmd.arg("bench")
                .args(NATIVE)
                .args(["--bench", "cache_throughput"])
                .env("PEERMAIL_RELAY_BIN", &relay)
                .env("PEERMAIL_BENCH_OUT", &out);
            cmd
        };
        // Built first, then what the builds wrote flushed to disk, so that the kernel is not
        // still writing out hundreds of megabytes of build artefacts while the relay's WAL
        // goes to disk (the rounds run right after a build were slower).
        run(cache_bench().arg("--no-run"))?;
        run(&mut Command::new("sync"))?;
        run(&mut cache_bench())?;
    }

    // The browser benchmarks (private network namespace).
    let e2e_out = ws.target.join("e2e-bench");
    std::fs::create_dir_all(&e2e_out)?;
    let browser_bench = |name: &str| {
        with_scratch_tmp(ws, "bench", |tmp| {
            run(cargo(ws)
                .arg("bench")
                .args(NATIVE)
                .args(["--bench", name])
                .env("PEERMAIL_RELAY_BIN", &relay)
                .env("PEERMAIL_DIST", ws.dist())
                .env("PEERMAIL_E2E_OUT", &e2e_out)
                .env("PEERMAIL_BENCH_OUT", &out)
                .env("CHROMEDRIVER", CHROMEDRIVER)
                .env("CHROMIUM", CHROMIUM)
                .env("TMPDIR", tmp))
        })
    };
    if wanted("delivery_latency") {
        step("bench: Send-to-delivered latency between two browsers (private network namespace)");
        browser_bench("delivery_latency")?;
    }
    if wanted("attachment_transfer") {
        step("bench: a 256 MiB attachment between two browsers beside a raw data channel");
        browser_bench("attachment_transfer")?;
    }
    if wanted("storage_node_transfer") {
        step(
            "bench: a 256 MiB attachment to a storage node (`relay node`) beside browser to \
             browser and a raw data channel",
        );
        browser_bench("storage_node_transfer")?;
    }

    step(&format!("bench: reports in {}", out.display()));
    for name in BENCHES.iter().filter(|n| wanted(n)) {
        say(&format!("  {}", out.join(format!("{name}.json")).display()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// helpers

/// The package selection of every native cargo command (tests, relay build, e2e, benches).
/// One selection means one feature resolution, so each stage reuses what the one before it
/// built; `-p` per stage resolved features differently and rebuilt most dependencies (and
/// kept three copies of them on disk). The web client builds only for wasm.
const NATIVE: &[&str] = &["--workspace", "--exclude", "peermail-web-client"];

/// Runs `f` with an empty scratch directory for `TMPDIR` (under the target directory) and
/// removes it afterwards, passed or failed: browsers and chromedriver leave profiles and
/// temporary files behind when a run is cut short, and on a shared disk they add up.
fn with_scratch_tmp(ws: &Workspace, name: &str, f: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = ws.target.join("scratch").join(name);
    let clear = || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            say(&format!("note: could not remove {}: {e}", dir.display()));
        }
        _ => {}
    };
    clear();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = f(&dir);
    clear();
    result
}

fn cargo(ws: &Workspace) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&ws.root);
    cmd
}

/// `cmd`, prefixed with `sudo` when we are not root and sudo exists.
fn sudo(cmd: &str) -> Command {
    if is_root() || which("sudo").is_none() {
        Command::new(cmd)
    } else {
        let mut c = Command::new("sudo");
        c.arg(cmd);
        c
    }
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

fn which(tool: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Runs `cmd` with inherited stdio; fails with the command line when it does not succeed.
fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` exited with {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout (stderr appended) when it succeeds.
fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` exited with {}", out.status);
    }
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(s)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn step(msg: &str) {
    println!("\n==> {msg}");
}

fn say(msg: &str) {
    println!("    {msg}");
}
