//! Issue 5: a person's storage node — the real `relay node` process, a native WebRTC peer —
//! paired from the web client, kept up to date by the location registry, handed a large
//! attachment by the sender's browser, and read from by its owner's browser.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peermail_e2e::procs::StorageNodeProc;

use super::{noise, same_file, test_file, World};

/// Bob starts `relay node`, which prints a pairing code. In his page's Storage node panel a
/// wrong code is refused with the relay's reason; the right one pairs the node, which signs
/// in and shows as available. Bob closes his browser; Alice mails him a 50 MiB file (above
/// the inline limit): her browser hands it to Bob's node, which pulls it over a data
/// channel (the node prints it kept the whole file) and Alice's page says it is kept on
/// Bob's storage node. Alice closes her browser; Bob opens his and gets the file from his
/// node — byte for byte the original. The node stopped, Bob's panel shows it unavailable;
/// started again from its data directory, it signs in without pairing.
pub(crate) async fn storage_node_pairs_keeps_and_serves_attachments(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "The raw footage";
    const NAME: &str = "footage.raw";
    const MIB: usize = 1024 * 1024;
    let wait = w.h.config.wait;
    w.person("alice").await?;
    w.person("bob").await?;
    let (alice_addr, bob_addr) = (w.addr("alice"), w.addr("bob"));
    let node_addr = bob_addr.replacen('@', "+node@", 1);
    let data_dir = w.h.scratch.path().join("bob-storage-node");
    let mut node = StorageNodeProc::start(&w.h.config, &w.h.relay.url, &data_dir)?;
    let code = node.wait_line("pairing code:", wait)?;

    let bob = w.get("bob")?;
    bob.wait_for("#storage-node #node-status[data-status=\"none\"]")
        .await
        .context("before pairing, Bob's panel says he has no storage node")?;
    // A wrong code (the right one with its last digit changed) is refused.
    let last = code.chars().last().context("an empty code")?;
    let wrong_last = if last == '9' {
        '0'
    } else {
        (last as u8 + 1) as char
    };
    let wrong = format!("{}{wrong_last}", &code[..code.len() - 1]);
    bob.type_into("#pair-code", &wrong).await?;
    bob.click("#pair-node").await?;
    bob.wait_for_text(
        "#pair-error",
        "no storage node is waiting with the pairing code",
    )
    .await?;
    bob.type_into("#pair-code", &code).await?;
    bob.click("#pair-node").await?;
    bob.wait_for_text(
        "#pair-done",
        &format!("Paired: {node_addr} is your storage node"),
    )
    .await?;
    let online = node.wait_line("storage node", wait)?;
    ensure!(
        online == format!("{node_addr} online"),
        "the node printed `storage node {online}`"
    );
    bob.wait_for("#node-status[data-status=\"available\"]")
        .await
        .context("once signed in, Bob's node shows as available")?;

    // Alice mails Bob (away) a large file; her browser hands it to Bob's node.
    w.browsers.get_mut("bob").context("bob")?.close().await?;
    let footage = noise(50 * MIB + 321, 31);
    let path = test_file(w, NAME, &footage)?;
    let alice = w.get("alice")?;
    alice
        .compose_with_files(&bob_addr, SUBJECT, "From the shoot.", &[&path])
        .await?;
    alice
        .wait_recipient(&["outbox"], SUBJECT, &bob_addr, "cached")
        .await?;
    let kept = node.wait_line("kept", Duration::from_secs(300).max(wait))?;
    ensure!(
        kept.contains(&format!("({} bytes) from {alice_addr}", footage.len())),
        "the node printed `kept {kept}`"
    );
    let alice = w.get("alice")?;
    let expect = format!("kept on the storage node of {bob_addr}");
    alice
        .wait_until("Alice's page to say the file is kept on Bob's node", || {
            let expect = expect.clone();
            async move {
                let listed = alice.attachments().await?;
                Ok(if listed.iter().any(|a| a.status.contains(&expect)) {
                    Ok(())
                } else {
                    Err(format!("{listed:?}"))
                })
            }
        })
        .await?;
    w.browsers
        .get_mut("alice")
        .context("alice")?
        .close()
        .await?;

    // Bob, with Alice away, gets the file from his node.
    let bob = w.person("bob").await?;
    bob.open_mail("inbox", SUBJECT).await?;
    bob.wait_attachment(NAME, &["complete"]).await?;
    bob.click(&format!(
        "li.attachment[data-name=\"{NAME}\"] .save-attachment"
    ))
    .await?;
    let saved = bob.wait_saved(NAME).await?;
    same_file(NAME, &saved, &footage)?;

    // The node goes away and comes back from its data directory, without pairing.
    node.kill();
    let bob = w.get("bob")?;
    bob.wait_for("#node-status[data-status=\"unavailable\"]")
        .await
        .context("with the node stopped, Bob's panel shows it unavailable")?;
    let mut node = StorageNodeProc::start(&w.h.config, &w.h.relay.url, &data_dir)?;
    let online = node.wait_line("storage node", wait)?;
    ensure!(
        online == format!("{node_addr} online") && !node.seen.iter().any(|l| l.contains("pairing")),
        "restarted, the node printed {:?}",
        node.seen
    );
    bob.wait_for("#node-status[data-status=\"available\"]")
        .await
        .context("restarted, Bob's node shows as available again")?;
    Ok(())
}
