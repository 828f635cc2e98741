//! Deleting mail: a received mail goes with its files, a sent one from Sent; both stay
//! deleted after a reload; the sender of a mail deleted before its file was fetched hears it.

use anyhow::{ensure, Context, Result};

use super::{no_row_with, noise, test_file, World};

/// The page's IndexedDB database.
const DB: &str = "peermail";

/// Alice mails Bob twice, the second time a file; once he has it, Bob deletes that mail.
/// The page asks first (and Cancel keeps it); confirmed, the mail leaves his Inbox (the
/// next one opens in its place, marked read) and his browser drops the file's download
/// record and stored chunks. A reload does not bring it back. He marks the other mail
/// unread again: so it shows, also after a reload; a search of the list finds it. Alice then deletes her copy
/// from Sent: it is gone, also after a reload, and Bob's deletion did not touch it before
/// that.
pub(crate) async fn people_delete_mail_for_good(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Old minutes to throw away";
    const KEEP: &str = "Minutes to keep";
    const OTHER: &str = "Tickets for Saturday";
    w.person("alice").await?;
    w.person("bob").await?;
    let data = noise(1_500_000, 21);
    let path = test_file(w, "minutes.bin", &data)?;
    let bob_addr = w.addr("bob");
    w.get("alice")?
        .compose(&bob_addr, "", OTHER, "Two seats?")
        .await?;
    w.get("alice")?
        .compose(&bob_addr, "", KEEP, "Keep this one.")
        .await?;
    w.get("alice")?
        .compose_with_files(&bob_addr, SUBJECT, "Please delete.", &[&path])
        .await?;
    let (alice, bob) = (w.get("alice")?, w.get("bob")?);
    bob.open_mail("inbox", SUBJECT).await?;
    bob.wait_attachment("minutes.bin", &["complete"]).await?;
    let downloads = bob.idb_count(DB, "downloads").await?;
    let segments = bob.idb_count(DB, "segments").await?;

    // Cancel keeps it.
    bob.click("#delete-mail").await?;
    bob.wait_for_text("#delete-confirm", "for good").await?;
    bob.click("#delete-no").await?;
    bob.wait_gone("#delete-confirm").await?;
    bob.wait_row("inbox", SUBJECT).await?;

    bob.open_mail("inbox", SUBJECT).await?;
    bob.click("#delete-mail").await?;
    bob.wait_for("#delete-yes").await?;
    bob.click("#delete-yes").await?;
    // The next mail of the list opens in its place, read.
    bob.wait_for_text("#reading-pane .subject", KEEP).await?;
    bob.wait_no_row("inbox", SUBJECT).await?;
    bob.wait_row_unread(KEEP, false).await?;
    bob.wait_until("Bob's browser to drop the file", || async move {
        let d = bob.idb_count(DB, "downloads").await?;
        let s = bob.idb_count(DB, "segments").await?;
        Ok(if d + 1 == downloads && s + 2 == segments {
            Ok(())
        } else {
            Err(format!(
                "downloads {downloads} → {d}, segments {segments} → {s} (want one and two fewer)"
            ))
        })
    })
    .await?;
    bob.reload().await?;
    bob.wait_online().await?;
    bob.wait_row("inbox", KEEP).await?;
    no_row_with(bob, "inbox", &[SUBJECT])
        .await
        .context("after a reload")?;

    // Marked unread, the mail shows so in the list (the pane goes back to it), also after
    // a reload.
    bob.open_mail("inbox", KEEP).await?;
    bob.click("#mark-unread").await?;
    bob.wait_gone("#reading-pane .subject").await?;
    for when in ["at once", "after a reload"] {
        if when != "at once" {
            bob.reload().await?;
            bob.wait_online().await?;
        }
        bob.wait_row_unread(KEEP, true)
            .await
            .with_context(|| format!("{KEEP:?} marked unread, {when}"))?;
    }

    // The search above the list narrows it to matching mail (every word, any case).
    bob.wait_row("inbox", OTHER).await?;
    bob.type_into("#search", "keep THIS").await?;
    bob.wait_until("the search to narrow the list", || async move {
        let rows = bob.rows().await?;
        Ok(
            if !rows.is_empty() && rows.iter().all(|r| r.subject.as_deref() == Some(KEEP)) {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            },
        )
    })
    .await?;
    bob.clear_input("#search").await?;
    bob.type_into("#search", "words no mail has").await?;
    bob.wait_for_text(".list-pane .empty", "No mail here matches")
        .await?;
    bob.clear_input("#search").await?;
    bob.wait_row("inbox", KEEP).await?;
    bob.wait_row("inbox", OTHER).await?;

    // "Mark all read" clears every unread mail of the Inbox (KEEP was marked unread above).
    ensure!(
        bob.rows().await?.iter().any(|r| r.unread),
        "nothing unread before Mark all read"
    );
    bob.click("#mark-all-read").await?;
    bob.wait_until("every mail of the Inbox to read as read", || async move {
        let rows = bob.rows().await?;
        let count = bob.folder_count("inbox").await?;
        Ok(if rows.iter().all(|r| !r.unread) && count.is_empty() {
            Ok(())
        } else {
            Err(format!("count {count:?}, rows {rows:?}"))
        })
    })
    .await?;
    bob.wait_gone("#mark-all-read").await?;

    // Alice's copy is hers to delete.
    alice.open_mail("sent", SUBJECT).await?;
    alice.click("#delete-mail").await?;
    let text = alice.wait_for_text("#delete-confirm", "from Sent").await?;
    ensure!(
        !text.contains("has not fetched"),
        "Bob has the file, yet the confirmation warns: {text}"
    );
    alice.click("#delete-yes").await?;
    alice.wait_for_text("#reading-pane .subject", KEEP).await?;
    alice.wait_no_row("sent", SUBJECT).await?;
    alice.reload().await?;
    alice.wait_online().await?;
    alice.wait_row("sent", KEEP).await?;
    no_row_with(alice, "sent", &[SUBJECT])
        .await
        .context("after a reload")?;
    deleted_before_fetching(w).await
}

/// Alice mails Bob (offline) a file too large for the relay to keep, and leaves; Bob comes
/// back, gets the mail from the relay, and deletes it without the file (Alice is away, so
/// nothing can fetch it): the page says Alice will be told. When Alice is back, her Sent
/// line for the file says Bob deleted the mail without fetching it (no longer "still
/// needed by" him).
async fn deleted_before_fetching(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Slides you may not want";
    let bob_addr = w.addr("bob");
    // Above the relay's default inline limit (8 MiB): the file stays in Alice's browser.
    let data = noise(8_500_000, 22);
    let path = test_file(w, "slides.bin", &data)?;
    w.close("bob").await?;
    let alice = w.get("alice")?;
    alice
        .compose_with_files(&bob_addr, SUBJECT, "Only if you want them.", &[&path])
        .await?;
    alice
        .wait_recipient(&["outbox"], SUBJECT, &bob_addr, "cached")
        .await?;
    w.close("alice").await?;

    let bob = w.person("bob").await?;
    bob.open_mail("inbox", SUBJECT).await?;
    bob.click("#delete-mail").await?;
    let text = bob
        .wait_for_text("#delete-confirm", "no longer need slides.bin")
        .await?;
    ensure!(
        text.contains(&w.addr("alice")),
        "the confirmation does not name the sender: {text}"
    );
    let bob = w.get("bob")?;
    bob.click("#delete-yes").await?;
    bob.wait_no_row("inbox", SUBJECT).await?;

    let alice = w.person("alice").await?;
    alice.open_mail("sent", SUBJECT).await?;
    let a = alice
        .wait_attachment_status("deleted the mail without fetching it")
        .await?;
    ensure!(
        a.status.contains(&bob_addr) && !a.status.contains("still needed"),
        "Alice's line for the file reads {:?}",
        a.status
    );
    Ok(())
}
