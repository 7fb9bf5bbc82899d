//! The policy file as written: serde structs mirroring the YAML, nothing
//! checked beyond shape. Every scalar a later check can reject is kept
//! [`Spanned`] so its diagnostic can point at it; actions, modes and the like
//! stay strings here so that all their errors are reported together by
//! `validate` instead of serde stopping at the first. `docs/policy.md` is the
//! reference for what each field means.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::diagnostic::{Diagnostic, Pos};

/// Spanned string: a scalar as written, with where it was written.
pub type Str = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    pub name: Str,
    pub mode: Str,
    /// Free text for people; ignored by the monitor.
    #[serde(default)]
    #[allow(dead_code, reason = "accepted so a policy may carry it; nothing reads it")]
    pub description: Option<String>,
    pub defaults: DefaultsDoc,
    /// `None` when absent or empty (`rules:` with every rule commented out).
    #[serde(default)]
    pub rules: Option<RulesDoc>,
    /// Who the agent runs as.
    #[serde(default)]
    pub session: Option<SessionDoc>,
    /// Memory, process and CPU limits of the trajectory's cgroup.
    #[serde(default)]
    pub limits: Option<LimitsDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionDoc {
    /// `USER[:GROUP]`, names or ids.
    #[serde(default)]
    pub user: Option<Str>,
    /// Capability names the agent keeps (`net_bind_service`).
    #[serde(default)]
    pub capabilities: Option<Vec<Str>>,
}

/// Scalars as written (`512M`, `256`, `1.5`), parsed in `validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDoc {
    #[serde(default)]
    pub memory: Option<Str>,
    #[serde(default)]
    pub pids: Option<Str>,
    #[serde(default)]
    pub cpu: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsDoc {
    pub file: Str,
    pub exec: Str,
    pub network: Str,
    /// Exec of a file no rule can name; absent means `allow`.
    #[serde(default)]
    pub exec_unnamed: Option<Str>,
    /// Sockets the network rules cannot judge; absent means `deny`.
    #[serde(default)]
    pub raw_sockets: Option<Str>,
}

/// Each list is `None` when absent or empty (`exec:` with nothing after it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesDoc {
    #[serde(default)]
    pub file: Option<Vec<Spanned<FileRuleDoc>>>,
    #[serde(default)]
    pub exec: Option<Vec<Spanned<ExecRuleDoc>>>,
    #[serde(default)]
    pub network: Option<Vec<Spanned<NetworkRuleDoc>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRuleDoc {
    pub path: Str,
    /// `read`, `write` or `read-write`; absent means `read-write`.
    #[serde(default)]
    pub access: Option<Str>,
    pub action: Str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRuleDoc {
    pub path: Str,
    pub action: Str,
}

/// Exactly one of `cidr` and `domain`, checked in `validate` so that the
/// error can name both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRuleDoc {
    #[serde(default)]
    pub cidr: Option<Str>,
    /// `example.com` or `*.example.org`.
    #[serde(default)]
    pub domain: Option<Str>,
    /// Each item a port (`443`) or an inclusive range (`8000-8999`); YAML
    /// reads both as scalars, so they are parsed in `validate`.
    #[serde(default)]
    pub ports: Option<Spanned<Vec<Str>>>,
    #[serde(default)]
    pub protocol: Option<Str>,
    pub action: Str,
    /// Domain rules only.
    #[serde(default)]
    pub allow_private: Option<Spanned<bool>>,
}

/// Parses one policy file. A structural error (bad YAML, unknown field, wrong
/// type, missing field) stops the parse, so it is the only diagnostic.
pub fn parse(file: &std::path::Path, text: &str) -> Result<PolicyDoc, Diagnostic> {
    let mut options = serde_saphyr::options! {};
    // The diagnostic carries its own position; a rendered snippet inside the
    // message would duplicate it across lines.
    options.with_snippet = false;
    let mut field = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field = field_path(e.path());
            e.into_inner()
        })
    })
    .map_err(|e| {
        let e = e.without_snippet();
        let message = serde_saphyr::MessageFormatter::format_message(&serde_saphyr::DefaultMessageFormatter, e);
        Diagnostic::new(file, e.location().map(Pos::from).unwrap_or(Pos::FILE), field, message.into_owned())
    })
}

/// The serde path as users write it: `rules.file[2].action`. `Spanned`
/// deserializes through an inner `value` field, which is not a user field
/// (no policy field is named `value`), so those segments are dropped.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key == "value" => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn err(text: &str) -> Diagnostic {
        parse(Path::new("p.yaml"), text).unwrap_err()
    }

    const HEAD: &str = "name: p\nmode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\n";

    #[test]
    fn unknown_field_is_reported_at_the_key_with_its_path() {
        let d = err(&format!("{HEAD}rules:\n  file:\n    - path: /a\n      acess: read\n      action: deny\n"));
        assert_eq!((d.line, d.column), (7, 7), "{d}");
        assert_eq!(d.field, "rules.file[0].acess");
        assert!(d.message.contains("unknown field `acess`"), "{d}");
    }

    #[test]
    fn wrong_type_and_missing_field() {
        let d =
            err(&format!("{HEAD}rules:\n  network:\n    - cidr: 10.0.0.0/8\n      ports: 443\n      action: deny\n"));
        assert_eq!((d.line, d.column, d.field.as_str()), (7, 14, "rules.network[0].ports"), "{d}");
        let d = err("name: p\nmode: enforce\n");
        assert!(d.message.contains("missing field `defaults`"), "{d}");
    }

    #[test]
    fn scalars_keep_their_positions() {
        let doc =
            parse(Path::new("p.yaml"), &format!("{HEAD}rules:\n  exec:\n    - path: /usr/bin/\n      action: deny\n"))
                .unwrap();
        let exec = doc.rules.unwrap().exec.unwrap();
        assert_eq!(Pos::of(&exec[0].value.path), Pos { line: 6, column: 13 });
        assert_eq!(exec[0].value.path.value, "/usr/bin/");
    }
}
