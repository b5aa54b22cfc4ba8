//! Writing JSON responses straight into bytes.
//!
//! The envelope is `{"status_code":N,"status_msg":"…","data":…}`. Query
//! results are written field by field into one buffer — subject objects are
//! copied from their pre-rendered JSON — so a response is built without an
//! intermediate `serde_json::Value`, and once built it can be cached as is.

use crate::engine::request::IdRef;
use crate::model::catalog::SubjectInfo;
use crate::model::series::Report;

/// Appends `s` as a JSON string literal.
pub fn push_str(buf: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail; a &str always serialises.
    let _ = serde_json::to_writer(&mut *buf, s);
}

pub fn push_i64(buf: &mut Vec<u8>, v: i64) {
    let _ = serde_json::to_writer(&mut *buf, &v);
}

/// Appends a number, or `null` for a missing value.
pub fn push_opt_f64(buf: &mut Vec<u8>, v: Option<f64>) {
    match v {
        Some(v) if v.is_finite() => {
            let _ = serde_json::to_writer(&mut *buf, &v);
        }
        _ => buf.extend_from_slice(b"null"),
    }
}

/// Starts an envelope; the caller appends `data` and then calls
/// [`end_envelope`].
pub fn begin_envelope(buf: &mut Vec<u8>, status_code: u16, msg: &str) {
    buf.extend_from_slice(b"{\"status_code\":");
    push_i64(buf, status_code as i64);
    buf.extend_from_slice(b",\"status_msg\":");
    push_str(buf, msg);
    buf.extend_from_slice(b",\"data\":");
}

pub fn end_envelope(buf: &mut Vec<u8>) {
    buf.push(b'}');
}

/// A whole envelope whose `data` is already JSON.
pub fn envelope(status_code: u16, msg: &str, data_json: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + msg.len() + data_json.len());
    begin_envelope(&mut buf, status_code, msg);
    buf.extend_from_slice(data_json);
    end_envelope(&mut buf);
    buf
}

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
