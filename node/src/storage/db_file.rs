//! A database file written whole or not at all: `gen-data` and `import` build
//! into a temporary file next to the target and rename it into place only
//! once it is complete, so an interrupted run never leaves a half-written
//! database where a node would open it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Builds the database `db` with `build`, which is handed the temporary path
/// to write (`db` + `tmp_suffix`). Refuses an existing `db` unless `force`.
pub fn write_whole<T>(
    db: &Path,
    tmp_suffix: &str,
    force: bool,
    build: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if db.exists() && !force {
        bail!("{} already exists; pass --force to replace it", db.display());
    }
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = with_suffix(db, tmp_suffix);
    remove_db_files(&tmp);
    let out = build(&tmp).inspect_err(|_| remove_db_files(&tmp))?;
    remove_db_files(db);
    std::fs::rename(&tmp, db)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), db.display()))?;
    Ok(out)
}

fn with_suffix(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes a database and its WAL files, if there.
fn remove_db_files(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(db, suffix));
    }
}
