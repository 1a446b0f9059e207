//! The shared conformance suite against the SQLite backend.

use std::sync::Arc;

use gantry_store::Backend;
use gantry_store_sqlite::{Options, SqliteBackend};

gantry_store::conformance_tests!(async {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let backend = SqliteBackend::open(&dir, Options::default()).expect("open");
    Arc::new(backend) as Arc<dyn Backend>
});
