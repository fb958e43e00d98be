//! cairn's KV keyspace, the part that does no networking: the RESP2/RESP3 codec ([`resp`]), the
//! typed commands and their argument rules ([`command`]), and the node-local tiered store
//! ([`store`], [`disk`]) with TTLs, EXISTS leases and S3-FIFO eviction from RAM to disk.
//!
//! The RESP server, forwarding to owners and authentication live in `cairn-node` (`kv.rs`); they
//! build on the pieces here, which are tested without sockets.

pub mod command;
pub mod disk;
pub mod glob;
pub mod resp;
pub mod store;

pub use command::{Command, CommandError, ReplyMode, When};
pub use resp::{Limits, Parsed, ProtocolError, Reply};
pub use store::{ExpireCondition, KvStats, KvStore, KvStoreConfig, SetCondition, SetOptions, SetOutcome, Ttl};
