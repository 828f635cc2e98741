//! Desktop notifications of new mail: once turned on, mail arriving while the page is out of
//! sight is announced in one notification, a click on it opens the mail, and seeing the page
//! again takes it down. Nothing is announced while the page is in sight, or once turned off.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use serde_json::json;

use peermail_e2e::Browser;

use super::World;

/// A notification the page's service worker shows, as the browser lists it.
#[derive(Debug, Deserialize, PartialEq)]
struct Shown {
    title: String,
    body: String,
    tag: String,
    /// The mail a click opens (`null`: the Inbox).
    id: Option<String>,
}

/// The notifications shown for this browser's page (read from any tab of its origin).
async fn shown(b: &Browser) -> Result<Vec<Shown>> {
    b.eval_async(
        "const done = arguments[arguments.length - 1];
         navigator.serviceWorker.getRegistration('/')
           .then(r => r ? r.getNotifications() : [])
           .then(ns => done(ns.map(n => ({ title: n.title, body: n.body, tag: n.tag,
                                            id: n.data ? n.data.id : null }))))
           .catch(e => done({ error: String(e) }));",
        vec![],
    )
    .await
}

/// Waits until the notifications shown are `want` (titles and bodies).
async fn wait_shown(b: &Browser, want: &[(&str, &str)]) -> Result<Vec<Shown>> {
    b.wait_until(&format!("the notifications {want:?}"), || async move {
        let now = shown(b).await?;
        let seen: Vec<(&str, &str)> = now
            .iter()
            .map(|n| (n.title.as_str(), n.body.as_str()))
            .collect();
        Ok(if seen == want {
            Ok(now)
        } else {
            Err(format!("{now:?}"))
        })
    })
    .await
}

/// Checks that no notification is shown within `within` (the test browser takes
/// notifications down by itself after some 20 s; the page must do it at once).
async fn gone_within(b: &Browser, within: Duration, what: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let now = shown(b).await?;
        if now.is_empty() {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{what}: still shown after {within:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn toggle_state(b: &Browser) -> Result<Option<String>> {
    b.attr("#notify-toggle", "data-state").await
}

async fn wait_toggle(b: &Browser, state: &str) -> Result<()> {
    b.wait_until(&format!("#notify-toggle {state}"), || async move {
        let now = toggle_state(b).await?;
        Ok(if now.as_deref() == Some(state) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        })
    })
    .await
}

/// Nora turns notifications on. With another tab in front, Alice mails her: one
/// notification "From alice@…" with the subject. Clicking it (the service worker's real
/// handler) opens that mail in Nora's Inbox, read, though her page showed Sent. Two more
/// mails while out of sight: one notification "2 new mails" listing both, newest first.
/// Nora's page in front again: the notification is gone. A mail while the page is in sight
/// is not announced (nor counted); nor one while out of sight once notifications are turned
/// off (nor counted once on again). A page opened at `/?open=<id>` (a click with no page
/// open) opens that mail. Refused in the browser's settings, the toggle reads "blocked".
pub(crate) async fn new_mail_is_announced_while_the_page_is_out_of_sight(
    w: &mut World,
) -> Result<()> {
    const FIRST: &str = "Tickets for Saturday";
    const SECOND: &str = "The garden party";
    const THIRD: &str = "Bring a chair";
    const IN_SIGHT: &str = "Seen at once";
    const AFTER_IN_SIGHT: &str = "Counted alone";
    const TURNED_OFF: &str = "Not announced";
    const TURNED_ON_AGAIN: &str = "Announced again";
    w.person("alice").await?;
    w.person("nora").await?;
    let (alice_addr, nora_addr) = (w.addr("alice"), w.addr("nora"));
    let other_tab = format!("{}/icon.svg", w.h.app_url());
    let (alice, nora) = (w.get("alice")?, w.get("nora")?);
    let send = |subject: &'static str| {
        let to = nora_addr.clone();
        async move {
            alice
                .compose(&to, "", subject, "See you there. Alice")
                .await?;
            alice
                .wait_recipient(&["sent", "outbox"], subject, &to, "delivered")
                .await
        }
    };

    // Off until Nora asks for it; the browser's permission is given as a person would.
    wait_toggle(nora, "off").await?;
    nora.cdp(
        "Browser.grantPermissions",
        json!({ "permissions": ["notifications"], "origin": w.h.app_url() }),
    )
    .await?;
    nora.click("#notify-toggle").await?;
    wait_toggle(nora, "on").await?;
    nora.open_folder("sent").await?;

    // One mail while another tab is in front.
    nora.open_other_tab(&other_tab).await?;
    send(FIRST).await?;
    let first = wait_shown(nora, &[(&format!("From {alice_addr}"), FIRST)]).await?;
    ensure!(
        first[0].tag == "peermail-new-mail" && first[0].id.is_some(),
        "the notification for one mail names its tag and the mail: {first:?}"
    );
    // The person clicks it: the service worker's handler runs on the real notification.
    nora.eval_in_service_worker(
        "self.registration.getNotifications().then(ns => ns.forEach(n => \
         self.dispatchEvent(new NotificationEvent('notificationclick', { notification: n }))))",
    )
    .await?;
    gone_within(nora, Duration::from_secs(3), "the clicked notification").await?;
    nora.close_other_tab().await?;
    nora.wait_for("[data-folder=inbox].active").await?;
    let pane = nora
        .wait_until("the clicked mail in the reading pane", || async move {
            let pane = nora.pane().await?;
            Ok(match pane {
                Some(p) if p.subject.as_deref() == Some(FIRST) => Ok(p),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
    ensure!(
        pane.from
            .as_deref()
            .is_some_and(|f| f.contains(&alice_addr)),
        "the opened mail is from {:?}",
        pane.from
    );
    ensure!(
        nora.folder_count("inbox").await?.is_empty(),
        "the mail opened from the notification is still counted unread"
    );

    // Two mails while out of sight: one notification sums them up, newest first.
    nora.open_other_tab(&other_tab).await?;
    send(SECOND).await?;
    let second = wait_shown(nora, &[(&format!("From {alice_addr}"), SECOND)]).await?;
    send(THIRD).await?;
    let both = wait_shown(
        nora,
        &[(
            "2 new mails",
            &format!("{alice_addr}: {THIRD}\n{alice_addr}: {SECOND}"),
        )],
    )
    .await?;
    ensure!(
        both[0].id.is_none(),
        "a summary of several mails opens the Inbox, not one mail: {both:?}"
    );
    // Back in sight: the notification goes, and the count starts over.
    nora.close_other_tab().await?;
    gone_within(nora, Duration::from_secs(3), "the page in sight again").await?;

    // In sight, a new mail is not announced.
    send(IN_SIGHT).await?;
    nora.wait_row("inbox", IN_SIGHT).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = shown(nora).await?;
    ensure!(
        now.is_empty(),
        "a mail arriving in sight was announced: {now:?}"
    );
    // Nor was it counted: the next mail out of sight is announced alone.
    nora.open_other_tab(&other_tab).await?;
    send(AFTER_IN_SIGHT).await?;
    wait_shown(nora, &[(&format!("From {alice_addr}"), AFTER_IN_SIGHT)]).await?;
    nora.close_other_tab().await?;
    gone_within(nora, Duration::from_secs(3), "the page in sight again").await?;

    // Turned off: out of sight, a new mail is stored but not announced.
    nora.click("#notify-toggle").await?;
    wait_toggle(nora, "off").await?;
    nora.open_other_tab(&other_tab).await?;
    send(TURNED_OFF).await?;
    nora.wait_idb_count("peermail", "inbox", 6).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = shown(nora).await?;
    ensure!(
        now.is_empty(),
        "a mail was announced with notifications off: {now:?}"
    );
    nora.close_other_tab().await?;
    // On again: the next mail out of sight is announced, alone.
    nora.click("#notify-toggle").await?;
    wait_toggle(nora, "on").await?;
    nora.open_other_tab(&other_tab).await?;
    send(TURNED_ON_AGAIN).await?;
    wait_shown(nora, &[(&format!("From {alice_addr}"), TURNED_ON_AGAIN)]).await?;
    nora.close_other_tab().await?;
    gone_within(nora, Duration::from_secs(3), "the page in sight again").await?;

    // A click with no Peermail page open opens one at /?open=<id>: that mail opens, read,
    // and the address loses the parameter (a reload does not open it again).
    let id = second[0]
        .id
        .clone()
        .context("the notification for one mail names it")?;
    let opening = url::Url::parse_with_params(&format!("{}/", w.h.app_url()), [("open", &id)])?;
    nora.goto(opening.as_str()).await?;
    nora.wait_online().await?;
    nora.wait_until("the mail named in the address opened", || async move {
        let pane = nora.pane().await?;
        Ok(match pane {
            Some(p) if p.subject.as_deref() == Some(SECOND) => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
    .await?;
    let href: String = nora.eval("return location.href", vec![]).await?;
    ensure!(
        !href.contains("open="),
        "the address still asks to open the mail: {href}"
    );
    let unread = nora
        .eval::<bool>(
            &format!(
                "return [...document.querySelectorAll('.message-row.unread')]\
                 .some(r => r.textContent.includes({SECOND:?}))"
            ),
            vec![],
        )
        .await?;
    ensure!(!unread, "the mail opened from the address is still unread");

    // The browser's settings refuse notifications for the page: the toggle says so and
    // cannot be turned on.
    nora.cdp(
        "Browser.setPermission",
        json!({ "permission": { "name": "notifications" }, "setting": "denied",
                "origin": w.h.app_url() }),
    )
    .await?;
    nora.open_folder("inbox").await?;
    wait_toggle(nora, "blocked").await?;
    ensure!(
        nora.attr("#notify-toggle", "disabled").await?.is_some(),
        "the blocked toggle can still be clicked"
    );
    Ok(())
}
