//! The recorded history of a fault run: every operation a client issued,
//! when it was invoked and completed (time since the run's start), where it
//! went, and what came back — the input of the checker.
//!
//! Writes: write `id` sets its own cell, subject [`cell_of`]`(id)` (a new
//! subject per write, one report row, one value), to [`value_of`]`(id)`,
//! unique to it; so whether a write is present on a node, and which write a
//! read saw, is exact. Reads: a read of write `id`'s cell records the value
//! it saw (`None`: the subject is not there).
//!
//! How an answer counts ([`classify_write`]):
//! - `Ok`: 200.
//! - `NotAcknowledged`: 503 saying the write is not acknowledged
//!   (`"outcome": "not_acknowledged"`, or the message "NOT acknowledged"):
//!   it failed, but it may have been committed and survive.
//! - `Unknown`: 503 with `"outcome": "unknown"`; a 502/504 from the gateway
//!   (it may have reached a node); a 500; no answer after the request was
//!   sent (timeout, reset, close).
//! - `Failed`: any other refusal (4xx, a 503 such as "not the leader"), or
//!   no connection at all (nothing was sent).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The market of every subject a fault run writes (none in the sample data).
pub const MARKET: &str = "66";

/// The report date every write uses (Q2 2025, 00:00 UTC of 2025-06-30).
pub const REPORT_DATE: i64 = 1_751_241_600;

/// The cell of write `id`: its own subject.
pub fn cell_of(id: u64) -> String {
    format!("{MARKET}:{id:07}")
}

/// The value write `id` sets: unique to it, exact in a double.
pub fn value_of(id: u64) -> f64 {
    id as f64 * 10.0 + 0.5
}

/// The write whose value `v` is, if any.
pub fn write_of_value(v: f64) -> Option<u64> {
    let x = (v - 0.5) / 10.0;
    (x >= 0.0 && x.fract() == 0.0 && x < 1e15).then_some(x as u64)
}

/// The write whose cell `subject` is, if any.
pub fn write_of_cell(subject: &str) -> Option<u64> {
    let code = subject.strip_prefix(MARKET)?.strip_prefix(':')?;
    code.parse().ok().filter(|_| code.len() == 7)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    Failed,
    /// Failed, and said so, but may have been committed and may survive.
    NotAcknowledged,
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::NotAcknowledged => "not-acknowledged",
            Outcome::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum OpKind {
    /// Write `id` (cell [`cell_of`], value [`value_of`]).
    Write { id: u64 },
    /// A read of write `id`'s cell; `seen`: the value it returned, when it
    /// was answered 200 (`None`: no value there).
    Read { id: u64, seen: Option<f64> },
}

/// What an attempt's transport ended with, before any status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A whole answer: status and body.
    Answer(u16, String),
    /// No connection: nothing was sent.
    NotConnected(String),
    /// Sent (or partly sent), then no whole answer: timeout, reset, close.
    NoAnswer(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub kind: OpKind,
    /// Where it went: "gateway", or a node's name.
    pub target: String,
    pub invoked: Duration,
    pub completed: Duration,
    pub outcome: Outcome,
    /// Status and the start of the message (or the transport error).
    pub detail: String,
}

impl Op {
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            OpKind::Write { id } => format!("write {id} ({} = {})", cell_of(*id), value_of(*id)),
            OpKind::Read { id, seen } => format!("read of {} saw {seen:?}", cell_of(*id)),
        };
        format!(
            "{what} via {} [{:.2}s..{:.2}s] {}: {}",
            self.target,
            self.invoked.as_secs_f64(),
            self.completed.as_secs_f64(),
            self.outcome.as_str(),
            self.detail
        )
    }
}

/// How a write's attempt counts (see the module comment).
pub fn classify_write(sent: &Sent) -> Outcome {
    match sent {
        Sent::NotConnected(_) => Outcome::Failed,
        Sent::NoAnswer(_) => Outcome::Unknown,
        Sent::Answer(200, _) => Outcome::Ok,
        Sent::Answer(status, body) => {
            let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let outcome = json["outcome"]
                .as_str()
                .or_else(|| json["data"]["outcome"].as_str())
                .unwrap_or("");
            let msg = json["status_msg"].as_str().unwrap_or(body);
            if outcome == "unknown" {
                Outcome::Unknown
            } else if outcome == "not_acknowledged" || msg.contains("NOT acknowledged") {
                Outcome::NotAcknowledged
            } else if matches!(status, 500 | 502 | 504) {
                Outcome::Unknown
            } else {
                Outcome::Failed
            }
        }
    }
}

/// The value a snapshot answer of `subject` shows: `Ok(None)` when the
/// subject is not there (or has no value), `Err` when the answer is not a
/// 200 with a readable body.
pub fn read_value(sent: &Sent, subject: &str) -> Result<Option<f64>, String> {
    let Sent::Answer(status, body) = sent else {
        return Err(format!("{sent:?}"));
    };
    if *status != 200 {
        return Err(format!("{status} {}", short(body)));
    }
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("200 but not JSON ({e}): {}", short(body)))?;
    let Some(rows) = json["data"].as_array() else {
        return Err(format!("200 without a data list: {}", short(body)));
    };
    Ok(rows
        .iter()
        // A row's `subject` is the subject's record: `{"subject": "66:…", "name": …}`.
        .find(|r| r["subject"]["subject"] == subject)
        .and_then(|r| r["data"]["net_profit"].as_f64()))
}

/// The start of a body, for details and reports.
pub fn short(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let text = json["status_msg"].as_str().unwrap_or(body);
    text.chars().take(160).collect()
}

/// The history, filled by the client threads while the run goes on.
pub struct History {
    started: Instant,
    ops: Mutex<Vec<Op>>,
}

impl History {
    pub fn new(started: Instant) -> History {
        History {
            started,
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Time since the run's start.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// Every operation recorded so far, in order of completion.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Sent {
        Sent::Answer(status, body.to_string())
    }

    #[test]
    fn answers_are_classified_by_what_they_say_about_the_write() {
        assert_eq!(classify_write(&answer(200, "{}")), Outcome::Ok);
        assert_eq!(
            classify_write(&answer(
                503,
                r#"{"status_code":503,"status_msg":"x","outcome":"unknown"}"#
            )),
            Outcome::Unknown
        );
        assert_eq!(
            classify_write(&answer(
                503,
                r#"{"status_code":503,"status_msg":"x","outcome":"not_acknowledged"}"#
            )),
            Outcome::NotAcknowledged
        );
        assert_eq!(
            classify_write(&answer(
                503,
                r#"{"status_msg":"write committed on the leader as change 7 but not confirmed; it is NOT acknowledged"}"#
            )),
            Outcome::NotAcknowledged
        );
        assert_eq!(
            classify_write(&answer(503, r#"{"status_msg":"this node is not the leader"}"#)),
            Outcome::Failed
        );
        assert_eq!(classify_write(&answer(401, "{}")), Outcome::Failed);
        assert_eq!(classify_write(&answer(502, "{}")), Outcome::Unknown);
        assert_eq!(classify_write(&answer(504, "")), Outcome::Unknown);
        assert_eq!(classify_write(&answer(500, "boom")), Outcome::Unknown);
        assert_eq!(
            classify_write(&Sent::NotConnected("refused".into())),
            Outcome::Failed
        );
        assert_eq!(
            classify_write(&Sent::NoAnswer("timed out".into())),
            Outcome::Unknown
        );
    }

    #[test]
    fn a_read_shows_the_value_of_its_subject_or_none() {
        let s = cell_of(12);
        let body = format!(
            r#"{{"status_code":0,"data":[{{"subject":{{"subject":"{s}","name":"x"}},"data":{{"net_profit":120.5,"report_date":1}}}}]}}"#
        );
        assert_eq!(read_value(&answer(200, &body), &s), Ok(Some(120.5)));
        let none = r#"{"status_code":0,"status_msg":"success; unknown subjects: 66:0000012","data":[]}"#;
        assert_eq!(read_value(&answer(200, none), &s), Ok(None));
        assert!(read_value(&answer(503, "{}"), &s).is_err());
        assert!(read_value(&Sent::NoAnswer("reset".into()), &s).is_err());
    }

    #[test]
    fn cells_and_values_name_their_write() {
        for id in [0, 1, 99, 1_234_567] {
            assert_eq!(write_of_cell(&cell_of(id)), Some(id));
            assert_eq!(write_of_value(value_of(id)), Some(id));
        }
        assert_eq!(write_of_cell("33:000001"), None);
        assert_eq!(write_of_value(3.0), None);
    }
}
