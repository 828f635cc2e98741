//! Archiving: a received mail moves out of the Inbox into Archive and back, stays where it
//! was put after a reload, and an archived unread mail is not counted as the Inbox's.

use anyhow::{Context, Result};

use peermail_e2e::Browser;

use super::{no_row_with, World};

/// Waits until the Inbox's unread count reads `count` (empty for none) and the page's
/// title says as much.
async fn wait_unread(b: &Browser, count: &str) -> Result<()> {
    let title = if count.is_empty() {
        "Peermail".to_string()
    } else {
        format!("({count}) Peermail")
    };
    let title = title.as_str();
    b.wait_until(
        &format!("the Inbox's unread count to read {count:?}"),
        || async move {
            let shown = b.folder_count("inbox").await?;
            let page: String = b.eval("return document.title", vec![]).await?;
            Ok(if shown == count && page == title {
                Ok(())
            } else {
                Err(format!("count {shown:?}, title {page:?}"))
            })
        },
    )
    .await
}

/// Alice mails Fay three times. Fay opens the middle mail and archives it: it leaves her
/// Inbox, the next mail opens in its place (read), and Archive lists it, also after a
/// reload. Marked unread there, it is not counted in the Inbox's unread count (nor the
/// title's), Mark all read in the Inbox leaves it unread, and a reload keeps it in
/// Archive, unread. A page opened at `/?open=<id>` (a notification's click) opens it in
/// Archive. "Move to Inbox" brings it back, and Archive reads "Nothing archived.", also
/// after a reload.
pub(crate) async fn people_archive_mail(w: &mut World) -> Result<()> {
    const OLDEST: &str = "Receipts from March";
    const MIDDLE: &str = "Holiday photos plan";
    const NEWEST: &str = "Quarterly figures";
    w.mail_in_order("alice", "fay", &[OLDEST, MIDDLE, NEWEST], "For your files.")
        .await?;
    let fay = w.get("fay")?;
    wait_unread(fay, "3").await?;

    // Archived, the mail leaves the Inbox; the next one (older) opens in its place, read.
    fay.open_mail("inbox", MIDDLE).await?;
    wait_unread(fay, "2").await?;
    fay.click("#archive-mail").await?;
    fay.wait_for_text("#reading-pane .subject", OLDEST).await?;
    fay.wait_no_row("inbox", MIDDLE).await?;
    fay.wait_row_unread(OLDEST, false).await?;
    wait_unread(fay, "1").await?;
    fay.wait_row("archive", MIDDLE).await?;
    no_row_with(fay, "archive", &[OLDEST, NEWEST]).await?;
    // Kept so.
    fay.reload().await?;
    fay.wait_online().await?;
    fay.wait_row("archive", MIDDLE).await?;
    fay.wait_row_unread(MIDDLE, false).await?;
    fay.wait_no_row("inbox", MIDDLE).await?;

    // Marked unread in Archive: unread there, not counted as the Inbox's.
    fay.open_mail("archive", MIDDLE).await?;
    fay.wait_for("#unarchive-mail").await?;
    fay.click("#mark-unread").await?;
    fay.wait_row_unread(MIDDLE, true).await?;
    wait_unread(fay, "1").await?;
    // Mark all read is the Inbox's: the archived mail stays unread.
    fay.open_folder("inbox").await?;
    fay.click("#mark-all-read").await?;
    wait_unread(fay, "").await?;
    fay.wait_row("archive", MIDDLE).await?;
    fay.wait_row_unread(MIDDLE, true).await?;

    // A reload keeps each mail where it was put, and as it was.
    fay.reload().await?;
    fay.wait_online().await?;
    fay.wait_row("inbox", NEWEST).await?;
    no_row_with(fay, "inbox", &[MIDDLE]).await?;
    wait_unread(fay, "").await?;
    fay.wait_row("archive", MIDDLE).await?;
    fay.wait_row_unread(MIDDLE, true).await?;

    // A notification's click (a page opened at /?open=<id>) opens it where it is now.
    let id = fay
        .wait_row("archive", MIDDLE)
        .await?
        .id
        .context("an Archive row has its Message-ID")?;
    let opening = url::Url::parse_with_params(&format!("{}/", w.h.app_url()), [("open", &id)])?;
    fay.goto(opening.as_str()).await?;
    fay.wait_online().await?;
    fay.wait_for_text("#reading-pane .subject", MIDDLE).await?;
    fay.wait_for("[data-folder=archive].active").await?;
    fay.wait_row_unread(MIDDLE, false).await?;

    // Moved back, it is the Inbox's again (read: it was opened), and Archive is empty.
    fay.click("#unarchive-mail").await?;
    fay.wait_for_text(".list-pane .empty", "Nothing archived.")
        .await?;
    fay.wait_row("inbox", MIDDLE).await?;
    fay.wait_row_unread(MIDDLE, false).await?;
    fay.reload().await?;
    fay.wait_online().await?;
    fay.wait_row("inbox", MIDDLE).await?;
    fay.open_folder("archive").await?;
    fay.wait_for_text(".list-pane .empty", "Nothing archived.")
        .await?;
    Ok(())
}
