//! The host's cgroup2 mount, found as the daemon finds it
//! (`monitor/src/cgroup.rs`): from `/proc/self/mountinfo`, since hybrid
//! hosts have it at `/sys/fs/cgroup/unified`.

use std::path::PathBuf;

/// Where cgroup2 is mounted in this mount namespace, if anywhere.
pub fn cgroup2_mount() -> Option<PathBuf> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The first cgroup2 mount point. Fields: id parent dev root mount_point
/// options [optional...] - fstype source super_options.
fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(pre.split_whitespace().nth(4)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:4 - cgroup2 cgroup2 rw
";
        assert_eq!(parse_mountinfo(text), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(parse_mountinfo("40 31 0:37 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
    }
}
