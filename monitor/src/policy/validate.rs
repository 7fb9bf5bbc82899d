//! From parsed policy files to a validated [`PolicySet`]: every semantic
//! check, each failure a [`Diagnostic`] pointing at the offending field, all
//! of a file's problems reported together. The daemon runs the same checks
//! on start and reload as `check` does: a directory is valid only if every
//! file in it is.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_saphyr::Spanned;

use super::{
    compile::{compile, ResolvedPolicy},
    diagnostic::{Diagnostic, Pos},
    domain::DomainTable,
    model::{
        AccessSet, Action, Cidr, Defaults, DomainPattern, DomainRule, ExecRule, FileRule, Mode, NetworkRule, Policy,
        PortRange, Protocol, RuleClass, RuleId, RuleOrigin,
    },
    schema::{self, LimitsDoc, NetworkRuleDoc, PolicyDoc, SessionDoc, Str},
    session::{self, Limits, Session},
    template::PathPattern,
};

/// Longest policy name: names appear in events, metrics and commands.
pub const MAX_NAME_LEN: usize = 64;

/// Every policy of a directory, validated, with rule ids assigned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    /// Sorted by name.
    policies: Vec<Policy>,
    /// `origins[id - 1]` is where rule `id` was written.
    origins: Vec<RuleOrigin>,
}

impl PolicySet {
    /// Validates policy files given as (name to report, contents).
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<PolicySet, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let mut seen: BTreeMap<String, (PathBuf, Pos)> = BTreeMap::new();
        let mut policies = Vec::new();
        for (file, text) in sources {
            match validate_file(file, text) {
                Ok((policy, name_pos)) => {
                    if let Some((first, at)) = seen.get(&policy.name) {
                        diagnostics.push(Diagnostic::new(
                            file,
                            name_pos,
                            "name",
                            format!(
                                "duplicate policy name {:?}: already defined in {}:{}; expected names unique across the directory",
                                policy.name,
                                first.display(),
                                at.line
                            ),
                        ));
                    } else {
                        seen.insert(policy.name.clone(), (file.clone(), name_pos));
                        policies.push(policy);
                    }
                }
                Err(mut errors) => diagnostics.append(&mut errors),
            }
        }
        if !diagnostics.is_empty() {
            return Err(diagnostics);
        }
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(PolicySet::number(policies))
    }

    /// Assigns rule ids in a stable order: by policy name, then file, exec
    /// and network rules in file order. CIDR and domain rules are kept apart
    /// but share the `rules.network` numbering: ordered together by where
    /// they start, which is their order in the list.
    fn number(mut policies: Vec<Policy>) -> PolicySet {
        let mut origins = Vec::new();
        let mut next = |policy: &Policy, pos: Pos, class: RuleClass, index: usize| -> RuleId {
            origins.push(RuleOrigin {
                policy: policy.name.clone(),
                file: policy.file.clone(),
                line: pos.line,
                class,
                index,
            });
            origins.len() as RuleId
        };
        for p in &mut policies {
            let snapshot = p.clone();
            for (i, r) in p.file_rules.iter_mut().enumerate() {
                r.id = next(&snapshot, r.pos, RuleClass::File, i);
            }
            for (i, r) in p.exec_rules.iter_mut().enumerate() {
                r.id = next(&snapshot, r.pos, RuleClass::Exec, i);
            }
            let mut network: Vec<(Pos, &mut RuleId)> = p
                .network_rules
                .iter_mut()
                .map(|r| (r.pos, &mut r.id))
                .chain(p.domain_rules.iter_mut().map(|r| (r.pos, &mut r.id)))
                .collect();
            network.sort_by_key(|(pos, _)| *pos);
            for (i, (pos, id)) in network.into_iter().enumerate() {
                *id = next(&snapshot, pos, RuleClass::Network, i);
            }
        }
        PolicySet { policies, origins }
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// Where rule `id` was written; `None` for [`RULE_DEFAULT`] or an
    /// unknown id.
    ///
    /// [`RULE_DEFAULT`]: monitor_common::policy::RULE_DEFAULT
    pub fn rule(&self, id: RuleId) -> Option<&RuleOrigin> {
        self.origins.get((id as usize).checked_sub(1)?)
    }

    /// The rule table, index `id - 1`.
    pub fn rules(&self) -> &[RuleOrigin] {
        &self.origins
    }
}

/// Validates every `*.yaml` / `*.yml` file directly in `dir`.
pub fn load_dir(dir: &Path) -> Result<PolicySet, Vec<Diagnostic>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| vec![Diagnostic::new(dir, Pos::FILE, "", format!("cannot read policy directory: {e}"))])?;
    let mut files = Vec::new();
    let mut diagnostics = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => {
                let path = e.path();
                if matches!(path.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
                    files.push(path);
                }
            }
            Err(e) => {
                diagnostics.push(Diagnostic::new(dir, Pos::FILE, "", format!("cannot list policy directory: {e}")))
            }
        }
    }
    files.sort();
    let (sources, errors) = read_files(&files);
    diagnostics.extend(errors);
    match PolicySet::from_sources(&sources) {
        Ok(set) if diagnostics.is_empty() => Ok(set),
        Ok(_) => Err(diagnostics),
        Err(errors) => {
            diagnostics.extend(errors);
            Err(diagnostics)
        }
    }
}

/// Validates a directory or a list of files without loading anything;
/// returns every problem found (empty when valid).
pub fn check(paths: &[PathBuf]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            if let Err(mut errors) = load_dir(p) {
                diagnostics.append(&mut errors);
            }
        } else {
            files.push(p.clone());
        }
    }
    let (sources, errors) = read_files(&files);
    diagnostics.extend(errors);
    if let Err(mut errors) = PolicySet::from_sources(&sources) {
        diagnostics.append(&mut errors);
    }
    diagnostics
}

fn read_files(files: &[PathBuf]) -> (Vec<(PathBuf, String)>, Vec<Diagnostic>) {
    let mut sources = Vec::new();
    let mut diagnostics = Vec::new();
    for f in files {
        match std::fs::read(f) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => sources.push((f.clone(), text)),
                Err(_) => diagnostics.push(Diagnostic::new(f, Pos::FILE, "", "not UTF-8 text")),
            },
            Err(e) => diagnostics.push(Diagnostic::new(f, Pos::FILE, "", format!("cannot read: {e}"))),
        }
    }
    (sources, diagnostics)
}

/// Validates one file; on success also returns where the name was written.
/// Rule ids are 0 until the set numbers them.
pub fn validate_file(file: &Path, text: &str) -> Result<(Policy, Pos), Vec<Diagnostic>> {
    let doc = schema::parse(file, text).map_err(|d| vec![d])?;
    Checker { file, diagnostics: Vec::new() }.policy(doc)
}

struct Checker<'a> {
    file: &'a Path,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    /// Parses one scalar with `parse`, recording a diagnostic on failure.
    fn field<T>(
        &mut self,
        field: impl Into<String>,
        s: &Str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        parse(&s.value).map_err(|message| self.report(Pos::of(s), field, message)).ok()
    }

    fn report(&mut self, pos: Pos, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::new(self.file, pos, field, message));
    }

    fn policy(mut self, doc: PolicyDoc) -> Result<(Policy, Pos), Vec<Diagnostic>> {
        let name = self.field("name", &doc.name, parse_name);
        let mode = self.field("mode", &doc.mode, Mode::parse);
        let file_default = self.field("defaults.file", &doc.defaults.file, Action::parse);
        let exec_default = self.field("defaults.exec", &doc.defaults.exec, Action::parse);
        let network_default = self.field("defaults.network", &doc.defaults.network, Action::parse);
        let exec_unnamed = match &doc.defaults.exec_unnamed {
            Some(a) => self.field("defaults.exec_unnamed", a, Action::parse),
            None => Some(Action::Allow),
        };
        let raw_sockets = match &doc.defaults.raw_sockets {
            Some(a) => self.field("defaults.raw_sockets", a, Action::parse),
            None => Some(Action::Deny),
        };

        let rules = doc.rules.unwrap_or_default();
        let file_rules = self.rules(RuleClass::File, rules.file.as_deref(), |c, at, r, pos| {
            let path = c.field(at("path"), &r.path, PathPattern::parse);
            let access = match &r.access {
                Some(a) => c.field(at("access"), a, AccessSet::parse),
                None => Some(AccessSet::READ_WRITE),
            };
            let action = c.field(at("action"), &r.action, Action::parse);
            Some(FileRule { id: 0, pos, path: path?, access: access?, action: action? })
        });
        let exec_rules = self.rules(RuleClass::Exec, rules.exec.as_deref(), |c, at, r, pos| {
            let path = c.field(at("path"), &r.path, PathPattern::parse);
            let action = c.field(at("action"), &r.action, Action::parse);
            Some(ExecRule { id: 0, pos, path: path?, action: action? })
        });
        let destinations = self.rules(RuleClass::Network, rules.network.as_deref(), Self::network_rule);
        let session = self.session(doc.session.as_ref());
        let limits = self.limits(doc.limits.as_ref());

        let (Some(name), Some(mode), Some(file), Some(exec), Some(network), Some(exec_unnamed), Some(raw_sockets)) =
            (name, mode, file_default, exec_default, network_default, exec_unnamed, raw_sockets)
        else {
            return Err(self.diagnostics);
        };
        let (Some(session), Some(limits)) = (session, limits) else {
            return Err(self.diagnostics);
        };
        if !self.diagnostics.is_empty() {
            return Err(self.diagnostics);
        }
        // Each kind of rule with its `rules.network` index, for diagnostics.
        let (mut network_rules, mut domain_rules) = (Vec::new(), Vec::new());
        let (mut network_index, mut domain_index) = (Vec::new(), Vec::new());
        for (i, rule) in destinations {
            match rule {
                Destination::Cidr(r) => {
                    network_rules.push(r);
                    network_index.push(i);
                }
                Destination::Domain(r) => {
                    domain_rules.push(r);
                    domain_index.push(i);
                }
            }
        }
        let policy = Policy {
            name,
            file: self.file.to_owned(),
            mode,
            defaults: Defaults { file, exec, network, exec_unnamed, raw_sockets },
            file_rules: file_rules.into_iter().map(|(_, r)| r).collect(),
            exec_rules: exec_rules.into_iter().map(|(_, r)| r).collect(),
            network_rules,
            domain_rules,
            session,
            limits,
        };
        self.network_bound(&policy, &network_index)?;
        self.domain_bound(&policy, &domain_index)?;
        Ok((policy, Pos::of(&doc.name)))
    }

    /// `session:`; capabilities to keep need an account to keep them for.
    fn session(&mut self, doc: Option<&SessionDoc>) -> Option<Session> {
        let Some(doc) = doc else { return Some(Session::default()) };
        let user = doc.user.as_ref().map(|u| self.field("session.user", u, session::parse_user));
        let mut capabilities = Vec::new();
        let mut ok = true;
        for (i, c) in doc.capabilities.iter().flatten().enumerate() {
            match self.field(format!("session.capabilities[{i}]"), c, session::parse_capability) {
                Some(n) => capabilities.push(n),
                None => ok = false,
            }
        }
        capabilities.sort_unstable();
        capabilities.dedup();
        if let (None, Some(first)) = (&user, doc.capabilities.iter().flatten().next()) {
            self.report(
                Pos::of(first),
                "session.capabilities",
                "capabilities are kept for the account `session.user` names: set it (an agent running as root \
                 keeps every capability)",
            );
            return None;
        }
        let user = match user {
            Some(u) => Some(u?),
            None => None,
        };
        ok.then_some(Session { user, capabilities })
    }

    /// `limits:`, each scalar parsed and bounded.
    fn limits(&mut self, doc: Option<&LimitsDoc>) -> Option<Limits> {
        let Some(doc) = doc else { return Some(Limits::default()) };
        let memory = doc.memory.as_ref().map(|m| self.field("limits.memory", m, session::parse_memory));
        let pids = doc.pids.as_ref().map(|p| self.field("limits.pids", p, session::parse_pids));
        let cpu = doc.cpu.as_ref().map(|c| self.field("limits.cpu", c, session::parse_cpu));
        // Absent is no limit; present but invalid is reported (None).
        fn lift<T>(v: Option<Option<T>>) -> Option<Option<T>> {
            match v {
                Some(None) => None,
                Some(Some(x)) => Some(Some(x)),
                None => Some(None),
            }
        }
        Some(Limits { memory: lift(memory)?, pids: lift(pids)?, cpu_millicores: lift(cpu)? })
    }

    /// One `rules.network` entry: a CIDR rule or a domain rule.
    fn network_rule(&mut self, at: &dyn Fn(&str) -> String, r: &NetworkRuleDoc, pos: Pos) -> Option<Destination> {
        let cidr = r.cidr.as_ref().map(|c| self.field(at("cidr"), c, Cidr::parse));
        let pattern = r.domain.as_ref().map(|d| self.field(at("domain"), d, DomainPattern::parse));
        let ports = r.ports.as_ref().map_or(Some(Vec::new()), |ports| self.ports(&at("ports"), ports));
        let protocol = match &r.protocol {
            Some(p) => self.field(at("protocol"), p, Protocol::parse).map(Some),
            None => Some(None),
        };
        let action = self.field(at("action"), &r.action, Action::parse);
        match (cidr, pattern) {
            (Some(cidr), None) => {
                if let Some(flag) = &r.allow_private {
                    self.report(
                        Pos::of(flag),
                        at("allow_private"),
                        "`allow_private` belongs to domain rules: a CIDR rule names its addresses itself",
                    );
                    return None;
                }
                let rule = NetworkRule { id: 0, pos, cidr: cidr?, ports: ports?, protocol: protocol?, action: action? };
                Some(Destination::Cidr(rule))
            }
            (None, Some(pattern)) => {
                let allow_private = r.allow_private.as_ref().is_some_and(|f| f.value);
                if allow_private && action == Some(Action::Deny) {
                    self.report(
                        Pos::of(r.allow_private.as_ref()?),
                        at("allow_private"),
                        "`allow_private: true` on a deny rule: a denied name is never resolved, so it has no \
                         answers to keep; remove it",
                    );
                    return None;
                }
                Some(Destination::Domain(DomainRule {
                    id: 0,
                    pos,
                    pattern: pattern?,
                    ports: ports?,
                    protocol: protocol?,
                    action: action?,
                    allow_private,
                }))
            }
            (Some(_), Some(_)) => {
                let domain = r.domain.as_ref()?;
                self.report(
                    Pos::of(domain),
                    at("domain"),
                    "a network rule has either `cidr` or `domain`, not both: write two rules",
                );
                None
            }
            (None, None) => {
                self.report(
                    pos,
                    at(""),
                    "a network rule needs its destination: `cidr` (addresses) or `domain` (a name such as \
                     example.com)",
                );
                None
            }
        }
    }

    /// Checks each entry of `rules.<class>` with `check`, which reports
    /// what is wrong with the entry (`at(field)` names a field of it,
    /// `at("")` the entry itself) and returns the rule if nothing is.
    /// Returns the valid rules, each with its index in the list.
    fn rules<D, R>(
        &mut self,
        class: RuleClass,
        entries: Option<&[Spanned<D>]>,
        mut check: impl FnMut(&mut Self, &dyn Fn(&str) -> String, &D, Pos) -> Option<R>,
    ) -> Vec<(usize, R)> {
        let mut out = Vec::new();
        for (i, entry) in entries.unwrap_or_default().iter().enumerate() {
            let at = |f: &str| match f {
                "" => format!("rules.{}[{i}]", class.as_str()),
                f => format!("rules.{}[{i}].{f}", class.as_str()),
            };
            if let Some(rule) = check(self, &at, &entry.value, Pos::of(entry)) {
                out.push((i, rule));
            }
        }
        out
    }

    /// The port-rule bound is a property of the compiled network entries,
    /// which do not depend on trajectory variables: check it now, not at
    /// open time. Rule ids are placeholders; they do not change counts.
    /// `index[i]` is the `rules.network` index of CIDR rule `i`.
    fn network_bound(&mut self, policy: &Policy, index: &[usize]) -> Result<(), Vec<Diagnostic>> {
        let network_only = ResolvedPolicy {
            name: policy.name.clone(),
            mode: policy.mode,
            defaults: policy.defaults,
            file_rules: Vec::new(),
            exec_rules: Vec::new(),
            domain_rules: Vec::new(),
            network_rules: policy
                .network_rules
                .iter()
                .enumerate()
                .map(|(i, r)| NetworkRule { id: i as u32 + 1, ..r.clone() })
                .collect(),
        };
        if let Err(e) = compile(&network_only) {
            let pos = policy.network_rules[e.rule_index].pos;
            self.report(pos, format!("rules.network[{}]", index[e.rule_index]), e.to_string());
            return Err(std::mem::take(&mut self.diagnostics));
        }
        Ok(())
    }

    /// The same bound for the port rules the resolver attaches to one name:
    /// which rules match a name is known statically (see
    /// [`DomainTable::check_bound`]). `index[i]` is the `rules.network`
    /// index of domain rule `i`.
    fn domain_bound(&mut self, policy: &Policy, index: &[usize]) -> Result<(), Vec<Diagnostic>> {
        // Placeholder ids, distinct as the real ones will be.
        let rules: Vec<DomainRule> =
            policy.domain_rules.iter().enumerate().map(|(i, r)| DomainRule { id: i as u32 + 1, ..r.clone() }).collect();
        if let Err(e) = DomainTable::new(&rules, policy.defaults.network).check_bound() {
            let pos = rules[e.rule_index].pos;
            self.report(pos, format!("rules.network[{}]", index[e.rule_index]), e.to_string());
            return Err(std::mem::take(&mut self.diagnostics));
        }
        Ok(())
    }

    fn ports(&mut self, field: &str, ports: &Spanned<Vec<Str>>) -> Option<Vec<PortRange>> {
        if ports.value.is_empty() {
            self.report(Pos::of(ports), field, "empty list: omit `ports` to match every port");
            return None;
        }
        let parsed: Vec<Option<PortRange>> = ports
            .value
            .iter()
            .enumerate()
            .map(|(j, p)| self.field(format!("{field}[{j}]"), p, PortRange::parse))
            .collect();
        parsed.into_iter().collect()
    }
}

/// A valid `rules.network` entry.
enum Destination {
    Cidr(NetworkRule),
    Domain(DomainRule),
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("invalid policy name {s:?}: expected 1..={MAX_NAME_LEN} characters of A-Z a-z 0-9 - _ ."))
    }
}

/// Where the embedded default policy says it comes from in events and
/// diagnostics.
pub const EMBEDDED_DEFAULT_FILE: &str = "<embedded>/default.yaml";
/// The policy the daemon carries so it enforces something with no
/// configuration: `policies/default.yaml` as built.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../policies/default.yaml");

/// The daemon's policy set: every file of `dir` (when given), plus the
/// embedded default policy unless a file in `dir` defines a policy of the
/// same name. Invalid files make the whole set invalid.
pub fn load_daemon_set(dir: Option<&Path>) -> Result<PolicySet, Vec<Diagnostic>> {
    let mut sources = Vec::new();
    if let Some(dir) = dir {
        let files = std::fs::read_dir(dir)
            .map_err(|e| vec![Diagnostic::new(dir, Pos::FILE, "", format!("cannot read policy directory: {e}"))])?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
            .collect::<Vec<_>>();
        let mut files = files;
        files.sort();
        let (found, errors) = read_files(&files);
        if !errors.is_empty() {
            return Err(errors);
        }
        sources = found;
    }
    let set = PolicySet::from_sources(&sources)?;
    let (embedded, _) = validate_file(Path::new(EMBEDDED_DEFAULT_FILE), EMBEDDED_DEFAULT)?;
    if set.get(&embedded.name).is_some() {
        return Ok(set);
    }
    sources.push((PathBuf::from(EMBEDDED_DEFAULT_FILE), EMBEDDED_DEFAULT.to_owned()));
    PolicySet::from_sources(&sources)
}
