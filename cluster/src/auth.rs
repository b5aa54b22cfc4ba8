//! Proof of holding the cluster secret (`[security] cluster_secret_file`).
//!
//! Nodes and gateways prove to each other that they hold the cluster secret;
//! the admin token (what clients present) is never sent between them.
//!
//! - Key: `K = HMAC-SHA256(key = secret file bytes (trimmed), "kamaitachi cluster key v1")`.
//!   The secret itself never appears in a MAC input or on the wire.
//! - A MAC is `HMAC-SHA256(K, label ‖ 0 ‖ (len32 ‖ part)* [‖ streamed body])`,
//!   hex. The label names the purpose (`health`, `repl-request`,
//!   `repl-changes`, `repl-image`, `fanout`), so a MAC made for one purpose
//!   is never accepted for another; parts are length-prefixed, so no two
//!   inputs collide.
//! - Freshness: every exchange carries a fresh random challenge (128 bits)
//!   chosen by the verifier, and the answer's MAC covers it, so an old
//!   answer cannot be replayed. A request MAC covers a fresh nonce, the
//!   time (accepted within [`MAX_SKEW_SECS`]) and the address it was sent
//!   to, so one captured by a fake peer is useless against a real one.
//! - Comparison is constant-time (`hmac`'s `verify_slice`).

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Request header: the verifier's fresh challenge.
pub const CHALLENGE_HEADER: &str = "X-Kamaitachi-Challenge";
/// Response/request header: the MAC.
pub const PROOF_HEADER: &str = "X-Kamaitachi-Proof";
/// Request header: the requester's nonce, and the time (unix seconds).
pub const NONCE_HEADER: &str = "X-Kamaitachi-Nonce";
pub const TIME_HEADER: &str = "X-Kamaitachi-Time";
/// Response header: the identity (registered `addr`) a node claims.
pub const NODE_HEADER: &str = "X-Kamaitachi-Node";
/// Response header: the role a node claims.
pub const ROLE_HEADER: &str = "X-Kamaitachi-Role";

/// Largest clock difference a request MAC is accepted with.
pub const MAX_SKEW_SECS: u64 = 300;
/// Shortest secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// The default cluster secret file of a gateway: `./data/cluster.secret`,
/// the one nodes with the default database use.
pub const DEFAULT_CLUSTER_SECRET_FILE: &str = "./data/cluster.secret";

/// The key derived from the cluster secret.
#[derive(Clone)]
pub struct ClusterKey {
    key: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// A MAC being computed over streamed content.
pub struct StreamMac(HmacSha256);

impl StreamMac {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish_hex(self) -> String {
        hex(&self.0.finalize().into_bytes())
    }

    /// Constant-time check against a hex MAC.
    pub fn verify_hex(self, mac_hex: &str) -> bool {
        match unhex(mac_hex.trim()) {
            Some(bytes) => self.0.verify_slice(&bytes).is_ok(),
            None => false,
        }
    }
}

impl ClusterKey {
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
        m.update(b"kamaitachi cluster key v1");
        ClusterKey {
            key: m.finalize().into_bytes().into(),
        }
    }

    /// Starts a MAC of `label` and `parts`; more content may follow.
    pub fn begin(&self, label: &str, parts: &[&[u8]]) -> StreamMac {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        m.update(label.as_bytes());
        m.update(&[0]);
        for p in parts {
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p);
        }
        StreamMac(m)
    }

    pub fn mac(&self, label: &str, parts: &[&[u8]]) -> String {
        self.begin(label, parts).finish_hex()
    }

    pub fn verify(&self, label: &str, parts: &[&[u8]], mac_hex: &str) -> bool {
        self.begin(label, parts).verify_hex(mac_hex)
    }

    /// The MAC a node answers a health challenge with: bound to the
    /// challenge, the node's registered address and its role.
    pub fn health_proof(&self, challenge: &str, addr: &str, role: &str) -> String {
        self.mac(
            "health",
            &[challenge.as_bytes(), addr.as_bytes(), role.as_bytes()],
        )
    }

    /// Headers for a request to `addr` (`target` = path and query):
    /// nonce, time and MAC.
    pub fn sign_request(&self, label: &str, method: &str, addr: &str, target: &str) -> SignedRequest {
        let nonce = challenge();
        let time = now_secs().to_string();
        let mac = self.mac(
            label,
            &[
                method.as_bytes(),
                addr.as_bytes(),
                target.as_bytes(),
                nonce.as_bytes(),
                time.as_bytes(),
            ],
        );
        SignedRequest { nonce, time, mac }
    }

    /// Checks a signed request received at `addr` (this node's name);
    /// `signed` = (nonce, time, MAC) as received.
    pub fn verify_request(
        &self,
        label: &str,
        method: &str,
        addr: &str,
        target: &str,
        signed: (&str, &str, &str),
    ) -> bool {
        let (nonce, time, mac) = signed;
        let fresh = time
            .parse::<u64>()
            .is_ok_and(|t| t.abs_diff(now_secs()) <= MAX_SKEW_SECS);
        let ok = self.verify(
            label,
            &[
                method.as_bytes(),
                addr.as_bytes(),
                target.as_bytes(),
                nonce.as_bytes(),
                time.as_bytes(),
            ],
            mac,
        );
        fresh && ok && nonce.len() >= 16
    }
}

/// The running digest of a change log after change `seq`:
/// `SHA-256(previous digest ‖ seq ‖ batch)`, hex. Two nodes with the same
/// digest at a sequence have the same history up to it.
pub fn chain_digest(previous: &str, seq: u64, batch: &[u8]) -> String {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(previous.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(batch);
    hex(&h.finalize())
}

/// Nonce, time and MAC of a signed request.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub nonce: String,
    pub time: String,
    pub mac: String,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh random challenge: 128 bits, hex.
pub fn challenge() -> String {
    let bytes: [u8; 16] = rand::random();
    hex(&bytes)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// The cluster secret a process uses, and where it came from.
#[derive(Debug, Clone)]
pub struct ClusterSecret {
    pub key: ClusterKey,
    pub file: PathBuf,
    pub created: bool,
    pub defaulted: bool,
}

/// Reads `[security] cluster_secret_file`: its content, trimmed, at least
/// [`MIN_SECRET_BYTES`] bytes.
pub fn read_cluster_secret(config: &Path, file: &Path) -> Result<ClusterKey, String> {
    let what = format!(
        "config file {}: [security] cluster_secret_file {}",
        config.display(),
        file.display()
    );
    let text = std::fs::read(file).map_err(|e| format!("{what}: cannot read it: {e}"))?;
    let secret = text.trim_ascii();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{what}: the secret must be at least {MIN_SECRET_BYTES} bytes"
        ));
    }
    Ok(ClusterKey::from_secret(secret))
}

impl ClusterSecret {
    /// The secret of `[security] cluster_secret_file` if configured, else
    /// `default_file`, made once with 32 random bytes (64 hex characters,
    /// mode 600) by the first process that needs it.
    pub fn resolve(config: &Path, configured: Option<&Path>, default_file: &Path) -> Result<Self, String> {
        match configured {
            Some(file) => read_cluster_secret(config, file).map(|key| ClusterSecret {
                key,
                file: file.to_path_buf(),
                created: false,
                defaulted: false,
            }),
            None => {
                let created = crate::config::create_secret_file(default_file, 32, "cluster secret")?;
                read_cluster_secret(config, default_file).map(|key| ClusterSecret {
                    key,
                    file: default_file.to_path_buf(),
                    created,
                    defaulted: true,
                })
            }
        }
    }

    pub fn note(&self, config: &Path) -> Option<String> {
        self.defaulted.then(|| {
            format!(
                "config file {}: no [security] cluster_secret_file; cluster secret in {} ({})",
                config.display(),
                self.file.display(),
                if self.created { "created" } else { "existing" }
            )
        })
    }
}

/// Where a process's two credentials come from: each configured file, or
/// its default when the config names none.
pub struct CredentialFiles<'a> {
    pub admin_token: Option<&'a Path>,
    pub admin_token_default: &'a Path,
    pub cluster_secret: Option<&'a Path>,
    pub cluster_secret_default: &'a Path,
}

/// The admin token and the cluster key of a process (node or gateway), each
/// from its configured file or its default, with one log line for a
/// defaulted one. Both processes start this way.
pub fn load_credentials(config: &Path, files: &CredentialFiles<'_>) -> Result<(String, ClusterKey), String> {
    let admin = crate::config::AdminToken::resolve(config, files.admin_token, files.admin_token_default)?;
    if let Some(note) = admin.note(config) {
        tracing::info!("{note}");
    }
    let secret = ClusterSecret::resolve(config, files.cluster_secret, files.cluster_secret_default)?;
    if let Some(note) = secret.note(config) {
        tracing::info!("{note}");
    }
    Ok((admin.token, secret.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_bind_label_parts_and_key() {
        let k = ClusterKey::from_secret(&[7u8; 32]);
        let other = ClusterKey::from_secret(&[8u8; 32]);
        let m = k.health_proof("c", "127.0.0.1:1", "master");
        assert!(k.verify("health", &[b"c", b"127.0.0.1:1", b"master"], &m));
        assert!(!other.verify("health", &[b"c", b"127.0.0.1:1", b"master"], &m));
        assert!(!k.verify("health", &[b"c", b"127.0.0.1:2", b"master"], &m));
        assert!(!k.verify("health", &[b"c", b"127.0.0.1:1", b"slave"], &m));
        assert!(!k.verify("fanout", &[b"c", b"127.0.0.1:1", b"master"], &m));
        assert!(!k.verify("health", &[b"c", b"127.0.0.1:1", b"master"], "zz"));
        let r = k.sign_request("repl-request", "GET", "a:1", "/x");
        assert!(k.verify_request("repl-request", "GET", "a:1", "/x", (&r.nonce, &r.time, &r.mac)));
        assert!(!k.verify_request("repl-request", "GET", "b:1", "/x", (&r.nonce, &r.time, &r.mac)));
        assert!(!k.verify_request("repl-request", "GET", "a:1", "/y", (&r.nonce, &r.time, &r.mac)));
    }
}
