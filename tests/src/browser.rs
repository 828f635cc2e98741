//! A person's browser: one headless Chromium WebDriver session with its own profile
//! directory, and the page helpers scenarios use.
//!
//! Reads go through small JavaScript snapshots of the DOM (one round trip, no stale element
//! references); interactions (typing, clicking) go through WebDriver so the page receives
//! real input events. Every selector comes from `docs/ui-contract.md`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::Harness;

/// Poll interval of every `wait_…` helper.
const POLL: Duration = Duration::from_millis(250);
/// How many times [`Browser::wait`] a transfer that keeps moving may take in all
/// ([`Browser::wait_attachment`]).
const STALL_WAITS: u32 = 6;

/// Chromium flags that work headless as root (TOOLCHAIN.md), plus the two that let WebRTC
/// gather candidates on the private veth address inside the test namespace.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
];

/// One row of `#message-list`.
#[derive(Clone, Debug, Deserialize)]
pub struct Row {
    pub id: Option<String>,
    pub unread: bool,
    pub from: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub date: Option<String>,
    pub status: Option<String>,
}

/// What `#reading-pane` shows.
#[derive(Clone, Debug, Deserialize)]
pub struct Pane {
    pub subject: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub cc: Option<String>,
    pub date: Option<String>,
    pub body: Option<String>,
    pub recipients: Vec<RecipientStatus>,
}

/// One `.recipient-status` of an outgoing mail in the reading pane.
#[derive(Clone, Debug, Deserialize)]
pub struct RecipientStatus {
    pub address: Option<String>,
    pub state: Option<String>,
    pub text: String,
}

/// One `li.attachment` of the reading pane.
#[derive(Clone, Debug, Deserialize)]
pub struct Attachment {
    pub name: Option<String>,
    pub state: Option<String>,
    pub size: Option<u64>,
    pub done: Option<u64>,
    pub status: String,
}

/// A person's browser.
pub struct Browser {
    /// The person (`alice`); also names the profile directory and failure screenshots.
    pub name: String,
    /// `None` while the browser is closed (see [`Browser::close`] / [`Browser::reopen`]).
    client: Option<Client>,
    /// Chromium's `--user-data-dir`: IndexedDB lives here and survives close/reopen.
    profile: PathBuf,
    driver_url: String,
    app_url: String,
    chromium: PathBuf,
    domain: String,
    /// Chromium flags added to [`CHROMIUM_ARGS`] (benchmarks; the e2e tests add none).
    extra_args: Vec<String>,
    /// How long each `wait_…` polls.
    pub wait: Duration,
}

impl Browser {
    /// Starts a browser for `name` with its profile directory and opens the app.
    pub async fn open(h: &Harness, name: &str) -> Result<Self> {
        Self::open_with_args(h, name, &[]).await
    }

    /// Like [`Browser::open`], with Chromium flags added to the usual ones (kept for
    /// [`Browser::reopen`]), e.g. `--enable-precise-memory-info` for a benchmark.
    pub async fn open_with_args(h: &Harness, name: &str, extra_args: &[&str]) -> Result<Self> {
        let mut b = Self {
            name: name.to_string(),
            client: None,
            profile: h.profile_dir(name),
            driver_url: h.driver.url.clone(),
            app_url: h.app_url(),
            chromium: h.config.chromium.clone(),
            domain: h.config.domain.clone(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            wait: h.config.wait,
        };
        b.reopen().await?;
        Ok(b)
    }

    /// Starts the browser again with the same profile (after [`Browser::close`]) and opens
    /// the app: a person coming back.
    pub async fn reopen(&mut self) -> Result<()> {
        if self.client.is_some() {
            bail!("{}'s browser is already open", self.name);
        }
        std::fs::create_dir_all(&self.profile)?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.extend(self.extra_args.iter().cloned());
        args.push(format!("--user-data-dir={}", self.profile.display()));
        std::fs::create_dir_all(self.downloads_dir())?;
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": args,
                // Saved attachments land here, without asking.
                "prefs": {
                    "download.default_directory": self.downloads_dir(),
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                },
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.driver_url)
            .await
            .with_context(|| format!("starting {}'s browser via chromedriver", self.name))?;
        client
            .goto(&self.app_url)
            .await
            .with_context(|| format!("{} opening {}", self.name, self.app_url))?;
        self.client = Some(client);
        Ok(())
    }

    /// Where this person's browser saves files.
    pub fn downloads_dir(&self) -> PathBuf {
        self.profile.join("Downloads")
    }

    /// Waits until the browser has saved `name` completely into [`Browser::downloads_dir`]
    /// and returns its bytes.
    pub async fn wait_saved(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.downloads_dir().join(name);
        let partial = self.downloads_dir().join(format!("{name}.crdownload"));
        let (path, partial) = (&path, &partial);
        self.wait_until(&format!("{name} to be saved"), || async move {
            Ok(if path.exists() && !partial.exists() {
                Ok(std::fs::read(path)?)
            } else {
                Err(format!("{} not there yet", path.display()))
            })
        })
        .await
    }

    /// Chromium's `--user-data-dir` of this person (see [`renderer_rss`]).
    pub fn profile(&self) -> &Path {
        &self.profile
    }

    /// Ends the browser (Chromium quits; its profile directory stays).
    pub async fn close(&mut self) -> Result<()> {
        if let Some(client) = self.client.take() {
            client
                .close()
                .await
                .with_context(|| format!("closing {}'s browser", self.name))?;
        }
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.client.is_some()
    }

    /// `name@domain`.
    pub fn address(&self) -> String {
        format!("{}@{}", self.name, self.domain)
    }

    /// Opens `url` in a new tab of this browser and brings it to the front, which puts the
    /// person's page out of sight (`document.visibilityState` "hidden"). Scripts run by
    /// [`Browser::eval`] go to the new tab until [`Browser::close_other_tab`].
    pub async fn open_other_tab(&self, url: &str) -> Result<()> {
        let c = self.client()?;
        let tab = c.new_window(true).await?;
        c.switch_to_window(tab.handle).await?;
        c.goto(url).await?;
        Ok(())
    }

    /// Closes the tab [`Browser::open_other_tab`] opened: the person's page is in front again.
    pub async fn close_other_tab(&self) -> Result<()> {
        let c = self.client()?;
        c.close_window().await?;
        let tabs = c.windows().await?;
        let first = tabs.into_iter().next().context("no tab left")?;
        c.switch_to_window(first).await?;
        Ok(())
    }

    /// Opens `url` in the current tab (a person typing an address, or following a link).
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client()?.goto(url).await?;
        Ok(())
    }

    /// Evaluates `expression` (its value may be a promise) in the service worker of the page's
    /// origin, through the DevTools protocol (attach to the worker's target,
    /// `Runtime.evaluate`), and fails with its error if it throws or rejects. The worker is
    /// woken first (a message starts an idle one); the outcome comes back through the
    /// origin's Cache Storage (`peermail-e2e`), which any tab of the origin can read.
    pub async fn eval_in_service_worker(&self, expression: &str) -> Result<()> {
        const OUTCOME: &str = "const done = arguments[arguments.length - 1];
            caches.open('peermail-e2e').then(c => c.match('/outcome'))
              .then(r => r ? r.text() : null).then(done, e => done('error: ' + e));";
        let woken: Option<String> = self
            .eval_async(
                "const done = arguments[arguments.length - 1];
                 (async () => {
                   await caches.delete('peermail-e2e');
                   const r = await navigator.serviceWorker.getRegistration('/');
                   if (!r || !r.active) return done('no active service worker');
                   r.active.postMessage({ type: 'peermail-e2e-wake' });
                   done(null);
                 })().catch(e => done(String(e)));",
                vec![],
            )
            .await?;
        if let Some(why) = woken {
            bail!("{}: cannot reach the service worker: {why}", self.name);
        }
        let worker = self
            .wait_until("the service worker to run", || async move {
                let targets = self.cdp("Target.getTargets", json!({})).await?;
                let found = targets["targetInfos"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["type"] == "service_worker")
                    .cloned();
                Ok(found.ok_or_else(|| format!("{targets}")))
            })
            .await?;
        let attached = self
            .cdp(
                "Target.attachToTarget",
                json!({ "targetId": worker["targetId"], "flatten": false }),
            )
            .await?;
        let session = attached["sessionId"].clone();
        let wrapped = format!(
            "Promise.resolve().then(() => ({expression}))
               .then(() => 'ok', e => 'error: ' + e)
               .then(o => caches.open('peermail-e2e').then(c => c.put('/outcome', new Response(o))))"
        );
        let message = json!({
            "id": 1,
            "method": "Runtime.evaluate",
            "params": { "expression": wrapped },
        });
        self.cdp(
            "Target.sendMessageToTarget",
            json!({ "message": message.to_string(), "sessionId": session }),
        )
        .await?;
        self.cdp("Target.detachFromTarget", json!({ "sessionId": session }))
            .await?;
        let outcome = self
            .wait_until(
                "the service worker's script to finish (one that does not parse never does)",
                || async move {
                    let o: Option<String> = self.eval_async(OUTCOME, vec![]).await?;
                    Ok(o.ok_or_else(|| "not yet".to_string()))
                },
            )
            .await?;
        let _: Value = self
            .eval_async(
                "const done = arguments[arguments.length - 1];
                 caches.delete('peermail-e2e').then(() => done(null), () => done(null));",
                vec![],
            )
            .await?;
        ensure!(
            outcome == "ok",
            "{}: in the service worker: {outcome}",
            self.name
        );
        Ok(())
    }

    fn client(&self) -> Result<&Client> {
        self.client
            .as_ref()
            .ok_or_else(|| anyhow!("{}'s browser is closed", self.name))
    }

    /// Reloads the page.
    pub async fn reload(&self) -> Result<()> {
        self.client()?
            .refresh()
            .await
            .with_context(|| format!("{} reloading", self.name))
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and decodes its result.
    pub async fn eval<T: DeserializeOwned>(&self, script: &str, args: Vec<Value>) -> Result<T> {
        let v = self.client()?.execute(script, args).await?;
        serde_json::from_value(v.clone()).with_context(|| format!("decoding script result {v}"))
    }

    /// Runs `script` asynchronously (`arguments[arguments.length - 1]` is the callback that
    /// ends it, within chromedriver's script timeout) and decodes what it passed back.
    pub async fn eval_async<T: DeserializeOwned>(
        &self,
        script: &str,
        args: Vec<Value>,
    ) -> Result<T> {
        let v = self.client()?.execute_async(script, args).await?;
        serde_json::from_value(v.clone()).with_context(|| format!("decoding script result {v}"))
    }

    /// Sends a Chrome DevTools Protocol command to this browser through chromedriver
    /// (`POST /session/{id}/goog/cdp/execute`) and returns its result.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Result<Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sid = self
            .client()?
            .session_id()
            .await?
            .context("the WebDriver session has no id")?;
        let host = self
            .driver_url
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let body = json!({ "cmd": cmd, "params": params }).to_string();
        let request = format!(
            "POST /session/{sid}/goog/cdp/execute HTTP/1.1\r\nHost: {host}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream.write_all(request.as_bytes()).await?;
        // chromedriver may keep the connection open: read the head, then exactly the body
        // (Content-Length, or chunks up to the last one).
        let mut raw = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(120);
        let body = loop {
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
                let body = &raw[split + 4..];
                if head.contains("transfer-encoding: chunked") {
                    if body.ends_with(b"0\r\n\r\n") {
                        break dechunk(body);
                    }
                } else if let Some(len) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                {
                    if body.len() >= len {
                        break body[..len].to_vec();
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, stream.read(&mut buf))
                .await
                .with_context(|| format!("chromedriver did not answer {cmd}"))??;
            if n == 0 {
                let split = raw
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .with_context(|| {
                        format!(
                            "chromedriver's answer to {cmd}: {}",
                            String::from_utf8_lossy(&raw)
                        )
                    })?;
                break raw[split + 4..].to_vec();
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let v: Value = serde_json::from_slice(&body).with_context(|| {
            format!(
                "chromedriver's answer to {cmd}: {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        if let Some(e) = v["value"]["error"].as_str() {
            bail!("{cmd}: {e}: {}", v["value"]["message"]);
        }
        Ok(v["value"].clone())
    }

    /// Polls `probe` until it returns `Ok(Ok(value))` or [`Browser::wait`] has passed.
    /// `Ok(Err(seen))` means "not yet" and says what the page showed instead; errors from
    /// WebDriver are retried too (the page may be re-rendering) and reported on timeout.
    pub async fn wait_until<T, F, Fut>(&self, what: &str, mut probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<std::result::Result<T, String>>>,
    {
        self.poll(what, 1, || {
            let probed = probe();
            async move { Ok(probed.await?.map_err(|seen| (seen, None))) }
        })
        .await
    }

    /// Polls `probe` until it gives a value, as [`Browser::wait_until`] does; while what it
    /// measures (its second `Err` field: bytes arrived, say) grows, the wait starts over, up
    /// to `most_waits` times [`Browser::wait`] in all. A probe that never measures gets one
    /// wait.
    async fn poll<T, F, Fut>(&self, what: &str, most_waits: u32, mut probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<std::result::Result<T, (String, Option<u64>)>>>,
    {
        let started = Instant::now();
        let mut deadline = started + self.wait;
        let mut most = None;
        loop {
            let last = match probe().await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err((seen, measured))) => {
                    if measured > most {
                        most = measured;
                        deadline = Instant::now() + self.wait;
                    }
                    seen
                }
                Err(e) => format!("error: {e:#}"),
            };
            let now = Instant::now();
            if now >= deadline.min(started + self.wait * most_waits) {
                let moving = if most_waits > 1 {
                    format!(
                        " (no progress for {}s, or {}s in all)",
                        self.wait.as_secs(),
                        (self.wait * most_waits).as_secs()
                    )
                } else {
                    String::new()
                };
                bail!(
                    "{}: timed out after {}s waiting for {what}{moving}; last seen: {last}",
                    self.name,
                    now.duration_since(started).as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the object store `store` of the page's IndexedDB database `db` holds `n`
    /// records ([`Browser::idb_count`]).
    pub async fn wait_idb_count(&self, db: &str, store: &str, n: u64) -> Result<()> {
        self.wait_until(
            &format!("{n} records in IndexedDB {db}/{store}"),
            || async move {
                let stored = self.idb_count(db, store).await?;
                Ok(if stored == n {
                    Ok(())
                } else {
                    Err(format!("{stored} records"))
                })
            },
        )
        .await
    }

    /// The number of records in the object store `store` of the page's IndexedDB database
    /// `db` (opened at its current version, closed again right after). This looks below the
    /// UI contract, at what the client keeps; use it only for what a person cannot see.
    pub async fn idb_count(&self, db: &str, store: &str) -> Result<u64> {
        #[derive(Deserialize)]
        struct Answer {
            count: Option<u64>,
            error: Option<String>,
        }
        let v = self
            .client()?
            .execute_async(
                r#"const [name, store, done] = arguments;
                   const req = indexedDB.open(name);
                   req.onerror = () => done({ error: 'opening: ' + String(req.error) });
                   req.onsuccess = () => {
                     const d = req.result;
                     try {
                       const c = d.transaction(store, 'readonly').objectStore(store).count();
                       c.onsuccess = () => { d.close(); done({ count: c.result }); };
                       c.onerror = () => { d.close(); done({ error: String(c.error) }); };
                     } catch (e) { d.close(); done({ error: String(e) }); }
                   };"#,
                vec![json!(db), json!(store)],
            )
            .await
            .with_context(|| format!("{} counting IndexedDB {db}/{store}", self.name))?;
        let a: Answer = serde_json::from_value(v.clone())
            .with_context(|| format!("decoding script result {v}"))?;
        match (a.count, a.error) {
            (Some(n), _) => Ok(n),
            (None, e) => bail!(
                "{}: IndexedDB {db}/{store}: {}",
                self.name,
                e.unwrap_or_else(|| format!("no answer ({v})"))
            ),
        }
    }

    /// The trimmed `textContent` of every element matching `css`.
    pub async fn texts(&self, css: &str) -> Result<Vec<String>> {
        self.eval(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent.trim());",
            vec![json!(css)],
        )
        .await
    }

    /// The value of attribute `attr` on the first element matching `css`.
    pub async fn attr(&self, css: &str, attr: &str) -> Result<Option<String>> {
        self.eval(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            vec![json!(css), json!(attr)],
        )
        .await
    }

    /// Waits until some element matching `css` exists.
    pub async fn wait_for(&self, css: &str) -> Result<()> {
        self.wait_until(&format!("`{css}`"), || async move {
            Ok(if self.texts(css).await?.is_empty() {
                Err("no such element".into())
            } else {
                Ok(())
            })
        })
        .await
    }

    /// Waits until no element matches `css`.
    pub async fn wait_gone(&self, css: &str) -> Result<()> {
        self.wait_until(&format!("`{css}` to disappear"), || async move {
            let t = self.texts(css).await?;
            Ok(if t.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {t:?}"))
            })
        })
        .await
    }

    /// Waits until an element matching `css` has text containing `needle`; returns that text.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> Result<String> {
        self.wait_until(&format!("`{css}` containing {needle:?}"), || async move {
            let t = self.texts(css).await?;
            Ok(match t.iter().find(|s| s.contains(needle)) {
                Some(s) => Ok(s.clone()),
                None if t.is_empty() => Err("no such element".into()),
                None => Err(format!("{t:?}")),
            })
        })
        .await
    }

    /// Waits until an element matching `css` has non-empty text; returns it.
    pub async fn wait_for_nonempty(&self, css: &str) -> Result<String> {
        self.wait_until(&format!("`{css}` with text"), || async move {
            let t = self.texts(css).await?;
            Ok(match t.iter().find(|s| !s.is_empty()) {
                Some(s) => Ok(s.clone()),
                None if t.is_empty() => Err("no such element".into()),
                None => Err("empty".into()),
            })
        })
        .await
    }

    /// Clicks the first element matching `css`, waiting for it to exist and be clickable.
    pub async fn click(&self, css: &str) -> Result<()> {
        let c = self.client()?;
        self.wait_until(&format!("`{css}` to be clickable"), || async move {
            let el = match c.find(Locator::Css(css)).await {
                Ok(el) => el,
                Err(e) => return Ok(Err(first_line(&e))),
            };
            Ok(el.click().await.map_err(|e| first_line(&e)))
        })
        .await
    }

    /// Types `text` into the (empty) input matching `css`, as key presses.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        self.wait_for(css).await?;
        let el = self.client()?.find(Locator::Css(css)).await?;
        el.send_keys(text)
            .await
            .with_context(|| format!("{} typing into `{css}`", self.name))
    }

    /// Empties the input matching `css` as a person would (select all, delete), so that
    /// the page hears it as input.
    pub async fn clear_input(&self, css: &str) -> Result<()> {
        self.wait_for(css).await?;
        let el = self.client()?.find(Locator::Css(css)).await?;
        // Control+A, the modifiers released (NULL), Backspace.
        el.send_keys("\u{E009}a\u{E000}\u{E003}")
            .await
            .with_context(|| format!("{} clearing `{css}`", self.name))
    }

    /// The value of the input (or textarea) matching `css`.
    pub async fn input_value(&self, css: &str) -> Result<String> {
        self.eval(
            "return document.querySelector(arguments[0]).value",
            vec![serde_json::json!(css)],
        )
        .await
    }

    /// Presses `keys` as a person would, into whatever has the keyboard focus (the page's
    /// body when nothing does).
    pub async fn press(&self, keys: &str) -> Result<()> {
        let c = self.client()?;
        c.active_element()
            .await?
            .send_keys(keys)
            .await
            .with_context(|| format!("{} pressing {keys:?}", self.name))
    }

    /// Writes a screenshot (PNG) and the page's HTML into `dir` as `<prefix>-<name>.*`.
    pub async fn capture(&self, dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
        let c = self.client()?;
        let png = dir.join(format!("{prefix}-{}.png", self.name));
        std::fs::write(&png, c.screenshot().await?)?;
        let html = dir.join(format!("{prefix}-{}.html", self.name));
        std::fs::write(&html, c.source().await?)?;
        Ok(vec![png, html])
    }

    // ---------------------------------------------------------------------------------
    // What a person does

    /// Signs up as `name` on the sign-up form and waits for the main view with
    /// `#my-address` = `name@domain`.
    pub async fn sign_up(&self, name: &str) -> Result<()> {
        self.submit_signup(name).await?;
        let want = format!("{name}@{}", self.domain);
        let want = want.as_str();
        let got = self
            .wait_until(&format!("#my-address = {want}"), || async move {
                let addr = self.texts("#my-address").await?;
                if addr.iter().any(|a| a == want) {
                    return Ok(Ok(()));
                }
                let err = self.texts("#signup-error").await?;
                Ok(Err(format!("#my-address {addr:?}, #signup-error {err:?}")))
            })
            .await;
        got.with_context(|| format!("signing up as {name}"))
    }

    /// Types `name` into `#signup-name` and presses `#signup-submit` (no waiting after).
    pub async fn submit_signup(&self, name: &str) -> Result<()> {
        self.type_into("#signup-name", name).await?;
        self.click("#signup-submit").await
    }

    /// Waits until `#connection-status` says `online`.
    pub async fn wait_online(&self) -> Result<()> {
        self.wait_until("#connection-status[data-status=online]", || async move {
            let s = self.attr("#connection-status", "data-status").await?;
            Ok(if s.as_deref() == Some("online") {
                Ok(())
            } else {
                Err(format!("data-status {s:?}"))
            })
        })
        .await
    }

    /// Fills the Compose form and sends it; fails with `#compose-error`'s text if the form
    /// refuses. `to` and `cc` are comma-separated address lists.
    pub async fn compose(&self, to: &str, cc: &str, subject: &str, body: &str) -> Result<()> {
        self.compose_full(to, cc, subject, body, &[]).await
    }

    /// Like [`Browser::compose`], attaching `files` with the file picker (`#compose-files`).
    pub async fn compose_with_files(
        &self,
        to: &str,
        subject: &str,
        body: &str,
        files: &[&Path],
    ) -> Result<()> {
        self.compose_full(to, "", subject, body, files).await
    }

    /// Fills in and sends the Compose form, attaching `files` with the file picker, and
    /// waits for the form to close (or fails with what `#compose-error` says).
    async fn compose_full(
        &self,
        to: &str,
        cc: &str,
        subject: &str,
        body: &str,
        files: &[&Path],
    ) -> Result<()> {
        self.fill_compose(to, cc, subject, body, files).await?;
        self.click("#compose-send").await?;
        self.wait_until("the Compose form to close after Send", || async move {
            let err = self.texts("#compose-error").await?;
            if let Some(e) = err.iter().find(|e| !e.is_empty()) {
                return Ok(Err(format!("#compose-error says {e:?}")));
            }
            Ok(if self.texts("#compose-to").await?.is_empty() {
                Ok(())
            } else {
                Err("form still open".into())
            })
        })
        .await
        .with_context(|| format!("{} sending {subject:?}", self.name))
    }

    /// Opens a new Compose form and fills it in, attaching `files` with the file picker
    /// (waiting until each is listed); does not send it.
    pub async fn fill_compose(
        &self,
        to: &str,
        cc: &str,
        subject: &str,
        body: &str,
        files: &[&Path],
    ) -> Result<()> {
        self.click("#compose-button").await?;
        self.wait_for("#compose-to").await?;
        self.type_into("#compose-to", to).await?;
        if !cc.is_empty() {
            self.type_into("#compose-cc", cc).await?;
        }
        self.type_into("#compose-subject", subject).await?;
        self.type_into("#compose-body", body).await?;
        for f in files {
            self.attach(f).await?;
        }
        Ok(())
    }

    /// Attaches `file` to the open Compose form with the file picker, and waits until the
    /// form lists one file more.
    pub async fn attach(&self, file: &Path) -> Result<()> {
        const LISTED: &str = "#compose-attachments .compose-attachment";
        let before = self.texts(LISTED).await?.len();
        let input = self.client()?.find(Locator::Css("#compose-files")).await?;
        input
            .send_keys(&file.display().to_string())
            .await
            .with_context(|| format!("{} attaching {}", self.name, file.display()))?;
        let want = before + 1;
        self.wait_until(&format!("{want} files listed in Compose"), || async move {
            let n = self.texts(LISTED).await?.len();
            Ok(if n == want {
                Ok(())
            } else {
                Err(format!("{n} listed"))
            })
        })
        .await
    }

    /// The attachments the reading pane lists.
    pub async fn attachments(&self) -> Result<Vec<Attachment>> {
        self.eval(
            r#"return Array.from(document.querySelectorAll('#attachments li.attachment')).map(li => {
                 const n = a => { const v = li.getAttribute(a); return v === null ? null : Number(v); };
                 const st = li.querySelector('.attachment-status');
                 return { name: li.getAttribute('data-name'), state: li.getAttribute('data-state'),
                          size: n('data-size'), done: n('data-done'),
                          status: st ? st.textContent.trim() : '' };
               });"#,
            vec![],
        )
        .await
    }

    /// Waits until the reading pane lists attachment `name` in one of `states`. A transfer
    /// is a stall only when it stops moving: each time more of the file has arrived
    /// (`data-done` grew) the wait starts over, up to six times [`Browser::wait`]
    /// in all. How fast files move is the benchmarks' concern; here a transfer slowed by
    /// retransmissions on a busy machine still ends, and one that stops fails.
    pub async fn wait_attachment(&self, name: &str, states: &[&str]) -> Result<Attachment> {
        let what = format!("attachment {name} to be {}", states.join(" or "));
        self.poll(&what, STALL_WAITS, || async move {
            let all = self.attachments().await?;
            Ok(match all.iter().find(|a| a.name.as_deref() == Some(name)) {
                Some(a) if a.state.as_deref().is_some_and(|s| states.contains(&s)) => Ok(a.clone()),
                Some(a) => Err((format!("{a:?}"), a.done)),
                None => Err((format!("not listed: {all:?}"), None)),
            })
        })
        .await
    }

    /// Waits until the status line of some listed attachment contains `text` (the sender's
    /// side: "still needed by …", "kept on the storage node of …").
    pub async fn wait_attachment_status(&self, text: &str) -> Result<Attachment> {
        self.wait_until(&format!("an attachment to read {text:?}"), || async move {
            let listed = self.attachments().await?;
            Ok(match listed.iter().find(|a| a.status.contains(text)) {
                Some(a) => Ok(a.clone()),
                None => Err(format!("{listed:?}")),
            })
        })
        .await
    }

    /// Adds `address` to the contacts (unless it is there already).
    pub async fn add_contact(&self, address: &str) -> Result<()> {
        let sel = format!(".contact[data-address=\"{}\"]", css_escape(address));
        if !self.texts(&sel).await?.is_empty() {
            return Ok(());
        }
        self.type_into("#contact-add-input", address).await?;
        self.click("#contact-add-button").await?;
        self.wait_for(&sel).await
    }

    /// Waits until the contact `address` shows the presence dot `status`
    /// (`online` | `offline` | `unknown`).
    pub async fn wait_presence(&self, address: &str, status: &str) -> Result<()> {
        let sel = format!(
            ".contact[data-address=\"{}\"] .presence-dot",
            css_escape(address)
        );
        let sel = sel.as_str();
        self.wait_until(
            &format!("{address}'s presence dot to be {status}"),
            || async move {
                let s = self.attr(sel, "data-status").await?;
                Ok(if s.as_deref() == Some(status) {
                    Ok(())
                } else {
                    Err(format!("data-status {s:?}"))
                })
            },
        )
        .await
    }

    /// Clicks a folder button by its `data-folder` key: `inbox`, `outbox`, `sent`, `drafts`
    /// or `archive`.
    pub async fn open_folder(&self, folder: &str) -> Result<()> {
        self.click(&format!("[data-folder={folder}]")).await
    }

    /// The `.count` of a folder button.
    pub async fn folder_count(&self, folder: &str) -> Result<String> {
        Ok(self
            .texts(&format!("[data-folder={folder}] .count"))
            .await?
            .join(""))
    }

    /// The rows of `#message-list` as shown now.
    pub async fn rows(&self) -> Result<Vec<Row>> {
        self.eval(
            r#"const t = (el, s) => { const e = el.querySelector(s); return e ? e.textContent.trim() : null; };
               return Array.from(document.querySelectorAll('#message-list .message-row')).map(r => ({
                 id: r.getAttribute('data-message-id'), unread: r.classList.contains('unread'),
                 from: t(r, '.from'), to: t(r, '.to'), subject: t(r, '.subject'),
                 date: t(r, '.date'), status: t(r, '.status') }));"#,
            vec![],
        )
        .await
    }

    /// What `#reading-pane` shows now (`None` when there is no reading pane).
    pub async fn pane(&self) -> Result<Option<Pane>> {
        self.eval(
            r#"const p = document.querySelector('#reading-pane'); if (!p) return null;
               const t = s => { const e = p.querySelector(s); return e ? e.textContent.trim() : null; };
               return { subject: t('.subject'), from: t('.from'), to: t('.to'), cc: t('.cc'),
                 date: t('.date'), body: t('.body'),
                 recipients: Array.from(p.querySelectorAll('.recipient-status')).map(e => ({
                   address: e.getAttribute('data-address'), state: e.getAttribute('data-state'),
                   text: e.textContent.trim() })) };"#,
            vec![],
        )
        .await
    }

    /// Opens `folder` and waits for a row whose subject contains `subject`.
    pub async fn wait_row(&self, folder: &str, subject: &str) -> Result<Row> {
        self.open_folder(folder).await?;
        self.wait_until(&format!("a row {subject:?} in {folder}"), || async move {
            let rows = self.rows().await?;
            Ok(match row_about(&rows, subject) {
                Some(r) => Ok(r.clone()),
                None => Err(format!(
                    "rows {:?}",
                    rows.iter().map(|r| &r.subject).collect::<Vec<_>>()
                )),
            })
        })
        .await
    }

    /// Opens `folder` and waits until it lists no mail whose subject contains `subject`
    /// (the list is re-rendered after a mail left it, not at once).
    pub async fn wait_no_row(&self, folder: &str, subject: &str) -> Result<()> {
        self.open_folder(folder).await?;
        self.wait_until(&format!("{subject:?} to leave {folder}"), || async move {
            let rows = self.rows().await?;
            Ok(match row_about(&rows, subject) {
                Some(r) => Err(format!("still listed: {r:?}")),
                None => Ok(()),
            })
        })
        .await
    }

    /// Waits until the row of the list shown whose subject is `subject` is `unread` (or,
    /// `false`, read).
    pub async fn wait_row_unread(&self, subject: &str, unread: bool) -> Result<()> {
        let what = if unread { "unread" } else { "read" };
        self.wait_until(&format!("{subject:?} to show as {what}"), || async move {
            let rows = self.rows().await?;
            Ok(
                match rows.iter().find(|r| r.subject.as_deref() == Some(subject)) {
                    Some(r) if r.unread == unread => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            )
        })
        .await
    }

    /// Opens `folder`, waits for the mail `subject`, clicks it and waits for the reading
    /// pane to show it.
    pub async fn open_mail(&self, folder: &str, subject: &str) -> Result<Pane> {
        let row = self.wait_row(folder, subject).await?;
        self.click_row(&row).await?;
        self.wait_until(
            &format!("the reading pane to show {subject:?}"),
            || async move {
                Ok(match self.pane().await? {
                    Some(p) if p.subject.as_deref().is_some_and(|s| s.contains(subject)) => Ok(p),
                    Some(p) => Err(format!("pane subject {:?}", p.subject)),
                    None => Err("no #reading-pane".into()),
                })
            },
        )
        .await
    }

    async fn click_row(&self, row: &Row) -> Result<()> {
        match &row.id {
            Some(id) => {
                self.click(&format!(
                    ".message-row[data-message-id=\"{}\"]",
                    css_escape(id)
                ))
                .await
            }
            None => bail!(
                "{}: message row {:?} has no data-message-id",
                self.name,
                row.subject
            ),
        }
    }

    /// Waits until the outgoing mail `subject` shows `address` in `state` (per the reading
    /// pane's `.recipient-status`), looking in each of `folders` (the mail may move from
    /// Outbox to Sent meanwhile). Returns that status text.
    pub async fn wait_recipient(
        &self,
        folders: &[&str],
        subject: &str,
        address: &str,
        state: &str,
    ) -> Result<String> {
        self.wait_until(
            &format!("{subject:?} to show {address} {state} (in {folders:?})"),
            || async move {
                let mut seen = Vec::new();
                for folder in folders {
                    self.open_folder(folder).await?;
                    let rows = self.rows().await?;
                    let Some(row) = rows
                        .iter()
                        .find(|r| r.subject.as_deref().is_some_and(|s| s.contains(subject)))
                    else {
                        seen.push(format!("{folder}: no row"));
                        continue;
                    };
                    self.click_row(row).await?;
                    let pane = self.pane().await?;
                    let Some(pane) =
                        pane.filter(|p| p.subject.as_deref().is_some_and(|s| s.contains(subject)))
                    else {
                        seen.push(format!(
                            "{folder}: row {:?} but the pane does not show it",
                            row.status
                        ));
                        continue;
                    };
                    if let Some(r) = pane
                        .recipients
                        .iter()
                        .find(|r| r.address.as_deref() == Some(address))
                    {
                        if r.state.as_deref() == Some(state) {
                            return Ok(Ok(r.text.clone()));
                        }
                    }
                    seen.push(format!("{folder}: {:?}", pane.recipients));
                }
                Ok(Err(seen.join("; ")))
            },
        )
        .await
    }
}

/// A running Chromium process (not chromedriver), from `/proc`.
pub struct ChromiumProcess {
    pub ppid: u32,
    /// `browser` for the main process, else its `--type=` (`renderer`, `gpu-process`, …),
    /// for a utility process its `--utility-sub-type=`'s last part (`network` for the
    /// network service).
    pub kind: String,
    /// The browser process's `--user-data-dir` (the person's profile); `None` for others.
    pub user_data_dir: Option<PathBuf>,
    /// The fields of `/proc/PID/stat` after the command name (the state first).
    pub stat: Vec<String>,
}

/// The Chromium processes running now, by pid.
pub fn chromium_processes() -> std::collections::BTreeMap<u32, ChromiumProcess> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(cmd), Ok(stat)) = (
            std::fs::read(e.path().join("cmdline")),
            std::fs::read_to_string(e.path().join("stat")),
        ) else {
            continue;
        };
        // Chromium rewrites its command line into one space-separated string.
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let mut args = cmd.split(' ');
        let exe = args.next().unwrap_or("");
        if !exe.contains("chrom") || exe.contains("chromedriver") {
            continue;
        }
        let mut kind = "browser".to_string();
        let mut user_data_dir = None;
        for a in args {
            if let Some(t) = a.strip_prefix("--type=") {
                kind = t.to_string();
            } else if let Some(t) = a.strip_prefix("--utility-sub-type=") {
                kind = match t.rsplit('.').next().unwrap_or(t) {
                    "NetworkService" => "network".to_string(),
                    other => other.to_string(),
                };
            } else if let Some(d) = a.strip_prefix("--user-data-dir=") {
                user_data_dir = Some(PathBuf::from(d));
            }
        }
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let stat: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
        let ppid = stat.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        out.insert(
            pid,
            ChromiumProcess {
                ppid,
                kind,
                user_data_dir,
                stat,
            },
        );
    }
    out
}

/// The profile (`--user-data-dir`) of the browser process `pid` descends from.
pub fn profile_of(
    procs: &std::collections::BTreeMap<u32, ChromiumProcess>,
    pid: u32,
) -> Option<&Path> {
    let mut at = pid;
    for _ in 0..8 {
        let p = procs.get(&at)?;
        if let Some(d) = &p.user_data_dir {
            return Some(d);
        }
        at = p.ppid;
    }
    None
}

/// Resident memory, in bytes, of the renderer processes (pages, workers) of the Chromium
/// whose `--user-data-dir` is `profile` ([`Browser::profile`]), from `/proc`: the processes
/// with `--type=renderer` that descend from it. A plain function, so that a thread can
/// sample it while the scenario drives the page.
pub fn renderer_rss(profile: &Path) -> Result<u64> {
    let procs = chromium_processes();
    let (mut total, mut counted) = (0, 0);
    let ours = procs
        .iter()
        .filter(|(&pid, p)| p.kind == "renderer" && profile_of(&procs, pid) == Some(profile));
    for (pid, _) in ours {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue; // it ended meanwhile
        };
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
        total += kib * 1024;
        counted += 1;
    }
    ensure!(
        counted > 0,
        "no renderer of the Chromium with profile {} was found",
        profile.display()
    );
    Ok(total)
}

/// The first of `rows` whose subject contains `subject`.
pub fn row_about<'r>(rows: &'r [Row], subject: &str) -> Option<&'r Row> {
    rows.iter()
        .find(|r| r.subject.as_deref().is_some_and(|s| s.contains(subject)))
}

/// Escapes `"` and `\` for a double-quoted CSS attribute value.
fn css_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The body of an HTTP/1.1 chunked answer.
fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let len = String::from_utf8_lossy(&s[..eol]);
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        let rest = &s[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The first line of a WebDriver error (Chromium appends session info on more lines).
fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}
