//! Path-like keys: `/worker/3/state/frame`.

use crate::{KvError, KvResult};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Checks that `key` is an absolute path of non-empty, printable segments (`/a/b`), at most
/// [`MAX_KEY_BYTES`] long.
pub fn validate_key(key: &str) -> KvResult<()> {
    let fail = |reason| {
        Err(KvError::InvalidKey {
            key: key.chars().take(80).collect(),
            reason,
        })
    };
    if key.len() > MAX_KEY_BYTES {
        return fail("longer than 512 bytes");
    }
    let Some(rest) = key.strip_prefix('/') else {
        return fail("must start with '/'");
    };
    if rest.is_empty() {
        return fail("has no segment after '/'");
    }
    if rest.split('/').any(str::is_empty) {
        return fail("has an empty segment ('//' or a trailing '/')");
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return fail("contains whitespace or a control character");
    }
    Ok(())
}

/// Checks an owning prefix: `/` alone, or a valid key followed by `/` (`/telemetry/partition/2/`).
pub fn validate_prefix(prefix: &str) -> KvResult<()> {
    if prefix == "/" {
        return Ok(());
    }
    match prefix.strip_suffix('/') {
        Some(path) => validate_key(path).map_err(|_| KvError::InvalidKey {
            key: prefix.to_string(),
            reason: "a prefix is '/' or a key followed by '/'",
        }),
        None => Err(KvError::InvalidKey {
            key: prefix.to_string(),
            reason: "a prefix must end with '/'",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_path_keys() {
        for key in ["/a", "/worker/3/state/frame", "/telemetry/partition/0/frame/000000000001", "/é/ü"] {
            validate_key(key).unwrap();
        }
    }

    #[test]
    fn refuses_bad_keys_with_the_reason() {
        let cases = [
            ("", "must start with '/'"),
            ("a/b", "must start with '/'"),
            ("/", "no segment"),
            ("/a//b", "empty segment"),
            ("/a/", "empty segment"),
            ("/a b", "whitespace"),
            ("/a\u{7}", "control"),
        ];
        for (key, reason) in cases {
            let err = validate_key(key).unwrap_err().to_string();
            assert!(err.contains(reason), "{key:?}: {err}");
        }
        let long = format!("/{}", "x".repeat(MAX_KEY_BYTES));
        assert!(validate_key(&long).unwrap_err().to_string().contains("longer than 512"));
    }

    #[test]
    fn prefixes() {
        validate_prefix("/").unwrap();
        validate_prefix("/telemetry/partition/2/").unwrap();
        assert!(validate_prefix("/telemetry").is_err());
        assert!(validate_prefix("//").is_err());
    }
}
