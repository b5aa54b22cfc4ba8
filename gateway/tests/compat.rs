//! Users of the original (KamaitachiGo) move over unchanged: the guide's
//! `master.ini`, `slave.ini` (and a copy with another port, as its "start
//! Slave2" step says) and `gateway.ini`, verbatim but for the ports, start a
//! real cluster from one directory the way the guide starts it (no
//! `[database]`, no `[security]`); then the exact bodies of the original's
//! benchmark scenarios 1–4 (`tools/benchmark_scenarios.go`, its subjects,
//! `field` outside `ids`), of its API document's examples and a Go client's
//! zero-valued struct all get 200 with rows through the gateway.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// The guide's master.ini (分布式部署指南.md), `#` comments included.
const GUIDE_MASTER: &str = "\
[server]
port = 8080
mode = master
service_name = kamaitachi-master
service_addr = localhost:8080

[cache]
max_bytes = 2147483648          # 2GB缓存
snapshot_path = ./data/master_snapshot.dat
snapshot_interval = 10           # 10分钟快照一次

[etcd]
endpoints = localhost:2379
prefix = /kamaitachi
ttl = 10                         # 10秒心跳
";

const GUIDE_SLAVE: &str = "\
[server]
port = 8081
mode = slave
service_name = kamaitachi-slave
service_addr = localhost:8081

[cache]
max_bytes = 2147483648
snapshot_path = ./data/slave_snapshot.dat
snapshot_interval = 10

[etcd]
endpoints = localhost:2379
prefix = /kamaitachi
ttl = 10
";

const GUIDE_GATEWAY: &str = "\
[server]
port = 9000
mode = gateway
service_name = kamaitachi-gateway
service_addr = localhost:9000

[etcd]
endpoints = localhost:2379
prefix = /kamaitachi
ttl = 10
";

/// The original benchmark's subjects and indicators.
const STOCK_CODES: [&str; 8] = [
    "33:00000009",
    "33:00000010",
    "33:00000011",
    "33:00000012",
    "33:00000013",
    "33:00000014",
    "33:00000015",
    "33:00000016",
];
const INDICATORS: [&str; 6] = [
    "operating_income",
    "parent_holder_net_profit",
    "total_operating_cost",
    "net_profit",
    "operating_profit",
    "total_profit",
];

/// A process started in the test's directory (the kit's [`Process`]:
/// killed when dropped), its log `{name}.log` there.
fn spawn_in(bin: &Path, dir: &Path, args: &[&str], name: &str) -> Process {
    let log = dir.join(format!("{name}.log"));
    Process::spawn(name, Command::new(bin).args(args).current_dir(dir), &log)
}

/// Waits until `/health` on `port` answers 200.
trait WaitHealthy {
    fn wait_healthy(&mut self, port: u16);
}

impl WaitHealthy for Process {
    fn wait_healthy(&mut self, port: u16) {
        self.wait_ready(Duration::from_secs(30), &format!("not healthy on {port}"), || {
            try_request(port, "GET", "/health", b"", &[]).is_ok_and(|r| r.status == 200)
        });
    }
}

/// The guide's text with its ports moved: 8080/8081/9000 and etcd's 2379.
fn ported(text: &str, port: u16, etcd: &Etcd) -> String {
    text.replace("8080", &port.to_string())
        .replace("8081", &port.to_string())
        .replace("9000", &port.to_string())
        .replace("localhost:2379", &etcd.endpoint())
}

/// Unix seconds of y-m-d 00:00 UTC.
fn day(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    (era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468) * 86_400
}

/// Reports 2021–2024 for the original's subjects and the API doc's.
fn ingest_body() -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut records = Vec::new();
    let subjects = STOCK_CODES
        .iter()
        .copied()
        .chain(["33:000001", "33:000002", "33:000003"]);
    for s in subjects {
        for y in 2021..=2024 {
            for (q, (m, d)) in [(3, 31), (6, 30), (9, 30), (12, 31)].into_iter().enumerate() {
                let mut values = serde_json::Map::new();
                for id in INDICATORS {
                    values.insert(
                        id.into(),
                        json!((rng.random_range(1e6..1e10f64) * 100.0).round() / 100.0),
                    );
                }
                if q == 1 {
                    values.insert("net_profit".into(), Value::Null);
                }
                records.push(json!({
                    "subject": s, "name": format!("Company {s}"),
                    "report_date": day(y, m, d), "end_date": format!("{y}-{m:02}-{d:02}"),
                    "year": y.to_string(), "period": format!("Q{}", q + 1),
                    "declare_date": format!("{}-04-20", y + 1), "values": values,
                }));
            }
        }
    }
    json!({ "records": records }).to_string()
}

/// `tools/benchmark_scenarios.go`'s getRequestBody, same text and choices.
fn scenario_body(rng: &mut ChaCha8Rng, scenario: u8) -> String {
    let ind = |rng: &mut ChaCha8Rng| INDICATORS[rng.random_range(0..INDICATORS.len())];
    let stock = |rng: &mut ChaCha8Rng| STOCK_CODES[rng.random_range(0..STOCK_CODES.len())];
    match scenario {
        1 => {
            let ids = [ind(rng), ind(rng), ind(rng)].join(",");
            let subjects = [stock(rng), stock(rng)].join(",");
            format!(
                "{{\n\t\t\t\"ids\": \"{ids}\",\n\t\t\t\"subjects\": \"{subjects}\",\n\t\t\t\"field\": \"report_date\",\n\t\t\t\"order\": -1,\n\t\t\t\"limit\": 20,\n\t\t\t\"offset\": 0\n\t\t}}"
            )
        }
        2 => {
            let ids = [ind(rng), ind(rng)].join(",");
            let subject = stock(rng);
            format!(
                "{{\n\t\t\t\"ids\": \"{ids}\",\n\t\t\t\"subjects\": \"{subject}\",\n\t\t\t\"field\": \"operating_income\",\n\t\t\t\"order\": -1,\n\t\t\t\"limit\": 8,\n\t\t\t\"offset\": 0\n\t\t}}"
            )
        }
        3 => {
            let n = 100 + rng.random_range(0..200);
            let mut subjects: Vec<&str> = (0..n).map(|_| stock(rng)).collect();
            subjects.truncate(50);
            let ids = [ind(rng), ind(rng), ind(rng), ind(rng)].join(",");
            format!(
                "{{\n\t\t\t\"ids\": \"{ids}\",\n\t\t\t\"subjects\": \"{}\",\n\t\t\t\"field\": \"operating_income\",\n\t\t\t\"order\": -1,\n\t\t\t\"limit\": 20,\n\t\t\t\"offset\": 0\n\t\t}}",
                subjects.join(",")
            )
        }
        _ => {
            let ids = [ind(rng), ind(rng), ind(rng)].join(",");
            let subs = [stock(rng), stock(rng), stock(rng)].join(",");
            format!(
                "{{\n\t\t\t\"ids\": \"{ids}\",\n\t\t\t\"subjects\": \"{subs}\",\n\t\t\t\"field\": \"operating_income\",\n\t\t\t\"order\": -1,\n\t\t\t\"limit\": 10,\n\t\t\t\"offset\": 0,\n\t\t\t\"timestamp\": 1696032000\n\t\t}}"
            )
        }
    }
}

const SNAPSHOT_PATH: &str = "/data/kamaitachi/api/data/v1/snapshot";
const PERIOD_PATH: &str = "/data/kamaitachi/api/data/v1/period";

/// POSTs `body` through the gateway and asserts 200 with rows.
fn assert_rows(gw: u16, path: &str, body: &str) -> Value {
    let r = request(
        gw,
        "POST",
        path,
        body.as_bytes(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 200, "{body} -> {}", r.text());
    let v = r.json();
    assert_eq!(v["status_code"], 0, "{body} -> {v}");
    let rows = v["data"].as_array().unwrap_or_else(|| panic!("{body} -> {v}"));
    assert!(!rows.is_empty(), "{body}: no rows: {v}");
    v
}

#[test]
fn the_guides_configs_and_the_originals_clients_work_unchanged() {
    let dir = temp_dir("compat");
    let etcd = Etcd::start(&dir);
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    let node = node_bin();
    let (m_port, s1_port, s2_port, gw_port) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(dir.join("conf/master.ini"), ported(GUIDE_MASTER, m_port, &etcd)).unwrap();
    std::fs::write(dir.join("conf/slave.ini"), ported(GUIDE_SLAVE, s1_port, &etcd)).unwrap();
    // The guide's Slave2: a copy of slave.ini with port, address and dump
    // changed.
    std::fs::write(
        dir.join("conf/slave2.ini"),
        ported(GUIDE_SLAVE, s2_port, &etcd).replace("slave_snapshot", "slave2_snapshot"),
    )
    .unwrap();
    std::fs::write(
        dir.join("conf/gateway.ini"),
        ported(GUIDE_GATEWAY, gw_port, &etcd),
    )
    .unwrap();

    // `.\bin\master.exe`: no arguments, conf/master.ini; an empty database.
    let mut master = spawn_in(&node, &dir, &[], "master");
    master.wait_healthy(m_port);
    let log = master.log_text();
    let master_db = format!("./data/kamaitachi-master-{m_port}.db");
    assert!(
        log.contains(&format!("no [database] path; using {master_db}")),
        "{log}"
    );
    assert!(dir.join(&master_db).exists());
    let token = std::fs::read_to_string(dir.join("data/admin.token")).expect("default admin token");
    let auth = format!("Bearer {}", token.trim());

    // An empty slave copies the empty master and follows it.
    let mut slave1 = spawn_in(&node, &dir, &["-config", "conf/slave.ini"], "slave1");
    slave1.wait_healthy(s1_port);

    // An empty master answers with no rows, and accepts ingest.
    let r = request(
        m_port,
        "POST",
        "/kamaitachi/api/data/v1/snapshot",
        br#"{"ids":"operating_income","topic":"stock_a_listing_pool"}"#,
        &[],
    );
    assert_eq!(
        (r.status, r.json()["data"].clone()),
        (200, json!([])),
        "{}",
        r.text()
    );
    let r = request(
        m_port,
        "POST",
        "/kamaitachi/api/data/v1/ingest",
        ingest_body().as_bytes(),
        &[("Authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // A slave started now copies the master; two copies of slave.ini get
    // two files.
    let mut slave2 = spawn_in(&node, &dir, &["-config", "conf/slave2.ini"], "slave2");
    slave2.wait_healthy(s2_port);
    let version = |port: u16| request(port, "GET", "/health", b"", &[]).json()["data_version"].clone();
    let caught_up = eventually(Duration::from_secs(20), || version(s1_port) == version(m_port));
    assert!(
        caught_up,
        "slave1 did not follow the ingest: {}",
        slave1.log_text()
    );
    for port in [s1_port, s2_port] {
        assert!(dir.join(format!("data/kamaitachi-slave-{port}.db")).exists());
        let r = request(
            port,
            "POST",
            "/kamaitachi/api/data/v1/snapshot",
            br#"{"ids":"net_profit","subjects":"33:00000009","timestamp":1735603200}"#,
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"][0]["data"]["report_date"], day(2024, 12, 31));
    }

    // `.\bin\gateway.exe`: no arguments, conf/gateway.ini.
    let mut gateway = spawn_in(Path::new(GATEWAY), &dir, &[], "gateway");
    let all_up = eventually(Duration::from_secs(30), || {
        try_request(gw_port, "GET", "/health", b"", &[])
            .is_ok_and(|r| r.status == 200 && r.json()["count"] == 3)
    });
    assert!(all_up, "gateway does not see 3 nodes: {}", gateway.log_text());
    gateway.wait_healthy(gw_port);

    // The original's four benchmark scenarios.
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for scenario in 1..=4u8 {
        for _ in 0..40 {
            assert_rows(gw_port, SNAPSHOT_PATH, &scenario_body(&mut rng, scenario));
        }
    }
    // Scenario 2 sorts by operating_income whatever ids it asks for.
    let v = assert_rows(
        gw_port,
        SNAPSHOT_PATH,
        r#"{"ids":"net_profit","subjects":"33:00000009,33:00000010,33:00000011","field":"operating_income","order":-1,"limit":8,"offset":0}"#,
    );
    assert!(
        v["data"][0]["data"].get("operating_income").is_none(),
        "only the requested ids: {v}"
    );

    // The API document's examples (API使用说明.md).
    assert_rows(
        gw_port,
        SNAPSHOT_PATH,
        r#"{
    "ids": "operating_income,parent_holder_net_profit",
    "subjects": "33:000001,33:000002,33:000003",
    "field": "operating_income",
    "order": -1,
    "offset": 0,
    "limit": 5,
    "timestamp": 0
}"#,
    );
    assert_rows(
        gw_port,
        SNAPSHOT_PATH,
        r#"{
    "ids": "operating_income,parent_holder_net_profit",
    "topic": "stock_a_listing_pool",
    "field": "operating_income",
    "order": -1,
    "offset": 0,
    "limit": 100,
    "timestamp": 0
}"#,
    );
    let v = assert_rows(
        gw_port,
        PERIOD_PATH,
        r#"{
    "ids": "operating_income,parent_holder_net_profit",
    "subjects": "33:000001,33:000002",
    "from": 1609459200,
    "to": 1640995200
}"#,
    );
    assert_eq!(
        v["data"][0]["data"].as_array().map(Vec::len),
        Some(4),
        "2021's quarters: {v}"
    );
    // Its PowerShell examples (ConvertTo-Json output).
    assert_rows(
        gw_port,
        SNAPSHOT_PATH,
        "{\r\n    \"limit\":  10,\r\n    \"subjects\":  \"33:000001\",\r\n    \"field\":  \"operating_income\",\r\n    \"order\":  -1,\r\n    \"ids\":  \"operating_income,parent_holder_net_profit\"\r\n}",
    );
    assert_rows(
        gw_port,
        PERIOD_PATH,
        "{\r\n    \"from\":  1609459200,\r\n    \"subjects\":  \"33:000001\",\r\n    \"to\":  1640995200,\r\n    \"ids\":  \"operating_income,parent_holder_net_profit\"\r\n}",
    );

    // A Go client's zero-valued structs (SnapshotRequest, PeriodRequest).
    let v = assert_rows(
        gw_port,
        SNAPSHOT_PATH,
        r#"{"ids":"operating_income","subjects":"33:000001","topic":"","method":"","field":"","order":0,"offset":0,"limit":0,"timestamp":0}"#,
    );
    assert_eq!(
        v["data"][0]["data"]["report_date"],
        day(2024, 12, 31),
        "latest: {v}"
    );
    assert_rows(
        gw_port,
        SNAPSHOT_PATH,
        r#"{"ids":"operating_income","subjects":"","topic":"stock_a_listing_pool","method":"","field":"","order":0,"offset":0,"limit":0,"timestamp":0}"#,
    );
    let v = assert_rows(
        gw_port,
        PERIOD_PATH,
        r#"{"ids":"operating_income","subjects":"33:000001","method":"","from":0,"to":0}"#,
    );
    assert_eq!(
        v["data"][0]["data"].as_array().map(Vec::len),
        Some(16),
        "every report: {v}"
    );

    // Input that is really wrong is still refused, naming the field.
    let r = request(
        gw_port,
        "POST",
        SNAPSHOT_PATH,
        br#"{"ids":"operating_income","subjects":"33:000001","field":"no_such_column"}"#,
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(r.msg().contains("field"), "{}", r.text());
    drop((slave1, slave2, master));
}
