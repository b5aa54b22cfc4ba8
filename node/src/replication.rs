//! Slaves follow the master.
//!
//! Protocol (both routes are admin routes on every node; slaves call the
//! master's):
//! - `GET …/replication/changes?from=S&wait_ms=W&dataset=D&term=T`: the changes
//!   after sequence `S` from the master's change log (long-poll: waits up to
//!   `W` ms for one to appear). `410 Gone` when `S` is older than the log
//!   keeps or the dataset differs: the slave must copy the whole database.
//! - `GET …/replication/image`: a consistent image of the master's database
//!   (SQLite backup API), with its sequence, dataset id and CRC-32 in headers.
//!
//! Write availability (issue 14): with etcd every node runs the follower
//! (a `mode = master` node too: it may have lost the election); while the
//! node leads, the loop idles. The poll names the follower (`node`,
//! `candidate`: what the leader's sync acknowledgment counts); an answer
//! carries the leader's term and is refused when older than the highest
//! term seen ([`check_term`]); a `410` because this node is ahead of the
//! leader or its history differs means it holds changes never acknowledged:
//! they are discarded by copying the leader's image. Applied changes are
//! kept in this node's own change log, so it can serve others if promoted.
//!
//! The [`Follower`] runs on its own OS thread: it finds the master (the
//! elected leader, then etcd entries with role `master`, highest term
//! first, else `[replication] master`), pulls
//! changes from its applied sequence, applies each in one transaction with
//! the new sequence (`Store::apply_replicated` refuses gaps and repeats), and
//! then drops the touched subjects from the cache. An empty slave, one too
//! far behind, or one from another dataset first copies the image: it is
//! checked (CRC-32, SQLite quick check, its sequence), then restored into the
//! slave's database in one step. The slave reports ready (`/health` 200) once
//! it has caught up with the master for the first time.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::Discovery;
use serde::Deserialize;

use crate::model::batch::Batch;
use crate::storage::error::StoreError;
use crate::storage::state::DataState;
use crate::storage::store;
use crate::storage::writer::Writer;

pub const API: &str = "/kamaitachi/api/data/v1/replication";
/// How long a slave's long-poll waits on the master.
pub const POLL_WAIT_MS: u64 = 1000;
/// Largest image a slave accepts.
const MAX_IMAGE_BYTES: u64 = 64 << 30;

/// Where the master is.
pub struct MasterLocator {
    pub registry: Option<Discovery>,
    pub fallback: Option<String>,
    /// The election (issue 14): its leader is followed first.
    pub election: Option<Arc<cluster::election::Election>>,
    /// This node's registered address: never its own master.
    pub own_addr: String,
}

impl MasterLocator {
    /// Every candidate: `(where it was learned, addr)`: the elected leader
    /// first, then registry entries with role `master` (highest term
    /// first), then `[replication] master`. None is believed until it
    /// proves it holds the cluster secret (see [`Follower`]).
    pub fn candidates(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        if let Some(l) = self.election.as_ref().and_then(|e| e.view().leader.clone()) {
            out.push((format!("elected leader (term {})", l.term), l.addr));
        }
        let mut masters: Vec<(i64, String, String)> = self
            .registry
            .as_ref()
            .map(|d| {
                d.services()
                    .iter()
                    .filter(|e| e.info.role == cluster::Role::Master)
                    .map(|e| (e.info.term.unwrap_or(0), e.key.clone(), e.info.addr.clone()))
                    .collect()
            })
            .unwrap_or_default();
        masters.sort_by_key(|m| std::cmp::Reverse(m.0));
        for (_, key, addr) in masters {
            if !out.iter().any(|(_, a)| *a == addr) {
                out.push((key, addr));
            }
        }
        out.retain(|(_, a)| *a != self.own_addr);
        if out.is_empty() {
            if let Some(f) = &self.fallback {
                out.push(("[replication] master".to_string(), f.clone()));
            }
        }
        out
    }
}

/// How long a master that failed to prove itself is skipped.
const UNPROVEN_SKIP: Duration = Duration::from_secs(30);
/// At most one warning per unproven address in this time.
const UNPROVEN_WARN_EVERY: Duration = Duration::from_secs(600);
/// Full-sync retries after failures: from 1 s, doubling, at most this.
const SYNC_BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct ChangesEnvelope {
    data: ChangesData,
}

#[derive(Deserialize)]
struct ChangesData {
    master_seq: u64,
    /// The term the answering leader leads under (0: no election).
    #[serde(default)]
    term: i64,
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    seq: u64,
    /// The term of the leader that made this change.
    #[serde(default)]
    term: i64,
    /// The master's running digest of its history after this change.
    #[serde(default)]
    digest: Option<String>,
    batch: Batch,
}

enum Pull {
    Changes {
        master_seq: u64,
        term: i64,
        changes: Vec<Change>,
    },
    NeedImage(String),
}

/// The fence on the follower's side (issue 14): an answer from a leader
/// whose term is older than the highest term this node has seen, or than
/// the elected leader's, comes from a deposed leader and is not applied.
pub fn check_term(answer: i64, seen: i64, elected: Option<i64>) -> Result<(), String> {
    let floor = seen.max(elected.unwrap_or(0));
    if answer < floor {
        return Err(format!(
            "refusing changes of term {answer}: a newer term ({floor}) is known (a deposed leader?)"
        ));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("cannot reach the master: {0}")]
    Http(String),
    #[error("the master answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("image rejected: {0}")]
    Image(String),
    /// The answer's MAC is missing or wrong: not a holder of the secret.
    #[error("the answer is not proven by the cluster secret ({0})")]
    Unproven(String),
    #[error("{0}")]
    StaleTerm(String),
}

pub struct Follower {
    pub state: Arc<DataState>,
    pub writer: Writer,
    pub locator: MasterLocator,
    /// Key derived from the cluster secret: requests are signed with it and
    /// every answer is checked against it before anything is applied.
    pub key: cluster::auth::ClusterKey,
    pub db_path: PathBuf,
    /// Warms the cache again after a full sync (`[cache] preload = all`).
    pub preloader: Option<Arc<crate::engine::preload::Preloader>>,
    /// Who leads (issue 14): while this node leads, it follows nobody.
    pub ha: Arc<crate::server::ha::Ha>,
    /// Change-log entries kept of what is applied (a promoted follower
    /// serves the others from them).
    pub log_retain: u64,
}

impl Follower {
    /// Follows forever on a thread of its own.
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("replication".into())
            .spawn(move || self.run())?;
        Ok(())
    }

    fn agent(timeout: Duration) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into()
    }

    fn run(self) {
        let poll = Self::agent(Duration::from_millis(POLL_WAIT_MS + 5000));
        let mut backoff = Duration::from_millis(200);
        let mut last_error = String::new();
        // Addresses that answered without the right MAC: skipped for a
        // while; warned about at most once per UNPROVEN_WARN_EVERY.
        let mut unproven: std::collections::HashMap<String, Instant> = Default::default();
        let mut warned: std::collections::HashMap<String, Instant> = Default::default();
        let mut sync_backoff = SyncBackoff::new();
        let mut seen_term = self.writer.term().unwrap_or(0);
        loop {
            if self.ha.leading_term().is_some() {
                // Leading: the loop idles (the leader follows nobody).
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            unproven.retain(|_, at| at.elapsed() < UNPROVEN_SKIP);
            let candidates = self.locator.candidates();
            let Some((key, master)) = candidates.into_iter().find(|(_, a)| !unproven.contains_key(a)) else {
                if last_error != "no master" {
                    tracing::warn!("replication: no proven master known yet (etcd entry with role master, or [replication] master)");
                    last_error = "no master".into();
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            };
            let step = match self.pull(&poll, &master) {
                Ok(Pull::Changes {
                    master_seq,
                    term,
                    changes,
                }) => {
                    let elected = self
                        .locator
                        .election
                        .as_ref()
                        .and_then(|e| e.view().leader.as_ref().map(|l| l.term));
                    match check_term(term, seen_term, elected) {
                        Err(why) => {
                            tracing::error!(master = %master, "replication from {master}: {why}");
                            Err(FollowError::StaleTerm(why))
                        }
                        Ok(()) => {
                            if term > seen_term {
                                seen_term = term;
                                if let Err(e) = self.writer.raise_term(term) {
                                    tracing::warn!("replication: could not record term {term}: {e}");
                                }
                            }
                            self.apply(master_seq, changes)
                        }
                    }
                }
                Ok(Pull::NeedImage(why)) => {
                    let wait = sync_backoff.wait();
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                    if why.contains("ahead") || why.contains("diverges") {
                        tracing::warn!(
                            master = %master,
                            "replication: discarding changes never acknowledged (this node's history is not the leader's: {why}): copying the leader's image from {master}"
                        );
                    } else {
                        tracing::info!(master = %master, "replication: copying the database from {master} ({why})");
                    }
                    let r = self.full_sync(&master);
                    if r.is_ok() {
                        seen_term = seen_term.max(self.writer.term().unwrap_or(0));
                    }
                    if r.is_err() {
                        sync_backoff.failed();
                    } else {
                        sync_backoff = SyncBackoff::new();
                    }
                    r
                }
                Err(e) => Err(e),
            };
            if let Err(FollowError::Unproven(why)) = &step {
                unproven.insert(master.clone(), Instant::now());
                if warned
                    .get(&master)
                    .is_none_or(|at| at.elapsed() >= UNPROVEN_WARN_EVERY)
                {
                    warned.insert(master.clone(), Instant::now());
                    tracing::warn!(
                        key = %key,
                        addr = %master,
                        "replication: ignoring master candidate {key} at {master}: it did not prove it holds the cluster secret ({why})"
                    );
                }
                continue;
            }
            match step {
                Ok(()) => {
                    if let Ok(mut m) = self.state.master_addr.lock() {
                        *m = Some(master.clone());
                    }
                    backoff = Duration::from_millis(200);
                    last_error.clear();
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error {
                        tracing::warn!(master = %master, "replication from {master}: {msg}; retrying");
                        last_error = msg;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// A signed GET of `target` (path and query) on `master`; returns the
    /// answer and the nonce its MAC must cover.
    fn signed_get(
        &self,
        agent: &ureq::Agent,
        master: &str,
        target: &str,
    ) -> Result<(ureq::http::Response<ureq::Body>, String), FollowError> {
        let signed = self.key.sign_request("repl-request", "GET", master, target);
        let resp = agent
            .get(&format!("http://{master}{target}"))
            .header(cluster::auth::NONCE_HEADER, &signed.nonce)
            .header(cluster::auth::TIME_HEADER, &signed.time)
            .header(cluster::auth::PROOF_HEADER, &signed.mac)
            .call()
            .map_err(|e| FollowError::Http(e.to_string()))?;
        Ok((resp, signed.nonce))
    }

    fn pull(&self, agent: &ureq::Agent, master: &str) -> Result<Pull, FollowError> {
        // This node's running digest at its applied sequence: the master
        // answers 410 (copy the image) when its own differs.
        let digest = self
            .writer
            .meta("log_digest")?
            .filter(|d| d.len() == 64)
            .map(|d| format!("&digest={d}"))
            .unwrap_or_default();
        // This node's durable term and the acknowledged position it knows:
        // a leader of an older term, or one lacking that position, resigns
        // (L3).
        let memory = self.writer.election_memory()?;
        let (term, known_term, known_seq) = (memory.term, memory.acked_term, memory.acked_seq);
        let target = format!(
            "{API}/changes?from={}&wait_ms={POLL_WAIT_MS}&dataset={}{digest}&node={}&candidate={}&term={term}&known={known_term}.{known_seq}",
            self.state.applied(),
            self.state.dataset_id.load(Ordering::Acquire),
            self.locator.own_addr,
            u8::from(self.ha.candidate)
        );
        let (mut resp, nonce) = self.signed_get(agent, master, &target)?;
        let proof = resp
            .headers()
            .get(cluster::auth::PROOF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .map_err(|e| FollowError::Http(e.to_string()))?;
        match status {
            200 => {
                // Nothing is decoded, let alone applied, before the MAC over
                // the whole answer is checked.
                let Some(proof) = proof else {
                    return Err(FollowError::Unproven("changes without a MAC".into()));
                };
                let mut mac = self
                    .key
                    .begin("repl-changes", &[nonce.as_bytes(), master.as_bytes(), b"master"]);
                mac.update(&body);
                if !mac.verify_hex(&proof) {
                    return Err(FollowError::Unproven("changes with a wrong MAC".into()));
                }
                let env: ChangesEnvelope = serde_json::from_slice(&body)
                    .map_err(|e| FollowError::Http(format!("changes do not decode: {e}")))?;
                Ok(Pull::Changes {
                    master_seq: env.data.master_seq,
                    term: env.data.term,
                    changes: env.data.changes,
                })
            }
            410 => Ok(Pull::NeedImage(
                String::from_utf8_lossy(&body).chars().take(300).collect(),
            )),
            401 | 403 => Err(FollowError::Unproven(format!(
                "it refused this node's signed request ({status})"
            ))),
            _ => Err(FollowError::Status {
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            }),
        }
    }

    fn apply(&self, master_seq: u64, changes: Vec<Change>) -> Result<(), FollowError> {
        for change in changes {
            let Change {
                seq,
                term,
                digest,
                batch,
            } = change;
            self.writer.apply(seq, digest, term, self.log_retain, batch)?;
        }
        self.state
            .master_seq
            .store(master_seq.max(self.state.applied()), Ordering::Release);
        if self.state.applied() >= master_seq && !self.state.is_ready() {
            tracing::info!(
                seq = master_seq,
                "replication: caught up with the master at {master_seq}; ready"
            );
            self.state.set_ready(true);
        }
        Ok(())
    }

    fn full_sync(&self, master: &str) -> Result<(), FollowError> {
        let started = Instant::now();
        let agent = Self::agent(Duration::from_secs(600));
        let (mut resp, nonce) = self.signed_get(&agent, master, &format!("{API}/image"))?;
        let proof = resp
            .headers()
            .get(cluster::auth::PROOF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = resp.status().as_u16();
        let header = |name: &str| -> Option<u64> {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        let (seq, dataset, crc) = (
            header("x-kamaitachi-seq"),
            header("x-kamaitachi-dataset"),
            header("x-kamaitachi-crc32"),
        );
        let declared = header("content-length");
        if status != 200 {
            let mut bytes = Vec::new();
            let _ = resp.body_mut().as_reader().take(64 << 10).read_to_end(&mut bytes);
            return Err(FollowError::Status {
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        let (Some(seq), Some(dataset), Some(crc)) = (seq, dataset, crc) else {
            return Err(FollowError::Image(
                "missing sequence, dataset or checksum headers".into(),
            ));
        };
        let Some(proof) = proof else {
            return Err(FollowError::Unproven("an image without a MAC".into()));
        };
        let (seq_s, dataset_s) = (seq.to_string(), dataset.to_string());
        let mac = self.key.begin(
            "repl-image",
            &[
                nonce.as_bytes(),
                master.as_bytes(),
                b"master",
                seq_s.as_bytes(),
                dataset_s.as_bytes(),
            ],
        );
        if declared.is_some_and(|n| n > MAX_IMAGE_BYTES) {
            return Err(FollowError::Image(format!(
                "image of {} bytes is over the {MAX_IMAGE_BYTES} byte limit",
                declared.unwrap_or(0)
            )));
        }
        let mut tmp = self.db_path.as_os_str().to_owned();
        tmp.push(".sync-tmp");
        let tmp = PathBuf::from(tmp);
        // Streamed to a temporary file in 1 MiB chunks, checksummed on the
        // way: memory does not grow with the database.
        let received = receive_image(resp.body_mut().as_reader(), &tmp, mac);
        let result = (|| {
            let (len, computed, mac) = received?;
            // The MAC over the whole streamed image is checked before
            // anything else looks at the file, let alone installs it.
            if !mac.verify_hex(&proof) {
                return Err(FollowError::Unproven("an image with a wrong MAC".into()));
            }
            tracing::info!(
                "replication: image of {len} bytes received in {:.1}s (peak RSS {} MiB)",
                started.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
            if declared.is_some_and(|n| n != len) {
                return Err(FollowError::Image(format!(
                    "image ended after {len} of {} bytes",
                    declared.unwrap_or(0)
                )));
            }
            if u64::from(computed) != crc {
                return Err(FollowError::Image(format!(
                    "checksum {computed:08x} != {crc:08x} (damaged in transit)"
                )));
            }
            let version = store::check_image(&tmp)?;
            if version.version != seq || version.dataset_id != dataset {
                return Err(FollowError::Image(format!(
                    "image holds version {} of dataset {}, headers said {seq} of {dataset}",
                    version.version, version.dataset_id
                )));
            }
            tracing::info!(
                "replication: image verified at {:.1}s; restoring",
                started.elapsed().as_secs_f64()
            );
            self.writer.restore(tmp.clone())?;
            Ok(())
        })();
        let _ = std::fs::remove_file(&tmp);
        result?;
        if let Some(p) = &self.preloader {
            p.start("after a full sync");
        }
        tracing::info!(
            "replication: database copied from {master} at version {seq} in {:.1}s (peak RSS {} MiB)",
            started.elapsed().as_secs_f64(),
            peak_rss_mib()
        );
        Ok(())
    }
}

/// When the next full sync may start: 1 s after a failed one, doubling
/// with each further failure, at most [`SYNC_BACKOFF_MAX`]; reset by a
/// successful one.
struct SyncBackoff {
    failed_at: Option<Instant>,
    delay: Duration,
}

impl SyncBackoff {
    fn new() -> Self {
        SyncBackoff {
            failed_at: None,
            delay: Duration::from_secs(1),
        }
    }

    /// How long to wait before the next attempt.
    fn wait(&self) -> Duration {
        self.failed_at
            .map_or(Duration::ZERO, |at| self.delay.saturating_sub(at.elapsed()))
    }

    fn failed(&mut self) {
        if self.failed_at.is_some() {
            self.delay = (self.delay * 2).min(SYNC_BACKOFF_MAX);
        }
        self.failed_at = Some(Instant::now());
    }
}

/// This process's peak resident memory (VmHWM), for the sync's log lines.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// Copies an image from `body` to the file `tmp` (created afresh),
/// at most [`MAX_IMAGE_BYTES`]; returns its length and CRC-32.
fn receive_image(
    mut body: impl Read,
    tmp: &std::path::Path,
    mut mac: cluster::auth::StreamMac,
) -> Result<(u64, u32, cluster::auth::StreamMac), FollowError> {
    use std::io::Write;
    let io = |e: std::io::Error| FollowError::Image(format!("{}: {e}", tmp.display()));
    let mut file = std::fs::File::create(tmp).map_err(io)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; store::IMAGE_CHUNK];
    let mut len = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FollowError::Http(format!("reading the image: {e}"))),
        };
        len += n as u64;
        if len > MAX_IMAGE_BYTES {
            return Err(FollowError::Image(format!(
                "image over the {MAX_IMAGE_BYTES} byte limit"
            )));
        }
        hasher.update(&buf[..n]);
        mac.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io)?;
    }
    // No fsync: the file is read back at once and removed; the restore
    // into the database is what is made durable (by SQLite).
    Ok((len, hasher.finalize(), mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_an_older_term_are_refused() {
        assert!(check_term(5, 5, Some(5)).is_ok());
        assert!(check_term(7, 5, Some(7)).is_ok());
        assert!(check_term(0, 0, None).is_ok(), "no election: term 0 everywhere");
        let e = check_term(4, 5, None).unwrap_err();
        assert!(
            e.contains("refusing changes of term 4") && e.contains("(5)"),
            "{e}"
        );
        // The elected leader's term counts even before this node saw it in
        // an answer: a deposed leader that still answers is refused.
        assert!(check_term(5, 5, Some(9)).is_err());
    }

    #[test]
    fn full_sync_retries_back_off_exponentially_up_to_the_cap() {
        let mut b = SyncBackoff::new();
        assert_eq!(b.wait(), Duration::ZERO, "the first attempt waits for nothing");
        let mut delays = Vec::new();
        for _ in 0..9 {
            b.failed();
            delays.push(b.delay.as_secs());
            assert!(b.wait() > b.delay - Duration::from_millis(100));
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let b = SyncBackoff::new();
        assert_eq!(b.wait(), Duration::ZERO);
    }
}
