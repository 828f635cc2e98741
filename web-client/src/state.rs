//! UI state: what the person is looking at. Mail, contacts and presence are read from the
//! node at render time; this only holds the view's own choices (as in yew's
//! `function_todomvc`: `State` + `enum Action` + `impl Reducible`).

use std::rc::Rc;

use peermail_core::MessageId;

/// What a new Compose form starts with (a reply or a forward fills it in; a kept draft, see
/// [`crate::draft`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Prefill {
    pub to: String,
    pub cc: String,
    pub subject: String,
    pub body: String,
    pub in_reply_to: Option<MessageId>,
    /// A forward's files (in a kept draft, which mail it forwards and which files were
    /// missing; the files themselves are kept as the draft's files, see `files`).
    #[serde(default, skip_serializing_if = "Forwarded::is_none")]
    pub forwarded: Forwarded,
    /// The files attached to a kept draft, in order (their `File`s are kept in the
    /// account's database, see [`crate::draft::keep_files`]). Empty in a new form's prefill.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::draft::KeptFile>,
}

/// The files a forward starts with: the forwarded mail's files that this browser holds
/// whole, as `File`s the Compose form seals again like picked ones; and the names of
/// those it does not hold (yet), which are not attached.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Forwarded {
    /// The forwarded mail; `None` when the form is no forward.
    pub of: Option<MessageId>,
    /// Only in a new forward's prefill: once the form has them they are the form's files.
    #[serde(skip)]
    pub files: Vec<web_sys::File>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

impl Forwarded {
    fn is_none(&self) -> bool {
        self.of.is_none() && self.missing.is_empty()
    }
}

// `File`s compare by identity (`===`), which is an equivalence.
impl Eq for Forwarded {}
use yew::Reducible;

/// The folders of the sidebar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    Inbox,
    Outbox,
    Sent,
    /// Mails being written ([`crate::draft`]), not mail of the node.
    Drafts,
    /// Received mail moved out of the Inbox.
    Archive,
}

impl Folder {
    /// The `data-folder` value of the UI contract.
    pub fn key(self) -> &'static str {
        match self {
            Folder::Inbox => "inbox",
            Folder::Outbox => "outbox",
            Folder::Sent => "sent",
            Folder::Drafts => "drafts",
            Folder::Archive => "archive",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            Folder::Inbox => "Inbox",
            Folder::Outbox => "Outbox",
            Folder::Sent => "Sent",
            Folder::Drafts => "Drafts",
            Folder::Archive => "Archive",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Bumped whenever the runtime changed, so the view re-reads it.
    pub version: u64,
    pub folder: Folder,
    /// The mail in the reading pane.
    pub selected: Option<MessageId>,
    /// The Compose form is open.
    pub composing: bool,
    /// What the open Compose form started with.
    pub prefill: Prefill,
    /// The draft the open Compose form writes ([`crate::draft`]).
    pub draft_id: String,
    /// Why the last Send was refused (`#compose-error`).
    pub compose_error: Option<String>,
    /// Why the last contact could not be added.
    pub contact_error: Option<String>,
    /// Why the last group could not be saved (`#group-error`).
    pub group_error: Option<String>,
    /// The reading pane asks whether to delete its mail (`#delete-confirm`).
    pub confirm_delete: bool,
    /// What the mail list is narrowed to (`#search`; empty: every mail of the folder).
    pub search: String,
    /// A forward's files are being read back out of the store (its Compose opens next).
    pub forwarding: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: 0,
            folder: Folder::Inbox,
            selected: None,
            composing: false,
            prefill: Prefill::default(),
            draft_id: String::new(),
            compose_error: None,
            contact_error: None,
            group_error: None,
            confirm_delete: false,
            search: String::new(),
            forwarding: false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Something in the runtime changed.
    Refresh,
    OpenFolder(Folder),
    Select(MessageId),
    /// Open an empty Compose form (a new draft).
    Compose,
    /// Open the Compose form filled in (a reply or a forward: a new draft).
    ComposeWith(Prefill),
    /// Open a kept draft in the Compose form.
    OpenDraft(crate::draft::Kept),
    CancelCompose,
    ComposeFailed(String),
    /// A mail was sent: close the form and show it in `folder`.
    Sent {
        folder: Folder,
        id: MessageId,
    },
    ContactFailed(Option<String>),
    GroupFailed(Option<String>),
    /// Ask (or stop asking) whether to delete the mail in the reading pane.
    AskDelete(bool),
    /// A forward is being prepared (its files read back).
    Forwarding,
    /// The mail in the reading pane left the list shown (deleted, archived, or moved back
    /// to the Inbox); `next` opens in its place.
    LeftList {
        next: Option<MessageId>,
    },
    /// Close the mail in the reading pane (it was marked unread: back to the list).
    CloseMail,
    /// Narrow the mail list to mail matching this search.
    Search(String),
}

impl Reducible for State {
    type Action = Action;

    fn reduce(self: Rc<Self>, action: Action) -> Rc<Self> {
        let mut s = (*self).clone();
        match action {
            Action::Refresh => s.version = s.version.wrapping_add(1),
            Action::OpenFolder(f) => {
                s.folder = f;
                s.selected = None;
                s.composing = false;
                s.confirm_delete = false;
            }
            Action::Select(id) => {
                s.selected = Some(id);
                s.composing = false;
                s.confirm_delete = false;
            }
            Action::Compose => {
                s.composing = true;
                s.prefill = Prefill::default();
                s.draft_id = crate::draft::new_id();
                s.compose_error = None;
            }
            Action::ComposeWith(p) => {
                s.forwarding = false;
                s.composing = true;
                s.prefill = p;
                s.draft_id = crate::draft::new_id();
                s.compose_error = None;
            }
            // The draft open already: its form holds more than any copy of it a row had.
            Action::OpenDraft(kept) if s.composing && kept.id == s.draft_id => {}
            Action::OpenDraft(kept) => {
                s.composing = true;
                s.prefill = kept.prefill;
                s.draft_id = kept.id;
                s.compose_error = None;
            }
            Action::CancelCompose => {
                s.composing = false;
                s.compose_error = None;
            }
            Action::ComposeFailed(e) => s.compose_error = Some(e),
            Action::Sent { folder, id } => {
                s.composing = false;
                s.compose_error = None;
                s.folder = folder;
                s.selected = Some(id);
            }
            Action::AskDelete(ask) => s.confirm_delete = ask,
            Action::Forwarding => s.forwarding = true,
            Action::LeftList { next } => {
                s.selected = next;
                s.confirm_delete = false;
            }
            Action::CloseMail => {
                s.selected = None;
                s.confirm_delete = false;
            }
            Action::Search(q) => s.search = q,
            Action::ContactFailed(e) => s.contact_error = e,
            Action::GroupFailed(e) => s.group_error = e,
        }
        Rc::new(s)
    }
}
