//! Gossip packets on the wire: a SWIM payload sealed with an HMAC-SHA256 tag keyed from the
//! cluster secret, and the sender's clock, so that a node without the secret can neither join nor
//! inject or forge state, and an old packet cannot be replayed outside a short window. The secret
//! itself never leaves the node.
//!
//! ```text
//! version u8 = 1 | unix millis u64 (big endian) | tag [16] | payload
//! ```

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const VERSION: u8 = 1;
pub const HEADER: usize = 1 + 8 + TAG;
const TAG: usize = 16;

/// How far a packet's clock may be from ours (replay window and clock skew tolerance).
pub const MAX_SKEW_MS: u64 = 60_000;

#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Short,
    Version,
    Stale,
    Forged,
    /// Authentic but not understood, or SWIM of another cell.
    Malformed,
}

impl Key {
    /// The gossip key: derived from the cluster secret, never the secret itself.
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut derive = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("hmac takes any key length");
        derive.update(b"cairn gossip v1");
        let key = derive.finalize().into_bytes();
        Self(<Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("hmac takes any key length"))
    }

    fn tag(&self, head: &[u8], payload: &[u8]) -> [u8; TAG] {
        let mut mac = self.0.clone();
        mac.update(head);
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; TAG];
        out.copy_from_slice(&full[..TAG]);
        out
    }

    pub fn seal(&self, now_ms: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.push(VERSION);
        out.extend_from_slice(&now_ms.to_be_bytes());
        let tag = self.tag(&out, payload);
        out.extend_from_slice(&tag);
        out.extend_from_slice(payload);
        out
    }

    /// The payload of an authentic, fresh packet.
    pub fn open<'a>(&self, now_ms: u64, packet: &'a [u8]) -> Result<&'a [u8], Reject> {
        if packet.len() < HEADER {
            return Err(Reject::Short);
        }
        if packet[0] != VERSION {
            return Err(Reject::Version);
        }
        let (head, rest) = packet.split_at(9);
        let (tag, payload) = rest.split_at(TAG);
        let expected = self.tag(head, payload);
        // Constant-time comparison.
        if tag.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err(Reject::Forged);
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&head[1..9]);
        if u64::from_be_bytes(ts).abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(Reject::Stale);
        }
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_packets_open_only_with_the_same_secret_and_fresh() {
        let k = Key::from_secret(b"s3cret-s3cret-s3cret");
        let p = k.seal(1_000_000, b"hello");
        assert_eq!(k.open(1_000_500, &p), Ok(&b"hello"[..]));
        assert_eq!(Key::from_secret(b"other").open(1_000_500, &p), Err(Reject::Forged));
        assert_eq!(k.open(1_000_000 + MAX_SKEW_MS + 1, &p), Err(Reject::Stale));
        let mut tampered = p.clone();
        *tampered.last_mut().expect("payload") ^= 1;
        assert_eq!(k.open(1_000_500, &tampered), Err(Reject::Forged));
        let mut retimed = p.clone();
        retimed[8] ^= 1;
        assert_eq!(k.open(1_000_500, &retimed), Err(Reject::Forged));
        assert_eq!(k.open(0, &p[..5]), Err(Reject::Short));
        assert!(!p.windows(6).any(|w| w == b"s3cret"), "the secret is never on the wire");
    }
}
