//! Shared by the IndexedDB test files.

use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;

/// The object stores of schema `version` (1 to 6), as that version created them.
fn stores_of(version: u32) -> Vec<&'static str> {
    let steps: [&[&'static str]; 6] = [
        &["identity", "inbox", "outgoing", "contacts"],
        &["keys"],
        &["held"],
        &["downloads", "chunks", "chunk_lists"],
        &["groups"],
        &["segments"],
    ];
    steps[..version as usize].concat()
}

/// Creates the database `name` as schema `version` of the app made it, opened (the caller
/// writes what that version stored, then closes it before the app opens it).
pub async fn old_database(name: &str, version: u32) -> Database {
    Database::open(name)
        .with_version(version)
        .with_on_upgrade_needed(move |_, db| {
            for n in stores_of(version) {
                db.create_object_store(n).build()?;
            }
            Ok(())
        })
        .await
        .expect("create an old-schema database")
}
