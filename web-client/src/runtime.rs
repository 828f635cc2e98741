//! The driver around the node: sign-up, the node pump, the timer, and what the UI reads.
//!
//! One [`Runtime`] per page. It owns the [`IdbStore`], the [`Signaling`] socket, the [`Rtc`]
//! connections and, once an identity exists, the [`Node`]. Every input goes through
//! [`Runtime::input`]: the node handles it, its outputs are appended to one ordered queue,
//! and a single task executes that queue in order (`Store` outputs are awaited against
//! IndexedDB and answered with `Input::Stored`). No `RefCell` borrow is held across an
//! `await`, and the UI is told to re-render only when no borrow is held.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};

use peermail_core::address::validate_name;
use peermail_core::attach::{AttachmentId, AttachmentRef, FileCheck, RateMeter};
use peermail_core::groups::Group;
use peermail_core::identity::{register_message, Identity};
use peermail_core::node::{FileCheckFailure, OpId, ServeRequest, UploadRequest};
use peermail_core::store::{DownloadRecord, MailStore, StoreWrite};
use peermail_core::wire::peer::PeerFrame;
use peermail_core::wire::signal::{ClientFrame, ErrorCode, ServerFrame};
use peermail_core::{Address, Command, Config, Draft, Event, Input, MessageId, Node, Output};
use wasm_bindgen_futures::spawn_local;

use crate::held::{Flush, Held, HELD_MAX_CHUNKS, HELD_MS};
use crate::rtc::{Hooks, Rtc};
use crate::signaling::{Signaling, SocketEvent};
use crate::store::IdbStore;
use crate::util::{log, now, random_bytes, signaling_url};

/// The IndexedDB database holding this origin's account.
pub const DB_NAME: &str = "peermail";
/// Most bytes queued on a data channel while serving chunks (4 MiB, less one chunk frame).
const SERVE_HIGH_WATER: u32 = 4 * 1024 * 1024 - 64 * 1024;
/// Serving resumes when the channel's queue drained to this.
const SERVE_LOW_WATER: u32 = 1024 * 1024;
/// Shortest delay of the tick timer, so a deadline the node cannot clear yet never spins.
const MIN_TICK_MS: u64 = 250;
/// The bytes of a decrypted file the page hands the browser at a time when it makes the
/// file's Blob to open or save it ([`Runtime::attachment_blob`]).
pub const BLOB_PART: usize = 4 * 1024 * 1024;

/// Which screen the page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Reading IndexedDB.
    Loading,
    /// No identity yet: choose a name.
    SignUp,
    /// Signed in: the mail client.
    Running,
    /// Storage could not be opened; the text says why.
    Broken(String),
    /// Opening storage waits for something the person can do; the text says what.
    Waiting(String),
}

/// What the storage-node panel shows about pairing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pairing {
    /// A code was sent and not answered yet.
    pub busy: bool,
    /// The relay refused the code; for people.
    pub error: Option<String>,
    /// The node that was just paired.
    pub paired: Option<Address>,
    /// The person asked to unpair the node and is asked to confirm.
    pub confirm_unpair: bool,
    /// The node that was just unpaired.
    pub unpaired: Option<Address>,
}

/// The signaling connection as shown to the person (`#connection-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnStatus {
    Offline,
    Connecting,
    Online,
    /// Another tab took over this account's session; this one stopped.
    Replaced,
}

impl ConnStatus {
    /// The `data-status` value of the UI contract.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnStatus::Offline => "offline",
            ConnStatus::Connecting => "connecting",
            ConnStatus::Online => "online",
            ConnStatus::Replaced => "replaced",
        }
    }
}

/// A sign-up in progress: the chosen name and the freshly generated key seed.
struct SignUp {
    name: String,
    seed: [u8; 32],
    /// The identity sent in `Register`, once a challenge was signed.
    identity: Option<Identity>,
}

/// Everything the page runs on. See the module docs.
pub struct Runtime {
    me: Weak<Runtime>,
    store: RefCell<Option<Rc<IdbStore>>>,
    node: RefCell<Option<Node>>,
    phase: RefCell<Phase>,
    status: Cell<ConnStatus>,
    /// The current session's challenge `(nonce, domain)`, kept while signing up.
    challenge: RefCell<Option<(String, String)>>,
    signup: RefCell<Option<SignUp>>,
    /// The signed-in account's keys (the node has its own copy), for re-registering.
    identity: RefCell<Option<Identity>>,
    /// This session already tried to register the account again (see `reregister`).
    reregistered: Cell<bool>,
    signup_error: RefCell<Option<String>>,
    /// The latest notice for the person (`#notice`).
    notice: RefCell<Option<String>>,
    /// The storage-node panel: what the last pairing attempt said (error or success).
    pairing: RefCell<Pairing>,
    /// Node outputs waiting to be executed, in order.
    queue: RefCell<VecDeque<Output>>,
    /// The executing task is running.
    pumping: Cell<bool>,
    /// Received chunks waiting for the rest of their segment ([`crate::held`]).
    held: RefCell<Held>,
    /// The held-chunks timer fired: the executing task writes everything held.
    flush_due: Cell<bool>,
    /// When the held-chunks timer fires, if armed.
    held_due: Cell<Option<u64>>,
    held_timer: RefCell<Option<gloo_timers::callback::Timeout>>,
    /// Inputs from data channels, in arrival order, with the pending SHA-256 of each chunk
    /// (see `peer_input`).
    incoming: RefCell<VecDeque<(Input, Option<wasm_bindgen_futures::JsFuture>)>>,
    /// The task handing `incoming` to the node is running.
    incoming_running: Cell<bool>,
    /// The browser's native crypto (`crypto.subtle`), where the page has it (secure
    /// contexts: https and localhost).
    subtle: Option<web_sys::SubtleCrypto>,
    /// The single tick timer, re-armed after every input.
    timer: RefCell<Option<gloo_timers::callback::Timeout>>,
    /// The node deadline the timer is armed for.
    timer_deadline: Cell<Option<u64>>,
    signaling: RefCell<Option<Rc<Signaling>>>,
    rtc: RefCell<Option<Rc<Rtc>>>,
    /// Asks the UI to re-render.
    on_change: RefCell<Option<Rc<dyn Fn()>>>,
    /// Mail received since the page went out of sight, for the desktop notification
    /// ([`crate::notify`]); emptied when the page is seen again.
    unseen: RefCell<Vec<crate::notify::Unseen>>,
    /// The task showing the notification is running ([`Runtime::announce`]).
    announcing: Cell<bool>,
    /// Bumped each time the page comes back into sight: a notification shown across one is
    /// taken down.
    seen: Cell<u64>,
    /// Chunk requests of peers waiting to be served, in order.
    serving: RefCell<VecDeque<(Address, AttachmentId, ServeRequest, u64)>>,
    /// The serving task is running.
    serve_running: Cell<bool>,
    /// Bumped by `StopServing` per peer: a job started under an older value stops.
    stop_gen: RefCell<HashMap<Address, u64>>,
    /// What this page sent of which attachment to whom (this session), for the sender's
    /// progress bars.
    sending: RefCell<HashMap<(Address, AttachmentId), Sending>>,
    /// When the UI was last told of sending progress.
    sending_shown_at: Cell<u64>,
    /// The relay's inline limit (largest attachment it keeps for offline recipients).
    inline_limit: Cell<u64>,
}

/// Chunks of one attachment sent to one peer.
#[derive(Debug, Default)]
struct Sending {
    /// The attachment's plaintext size.
    size: u64,
    sent: std::collections::BTreeSet<u32>,
    bytes: u64,
    rate: RateMeter,
    last: u64,
}

/// The sender's view of one attachment going to one recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct SendingView {
    pub to: Address,
    /// Plaintext bytes of the distinct chunks sent.
    pub bytes: u64,
    pub bytes_per_sec: Option<f64>,
    pub eta_ms: Option<u64>,
    /// Something was sent in the last few seconds.
    pub active: bool,
}

impl Runtime {
    pub fn new() -> Rc<Self> {
        let rt = Rc::new_cyclic(|me: &Weak<Runtime>| Runtime {
            me: me.clone(),
            store: RefCell::new(None),
            node: RefCell::new(None),
            phase: RefCell::new(Phase::Loading),
            status: Cell::new(ConnStatus::Offline),
            challenge: RefCell::new(None),
            signup: RefCell::new(None),
            identity: RefCell::new(None),
            reregistered: Cell::new(false),
            signup_error: RefCell::new(None),
            notice: RefCell::new(None),
            pairing: RefCell::new(Pairing::default()),
            queue: RefCell::new(VecDeque::new()),
            pumping: Cell::new(false),
            held: RefCell::new(Held::default()),
            flush_due: Cell::new(false),
            held_due: Cell::new(None),
            held_timer: RefCell::new(None),
            incoming: RefCell::new(VecDeque::new()),
            incoming_running: Cell::new(false),
            subtle: native_crypto(),
            timer: RefCell::new(None),
            timer_deadline: Cell::new(None),
            signaling: RefCell::new(None),
            rtc: RefCell::new(None),
            on_change: RefCell::new(None),
            unseen: RefCell::new(Vec::new()),
            announcing: Cell::new(false),
            seen: Cell::new(0),
            serving: RefCell::new(VecDeque::new()),
            serve_running: Cell::new(false),
            stop_gen: RefCell::new(HashMap::new()),
            sending: RefCell::new(HashMap::new()),
            sending_shown_at: Cell::new(0),
            inline_limit: Cell::new(peermail_core::wire::signal::DEFAULT_INLINE_LIMIT),
        });
        let weak = Rc::downgrade(&rt);
        let signaling = Signaling::new(signaling_url(), move |ev| {
            if let Some(rt) = weak.upgrade() {
                rt.on_socket(ev);
            }
        });
        *rt.signaling.borrow_mut() = Some(signaling);
        let (w1, w2) = (Rc::downgrade(&rt), Rc::downgrade(&rt));
        let rtc = Rtc::new(Hooks {
            signal: Box::new(move |frame| {
                if let Some(rt) = w1.upgrade() {
                    rt.send_server(&frame);
                }
            }),
            input: Box::new(move |input| {
                if let Some(rt) = w2.upgrade() {
                    rt.peer_input(input);
                }
            }),
        });
        *rt.rtc.borrow_mut() = Some(rtc);
        rt
    }

    /// Registers the UI's re-render callback.
    pub fn set_on_change(&self, f: impl Fn() + 'static) {
        *self.on_change.borrow_mut() = Some(Rc::new(f));
    }

    /// Re-renders the page (also after something the runtime does not track changed, such
    /// as the notification setting).
    pub fn changed(&self) {
        let f = self.on_change.borrow().clone();
        if let Some(f) = f {
            f();
        }
    }

    fn rc(&self) -> Rc<Runtime> {
        self.me.upgrade().expect("runtime alive")
    }

    fn signaling(&self) -> Rc<Signaling> {
        self.signaling
            .borrow()
            .clone()
            .expect("signaling set in new")
    }

    fn rtc(&self) -> Rc<Rtc> {
        self.rtc.borrow().clone().expect("rtc set in new")
    }

    /// Announces a mail just received with the desktop notification, if the person wants
    /// them and the page is out of sight ([`crate::notify`]). Mail one sends oneself is not
    /// announced. Mail arriving together (waiting mail fetched at sign-in) is gathered into
    /// one alert: one task shows the summary after [`crate::notify::GATHER_MS`], and again,
    /// after as long, while more arrived meanwhile.
    fn announce(&self, id: &MessageId) {
        use crate::notify;
        if !notify::page_hidden() || notify::status() != notify::Status::On {
            return;
        }
        let mail = self.with_node(|node| {
            node.received(id)
                .filter(|r| &r.mail.from != node.address())
                .map(|r| notify::Unseen {
                    id: id.clone(),
                    from: r.mail.from.to_string(),
                    subject: r.mail.subject.clone(),
                })
        });
        let Some(Some(mail)) = mail else {
            return;
        };
        {
            let mut unseen = self.unseen.borrow_mut();
            if unseen.iter().any(|u| &u.id == id) {
                return;
            }
            unseen.push(mail);
        }
        if self.announcing.replace(true) {
            return;
        }
        let me = self.me.clone();
        spawn_local(async move {
            loop {
                gloo_timers::future::TimeoutFuture::new(notify::GATHER_MS).await;
                let Some(rt) = me.upgrade() else {
                    return;
                };
                let (seen, shown) = (rt.seen.get(), rt.unseen.borrow().clone());
                if shown.is_empty() || notify::status() != notify::Status::On {
                    // Seen meanwhile, or turned off (in another tab, or the browser's
                    // permission taken back): nothing to announce.
                    rt.unseen.borrow_mut().clear();
                    rt.announcing.set(false);
                    return;
                }
                drop(rt);
                if let Err(e) = notify::show(&shown).await {
                    log(&format!("new mail not announced: {e}"));
                }
                let Some(rt) = me.upgrade() else {
                    return;
                };
                if rt.seen.get() != seen {
                    // Seen while it was being shown: take it down (mail arriving since, in
                    // a new spell out of sight, is shown on the next turn).
                    notify::close_shown().await;
                } else if *rt.unseen.borrow() == shown {
                    rt.announcing.set(false);
                    return;
                }
                // More arrived while it was shown: gather again, then show them all.
            }
        });
    }

    /// Opens storage, loads the account if there is one, and connects to the relay.
    pub async fn start(self: Rc<Self>) {
        // One left up by an earlier page: this one is in sight.
        if !crate::notify::page_hidden() {
            spawn_local(crate::notify::close_shown());
        }
        let me = Rc::downgrade(&self);
        crate::notify::on_seen(move || {
            if let Some(rt) = me.upgrade() {
                rt.seen.set(rt.seen.get().wrapping_add(1));
                rt.unseen.borrow_mut().clear();
                spawn_local(crate::notify::close_shown());
            }
        });
        let waiting = Rc::downgrade(&self);
        let opened = IdbStore::open_or_wait(DB_NAME, move || {
            if let Some(rt) = waiting.upgrade() {
                *rt.phase.borrow_mut() = Phase::Waiting(
                    "Peermail is open in another tab with an older version. Close or reload \
                     that tab to finish updating."
                        .into(),
                );
                rt.changed();
            }
        })
        .await;
        let store = match opened {
            Ok(s) => {
                let rt = Rc::downgrade(&self);
                let watched = s.close_on_upgrade(DB_NAME, move || {
                    if let Some(rt) = rt.upgrade() {
                        *rt.phase.borrow_mut() = Phase::Broken(
                            "Peermail was updated in another tab. Reload this page to go on."
                                .into(),
                        );
                        rt.changed();
                    }
                });
                if let Err(e) = watched {
                    log(&format!(
                        "storage: newer versions in other tabs are not watched ({e})"
                    ));
                }
                Rc::new(s)
            }
            Err(e) => {
                *self.phase.borrow_mut() =
                    Phase::Broken(format!("This browser's storage is not available: {e}"));
                return self.changed();
            }
        };
        *self.store.borrow_mut() = Some(store.clone());
        // Files kept for drafts that are gone (sent or discarded by a page that went away
        // before it dropped them): beside the start, not before it.
        let db = store.database().clone();
        wasm_bindgen_futures::spawn_local(async move {
            match crate::draft::drop_orphan_files(&db).await {
                Ok(0) => {}
                Ok(n) => log(&format!("dropped {n} files of drafts that are gone")),
                Err(e) => log(&format!(
                    "the files of gone drafts could not be dropped: {e}"
                )),
            }
        });
        match store.load_identity().await {
            Ok(Some(identity)) => {
                if let Err(e) = self.start_node(identity).await {
                    *self.phase.borrow_mut() = Phase::Broken(e);
                    return self.changed();
                }
            }
            Ok(None) => *self.phase.borrow_mut() = Phase::SignUp,
            Err(e) => {
                *self.phase.borrow_mut() =
                    Phase::Broken(format!("Could not read the account: {e}"));
                return self.changed();
            }
        }
        self.status.set(ConnStatus::Connecting);
        self.changed();
        self.signaling().connect();
        self.close_connections_on_pagehide();
    }

    /// Says `Bye` on every peer connection when the page goes away, so peers learn of it
    /// through the relay at once instead of waiting for the transport to time out.
    fn close_connections_on_pagehide(&self) {
        let Some(window) = web_sys::window() else {
            return;
        };
        let me = self.me.clone();
        let on_hide = wasm_bindgen::closure::Closure::<dyn FnMut()>::new(move || {
            if let Some(rt) = me.upgrade() {
                rt.rtc().close_all();
            }
        });
        use wasm_bindgen::JsCast;
        let _ =
            window.add_event_listener_with_callback("pagehide", on_hide.as_ref().unchecked_ref());
        // Lives as long as the page.
        on_hide.forget();
    }

    /// Loads the mailbox and creates the node for `identity`.
    async fn start_node(&self, identity: Identity) -> Result<(), String> {
        let store = self.store.borrow().clone().ok_or("storage is not open")?;
        let snapshot = store
            .load()
            .await
            .map_err(|e| format!("Could not read the mailbox: {e}"))?;
        *self.identity.borrow_mut() = Some(identity.clone());
        *self.node.borrow_mut() = Some(Node::new(
            identity,
            Config::default(),
            snapshot,
            now(),
            random_bytes::<32>(),
        ));
        *self.phase.borrow_mut() = Phase::Running;
        Ok(())
    }

    // ----- what the UI reads -----

    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }
    pub fn status(&self) -> ConnStatus {
        self.status.get()
    }
    pub fn signup_error(&self) -> Option<String> {
        self.signup_error.borrow().clone()
    }
    pub fn signing_up(&self) -> bool {
        self.signup.borrow().is_some()
    }
    /// The domain addresses get at this relay (from the challenge, else the page's host).
    pub fn domain(&self) -> Option<String> {
        self.challenge.borrow().as_ref().map(|(_, d)| d.clone())
    }
    pub fn notice(&self) -> Option<String> {
        self.notice.borrow().clone()
    }
    pub fn dismiss_notice(&self) {
        *self.notice.borrow_mut() = None;
        self.changed();
    }
    /// Reads the node (for rendering). Never call from inside another runtime borrow.
    pub fn with_node<R>(&self, f: impl FnOnce(&Node) -> R) -> Option<R> {
        self.node.borrow().as_ref().map(f)
    }

    fn set_notice(&self, text: impl Into<String>) {
        *self.notice.borrow_mut() = Some(text.into());
    }

    /// Shows `text` in the notice bar (`#notice`) until dismissed.
    pub fn tell(&self, text: impl Into<String>) {
        self.set_notice(text);
        self.changed();
    }

    /// The account's database, once open (the Compose form keeps its draft's files there).
    pub fn database(&self) -> Option<indexed_db_futures::database::Database> {
        self.store.borrow().as_ref().map(|s| s.database().clone())
    }

    // ----- what the UI asks for -----

    /// Starts creating the account `name@<relay domain>`.
    pub fn sign_up(&self, name: &str) {
        let name = match validate_name(name) {
            Ok(n) => n,
            Err(e) => {
                *self.signup_error.borrow_mut() = Some(e.to_string());
                return self.changed();
            }
        };
        *self.signup_error.borrow_mut() = None;
        *self.signup.borrow_mut() = Some(SignUp {
            name,
            seed: random_bytes(),
            identity: None,
        });
        self.try_register();
        self.changed();
    }

    /// Sends `Register` if a name is chosen and the session's challenge is known.
    fn try_register(&self) {
        let frame = {
            let challenge = self.challenge.borrow();
            let mut signup = self.signup.borrow_mut();
            let (Some((nonce, domain)), Some(s)) = (challenge.as_ref(), signup.as_mut()) else {
                return;
            };
            if s.identity.is_some() {
                return;
            }
            let address = match Address::new(&s.name, domain) {
                Ok(a) => a,
                Err(e) => {
                    *self.signup_error.borrow_mut() = Some(e.to_string());
                    drop(signup);
                    *self.signup.borrow_mut() = None;
                    return;
                }
            };
            let identity = Identity::from_seed(address, s.seed);
            let public_key = identity.public_key();
            let signature = identity.sign(&register_message(nonce, &s.name, &public_key));
            let frame = ClientFrame::Register {
                name: s.name.clone(),
                public_key,
                signature,
            };
            s.identity = Some(identity);
            frame
        };
        if !self.send_server(&frame) {
            // The socket went away; the next session's challenge retries.
            if let Some(s) = self.signup.borrow_mut().as_mut() {
                s.identity = None;
            }
        }
    }

    /// Sends a draft. On success returns the new mail's Message-ID.
    pub fn send(&self, draft: Draft) -> Result<MessageId, String> {
        let outputs = self.handle(Input::Command(Command::Send {
            draft,
            random: random_bytes(),
        }));
        let mut id = None;
        for o in &outputs {
            match o {
                Output::Event(Event::SendRejected { reason }) => return Err(reason.clone()),
                Output::Event(Event::OutgoingChanged(m)) if id.is_none() => id = Some(m.clone()),
                _ => {}
            }
        }
        id.ok_or_else(|| "the mail was not accepted".to_string())
    }

    /// The largest attachment the relay keeps for offline recipients, as it said (the
    /// default until it has): Compose marks files up to it as travelling with the mail.
    pub fn inline_limit(&self) -> u64 {
        self.inline_limit.get()
    }

    /// What this page is sending (or sent this session) of `att`, per recipient.
    pub fn sending_progress(&self, att: &AttachmentRef) -> Vec<SendingView> {
        let now = now();
        let mut out: Vec<SendingView> = self
            .sending
            .borrow()
            .iter()
            .filter(|((_, a), _)| *a == att.id)
            .map(|((to, _), s)| SendingView {
                to: to.clone(),
                bytes: s.bytes,
                bytes_per_sec: s.rate.bytes_per_sec(),
                eta_ms: s.rate.eta_ms(att.size.saturating_sub(s.bytes)),
                active: now.saturating_sub(s.last) < 5_000,
            })
            .collect();
        out.sort_by(|a, b| a.to.cmp(&b.to));
        out
    }

    /// Stops sending `attachment` to `to` (see `Command::StopSending`).
    pub fn stop_sending(&self, attachment: AttachmentId, to: Address) {
        self.input(Input::Command(Command::StopSending { attachment, to }));
    }

    /// Records a chunk sent, for the sender's progress bar (the UI is told at most four
    /// times a second).
    fn note_sent(&self, peer: &Address, id: AttachmentId, index: u32) {
        let now = now();
        let key = (peer.clone(), id);
        if !self.sending.borrow().contains_key(&key) {
            let size = self
                .with_node(|n| {
                    n.outgoing()
                        .iter()
                        .flat_map(|o| o.mail.attachments.iter())
                        .find(|a| a.id == id)
                        .map(|a| a.size)
                })
                .flatten()
                .unwrap_or(0);
            self.sending.borrow_mut().insert(
                key.clone(),
                Sending {
                    size,
                    ..Sending::default()
                },
            );
        }
        {
            let mut sending = self.sending.borrow_mut();
            let s = sending.get_mut(&key).expect("inserted above");
            if s.sent.insert(index) {
                s.bytes += peermail_core::attach::plain_len(s.size, index) as u64;
            }
            s.rate.record(now, s.bytes);
            s.last = now;
        }
        if now.saturating_sub(self.sending_shown_at.get()) >= 250 {
            self.sending_shown_at.set(now);
            self.changed();
        }
    }

    pub fn cancel_download(&self, id: AttachmentId) {
        self.input(Input::Command(Command::CancelDownload(id)));
    }
    pub fn retry_download(&self, id: AttachmentId) {
        self.input(Input::Command(Command::RetryDownload(id)));
    }

    /// The whole decrypted file of an attachment this node holds (sent or received and
    /// complete), as a Blob of the file's type. Decrypts one chunk at a time and hands the
    /// browser every [`BLOB_PART`] bytes as a Blob of their own (copied out of a buffer
    /// this page reuses), so the page holds about one part of the file, whatever its
    /// size; the file's Blob is made of those parts.
    pub async fn attachment_blob(&self, att: &AttachmentRef) -> Result<web_sys::Blob, String> {
        let parts = js_sys::Array::new();
        // A part ends with the chunk that takes it to BLOB_PART or beyond.
        let capacity = BLOB_PART + peermail_core::attach::CHUNK_BYTES;
        let mut part: Vec<u8> = Vec::with_capacity(capacity.min(att.size as usize));
        let mut failed = None;
        self.decrypt_stored(att, |plain| {
            part.extend_from_slice(plain);
            if part.len() >= BLOB_PART {
                if failed.is_none() {
                    match crate::chunks::blob_of_bytes(&part) {
                        Ok(blob) => {
                            parts.push(&blob);
                        }
                        Err(e) => failed = Some(e),
                    }
                }
                part.clear();
            }
        })
        .await
        .map_err(|e| match e {
            FileCheckFailure::ChunkMissing(i) => format!("part {i} of the file is missing"),
            FileCheckFailure::Invalid(e) => e.to_string(),
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if !part.is_empty() {
            let blob = crate::chunks::blob_of_bytes(&part)?;
            parts.push(&blob);
        }
        let opts = web_sys::BlobPropertyBag::new();
        opts.set_type(&att.mime);
        web_sys::Blob::new_with_blob_sequence_and_options(&parts, &opts)
            .map_err(|e| format!("{e:?}"))
    }

    pub fn mark_read(&self, id: MessageId) {
        self.input(Input::Command(Command::MarkRead(id)));
    }
    pub fn mark_all_read(&self) {
        self.input(Input::Command(Command::MarkAllRead));
    }
    pub fn mark_unread(&self, id: MessageId) {
        self.input(Input::Command(Command::MarkUnread(id)));
    }
    /// Moves a received mail out of the Inbox into the Archive.
    pub fn archive(&self, id: MessageId) {
        self.input(Input::Command(Command::Archive(id)));
    }
    /// Moves an archived mail back into the Inbox.
    pub fn unarchive(&self, id: MessageId) {
        self.input(Input::Command(Command::Unarchive(id)));
    }
    /// Deletes a received mail for good, with its files.
    pub fn delete_received(&self, id: MessageId) {
        self.input(Input::Command(Command::DeleteReceived(id)));
    }
    /// Stops sending a mail still in the Outbox (see `Command::CancelSending`).
    pub fn cancel_sending(&self, id: MessageId) {
        self.input(Input::Command(Command::CancelSending(id)));
    }
    /// Deletes a sent mail for good (refused while a recipient still waits for it).
    pub fn delete_sent(&self, id: MessageId) {
        self.input(Input::Command(Command::DeleteSent(id)));
    }
    pub fn add_contact(&self, address: Address) {
        self.input(Input::Command(Command::AddContact(address)));
    }
    pub fn remove_contact(&self, address: Address) {
        self.input(Input::Command(Command::RemoveContact(address)));
    }
    /// Saves an address-book group (replacing the one with the same name).
    pub fn put_group(&self, group: Group) {
        self.input(Input::Command(Command::PutGroup(group)));
    }
    pub fn remove_group(&self, name: String) {
        self.input(Input::Command(Command::RemoveGroup(name)));
    }
    /// Links the storage node that shows `code` to this account.
    pub fn pair_node(&self, code: String) {
        *self.pairing.borrow_mut() = Pairing {
            busy: true,
            ..Pairing::default()
        };
        self.input(Input::Command(Command::PairNode(code)));
        self.changed();
    }
    /// Asks to unpair this account's storage node (the panel then asks to confirm).
    pub fn ask_unpair_node(&self, ask: bool) {
        self.pairing.borrow_mut().confirm_unpair = ask;
        self.changed();
    }
    /// Unlinks this account's storage node.
    pub fn unpair_node(&self) {
        *self.pairing.borrow_mut() = Pairing {
            busy: true,
            ..Pairing::default()
        };
        self.input(Input::Command(Command::UnpairNode));
        self.changed();
    }
    pub fn pairing(&self) -> Pairing {
        self.pairing.borrow().clone()
    }

    /// Reconnects after the session moved to another tab (taking it back).
    pub fn take_over(&self) {
        *self.notice.borrow_mut() = None;
        self.status.set(ConnStatus::Connecting);
        self.signaling().connect();
        self.changed();
    }

    // ----- the pump -----

    /// Feeds the node one input and schedules the execution of its outputs. The UI is told
    /// to re-render only when the node reports something (an `Event`): a chunk arriving is
    /// not a reason to re-render, its throttled progress event is.
    pub fn input(&self, input: Input) {
        let produced = self.run_node(input);
        let tell_ui = produced.iter().any(|o| matches!(o, Output::Event(_)));
        self.schedule(produced, tell_ui);
    }

    /// An input from a data channel. A chunk frame is decoded here and its SHA-256 computed
    /// by the browser (`crypto.subtle.digest`: native, off this thread, several times
    /// faster than SHA-256 in WebAssembly); the node gets it as `Input::Chunk` with that
    /// hash. Inputs reach the node in arrival order: those behind a chunk wait for its hash.
    fn peer_input(&self, input: Input) {
        let pending = match (&self.subtle, input) {
            (Some(subtle), Input::Frame { peer, bytes }) => match PeerFrame::decode(&bytes) {
                Ok(PeerFrame::Chunk {
                    attachment,
                    index,
                    data,
                }) => {
                    let digest = subtle
                        .digest_with_str_and_u8_array("SHA-256", &data)
                        .ok()
                        .map(wasm_bindgen_futures::JsFuture::from);
                    // Filled in when the browser's digest is in (the browser refused: now).
                    let sha256 = match digest {
                        Some(_) => [0; 32],
                        None => peermail_core::attach::sha256(&data),
                    };
                    let chunk = Input::Chunk {
                        peer,
                        attachment,
                        index,
                        data,
                        sha256,
                    };
                    (chunk, digest)
                }
                _ => (Input::Frame { peer, bytes }, None),
            },
            (_, input) => (input, None),
        };
        if !self.incoming_running.get() && pending.1.is_none() {
            return self.input(pending.0);
        }
        self.incoming.borrow_mut().push_back(pending);
        if self.incoming_running.replace(true) {
            return;
        }
        let rt = self.rc();
        spawn_local(async move {
            loop {
                let next = rt.incoming.borrow_mut().pop_front();
                let Some((mut input, digest)) = next else {
                    break;
                };
                if let (Input::Chunk { data, sha256, .. }, Some(digest)) = (&mut input, digest) {
                    *sha256 = match digest.await {
                        Ok(buf) if js_sys::Uint8Array::new(&buf).length() == 32 => {
                            let mut h = [0u8; 32];
                            js_sys::Uint8Array::new(&buf).copy_to(&mut h);
                            h
                        }
                        // The browser failed (it should not): hashed here instead.
                        _ => peermail_core::attach::sha256(data),
                    };
                }
                rt.input(input);
            }
            rt.incoming_running.set(false);
        });
    }

    /// Like [`input`](Self::input), returning a copy of the outputs it produced (for
    /// commands whose answer the caller reads).
    fn handle(&self, input: Input) -> Vec<Output> {
        let produced = self.run_node(input);
        self.schedule(produced.clone(), true);
        produced
    }

    /// The node handles `input`; its outputs.
    fn run_node(&self, input: Input) -> Vec<Output> {
        let mut node = self.node.borrow_mut();
        let Some(node) = node.as_mut() else {
            return Vec::new();
        };
        node.handle(input, now());
        std::iter::from_fn(|| node.poll_output()).collect()
    }

    /// Queues outputs for the executing task, re-arms the timer, and tells the UI.
    fn schedule(&self, produced: Vec<Output>, tell_ui: bool) {
        self.queue.borrow_mut().extend(produced);
        self.rearm_timer();
        self.kick();
        if tell_ui {
            self.changed();
        }
    }

    fn rearm_timer(&self) {
        let deadline = self.node.borrow().as_ref().and_then(|n| n.poll_timeout());
        // The armed timer fires at or before the deadline: nothing to do. This runs on every
        // input, and a transfer moves its deadline with each chunk; a timer that fires early
        // only makes the node look at its timeouts, and arms the next one.
        if let (Some(new), Some(armed)) = (deadline, self.timer_deadline.get()) {
            if armed <= new && self.timer.borrow().is_some() {
                return;
            }
        }
        self.timer_deadline.set(deadline);
        let mut timer = self.timer.borrow_mut();
        // Dropping a gloo Timeout cancels it.
        *timer = deadline.map(|t| {
            let delay = t
                .saturating_sub(now())
                .max(MIN_TICK_MS)
                .min(u32::MAX as u64) as u32;
            let me = self.me.clone();
            gloo_timers::callback::Timeout::new(delay, move || {
                // On a later turn: the timer (this closure) is replaced by the input.
                spawn_local(async move {
                    if let Some(rt) = me.upgrade() {
                        // This timer has fired: the next input arms a new one.
                        rt.timer_deadline.set(None);
                        rt.input(Input::Tick);
                    }
                });
            })
        });
    }

    /// Starts the executing task unless it is already running.
    ///
    /// Received chunks (and the download records written with them) go to [`Held`] and are
    /// written a whole segment at a time (see [`crate::held`]); everything else runs in
    /// order, after held chunks are written if it may read or delete stored ones.
    fn kick(&self) {
        if self.pumping.replace(true) {
            return;
        }
        let rt = self.rc();
        spawn_local(async move {
            loop {
                let overdue = rt
                    .held
                    .borrow()
                    .oldest()
                    .is_some_and(|t| now() >= t + HELD_MS);
                if rt.flush_due.replace(false) || overdue {
                    rt.write_all_held().await;
                }
                let next = rt.queue.borrow_mut().pop_front();
                let Some(out) = next else { break };
                match out {
                    Output::Store {
                        op,
                        write:
                            StoreWrite::PutChunk {
                                attachment,
                                index,
                                data,
                            },
                    } => {
                        let count = rt.chunk_count(attachment).unwrap_or(u32::MAX);
                        let whole = rt.held.borrow_mut().put_chunk(
                            now(),
                            op,
                            attachment,
                            index,
                            data,
                            count,
                        );
                        if let Some(key) = whole {
                            // The record the node wrote right after this chunk goes with it.
                            while let Some((op, r)) =
                                rt.pop_record_if(|r| r.attachment.id == attachment)
                            {
                                rt.held.borrow_mut().put_record(op, r);
                            }
                            let flush = rt.held.borrow_mut().take_segment(key);
                            rt.write_held(flush).await;
                        } else if rt.held.borrow().chunk_count() > HELD_MAX_CHUNKS {
                            rt.write_all_held().await;
                        }
                    }
                    Output::Store {
                        op,
                        write: StoreWrite::PutDownload(record),
                    } => {
                        if rt.held.borrow().holds(&record.attachment.id) {
                            rt.held.borrow_mut().put_record(op, record);
                            continue;
                        }
                        // A record of an attachment with nothing held, and the like records
                        // right behind it: one transaction.
                        let mut flush = Flush::default();
                        flush.push_record(op, *record);
                        while let Some((op, r)) =
                            rt.pop_record_if(|r| !rt.held.borrow().holds(&r.attachment.id))
                        {
                            flush.push_record(op, *r);
                        }
                        rt.write_held(flush).await;
                    }
                    out => {
                        if reads_stored_chunks(&out) {
                            rt.write_all_held().await;
                        }
                        rt.execute(out).await;
                    }
                }
            }
            rt.pumping.set(false);
            rt.arm_held_timer();
        });
    }

    /// How many chunks `attachment` has, if this node downloads it.
    fn chunk_count(&self, attachment: AttachmentId) -> Option<u32> {
        self.with_node(|n| n.download_attachment(&attachment).map(|a| a.chunk_count()))
            .flatten()
    }

    /// The download record write at the front of the queue, taken off it if `take` says so.
    fn pop_record_if(
        &self,
        take: impl Fn(&DownloadRecord) -> bool,
    ) -> Option<(OpId, Box<DownloadRecord>)> {
        let mut q = self.queue.borrow_mut();
        match q.front() {
            Some(Output::Store {
                write: StoreWrite::PutDownload(r),
                ..
            }) if take(r) => match q.pop_front() {
                Some(Output::Store {
                    op,
                    write: StoreWrite::PutDownload(r),
                }) => Some((op, r)),
                _ => unreachable!("the front was a record write"),
            },
            _ => None,
        }
    }

    /// Writes everything held (nothing if nothing is).
    async fn write_all_held(&self) {
        let flush = self.held.borrow_mut().take_all();
        self.write_held(flush).await;
    }

    /// Writes chunks and download records in one transaction and answers their ops.
    async fn write_held(&self, flush: Flush) {
        if flush.ops.is_empty() {
            return;
        }
        let store = self.store.borrow().clone();
        let result = match store {
            Some(store) => {
                let chunks: Vec<(AttachmentId, u32, &[u8])> = flush
                    .chunks
                    .iter()
                    .map(|(a, i, d)| (*a, *i, &d[..]))
                    .collect();
                store
                    .put_chunks_and_records(&chunks, &flush.records)
                    .await
                    .map_err(|e| e.to_string())
            }
            None => Err("storage is not open".to_string()),
        };
        for op in flush.ops {
            self.input(Input::Stored {
                op,
                result: result.clone(),
            });
        }
    }

    /// Arms the timer that writes held chunks once the oldest has waited [`HELD_MS`]
    /// (unless it is armed for that moment already).
    fn arm_held_timer(&self) {
        let due = self.held.borrow().oldest().map(|t| t + HELD_MS);
        if due == self.held_due.get() {
            return;
        }
        self.held_due.set(due);
        *self.held_timer.borrow_mut() = due.map(|due| {
            let me = self.me.clone();
            let delay = due.saturating_sub(now()).min(HELD_MS) as u32;
            gloo_timers::callback::Timeout::new(delay, move || {
                if let Some(rt) = me.upgrade() {
                    rt.held_due.set(None);
                    rt.flush_due.set(true);
                    rt.kick();
                }
            })
        });
    }

    async fn execute(&self, out: Output) {
        match out {
            Output::ToServer(frame) => {
                self.send_server(&frame);
            }
            Output::Connect(peer) => self.rtc().connect(peer),
            Output::ToPeer { peer, bytes } => {
                if !self.rtc().send(&peer, &bytes) {
                    log(&format!(
                        "rtc: no open channel to {peer}; the node will retry"
                    ));
                }
            }
            Output::Store { op, write } => {
                let store = self.store.borrow().clone();
                let result = match store {
                    Some(store) => store.apply(write).await.map_err(|e| e.to_string()),
                    None => Err("storage is not open".to_string()),
                };
                self.input(Input::Stored { op, result });
            }
            Output::Serve {
                peer,
                attachment,
                request,
            } => {
                let generation = self.stop_gen.borrow().get(&peer).copied().unwrap_or(0);
                self.serving
                    .borrow_mut()
                    .push_back((peer, attachment, request, generation));
                self.start_serving();
            }
            Output::StopServing { peer, attachment } => {
                self.serving
                    .borrow_mut()
                    .retain(|(p, a, _, _)| p != &peer || attachment.is_some_and(|att| att != *a));
                *self.stop_gen.borrow_mut().entry(peer).or_default() += 1;
            }
            Output::Upload {
                to,
                message_id,
                attachment,
                request,
            } => self.upload(to, message_id, attachment, request).await,
            Output::CheckFile(attachment) => {
                let result = self.check_file(attachment).await;
                self.input(Input::FileChecked { attachment, result });
            }
            Output::Event(e) => self.on_event(e),
        }
    }

    /// Sends the relay what the node asked to copy there, read from IndexedDB: the file's
    /// announcement with its chunk list, or chunks. (The relay answers each chunk after its
    /// commit; the node keeps a few in flight.)
    async fn upload(
        &self,
        to: Address,
        message_id: MessageId,
        attachment: AttachmentId,
        request: UploadRequest,
    ) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let Some(store) = self.store.borrow().clone() else {
            return;
        };
        match request {
            UploadRequest::Announce { size } => {
                if let Ok(Some(list)) = store.read_chunk_list(attachment).await {
                    self.send_server(&ClientFrame::DepositFile {
                        to,
                        message_id,
                        attachment,
                        size,
                        hashes: b64.encode(list.concat()),
                    });
                }
            }
            UploadRequest::Chunks { indices } => {
                let mut segment = SegmentReader::default();
                for index in indices {
                    match segment.chunk(&store, attachment, index).await {
                        Ok(Some(data)) => {
                            self.send_server(&ClientFrame::DepositChunk {
                                to: to.clone(),
                                attachment,
                                index,
                                data: b64.encode(data),
                            });
                        }
                        // The node gives the upload up when the relay stops answering.
                        _ => log(&format!(
                            "upload: chunk {index} of {attachment} is not here"
                        )),
                    }
                }
            }
        }
    }

    /// The whole-file check of a received attachment: every stored chunk decrypted in
    /// order, one at a time, and the file's hash compared with the mail's.
    async fn check_file(&self, id: AttachmentId) -> Result<(), FileCheckFailure> {
        let att = self
            .with_node(|n| n.download_attachment(&id).cloned())
            .flatten()
            .ok_or(FileCheckFailure::ChunkMissing(0))?;
        self.decrypt_stored(&att, |_| {}).await
    }

    /// Reads the stored chunks of `att` in order, decrypts each (handing the plaintext to
    /// `sink`) and checks the whole file against the mail: one segment (16 chunks) in memory
    /// at a time.
    /// A chunk that cannot be read counts as missing.
    async fn decrypt_stored(
        &self,
        att: &AttachmentRef,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), FileCheckFailure> {
        let store = self
            .store
            .borrow()
            .clone()
            .ok_or(FileCheckFailure::ChunkMissing(0))?;
        let mut check = FileCheck::new(att);
        let mut segment = SegmentReader::default();
        for i in 0..att.chunk_count() {
            let data = match segment.chunk(&store, att.id, i).await {
                Ok(Some(d)) => d,
                Ok(None) | Err(_) => return Err(FileCheckFailure::ChunkMissing(i)),
            };
            sink(&check.push(i, &data).map_err(FileCheckFailure::Invalid)?);
        }
        check.finish().map_err(FileCheckFailure::Invalid)
    }

    /// Starts the serving task unless it runs: it answers chunk requests one after the
    /// other, reading chunks from IndexedDB and sending them while the channel's queue is
    /// below [`SERVE_HIGH_WATER`], waiting for `bufferedamountlow` otherwise.
    fn start_serving(&self) {
        if self.serve_running.replace(true) {
            return;
        }
        let rt = self.rc();
        spawn_local(async move {
            loop {
                let next = rt.serving.borrow_mut().pop_front();
                let Some((peer, attachment, request, generation)) = next else {
                    break;
                };
                rt.serve(&peer, attachment, request, generation).await;
            }
            rt.serve_running.set(false);
        });
    }

    async fn serve(
        &self,
        peer: &Address,
        id: AttachmentId,
        request: ServeRequest,
        generation: u64,
    ) {
        let Some(store) = self.store.borrow().clone() else {
            return;
        };
        let rtc = self.rtc();
        let refuse = |reason: String| PeerFrame::TransferRefused {
            attachment: id,
            reason,
        };
        let send = |frame: PeerFrame| match frame.encode() {
            Ok(bytes) => rtc.send(peer, &bytes),
            Err(e) => {
                log(&format!("serve: cannot encode a frame: {e}"));
                false
            }
        };
        match request {
            ServeRequest::ChunkList { start } => {
                let frame = match store.read_chunk_list(id).await {
                    Ok(Some(list)) => PeerFrame::ChunkList {
                        attachment: id,
                        start,
                        hashes: peermail_core::attach::hash_page(&list, start).to_vec(),
                    },
                    Ok(None) => refuse("this node no longer has the file".into()),
                    Err(e) => refuse(format!("cannot read the file here: {e}")),
                };
                send(frame);
            }
            ServeRequest::Chunks { ranges } => {
                let mut segment = SegmentReader::default();
                for index in ranges.into_iter().flat_map(|(s, e)| s..e) {
                    let stopped =
                        self.stop_gen.borrow().get(peer).copied().unwrap_or(0) != generation;
                    if stopped {
                        return;
                    }
                    match rtc.buffered(peer) {
                        None => return,
                        Some(b) if b > SERVE_HIGH_WATER => {
                            rtc.drained(peer, SERVE_LOW_WATER).await;
                        }
                        Some(_) => {}
                    }
                    let frame = match segment.chunk(&store, id, index).await {
                        Ok(Some(data)) => PeerFrame::Chunk {
                            attachment: id,
                            index,
                            data,
                        },
                        Ok(None) => refuse(format!("part {index} of the file is missing here")),
                        Err(e) => refuse(format!("cannot read the file here: {e}")),
                    };
                    let refused = matches!(frame, PeerFrame::TransferRefused { .. });
                    if !send(frame) || refused {
                        return;
                    }
                    self.note_sent(peer, id, index);
                }
            }
        }
    }

    fn on_event(&self, e: Event) {
        match e {
            Event::Authenticated => self.status.set(ConnStatus::Online),
            // Negotiation messages to a peer who just left are expected; not the person's concern.
            Event::ServerError {
                code: ErrorCode::PeerOffline,
                message,
            } => log(&format!("relay: {message}")),
            Event::ServerError { message, .. } => self.set_notice(message),
            Event::StoreFailed { reason } => self.set_notice(format!("Saving failed: {reason}")),
            Event::PeerProtocolError { peer, reason } => log(&format!("peer {peer}: {reason}")),
            Event::KeyChanged { address } => self.set_notice(format!(
                "The keys of {address} changed since you last wrote to each other. \
                 If {address} did not set up a new account or device, be careful."
            )),
            Event::Rejected {
                from,
                message_id,
                reason,
            } => {
                log(&format!("rejected {message_id} from {from}: {reason}"));
                self.set_notice(format!(
                    "A mail claiming to be from {from} failed verification and was not \
                     delivered ({reason})"
                ));
            }
            Event::FileNotKept {
                to,
                attachment,
                reason,
            } => log(&format!(
                "the relay does not keep {attachment} for {to} ({reason}); {to} fetches it from this browser"
            )),
            Event::PairingFailed { reason } => {
                *self.pairing.borrow_mut() = Pairing {
                    error: Some(reason),
                    ..Pairing::default()
                };
            }
            Event::UnpairFailed { reason } => {
                *self.pairing.borrow_mut() = Pairing {
                    error: Some(reason),
                    ..Pairing::default()
                };
            }
            Event::NodeUnpaired { node } => {
                *self.pairing.borrow_mut() = Pairing {
                    unpaired: Some(node),
                    ..Pairing::default()
                };
            }
            Event::NodePaired { node } => {
                *self.pairing.borrow_mut() = Pairing {
                    paired: Some(node),
                    ..Pairing::default()
                };
            }
            Event::DeleteRefused { reason, .. } => {
                self.set_notice(format!("The mail was not deleted: {reason}"))
            }
            Event::Deleted(id) => log(&format!("deleted {id}")),
            Event::Received(id) => self.announce(&id),
            Event::NodeLocated { .. }
            | Event::SendRejected { .. }
            | Event::DownloadChanged(_)
            | Event::Presence { .. }
            | Event::InboxChanged
            | Event::OutgoingChanged(_)
            | Event::ContactsChanged
            | Event::GroupsChanged => {}
        }
        self.changed();
    }

    fn send_server(&self, frame: &ClientFrame) -> bool {
        self.signaling().send(frame)
    }

    // ----- the signaling socket -----

    fn on_socket(&self, ev: SocketEvent) {
        match ev {
            SocketEvent::Opened => {
                self.status.set(ConnStatus::Connecting);
                self.input(Input::SignalingConnected);
            }
            SocketEvent::Closed => {
                if self.status.get() != ConnStatus::Replaced {
                    self.status.set(ConnStatus::Offline);
                }
                *self.challenge.borrow_mut() = None;
                if let Some(s) = self.signup.borrow_mut().as_mut() {
                    s.identity = None;
                }
                self.input(Input::SignalingDisconnected);
            }
            SocketEvent::Frame(frame) => self.on_frame(frame),
        }
        self.changed();
    }

    fn on_frame(&self, frame: ServerFrame) {
        let running = self.node.borrow().is_some();
        match frame {
            ServerFrame::Signal {
                from,
                conn,
                payload,
            } => {
                if running {
                    self.rtc().on_signal(from, conn, payload);
                }
            }
            ServerFrame::Error {
                code: ErrorCode::SessionReplaced,
                ..
            } => {
                self.status.set(ConnStatus::Replaced);
                // The other tab is the account's session now; this one goes quiet (its data
                // channels would otherwise keep receiving mail behind the other tab's back).
                self.rtc().close_all();
                self.signaling().stop();
                self.set_notice("Peermail was opened in another tab");
                self.input(Input::SignalingDisconnected);
            }
            ServerFrame::Error {
                code: ErrorCode::UnknownAddress,
                ..
            } if running
                && !self.reregistered.get()
                && self.with_node(|n| !n.is_authenticated()).unwrap_or(false) =>
            {
                self.reregister();
            }
            frame if running => {
                if let ServerFrame::Challenge {
                    nonce,
                    domain,
                    inline_limit,
                } = &frame
                {
                    *self.challenge.borrow_mut() = Some((nonce.clone(), domain.clone()));
                    if let Some(limit) = inline_limit {
                        self.inline_limit.set(*limit);
                    }
                    self.reregistered.set(false);
                }
                if matches!(
                    frame,
                    ServerFrame::Authenticated { .. } | ServerFrame::Registered { .. }
                ) {
                    self.status.set(ConnStatus::Online);
                }
                self.input(Input::Server(frame));
            }
            ServerFrame::Challenge { nonce, domain, .. } => {
                *self.challenge.borrow_mut() = Some((nonce, domain));
                self.try_register();
            }
            ServerFrame::Registered { address } => {
                let identity = self.signup.borrow_mut().take().and_then(|s| s.identity);
                match identity {
                    Some(id) if id.address == address => {
                        let rt = self.rc();
                        spawn_local(async move { rt.finish_signup(id, address).await });
                    }
                    _ => log(&format!("signaling: unexpected registration of {address}")),
                }
            }
            ServerFrame::Error { message, .. } => {
                // The name was refused (taken, invalid) or the relay failed: say so, and take a
                // fresh session (and challenge) for the next try.
                let was_signing_up = self.signup.borrow_mut().take().is_some();
                *self.signup_error.borrow_mut() = Some(message.clone());
                if was_signing_up {
                    self.signaling().connect();
                } else {
                    self.set_notice(message);
                }
            }
            ServerFrame::Authenticated { .. }
            | ServerFrame::PairingCode { .. }
            | ServerFrame::FilesKept { .. }
            | ServerFrame::NodePaired { .. }
            | ServerFrame::NodeUnpaired { .. }
            | ServerFrame::NodeLocation { .. }
            | ServerFrame::FileAccepted { .. }
            | ServerFrame::ChunkDeposited { .. }
            | ServerFrame::FileInfo { .. }
            | ServerFrame::FileChunk { .. }
            | ServerFrame::FileReleased { .. }
            | ServerFrame::Presence { .. }
            | ServerFrame::Pong { .. }
            | ServerFrame::KeyPublished
            | ServerFrame::Keys { .. }
            | ServerFrame::Deposited { .. }
            | ServerFrame::Waiting { .. }
            | ServerFrame::Cached { .. }
            | ServerFrame::Released { .. }
            | ServerFrame::Held { .. }
            | ServerFrame::Withdrawn { .. }
            | ServerFrame::Receipt { .. } => {}
        }
    }

    /// The relay does not know this account (its data was reset): register the same name
    /// with the same keys again, once per session. If the name was taken meanwhile, the
    /// relay's refusal reaches the person as a notice.
    fn reregister(&self) {
        self.reregistered.set(true);
        let frame = {
            let identity = self.identity.borrow();
            let challenge = self.challenge.borrow();
            let (Some(id), Some((nonce, domain))) = (identity.as_ref(), challenge.as_ref()) else {
                return;
            };
            if id.address.host() != domain {
                return self.set_notice(format!(
                    "This relay serves {domain}, not {}; this account cannot sign in here",
                    id.address
                ));
            }
            let name = id.address.local().to_string();
            let public_key = id.public_key();
            let signature = id.sign(&register_message(nonce, &name, &public_key));
            ClientFrame::Register {
                name,
                public_key,
                signature,
            }
        };
        log("signaling: the relay does not know this account; registering it again");
        self.send_server(&frame);
    }

    /// The relay accepted the new account: keep the keys, start the node, authenticate it.
    async fn finish_signup(self: Rc<Self>, identity: Identity, address: Address) {
        let store = self.store.borrow().clone();
        let saved = match store {
            Some(s) => s.save_identity(&identity).await.map_err(|e| e.to_string()),
            None => Err("storage is not open".into()),
        };
        if let Err(e) = saved {
            *self.signup_error.borrow_mut() = Some(format!(
                "The account was created but could not be saved: {e}"
            ));
            return self.changed();
        }
        if let Err(e) = self.start_node(identity).await {
            *self.phase.borrow_mut() = Phase::Broken(e);
            return self.changed();
        }
        self.status.set(ConnStatus::Online);
        self.input(Input::Server(ServerFrame::Registered { address }));
    }
}

/// Reads a file's chunks a segment at a time (one read of IndexedDB and of a Blob per
/// 16 chunks, see [`crate::chunks`]) for a reader that asks for them in order: it keeps
/// the chunks of the last segment read that it has not handed out yet (about 1 MiB).
#[derive(Default)]
struct SegmentReader {
    ahead: VecDeque<(u32, Vec<u8>)>,
}

impl SegmentReader {
    async fn chunk(
        &mut self,
        store: &IdbStore,
        id: AttachmentId,
        index: u32,
    ) -> Result<Option<Vec<u8>>, String> {
        while self.ahead.front().is_some_and(|(i, _)| *i < index) {
            self.ahead.pop_front();
        }
        if self.ahead.front().is_none_or(|(i, _)| *i != index) {
            self.ahead = store
                .read_segment(id, index)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|(i, _)| *i >= index)
                .collect();
        }
        match self.ahead.front() {
            Some((i, _)) if *i == index => Ok(self.ahead.pop_front().map(|(_, d)| d)),
            _ => Ok(None),
        }
    }
}

/// `crypto.subtle`, if this page has it (only secure contexts do).
fn native_crypto() -> Option<web_sys::SubtleCrypto> {
    let subtle = web_sys::window()?.crypto().ok()?.subtle();
    (!wasm_bindgen::JsValue::from(subtle.clone()).is_undefined()).then_some(subtle)
}

/// An output that reads or deletes stored chunks, or must come after every chunk write
/// before it: held chunks are written before it runs.
fn reads_stored_chunks(out: &Output) -> bool {
    match out {
        Output::ToServer(_)
        | Output::Connect(_)
        | Output::ToPeer { .. }
        | Output::StopServing { .. }
        | Output::Event(_) => false,
        Output::Store { .. }
        | Output::Serve { .. }
        | Output::Upload { .. }
        | Output::CheckFile(_) => true,
    }
}
