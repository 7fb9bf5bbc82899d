//! The policy language: YAML files that say what a trajectory may open,
//! execute and connect to, and their compilation into kernel map entries.
//! `docs/policy.md` is the reference for the language.
//!
//! Parsing is separate from encoding: [`schema`] mirrors the file,
//! [`validate`] turns files into a [`PolicySet`] or a list of
//! [`Diagnostic`]s, [`compile`] expands a policy's variables for one
//! trajectory and encodes it into map entries (pure, no kernel needed), and
//! [`judge`] holds the reference decisions the kernel must agree with.
//! Domain rules are not kernel entries: [`domain`] judges DNS question
//! names for the daemon's resolver. Nothing here touches the kernel; the
//! daemon writes the entries.

pub mod builtin;
pub mod compile;
pub mod diagnostic;
pub mod domain;
pub mod judge;
pub mod model;
pub mod schema;
pub mod session;
pub mod template;
pub mod validate;

#[cfg(test)]
pub(crate) mod tests;

pub use builtin::{Protected, ProtectedPath, TAMPER_RULE};
pub use compile::{compile, resolve, CompiledPolicy, MapEntries, OpenError, ResolvedPolicy, TooManyPortRules};
pub use diagnostic::{Diagnostic, Pos};
pub use domain::{normalize_question, DomainTable, NameVerdict};
pub use judge::{judge_connect, judge_exec, judge_file, Decision, PolicyMaps};
pub use model::{
    Access, AccessSet, Action, Cidr, DomainPattern, DomainRule, Mode, Policy, PortRange, Protocol, RuleClass, RuleId,
    RuleOrigin,
};
pub use session::{Limits, Session};
pub use template::{PathKind, PathPattern, Var, Vars};
pub use validate::{check, load_daemon_set, load_dir, validate_file, PolicySet, EMBEDDED_DEFAULT_FILE};

impl PolicySet {
    /// Resolves and compiles policy `name` for a trajectory with `vars`;
    /// [`CompiledPolicy::domains`] is its name judge.
    pub fn open(&self, name: &str, vars: &Vars) -> Result<CompiledPolicy, OpenError> {
        let policy = self.get(name).ok_or_else(|| OpenError::UnknownPolicy(name.to_owned()))?;
        let resolved = resolve(policy, vars)?;
        // Validation compiled the network part, the only part that can fail.
        compile(&resolved).map_err(|e| OpenError::PortRules { policy: name.to_owned(), source: e })
    }
}
