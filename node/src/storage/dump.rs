//! Cache dumps for warm restarts.
//!
//! A dump holds every cached [`Series`] and is written to `PATH.tmp`,
//! fsync'd, renamed over `PATH` and the directory fsync'd, so `PATH` is
//! always either the old dump or the new one, whole. Its header carries a
//! format version, the dataset id and data version it was taken at, the
//! payload length and a CRC-32 of the payload. At start a dump is used only
//! if all of these check out; anything else is a [`DumpError`] that the
//! caller logs and ignores — a dump is never trusted and never fatal.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::model::series::Series;
use crate::storage::store::DataVersion;

const MAGIC: &[u8; 8] = b"KMTCDUMP";
pub const FORMAT_VERSION: u32 = 1;
/// magic, format, dataset id, data version, payload length, crc32.
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 4;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("no dump at {0}")]
    Missing(PathBuf),
    #[error("i/o on {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("not a cache dump (bad magic)")]
    BadMagic,
    #[error("dump format {0} is not supported (expected {FORMAT_VERSION})")]
    Format(u32),
    #[error("dump is truncated: {got} bytes, header promises {want}")]
    Truncated { got: usize, want: usize },
    #[error("dump checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("dump was taken at dataset {dump_dataset} version {dump_version}; the database is dataset {db_dataset} version {db_version}")]
    Stale {
        dump_dataset: u64,
        dump_version: u64,
        db_dataset: u64,
        db_version: u64,
    },
    #[error("dump payload does not decode: {0}")]
    Decode(String),
}

type Entries = Vec<(String, Series)>;

fn io_err(path: &Path, e: std::io::Error) -> DumpError {
    DumpError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes `entries` atomically to `path`. Returns the bytes written.
pub fn write(
    path: &Path,
    version: DataVersion,
    entries: &[(Arc<str>, Arc<Series>)],
) -> Result<u64, DumpError> {
    let borrowed: Vec<(&str, &Series)> = entries.iter().map(|(k, v)| (&**k, &**v)).collect();
    let payload = postcard::to_stdvec(&borrowed).map_err(|e| DumpError::Decode(e.to_string()))?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&version.dataset_id.to_le_bytes());
    header.extend_from_slice(&version.version.to_le_bytes());
    header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&header)?;
        f.write_all(&payload)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok::<_, std::io::Error>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok((header.len() + payload.len()) as u64)
}

/// Reads and checks the dump at `path` against the database's version.
pub fn read(path: &Path, current: DataVersion) -> Result<Entries, DumpError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DumpError::Missing(path.to_path_buf()))
        }
        Err(e) => return Err(io_err(path, e)),
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
    decode(&bytes, current)
}

fn decode(bytes: &[u8], current: DataVersion) -> Result<Entries, DumpError> {
    if bytes.len() < HEADER_LEN {
        return Err(DumpError::Truncated {
            got: bytes.len(),
            want: HEADER_LEN,
        });
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    if &header[0..8] != MAGIC {
        return Err(DumpError::BadMagic);
    }
    let u32_at = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let format = u32_at(8);
    if format != FORMAT_VERSION {
        return Err(DumpError::Format(format));
    }
    let dump_dataset = u64_at(12);
    let dump_version = u64_at(20);
    let len = u64_at(28);
    let stored = u32_at(36);
    if payload.len() as u64 != len {
        return Err(DumpError::Truncated {
            got: bytes.len(),
            want: HEADER_LEN.saturating_add(len as usize),
        });
    }
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(DumpError::Checksum { stored, computed });
    }
    if dump_dataset != current.dataset_id || dump_version != current.version {
        return Err(DumpError::Stale {
            dump_dataset,
            dump_version,
            db_dataset: current.dataset_id,
            db_version: current.version,
        });
    }
    postcard::from_bytes(payload).map_err(|e| DumpError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::series::Report;

    fn sample() -> Vec<(Arc<str>, Arc<Series>)> {
        let r = Report {
            report_date: 1_735_603_200,
            end_date: "2024-12-31".into(),
            year: "2024".into(),
            period: "Q4".into(),
            declare_date: "2025-03-20".into(),
            values: vec![f64::NAN, 1.5e11, -3.25].into_boxed_slice(),
        };
        vec![(Arc::from("33:000001"), Arc::new(Series::new(vec![r])))]
    }

    const V: DataVersion = DataVersion {
        dataset_id: 7,
        version: 3,
    };

    fn tmpfile(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kmt-dump-test-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir.join("cache.dat")
    }

    #[test]
    fn round_trip() {
        let p = tmpfile("rt");
        write(&p, V, &sample()).unwrap();
        let got = read(&p, V).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "33:000001");
        let r = &got[0].1.reports[0];
        assert!(r.values[0].is_nan());
        assert_eq!(r.value(1), Some(1.5e11));
        assert!(!p.with_extension("dat.tmp").exists());
    }

    #[test]
    fn every_kind_of_damage_is_refused() {
        let p = tmpfile("damage");
        write(&p, V, &sample()).unwrap();
        let good = std::fs::read(&p).unwrap();

        let stale = DataVersion { version: 4, ..V };
        assert!(matches!(read(&p, stale), Err(DumpError::Stale { .. })));
        let other = DataVersion { dataset_id: 8, ..V };
        assert!(matches!(read(&p, other), Err(DumpError::Stale { .. })));

        for cut in [0, 10, HEADER_LEN, good.len() - 1] {
            assert!(
                matches!(decode(&good[..cut], V), Err(DumpError::Truncated { .. })),
                "cut {cut}"
            );
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, V).is_err(), "flipped byte {i} was accepted");
        }
        assert!(matches!(
            read(&tmpfile("none").with_file_name("absent"), V),
            Err(DumpError::Missing(_))
        ));
    }
}
