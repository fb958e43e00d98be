//! The client routes' wire types, shared by the node that answers them and the client that asks.
//!
//! Every node serves these under [`PREFIX`] on its S3 listener and on its peer listener, signed
//! with a client key ([`crate::sign::CLIENT_HEADER`]):
//!
//! | route | answer |
//! |---|---|
//! | `GET /_cairn/v1/members` | [`Members`]: the cluster map the node routes by |
//! | `GET /_cairn/v1/stat?bucket=B&key=K` | [`Stat`]: the object's current version and layout |
//! | `GET /_cairn/v1/chunk?origin=O&bucket=B&key=K&version=V&size=N&chunk_size=C&index=I` | the chunk's bytes |
//! | `POST /_cairn/v1/sync?bucket=B&prefix=P[&timeout=10m]` | 200 once every write under it acknowledged before the call is in the origin |
//!
//! A chunk request names the version, so the bytes of one open file never mix two versions; a
//! version the origin no longer has is a 412 (`VersionChanged`): the client asks `stat` again.
//! Errors are [`ErrorBody`] JSON with S3's code names.

use serde::{Deserialize, Serialize};

/// Path prefix of the client routes (not a valid bucket name, so never an S3 request).
pub const PREFIX: &str = "/_cairn/";

/// What a node routes by.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Members {
    /// The id of the node that answered.
    pub node: String,
    /// Owners of each clean chunk (`cluster.replicas`).
    pub replicas: usize,
    /// The cluster map (peer addresses); empty for a node that runs alone.
    pub map: cairn_core::cluster::ClusterMap,
    /// Whether the peer listeners speak only TLS with client certificates (a client then reads
    /// through the node it was given).
    pub peer_tls: bool,
}

/// An object's current version and how it is cut into chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// The origin's configured name (part of every chunk's id).
    pub origin: String,
    pub bucket: String,
    pub key: String,
    /// The version chunks are named by (the origin's ETag, or a pending write's version).
    pub version: String,
    pub size: u64,
    pub chunk_size: u64,
    /// The ETag clients see, without quotes.
    pub etag: String,
    /// RFC 3339.
    pub last_modified: String,
    pub content_type: Option<String>,
}

/// A refusal or failure of a client route.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// S3's error code name (`NoSuchKey`, `NoSuchBucket`, `AccessDenied`, `VersionChanged`, ...).
    pub code: String,
    pub message: String,
}
