//! Desktop notifications of new mail while the page is out of sight.
//!
//! Off until the person turns them on (`#notify-toggle` in the top bar) and the browser
//! grants the permission; the choice is kept in `localStorage` under [`SETTING_KEY`]. While
//! the page is hidden (another tab in front, the window minimised), each mail received adds
//! to one notification (tag [`TAG`], so it is replaced, not stacked): "From alice@…" with the
//! subject for one mail, "3 new mails" listing the latest for more ([`summary`]). When the
//! page is seen again the notification closes and the count starts over. Nothing is shown
//! while the page is in sight: the Inbox and the title's unread count say it already.
//!
//! Notifications are shown through the service worker's registration (where there are no
//! service workers, the toggle is not offered; one not active within five seconds is
//! logged, and the mail is not announced), so a click reaches `static/sw.js` even once the page
//! is gone: it posts `{type: "peermail-open", id}` to the open pages and brings Peermail's
//! forward, where [`listen_for_opens`] hands it to the app to open that mail (or the Inbox
//! when the notification sums up several); with no page open it opens one at `/?open=<id>`
//! ([`take_open_request`]). A notification names the sender and the subject: they are shown
//! by the desktop (its notification centre may keep them), which the toggle's title says.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    MessageEvent, Notification, NotificationOptions, NotificationPermission,
    ServiceWorkerRegistration, VisibilityState,
};

use peermail_core::mail::MessageId;

use crate::util::{local_storage, service_workers};

/// The `localStorage` key holding `"on"` while the person wants notifications.
pub const SETTING_KEY: &str = "peermail-notify";
/// The one notification's tag: a newer summary replaces the one shown.
pub const TAG: &str = "peermail-new-mail";
/// What the service worker posts to the page when a notification is clicked.
pub const OPEN_MESSAGE: &str = "peermail-open";
/// How many mails a summary of several lists by sender and subject.
pub const LISTED: usize = 3;
/// How long mail arriving together is gathered before one alert announces it (a hidden
/// page's timers fire at most once a second anyway).
pub const GATHER_MS: u32 = 300;
/// The query parameter of a page opened by a click on a notification: the mail to open.
pub const OPEN_PARAM: &str = "open";

/// Whether new mail is announced, as the top bar shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// This browser has no notifications or no service workers (or this page is not a
    /// secure context).
    Unsupported,
    /// Not asked for, or turned off.
    Off,
    /// Turned on and allowed by the browser.
    On,
    /// The browser refuses them for this page (the person said no, or its settings do).
    Blocked,
}

impl Status {
    /// The toggle's `data-state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unsupported => "unsupported",
            Status::Off => "off",
            Status::On => "on",
            Status::Blocked => "blocked",
        }
    }
}

/// A mail received while the page was out of sight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unseen {
    pub id: MessageId,
    pub from: String,
    pub subject: String,
}

/// The notification for mails received while the page was out of sight (oldest first):
/// its title, its body, and the mail a click opens (`None`: the Inbox). `None` for no mail.
pub fn summary(unseen: &[Unseen]) -> Option<(String, String, Option<MessageId>)> {
    fn subject(u: &Unseen) -> &str {
        match u.subject.trim() {
            "" => "(no subject)",
            s => s,
        }
    }
    match unseen {
        [] => None,
        [one] => Some((
            format!("From {}", one.from),
            subject(one).to_string(),
            Some(one.id.clone()),
        )),
        many => {
            let mut lines: Vec<String> = many
                .iter()
                .rev()
                .take(LISTED)
                .map(|u| format!("{}: {}", u.from, subject(u)))
                .collect();
            if many.len() > LISTED {
                lines.push(format!("and {} more", many.len() - LISTED));
            }
            Some((format!("{} new mails", many.len()), lines.join("\n"), None))
        }
    }
}

/// How long [`show`] waits for the service worker to be active (on a first visit it may
/// still be installing).
const READY_WAIT_MS: i32 = 5_000;

/// Whether this page can show notifications at all (through a service worker).
fn supported() -> bool {
    web_sys::window().is_some_and(|w| {
        js_sys::Reflect::has(&w, &JsValue::from_str("Notification")).unwrap_or(false)
            && w.is_secure_context()
    }) && service_workers().is_some()
}

/// Whether the person wants notifications and the browser allows them.
pub fn status() -> Status {
    if !supported() {
        return Status::Unsupported;
    }
    let on = local_storage()
        .and_then(|s| s.get_item(SETTING_KEY).ok().flatten())
        .is_some_and(|v| v == "on");
    match Notification::permission() {
        NotificationPermission::Granted if on => Status::On,
        NotificationPermission::Denied => Status::Blocked,
        _ => Status::Off,
    }
}

/// Turns notifications on, asking the browser's permission if it was not given yet. Returns
/// the status after: `On`, or `Blocked` if the person (or the browser) said no.
pub async fn turn_on() -> Status {
    if !supported() {
        return Status::Unsupported;
    }
    let granted = match Notification::permission() {
        NotificationPermission::Granted => true,
        NotificationPermission::Denied => false,
        _ => match Notification::request_permission() {
            Ok(asked) => JsFuture::from(asked)
                .await
                .ok()
                .and_then(|answer| answer.as_string())
                .is_some_and(|answer| answer == "granted"),
            Err(_) => false,
        },
    };
    if granted {
        if let Some(s) = local_storage() {
            let _ = s.set_item(SETTING_KEY, "on");
        }
    }
    status()
}

/// Turns notifications off (the browser's permission stays as it is).
pub fn turn_off() {
    if let Some(s) = local_storage() {
        let _ = s.remove_item(SETTING_KEY);
    }
}

/// Whether the page is out of sight.
pub fn page_hidden() -> bool {
    web_sys::window()
        .and_then(|w| w.document())
        .is_some_and(|d| d.visibility_state() == VisibilityState::Hidden)
}

/// The service worker's registration for this page, if one is registered.
async fn registration() -> Option<ServiceWorkerRegistration> {
    let found = JsFuture::from(service_workers()?.get_registration())
        .await
        .ok()?;
    found.dyn_into::<ServiceWorkerRegistration>().ok()
}

/// The service worker's registration once its worker is active (`ready`), or `None` if it
/// is not within [`READY_WAIT_MS`] (not registered, or failing to install).
async fn active_registration() -> Option<ServiceWorkerRegistration> {
    let ready = service_workers()?.ready().ok()?;
    let window = web_sys::window()?;
    let timeout = js_sys::Promise::new(&mut |resolve, _| {
        let _ =
            window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, READY_WAIT_MS);
    });
    let first = js_sys::Promise::race(&js_sys::Array::of2(&ready, &timeout));
    JsFuture::from(first).await.ok()?.dyn_into().ok()
}

/// Shows the notification for `unseen`, replacing the one shown. Nothing for no mail.
pub async fn show(unseen: &[Unseen]) -> Result<(), String> {
    let Some((title, body, open)) = summary(unseen) else {
        return Ok(());
    };
    let data = js_sys::Object::new();
    let id = open.as_ref().map_or(JsValue::NULL, |id| id.as_str().into());
    js_sys::Reflect::set(&data, &"id".into(), &id).map_err(|e| format!("{e:?}"))?;
    let options = NotificationOptions::new();
    options.set_body(&body);
    options.set_tag(TAG);
    options.set_renotify(true);
    options.set_icon("/icon.svg");
    options.set_data(&data);
    let reg = active_registration()
        .await
        .ok_or("no service worker is active for this page")?;
    let shown = reg
        .show_notification_with_options(&title, &options)
        .map_err(|e| format!("{e:?}"))?;
    JsFuture::from(shown).await.map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// Closes the notification this page showed, if it is still up.
pub async fn close_shown() {
    let Some(reg) = registration().await else {
        return;
    };
    let Ok(listed) = reg.get_notifications() else {
        return;
    };
    let Ok(shown) = JsFuture::from(listed).await else {
        return;
    };
    for n in js_sys::Array::from(&shown).iter() {
        if let Ok(n) = n.dyn_into::<Notification>() {
            if n.tag().as_deref() == Some(TAG) {
                n.close();
            }
        }
    }
}

/// The mail a click on a notification asked this page to open, when it opened the page
/// (`/?open=<id>`); the parameter is taken off the address, so a reload does not open it
/// again.
pub fn take_open_request() -> Option<String> {
    let window = web_sys::window()?;
    let href = window.location().href().ok()?;
    let url = web_sys::Url::new(&href).ok()?;
    let params = url.search_params();
    let id = params.get(OPEN_PARAM)?;
    params.delete(OPEN_PARAM);
    if let Ok(history) = window.history() {
        let _ = history.replace_state_with_url(&JsValue::NULL, "", Some(&url.href()));
    }
    Some(id)
}

/// Calls `open` with the mail's id (`None`: the Inbox) each time the person clicks a
/// notification (the service worker posts [`OPEN_MESSAGE`]). For the page's lifetime.
pub fn listen_for_opens(open: impl Fn(Option<String>) + 'static) {
    let Some(sw) = service_workers() else {
        return;
    };
    let on_message = Closure::<dyn Fn(MessageEvent)>::new(move |e: MessageEvent| {
        let data = e.data();
        let kind = js_sys::Reflect::get(&data, &"type".into()).ok();
        if kind.and_then(|k| k.as_string()).as_deref() != Some(OPEN_MESSAGE) {
            return;
        }
        let id = js_sys::Reflect::get(&data, &"id".into())
            .ok()
            .and_then(|id| id.as_string());
        open(id);
    });
    let _ = sw.add_event_listener_with_callback("message", on_message.as_ref().unchecked_ref());
    on_message.forget();
}

/// Calls `seen` each time the page comes back into sight. For the page's lifetime.
pub fn on_seen(seen: impl Fn() + 'static) {
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    let on_change = Closure::<dyn Fn()>::new(move || {
        if !page_hidden() {
            seen();
        }
    });
    let _ = doc
        .add_event_listener_with_callback("visibilitychange", on_change.as_ref().unchecked_ref());
    on_change.forget();
}
