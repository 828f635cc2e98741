//! Saving a large attachment: the page hands the decrypted file to the browser a few
//! megabytes at a time instead of holding all of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peermail_e2e::browser::renderer_rss;
use peermail_e2e::Browser;

use super::{noise, same_file, test_file, World};

const MIB: usize = 1024 * 1024;

/// Alice mails Erin (offline) a 256 MiB file, which stays on Alice's node (she leaves the
/// Compose form while the file is encrypted: the mail is sent all the same), and then saves
/// it from her Outbox. While her page decrypts and checks the file and hands it to the browser,
/// its renderer grows by less than half the file, and the saved file is the original. (When
/// the page collected every decrypted chunk before it made the file, the renderer grew by
/// twice the file: 405 MiB for 192. Handing it over in parts, it grows by about 60–70 MiB
/// whatever the file's size: the buffers the reads of stored segments leave, until V8
/// collects them.)
pub(crate) async fn a_large_file_is_saved_without_holding_it_in_the_page(
    w: &mut World,
) -> Result<()> {
    // Erin has an account, and is away.
    w.person("erin").await?;
    w.close("erin").await?;
    let erin = w.addr("erin");
    w.person("alice").await?;
    // Sealing the file at Send and reading it back at Save take seconds each on this
    // machine; a loaded one may need far more than the usual wait.
    let usual = w.get("alice")?.wait;
    w.browsers.get_mut("alice").expect("alice").wait = usual.max(Duration::from_secs(120));
    let result = save_a_large_file(w, &erin).await;
    w.browsers.get_mut("alice").expect("alice").wait = usual;
    result
}

/// Opens Drafts and checks that it lists no draft.
async fn no_drafts(b: &Browser) -> Result<()> {
    b.open_folder("drafts").await?;
    b.wait_for_text(".list-pane .pane-title", "Drafts").await?;
    let drafts = b.texts("#message-list .draft-row").await?;
    let count = b.folder_count("drafts").await?;
    ensure!(
        drafts.is_empty() && count.is_empty(),
        "Drafts lists {drafts:?} (count {count:?})"
    );
    Ok(())
}

async fn save_a_large_file(w: &World, erin: &str) -> Result<()> {
    const NAME: &str = "archive.bin";
    const SUBJECT: &str = "The whole archive";
    const SIZE: usize = 256 * MIB + 4321;
    let data = noise(SIZE, 33);
    let path = test_file(w, NAME, &data)?;
    let alice = w.get("alice")?;
    // Alice presses Send and, while the file is still being encrypted, leaves the form
    // for her Inbox: the mail goes all the same, and is in no folder of drafts meanwhile.
    alice
        .fill_compose(erin, "", SUBJECT, "All of it.", &[&path])
        .await?;
    let outbox = alice.folder_count("outbox").await?;
    alice.click("#compose-send").await?;
    alice.wait_for("#compose-progress").await?;
    alice.open_folder("inbox").await?;
    alice.wait_gone("#compose-subject").await?;
    // Left while the file is encrypted (the mail is not in the Outbox yet), and not in
    // Drafts meanwhile.
    let now = alice.folder_count("outbox").await?;
    ensure!(
        now == outbox,
        "the Outbox counted {now:?} mails as the form was left ({outbox:?} before): the file \
         was encrypted already, so the form was not left while it was"
    );
    no_drafts(alice).await?;
    alice
        .wait_recipient(&["outbox"], SUBJECT, erin, "cached")
        .await?;
    std::fs::remove_file(&path)?;
    no_drafts(alice).await?;
    alice
        .wait_recipient(&["outbox"], SUBJECT, erin, "cached")
        .await?;
    alice.wait_attachment(NAME, &["sent"]).await?;

    // What the page holds at rest, after a garbage collection.
    alice
        .cdp("HeapProfiler.collectGarbage", serde_json::json!({}))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let profile = alice.profile().to_path_buf();
    let before = renderer_rss(&profile)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<u64> {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(renderer_rss(&profile)?);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(peak)
        })
    };
    let saved = async {
        alice
            .click(&format!(
                "li.attachment[data-name=\"{NAME}\"] .save-attachment"
            ))
            .await?;
        alice.wait_saved(NAME).await
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let peak = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?
        .context("sampling the renderer's memory")?;
    let saved = saved?;
    let _ = std::fs::remove_file(alice.downloads_dir().join(NAME));
    same_file(NAME, &saved, &data)?;
    let grew = peak.saturating_sub(before);
    println!(
        "    saving {} MiB: the page's renderer grew by {} MiB (from {} MiB)",
        SIZE / MIB,
        grew / MIB as u64,
        before / MIB as u64
    );
    ensure!(
        grew < (SIZE / 2) as u64,
        "saving the {} MiB file grew the page's renderer by {} MiB (from {} MiB): \
         the page held the file instead of handing it to the browser in parts",
        SIZE / MIB,
        grew / MIB as u64,
        before / MIB as u64
    );
    Ok(())
}
