//! The kernel matrix: parsing and validating the pin file
//! (`tests/vm/kernels.txt`), one line per kernel.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Where the matrix is pinned, relative to the workspace root.
pub const PIN_FILE: &str = "tests/vm/kernels.txt";

/// One guest: a Debian kernel package at an exact version, booted with `lsm=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub name: String,
    pub package: String,
    pub version: String,
    pub lsm: String,
}

pub fn load(root: &Path) -> Result<Vec<Kernel>> {
    let path = root.join(PIN_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("invalid pin file {}", path.display()))
}

pub fn parse(text: &str) -> Result<Vec<Kernel>> {
    let mut kernels: Vec<Kernel> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, package, version, lsm] = fields[..] else {
            bail!("line {}: expected `name package version lsm`, found {} fields: {line}", i + 1, fields.len());
        };
        if name == "host" || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bail!("line {}: kernel name {name:?} must be [A-Za-z0-9._-] and not `host`", i + 1);
        }
        if !package.starts_with("linux-image-") {
            bail!("line {}: {package} is not a linux-image-* package", i + 1);
        }
        if !lsm.split(',').all(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_lowercase())) {
            bail!("line {}: lsm list {lsm:?} must be comma-separated LSM names", i + 1);
        }
        if kernels.iter().any(|k| k.name == name) {
            bail!("line {}: kernel name {name} appears twice", i + 1);
        }
        kernels.push(Kernel { name: name.into(), package: package.into(), version: version.into(), lsm: lsm.into() });
    }
    if kernels.is_empty() {
        bail!("no kernels listed");
    }
    Ok(kernels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_pin_file_parses() {
        let kernels = load(&crate::root()).unwrap();
        assert!(kernels.iter().any(|k| k.lsm.split(',').any(|m| m == "bpf")));
        assert!(kernels.iter().any(|k| !k.lsm.split(',').any(|m| m == "bpf")));
    }

    #[test]
    fn malformed_lines_are_rejected_with_their_number() {
        let err = parse("# c\na linux-image-x 1\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(parse("host linux-image-x 1 bpf").is_err());
        assert!(parse("a linux-image-x 1 bpf\na linux-image-y 2 bpf").is_err());
        assert!(parse("a vmlinuz 1 bpf").is_err());
        assert!(parse("a linux-image-x 1 bpf,,x").is_err());
    }
}
