//! Keyboard shortcuts: the keys of other web mail clients move through the list and act on
//! the open mail, and keys typed into a field stay text.

use anyhow::{ensure, Result};

use peermail_e2e::Browser;

use super::World;

/// Waits until the reading pane shows the mail `subject`.
async fn wait_open(b: &Browser, subject: &str) -> Result<()> {
    b.wait_for_text("#reading-pane .subject", subject)
        .await
        .map(|_| ())
}

/// Alice mails Gus twice. With the keyboard alone, Gus opens the newest mail (`j`), the
/// next (`j`) and back (`k`), archives the open one (`e`: the other opens in its place),
/// asks to delete (`#`), marks unread (Shift+U), replies (`r`) and composes (`c`). `/`
/// puts the cursor in the search field, and the keys typed there are text, as in the
/// Compose form: nothing else happens.
pub(crate) async fn people_use_keyboard_shortcuts(w: &mut World) -> Result<()> {
    const OLDER: &str = "Bike repair on Tuesday";
    const NEWER: &str = "Choir rehearsal moved";
    w.mail_in_order("alice", "gus", &[OLDER, NEWER], "Just so you know.")
        .await?;
    let gus = w.get("gus")?;

    // j opens the first mail of the list, then the next; k goes back.
    gus.press("j").await?;
    wait_open(gus, NEWER).await?;
    gus.wait_row_unread(NEWER, false).await?;
    gus.press("j").await?;
    wait_open(gus, OLDER).await?;
    gus.press("k").await?;
    wait_open(gus, NEWER).await?;

    // e archives the open mail; the other one opens in its place.
    gus.press("e").await?;
    wait_open(gus, OLDER).await?;
    gus.wait_no_row("inbox", NEWER).await?;
    gus.wait_row("archive", NEWER).await?;
    gus.open_mail("inbox", OLDER).await?;

    // / puts the cursor in the search field; what is typed there is text.
    gus.press("/").await?;
    // Matching no mail, the list empties as they are typed: the field keeps the cursor, and
    // `#` there is text, not a deletion.
    gus.press("je#").await?;
    gus.wait_until("the keys to be typed into the search", || async move {
        let typed = gus.input_value("#search").await?;
        Ok(if typed == "je#" {
            Ok(())
        } else {
            Err(format!("#search holds {typed:?}"))
        })
    })
    .await?;
    ensure!(
        gus.texts("#delete-confirm").await?.is_empty(),
        "# typed into the search asked to delete the mail"
    );
    wait_open(gus, OLDER).await?;
    gus.clear_input("#search").await?;
    gus.open_mail("inbox", OLDER).await?;

    // # asks to delete the open mail (the page asks first, as for the button).
    gus.press("#").await?;
    gus.wait_for("#delete-confirm").await?;
    gus.click("#delete-no").await?;
    gus.wait_gone("#delete-confirm").await?;

    // Shift+U marks it unread and goes back to the list.
    gus.press("U").await?;
    gus.wait_gone("#reading-pane .subject").await?;
    gus.wait_row_unread(OLDER, true).await?;

    // r replies to the open mail; what is typed in Compose is text.
    gus.press("j").await?;
    wait_open(gus, OLDER).await?;
    gus.press("r").await?;
    gus.wait_for("#compose-subject").await?;
    let subject = gus.input_value("#compose-subject").await?;
    ensure!(
        subject == format!("Re: {OLDER}"),
        "r opened Compose with the subject {subject:?}"
    );
    // While Compose is open, keys outside its fields do nothing: the reply stays.
    gus.press("jkc").await?;
    ensure!(
        gus.input_value("#compose-subject").await? == format!("Re: {OLDER}"),
        "keys pressed beside the reply replaced or closed it"
    );
    gus.click("#compose-cancel").await?;
    gus.wait_gone("#compose-subject").await?;

    // c composes a new mail; the keys typed into it stay there.
    gus.press("c").await?;
    gus.wait_for("#compose-subject").await?;
    gus.type_into("#compose-subject", "jk ce").await?;
    ensure!(
        gus.input_value("#compose-subject").await? == "jk ce",
        "the keys typed into Compose's subject did not stay text"
    );
    gus.click("#compose-cancel").await?;
    gus.wait_gone("#compose-subject").await?;
    Ok(())
}
