//! The Compose form's draft, kept in the browser's `localStorage` as it is written, so
//! that a reload or a closed tab does not lose it: the page opens with it in the Compose
//! form, and Compose opens with it. It goes once the mail is sent or the person discards
//! it (Cancel). One draft per browser (an origin holds one account); picked files are not
//! kept (a page cannot reopen a file it was given).

use crate::state::Prefill;

const KEY: &str = "peermail-draft";

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

/// Keeps `p` as the draft (a form with nothing typed keeps none).
pub fn save(p: &Prefill) {
    let Some(s) = storage() else { return };
    let empty = [&p.to, &p.cc, &p.subject, &p.body]
        .iter()
        .all(|f| f.trim().is_empty());
    if empty {
        let _ = s.remove_item(KEY);
    } else if let Ok(json) = serde_json::to_string(p) {
        let _ = s.set_item(KEY, &json);
    }
}

/// The draft kept, if any.
pub fn load() -> Option<Prefill> {
    let json = storage()?.get_item(KEY).ok()??;
    serde_json::from_str(&json).ok()
}

/// Drops the draft (sent or discarded).
pub fn clear() {
    if let Some(s) = storage() {
        let _ = s.remove_item(KEY);
    }
}
