//! Drafts: mails being written, kept in the browser's `localStorage` as they are written,
//! so that a reload, a closed tab or another mail started meanwhile loses none of them.
//!
//! Each Compose form writes its own draft (by id) on every input. The Drafts folder lists
//! them, newest first, and opens one in the Compose form again. A draft goes once its mail
//! is sent or the person discards it (Cancel); a form left any other way (another folder,
//! a mail opened, a reload) keeps it. The draft of the form that was open when the page
//! went away opens again with the page. While a page sends a draft's mail (encrypting its
//! files first, which goes on if the form is left), the draft is hidden from Drafts, and
//! from another page opening (`sending_at`).
//!
//! A draft's files (picked, dropped, or a forward's) are kept with it: the `File`s in the
//! account's database (object store `draft_files`, key `"<draft id>/<file key, 20
//! digits>"`, value `{ file, kept_at }`; the browser copies a picked file's bytes there),
//! listed in the draft's [`Prefill::files`]. The form writes them as they change
//! ([`keep_files`]) and reads them back when the draft opens again ([`kept_files`]; those
//! it cannot read stay listed and kept); they go with the draft ([`drop_files`]), and
//! files whose draft is gone are dropped as the page starts ([`drop_orphan_files`]).

use indexed_db_futures::database::Database;
use indexed_db_futures::object_store::ObjectStore;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::{Transaction, TransactionMode};
use indexed_db_futures::KeyRange;
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::File;

use crate::chunks::err;
use crate::state::Prefill;
use crate::store::{prefix_range, DRAFT_FILES};
use crate::util::{local_storage, now, random_hex};

/// The drafts, as JSON: `[Kept]`.
const LIST_KEY: &str = "peermail-drafts";
/// The id of the draft whose form is open (the page opens it again).
const OPEN_KEY: &str = "peermail-draft-open";
/// The one draft of builds before the Drafts folder (a `Prefill`); moved into the list.
const OLD_KEY: &str = "peermail-draft";
/// Where a list this build cannot read is put aside (once) before a new one is written.
const UNREADABLE_KEY: &str = "peermail-drafts-unreadable";

/// A kept draft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub id: String,
    /// When it was last written (ms since the epoch).
    pub saved_at: u64,
    pub prefill: Prefill,
    /// Its mail is being sent (its files encrypted first): when the page sending it last
    /// said so (ms since the epoch; it does every second). Not shown in Drafts meanwhile;
    /// back there if it cannot be sent, or once the page has not said so for
    /// [`SENDING_STALE_MS`] (it went away, or its encryption stalled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_at: Option<u64>,
}

/// How long a draft's `sending_at` hides it from Drafts after the page last renewed it.
pub const SENDING_STALE_MS: u64 = 5_000;

impl Kept {
    /// Whether a page is sending its mail at `now`.
    pub fn is_sending(&self, now: u64) -> bool {
        self.sending_at
            .is_some_and(|t| now.saturating_sub(t) < SENDING_STALE_MS)
    }
}

/// An id for a new draft.
pub fn new_id() -> String {
    random_hex(8)
}

/// A file attached to a draft, as the draft lists it (the `File` is kept apart, see the
/// module's docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptFile {
    /// Tells the form's files apart, and names the kept `File` (unique in the browser:
    /// see `compose_files::PickedFiles`).
    pub key: u64,
    pub name: String,
    pub size: u64,
}

/// Whether `p` holds nothing typed and no file (such a form keeps no draft).
fn is_empty(p: &Prefill) -> bool {
    p.files.is_empty()
        && [&p.to, &p.cc, &p.subject, &p.body]
            .iter()
            .all(|f| f.trim().is_empty())
}

/// Every draft, newest first.
pub fn list() -> Vec<Kept> {
    read_list().unwrap_or_default()
}

/// Every draft, newest first; `None` when there is no `localStorage` or the list cannot
/// be read (it is then put aside, once, under `UNREADABLE_KEY`).
fn read_list() -> Option<Vec<Kept>> {
    let s = local_storage()?;
    let mut drafts: Vec<Kept> = match s.get_item(LIST_KEY).ok().flatten() {
        None => Vec::new(),
        Some(json) => match serde_json::from_str(&json) {
            Ok(drafts) => drafts,
            Err(e) => {
                // Kept, not overwritten by the next draft written (a build that can read
                // it may come).
                crate::util::log(&format!("the kept drafts could not be read: {e}"));
                if s.get_item(UNREADABLE_KEY).ok().flatten().is_none() {
                    let _ = s.set_item(UNREADABLE_KEY, &json);
                }
                return None;
            }
        },
    };
    drafts.sort_by(|a, b| b.saved_at.cmp(&a.saved_at).then(a.id.cmp(&b.id)));
    Some(drafts)
}

/// Moves the one draft an older build kept into the list, as the draft of the open form
/// (the older build opened it with the page). Once, as the page starts ([`open`]).
fn migrate(s: &web_sys::Storage) {
    let Some(old) = s.get_item(OLD_KEY).ok().flatten() else {
        return;
    };
    if let Ok(prefill) = serde_json::from_str::<Prefill>(&old) {
        if !is_empty(&prefill) {
            let id = new_id();
            let mut drafts = list();
            drafts.push(Kept {
                id: id.clone(),
                saved_at: now(),
                prefill,
                sending_at: None,
            });
            write(s, &drafts);
            let _ = s.set_item(OPEN_KEY, &id);
        }
    }
    let _ = s.remove_item(OLD_KEY);
}

fn write(s: &web_sys::Storage, drafts: &[Kept]) {
    if drafts.is_empty() {
        let _ = s.remove_item(LIST_KEY);
    } else if let Ok(json) = serde_json::to_string(drafts) {
        let _ = s.set_item(LIST_KEY, &json);
    }
}

/// Draft `id`, as kept now.
pub fn get(id: &str) -> Option<Kept> {
    list().into_iter().find(|d| d.id == id)
}

/// Keeps `p` as draft `id` (a form with nothing typed keeps none). Whether that added a
/// draft to the list or took one out of it (the Drafts folder's count changed).
pub fn save(id: &str, p: &Prefill) -> bool {
    let Some(s) = local_storage() else {
        return false;
    };
    let mut drafts = list();
    let before = drafts.len();
    drafts.retain(|d| d.id != id);
    let was_kept = drafts.len() != before;
    if !is_empty(p) {
        drafts.push(Kept {
            id: id.to_string(),
            saved_at: now(),
            prefill: p.clone(),
            sending_at: None,
        });
    }
    write(&s, &drafts);
    was_kept == is_empty(p)
}

/// The drafts the Drafts folder shows: all but those a page is sending, newest first.
pub fn shown() -> Vec<Kept> {
    let t = now();
    list().into_iter().filter(|d| !d.is_sending(t)).collect()
}

/// Marks draft `id` as being sent now (the page sending it renews this every second), or
/// (`false`) as not sent after all.
pub fn set_sending(id: &str, sending: bool) {
    let Some(s) = local_storage() else { return };
    let mut drafts = list();
    if let Some(d) = drafts.iter_mut().find(|d| d.id == id) {
        d.sending_at = sending.then(now);
        write(&s, &drafts);
    }
}

/// Drops draft `id` (sent or discarded).
pub fn remove(id: &str) {
    let Some(s) = local_storage() else { return };
    let mut drafts = list();
    drafts.retain(|d| d.id != id);
    write(&s, &drafts);
    closed(id);
}

/// The form of draft `id` closed: it is no longer the one the page opens again.
pub fn closed(id: &str) {
    let Some(s) = local_storage() else { return };
    if s.get_item(OPEN_KEY).ok().flatten().as_deref() == Some(id) {
        let _ = s.remove_item(OPEN_KEY);
    }
}

/// Marks draft `id` as the open form's (see [`closed`]).
pub fn set_open(id: &str) {
    if let Some(s) = local_storage() {
        let _ = s.set_item(OPEN_KEY, id);
    }
}

/// The draft of the form that was open when the page went away, if it holds anything
/// (called as the page starts: an older build's draft is moved in first, see `migrate`).
pub fn open() -> Option<Kept> {
    let s = local_storage()?;
    migrate(&s);
    let id = s.get_item(OPEN_KEY).ok()??;
    shown().into_iter().find(|d| d.id == id)
}

// The draft's files, in the account's database.

fn file_key(id: &str, key: u64) -> String {
    format!("{id}/{key:020}")
}

/// The file key in a record's key `"<draft id>/<file key>"`.
fn key_of(record: &str) -> Option<(&str, u64)> {
    let (id, key) = record.split_once('/')?;
    Some((id, key.parse().ok()?))
}

/// The keys of draft `id`'s files.
fn files_range(id: &str) -> KeyRange<String> {
    prefix_range(id)
}

/// A record's value: `{ file: File, kept_at: <ms since the epoch> }`.
fn record(file: &File) -> JsValue {
    let o = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&o, &"file".into(), file);
    let _ = js_sys::Reflect::set(&o, &"kept_at".into(), &JsValue::from_f64(now() as f64));
    o.into()
}

fn record_file(v: &JsValue) -> Option<File> {
    js_sys::Reflect::get(v, &"file".into())
        .ok()?
        .dyn_into()
        .ok()
}

fn record_kept_at(v: &JsValue) -> Option<u64> {
    js_sys::Reflect::get(v, &"kept_at".into())
        .ok()?
        .as_f64()
        .map(|t| t as u64)
}

/// Every record's keys (`'\u{ffff}'` follows any draft id).
fn all_range() -> KeyRange<String> {
    (String::new().."\u{ffff}".to_string()).into()
}

/// The keys of the records in `range`, in order.
async fn keys_in(os: &ObjectStore<'_>, range: KeyRange<String>) -> Result<Vec<String>, String> {
    os.get_all_keys::<String>()
        .with_query::<String, _>(range)
        .primitive()
        .map_err(err)?
        .await
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)
}

/// The values of the records in `range`, in the order of their keys.
async fn values_in(os: &ObjectStore<'_>, range: KeyRange<String>) -> Result<Vec<JsValue>, String> {
    os.get_all::<JsValue>()
        .with_query::<String, _>(range)
        .primitive()
        .map_err(err)?
        .await
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)
}

/// Deletes the records in `range` (one key, or a range of them).
async fn delete_in(os: &ObjectStore<'_>, range: KeyRange<String>) -> Result<(), String> {
    os.delete::<String, _>(range)
        .primitive()
        .map_err(err)?
        .await
        .map_err(err)
}

/// A transaction on the draft files, for reading or (`write`) also writing.
fn transaction(db: &Database, write: bool) -> Result<Transaction<'_>, String> {
    let mode = if write {
        TransactionMode::Readwrite
    } else {
        TransactionMode::Readonly
    };
    db.transaction(DRAFT_FILES)
        .with_mode(mode)
        .build()
        .map_err(err)
}

/// Makes `files` (key, `File`) draft `id`'s kept files: those kept and neither attached
/// nor in `keep_also` are dropped, those not kept yet are stored (a kept file is not
/// written again). One transaction, made before the first await: calls take effect in the
/// order they are made.
pub async fn keep_files(
    db: &Database,
    id: &str,
    files: &[(u64, File)],
    keep_also: &[u64],
) -> Result<(), String> {
    let tx = transaction(db, true)?;
    let os = tx.object_store(DRAFT_FILES).map_err(err)?;
    let stored = keys_in(&os, files_range(id)).await?;
    let wanted: Vec<String> = files.iter().map(|(k, _)| file_key(id, *k)).collect();
    let also: Vec<String> = keep_also.iter().map(|k| file_key(id, *k)).collect();
    for key in stored
        .iter()
        .filter(|k| !wanted.contains(k) && !also.contains(k))
    {
        delete_in(&os, key.clone().into()).await?;
    }
    for ((_, file), key) in files.iter().zip(&wanted) {
        if !stored.contains(key) {
            os.put(record(file))
                .with_key(key.clone())
                .primitive()
                .map_err(err)?
                .await
                .map_err(err)?;
        }
    }
    tx.commit().await.map_err(err)
}

/// Draft `id`'s kept files, in order, with their keys. A record that cannot be read is
/// left out (and logged): the form then says which listed file did not come back.
pub async fn kept_files(db: &Database, id: &str) -> Result<Vec<(u64, File)>, String> {
    let tx = transaction(db, false)?;
    let os = tx.object_store(DRAFT_FILES).map_err(err)?;
    let keys = keys_in(&os, files_range(id)).await?;
    let values = values_in(&os, files_range(id)).await?;
    tx.commit().await.map_err(err)?;
    Ok(keys
        .iter()
        .zip(values)
        .filter_map(|(k, v)| match (key_of(k), record_file(&v)) {
            (Some((_, key)), Some(file)) => Some((key, file)),
            _ => {
                crate::util::log(&format!("the draft file {k:?} cannot be read"));
                None
            }
        })
        .collect())
}

/// Drops draft `id`'s kept files (its mail was sent, or it was discarded).
pub async fn drop_files(db: &Database, id: &str) -> Result<(), String> {
    let tx = transaction(db, true)?;
    let os = tx.object_store(DRAFT_FILES).map_err(err)?;
    delete_in(&os, files_range(id)).await?;
    tx.commit().await.map_err(err)
}

/// How long ago a file must have been kept before [`drop_orphan_files`] may take it for an
/// orphan: another tab's `localStorage` writes (its draft listed) may reach this one later
/// than its files reach the database.
pub const ORPHAN_AFTER_MS: u64 = 3_600_000;

/// The ids of the drafts listed, and of those in a list put aside (`UNREADABLE_KEY`),
/// which are not gone either; `None` when there is no `localStorage`, or a list put
/// aside is no JSON at all.
fn live_ids() -> Option<Vec<String>> {
    let mut live: Vec<String> = read_list()?.into_iter().map(|d| d.id).collect();
    if let Some(aside) = local_storage()?.get_item(UNREADABLE_KEY).ok().flatten() {
        let aside: serde_json::Value = serde_json::from_str(&aside).ok()?;
        let ids = aside.as_array().into_iter().flatten();
        live.extend(
            ids.filter_map(|d| d.get("id")?.as_str())
                .map(str::to_string),
        );
    }
    Some(live)
}

/// Drops the kept files of drafts no longer listed (discarded or sent in a page that went
/// away before it dropped them), kept at least [`ORPHAN_AFTER_MS`] ago. Returns how many.
/// Drops none when the list cannot be read (its drafts are put aside, not gone).
pub async fn drop_orphan_files(db: &Database) -> Result<usize, String> {
    let tx = transaction(db, true)?;
    let os = tx.object_store(DRAFT_FILES).map_err(err)?;
    let keys = keys_in(&os, all_range()).await?;
    let values = values_in(&os, all_range()).await?;
    let Some(live) = live_ids() else {
        return Ok(0);
    };
    let before = now().saturating_sub(ORPHAN_AFTER_MS);
    let mut dropped = 0;
    for (key, value) in keys.iter().zip(&values) {
        let id = key_of(key).map_or(key.as_str(), |(id, _)| id);
        // A record without a time is no file this build kept: not an orphan of a draft.
        let old = record_kept_at(value).is_some_and(|t| t < before);
        if old && !live.iter().any(|l| l == id) {
            delete_in(&os, key.clone().into()).await?;
            dropped += 1;
        }
    }
    tx.commit().await.map_err(err)?;
    Ok(dropped)
}
