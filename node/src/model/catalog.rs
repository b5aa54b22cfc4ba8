//! What exists: indicators, subjects and topic pools.
//!
//! The catalog is small (one entry per subject and indicator), loaded from
//! SQLite at start and kept whole in memory, so validating a request — does
//! this id exist, is this subject known, who is in this pool — never touches
//! the database. Each subject's descriptive JSON is rendered once here and
//! copied as bytes into every response.

use std::collections::HashMap;
use std::sync::Arc;

use crate::json;

/// The pool every subject joins, the one the original's clients ask for.
/// It exists even while empty, so a new database answers it with no rows.
pub const LISTING_POOL: &str = "stock_a_listing_pool";

/// The indicators of the contract (and of the sample data), in id order
/// from 1: what a new, empty database starts with.
pub const STANDARD_INDICATORS: &[(&str, &str)] = &[
    ("operating_income", "Operating income"),
    (
        "parent_holder_net_profit",
        "Net profit attributable to parent holders",
    ),
    ("total_operating_cost", "Total operating cost"),
    ("net_profit", "Net profit"),
    ("operating_profit", "Operating profit"),
    ("total_profit", "Total profit"),
    ("total_assets", "Total assets"),
    ("basic_eps", "Basic earnings per share"),
];

/// A listed company (or other subject) and its pre-rendered JSON object.
#[derive(Debug)]
pub struct SubjectInfo {
    /// `market:code`, e.g. `33:000001`.
    pub subject: Arc<str>,
    /// `{"subject":…,"name":…,"status":…,"listing_date":…,"category":…}`.
    pub json: Box<str>,
}

impl SubjectInfo {
    pub fn new(subject: &str, name: &str, status: &str, listing_date: &str, category: &str) -> Self {
        // Rendered by hand to keep the contract's field order.
        let mut buf = Vec::with_capacity(128);
        for (i, (key, value)) in [
            ("subject", subject),
            ("name", name),
            ("status", status),
            ("listing_date", listing_date),
            ("category", category),
        ]
        .into_iter()
        .enumerate()
        {
            buf.push(if i == 0 { b'{' } else { b',' });
            json::push_str(&mut buf, key);
            buf.push(b':');
            json::push_str(&mut buf, value);
        }
        buf.push(b'}');
        let json = String::from_utf8_lossy(&buf).into_owned().into_boxed_str();
        SubjectInfo {
            subject: Arc::from(subject),
            json,
        }
    }
}

/// An indicator such as `operating_income`; `id` indexes `Report::values`.
#[derive(Debug, Clone)]
pub struct Indicator {
    pub id: usize,
    pub code: Arc<str>,
}

#[derive(Debug, Default)]
pub struct Catalog {
    indicators: HashMap<Arc<str>, Indicator>,
    subjects: HashMap<Arc<str>, Arc<SubjectInfo>>,
    topics: HashMap<String, Vec<Arc<SubjectInfo>>>,
}

impl Catalog {
    pub fn new(
        indicators: Vec<Indicator>,
        subjects: Vec<SubjectInfo>,
        topic_members: Vec<(String, String)>,
    ) -> Self {
        let indicators = indicators.into_iter().map(|i| (i.code.clone(), i)).collect();
        let subjects: HashMap<Arc<str>, Arc<SubjectInfo>> = subjects
            .into_iter()
            .map(|s| (s.subject.clone(), Arc::new(s)))
            .collect();
        let mut topics: HashMap<String, Vec<Arc<SubjectInfo>>> = HashMap::new();
        for (topic, subject) in topic_members {
            if let Some(info) = subjects.get(subject.as_str()) {
                topics.entry(topic).or_default().push(info.clone());
            }
        }
        topics.entry(LISTING_POOL.to_string()).or_default();
        for members in topics.values_mut() {
            members.sort_by(|a, b| a.subject.cmp(&b.subject));
        }
        Catalog {
            indicators,
            subjects,
            topics,
        }
    }

    pub fn indicator(&self, code: &str) -> Option<&Indicator> {
        self.indicators.get(code)
    }

    pub fn subject(&self, subject: &str) -> Option<&Arc<SubjectInfo>> {
        self.subjects.get(subject)
    }

    pub fn topic(&self, topic: &str) -> Option<&[Arc<SubjectInfo>]> {
        self.topics.get(topic).map(Vec::as_slice)
    }

    /// Length of a `Report::values` array that has room for every indicator.
    pub fn value_width(&self) -> usize {
        self.indicators.values().map(|i| i.id + 1).max().unwrap_or(0)
    }

    /// Every subject's name, sorted.
    pub fn subject_names(&self) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = self.subjects.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn subject_count(&self) -> usize {
        self.subjects.len()
    }
}
