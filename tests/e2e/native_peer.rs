//! The native peer (`peermail_relay::native`) and the real web client exchange mail over
//! WebRTC data channels, in the test's private network namespace: the native node runs in
//! this process (inside the namespace) and drives the same core `Node` as the browser.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use peermail_core::address::Address;
use peermail_core::identity::Identity;
use peermail_core::mail::{Draft, Priority};
use peermail_core::store::{DeliveryState, DownloadState, InboxRecord};
use peermail_e2e::native::random_bytes;
use peermail_relay::native::{NativeNode, NativeOptions};

use super::{noise, same_file, test_file, World};

/// Polls `probe` every 200 ms until it answers `Ok(Some(_))`, for at most `wait`; the
/// failure names `what` and the last thing seen.
async fn eventually<T, F, Fut>(wait: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<std::result::Result<T, String>>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let last = match probe().await? {
            Ok(v) => return Ok(v),
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {wait:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A native node signs up as `dave`; Alice's browser mails dave a text mail with a small
/// attachment while he is online: it reaches dave's node over a data channel (opened and
/// verified by core), the node pulls the attachment from Alice's browser and its bytes are
/// the original's, and Alice's page shows dave delivered (dave's node answered Alice's offer).
/// Then dave's node, its connections dropped, mails Alice with a 5 MiB file: it offers a new
/// connection, Alice's page shows the mail in her Inbox, from dave, and pulls the file from
/// dave's node (served pacing on the channel's buffer) with the original's bytes. When
/// Alice's page reloads, dave's node closes its side of their connections.
pub(crate) async fn native_peer_exchanges_mail_with_a_browser(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Plans for the storage node";
    const BODY: &str = "Hi Dave, the notes are attached. Alice";
    const REPLY_SUBJECT: &str = "Re: Plans for the storage node";
    const REPLY_BODY: &str = "Got the notes, thanks! Dave (a native peer)";
    // `RUST_LOG=peermail_relay=debug` shows what the native peer does.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    w.person("alice").await?;
    let wait = w.h.config.wait;
    let alice_addr = w.addr("alice");
    let dave_addr = w.addr("dave");
    let alice_address: Address = alice_addr.parse().map_err(|e| anyhow!("{e}"))?;

    let identity = Identity::from_seed(
        Address::new("dave", &w.h.config.domain).map_err(|e| anyhow!("{e}"))?,
        random_bytes()?,
    );
    let mut options = NativeOptions::new(w.h.relay.url.clone(), identity, true);
    options.wait = wait;
    // Its mailbox and attachments in a directory (the durable store an always-on node uses).
    options.data_dir = Some(w.h.scratch.path().join("dave-native-node"));
    let dave = NativeNode::start(options)
        .await
        .context("starting dave's native node")?;
    ensure!(
        dave.address().to_string() == dave_addr,
        "the native node signed up as {}, not {dave_addr}",
        dave.address()
    );

    // A small attachment (three chunks), sent while dave is online.
    let data = noise(150_000 + 17, 5);
    let path = test_file(w, "dave-notes.bin", &data)?;
    w.get("alice")?
        .compose_with_files(&dave_addr, SUBJECT, BODY, &[&path])
        .await?;

    let mail: InboxRecord = eventually(wait, "the mail in dave's inbox", || async {
        let inbox = dave.inbox().await?;
        Ok(match inbox.iter().find(|r| r.mail.subject == SUBJECT) {
            Some(r) => Ok(r.clone()),
            None => Err(format!(
                "{} mails: {:?}",
                inbox.len(),
                inbox.iter().map(|r| &r.mail.subject).collect::<Vec<_>>()
            )),
        })
    })
    .await?;
    ensure!(
        mail.mail.from == alice_address,
        "the mail in dave's inbox is from {}, not {alice_addr}",
        mail.mail.from
    );
    ensure!(
        mail.mail.body == BODY,
        "the mail's body in dave's inbox is {:?}, not {BODY:?}",
        mail.mail.body
    );
    ensure!(
        mail.mail.attachments.len() == 1 && mail.mail.attachments[0].name == "dave-notes.bin",
        "dave's mail lists the attachments {:?}",
        mail.mail
            .attachments
            .iter()
            .map(|a| &a.name)
            .collect::<Vec<_>>()
    );
    let att = mail.mail.attachments[0].clone();
    ensure!(
        att.size == data.len() as u64,
        "the attachment's size is {}, the file's {}",
        att.size,
        data.len()
    );

    // The node pulls the file from Alice's browser, checks it whole, and keeps it.
    let id = att.id;
    eventually(wait, "dave's node to complete the attachment", || async {
        let state = dave
            .query(move |n, _, _| n.download(&id).map(|d| (d.state, d.bytes_done)))
            .await?;
        Ok(match state {
            Some((DownloadState::Complete { .. }, _)) => Ok(()),
            Some((DownloadState::Failed { reason, .. }, _)) => {
                return Err(anyhow!(
                    "dave's node failed to fetch the attachment: {reason}"
                ))
            }
            other => Err(format!("{other:?}")),
        })
    })
    .await?;
    let bytes = dave.attachment(att).await?;
    same_file("the attachment dave's node holds", &bytes, &data)?;

    // It came over a data channel with Alice's browser: the mail and the file's chunks.
    let traffic = dave.traffic(&alice_address);
    ensure!(
        traffic.frames_in >= 4 && traffic.bytes_in >= data.len() as u64,
        "dave's node received only {traffic:?} from Alice over data channels"
    );
    let conns = dave.query(|_, _, rtc| rtc.connections()).await?;
    ensure!(
        conns
            .iter()
            .any(|c| c.peer == alice_address && c.open && !c.offerer),
        "dave's node should have answered Alice's offer and hold an open channel: {conns:?}"
    );

    let alice = w.get("alice")?;
    let status = alice
        .wait_recipient(&["sent", "outbox"], SUBJECT, &dave_addr, "delivered")
        .await?;
    ensure!(
        status.contains(&dave_addr),
        "Alice's status for dave reads {status:?}"
    );

    // Dave's node drops its connections; its answer makes it offer a new one.
    dave.query(|_, _, rtc| rtc.close_all()).await?;
    eventually(wait, "dave's connections to close", || async {
        let conns = dave.query(|_, _, rtc| rtc.connections()).await?;
        Ok(if conns.is_empty() {
            Ok(())
        } else {
            Err(format!("{conns:?}"))
        })
    })
    .await?;

    // Dave's node answers with two 5 MiB files: Alice's page pulls both at once from
    // dave's node, asking for more than its data channel may buffer (4 MiB), so serving
    // them waits for the channel to drain.
    let report = noise(5 * 1024 * 1024 + 321, 9);
    let photos = noise(5 * 1024 * 1024 + 4_567, 13);
    let mut refs = Vec::new();
    for (name, bytes) in [("dave-report.bin", &report), ("dave-photos.bin", &photos)] {
        refs.push(
            dave.attach(name, "application/octet-stream", bytes.clone())
                .await?,
        );
    }
    let reply = dave
        .send(Draft {
            to: vec![alice_address.clone()],
            cc: Vec::new(),
            subject: REPLY_SUBJECT.into(),
            body: REPLY_BODY.into(),
            in_reply_to: Some(mail.mail.message_id.clone()),
            priority: Priority::Normal,
            attachments: refs.clone(),
        })
        .await?;
    let row = alice.wait_row("inbox", REPLY_SUBJECT).await?;
    ensure!(
        row.from.as_deref().is_some_and(|f| f.contains(&dave_addr)),
        "the reply's row in Alice's inbox is from {:?}",
        row.from
    );
    let pane = alice.open_mail("inbox", REPLY_SUBJECT).await?;
    ensure!(
        pane.body.as_deref().is_some_and(|b| b.contains(REPLY_BODY)),
        "Alice's reading pane shows the body {:?}",
        pane.body
    );
    for (name, bytes) in [("dave-report.bin", &report), ("dave-photos.bin", &photos)] {
        // On failure, what dave's node sent and how often it waited for its channel to drain
        // tell a stalled data channel from a node that stopped serving.
        let done = alice
            .wait_attachment(name, &["complete"])
            .await
            .with_context(|| {
                format!(
                    "dave's node over data channels to Alice: {:?}",
                    dave.traffic(&alice_address)
                )
            })?;
        ensure!(
            done.size == Some(bytes.len() as u64) && done.done == Some(bytes.len() as u64),
            "{name} complete in Alice's page with the wrong size: {done:?}"
        );
        alice
            .click(&format!(
                "li.attachment[data-name=\"{name}\"] .save-attachment"
            ))
            .await?;
        let saved = alice.wait_saved(name).await?;
        same_file(&format!("{name} as Alice saved it"), &saved, bytes)?;
    }

    let conns = dave.query(|_, _, rtc| rtc.connections()).await?;
    ensure!(
        conns
            .iter()
            .any(|c| c.peer == alice_address && c.open && c.offerer),
        "dave's node should have offered the new connection to Alice: {conns:?}"
    );
    let traffic = dave.traffic(&alice_address);
    ensure!(
        traffic.bytes_out >= (report.len() + photos.len()) as u64,
        "dave's node sent only {traffic:?} to Alice over data channels"
    );
    println!("    dave's node and Alice's browser over data channels: {traffic:?}");
    // Two windows of 64 chunks (7.5 MiB) asked at once: serving must have waited for the
    // channel's buffered-amount-low event at least once.
    ensure!(
        traffic.drain_waits >= 1,
        "dave's node never waited for its data channel to drain: {traffic:?}"
    );

    eventually(
        wait,
        "dave's node to see its reply delivered and its file fetched",
        || async {
            let out = dave.outgoing().await?;
            let Some(o) = out.iter().find(|o| o.mail.message_id == reply) else {
                return Ok(Err("not in the outgoing mail".to_string()));
            };
            let delivered = o.recipients.iter().any(|r| {
                r.address == alice_address && matches!(r.state, DeliveryState::Delivered { .. })
            });
            let fetched = refs
                .iter()
                .all(|a| o.fetched.contains(&(a.id, alice_address.clone())));
            Ok(if delivered && fetched {
                Ok(())
            } else {
                Err(format!(
                    "recipients {:?}, fetched {:?}",
                    o.recipients, o.fetched
                ))
            })
        },
    )
    .await?;

    // Alice reloads her page: its connections end (it says `Bye` and closes its channels),
    // and dave's node forgets its side of them.
    let before: Vec<String> = dave
        .query(|_, _, rtc| rtc.connections())
        .await?
        .into_iter()
        .filter(|c| c.peer == alice_address)
        .map(|c| c.conn)
        .collect();
    alice.reload().await?;
    eventually(
        wait,
        "dave's node to close the connections Alice's page left",
        || async {
            let conns = dave.query(|_, _, rtc| rtc.connections()).await?;
            Ok(if conns.iter().any(|c| before.contains(&c.conn)) {
                Err(format!("{conns:?}"))
            } else {
                Ok(())
            })
        },
    )
    .await?;
    w.person("alice").await?;
    dave.stop();
    Ok(())
}
