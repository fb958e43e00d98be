//! Rules for bucket names and object keys that every interface shares.
//!
//! Keys travel into origin paths and cache file names, so anything that could name a different
//! object, or a file outside the cache directory, is refused before it reaches either.

/// S3's limit on a key's length, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// The name under which origins store a folder marker (a key ending in '/', as Hadoop's s3a and
/// the S3 consoles create): a folder path cannot name an object of its own, so the marker for
/// `a/b/` is stored as `a/b/.cairn-folder`. Keys whose last segment is this name are refused.
pub const FOLDER_MARKER: &str = ".cairn-folder";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("object key is empty")]
    Empty,
    #[error("object key is {0} bytes long; the limit is {MAX_KEY_BYTES}")]
    TooLong(usize),
    #[error("object key contains a NUL or control character")]
    ControlCharacter,
    #[error("object key contains a '.' or '..' path segment")]
    DotSegment,
    #[error("object key contains an empty path segment ('//' or a leading '/')")]
    EmptySegment,
    #[error("object key ends in {FOLDER_MARKER:?}, the name reserved for folder markers")]
    Reserved,
}

/// Checks an object key; see [`KeyError`] for what is refused.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(KeyError::ControlCharacter);
    }
    // A trailing '/' makes the key a folder marker; every other segment must be a name.
    let path = key.strip_suffix('/').unwrap_or(key);
    for seg in path.split('/') {
        match seg {
            "" => return Err(KeyError::EmptySegment),
            "." | ".." => return Err(KeyError::DotSegment),
            _ => {}
        }
    }
    if path.rsplit('/').next() == Some(FOLDER_MARKER) && !is_folder_marker(key) {
        return Err(KeyError::Reserved);
    }
    Ok(())
}

/// Whether a key names a folder marker: a (usually empty) object whose key ends in '/'.
pub fn is_folder_marker(key: &str) -> bool {
    key.ends_with('/')
}

/// Checks a bucket name against S3's rules (3–63 characters of a-z, 0-9, '.', '-', starting and
/// ending with a letter or digit, no "..").
pub fn is_valid_bucket(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(validate_key("a/b/c.txt"), Ok(()));
        assert_eq!(validate_key("dir/..hidden"), Ok(()));
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert_eq!(validate_key("../etc/passwd"), Err(KeyError::DotSegment));
        assert_eq!(validate_key("a/../b"), Err(KeyError::DotSegment));
        assert_eq!(validate_key("a/./b"), Err(KeyError::DotSegment));
        assert_eq!(validate_key("a\0b"), Err(KeyError::ControlCharacter));
        assert_eq!(validate_key("a//b"), Err(KeyError::EmptySegment));
        assert_eq!(validate_key("/a"), Err(KeyError::EmptySegment));
        assert_eq!(validate_key("/"), Err(KeyError::EmptySegment));
        assert_eq!(validate_key("a//"), Err(KeyError::EmptySegment));
        assert_eq!(validate_key("a/"), Ok(()));
        assert_eq!(validate_key("a/b/"), Ok(()));
        assert_eq!(validate_key("a/../"), Err(KeyError::DotSegment));
        assert_eq!(validate_key("a/.cairn-folder"), Err(KeyError::Reserved));
        assert_eq!(validate_key(".cairn-folder"), Err(KeyError::Reserved));
        assert_eq!(validate_key(".cairn-folder/"), Ok(()));
        assert_eq!(validate_key(".cairn-folder/x"), Ok(()));
        assert_eq!(validate_key(&"x".repeat(1024)), Ok(()));
        assert_eq!(validate_key(&"x".repeat(1100)), Err(KeyError::TooLong(1100)));
    }

    #[test]
    fn buckets() {
        assert!(is_valid_bucket("my-bucket.1"));
        for bad in ["ab", "Upper", "-a-", "a..b", &"a".repeat(64), "a_b"] {
            assert!(!is_valid_bucket(bad), "{bad}");
        }
    }
}
