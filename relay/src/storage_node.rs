//! `relay node`: a person's always-on storage node.
//!
//! The node keeps its own signing key in its data directory (`node-key`, created on first
//! start; it never holds mail keys). Not paired yet, it asks the relay for a pairing code
//! (`request_pairing`) and prints it; once the person enters the code in the web client's
//! Storage node panel, the relay says who owns it (`node_paired`), the node writes the owner
//! to `owner` in its data directory and signs in as `owner+node@host` with its key. Signed
//! in, it sends a heartbeat every [`NODE_HEARTBEAT_MS`], and it reconnects (with backoff)
//! whenever the connection to the relay ends.
//!
//! Signed in, it is a WebRTC peer (`crate::native::rtc`, the same data channels browsers
//! speak) driving [`StorageNode`] (`peermail_core::storage`): senders tell it which
//! attachments of their mail to its owner to keep, it pulls and verifies them, keeps them
//! in `files/` ([`disk`]) and serves them to its owner. Serving paces on the channel's
//! buffer like the browser does.
//!
//! Lines scripts and tests wait for, on stdout: `pairing code: 1234-5678`,
//! `storage node alice+node@host online`, and `kept <attachment id> (<size> bytes) from
//! <sender>` when a file is whole.

pub mod disk;

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use peermail_core::address::Address;
use peermail_core::attach::{hash_page, AttachmentId};
use peermail_core::identity::{auth_message, pairing_message, Identity};
use peermail_core::mail::Millis;
use peermail_core::node::{Input, ServeRequest};
use peermail_core::storage::{KeptFile, StorageEvent, StorageInput, StorageNode, StorageOutput};
use peermail_core::wire::peer::PeerFrame;
use peermail_core::wire::signal::{ClientFrame, ServerFrame, NODE_HEARTBEAT_MS};
use tokio::sync::mpsc;

use crate::native::rtc::{Rtc, RtcOut};
use crate::native::signal::{SignalClient, SignalEvent, SignalSender};

/// The options of `relay node`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "relay node",
    about = "Run a Peermail storage node: an always-on peer that keeps a person's attachments",
    long_about = "Run a Peermail storage node: an always-on peer that keeps a person's \
        attachments (ciphertext only; it holds no mail keys).\n\n\
        On its first start it prints a pairing code: enter it in Peermail's Storage node \
        panel (signed in as the person whose node this is). After that it signs in by \
        itself at every start."
)]
pub struct NodeConfig {
    /// The relay the owner's account is at, e.g. `http://relay.example:8080`.
    #[arg(long, env = "PEERMAIL_RELAY_URL")]
    pub relay_url: String,

    /// Folder for the node's key, its owner and the files it keeps; created if missing.
    #[arg(long, env = "PEERMAIL_NODE_DATA_DIR", default_value = "./node-data")]
    pub data_dir: PathBuf,

    /// Most MiB of attachments the node keeps; senders are refused beyond it.
    #[arg(long, env = "PEERMAIL_NODE_QUOTA_MIB", default_value = "102400")]
    pub quota_mib: u64,

    /// Local UDP address for WebRTC (`0.0.0.0:0`: every interface, any port).
    #[arg(long, env = "PEERMAIL_NODE_UDP", default_value = "0.0.0.0:0")]
    pub udp: String,
}

/// How long one connection attempt or one answer may take.
const WAIT: Duration = Duration::from_secs(20);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the node until `shutdown` completes.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let seed = load_or_create_seed(&config.data_dir)?;
    tokio::pin!(shutdown);
    // The first sign-in (pairing first if need be), retried until it works.
    let mut backoff = Duration::from_secs(1);
    let (owner, session) = loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            result = sign_in(&config, seed, true) => match result {
                Ok(signed_in) => break signed_in,
                Err(e) if e.downcast_ref::<Fatal>().is_some() => return Err(e),
                Err(e) => tracing::warn!("storage node: {e:#}; trying again in {backoff:?}"),
            },
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    let disk = Arc::new(disk::Disk::open(&config.data_dir)?);
    let quota = config.quota_mib.saturating_mul(1 << 20);
    run_node(&config, seed, owner, quota, disk, session, shutdown).await
}

/// An error reconnecting does not fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Fatal(String);

type Events = tokio::sync::mpsc::UnboundedReceiver<SignalEvent>;
/// A signed-in signaling session.
type Session = (SignalSender, Events);

/// Connects and signs in as the node (pairing first, when `may_pair` and not paired yet);
/// prints `storage node … online`.
async fn sign_in(
    config: &NodeConfig,
    seed: [u8; 32],
    may_pair: bool,
) -> Result<(Address, Session)> {
    let client = SignalClient::connect(&config.relay_url, WAIT).await?;
    let (nonce, domain) = (client.nonce.clone(), client.domain.clone());
    let (sender, mut events) = client.into_parts();
    let owner_file = config.data_dir.join("owner");
    let owner = match read_owner(&owner_file)? {
        Some(owner) => owner,
        None if may_pair => {
            let owner = pair(&sender, &mut events, &nonce, &domain, seed).await?;
            disk::write_atomically(&owner_file, owner.to_string().as_bytes())?;
            owner
        }
        None => return Err(Fatal(format!("{} is gone", owner_file.display())).into()),
    };
    if owner.host() != domain {
        return Err(Fatal(format!(
            "this node belongs to {owner}, but the relay at {} is {domain}; start it with \
             the relay of its owner, or with a new data directory to pair it again",
            config.relay_url
        ))
        .into());
    }
    let node = owner.storage_node();
    let identity = Identity::from_seed(node.clone(), seed);
    sender.send(ClientFrame::Auth {
        address: node.clone(),
        signature: identity.sign(&auth_message(&nonce, &node)),
    });
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Err(_) => bail!("the relay did not answer the sign-in of {node}"),
            Ok(Some(SignalEvent::Frame(ServerFrame::Authenticated { .. }))) => break,
            Ok(Some(SignalEvent::Frame(ServerFrame::Error { code, message, .. }))) => {
                return Err(Fatal(format!(
                    "the relay did not let this node sign in as {node} ({code:?}: \
                     {message}); was it unpaired, or another node paired since? To pair it \
                     again, delete {} and start it again (its files are kept)",
                    owner_file.display()
                ))
                .into())
            }
            Ok(Some(SignalEvent::Frame(_))) => {}
            Ok(Some(SignalEvent::Closed(why))) => bail!("signing in: {why}"),
            Ok(None) => bail!("signing in: the session ended"),
        }
    }
    println!("storage node {node} online");
    std::io::stdout().flush()?;
    Ok((owner, (sender, events)))
}

/// What the node says as it stops because its owner unpaired it.
fn unpaired_message(owner: &Address, node: &Address, data_dir: &std::path::Path) -> String {
    format!(
        "{owner} unpaired this storage node ({node}); it stops. Its files stay in {}. To pair \
         it again, delete {} and start it again",
        data_dir.display(),
        data_dir.join("owner").display()
    )
}

/// Asks for a pairing code, prints it and waits until a person enters it.
async fn pair(
    sender: &SignalSender,
    events: &mut Events,
    nonce: &str,
    domain: &str,
    seed: [u8; 32],
) -> Result<Address> {
    // The address is not known yet; only the key signs.
    let keys = Identity::from_seed(Address::new("unpaired", domain)?, seed);
    let public_key = keys.public_key();
    let signature = keys.sign(&pairing_message(nonce, &public_key));
    sender.send(ClientFrame::RequestPairing {
        public_key,
        signature,
    });
    loop {
        match events.recv().await {
            Some(SignalEvent::Frame(ServerFrame::PairingCode { code, .. })) => {
                println!("pairing code: {code}");
                println!(
                    "Enter it in Peermail's Storage node panel, signed in as the person whose \
                     node this is."
                );
                std::io::stdout().flush()?;
            }
            Some(SignalEvent::Frame(ServerFrame::NodePaired { owner, node })) => {
                println!("paired: {node} is the storage node of {owner}");
                std::io::stdout().flush()?;
                return Ok(owner);
            }
            Some(SignalEvent::Frame(ServerFrame::Error { code, message, .. })) => {
                bail!("the relay refused to pair this node: {code:?}: {message}")
            }
            Some(SignalEvent::Frame(_)) => {}
            Some(SignalEvent::Closed(why)) => bail!("waiting to be paired: {why}"),
            None => bail!("waiting to be paired: the session ended"),
        }
    }
}

/// A serving job: what the owner asked of a whole file.
struct ServeJob {
    peer: Address,
    attachment: AttachmentId,
    size: u64,
    request: ServeRequest,
    generation: u64,
}

/// `StopServing` bumps a peer's generation: jobs of an older one stop.
type Generations = Arc<Mutex<HashMap<Address, u64>>>;

/// The node: heartbeats, negotiation, data channels, the state machine and its files, until
/// `shutdown`. The signaling session comes and goes (it is signed in again with backoff);
/// open data channels, transfers and serving go on meanwhile.
async fn run_node(
    config: &NodeConfig,
    seed: [u8; 32],
    owner: Address,
    quota: u64,
    disk: Arc<disk::Disk>,
    session: Session,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    let (rtc_tx, mut rtc_rx) = mpsc::unbounded_channel();
    let rtc = Rtc::new(rtc_tx, vec![config.udp.clone()]);
    let kept = disk.load()?;
    tracing::info!(files = kept.len(), "storage node: files loaded");
    let mut node = StorageNode::new(owner, quota, kept);
    let generations: Generations = Arc::default();
    let (serve_tx, serve_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(serve_jobs(
        serve_rx,
        rtc.clone(),
        disk.clone(),
        generations.clone(),
    ));
    let mut records = Records::default();
    let mut signal: Option<Session> = Some(session);
    // Sessions signed in again after the relay went away.
    let (session_tx, mut session_rx) = mpsc::unbounded_channel::<Result<Session>>();
    let mut backoff = Duration::from_secs(1);
    let mut stats = LoopStats::default();
    node.handle(StorageInput::SignedIn, now());
    let mut heartbeat = tokio::time::interval(Duration::from_millis(NODE_HEARTBEAT_MS));
    let result = loop {
        // Everything the node asked for, in order (writes answer with more inputs).
        let mut inputs = VecDeque::new();
        let outputs_from = std::time::Instant::now();
        loop {
            while let Some(out) = node.poll_output() {
                execute(
                    out,
                    &mut Ctx {
                        node_inputs: &mut inputs,
                        sender: signal.as_ref().map(|(s, _)| s),
                        rtc: &rtc,
                        disk: &disk,
                        records: &mut records,
                        serve: &serve_tx,
                        generations: &generations,
                        files: &node,
                        stats: &mut stats,
                    },
                )
                .await;
            }
            match inputs.pop_front() {
                Some(input) => node.handle(input, now()),
                None => break,
            }
        }
        stats.outputs += outputs_from.elapsed();
        stats.log_if_due();
        let deadline = node
            .poll_timeout()
            .map(|t| Duration::from_millis(t.saturating_sub(now()).max(250)))
            .unwrap_or(Duration::from_secs(3600));
        let flush_in = records.next_flush();
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            _ = heartbeat.tick() => {
                if let Some((sender, _)) = &signal {
                    sender.send(ClientFrame::NodeHeartbeat);
                }
            }
            event = next_event(&mut signal) => match event {
                SignalEvent::Frame(ServerFrame::Signal { from, conn, payload }) => {
                    rtc.on_signal(from, conn, payload);
                }
                SignalEvent::Frame(ServerFrame::NodeUnpaired { owner, node }) => {
                    let message = unpaired_message(&owner, &node, &config.data_dir);
                    println!("unpaired: {message}");
                    std::io::stdout().flush()?;
                    break Err(Fatal(message).into());
                }
                SignalEvent::Frame(frame) => {
                    if let ServerFrame::Error { code, message, .. } = &frame {
                        tracing::warn!("relay: {code:?}: {message}");
                    }
                    node.handle(StorageInput::Server(frame), now());
                }
                SignalEvent::Closed(why) => {
                    tracing::warn!("storage node: the relay went away ({why}); open channels stay");
                    signal = None;
                    node.handle(StorageInput::SignedOut, now());
                    reconnect(config.clone(), seed, backoff, session_tx.clone());
                }
            },
            session = session_rx.recv() => match session {
                Some(Ok(session)) => {
                    signal = Some(session);
                    backoff = Duration::from_secs(1);
                    node.handle(StorageInput::SignedIn, now());
                }
                Some(Err(e)) if e.downcast_ref::<Fatal>().is_some() => break Err(e),
                Some(Err(e)) => {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tracing::warn!("storage node: {e:#}; trying again in {backoff:?}");
                    reconnect(config.clone(), seed, backoff, session_tx.clone());
                }
                None => break Err(anyhow!("the reconnection task stopped")),
            },
            out = rtc_rx.recv() => match out {
                Some(RtcOut::Signal(frame)) => {
                    if let Some((sender, _)) = &signal {
                        sender.send(frame);
                    }
                }
                Some(RtcOut::Input(Input::PeerConnected(p))) => {
                    node.handle(StorageInput::PeerConnected(p), now());
                }
                Some(RtcOut::Input(Input::PeerDisconnected(p))) => {
                    node.handle(StorageInput::PeerDisconnected(p), now());
                }
                Some(RtcOut::Input(Input::Frame { peer, bytes })) => {
                    let t = std::time::Instant::now();
                    stats.since.get_or_insert(t);
                    stats.frames += 1;
                    stats.frame_bytes += bytes.len() as u64;
                    node.handle(StorageInput::Frame { peer, bytes }, now());
                    stats.handle += t.elapsed();
                }
                Some(RtcOut::Input(_)) => {}
                None => break Err(anyhow!("the WebRTC driver stopped")),
            },
            () = tokio::time::sleep(deadline) => node.handle(StorageInput::Tick, now()),
            () = tokio::time::sleep(flush_in) => {
                let t = std::time::Instant::now();
                if let Err(e) = records.flush(&disk) {
                    tracing::warn!("storage node: saving progress failed: {e:#}");
                }
                stats.flush += t.elapsed();
                stats.flushes += 1;
            }
        }
    };
    if let Err(e) = records.flush(&disk) {
        tracing::warn!("storage node: saving progress failed: {e:#}");
    }
    rtc.close_all();
    server.abort();
    result
}

/// The next event of the signaling session; never, while there is none.
async fn next_event(signal: &mut Option<Session>) -> SignalEvent {
    match signal {
        Some((_, events)) => events
            .recv()
            .await
            .unwrap_or_else(|| SignalEvent::Closed("the session ended".into())),
        None => std::future::pending().await,
    }
}

/// Signs in again after `delay`, in the background; the result comes on `to`.
fn reconnect(
    config: NodeConfig,
    seed: [u8; 32],
    delay: Duration,
    to: mpsc::UnboundedSender<Result<Session>>,
) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let result = sign_in(&config, seed, false).await.map(|(_, s)| s);
        let _ = to.send(result);
    });
}

/// Records of files in transfer, saved at most every [`RECORD_EVERY`] (a chunk is on disk
/// before any record that counts it): after a crash a transfer goes on from the last saved
/// record, fetching again the chunks written after it.
#[derive(Default)]
struct Records {
    pending: HashMap<AttachmentId, KeptFile>,
    since: Option<tokio::time::Instant>,
}

/// How long a transfer's progress may go unsaved.
const RECORD_EVERY: Duration = Duration::from_millis(500);

impl Records {
    fn next_flush(&self) -> Duration {
        match self.since {
            Some(t) => (t + RECORD_EVERY).saturating_duration_since(tokio::time::Instant::now()),
            None => Duration::from_secs(3600),
        }
    }

    fn flush(&mut self, disk: &disk::Disk) -> Result<()> {
        self.since = None;
        for (id, file) in self.pending.drain() {
            disk.sync_chunks(id)?;
            disk.put_file(&file)?;
        }
        Ok(())
    }
}

/// Where the node's loop spends its time while frames arrive, for finding what limits a
/// transfer: logged at debug level (`RUST_LOG=peermail_relay::storage_node=debug`; the
/// `storage_node_transfer` bench reads it) every [`STATS_EVERY`] from the first frame on, and
/// when a file is whole, then reset. `handle`: the state machine on received frames
/// (decoding, the chunk's SHA-256); `outputs`: carrying out its outputs (including
/// `put_chunk`, the positional writes, and records saved at once); `flush`: progress saved
/// every [`RECORD_EVERY`] (chunks synced first); the rest of the wall time the loop waited
/// for something to do.
#[derive(Default)]
struct LoopStats {
    since: Option<std::time::Instant>,
    frames: u64,
    frame_bytes: u64,
    handle: Duration,
    outputs: Duration,
    put_chunk: Duration,
    /// Records saved at once (a new or finished file), within `outputs`.
    flush_now: Duration,
    flush: Duration,
    flushes: u32,
    /// A file is whole: log now.
    force: bool,
}

/// How often [`LoopStats`] are logged.
const STATS_EVERY: Duration = Duration::from_secs(2);

impl LoopStats {
    fn log_if_due(&mut self) {
        if self.frames == 0 || !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let wall = self.since.map(|t| t.elapsed()).unwrap_or_default();
        if wall < STATS_EVERY && !self.force {
            return;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            "storage node loop: {} frames, {:.1} MB in {:.0} ms: handle {:.0} ms, outputs {:.0} ms \
             (put_chunk {:.0} ms, records at once {:.0} ms), flush {:.0} ms ({} flushes), \
             waiting {:.0} ms",
            self.frames,
            self.frame_bytes as f64 / 1e6,
            ms(wall),
            ms(self.handle),
            ms(self.outputs),
            ms(self.put_chunk),
            ms(self.flush_now),
            ms(self.flush),
            self.flushes,
            ms(wall.saturating_sub(self.handle + self.outputs + self.flush)),
        );
        // The next window starts with the next frame.
        *self = LoopStats::default();
    }
}

/// What `execute` works with.
struct Ctx<'a> {
    node_inputs: &'a mut VecDeque<StorageInput>,
    /// The signaling session, while there is one.
    sender: Option<&'a SignalSender>,
    rtc: &'a Arc<Rtc>,
    disk: &'a disk::Disk,
    records: &'a mut Records,
    serve: &'a mpsc::UnboundedSender<ServeJob>,
    generations: &'a Generations,
    files: &'a StorageNode,
    stats: &'a mut LoopStats,
}

async fn execute(out: StorageOutput, cx: &mut Ctx<'_>) {
    let stored = |attachment, chunk, result: Result<()>| StorageInput::Stored {
        attachment,
        chunk,
        result: result.map_err(|e| format!("{e:#}")),
    };
    match out {
        StorageOutput::ToServer(frame) => {
            // Without a session the frame is dropped; the node asks again once signed in.
            if let Some(sender) = cx.sender {
                sender.send(frame);
            }
        }
        StorageOutput::Connect(peer) => cx.rtc.connect(peer),
        StorageOutput::ToPeer { peer, bytes } => {
            cx.rtc.send(&peer, &bytes).await;
        }
        StorageOutput::PutChunk {
            attachment,
            index,
            data,
        } => {
            let t = std::time::Instant::now();
            let result = cx.disk.put_chunk(attachment, index, &data);
            cx.stats.put_chunk += t.elapsed();
            cx.node_inputs
                .push_back(stored(attachment, Some(index), result));
        }
        StorageOutput::PutList { attachment, hashes } => {
            let result = cx.disk.put_list(attachment, &hashes);
            cx.node_inputs.push_back(stored(attachment, None, result));
        }
        StorageOutput::PutFile(file) => {
            let id = file.id();
            // A new, finished or acknowledged file is saved at once; progress in between
            // with the next flush.
            let now_please = file.is_complete() || file.progress.chunks_held() == 0;
            cx.records.pending.insert(id, file);
            let result = if now_please {
                let t = std::time::Instant::now();
                let r = cx.records.flush(cx.disk);
                cx.stats.flush_now += t.elapsed();
                r
            } else {
                cx.records
                    .since
                    .get_or_insert_with(tokio::time::Instant::now);
                Ok(())
            };
            cx.node_inputs.push_back(stored(id, None, result));
        }
        StorageOutput::Serve {
            peer,
            attachment,
            request,
        } => {
            let Some(size) = cx
                .files
                .files()
                .find(|f| f.id() == attachment)
                .map(|f| f.progress.size())
            else {
                return;
            };
            let generation = lock(cx.generations).get(&peer).copied().unwrap_or(0);
            let _ = cx.serve.send(ServeJob {
                peer,
                attachment,
                size,
                request,
                generation,
            });
        }
        StorageOutput::StopServing { peer, .. } => {
            *lock(cx.generations).entry(peer).or_default() += 1;
        }
        StorageOutput::DeleteFile(attachment) => {
            // Progress not saved yet must not bring the record back.
            cx.records.pending.remove(&attachment);
            let result = cx.disk.delete(attachment);
            cx.node_inputs.push_back(StorageInput::Deleted {
                attachment,
                result: result.map_err(|e| format!("{e:#}")),
            });
        }
        StorageOutput::Event(StorageEvent::FileDropped(id)) => {
            println!("dropped {} (its owner deleted the mail)", id.to_hex());
            let _ = std::io::stdout().flush();
        }
        StorageOutput::Event(StorageEvent::FileComplete(id)) => {
            cx.stats.force = true;
            if let Some(f) = cx.files.files().find(|f| f.id() == id) {
                println!(
                    "kept {} ({} bytes) from {}",
                    id.to_hex(),
                    f.progress.size(),
                    f.from
                );
                let _ = std::io::stdout().flush();
            }
        }
        StorageOutput::Event(e) => tracing::info!("storage node: {e:?}"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves the owner's requests one after the other, pacing on the channel's buffer.
async fn serve_jobs(
    mut jobs: mpsc::UnboundedReceiver<ServeJob>,
    rtc: Arc<Rtc>,
    disk: Arc<disk::Disk>,
    generations: Generations,
) {
    while let Some(job) = jobs.recv().await {
        let started = tokio::time::Instant::now();
        let what = format!("{:?} of {} for {}", job.request, job.attachment, job.peer);
        let result = serve_one(&rtc, &disk, &generations, job).await;
        tracing::debug!(took = ?started.elapsed(), "served {what}");
        if let Err(e) = result {
            tracing::warn!("storage node: serving failed: {e:#}");
        }
    }
}

async fn serve_one(
    rtc: &Rtc,
    disk: &disk::Disk,
    generations: &Generations,
    job: ServeJob,
) -> Result<()> {
    let ServeJob {
        peer,
        attachment,
        size,
        request,
        generation,
    } = job;
    let send = |frame: PeerFrame| {
        let bytes = frame.encode();
        let peer = &peer;
        async move {
            match bytes {
                Ok(bytes) => rtc.send(peer, &bytes).await,
                Err(_) => false,
            }
        }
    };
    match request {
        ServeRequest::ChunkList { start } => {
            let frame = match disk.list(attachment)? {
                Some(list) => PeerFrame::ChunkList {
                    attachment,
                    start,
                    hashes: hash_page(&list, start).to_vec(),
                },
                None => PeerFrame::TransferRefused {
                    attachment,
                    reason: "this storage node no longer has the file".into(),
                },
            };
            send(frame).await;
        }
        ServeRequest::Chunks { ranges } => {
            let chunks = disk.chunks(attachment)?;
            for index in ranges.into_iter().flat_map(|(a, b)| a..b) {
                if lock(generations).get(&peer).copied().unwrap_or(0) != generation {
                    return Ok(());
                }
                match rtc.writable(&peer).await {
                    None => return Ok(()),
                    Some(0) => {}
                    Some(n) => tracing::debug!(%peer, index, waits = n, "serving waited to drain"),
                }
                let data = chunks.read(size, index)?;
                if !send(PeerFrame::Chunk {
                    attachment,
                    index,
                    data,
                })
                .await
                {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The node's signing key seed: read from `node-key` (hex), or made and written.
fn load_or_create_seed(dir: &Path) -> Result<[u8; 32]> {
    let path = dir.join("node-key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| Fatal(format!("{} is not a node key", path.display())))?;
            Ok(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).map_err(|e| anyhow!("no random numbers: {e}"))?;
            disk::write_atomically(&path, hex::encode(seed).as_bytes())?;
            Ok(seed)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn read_owner(path: &Path) -> Result<Option<Address>> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| Fatal(format!("{}: {e}", path.display())).into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
