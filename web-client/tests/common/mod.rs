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

/// Creates the database `name` as schema `version` made it, with one JSON string `json`
/// under `key` in `store`, and closes it.
#[allow(dead_code)] // not every test file that shares this module uses it
pub async fn old_database_with(name: &str, version: u32, store: &str, key: &str, json: String) {
    let db = old_database(name, version).await;
    put_record(&db, store, key, json.into()).await;
    db.close();
}

/// Writes `value` under `key` in `store` of `db`, in a transaction of its own.
#[allow(dead_code)] // not every test file that shares this module uses it
pub async fn put_record(db: &Database, store: &str, key: &str, value: wasm_bindgen::JsValue) {
    use indexed_db_futures::transaction::TransactionMode;
    let tx = db
        .transaction(store)
        .with_mode(TransactionMode::Readwrite)
        .build()
        .unwrap();
    tx.object_store(store)
        .unwrap()
        .put(value)
        .with_key(key.to_string())
        .primitive()
        .unwrap()
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
