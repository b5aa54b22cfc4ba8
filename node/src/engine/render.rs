//! Rendering query results: snapshot rows and period entries, written
//! field by field into the response buffer with the primitives of
//! `json.rs`.
//!
//! Subject objects are copied from their pre-rendered JSON (`catalog.rs`),
//! so a response is built without an intermediate `serde_json::Value`, and
//! once built it can be cached as is.

use crate::engine::request::IdRef;
use crate::json::{push_i64, push_opt_f64, push_str};
use crate::model::catalog::SubjectInfo;
use crate::model::series::Report;

/// `"success"`, or `"success; unknown subjects: …"`.
pub fn success_msg(unknown: &[String]) -> String {
    if unknown.is_empty() {
        return "success".to_string();
    }
    const SHOWN: usize = 20;
    let mut msg = format!(
        "success; unknown subjects: {}",
        unknown[..unknown.len().min(SHOWN)].join(",")
    );
    if unknown.len() > SHOWN {
        msg.push_str(&format!(" and {} more", unknown.len() - SHOWN));
    }
    msg
}

/// One snapshot row: `{"subject":{…},"data":{"<id>":v,…,"report_date":N,"end_date":"…"}}`.
pub fn push_snapshot_row(buf: &mut Vec<u8>, info: &SubjectInfo, ids: &[IdRef], report: Option<&Report>) {
    buf.extend_from_slice(b"{\"subject\":");
    buf.extend_from_slice(info.json.as_bytes());
    buf.extend_from_slice(b",\"data\":{");
    for id in ids {
        push_str(buf, &id.code);
        buf.push(b':');
        push_opt_f64(buf, report.and_then(|r| r.value(id.id)));
        buf.push(b',');
    }
    buf.extend_from_slice(b"\"report_date\":");
    match report {
        Some(r) => {
            push_i64(buf, r.report_date);
            buf.extend_from_slice(b",\"end_date\":");
            push_str(buf, &r.end_date);
        }
        None => buf.extend_from_slice(b"null,\"end_date\":null"),
    }
    buf.extend_from_slice(b"}}");
}

/// One period entry: the subject and its reports, newest first.
pub fn push_period_entry(buf: &mut Vec<u8>, info: &SubjectInfo, ids: &[IdRef], reports: &[Report]) {
    buf.extend_from_slice(b"{\"subject\":");
    buf.extend_from_slice(info.json.as_bytes());
    buf.extend_from_slice(b",\"data\":[");
    for (n, r) in reports.iter().rev().enumerate() {
        if n > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"end_date\":");
        push_str(buf, &r.end_date);
        buf.extend_from_slice(b",\"period\":");
        push_str(buf, &r.period);
        buf.extend_from_slice(b",\"declare_date\":");
        push_str(buf, &r.declare_date);
        buf.extend_from_slice(b",\"year\":");
        push_str(buf, &r.year);
        buf.extend_from_slice(b",\"combine\":");
        push_str(buf, &format!("{}:{}_{}", info.subject, r.year, r.period));
        buf.extend_from_slice(b",\"report_date\":");
        push_i64(buf, r.report_date);
        for id in ids {
            buf.push(b',');
            push_str(buf, &id.code);
            buf.push(b':');
            push_opt_f64(buf, r.value(id.id));
        }
        buf.push(b'}');
    }
    buf.extend_from_slice(b"]}");
}
