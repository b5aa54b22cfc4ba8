//! Slaves follow the master.
//!
//! Protocol (both routes are admin routes on every node; slaves call the
//! master's):
//! - `GET …/replication/changes?from=S&wait_ms=W&dataset=D&acked=A&term=T&known=KT.KS`:
//!   the changes after sequence `S` from the master's change log and its
//!   acknowledged horizon (long-poll: waits up to `W` ms for a change to
//!   appear or the horizon to pass `A`); `T` and `KT.KS` are the follower's
//!   durable term and known acknowledged position (L3). `410 Gone` when `S` is older than the log
//!   keeps or the dataset differs: the slave must copy the whole database.
//! - `GET …/replication/image`: a consistent image of the master's database
//!   (SQLite backup API), with its sequence, dataset id, CRC-32 and term in
//!   headers.
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
//! Visibility (docs/WRITE_PROTOCOL.md, V1): every changes answer carries
//! the leader's acknowledged horizon (`acked`); the follower's own horizon
//! is the smaller of what it applied and that, so it never serves a change
//! the leader has not acknowledged. What it learns is persisted (`meta
//! acked_term/acked_seq`) in the transaction of the change it applies, or
//! on its own when only the horizon moved; the poll sends it (`acked=`)
//! so the leader's long-poll answers as soon as its horizon moves past it.
//!
//! Images (F2, F3): an image carries the leader's term in a header the
//! MAC covers and is refused below this node's durable term. Every rule is
//! applied once the MAC over the whole image is verified (unproven headers
//! decide nothing; the same proven image is then refused again without a
//! download). An image that
//! would drop this node's data — another dataset, no data at all, or a
//! sequence behind what this node knows was acknowledged — is refused
//! ([`judge_image`]) with the reason in the log (once per reason) and in
//! `/health` (`replication.refused`), unless the node was started with
//! `--accept-image-from-leader`. An empty node copies any image.
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
use crate::storage::writer::{Replicated, Writer};

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
    /// The leader's acknowledged horizon (V1); absent from a leader that
    /// does not keep one.
    #[serde(default)]
    acked: Option<u64>,
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
        /// The leader's acknowledged horizon.
        acked: u64,
        changes: Vec<Change>,
    },
    NeedImage(String),
}

/// What the leader's answer says is acknowledged: its `acked`; from a
/// leader without an election (term 0) that does not send one, everything
/// it has (its horizon is its data); from an elected leader that does not
/// send one, nothing.
fn answer_acked(acked: Option<u64>, term: i64, master_seq: u64) -> u64 {
    match acked {
        Some(a) => a,
        None if term == 0 => master_seq,
        None => 0,
    }
}

/// What this node holds, as the image rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalData {
    /// Any report row, or any change applied.
    pub has_data: bool,
    pub dataset: u64,
    /// The highest change this node durably knows was acknowledged.
    pub acked_seq: u64,
    /// The highest term this node durably knows.
    pub term: i64,
}

/// What the leader's image is, from its (MAC-covered) headers and, once
/// received and checked, its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFacts {
    pub seq: u64,
    pub dataset: u64,
    /// The term the leader served it under.
    pub term: i64,
    /// Whether it holds any report row (`None`: not received yet).
    pub has_rows: Option<bool>,
}

/// Whether an image may replace this node's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageVerdict {
    Install,
    /// A rule would refuse it, and the operator said to install anyway.
    InstallOverriding(String),
    Refuse(String),
}

/// The image rules (docs/WRITE_PROTOCOL.md, F2 and F3), with no I/O.
/// F2 (an image of an older term) is never overridden; F3 (another
/// dataset, no data, behind the acknowledged position) is, by
/// `accept_any`. An empty node takes any image of a current term.
pub fn judge_image(local: &LocalData, image: &ImageFacts, accept_any: bool) -> ImageVerdict {
    if image.term < local.term {
        return ImageVerdict::Refuse(format!(
            "the image was served under term {}, older than this node's term {} (a deposed leader?)",
            image.term, local.term
        ));
    }
    if !local.has_data {
        return ImageVerdict::Install;
    }
    let why = if image.dataset != local.dataset {
        Some(format!(
            "the image is of dataset {}, this node holds data of dataset {}",
            image.dataset, local.dataset
        ))
    } else if image.seq == 0 && image.has_rows == Some(false) {
        Some(format!(
            "the image holds no data (no report row, change 0) and this node holds data of dataset {}",
            local.dataset
        ))
    } else if image.seq < local.acked_seq {
        Some(format!(
            "the image stops at change {}, before change {}, which this node knows was acknowledged",
            image.seq, local.acked_seq
        ))
    } else {
        None
    };
    match (why, accept_any) {
        (None, _) => ImageVerdict::Install,
        (Some(why), true) => ImageVerdict::InstallOverriding(why),
        (Some(why), false) => ImageVerdict::Refuse(why),
    }
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
    /// The image would drop this node's data or is of an older term.
    #[error("image refused: {0}")]
    Refused(String),
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
    /// `--accept-image-from-leader`: F3 does not refuse an image.
    pub accept_any_image: bool,
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
        // The acknowledged position last persisted, so an answer that only
        // repeats it writes nothing.
        let mut persisted = self
            .writer
            .election_memory()
            .map_or((0, 0), |m| (m.acked_term, m.acked_seq));
        // The last image refusal logged (logged again only when it changes).
        let mut refusal_logged = String::new();
        let mut proven_refusal: Option<ProvenRefusal> = None;
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
                    acked,
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
                            // F1: the larger term is durable before anything
                            // of it is applied.
                            let raised = if term > seen_term {
                                self.writer.raise_term(term).map(|()| seen_term = term)
                            } else {
                                Ok(())
                            };
                            match raised {
                                Err(e) => Err(FollowError::Store(e)),
                                Ok(()) => self.apply(master_seq, term, acked, changes, &mut persisted),
                            }
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
                    let r = self.full_sync(&master, &mut proven_refusal);
                    if r.is_ok() {
                        seen_term = seen_term.max(self.writer.term().unwrap_or(0));
                        persisted = self
                            .writer
                            .election_memory()
                            .map_or(persisted, |m| (m.acked_term, m.acked_seq));
                        self.state.set_refused(None);
                        refusal_logged.clear();
                        proven_refusal = None;
                    }
                    if let Err(FollowError::Refused(why)) = &r {
                        self.state.set_refused(Some(why.clone()));
                        if *why != refusal_logged {
                            tracing::error!(
                                master = %master,
                                "replication: refusing the image of {master}: {why}; this node keeps its data and does not follow \
                                 (start it with --accept-image-from-leader to install the leader's image anyway)"
                            );
                            refusal_logged = why.clone();
                        }
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
                Err(FollowError::Refused(_)) => {
                    // Logged above, once per reason; tried again after the
                    // full-sync backoff.
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Ok(()) => {
                    if !refusal_logged.is_empty() {
                        // Following again: nothing is refused any more.
                        self.state.set_refused(None);
                        refusal_logged.clear();
                    }
                    if let Ok(mut m) = self.state.master_addr.lock() {
                        *m = Some(master.clone());
                    }
                    // The elected leader this node follows is a member:
                    // after etcd lost its data the election waits for it.
                    if let Some(e) = &self.locator.election {
                        if e.view().leader.as_ref().is_some_and(|l| l.addr == master) {
                            e.note_member(&master);
                        }
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
            "{API}/changes?from={}&wait_ms={POLL_WAIT_MS}&dataset={}{digest}&node={}&candidate={}&acked={}&term={term}&known={known_term}.{known_seq}",
            self.state.applied(),
            self.state.dataset_id.load(Ordering::Acquire),
            self.locator.own_addr,
            u8::from(self.ha.candidate),
            self.state.known_acked(),
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
                let d = env.data;
                Ok(Pull::Changes {
                    master_seq: d.master_seq,
                    term: d.term,
                    acked: answer_acked(d.acked, d.term, d.master_seq),
                    changes: d.changes,
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

    /// Applies the changes of one answer of the leader of `term`, whose
    /// horizon is `acked` (V1: learned first, so a change it covers is
    /// visible as soon as it is applied; persisted with the first change,
    /// or on its own when the answer holds none). `persisted`: the
    /// acknowledged position last made durable.
    fn apply(
        &self,
        master_seq: u64,
        term: i64,
        acked: u64,
        changes: Vec<Change>,
        persisted: &mut (i64, u64),
    ) -> Result<(), FollowError> {
        let learned = (term, acked);
        self.state.set_acked(acked);
        let known = (learned > *persisted).then_some(learned);
        if changes.is_empty() {
            if let Some((t, a)) = known {
                self.writer.raise_known_acked(t, a)?;
                *persisted = learned;
            }
        }
        for change in changes {
            let Change {
                seq,
                term,
                digest,
                batch,
            } = change;
            let replicated = Replicated {
                seq,
                digest,
                term,
                batch,
            };
            self.writer.apply(replicated, self.log_retain, known)?;
            if known.is_some() {
                *persisted = learned;
            }
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

    /// Copies the leader's image (F2, F3: judged once proven by its MAC).
    /// `refused`: the last image refused after it was proven.
    fn full_sync(&self, master: &str, refused: &mut Option<ProvenRefusal>) -> Result<(), FollowError> {
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
        let (seq, dataset, crc, term) = (
            header("x-kamaitachi-seq"),
            header("x-kamaitachi-dataset"),
            header("x-kamaitachi-crc32"),
            header("x-kamaitachi-term").and_then(|t| i64::try_from(t).ok()),
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
        // Without them the MAC cannot be checked: not a proven leader.
        let (Some(seq), Some(dataset), Some(crc), Some(term)) = (seq, dataset, crc, term) else {
            return Err(FollowError::Unproven(
                "an image without its sequence, dataset, checksum or term headers".into(),
            ));
        };
        let Some(proof) = proof else {
            return Err(FollowError::Unproven("an image without a MAC".into()));
        };
        let headers = ImageFacts {
            seq,
            dataset,
            term,
            has_rows: None,
        };
        // The same image of the same leader was proven and refused before:
        // refused again without downloading it. (Headers alone, unproven,
        // never decide: a rogue's would keep this node from its leader.)
        if let Some(r) = refused
            .as_ref()
            .filter(|r| r.master == master && r.headers == headers)
        {
            return Err(FollowError::Refused(r.why.clone()));
        }
        let mut facts = headers;
        let (seq_s, dataset_s, term_s) = (seq.to_string(), dataset.to_string(), term.to_string());
        let mac = self.key.begin(
            "repl-image",
            &[
                nonce.as_bytes(),
                master.as_bytes(),
                b"master",
                seq_s.as_bytes(),
                dataset_s.as_bytes(),
                term_s.as_bytes(),
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
            facts.has_rows = Some(store::Store::open_ro(&tmp)?.has_reports()?);
            let elected = self
                .locator
                .election
                .as_ref()
                .and_then(|e| e.view().leader.as_ref().map(|l| l.term));
            let judged = check_term(term, self.writer.term()?, elected)
                .map_err(FollowError::Refused)
                .and_then(|()| self.judge(&facts));
            if let Err(FollowError::Refused(why)) = &judged {
                *refused = Some(ProvenRefusal {
                    master: master.to_string(),
                    headers,
                    why: why.clone(),
                });
            }
            let same_dataset = judged?;
            tracing::info!(
                "replication: image verified at {:.1}s; restoring",
                started.elapsed().as_secs_f64()
            );
            self.writer.restore(tmp.clone(), seq, term, same_dataset)?;
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

impl Follower {
    /// [`judge_image`] against this node's data now; returns whether the
    /// image is of this node's dataset.
    fn judge(&self, image: &ImageFacts) -> Result<bool, FollowError> {
        let memory = self.writer.election_memory()?;
        let dataset = self.state.dataset_id.load(Ordering::Acquire);
        let local = LocalData {
            has_data: self.state.applied() > 0 || self.state.total_records.load(Ordering::Acquire) > 0,
            dataset,
            acked_seq: memory.acked_seq,
            term: memory.term,
        };
        match judge_image(&local, image, self.accept_any_image) {
            ImageVerdict::Install => {}
            ImageVerdict::InstallOverriding(why) => {
                if image.has_rows.is_some() {
                    tracing::warn!(
                        "replication: installing the leader's image although {why} (--accept-image-from-leader)"
                    );
                }
            }
            ImageVerdict::Refuse(why) => return Err(FollowError::Refused(why)),
        }
        Ok(image.dataset == dataset)
    }
}

/// An image that proved itself (MAC) and was refused, by its headers: the
/// same image of the same leader is refused again without a download.
struct ProvenRefusal {
    master: String,
    headers: ImageFacts,
    why: String,
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

    fn local(has_data: bool) -> LocalData {
        LocalData {
            has_data,
            dataset: 7,
            acked_seq: 40,
            term: 3,
        }
    }

    fn image(seq: u64, dataset: u64, term: i64, has_rows: Option<bool>) -> ImageFacts {
        ImageFacts {
            seq,
            dataset,
            term,
            has_rows,
        }
    }

    fn refused(v: ImageVerdict) -> String {
        match v {
            ImageVerdict::Refuse(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_image_of_the_same_dataset_at_or_past_the_acknowledged_position_is_installed() {
        let l = local(true);
        assert_eq!(
            judge_image(&l, &image(40, 7, 3, Some(true)), false),
            ImageVerdict::Install
        );
        assert_eq!(
            judge_image(&l, &image(55, 7, 4, None), false),
            ImageVerdict::Install
        );
    }

    #[test]
    fn an_image_that_would_drop_data_is_refused_unless_the_operator_accepts_it() {
        let l = local(true);
        let why = refused(judge_image(&l, &image(90, 8, 3, Some(true)), false));
        assert!(why.contains("dataset 8") && why.contains("dataset 7"), "{why}");
        let why = refused(judge_image(&l, &image(0, 7, 3, Some(false)), false));
        assert!(why.contains("no data"), "{why}");
        // Before it arrives an image at change 0 is not known to be empty
        // (the acknowledged position refuses it here anyway).
        let why = refused(judge_image(&l, &image(39, 7, 3, None), false));
        assert!(
            why.contains("stops at change 39") && why.contains("change 40"),
            "{why}"
        );
        for img in [
            image(90, 8, 3, Some(true)),
            image(0, 7, 3, Some(false)),
            image(39, 7, 3, Some(true)),
        ] {
            assert!(
                matches!(judge_image(&l, &img, true), ImageVerdict::InstallOverriding(_)),
                "{img:?}"
            );
        }
    }

    #[test]
    fn an_empty_node_takes_any_image_of_a_current_term() {
        let l = LocalData {
            acked_seq: 0,
            ..local(false)
        };
        assert_eq!(
            judge_image(&l, &image(0, 8, 3, Some(false)), false),
            ImageVerdict::Install
        );
        assert_eq!(
            judge_image(&l, &image(12, 9, 5, Some(true)), false),
            ImageVerdict::Install
        );
    }

    #[test]
    fn an_image_of_an_older_term_is_refused_even_when_accepted() {
        for has_data in [true, false] {
            let why = refused(judge_image(&local(has_data), &image(50, 7, 2, Some(true)), true));
            assert!(why.contains("term 2") && why.contains("term 3"), "{why}");
        }
    }

    #[test]
    fn the_acknowledged_position_of_an_answer() {
        assert_eq!(answer_acked(Some(5), 3, 9), 5);
        assert_eq!(
            answer_acked(None, 0, 9),
            9,
            "no election: the master's data is its horizon"
        );
        assert_eq!(
            answer_acked(None, 3, 9),
            0,
            "an elected leader that says nothing: nothing"
        );
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
