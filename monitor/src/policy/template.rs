//! Rule paths: how a file or exec rule names a path, the trajectory
//! variables (`${WORKSPACE}`, `${HOME}`) it may start with, and their
//! expansion when a trajectory opens.
//!
//! A path that ends in `/` is a directory rule: it matches the directory
//! itself and everything below it. Any other path is an exact rule: it
//! matches that path only. `/` is the directory rule for everything. Paths
//! must be absolute and canonical (no empty, `.` or `..` components) because
//! the kernel compares bytes, and a policy path the kernel never produces
//! would silently never match.

use std::collections::BTreeMap;

use monitor_common::policy::MAX_RULE_PATH_LEN;

/// Variables a trajectory provides: name (without `${}`) → value.
pub type Vars = BTreeMap<String, String>;

/// A trajectory variable a path may start with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Var {
    /// The trajectory's working tree.
    Workspace,
    /// The home directory of the user the agent runs as.
    Home,
}

impl Var {
    pub const ALL: [Var; 2] = [Var::Workspace, Var::Home];

    pub const fn name(self) -> &'static str {
        match self {
            Var::Workspace => "WORKSPACE",
            Var::Home => "HOME",
        }
    }

    fn from_name(name: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.name() == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Matches this path only.
    Exact,
    /// Matches the directory and everything below it.
    Directory,
}

/// A rule path as validated: an optional leading variable, then the rest,
/// with a directory's trailing `/` removed (so `/` is `rest == ""`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathPattern {
    pub var: Option<Var>,
    pub rest: String,
    pub kind: PathKind,
}

/// A rule path with its variable expanded: what the compiler encodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResolvedPath {
    /// For a directory, without the trailing `/`: the root is `""`.
    pub path: String,
    pub kind: PathKindOrd,
}

/// [`PathKind`] ordered so sorting puts a directory before an exact rule on
/// the same path (the exact rule is the more specific).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathKindOrd {
    Directory,
    Exact,
}

impl From<PathKind> for PathKindOrd {
    fn from(k: PathKind) -> Self {
        match k {
            PathKind::Exact => PathKindOrd::Exact,
            PathKind::Directory => PathKindOrd::Directory,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExpandError {
    #[error("${{{var}}} is used by the policy but was not provided for this trajectory")]
    Missing { var: &'static str },
    #[error("${{{var}}} = {value:?}: expected an absolute path without empty, `.` or `..` components")]
    BadValue { var: &'static str, value: String },
    #[error("{path:?} is {len} bytes once expanded; a rule path may have at most {max}")]
    TooLong { path: String, len: usize, max: usize },
}

impl PathPattern {
    /// Parses a rule path as written. The error is the diagnostic message.
    pub fn parse(written: &str) -> Result<PathPattern, String> {
        let (var, rest) = match written.strip_prefix("${") {
            Some(after) => {
                let Some((name, rest)) = after.split_once('}') else {
                    return Err(format!("unterminated variable in {written:?}: expected ${{WORKSPACE}} or ${{HOME}}"));
                };
                (Some(known_var(name)?), rest)
            }
            None => (None, written),
        };
        if let Some(at) = rest.find("${") {
            let name = rest[at + 2..].split('}').next().unwrap_or_default();
            known_var(name)?;
            return Err(format!("{written:?}: a variable may only start a path"));
        }
        if var.is_none() && !rest.starts_with('/') {
            return Err(format!(
                "relative path {written:?}: expected an absolute path, starting with / or ${{WORKSPACE}} or ${{HOME}}"
            ));
        }
        if let Some(v) = var {
            if !rest.is_empty() && !rest.starts_with('/') {
                return Err(format!("{written:?}: expected / or the end of the path after ${{{}}}", v.name()));
            }
        }
        let (kind, rest) = match rest.strip_suffix('/') {
            Some(dir) => (PathKind::Directory, dir),
            None => (PathKind::Exact, rest),
        };
        check_canonical(rest).map_err(|why| format!("{written:?}: {why}"))?;
        // A variable expands to at least one byte (`/`), hence the `+ 1`.
        let len = rest.len() + usize::from(var.is_some());
        if len > MAX_RULE_PATH_LEN {
            return Err(format!("path is {len} bytes; the kernel key holds rule paths of at most {MAX_RULE_PATH_LEN}"));
        }
        Ok(PathPattern { var, rest: rest.to_owned(), kind })
    }

    /// Expands the variable with the trajectory's value.
    pub fn expand(&self, vars: &Vars) -> Result<ResolvedPath, ExpandError> {
        let mut path = match self.var {
            None => String::new(),
            Some(var) => {
                let value = vars.get(var.name()).ok_or(ExpandError::Missing { var: var.name() })?;
                let trimmed = value.trim_end_matches('/');
                let bad = || ExpandError::BadValue { var: var.name(), value: value.clone() };
                if !value.starts_with('/') || check_canonical(trimmed).is_err() {
                    return Err(bad());
                }
                trimmed.to_owned()
            }
        };
        path.push_str(&self.rest);
        // `${WORKSPACE}` as an exact rule with WORKSPACE=/ names the root.
        if path.is_empty() && self.kind == PathKind::Exact {
            path.push('/');
        }
        if path.len() > MAX_RULE_PATH_LEN {
            return Err(ExpandError::TooLong { len: path.len(), path, max: MAX_RULE_PATH_LEN });
        }
        Ok(ResolvedPath { path, kind: self.kind.into() })
    }
}

fn known_var(name: &str) -> Result<Var, String> {
    Var::from_name(name).ok_or_else(|| format!("unknown variable ${{{name}}}: expected ${{WORKSPACE}} or ${{HOME}}"))
}

/// `path` is `""` or `/`-separated non-empty components, none `.` or `..`.
fn check_canonical(path: &str) -> Result<(), &'static str> {
    if path.contains('\0') {
        return Err("paths cannot contain NUL");
    }
    if path.is_empty() {
        return Ok(());
    }
    for component in path.split('/').skip(1) {
        match component {
            "" => return Err("empty path component (`//`, or more than one trailing `/`)"),
            "." | ".." => return Err("`.` and `..` components never appear in the paths the kernel judges"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn trailing_slash_makes_a_directory() {
        let p = PathPattern::parse("/a/b/").unwrap();
        assert_eq!((p.rest.as_str(), p.kind), ("/a/b", PathKind::Directory));
        let p = PathPattern::parse("/a/b").unwrap();
        assert_eq!((p.rest.as_str(), p.kind), ("/a/b", PathKind::Exact));
        let root = PathPattern::parse("/").unwrap();
        assert_eq!((root.rest.as_str(), root.kind), ("", PathKind::Directory));
    }

    #[test]
    fn non_canonical_and_relative_paths_are_refused() {
        assert!(PathPattern::parse("/a/b//").unwrap_err().contains("empty path component"));
        assert!(PathPattern::parse("/a//b").is_err());
        assert!(PathPattern::parse("/a/../b").unwrap_err().contains("`..`"));
        assert!(PathPattern::parse("a/b").unwrap_err().starts_with("relative path"));
        assert!(PathPattern::parse("").unwrap_err().starts_with("relative path"));
        assert!(PathPattern::parse("${HOME}.ssh").is_err());
        assert!(PathPattern::parse("/x/${HOME}/").unwrap_err().contains("may only start"));
        assert!(PathPattern::parse("${FOO}/x").unwrap_err().starts_with("unknown variable ${FOO}"));
        assert!(PathPattern::parse("${HOME").unwrap_err().starts_with("unterminated"));
        let long = format!("/{}", "a".repeat(MAX_RULE_PATH_LEN));
        assert!(PathPattern::parse(&long).unwrap_err().contains("at most 251"));
        assert!(PathPattern::parse(&long[..MAX_RULE_PATH_LEN]).is_ok());
    }

    #[test]
    fn expansion_normalises_trailing_slashes_and_checks_values() {
        let p = PathPattern::parse("${WORKSPACE}/src/").unwrap();
        let r = p.expand(&vars(&[("WORKSPACE", "/work/repo/")])).unwrap();
        assert_eq!((r.path.as_str(), r.kind), ("/work/repo/src", PathKindOrd::Directory));
        let r = p.expand(&vars(&[("WORKSPACE", "/")])).unwrap();
        assert_eq!(r.path, "/src");
        let ws = PathPattern::parse("${WORKSPACE}/").unwrap();
        assert_eq!(ws.expand(&vars(&[("WORKSPACE", "/")])).unwrap().path, "");
        assert_eq!(p.expand(&vars(&[])), Err(ExpandError::Missing { var: "WORKSPACE" }));
        assert!(matches!(p.expand(&vars(&[("WORKSPACE", "rel")])), Err(ExpandError::BadValue { .. })));
        assert!(matches!(p.expand(&vars(&[("WORKSPACE", "/a/../b")])), Err(ExpandError::BadValue { .. })));
        let long = vars(&[("WORKSPACE", &format!("/{}", "w".repeat(300)))]);
        assert!(matches!(p.expand(&long), Err(ExpandError::TooLong { .. })));
    }
}
