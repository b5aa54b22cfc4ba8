//! The node's HTTP routes: where a request goes after `http.rs` framed it.
//!
//! | route | handler |
//! | --- | --- |
//! | `POST /kamaitachi/api/data/v1/snapshot` | [`QueryEngine::snapshot`] |
//! | `POST /kamaitachi/api/data/v1/period` | [`QueryEngine::period`] |
//! | `GET /kamaitachi/api/data/v1/stats` | counts, cache, replication |
//! | `POST /kamaitachi/api/data/v1/cache/reset` | admin: empty the cache |
//! | `POST /kamaitachi/api/data/v1/ingest` | admin, the leader only: upsert rows (`engine/write_request.rs`, `storage/writer.rs`), acknowledged per `server/ha.rs` |
//! | `POST /kamaitachi/api/data/v1/delete` | admin, the leader only: delete rows |
//! | `GET /kamaitachi/api/data/v1/replication/changes` | cluster MAC, the leader only: change feed (`replication.rs`) with the acknowledged horizon (`acked`); records the follower's progress |
//! | `GET /kamaitachi/api/data/v1/replication/image` | cluster MAC: database image, with its sequence, dataset and the term it is served under |
//! | `GET /health` | readiness for the gateway |
//! | `GET /metrics` | Prometheus text |
//!
//! A trailing slash is accepted. Errors become the JSON envelope here, with
//! the status [`ApiError::status`] gives and, for a write that was not
//! acknowledged, `"outcome"` from [`ApiError::outcome`].

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::Mode;

use crate::engine::query::QueryEngine;
use crate::json;
use crate::model::batch::Batch;
use crate::server::error::ApiError;
use crate::server::ha::{self, Admit, Ha, PollTerm};
use crate::server::http::{Body, Request, Response, Service, TransportError};
use crate::server::image_stream::ImageStream;
use crate::server::metrics::{Metrics, RouteLabel};
use crate::storage::error::StoreError;
use crate::storage::state::DataState;
use crate::storage::store;
use crate::storage::writer::Writer;

const PREFIX: &str = "/kamaitachi/api/data/v1";

/// Who this node is, for `/health` and `/stats`.
pub struct NodeIdentity {
    pub mode: Mode,
    pub addr: String,
}

pub struct Api {
    pub engine: Arc<QueryEngine>,
    pub identity: NodeIdentity,
    pub metrics: Metrics,
    /// Admin bearer token; admin routes are refused when none is configured.
    pub admin_token: Option<String>,
    /// Key derived from the cluster secret: health proofs, replication.
    pub cluster_key: cluster::auth::ClusterKey,
    pub state: Arc<DataState>,
    /// The single writer (master: writes; slave: applying changes).
    pub writer: Writer,
    /// Change-log entries the master keeps.
    pub log_retain: u64,
    /// The database file (images are staged next to it).
    pub db_path: PathBuf,
    /// Requests slower than this are logged with their request id
    /// (`[log] slow_ms`).
    pub slow: Duration,
    /// The background warm-up, when `[cache] preload = all`.
    pub preloader: Option<Arc<crate::engine::preload::Preloader>>,
    /// Who leads for writes, and the sync acknowledgment (issue 14).
    pub ha: Arc<Ha>,
}

/// Longest a change-feed request may wait for a change.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// Largest change sequence a client may name: `from + 1` must still be a
/// positive SQLite integer.
const MAX_SEQ: u64 = i64::MAX as u64 - 1;
/// Changes per change-feed answer.
const CHANGES_PER_PULL: usize = 64;
/// Largest term a follower may report: an exact JSON number, with room
/// for every later term.
const MAX_TERM: u64 = (1 << 53) - 1;

impl Api {
    fn route(&self, req: &Request<'_>) -> (RouteLabel, Result<Response, ApiError>) {
        let path = match req.path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => req.path,
        };
        let (label, allowed): (RouteLabel, &'static str) = match path.strip_prefix(PREFIX) {
            Some("/snapshot") => (RouteLabel::Snapshot, "POST"),
            Some("/period") => (RouteLabel::Period, "POST"),
            Some("/stats") => (RouteLabel::Stats, "GET"),
            Some("/cache/reset") => (RouteLabel::CacheReset, "POST"),
            Some("/ingest") => (RouteLabel::Ingest, "POST"),
            Some("/delete") => (RouteLabel::Delete, "POST"),
            Some("/replication/changes") => (RouteLabel::Changes, "GET"),
            Some("/replication/image") => (RouteLabel::Image, "GET"),
            _ => match path {
                "/health" => (RouteLabel::Health, "GET"),
                "/metrics" => (RouteLabel::Metrics, "GET"),
                _ => {
                    let err = ApiError::NotFound {
                        method: req.method.to_string(),
                        path: req.path.to_string(),
                    };
                    return (RouteLabel::Other, Err(err));
                }
            },
        };
        if req.method != allowed {
            let err = ApiError::MethodNotAllowed {
                method: req.method.to_string(),
                path: path.to_string(),
                allowed,
            };
            return (label, Err(err));
        }
        let result = match label {
            RouteLabel::Snapshot => self
                .engine
                .snapshot(req.body)
                .map(ok_shared)
                .map_err(ApiError::from),
            RouteLabel::Period => self
                .engine
                .period(req.body)
                .map(ok_shared)
                .map_err(ApiError::from),
            RouteLabel::Stats => Ok(self.stats()),
            RouteLabel::CacheReset => self.authorize_admin_or_fanout(req).map(|()| {
                self.engine.cache().reset();
                ok_json(&serde_json::json!({"reset": true}))
            }),
            RouteLabel::Ingest | RouteLabel::Delete => {
                self.authorize(req).and_then(|()| self.write(req, label))
            }
            RouteLabel::Changes => self
                .authorize_peer(req, "repl-request")
                .and_then(|nonce| self.changes(req, &nonce)),
            // A slave (signed with the cluster key; the answer is MACed), or
            // an operator's `kamaitachi-node backup` (admin token).
            RouteLabel::Image if req.header(cluster::auth::PROOF_HEADER).is_some() => {
                self.authorize_peer(req, "repl-request").and_then(|nonce| {
                    // Followers copy only the leader's image (issue 14).
                    if self.ha.enabled() && self.ha.leading_term().is_none() {
                        return Err(ApiError::Unavailable(self.ha.not_leader()));
                    }
                    self.image(Some(&nonce))
                })
            }
            RouteLabel::Image => self.authorize(req).and_then(|()| self.image(None)),
            RouteLabel::Health => Ok(self.health(req)),
            RouteLabel::Metrics => Ok(self.metrics()),
            RouteLabel::Other => unreachable_route(),
        };
        (label, result)
    }

    fn authorize(&self, req: &Request<'_>) -> Result<(), ApiError> {
        let Some(expected) = &self.admin_token else {
            return Err(ApiError::Unavailable(
                "admin routes are disabled: set [security] admin_token_file in the node's config".into(),
            ));
        };
        let header = req.header("authorization").ok_or(ApiError::Unauthorized)?;
        let token = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or(ApiError::Unauthorized)?;
        if constant_time_eq(token.trim_ascii(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// A request from a peer (replication): signed with the cluster key,
    /// bound to this node's registered address, the method, the path and
    /// query, a nonce and the time. Returns the nonce, which the answer's
    /// MAC covers. A bearer token is not accepted here.
    fn authorize_peer(&self, req: &Request<'_>, label: &str) -> Result<String, ApiError> {
        use cluster::auth::{NONCE_HEADER, PROOF_HEADER, TIME_HEADER};
        let get = |name: &str| -> Result<&str, ApiError> {
            req.header(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|v| v.len() <= 256)
                .ok_or(ApiError::Unauthorized)
        };
        let (nonce, time, mac) = (get(NONCE_HEADER)?, get(TIME_HEADER)?, get(PROOF_HEADER)?);
        let target = if req.query.is_empty() {
            req.path.to_string()
        } else {
            format!("{}?{}", req.path, req.query)
        };
        if self.cluster_key.verify_request(
            label,
            req.method,
            &self.identity.addr,
            &target,
            (nonce, time, mac),
        ) {
            Ok(nonce.to_string())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// The admin token (a client), or a gateway's fan-out call signed with
    /// the cluster key.
    fn authorize_admin_or_fanout(&self, req: &Request<'_>) -> Result<(), ApiError> {
        if req.header(cluster::auth::PROOF_HEADER).is_some() {
            return self.authorize_peer(req, "fanout").map(|_| ());
        }
        self.authorize(req)
    }

    /// The parts every replication answer's MAC starts with: the slave's
    /// nonce (freshness), this node's address and role.
    /// `role`: the role the answer is made in (taken when the request
    /// was admitted: a leader that steps down during a long-poll still
    /// signs what it answers as the leader it was; the term in the answer
    /// tells the follower whether to believe it).
    fn answer_mac(&self, label: &str, nonce: &str, role: cluster::Role) -> cluster::auth::StreamMac {
        self.cluster_key.begin(
            label,
            &[
                nonce.as_bytes(),
                self.identity.addr.as_bytes(),
                role.as_str().as_bytes(),
            ],
        )
    }

    /// `POST …/ingest` and `…/delete` (master only): validate the whole
    /// batch, commit it with its change-log entry on the writer thread,
    /// publish it, reply.
    ///
    /// With an election only the leader writes, under its term, and the
    /// answer waits for the acknowledgment (`server/ha.rs`). Every 503 says
    /// in `outcome` whether the write is known not to be acknowledged
    /// (refused before it was written, or not acknowledged) or may have
    /// been (the fence's outcome is unknown).
    fn write(&self, req: &Request<'_>, label: RouteLabel) -> Result<Response, ApiError> {
        let Some(term) = self.ha.leading_term() else {
            if self.ha.enabled() {
                return Err(ApiError::not_acknowledged(self.ha.not_leader()));
            }
            let at = self
                .state
                .master_addr()
                .map_or_else(|| " (not located yet)".to_string(), |m| format!(" at {m}"));
            return Err(ApiError::not_acknowledged(format!(
                "this node is a slave: send writes to the master{at}"
            )));
        };
        let needed = match self.ha.admit() {
            Admit::Refuse(why) => return Err(ApiError::not_acknowledged(why)),
            Admit::Wait { needed, .. } => needed,
        };
        let catalog = self.engine.catalog();
        let batch = match label {
            RouteLabel::Ingest => Batch::from_ingest(req.body, &catalog)?,
            _ => Batch::from_delete(req.body)?,
        };
        let committed = self
            .writer
            .write(batch, self.log_retain, term)
            .map_err(|e| match e {
                // The writer thread is gone or its job panicked: as the
                // pool's own error (503 or 500), not as a store failure.
                StoreError::Worker(e) => ApiError::from(e),
                e => ApiError::from(e),
            })?;
        let (written, seq) = (committed.written, committed.seq);
        tracing::debug!(request_id = %request_id(req), seq, written, "write committed");
        self.ha.acknowledge(term, seq, committed.digest, needed)?;
        Ok(ok_json(
            &serde_json::json!({"written": written, "seq": seq, "term": term}),
        ))
    }

    /// `GET …/replication/changes?from=S&wait_ms=W&dataset=D&digest=H&node=N&candidate=C&acked=A&term=T&known=KT.KS`.
    ///
    /// `term`, `known`: the follower's durable term and known acknowledged
    /// position; a newer term, or a position this leader lacks, makes it
    /// record them and resign (L3). The poll counts as the follower's
    /// progress (A1), as proven when `digest` (its history at `from`)
    /// matched this node's. The answer carries this node's acknowledged
    /// horizon (`acked`, V1); the long-poll ends early when it has moved
    /// past `A`, what the follower knows of it.
    fn changes(&self, req: &Request<'_>, nonce: &str) -> Result<Response, ApiError> {
        // Every number has a range: `from` must fit SQLite's signed 64-bit
        // integer with room for `from + 1`; a wait is at most MAX_WAIT.
        let param = |name: &'static str, max: u64| -> Result<Option<u64>, ApiError> {
            let Some(v) = query_param(req.query, name) else {
                return Ok(None);
            };
            match v.parse::<u64>() {
                Ok(n) if n <= max => Ok(Some(n)),
                _ => Err(ApiError::field(
                    name,
                    format!("expected an integer from 0 to {max}, got {:?}", truncate(v, 40)),
                )),
            }
        };
        // A follower must not follow a deposed leader (issue 14).
        if self.ha.enabled() && self.ha.leading_term().is_none() {
            return Err(ApiError::Unavailable(self.ha.not_leader()));
        }
        let role = self.ha.role();
        let from = param("from", MAX_SEQ)?.ok_or_else(|| ApiError::field("from", "required"))?;
        // Bounded: at most MAX_TERM, which fits an i64.
        let their_term = param("term", MAX_TERM)?.map(|t| t as i64);
        // The acknowledged position the follower knows of: `TERM.SEQ`.
        let their_known = match query_param(req.query, "known") {
            None => None,
            Some(v) => Some(
                v.split_once('.')
                    .and_then(|(t, s)| Some((t.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
                    .filter(|(t, s)| *t <= MAX_TERM && *s <= MAX_SEQ)
                    .map(|(t, s)| (t as i64, s))
                    .ok_or_else(|| {
                        ApiError::field(
                            "known",
                            format!("expected TERM.SEQ (two integers), got {:?}", truncate(v, 40)),
                        )
                    })?,
            ),
        };
        // Who polls (inside the signed target): its progress is what the
        // sync acknowledgment waits on.
        let node = match query_param(req.query, "node") {
            None => None,
            Some(n) => {
                cluster::registry::validate_addr(n).map_err(|e| ApiError::field("node", e))?;
                Some(n.to_string())
            }
        };
        let candidate = match query_param(req.query, "candidate") {
            None | Some("0") => false,
            Some("1") => true,
            Some(v) => {
                return Err(ApiError::field(
                    "candidate",
                    format!("expected 0 or 1, got {:?}", truncate(v, 40)),
                ))
            }
        };
        let wait = Duration::from_millis(param("wait_ms", MAX_WAIT.as_millis() as u64)?.unwrap_or(0));
        if let (true, Some(leading)) = (self.ha.enabled(), self.ha.leading_term()) {
            let applied = self.state.applied();
            if let PollTerm::Yield {
                term,
                known_acked,
                depose,
            } = ha::poll_term(leading, applied, their_term, their_known)
            {
                // Durable first: the next campaign runs above `term`, and
                // this node, lacking what was acknowledged, does not run.
                if let Err(e) = self.writer.raise_term(term) {
                    tracing::warn!("could not record term {term} a follower reported: {e}");
                }
                if let Some((t, s)) = known_acked {
                    if let Err(e) = self.writer.raise_known_acked(t, s) {
                        tracing::warn!("could not record the acknowledged change {s} of term {t} a follower reported: {e}");
                    }
                }
                self.ha.yield_to_term(depose);
                let why = match known_acked {
                    Some((t, s)) => format!(
                        "a follower knows change {s} of term {t} was acknowledged, and this leader \
                         (term {leading}) holds only {applied}"
                    ),
                    None => {
                        format!("a follower has seen term {term}, newer than this leader's term {leading}")
                    }
                };
                tracing::warn!("{why}: stepping down");
                return Err(ApiError::Unavailable(format!(
                    "{why}: this node steps down so that a leader of a newer term is elected"
                )));
            }
        }
        let their_acked = param("acked", MAX_SEQ)?;
        let dataset = self.state.dataset_id.load(Ordering::Acquire);
        if let Some(d) = param("dataset", u64::MAX)? {
            if d != dataset {
                return Err(ApiError::Gone(format!(
                    "dataset {d} is not this master's ({dataset})"
                )));
            }
        }
        // The slave's running digest of its history at `from`: if it is not
        // this master's, the slave diverged (same sequence, other content)
        // and must copy the image instead of going on.
        let theirs = match query_param(req.query, "digest") {
            Some(d) if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) => Some(d.to_string()),
            Some(d) => {
                return Err(ApiError::field(
                    "digest",
                    format!("expected 64 hex digits, got {:?}", truncate(d, 80)),
                ))
            }
            None => None,
        };
        let mut proven = false;
        if let (Some(theirs), true) = (&theirs, from > 0) {
            let ours = store::read(self.engine.readers(), move |s| s.digest_at(from))?;
            if ours.as_ref().is_some_and(|o| o != theirs) {
                return Err(ApiError::Gone(format!(
                    "history diverges at change {from}: the slave's differs from the master's"
                )));
            }
            proven = ours.is_some();
        }
        // A follower ahead of this node holds changes this node never made
        // (a former leader's, never acknowledged): it must copy the image.
        let applied = self.state.applied();
        if from > applied {
            return Err(ApiError::Gone(format!(
                "the follower is ahead: it has applied {from}, this node only {applied} (diverged history)"
            )));
        }
        let term = self.ha.leading_term().unwrap_or(0);
        if let Some(node) = &node {
            self.ha.record_progress(node, term, from, proven, candidate);
            // A candidate that follows this leader is a member: after etcd
            // lost its data the election waits for it.
            if candidate && proven {
                if let Some(e) = self.ha.election() {
                    e.note_member(node);
                }
            }
        }
        // Parks this coroutine (not its worker thread) until the writer
        // publishes a change past `from`, the horizon passes what the
        // follower knows, or the wait runs out.
        self.state.wait_for_poll(from, their_acked, wait);
        let (floor, changes) = store::read(self.engine.readers(), move |s| {
            Ok((s.log_floor()?, s.changes_with_digests(from, CHANGES_PER_PULL)?))
        })?;
        if from + 1 < floor {
            return Err(ApiError::Gone(format!(
                "change {} is no longer in the log (oldest kept: {floor})",
                from + 1
            )));
        }
        // The stored batches are JSON already: copied, not re-serialised.
        let mut data = Vec::with_capacity(128 + changes.iter().map(|c| c.batch.len() + 48).sum::<usize>());
        data.extend_from_slice(b"{\"master_seq\":");
        json::push_i64(&mut data, self.state.applied() as i64);
        data.extend_from_slice(b",\"term\":");
        json::push_i64(&mut data, term);
        data.extend_from_slice(b",\"acked\":");
        json::push_i64(&mut data, self.state.acked() as i64);
        data.extend_from_slice(b",\"dataset_id\":");
        json::push_i64(&mut data, dataset as i64);
        data.extend_from_slice(b",\"changes\":[");
        for (n, c) in changes.iter().enumerate() {
            let (seq, batch, digest) = (c.seq, &c.batch, &c.digest);
            if n > 0 {
                data.push(b',');
            }
            data.extend_from_slice(b"{\"seq\":");
            json::push_i64(&mut data, seq as i64);
            data.extend_from_slice(b",\"term\":");
            json::push_i64(&mut data, c.term);
            if let Some(d) = digest {
                data.extend_from_slice(b",\"digest\":\"");
                data.extend_from_slice(d.as_bytes());
                data.push(b'"');
            }
            data.extend_from_slice(b",\"batch\":");
            data.extend_from_slice(batch.as_bytes());
            data.push(b'}');
        }
        data.extend_from_slice(b"]}");
        let body = json::envelope(0, "success", &data);
        let mut mac = self.answer_mac("repl-changes", nonce, role);
        mac.update(&body);
        let mut resp = Response::json(200, Body::Owned(body));
        resp.headers.push((cluster::auth::PROOF_HEADER, mac.finish_hex()));
        Ok(resp)
    }

    /// `GET …/replication/image`: a consistent copy of the database.
    fn image(&self, nonce: Option<&str>) -> Result<Response, ApiError> {
        let signed = nonce.is_some();
        let nonce = nonce.unwrap_or("");
        let dir = self
            .db_path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tmp = dir.join(format!(".image-{}-{nanos}.db", std::process::id()));
        // The image is made and checksummed on a reader thread
        // (a pass over the file with a 1 MiB buffer), then streamed from
        // the file in chunks: memory does not grow with the database.
        let path = tmp.clone();
        let (addr, role, nonce) = (
            self.identity.addr.clone(),
            self.ha.role().as_str(),
            nonce.to_string(),
        );
        // The term this image is served under (F2), taken with the role.
        let term = self.ha.leading_term().unwrap_or(0);
        let term_s = term.to_string();
        let key = self.cluster_key.clone();
        let made = store::read(self.engine.readers(), move |s| {
            s.image_to(&path)?;
            // SQLite's quick check runs once, on the slave that receives
            // the image (it must check what arrived anyway): checking here
            // too cost a third of a full sync's time.
            let v = store::Store::open_ro(&path)?.data_version()?;
            // The MAC covers the answer's nonce, this node, its sequence,
            // dataset and term, and every byte of the image (same pass as
            // the CRC).
            let (seq, dataset) = (v.version.to_string(), v.dataset_id.to_string());
            let mut mac = key.begin(
                "repl-image",
                &[
                    nonce.as_bytes(),
                    addr.as_bytes(),
                    role.as_bytes(),
                    seq.as_bytes(),
                    dataset.as_bytes(),
                    term_s.as_bytes(),
                ],
            );
            let (len, crc) = store::file_crc(&path, |chunk| mac.update(chunk))?;
            Ok((v, len, crc, mac.finish_hex()))
        });
        let opened = made.and_then(|m| {
            let file = std::fs::File::open(&tmp).map_err(|e| StoreError::BadImage(e.to_string()))?;
            Ok((m, file))
        });
        let ((version, len, crc, proof), file) = match opened {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        tracing::info!("replication: image of {len} bytes made; streaming it");
        let body = ImageStream::new(file, tmp, len, self.engine.readers().clone());
        let mut resp = Response {
            status: 200,
            content_type: "application/vnd.sqlite3",
            body: Body::Stream(Box::new(body)),
            headers: vec![
                ("X-Kamaitachi-Seq", version.version.to_string()),
                ("X-Kamaitachi-Dataset", version.dataset_id.to_string()),
                ("X-Kamaitachi-Crc32", crc.to_string()),
                ("X-Kamaitachi-Term", term.to_string()),
            ],
        };
        if signed {
            resp.headers.push((cluster::auth::PROOF_HEADER, proof));
        }
        Ok(resp)
    }

    fn replication_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "role": self.ha.role().as_str(),
            "applied_seq": self.state.applied(),
            "master_seq": self.state.master_seq.load(Ordering::Acquire),
            "lag": self.state.lag(),
            "master": self.state.master_addr(),
        });
        self.add_election_json(&mut v);
        self.add_horizon_json(&mut v);
        v
    }

    /// `acked_seq` (the horizon), `pending` (changes not yet visible, and
    /// the one every read waits for when what it touches is not known) and
    /// `refused` (why the follower refuses the leader's image, F3).
    fn add_horizon_json(&self, v: &mut serde_json::Value) {
        let (pending, everything) = self.state.pending.describe();
        v["acked_seq"] = self.state.acked().into();
        v["pending"] = serde_json::json!({"changes": pending, "all_until": everything});
        v["refused"] = self.state.refused().into();
    }

    /// `role`, `candidate`, `leader`, `term`, `sync` (issue 14).
    fn add_election_json(&self, v: &mut serde_json::Value) {
        v["role"] = self.ha.role().as_str().into();
        v["candidate"] = self.ha.candidate.into();
        v["leader"] = match (self.ha.leader(), self.ha.enabled(), self.ha.leading_term()) {
            (Some(l), _, _) => serde_json::json!({"addr": l.addr, "term": l.term, "since": l.since}),
            // No election: a master leads itself, term 0.
            (None, false, Some(t)) => {
                serde_json::json!({"addr": self.identity.addr, "term": t, "since": null})
            }
            _ => serde_json::Value::Null,
        };
        v["term"] = self.ha.leading_term().into();
        v["sync"] = self.ha.sync_json();
        if let Some(e) = self.ha.election() {
            let view = e.view();
            if !view.waiting.is_empty() {
                v["election_waiting"] = view.waiting.clone().into();
            }
        }
    }

    fn health(&self, req: &Request<'_>) -> Response {
        let ready = self.state.is_ready();
        let mut body = serde_json::json!({
            "status": if ready { "ok" } else { "unavailable" },
            "mode": self.identity.mode.as_str(),
            "addr": self.identity.addr,
            "data_version": self.state.applied(),
            "applied_seq": self.state.applied(),
            "master_seq": self.state.master_seq.load(Ordering::Acquire),
            "lag": self.state.lag(),
        });
        self.add_election_json(&mut body);
        let mut replication = serde_json::json!({});
        self.add_horizon_json(&mut replication);
        body["replication"] = replication;
        if let Some(p) = &self.preloader {
            body["preload"] = p.json();
        }
        if !ready {
            body["reason"] = match self.identity.mode {
                Mode::Slave => "not yet synced with the master".into(),
                _ => "node is starting or stopping".into(),
            };
        }
        let mut resp = Response::json(
            if ready { 200 } else { 503 },
            Body::Owned(body.to_string().into_bytes()),
        );
        // A challenge gets the proof that this node holds the cluster
        // secret, bound to the challenge, its registered address and role.
        let challenge = req
            .header(cluster::auth::CHALLENGE_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|c| (16..=128).contains(&c.len()));
        if let Some(c) = challenge {
            // The role it plays now: master while it leads.
            let role = self.ha.role().as_str();
            resp.headers.push((
                cluster::auth::PROOF_HEADER,
                self.cluster_key.health_proof(c, &self.identity.addr, role),
            ));
            resp.headers
                .push((cluster::auth::NODE_HEADER, self.identity.addr.clone()));
            resp.headers.push((cluster::auth::ROLE_HEADER, role.to_string()));
        }
        resp
    }

    fn stats(&self) -> Response {
        let c = self.engine.cache().stats();
        ok_json(&serde_json::json!({
            "total_records": self.state.total_records.load(Ordering::Relaxed),
            "stock_count": self.engine.catalog().subject_count(),
            "data_version": self.state.applied(),
            "cache": {
                "entries": c.entries,
                "bytes": c.bytes,
                "max_bytes": c.max_bytes,
                "hits": c.hits,
                "misses": c.misses,
                "hit_rate": c.hit_rate(),
                "evictions": c.evictions,
            },
            "replication": self.replication_json(),
        }))
    }

    fn metrics(&self) -> Response {
        let body = self.metrics.render(
            &self.engine.cache().stats(),
            self.state.applied(),
            self.state.master_seq.load(Ordering::Acquire),
            self.state.lag(),
            self.engine.store_loads(),
        );
        let mut body = body;
        let connected = self.ha.connected_candidates();
        let extra = format!(
            "# HELP kamaitachi_leader 1 while this node leads for writes.\n# TYPE kamaitachi_leader gauge\nkamaitachi_leader {}\n\
             # HELP kamaitachi_term The election term this node leads under (0 when it does not).\n# TYPE kamaitachi_term gauge\nkamaitachi_term {}\n\
             # HELP kamaitachi_sync_replicas_connected Candidate followers that polled within 3 s.\n# TYPE kamaitachi_sync_replicas_connected gauge\nkamaitachi_sync_replicas_connected {connected}\n\
             # HELP kamaitachi_sync_degraded 1 while fewer candidates are connected than sync_replicas.\n# TYPE kamaitachi_sync_degraded gauge\nkamaitachi_sync_degraded {}\n\
             # HELP kamaitachi_writes_unconfirmed_total Writes committed but not acknowledged (503, outcome not_acknowledged).\n# TYPE kamaitachi_writes_unconfirmed_total counter\nkamaitachi_writes_unconfirmed_total {}\n\
             # HELP kamaitachi_writes_outcome_unknown_total Writes committed whose acknowledgment may or may not have been recorded (503, outcome unknown).\n# TYPE kamaitachi_writes_outcome_unknown_total counter\nkamaitachi_writes_outcome_unknown_total {}\n\
             # HELP kamaitachi_elections_won_total Elections this process won.\n# TYPE kamaitachi_elections_won_total counter\nkamaitachi_elections_won_total {}\n",
            u8::from(self.ha.leading_term().is_some()),
            self.ha.leading_term().unwrap_or(0),
            u8::from(self.ha.sync_state(connected) == "degraded"),
            self.ha.writes_unconfirmed.load(Ordering::Relaxed),
            self.ha.writes_outcome_unknown.load(Ordering::Relaxed),
            self.ha.elections_won.load(Ordering::Relaxed),
        );
        body.extend_from_slice(extra.as_bytes());
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: Body::Owned(body),
            headers: Vec::new(),
        }
    }
}

/// The value of `name` in a query string (no percent-decoding: the
/// parameters are numbers).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The JSON answer for an error: the envelope, with `"outcome"` after
/// `data` when the error says whether a write may have been acknowledged.
fn error_response(err: &ApiError) -> Response {
    let status = err.status();
    let mut body = Vec::with_capacity(96);
    json::begin_envelope(&mut body, status, &err.to_string());
    body.extend_from_slice(b"null");
    if let Some(outcome) = err.outcome() {
        body.extend_from_slice(b",\"outcome\":");
        json::push_str(&mut body, outcome.as_str());
    }
    json::end_envelope(&mut body);
    let mut resp = Response::json(status, Body::Owned(body));
    match err {
        ApiError::MethodNotAllowed { allowed, .. } => resp.headers.push(("Allow", allowed.to_string())),
        // The gateway does not eject a node for this 503.
        ApiError::Pending(_) => resp.headers.push((cluster::RETRY_AFTER, "1".to_string())),
        _ => {}
    }
    resp
}

/// The request's `X-Request-Id` (as the gateway sends it), or `-`.
fn request_id(req: &Request<'_>) -> String {
    req.header(cluster::request_id::HEADER)
        .and_then(cluster::request_id::RequestId::from_client)
        .map_or_else(|| "-".to_string(), |id| id.to_string())
}

impl Service for Api {
    fn call(&self, req: &Request<'_>) -> Response {
        let started = Instant::now();
        let (label, result) = self.route(req);
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                if e.status() >= 500 {
                    // The request's context, next to the panic or fault it met.
                    tracing::error!(
                        request_id = %request_id(req),
                        route = label.as_str(),
                        status = e.status(),
                        "{} {}{}{} ({} body bytes): {e}",
                        req.method,
                        req.path,
                        if req.query.is_empty() { "" } else { "?" },
                        req.query,
                        req.body.len()
                    );
                }
                error_response(&e)
            }
        };
        let elapsed = started.elapsed();
        self.metrics
            .observe(label, response.status, elapsed.as_secs_f64());
        // The change feed long-polls by design: not slow.
        if elapsed >= self.slow && label != RouteLabel::Changes {
            tracing::warn!(
                request_id = %request_id(req),
                route = label.as_str(),
                status = response.status,
                elapsed_ms = elapsed.as_millis() as u64,
                "request answered slowly"
            );
        }
        response
    }

    fn reject(&self, err: &TransportError) -> Response {
        let err = &ApiError::from(err.clone());
        if err.status() >= 500 {
            tracing::warn!("answering {}: {err}", err.status());
        }
        error_response(err)
    }
}

/// At most `max` characters of `s`, for echoing bad input in a message.
fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn ok_shared(bytes: Arc<[u8]>) -> Response {
    Response::json(200, Body::Shared(bytes))
}

fn ok_json(data: &serde_json::Value) -> Response {
    Response::json(
        200,
        Body::Owned(json::envelope(0, "success", data.to_string().as_bytes())),
    )
}

fn unreachable_route() -> Result<Response, ApiError> {
    Err(ApiError::Internal("route table out of step".into()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
