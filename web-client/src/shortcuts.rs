//! Keyboard shortcuts of the main view, the keys of other web mail clients (Gmail's): `c`
//! Compose, `/` search, `j`/`k` the next/previous mail of the list, `r` reply, `a` reply
//! all, `f` forward, `e` archive (or, in Archive, move to the Inbox), `#` delete, `U`
//! (Shift+U) mark unread.
//!
//! Each key clicks (or focuses) the control the page shows for it, so it does exactly what
//! that control does, and nothing when the control is not there or is disabled. Left
//! alone: keys typed into a field; every key while the Compose form is open (a stray key
//! must not close a reply being written) or a deletion asks to be confirmed; keys with
//! Ctrl, Alt or Meta held (but AltGr, and Alt for `#`, which some layouts need to type
//! it); a held key's repeats, except `j`/`k`. Letters count with Caps Lock on: Shift+U is
//! `U`, another shifted letter nothing. The controls carry their key in
//! `aria-keyshortcuts` (see [`KEYS`]).

use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use web_sys::{Document, Element, HtmlElement, KeyboardEvent};

/// Each key and the control it acts on (a CSS selector; the first match that is shown).
pub const KEYS: &[(&str, &str)] = &[
    ("c", "#compose-button"),
    ("r", "#reading-pane button.reply"),
    ("a", "#reading-pane button.reply-all"),
    ("f", "#reading-pane button.forward"),
    ("e", "#archive-mail, #unarchive-mail"),
    ("#", "#delete-mail"),
    ("U", "#mark-unread"),
];

/// Listens for the shortcuts on the page's document, for the page's life.
pub fn install() {
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    let page = doc.clone();
    let on_key = Closure::<dyn FnMut(KeyboardEvent)>::new(move |e: KeyboardEvent| {
        if handle(&page, &e) {
            e.prevent_default();
        }
    });
    if doc
        .add_event_listener_with_callback("keydown", on_key.as_ref().unchecked_ref())
        .is_ok()
    {
        // Lives as long as the page.
        on_key.forget();
    }
}

/// The shortcut `e` is, if any (see the module documentation for what is left alone).
fn shortcut(e: &KeyboardEvent) -> Option<String> {
    let key = e.key();
    let alt_graph = e.get_modifier_state("AltGraph");
    if e.is_composing() || e.default_prevented() {
        return None;
    }
    if (e.ctrl_key() || e.meta_key() || (e.alt_key() && key != "#")) && !alt_graph {
        return None;
    }
    let key = match key.as_str() {
        k if k.len() == 1 && k.as_bytes()[0].is_ascii_alphabetic() => {
            let lower = k.to_ascii_lowercase();
            match (e.shift_key(), lower.as_str()) {
                (false, _) => lower,
                (true, "u") => "U".to_string(),
                (true, _) => return None,
            }
        }
        _ => key,
    };
    if e.repeat() && key != "j" && key != "k" {
        return None;
    }
    Some(key)
}

/// Acts on `e` if it is a shortcut; whether it did.
fn handle(doc: &Document, e: &KeyboardEvent) -> bool {
    let Some(key) = shortcut(e) else {
        return false;
    };
    if e.target()
        .and_then(|t| t.dyn_into::<Element>().ok())
        .is_some_and(|t| typing_into(&t))
    {
        return false;
    }
    if element(doc, ".compose-pane").is_some() || element(doc, "#delete-confirm").is_some() {
        return false;
    }
    match key.as_str() {
        "/" => match element(doc, "#search") {
            Some(search) => search.focus().is_ok(),
            None => false,
        },
        "j" => step(doc, 1),
        "k" => step(doc, -1),
        key => match KEYS.iter().find(|(k, _)| *k == key) {
            Some((_, css)) => click(doc, css),
            None => false,
        },
    }
}

/// Whether keys on `el` are text being typed (a field, or editable content).
fn typing_into(el: &Element) -> bool {
    matches!(el.tag_name().as_str(), "INPUT" | "TEXTAREA" | "SELECT")
        || el
            .dyn_ref::<HtmlElement>()
            .is_some_and(|h| h.is_content_editable())
}

fn element(doc: &Document, css: &str) -> Option<HtmlElement> {
    doc.query_selector(css)
        .ok()??
        .dyn_into::<HtmlElement>()
        .ok()
}

/// Clicks the control `css` names, if the page shows one that is enabled.
fn click(doc: &Document, css: &str) -> bool {
    match element(doc, css) {
        Some(el) if !el.has_attribute("disabled") => {
            el.click();
            true
        }
        _ => false,
    }
}

/// Opens the mail `by` rows after the one open in the list (the first one when none is),
/// and scrolls it into view.
fn step(doc: &Document, by: i32) -> bool {
    let Ok(rows) = doc.query_selector_all("#message-list .message-row") else {
        return false;
    };
    let count = rows.length() as i32;
    let open = (0..count).find(|&i| {
        rows.get(i as u32)
            .and_then(|r| r.dyn_into::<Element>().ok())
            .is_some_and(|r| r.class_list().contains("selected"))
    });
    let to = match open {
        Some(i) => i + by,
        None => 0,
    };
    if !(0..count).contains(&to) {
        return false;
    }
    match rows
        .get(to as u32)
        .and_then(|r| r.dyn_into::<HtmlElement>().ok())
    {
        Some(row) => {
            row.click();
            let view = web_sys::ScrollIntoViewOptions::new();
            view.set_block(web_sys::ScrollLogicalPosition::Nearest);
            row.scroll_into_view_with_scroll_into_view_options(&view);
            true
        }
        None => false,
    }
}
