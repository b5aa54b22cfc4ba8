//! Online backups of a running node, and restoring one.
//!
//! `kamaitachi-node backup --from URL --to FILE --token-file T` asks the node
//! at URL for a consistent image of its database (the replication image
//! route: SQLite's backup API, taken while writes go on) and streams it to
//! disk, never whole in memory, computing its CRC-32 on the way. The image
//! is checked (the CRC the node sent, SQLite's quick check, the data version
//! and dataset the node announced) before `FILE` and its manifest
//! `FILE.json` (dataset, data version, CRC-32, size, source, time) appear;
//! both are written aside and renamed, so a failed backup leaves nothing
//! that looks like one.
//!
//! `kamaitachi-node restore --from FILE --db PATH` checks the file again
//! (CRC-32 against the manifest, quick check, version and dataset against
//! the manifest) and installs it at PATH whole or not at all. The node that
//! will use PATH must be stopped; it then starts at the backup's version (a
//! cache dump of another version is ignored at start, as always).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use crate::storage::db_file;
use crate::storage::store::{self, DataVersion};

/// The image route, relative to the node's base URL.
const IMAGE_ROUTE: &str = "/kamaitachi/api/data/v1/replication/image";
/// Largest image accepted.
const MAX_BACKUP_BYTES: u64 = 64 << 30;
/// Format of the manifest.
const MANIFEST_FORMAT: u32 = 1;

/// What `FILE.json` says about a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub dataset_id: u64,
    pub data_version: u64,
    pub crc32: u32,
    pub bytes: u64,
    pub source: String,
    /// Unix seconds.
    pub taken_at: u64,
}

/// `FILE.json`.
pub fn manifest_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// Takes a backup of the node at `base_url` into `to`; returns its manifest.
pub fn backup(base_url: &str, token_file: &Path, to: &Path, force: bool) -> anyhow::Result<Manifest> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("--token-file {}", token_file.display()))?;
    let url = format!("{}{IMAGE_ROUTE}", base_url.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_recv_response(Some(Duration::from_secs(600)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .header("Authorization", &format!("Bearer {}", token.trim()))
        .call()
        .map_err(|e| anyhow!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let header = |name: &str| -> Option<u64> {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let announced = (
        header("x-kamaitachi-seq"),
        header("x-kamaitachi-dataset"),
        header("x-kamaitachi-crc32"),
    );
    if status != 200 {
        let mut text = String::new();
        let _ = resp.body_mut().as_reader().take(2048).read_to_string(&mut text);
        bail!("{url}: HTTP {status}: {}", text.trim());
    }
    let (Some(seq), Some(dataset), Some(crc)) = announced else {
        bail!("{url}: the answer lacks the sequence, dataset or checksum headers");
    };
    let mut reader = resp.body_mut().as_reader().take(MAX_BACKUP_BYTES);
    let manifest = db_file::write_whole(to, ".part", force, |tmp| {
        let (bytes, computed) = copy_with_crc(&mut reader, tmp)?;
        if u64::from(computed) != crc {
            bail!("checksum {computed:08x} != {crc:08x}: the image was damaged in transit");
        }
        let version = checked_version(tmp)?;
        if version.version != seq || version.dataset_id != dataset {
            bail!(
                "the image holds version {} of dataset {}, the node said {seq} of {dataset}",
                version.version,
                version.dataset_id
            );
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            dataset_id: dataset,
            data_version: seq,
            crc32: computed,
            bytes,
            source: base_url.to_string(),
            taken_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        Ok(manifest)
    })?;
    // Without its manifest a file is not taken for a backup (restore
    // refuses it), so this last step completes the backup.
    write_manifest(&manifest_path(to), &manifest)?;
    Ok(manifest)
}

/// Checks the backup `from` against its manifest and installs it at `db`.
pub fn restore(from: &Path, db: &Path, force: bool) -> anyhow::Result<Manifest> {
    let manifest_file = manifest_path(from);
    let text = std::fs::read_to_string(&manifest_file)
        .with_context(|| format!("{}: the backup's manifest", manifest_file.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a backup manifest", manifest_file.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        bail!(
            "{}: manifest format {} is not {MANIFEST_FORMAT}",
            manifest_file.display(),
            manifest.format
        );
    }
    let mut file = std::fs::File::open(from).with_context(|| format!("--from {}", from.display()))?;
    db_file::write_whole(db, ".restore-tmp", force, |tmp| {
        let (bytes, crc) = copy_with_crc(&mut file, tmp)?;
        if crc != manifest.crc32 || bytes != manifest.bytes {
            bail!(
                "{}: CRC-32 {crc:08x} over {bytes} bytes, the manifest says {:08x} over {} bytes: the file is damaged",
                from.display(),
                manifest.crc32,
                manifest.bytes
            );
        }
        let version = checked_version(tmp)?;
        if version.version != manifest.data_version || version.dataset_id != manifest.dataset_id {
            bail!(
                "{}: holds version {} of dataset {}, the manifest says {} of {}",
                from.display(),
                version.version,
                version.dataset_id,
                manifest.data_version,
                manifest.dataset_id
            );
        }
        Ok(())
    })?;
    Ok(manifest)
}

/// Copies `from` into a new file at `to` (fsync'd); returns its size and
/// CRC-32.
fn copy_with_crc(from: &mut impl Read, to: &Path) -> anyhow::Result<(u64, u32)> {
    let mut out = std::fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = from.read(&mut buf).context("reading the image")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", to.display()))?;
        bytes += n as u64;
    }
    out.sync_all()
        .with_context(|| format!("syncing {}", to.display()))?;
    Ok((bytes, hasher.finalize()))
}

/// SQLite's quick check and the data version of the database at `path`.
fn checked_version(path: &Path) -> anyhow::Result<DataVersion> {
    store::check_image(path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn write_manifest(path: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_string_pretty(manifest)?;
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
