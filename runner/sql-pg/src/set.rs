//! A directory of plain SQL migrations: `NNN_name.up.sql` and, to make it
//! reversible, `NNN_name.down.sql`, applied in the order of their numbers.
//! Each up file may say in its leading comments whether the schema it
//! leaves still serves the previous release (an "expand" change: a new
//! nullable column, table or index), which decides what a rollback keeps:
//!
//! ```sql
//! -- gantry: compatible
//! ALTER TABLE orders ADD COLUMN note text;
//! ```
//!
//! Without the header a migration counts as incompatible: its `down` runs
//! on rollback. Every error names the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The largest migration file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The most migrations in one directory.
pub const MAX_MIGRATIONS: usize = 1000;

/// One migration: its up file and, when it has one, its down file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Its number.
    pub version: u64,
    /// The part of the file name after the number, e.g. `add_note`.
    pub name: String,
    /// `NNN_name`, as the files start: how evidence and errors name it.
    pub id: String,
    /// The up file's SQL.
    pub up: String,
    /// The sha256 of the up file, in hex: what must match upstream and
    /// what an applied migration may never change.
    pub checksum: String,
    /// The down file's SQL, when there is one.
    pub down: Option<String>,
    /// Whether the previous release runs on the schema this leaves.
    pub compatible: bool,
}

/// A directory's migrations, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSet {
    /// The directory.
    pub dir: PathBuf,
    /// By version, ascending.
    pub migrations: Vec<Migration>,
}

/// Why a directory is not a migration set: the file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetError {
    /// The file (or the directory) at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl std::fmt::Display for SetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for SetError {}

fn problem(path: &Path, problem: impl Into<String>) -> SetError {
    SetError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Which file of a migration a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// `NNN_name.up.sql` or `NNN_name.down.sql`: version, name, direction.
fn parse_name(file: &str) -> Option<(u64, &str, Direction)> {
    let (stem, direction) = if let Some(stem) = file.strip_suffix(".up.sql") {
        (stem, Direction::Up)
    } else {
        (file.strip_suffix(".down.sql")?, Direction::Down)
    };
    let (number, name) = stem.split_once('_')?;
    let valid_name = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if number.is_empty() || number.len() > 9 || !number.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    valid_name.then_some((number.parse().ok()?, name, direction))
}

/// Whether `sql`'s leading comments declare it compatible; an unknown
/// declaration is an error.
fn compatibility(path: &Path, sql: &str) -> Result<bool, SetError> {
    for line in sql.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break;
        };
        let Some(said) = comment.trim().strip_prefix("gantry:") else {
            continue;
        };
        return match said.trim() {
            "compatible" => Ok(true),
            "incompatible" => Ok(false),
            other => Err(problem(
                path,
                format!(
                    "`-- gantry: {other}` is not a declaration: write `-- gantry: compatible` (the previous release runs on the new schema) or `-- gantry: incompatible`"
                ),
            )),
        };
    }
    Ok(false)
}

/// The text of `path`, at most [`MAX_FILE_BYTES`], as UTF-8.
fn read_sql(path: &Path) -> Result<(String, String), SetError> {
    let size = std::fs::metadata(path)
        .map_err(|e| problem(path, format!("cannot read: {e}")))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(problem(
            path,
            format!("{size} bytes; a migration file may have {MAX_FILE_BYTES}"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| problem(path, format!("cannot read: {e}")))?;
    let checksum = hex::encode(Sha256::digest(&bytes));
    let text = String::from_utf8(bytes).map_err(|_| problem(path, "not UTF-8 text"))?;
    if text.contains('\0') {
        return Err(problem(path, "contains a NUL byte"));
    }
    Ok((text, checksum))
}

impl MigrationSet {
    /// Reads `dir`: every `*.sql` file must be a migration's up or down
    /// file; other files (a README) are left alone.
    pub fn read(dir: &Path) -> Result<MigrationSet, SetError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| problem(dir, format!("cannot read the migrations directory: {e}")))?;
        let mut files: BTreeMap<u64, (String, Option<PathBuf>, Option<PathBuf>)> = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| problem(dir, format!("cannot list: {e}")))?;
            let path = entry.path();
            let Some(file) = entry.file_name().to_str().map(str::to_string) else {
                return Err(problem(&path, "the file name is not UTF-8"));
            };
            if !file.ends_with(".sql") {
                continue;
            }
            let Some((version, name, direction)) = parse_name(&file) else {
                return Err(problem(
                    &path,
                    "not a migration file name: NNN_name.up.sql or NNN_name.down.sql (digits, then lowercase letters, digits and _)",
                ));
            };
            let slot = files
                .entry(version)
                .or_insert_with(|| (name.to_string(), None, None));
            if slot.0 != name {
                return Err(problem(
                    &path,
                    format!("version {version} is also migration `{}`", slot.0),
                ));
            }
            let side = match direction {
                Direction::Up => &mut slot.1,
                Direction::Down => &mut slot.2,
            };
            if let Some(other) = side.replace(path.clone()) {
                return Err(problem(
                    &path,
                    format!("version {version} is also {}", other.display()),
                ));
            }
        }
        if files.len() > MAX_MIGRATIONS {
            return Err(problem(
                dir,
                format!("{} migrations; at most {MAX_MIGRATIONS}", files.len()),
            ));
        }
        let mut migrations = Vec::with_capacity(files.len());
        for (version, (name, up, down)) in files {
            let Some(up) = up else {
                let down = down.unwrap_or_else(|| dir.to_path_buf());
                return Err(problem(&down, "a down file without its up file"));
            };
            let (up_sql, checksum) = read_sql(&up)?;
            let down_sql = match &down {
                Some(path) => Some(read_sql(path)?.0),
                None => None,
            };
            migrations.push(Migration {
                id: file_stem(&up),
                version,
                name,
                compatible: compatibility(&up, &up_sql)?,
                up: up_sql,
                checksum,
                down: down_sql,
            });
        }
        Ok(MigrationSet {
            dir: dir.to_path_buf(),
            migrations,
        })
    }

    /// The sha256 of the whole set (each migration's id and checksum, in
    /// order), in hex: one value to compare with what ran upstream.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        for m in &self.migrations {
            hash.update(format!("{} {}\n", m.id, m.checksum));
        }
        hex::encode(hash.finalize())
    }
}

/// `NNN_name` of `NNN_name.up.sql`.
fn file_stem(up: &Path) -> String {
    up.file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_suffix(".up.sql"))
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        dir
    }

    #[test]
    fn files_are_read_in_version_order_with_checksums_and_headers() {
        let dir = dir_with(&[
            ("010_drop_legacy.up.sql", "DROP TABLE legacy;"),
            ("010_drop_legacy.down.sql", "CREATE TABLE legacy (id int);"),
            (
                "2_add_note.up.sql",
                "-- adds a note\n-- gantry: compatible\nALTER TABLE t ADD note text;",
            ),
            ("README.md", "not SQL"),
        ]);
        let set = MigrationSet::read(dir.path()).expect("read");
        let ids: Vec<&str> = set.migrations.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["2_add_note", "010_drop_legacy"]);
        let (note, drop) = (&set.migrations[0], &set.migrations[1]);
        assert!(note.compatible && note.down.is_none());
        assert!(!drop.compatible);
        assert_eq!(drop.down.as_deref(), Some("CREATE TABLE legacy (id int);"));
        assert_eq!(
            drop.checksum,
            hex::encode(Sha256::digest(b"DROP TABLE legacy;"))
        );
        let again = MigrationSet::read(dir.path()).expect("read");
        assert_eq!(set.digest(), again.digest());
        std::fs::write(
            dir.path().join("010_drop_legacy.up.sql"),
            "DROP TABLE legacy CASCADE;",
        )
        .expect("edit");
        assert_ne!(
            set.digest(),
            MigrationSet::read(dir.path()).expect("read").digest()
        );
    }

    #[test]
    fn a_header_after_the_first_statement_does_not_count() {
        let dir = dir_with(&[(
            "1_a.up.sql",
            "CREATE TABLE a (id int);\n-- gantry: compatible\n",
        )]);
        let set = MigrationSet::read(dir.path()).expect("read");
        assert!(!set.migrations[0].compatible);
    }

    #[test]
    fn every_bad_directory_is_an_error_naming_the_file() {
        // The files, which of them the error may name (read order is the
        // directory's), and what it says.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
        let cases: [Case; 6] = [
            (
                &[("1_a.up.sql", ""), ("01_b.up.sql", "")],
                &["1_a.up.sql", "01_b.up.sql"],
                "is also migration",
            ),
            (&[("3_c.down.sql", "")], &["3_c.down.sql"], "without its up"),
            (
                &[("x_a.up.sql", "")],
                &["x_a.up.sql"],
                "not a migration file name",
            ),
            (
                &[("1_Add.up.sql", "")],
                &["1_Add.up.sql"],
                "not a migration file name",
            ),
            (
                &[("1_a.up.sql", "-- gantry: maybe\n")],
                &["1_a.up.sql"],
                "gantry: maybe",
            ),
            (&[("1_a.up.sql", "\u{0}")], &["1_a.up.sql"], "NUL"),
        ];
        for (files, named, says) in cases {
            let dir = dir_with(files);
            let error = MigrationSet::read(dir.path()).expect_err(says);
            let text = error.to_string();
            assert!(named.iter().any(|f| error.path.ends_with(f)), "{text}");
            assert!(text.contains(says), "{text}");
        }
        let missing = MigrationSet::read(Path::new("/no/such/dir")).expect_err("missing");
        assert!(missing.to_string().starts_with("/no/such/dir"), "{missing}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = dir_with(&[]);
        let big = "x".repeat(MAX_FILE_BYTES as usize + 1);
        std::fs::write(dir.path().join("1_big.up.sql"), big).expect("write");
        let error = MigrationSet::read(dir.path()).expect_err("too big");
        assert!(error.to_string().contains("1_big.up.sql"), "{error}");
    }
}
