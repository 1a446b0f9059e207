//! The data dir and its files are the owner's alone, whatever the umask
//! and whatever modes an earlier version left.

use std::os::unix::fs::PermissionsExt;

use gantry_store::{Key, Precondition, Store, Write};
use gantry_store_sqlite::{Options, SqliteBackend};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_data_dir_is_0700_and_its_files_0600() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("data");
    // As an older version (or a loose umask) left them.
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    {
        let backend = SqliteBackend::open(&dir, Options::default()).expect("open");
        backend
            .write(vec![Write::put(
                Key::new("p", "s"),
                b"v".to_vec(),
                Precondition::None,
            )])
            .await
            .expect("write");
        assert_eq!(mode(&dir), 0o700);
        for file in ["gantry.db", "gantry.db-wal", "gantry.lock"] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
    }
    std::fs::set_permissions(
        dir.join("gantry.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let _reopened = SqliteBackend::open(&dir, Options::default()).expect("reopen");
    assert_eq!(mode(&dir.join("gantry.db")), 0o600);
}
