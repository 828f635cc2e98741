//! The files attached in Compose: the picker (`#compose-files`), dropping files onto the
//! form, the list (`#compose-attachments`, one `.compose-attachment` per file), and sealing
//! them into the chunk store when the mail is sent ([`seal_all`]).
//!
//! The picked `File` handles are kept as they are (the browser reads them from disk when
//! they are sealed); nothing is read before Send.

use std::rc::Rc;

use indexed_db_futures::database::Database;
use peermail_core::attach::{AttachmentRef, MAX_ATTACHMENT_BYTES};
use wasm_bindgen::JsCast;
use web_sys::{DragEvent, File, FileList, HtmlInputElement};
use yew::prelude::*;

use crate::chunks::{delete_chunks, seal_file_with_progress};
use crate::store::IdbStore;
use crate::text::human_size;
use crate::util::fill_random;

/// One file in the list; `key` tells apart two entries of the same file, and names the
/// file kept with the form's draft ([`crate::draft::keep_files`]).
#[derive(Clone, PartialEq)]
pub struct PickedFile {
    pub key: u64,
    pub file: File,
}

/// The files attached to the open Compose form, in the order they were added.
#[derive(Default, PartialEq)]
pub struct PickedFiles {
    next: u64,
    pub files: Vec<PickedFile>,
    /// The draft's kept files were read back ([`FilesAction::Restore`]): from then on the
    /// list is what the draft keeps.
    pub restored: bool,
    /// The person added or removed a file (a forward's files alone make no draft).
    pub touched: bool,
    /// Files the draft lists whose kept copies could not be read back: still listed and
    /// kept (a later page may read them), not shown nor sent.
    pub preserved: Vec<crate::draft::KeptFile>,
}

pub enum FilesAction {
    Add(Vec<File>),
    /// A new forward's files (added as the form opens, not by the person).
    Forwarded(Vec<File>),
    Remove(u64),
    /// The files kept with the form's draft, read back as it opens (they go before any
    /// added meanwhile).
    Restore(Vec<(u64, File)>),
    /// The draft's files could not be read back: these (its list) stay as they are.
    Unreadable(Vec<crate::draft::KeptFile>),
}

impl Reducible for PickedFiles {
    type Action = FilesAction;
    fn reduce(self: Rc<Self>, action: FilesAction) -> Rc<Self> {
        let mut files = self.files.clone();
        // Keys start from the time in ms × 1000, so that a file added after a reload does
        // not take the key of one kept with the draft (keys stay unique in this browser),
        // and a kept file's key says when it was added (see `draft::drop_orphan_files`).
        let mut next = self.next.max(crate::util::now().saturating_mul(1000));
        let mut restored = self.restored;
        let mut preserved = self.preserved.clone();
        let touched =
            self.touched || matches!(action, FilesAction::Add(_) | FilesAction::Remove(_));
        match action {
            FilesAction::Add(new) | FilesAction::Forwarded(new) => {
                for file in new {
                    files.push(PickedFile { key: next, file });
                    next += 1;
                }
            }
            FilesAction::Remove(key) => files.retain(|f| f.key != key),
            FilesAction::Restore(kept) => {
                let kept: Vec<PickedFile> = kept
                    .into_iter()
                    .filter(|(key, _)| files.iter().all(|f| f.key != *key))
                    .map(|(key, file)| PickedFile { key, file })
                    .collect();
                next = kept.iter().map(|f| f.key + 1).fold(next, u64::max);
                files.splice(0..0, kept);
                restored = true;
            }
            FilesAction::Unreadable(listed) => {
                next = listed.iter().map(|f| f.key + 1).fold(next, u64::max);
                preserved = listed;
                restored = true;
            }
        }
        Rc::new(PickedFiles {
            next,
            files,
            restored,
            touched,
            preserved,
        })
    }
}

impl PickedFiles {
    /// The File handles, in order.
    pub fn handles(&self) -> Vec<File> {
        self.files.iter().map(|f| f.file.clone()).collect()
    }

    /// The files with their keys, in order (as [`crate::draft::keep_files`] keeps them).
    pub fn keyed(&self) -> Vec<(u64, File)> {
        self.files.iter().map(|f| (f.key, f.file.clone())).collect()
    }

    /// The files as a draft lists them (those that could not be read back first).
    pub fn kept(&self) -> Vec<crate::draft::KeptFile> {
        let files = self.files.iter().map(|f| crate::draft::KeptFile {
            key: f.key,
            name: f.file.name(),
            size: f.file.size() as u64,
        });
        self.preserved.iter().cloned().chain(files).collect()
    }

    /// The keys of the kept files that could not be read back (kept as they are).
    pub fn preserved_keys(&self) -> Vec<u64> {
        self.preserved.iter().map(|f| f.key).collect()
    }
}

fn files_of(list: Option<FileList>) -> Vec<File> {
    let Some(list) = list else {
        return Vec::new();
    };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

/// What the Compose form needs to take dropped files.
pub struct DropTarget {
    pub ondragover: Callback<DragEvent>,
    pub ondragleave: Callback<DragEvent>,
    pub ondrop: Callback<DragEvent>,
    /// Files are being dragged over the form (for styling).
    pub dragging: bool,
}

/// Handlers that add files dropped onto the element they are set on; while `busy` (the
/// form's files are being encrypted) a drop adds nothing (and the browser still does not
/// open the file).
#[hook]
pub fn use_file_drop(files: UseReducerDispatcher<PickedFiles>, busy: bool) -> DropTarget {
    let dragging = use_state(|| false);
    let ondragover = {
        let dragging = dragging.clone();
        Callback::from(move |e: DragEvent| {
            // Without this the browser opens the file instead of dropping it here.
            e.prevent_default();
            if let Some(dt) = e.data_transfer() {
                dt.set_drop_effect(if busy { "none" } else { "copy" });
            }
            if !*dragging {
                dragging.set(true);
            }
        })
    };
    let ondragleave = {
        let dragging = dragging.clone();
        Callback::from(move |e: DragEvent| {
            // Leaving a child element also fires dragleave; only leaving the form counts.
            let inside = e
                .related_target()
                .and_then(|t| t.dyn_into::<web_sys::Node>().ok())
                .zip(
                    e.current_target()
                        .and_then(|t| t.dyn_into::<web_sys::Node>().ok()),
                )
                .is_some_and(|(to, form)| form.contains(Some(&to)));
            if !inside {
                dragging.set(false);
            }
        })
    };
    let ondrop = {
        let dragging = dragging.clone();
        Callback::from(move |e: DragEvent| {
            e.prevent_default();
            dragging.set(false);
            let dropped = files_of(e.data_transfer().and_then(|dt| dt.files()));
            if !dropped.is_empty() && !busy {
                files.dispatch(FilesAction::Add(dropped));
            }
        })
    };
    DropTarget {
        ondragover,
        ondragleave,
        ondrop,
        dragging: *dragging,
    }
}

#[derive(Properties, PartialEq)]
pub struct ComposeFilesProps {
    pub files: UseReducerHandle<PickedFiles>,
    /// While the mail is being sent: no adding or removing.
    #[prop_or_default]
    pub disabled: bool,
}

/// The file picker and the list of attached files.
#[function_component(ComposeFiles)]
pub fn compose_files(props: &ComposeFilesProps) -> Html {
    let onchange = {
        let files = props.files.dispatcher();
        Callback::from(move |e: Event| {
            let Some(input) = e.target_dyn_into::<HtmlInputElement>() else {
                return;
            };
            let picked = files_of(input.files());
            // Cleared, so picking the same file again adds it again.
            input.set_value("");
            if !picked.is_empty() {
                files.dispatch(FilesAction::Add(picked));
            }
        })
    };
    let disabled = props.disabled;
    html! {
        <div class="compose-files">
            <label class="attach">
                <span class="label">{ "Attach" }</span>
                <input id="compose-files" type="file" multiple=true {onchange} {disabled} />
                <span class="hint">{ "or drop files here" }</span>
            </label>
            <ul id="compose-attachments">
                { for props.files.files.iter().map(|f| {
                    let name = f.file.name();
                    let size = f.file.size() as u64;
                    let remove = {
                        let files = props.files.dispatcher();
                        let key = f.key;
                        Callback::from(move |_: MouseEvent| files.dispatch(FilesAction::Remove(key)))
                    };
                    html! {
                        <li class="compose-attachment" key={f.key} data-name={name.clone()}>
                            <span class="name">{ name.clone() }</span>
                            <span class="size">{ human_size(size) }</span>
                            <button class="link remove-attachment" type="button" title={format!("Remove {name}")}
                                onclick={remove} {disabled}>{ "×" }</button>
                        </li>
                    }
                }) }
            </ul>
        </div>
    }
}

/// Attachments sealed into the chunk store for one mail, with the database connection
/// that wrote them.
pub struct Sealed {
    db: Database,
    pub refs: Vec<AttachmentRef>,
}

impl Sealed {
    /// The mail's attachments; the chunks stay stored.
    pub fn into_refs(self) -> Vec<AttachmentRef> {
        self.db.close();
        self.refs
    }

    /// Deletes what was sealed (the mail was not sent after all).
    pub async fn discard(self) {
        discard(&self.db, &self.refs).await;
        self.db.close();
    }
}

async fn discard(db: &Database, refs: &[AttachmentRef]) {
    for r in refs {
        if let Err(e) = delete_chunks(db, r.id).await {
            crate::util::log(&format!("could not delete the chunks of {}: {e}", r.id));
        }
    }
}

/// Seals `files` in order. `progress(done, total)` (plaintext bytes) is called as batches
/// are stored; returning `false` cancels. On any error (a file too large or unreadable,
/// storage full, cancelled) everything sealed for this call is deleted and the error says
/// which file. Files up to `inline_limit` bytes (the relay's) travel with the mail.
pub async fn seal_all(
    files: &[File],
    inline_limit: u64,
    mut progress: impl FnMut(u64, u64) -> bool,
) -> Result<Sealed, String> {
    if let Some(f) = files
        .iter()
        .find(|f| f.size() as u64 > MAX_ATTACHMENT_BYTES)
    {
        return Err(format!(
            "{} is {}; the largest attachment is {}",
            f.name(),
            human_size(f.size() as u64),
            human_size(MAX_ATTACHMENT_BYTES)
        ));
    }
    let total: u64 = files.iter().map(|f| f.size() as u64).sum();
    // A connection of our own to the account's database (the runtime keeps its own).
    let db = IdbStore::open(crate::runtime::DB_NAME)
        .await
        .map_err(|e| format!("storage is not available ({e})"))?
        .database()
        .clone();
    let mut refs = Vec::with_capacity(files.len());
    let mut before = 0u64;
    for file in files {
        let sealed = seal_file_with_progress(&db, file, inline_limit, fill_random, |done| {
            progress(before + done, total)
        })
        .await;
        match sealed {
            Ok(r) => {
                before += r.size;
                refs.push(r);
            }
            Err(e) => {
                discard(&db, &refs).await;
                db.close();
                return Err(e);
            }
        }
    }
    Ok(Sealed { db, refs })
}
