//! The native driver of a [`Node`]: what `web-client/src/runtime.rs` does in the browser,
//! on tokio.
//!
//! [`NativeNode::start`] runs the node on a thread of its own (a current-thread tokio
//! runtime with a `LocalSet`: the node and its store — [`NativeStore`], in memory or a
//! [`FileStore`] directory (`NativeOptions::data_dir`) — are not `Send`, like the
//! browser's). One loop owns the node and feeds it, in the order they happen:
//! - the relay's frames (`Signal` frames go to the WebRTC driver, [`Rtc`]; the rest to the
//!   node), and `SignalingConnected` / `SignalingDisconnected` as the session comes and goes
//!   (it reconnects with backoff, and the node signs the new session in — unless the relay
//!   said another session of the account replaced this one: then it closes its data
//!   channels and stays off, like a replaced browser tab);
//! - what the WebRTC driver reports (`PeerConnected`, `PeerDisconnected`, `Frame`);
//! - `Tick` at [`Node::poll_timeout`] (a tokio timer);
//! - commands and queries from the [`NativeNode`] handle.
//!
//! The node's outputs are executed in order by the same loop: `ToServer` on the signaling
//! socket, `Connect` and `ToPeer` by the WebRTC driver, `Store` against the store (answered
//! with `Input::Stored`), `Upload` (the file's announcement and chunks read from the store,
//! sent to the relay), `CheckFile` (the stored chunks decrypted in order and the file's hash
//! compared, answered with `Input::FileChecked`), `Event`s to a broadcast channel. `Serve`
//! jobs (chunk lists and chunks a peer asked for) run on a task of their own, one after the
//! other, pacing on the channel's buffer ([`Rtc::writable`]); `StopServing` drops what is
//! queued for a peer and stops the running job.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use base64::Engine as _;
use peermail_core::attach::{AttachmentId, AttachmentRef, FileCheck, FileSealer};
use peermail_core::identity::Identity;
use peermail_core::node::{FileCheckFailure, ServeRequest, UploadRequest};
use peermail_core::store::{InboxRecord, MailStore, MemoryStore, OutgoingMail, StoreWrite};
use peermail_core::wire::peer::PeerFrame;
use peermail_core::wire::signal::{ClientFrame, ErrorCode, ServerFrame, DEFAULT_INLINE_LIMIT};
use peermail_core::{Address, Command, Config, Draft, Event, Input, MessageId, Node, Output};
use std::path::PathBuf;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::rtc::{Rtc, RtcOut};
use super::signal::{SignalClient, SignalEvent, SignalSender};
use super::store::{FileStore, NativeStore};

/// Shortest delay of the tick timer, so a deadline the node cannot clear yet never spins.
const MIN_TICK: Duration = Duration::from_millis(250);
/// Longest wait between two attempts to reach the relay again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How to start a [`NativeNode`].
#[derive(Debug, Clone)]
pub struct NativeOptions {
    /// The relay, `http://HOST:PORT`.
    pub relay_url: String,
    /// The account's keys; its address must be at the relay's domain.
    pub identity: Identity,
    /// Create the account (`Register`) instead of signing in to an existing one.
    pub register: bool,
    /// Local UDP addresses for WebRTC (default: every non-loopback interface).
    pub udp_addrs: Vec<String>,
    /// The node's timing policy.
    pub config: Config,
    /// Upper bound for connecting and signing in.
    pub wait: Duration,
    /// Keep the mailbox and attachments in this directory ([`FileStore`]); `None` keeps
    /// them in memory.
    pub data_dir: Option<PathBuf>,
}

impl NativeOptions {
    pub fn new(relay_url: impl Into<String>, identity: Identity, register: bool) -> Self {
        NativeOptions {
            relay_url: relay_url.into(),
            identity,
            register,
            udp_addrs: vec!["0.0.0.0:0".to_string()],
            config: Config::default(),
            wait: Duration::from_secs(30),
            data_dir: None,
        }
    }
}

/// What went over data channels, per peer (for tests and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Times serving waited for the channel's buffer to drain (its buffered-amount-low
    /// event) before sending more.
    pub drain_waits: u64,
}

type Query = Box<dyn FnOnce(&Node, &NativeStore, &Rtc) + Send>;

enum Request {
    Input(Input, Option<oneshot::Sender<Vec<Output>>>),
    Query(Query),
    Stop,
}

/// A running native node (see the module docs). Dropping it stops the node.
pub struct NativeNode {
    address: Address,
    requests: mpsc::UnboundedSender<Request>,
    events: broadcast::Sender<Event>,
    traffic: Arc<Mutex<HashMap<Address, PeerTraffic>>>,
    /// The relay's inline limit, as its latest challenge said.
    inline_limit: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NativeNode {
    /// Starts the node: connects to the relay, registers or signs the account in (failing
    /// if the relay refuses), then runs until stopped.
    pub async fn start(options: NativeOptions) -> Result<NativeNode> {
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let (ev_tx, _) = broadcast::channel(1024);
        let traffic = Arc::new(Mutex::new(HashMap::new()));
        let inline_limit = Arc::new(AtomicU64::new(DEFAULT_INLINE_LIMIT));
        let (started_tx, started_rx) = oneshot::channel();
        let shared = Shared {
            events: ev_tx.clone(),
            traffic: traffic.clone(),
            inline_limit: inline_limit.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("peermail-native".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(anyhow!("tokio runtime: {e}")));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, run(options, req_rx, shared, started_tx));
            })
            .context("starting the node's thread")?;
        let address = started_rx
            .await
            .map_err(|_| anyhow!("the node's thread ended before it started"))??;
        Ok(NativeNode {
            address,
            requests: req_tx,
            events: ev_tx,
            traffic,
            inline_limit,
            thread: Some(thread),
        })
    }

    /// The account's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Events of the node from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Hands the node a command.
    pub fn command(&self, command: Command) {
        let _ = self
            .requests
            .send(Request::Input(Input::Command(command), None));
    }

    /// Sends a draft; the new mail's Message-ID, or why the node refused it.
    pub async fn send(&self, draft: Draft) -> Result<MessageId> {
        let (tx, rx) = oneshot::channel();
        let command = Command::Send {
            draft,
            random: random_bytes(),
        };
        self.requests
            .send(Request::Input(Input::Command(command), Some(tx)))
            .map_err(|_| anyhow!("the node has stopped"))?;
        let outputs = rx.await.map_err(|_| anyhow!("the node has stopped"))?;
        let mut id = None;
        for o in outputs {
            match o {
                Output::Event(Event::SendRejected { reason }) => {
                    return Err(anyhow!("the node refused the mail: {reason}"))
                }
                Output::Event(Event::OutgoingChanged(m)) if id.is_none() => id = Some(m),
                _ => {}
            }
        }
        id.ok_or_else(|| anyhow!("the mail was not accepted"))
    }

    /// Runs `f` on the node, its store and its WebRTC driver (on the node's thread).
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Node, &NativeStore, &Rtc) -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        let query: Query = Box::new(move |node, store, rtc| {
            let _ = tx.send(f(node, store, rtc));
        });
        self.requests
            .send(Request::Query(query))
            .map_err(|_| anyhow!("the node has stopped"))?;
        rx.await.map_err(|_| anyhow!("the node has stopped"))
    }

    /// Received mails, newest first.
    pub async fn inbox(&self) -> Result<Vec<InboxRecord>> {
        self.query(|n, _, _| n.inbox().into_iter().cloned().collect())
            .await
    }

    /// Outgoing mails, newest first.
    pub async fn outgoing(&self) -> Result<Vec<OutgoingMail>> {
        self.query(|n, _, _| n.outgoing().into_iter().cloned().collect())
            .await
    }

    /// The whole decrypted file of an attachment this node holds, checked against the
    /// mail's hash.
    pub async fn attachment(&self, att: AttachmentRef) -> Result<Vec<u8>> {
        self.query(move |_, store, _| {
            let mut out = Vec::with_capacity(att.size as usize);
            let mut check = FileCheck::new(&att);
            for i in 0..att.chunk_count() {
                let data = store
                    .chunk(att.id, i)
                    .ok_or_else(|| anyhow!("chunk {i} of {} is not stored", att.name))?;
                out.extend(
                    check
                        .push(i, &data)
                        .map_err(|e| anyhow!("chunk {i}: {e}"))?,
                );
            }
            check.finish().map_err(|e| anyhow!("{}: {e}", att.name))?;
            Ok::<_, anyhow::Error>(out)
        })
        .await?
    }

    /// Seals a file as an attachment of this node (encrypted in chunks with a fresh key,
    /// stored with its chunk list), for a [`Draft`]'s `attachments`. Files up to the relay's
    /// inline limit are marked to travel with the mail to offline recipients.
    pub async fn attach(&self, name: &str, mime: &str, bytes: Vec<u8>) -> Result<AttachmentRef> {
        let inline = bytes.len() as u64 <= self.inline_limit.load(Ordering::Relaxed);
        let id = AttachmentId(random_bytes());
        let mut sealer = FileSealer::new(id, random_bytes(), name, mime, bytes.len() as u64)
            .map_err(|e| anyhow!("attaching {name}: {e}"))?;
        self.query(move |_, store, _| {
            while let Some(range) = sealer.next_range() {
                let plain = &bytes[range.start as usize..range.end as usize];
                let chunk = sealer.push(plain).map_err(|e| anyhow!("{e}"))?;
                store.apply_now(StoreWrite::PutChunk {
                    attachment: id,
                    index: chunk.index,
                    data: chunk.data,
                })?;
            }
            let (att, hashes) = sealer.finish(inline).map_err(|e| anyhow!("{e}"))?;
            store.apply_now(StoreWrite::PutChunkList {
                attachment: att.id,
                hashes,
            })?;
            Ok::<_, anyhow::Error>(att)
        })
        .await?
    }

    /// What went over data channels with `peer` so far.
    pub fn traffic(&self, peer: &Address) -> PeerTraffic {
        lock(&self.traffic).get(peer).cloned().unwrap_or_default()
    }

    /// Stops the node: its connections are closed (peers are told) and its thread ends.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.requests.send(Request::Stop);
        if let Some(t) = self.thread.take() {
            // The loop ends at once on `Stop`; joining keeps the thread from outliving us.
            let _ = t.join();
        }
    }
}

impl Drop for NativeNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `N` bytes from the OS generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the OS random generator works");
    b
}

/// A chunk request of a peer, waiting to be served.
struct ServeJob {
    peer: Address,
    attachment: AttachmentId,
    request: ServeRequest,
    generation: u64,
}

/// What the serving task shares with the loop.
#[derive(Default)]
struct Serving {
    queue: VecDeque<ServeJob>,
    running: bool,
    /// Bumped by `StopServing` per peer: a job started under an older value stops.
    stop_gen: HashMap<Address, u64>,
}

/// What the loop shares with the handle.
struct Shared {
    events: broadcast::Sender<Event>,
    traffic: Arc<Mutex<HashMap<Address, PeerTraffic>>>,
    inline_limit: Arc<AtomicU64>,
}

/// The loop's state.
struct Driver {
    node: Node,
    store: Rc<NativeStore>,
    rtc: Arc<Rtc>,
    signal: Option<SignalSender>,
    /// Another session signed in as this account: this node stops talking to the relay and
    /// to peers (like a browser tab that was replaced) until it is started again.
    replaced: bool,
    queue: VecDeque<Output>,
    events: broadcast::Sender<Event>,
    traffic: Arc<Mutex<HashMap<Address, PeerTraffic>>>,
    serving: Rc<RefCell<Serving>>,
}

async fn run(
    options: NativeOptions,
    mut requests: mpsc::UnboundedReceiver<Request>,
    shared: Shared,
    started: oneshot::Sender<Result<Address>>,
) {
    // Sign in first: a refusal is the caller's error.
    let signed_in = async {
        let mut client = SignalClient::connect(&options.relay_url, options.wait).await?;
        let (address, early) = if options.register {
            client.register(&options.identity).await?
        } else {
            client.auth(&options.identity).await?
        };
        Ok::<_, anyhow::Error>((client, address, early))
    }
    .await;
    let (client, address, early) = match signed_in {
        Ok((client, address, early)) => {
            if let Some(limit) = client.inline_limit {
                shared.inline_limit.store(limit, Ordering::Relaxed);
            }
            (client, address, early)
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let store = match &options.data_dir {
        None => NativeStore::Memory(MemoryStore::new()),
        Some(dir) => match FileStore::open(dir) {
            Ok(f) => NativeStore::File(f),
            Err(e) => {
                let _ = started.send(Err(anyhow!("the store: {e}")));
                return;
            }
        },
    };
    let store = Rc::new(store);
    let snapshot = match store.save_identity(&options.identity).await {
        Ok(()) => store.load().await,
        Err(e) => Err(e),
    };
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => {
            let _ = started.send(Err(anyhow!("the store: {e}")));
            return;
        }
    };
    let node = Node::new(
        options.identity.clone(),
        options.config.clone(),
        snapshot,
        now(),
        random_bytes(),
    );
    let (rtc_tx, mut rtc_rx) = mpsc::unbounded_channel();
    let rtc = Rtc::new(rtc_tx, options.udp_addrs.clone());
    let (signal, signal_events) = client.into_parts();
    let mut signal_events = Some(signal_events);
    let mut d = Driver {
        node,
        store,
        rtc: rtc.clone(),
        signal: Some(signal),
        replaced: false,
        queue: VecDeque::new(),
        events: shared.events.clone(),
        traffic: shared.traffic.clone(),
        serving: Rc::new(RefCell::new(Serving::default())),
    };
    d.input(Input::SignalingConnected);
    d.input(Input::Server(if options.register {
        ServerFrame::Registered {
            address: address.clone(),
        }
    } else {
        ServerFrame::Authenticated {
            address: address.clone(),
        }
    }));
    for f in early {
        d.on_frame(f);
    }
    d.pump().await;
    let _ = started.send(Ok(address));

    let (reconnected_tx, mut reconnected) = mpsc::unbounded_channel::<SignalClient>();
    // The node's deadline the timer is armed for, and when it fires. Re-armed only when the
    // deadline changes: a steady stream of inputs must not keep postponing the tick.
    let mut timer: Option<(u64, tokio::time::Instant)> = None;
    loop {
        match (d.node.poll_timeout(), timer) {
            (None, _) => timer = None,
            (Some(t), Some((armed, _))) if armed == t => {}
            (Some(t), _) => {
                let delay = Duration::from_millis(t.saturating_sub(now())).max(MIN_TICK);
                timer = Some((t, tokio::time::Instant::now() + delay));
            }
        }
        let fire_at = timer.map(|(_, at)| at);
        tokio::select! {
            req = requests.recv() => match req {
                None | Some(Request::Stop) => break,
                Some(Request::Input(input, reply)) => {
                    let outputs = d.input(input);
                    if let Some(reply) = reply {
                        let _ = reply.send(outputs);
                    }
                }
                Some(Request::Query(f)) => f(&d.node, &d.store, &d.rtc),
            },
            ev = next_signal(&mut signal_events) => {
                let ended = match ev {
                    Some(SignalEvent::Frame(f)) => {
                        d.on_frame(f);
                        None
                    }
                    Some(SignalEvent::Closed(why)) => Some(why),
                    None => Some("the session ended".to_string()),
                };
                if let Some(why) = ended {
                    signal_events = None;
                    d.signal = None;
                    d.input(Input::SignalingDisconnected);
                    if d.replaced {
                        tracing::info!("native: signaling ended ({why}); replaced, not reconnecting");
                    } else {
                        tracing::info!("native: signaling ended ({why}); reconnecting");
                        tokio::task::spawn_local(reconnect(
                            options.relay_url.clone(),
                            options.wait,
                            reconnected_tx.clone(),
                        ));
                    }
                }
            },
            Some(client) = reconnected.recv() => {
                let (nonce, domain, inline_limit) =
                    (client.nonce.clone(), client.domain.clone(), client.inline_limit);
                if let Some(limit) = inline_limit {
                    shared.inline_limit.store(limit, Ordering::Relaxed);
                }
                let (signal, evs) = client.into_parts();
                d.signal = Some(signal);
                signal_events = Some(evs);
                d.input(Input::SignalingConnected);
                // The node answers the challenge with its own `Auth`.
                d.input(Input::Server(ServerFrame::Challenge { nonce, domain, inline_limit }));
            },
            Some(out) = rtc_rx.recv() => match out {
                RtcOut::Signal(frame) => d.send_server(frame),
                RtcOut::Input(input) => {
                    if let Input::Frame { peer, bytes } = &input {
                        let mut t = lock(&d.traffic);
                        let t = t.entry(peer.clone()).or_default();
                        t.frames_in += 1;
                        t.bytes_in += bytes.len() as u64;
                    }
                    d.input(input);
                }
            },
            _ = tokio::time::sleep_until(fire_at.unwrap_or_else(tokio::time::Instant::now)),
                if fire_at.is_some() => {
                // This timer has fired: the next deadline arms a new one (at least
                // `MIN_TICK` away, so a deadline the node cannot clear yet never spins).
                timer = None;
                d.input(Input::Tick);
            }
        }
        d.pump().await;
    }
    rtc.close_all();
    // Lets the closing tasks send their `Bye`s and close the connections.
    for out in std::iter::from_fn(|| rtc_rx.try_recv().ok()) {
        if let RtcOut::Signal(frame) = out {
            d.send_server(frame);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The next event of the signaling session, if there is one (pending forever otherwise).
async fn next_signal(
    events: &mut Option<mpsc::UnboundedReceiver<SignalEvent>>,
) -> Option<SignalEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Connects again, with backoff, and hands the new session to the loop.
async fn reconnect(relay_url: String, wait: Duration, to: mpsc::UnboundedSender<SignalClient>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::time::sleep(backoff).await;
        match SignalClient::connect(&relay_url, wait).await {
            Ok(client) => {
                let _ = to.send(client);
                return;
            }
            Err(e) => {
                tracing::info!("native: the relay is not reachable yet: {e:#}");
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if to.is_closed() {
            return;
        }
    }
}

impl Driver {
    /// The node handles `input`; its outputs are queued for [`Driver::pump`] and returned.
    fn input(&mut self, input: Input) -> Vec<Output> {
        self.node.handle(input, now());
        let produced: Vec<Output> = std::iter::from_fn(|| self.node.poll_output()).collect();
        self.queue.extend(produced.iter().cloned());
        produced
    }

    /// Executes the queued outputs in order (and those they cause).
    async fn pump(&mut self) {
        while let Some(out) = self.queue.pop_front() {
            self.execute(out).await;
        }
    }

    fn send_server(&self, frame: ClientFrame) {
        match &self.signal {
            Some(s) if s.send(frame) => {}
            _ => tracing::debug!("native: no signaling session; a frame is dropped"),
        }
    }

    fn on_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Signal {
                from,
                conn,
                payload,
            } => {
                if !self.replaced {
                    self.rtc.on_signal(from, conn, payload)
                }
            }
            ServerFrame::Error {
                code: ErrorCode::SessionReplaced,
                ..
            } => {
                tracing::warn!("native: another session signed in as this account; stopping");
                self.replaced = true;
                // Its data channels would otherwise keep receiving mail behind the other
                // session's back.
                self.rtc.close_all();
                self.input(Input::Server(frame));
            }
            frame => {
                self.input(Input::Server(frame));
            }
        }
    }

    async fn execute(&mut self, out: Output) {
        match out {
            Output::ToServer(frame) => self.send_server(frame),
            // A replaced node makes no new connections; the node is told the attempt failed.
            Output::Connect(peer) if self.replaced => {
                self.input(Input::PeerDisconnected(peer));
            }
            Output::Connect(peer) => self.rtc.connect(peer),
            Output::ToPeer { peer, bytes } => {
                if self.rtc.send(&peer, &bytes).await {
                    count_out(&self.traffic, &peer, bytes.len());
                } else {
                    tracing::debug!("native: no open channel to {peer}; the node will retry");
                }
            }
            Output::Store { op, write } => {
                let result = self.store.apply(write).await.map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::warn!("native: storing failed: {e}");
                }
                self.input(Input::Stored { op, result });
            }
            Output::Serve {
                peer,
                attachment,
                request,
            } => {
                {
                    let mut s = self.serving.borrow_mut();
                    let generation = s.stop_gen.get(&peer).copied().unwrap_or(0);
                    s.queue.push_back(ServeJob {
                        peer,
                        attachment,
                        request,
                        generation,
                    });
                }
                self.start_serving();
            }
            Output::StopServing { peer, attachment } => {
                let mut s = self.serving.borrow_mut();
                s.queue
                    .retain(|j| j.peer != peer || attachment.is_some_and(|a| a != j.attachment));
                *s.stop_gen.entry(peer).or_default() += 1;
            }
            Output::Upload {
                to,
                message_id,
                attachment,
                request,
            } => self.upload(to, message_id, attachment, request),
            Output::CheckFile(attachment) => {
                let result = self.check_file(attachment);
                self.input(Input::FileChecked { attachment, result });
            }
            Output::Event(e) => {
                match &e {
                    Event::ServerError { code, message } => {
                        tracing::info!("native: the relay says {code:?}: {message}")
                    }
                    Event::PeerProtocolError { peer, reason } => {
                        tracing::info!("native: peer {peer}: {reason}")
                    }
                    Event::StoreFailed { reason } => tracing::warn!("native: {reason}"),
                    Event::Rejected {
                        from,
                        message_id,
                        reason,
                    } => tracing::warn!("native: rejected {message_id} from {from}: {reason}"),
                    _ => {}
                }
                let _ = self.events.send(e);
            }
        }
    }

    /// The whole-file check of a received attachment, one chunk at a time.
    fn check_file(&self, id: AttachmentId) -> Result<(), FileCheckFailure> {
        let att = self
            .node
            .download(&id)
            .map(|d| d.attachment)
            .ok_or(FileCheckFailure::ChunkMissing(0))?;
        let mut check = FileCheck::new(&att);
        for i in 0..att.chunk_count() {
            let data = self
                .store
                .chunk(att.id, i)
                .ok_or(FileCheckFailure::ChunkMissing(i))?;
            check.push(i, &data).map_err(FileCheckFailure::Invalid)?;
        }
        check.finish().map_err(FileCheckFailure::Invalid)
    }

    /// Copies what the node asked of an attachment to the relay, read from the store.
    fn upload(
        &self,
        to: Address,
        message_id: MessageId,
        attachment: AttachmentId,
        request: UploadRequest,
    ) {
        let b64 = base64::engine::general_purpose::STANDARD;
        match request {
            UploadRequest::Announce { size } => {
                if let Some(list) = self.store.chunk_list(attachment) {
                    self.send_server(ClientFrame::DepositFile {
                        to,
                        message_id,
                        attachment,
                        size,
                        hashes: b64.encode(list.concat()),
                    });
                }
            }
            UploadRequest::Chunks { indices } => {
                for index in indices {
                    match self.store.chunk(attachment, index) {
                        Some(data) => self.send_server(ClientFrame::DepositChunk {
                            to: to.clone(),
                            attachment,
                            index,
                            data: b64.encode(data),
                        }),
                        None => {
                            tracing::info!("native: chunk {index} of {attachment} is not here")
                        }
                    }
                }
            }
        }
    }

    /// Starts the serving task unless it runs: it answers chunk requests one after the
    /// other, pacing on the channel's buffer.
    fn start_serving(&self) {
        if std::mem::replace(&mut self.serving.borrow_mut().running, true) {
            return;
        }
        let (serving, store, rtc, traffic) = (
            self.serving.clone(),
            self.store.clone(),
            self.rtc.clone(),
            self.traffic.clone(),
        );
        tokio::task::spawn_local(async move {
            loop {
                let job = serving.borrow_mut().queue.pop_front();
                let Some(job) = job else { break };
                serve(&serving, &store, &rtc, &traffic, job).await;
            }
            serving.borrow_mut().running = false;
        });
    }
}

fn count_out(traffic: &Mutex<HashMap<Address, PeerTraffic>>, peer: &Address, len: usize) {
    let mut t = lock(traffic);
    let t = t.entry(peer.clone()).or_default();
    t.frames_out += 1;
    t.bytes_out += len as u64;
}

/// Serves one chunk request of a peer (see `Output::Serve`).
async fn serve(
    serving: &RefCell<Serving>,
    store: &NativeStore,
    rtc: &Rtc,
    traffic: &Mutex<HashMap<Address, PeerTraffic>>,
    job: ServeJob,
) {
    let ServeJob {
        peer,
        attachment: id,
        request,
        generation,
    } = job;
    let refuse = |reason: String| PeerFrame::TransferRefused {
        attachment: id,
        reason,
    };
    match request {
        ServeRequest::ChunkList { start } => {
            let frame = match store.chunk_list(id) {
                Some(list) => PeerFrame::ChunkList {
                    attachment: id,
                    start,
                    hashes: peermail_core::attach::hash_page(&list, start).to_vec(),
                },
                None => refuse("this node no longer has the file".into()),
            };
            send_frame(rtc, traffic, &peer, frame).await;
        }
        ServeRequest::Chunks { ranges } => {
            for index in ranges.into_iter().flat_map(|(s, e)| s..e) {
                let stopped =
                    serving.borrow().stop_gen.get(&peer).copied().unwrap_or(0) != generation;
                if stopped {
                    return;
                }
                match rtc.writable(&peer).await {
                    None => return,
                    Some(0) => {}
                    Some(n) => {
                        lock(traffic).entry(peer.clone()).or_default().drain_waits += u64::from(n)
                    }
                }
                let frame = match store.chunk(id, index) {
                    Some(data) => PeerFrame::Chunk {
                        attachment: id,
                        index,
                        data,
                    },
                    None => refuse(format!("part {index} of the file is missing here")),
                };
                let refused = matches!(frame, PeerFrame::TransferRefused { .. });
                if !send_frame(rtc, traffic, &peer, frame).await || refused {
                    return;
                }
            }
        }
    }
}

/// Sends one peer frame on the open channel to `peer`; false if it could not be sent.
async fn send_frame(
    rtc: &Rtc,
    traffic: &Mutex<HashMap<Address, PeerTraffic>>,
    peer: &Address,
    frame: PeerFrame,
) -> bool {
    match frame.encode() {
        Ok(bytes) => {
            let sent = rtc.send(peer, &bytes).await;
            if sent {
                count_out(traffic, peer, bytes.len());
            }
            sent
        }
        Err(e) => {
            tracing::warn!("native: cannot encode a frame: {e}");
            false
        }
    }
}
