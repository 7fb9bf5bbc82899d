//! [`Diagnostic`]: one problem in one policy file, with where it is and what
//! was expected. Every validation error, structural or semantic, ends up as
//! one of these so the daemon and `check` print them the same way.

use std::{fmt, path::PathBuf};

use serde_saphyr::{Location, Spanned};

/// A position in a policy file, 1-based. Line 0 means "the whole file" (it
/// could not be read, or the problem is not tied to a place in it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub const FILE: Pos = Pos { line: 0, column: 0 };

    pub(crate) fn of<T>(spanned: &Spanned<T>) -> Pos {
        Pos::from(spanned.referenced)
    }
}

impl From<Location> for Pos {
    fn from(l: Location) -> Pos {
        // serde-saphyr counts from 1; its `UNKNOWN` is 0:0, which we read as
        // the whole file, the same as ours.
        Pos { line: u32::try_from(l.line()).unwrap_or(u32::MAX), column: u32::try_from(l.column()).unwrap_or(u32::MAX) }
    }
}

/// One problem found while validating a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The policy file, as it was named to the loader.
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    /// Path of the offending field, e.g. `rules.network[3].cidr`; empty when
    /// the problem is the document as a whole.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: impl Into<PathBuf>, pos: Pos, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            line: pos.line,
            column: pos.column,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn pos(&self) -> Pos {
        Pos { line: self.line, column: self.column }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Diagnostic {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_column_and_field() {
        let d = Diagnostic::new(
            "policies/x.yaml",
            Pos { line: 12, column: 9 },
            "rules.network[3].cidr",
            "invalid CIDR \"10.0.0.0/33\": prefix length must be 0..=32",
        );
        assert_eq!(
            d.to_string(),
            "policies/x.yaml:12:9: rules.network[3].cidr: invalid CIDR \"10.0.0.0/33\": prefix length must be 0..=32"
        );
        let whole = Diagnostic::new("p.yaml", Pos::FILE, "", "cannot read: denied");
        assert_eq!(whole.to_string(), "p.yaml: cannot read: denied");
    }
}
