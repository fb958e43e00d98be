//! Pure logic of cairn, free of I/O: chunk math and chunk identity, byte sizes and durations, the
//! typed node configuration and its validation, the cluster map and placement, and the S3 key
//! rules every interface shares.

pub mod chunk;
pub mod cluster;
pub mod config;
pub mod fanout;
pub mod key;
pub mod placement;
pub mod size;

pub use chunk::{ChunkId, ChunkLayout, ObjectVersion};
pub use config::{Config, ConfigError, Durability, MetadataPolicy, OriginConfig};
pub use size::{ByteSize, SpaceReserve};
