//! Trajectory identity: ids given by the caller or generated.

/// Longest accepted trajectory id (it names a cgroup directory).
pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid trajectory id {id:?}: use 1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 . _ -, not starting with '.'")]
pub struct InvalidId {
    pub id: String,
}

/// Checks a caller-supplied id; it becomes a cgroup directory name, so it
/// must not be able to name another path.
pub fn validate_id(id: &str) -> Result<(), InvalidId> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidId { id: id.to_owned() })
    }
}

/// A fresh random id: `t-` and 16 hex digits.
pub fn generate_id() -> String {
    let mut buf = [0u8; 8];
    // getrandom(2) on 8 bytes does not fail short once the pool is ready.
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        buf = (t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    format!("t-{:016x}", u64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("build-42.a_b").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "x y", &"a".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        let g = generate_id();
        assert!(validate_id(&g).is_ok() && g.len() == 18);
        assert_ne!(g, generate_id());
    }
}
