//! Authentication of requests without sending a secret: each request carries an HMAC-SHA256 over
//! its method, path and query and the sender's clock, keyed from a secret, which the receiver
//! checks (constant time) and accepts only within a clock window. Peers sign with a key derived
//! from the cluster secret; clients with one derived from their access key's secret (a client
//! never holds the cluster secret).
//!
//! ```text
//! x-cairn-auth:   v1 <unix millis> <hex HMAC-SHA256(key, LABEL "\n" METHOD "\n" PATH?QUERY "\n" millis)>
//! x-cairn-client: <access key> v1 <unix millis> <hex tag, as above>
//! key = HMAC-SHA256(secret, LABEL), LABEL = "cairn peer v1" or "cairn client v1"
//! ```
//!
//! The peer key is derived as the gossip key is (`cairn_membership::wire`), with another label, so
//! neither key opens the other's messages. The tag covers the request head, not its body; over
//! plain TCP an eavesdropper can replay a request it saw for as long as its clock stamp is within
//! the window. Pools that cross untrusted networks run the peer transport over TLS (`tls.peer`).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Header carrying the signature of a peer request.
pub const AUTH_HEADER: &str = "x-cairn-auth";
/// Header carrying the access key and signature of a client request.
pub const CLIENT_HEADER: &str = "x-cairn-client";
/// How far a request's clock may be from the receiver's: the replay window and the clock skew
/// nodes must stay within (the same window as gossip packets').
pub const MAX_SKEW_MS: u64 = 60_000;
const PEER_LABEL: &[u8] = b"cairn peer v1";
const CLIENT_LABEL: &[u8] = b"cairn client v1";
const VERSION: &str = "v1";
/// Hex digits of a tag (the full SHA-256 output).
const TAG_HEX: usize = 64;

/// Why a peer request's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    Stale,
    Forged,
}

/// A key requests are signed with, derived from a secret under one label.
#[derive(Clone)]
pub struct RequestKey {
    mac: Hmac<Sha256>,
    label: &'static [u8],
}

/// The key peer requests are signed with, derived from the cluster secret.
pub type PeerKey = RequestKey;

impl RequestKey {
    fn derive(secret: &[u8], label: &'static [u8]) -> Self {
        let mut derive = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("hmac takes any key length");
        derive.update(label);
        let key = derive.finalize().into_bytes();
        Self { mac: <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("hmac takes any key length"), label }
    }

    /// The peer key of a cluster secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        Self::derive(secret, PEER_LABEL)
    }

    /// The client key of an access key's secret.
    pub fn client(secret_key: &[u8]) -> Self {
        Self::derive(secret_key, CLIENT_LABEL)
    }

    fn tag(&self, method: &str, path_and_query: &str, millis: u64) -> String {
        let mut mac = self.mac.clone();
        mac.update(self.label);
        for part in [method.as_bytes(), path_and_query.as_bytes(), millis.to_string().as_bytes()] {
            mac.update(b"\n");
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// The `x-cairn-auth` value for a request sent at `now_ms`.
    pub fn sign(&self, method: &str, path_and_query: &str, now_ms: u64) -> String {
        format!("{VERSION} {now_ms} {}", self.tag(method, path_and_query, now_ms))
    }

    /// Checks a request's `x-cairn-auth` value at `now_ms`.
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        header: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let header = std::str::from_utf8(header.ok_or(Refusal::Missing)?).map_err(|_| Refusal::Malformed)?;
        let mut parts = header.split(' ');
        let (Some(VERSION), Some(millis), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Malformed);
        };
        let millis: u64 = millis.parse().map_err(|_| Refusal::Malformed)?;
        if tag.len() != TAG_HEX {
            return Err(Refusal::Malformed);
        }
        let expected = self.tag(method, path_and_query, millis);
        if !secret_matches(tag.as_bytes(), expected.as_bytes()) {
            return Err(Refusal::Forged);
        }
        if millis.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(Refusal::Stale);
        }
        Ok(())
    }
}

/// The access key a client request claims (`x-cairn-client`), and the rest of the header, to be
/// verified with that key's [`RequestKey::client`].
pub fn client_claim(header: &[u8]) -> Option<(&str, &[u8])> {
    let at = header.iter().position(|&b| b == b' ')?;
    let access = std::str::from_utf8(&header[..at]).ok().filter(|a| !a.is_empty())?;
    Some((access, &header[at + 1..]))
}

/// The `x-cairn-client` value of a request sent at `now_ms` with `access_key`.
pub fn client_header(key: &RequestKey, access_key: &str, method: &str, path_and_query: &str, now_ms: u64) -> String {
    format!("{access_key} {}", key.sign(method, path_and_query, now_ms))
}

/// Constant-time comparison of secrets (passwords, signatures).
pub fn secret_matches(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Milliseconds since the Unix epoch by this node's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"cluster-secret-for-tests-0123456789";

    #[test]
    fn a_signed_request_verifies_only_as_sent_and_fresh() {
        let k = PeerKey::from_secret(SECRET);
        let h = k.sign("GET", "/chunk?index=1", 1_000_000);
        let ok = |m: &str, p: &str, h: &str, now: u64| k.verify(m, p, Some(h.as_bytes()), now);
        assert_eq!(ok("GET", "/chunk?index=1", &h, 1_000_500), Ok(()));
        assert_eq!(ok("GET", "/chunk?index=1", &h, 1_000_000 - MAX_SKEW_MS), Ok(()));
        assert_eq!(ok("GET", "/chunk?index=1", &h, 1_000_000 + MAX_SKEW_MS + 1), Err(Refusal::Stale));
        assert_eq!(ok("PUT", "/chunk?index=1", &h, 1_000_500), Err(Refusal::Forged));
        assert_eq!(ok("GET", "/chunk?index=2", &h, 1_000_500), Err(Refusal::Forged));
        let other = PeerKey::from_secret(b"another-secret-0123456789");
        assert_eq!(other.verify("GET", "/chunk?index=1", Some(h.as_bytes()), 1_000_500), Err(Refusal::Forged));
        // A new clock stamp with the old tag does not verify.
        let retimed = h.replacen("1000000", "1000400", 1);
        assert_eq!(ok("GET", "/chunk?index=1", &retimed, 1_000_500), Err(Refusal::Forged));
        assert_eq!(k.verify("GET", "/", None, 0), Err(Refusal::Missing));
        for bad in ["", "v1", "v2 1 00", "v1 x 00", "v1 1 00", &format!("{h} extra")] {
            assert_eq!(ok("GET", "/chunk?index=1", bad, 1_000_500), Err(Refusal::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn a_client_key_does_not_sign_peer_requests() {
        let peer = PeerKey::from_secret(SECRET);
        let client = RequestKey::client(SECRET);
        let h = client_header(&client, "trainer", "GET", "/_cairn/v1/members", 7_000);
        let (access, rest) = client_claim(h.as_bytes()).expect("claim");
        assert_eq!(access, "trainer");
        assert_eq!(client.verify("GET", "/_cairn/v1/members", Some(rest), 7_000), Ok(()));
        assert_eq!(peer.verify("GET", "/_cairn/v1/members", Some(rest), 7_000), Err(Refusal::Forged));
        assert_eq!(client_claim(b" v1 1 00"), None);
        assert_eq!(client_claim(b"nospace"), None);
    }

    #[test]
    fn the_secret_is_not_in_the_header() {
        let h = PeerKey::from_secret(SECRET).sign("GET", "/healthz", 5);
        assert!(!h.contains("cluster-secret"));
        assert!(!h.contains(&hex::encode(SECRET)));
    }
}
