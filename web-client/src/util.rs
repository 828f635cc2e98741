//! Small browser helpers: the clock, the CSPRNG, the page's host, time formatting, the
//! page's `localStorage` and service workers.

use peermail_core::Millis;
use wasm_bindgen::JsValue;
use yew::Html;

/// Milliseconds since the Unix epoch, the time `core` is fed.
pub fn now() -> Millis {
    js_sys::Date::now() as Millis
}

/// Fills `buf` from the browser's CSPRNG (`crypto.getRandomValues`).
///
/// Panics only if the page has no `window.crypto`, which every browser that runs WebAssembly has.
pub fn fill_random(buf: &mut [u8]) {
    let crypto = web_sys::window()
        .and_then(|w| w.crypto().ok())
        .expect("window.crypto");
    crypto
        .get_random_values_with_u8_array(buf)
        .expect("crypto.getRandomValues");
}

/// `N` random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fill_random(&mut b);
    b
}

/// A random identifier, hex-encoded (used for WebRTC connection ids).
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    fill_random(&mut b);
    hex::encode(b)
}

/// `ws://host/ws` or `wss://host/ws` for the page's own origin.
pub fn signaling_url() -> String {
    let loc = web_sys::window().expect("window").location();
    let secure = loc.protocol().map(|p| p == "https:").unwrap_or(false);
    let host = loc.host().unwrap_or_else(|_| "127.0.0.1:8080".into());
    format!("{}://{host}/ws", if secure { "wss" } else { "ws" })
}

/// The page's host name, shown as the address domain until the relay names its own.
pub fn page_hostname() -> String {
    web_sys::window()
        .and_then(|w| w.location().hostname().ok())
        .unwrap_or_default()
}

fn date(ms: Millis) -> js_sys::Date {
    js_sys::Date::new(&JsValue::from_f64(ms as f64))
}

/// Local wall-clock time, `HH:MM:SS`.
pub fn hms(ms: Millis) -> String {
    let d = date(ms);
    format!(
        "{:02}:{:02}:{:02}",
        d.get_hours(),
        d.get_minutes(),
        d.get_seconds()
    )
}

/// Local date and time, `YYYY-MM-DD HH:MM:SS`.
pub fn full_date(ms: Millis) -> String {
    let d = date(ms);
    format!(
        "{:04}-{:02}-{:02} {}",
        d.get_full_year(),
        d.get_month() + 1,
        d.get_date(),
        hms(ms)
    )
}

/// What a message list shows: the time for today's mail, the day otherwise.
pub fn short_date(ms: Millis) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let d = date(ms);
    let today = date(now());
    let same_day = d.get_full_year() == today.get_full_year()
        && d.get_month() == today.get_month()
        && d.get_date() == today.get_date();
    if same_day {
        format!("{:02}:{:02}", d.get_hours(), d.get_minutes())
    } else if d.get_full_year() == today.get_full_year() {
        format!("{} {}", d.get_date(), MONTHS[d.get_month() as usize % 12])
    } else {
        format!(
            "{} {} {}",
            d.get_date(),
            MONTHS[d.get_month() as usize % 12],
            d.get_full_year()
        )
    }
}

/// The page's `localStorage`, where the browser gives one.
pub fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

/// The page's service worker container, where there is one (`navigator.serviceWorker` is
/// undefined outside secure contexts).
pub fn service_workers() -> Option<web_sys::ServiceWorkerContainer> {
    let sw = web_sys::window()?.navigator().service_worker();
    (!JsValue::from(sw.clone()).is_undefined()).then_some(sw)
}

/// Writes a line to the browser console (diagnostics only; people see notices instead).
pub fn log(msg: &str) {
    web_sys::console::log_1(&JsValue::from_str(msg));
}

/// An optional element as one child of its parent whether it is shown or not. Yew matches
/// unkeyed children from the end, so an element that comes and goes as `{ for option }`
/// (which adds zero or one children) makes it rebuild every sibling before it: a field
/// there loses its focus and, with no `value` bound, what was typed in it.
pub fn stable(element: Option<Html>) -> Html {
    element.unwrap_or_default()
}
