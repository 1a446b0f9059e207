//! The shared conformance suite against the SQLite backend.

use std::sync::Arc;

use gantry_store::Backend;
use gantry_store_sqlite::{Options, SqliteBackend};

gantry_store::conformance_tests!({
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let backend = SqliteBackend::open(
        &dir,
        Options {
            max_receives: 3,
            ..Options::default()
        },
    )
    .expect("open");
    Arc::new(backend) as Arc<dyn Backend>
});
