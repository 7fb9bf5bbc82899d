//! The name judge: what a policy's domain rules say about one DNS question.
//! The daemon's resolver asks [`DomainTable::judge`] for every name a
//! trajectory looks up, and from the answer decides whether to resolve the
//! name and which port rules to attach to the addresses it learns. Pure: no
//! I/O, no kernel. `docs/policy.md` ("Domain rules") states the semantics.
//!
//! The order is the one the kernel applies to a CIDR entry's port rules
//! (`model::first_match_list`), with pattern specificity in the place of the
//! prefix length: an exact name, then wildcards with the longest zone first.

use std::collections::{BTreeMap, BTreeSet};

use monitor_common::policy::{PolicyVerdict, PortRule, MAX_PORT_RULES, RULE_DEFAULT};

use super::model::{
    first_match_list, sort_most_specific_first, Action, DomainPattern, DomainRule, PortItem, RuleId, MAX_DOMAIN_LEN,
    MAX_LABEL_LEN,
};

/// Normalises a name from a DNS question (lowercase, no trailing dot,
/// already ASCII on the wire); `None` if not a valid name.
///
/// Valid: 1..=253 bytes once one trailing dot is dropped, labels of 1..=63
/// bytes, each byte printable ASCII other than `\`. That is looser than a
/// rule's name (a question may carry any label a rule could sit above) but
/// refuses what would make labels ambiguous: a `\` escape (as in
/// hickory's `Name::to_ascii`, for a dot or an odd byte inside a label)
/// could hide a dot, and splitting at the wrong dots could place a name
/// below a zone it is not in. [`DomainTable::judge`] refuses such names.
pub fn normalize_question(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let labels_ok = name
        .split('.')
        .all(|l| !l.is_empty() && l.len() <= MAX_LABEL_LEN && l.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'));
    (name.len() <= MAX_DOMAIN_LEN && labels_ok).then(|| name.to_ascii_lowercase())
}

/// What the resolver does with one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameVerdict {
    /// No domain rule matches: the name resolves only when the policy's
    /// network default is allow or audit; `action` is that default. Its
    /// addresses are not learned: connects to them are judged by the CIDR
    /// rules and the default, as for any address.
    NoRule { action: Action },
    /// The name is denied: the matching rules deny every port and protocol.
    /// Never resolved for the agent. `rule` is the rule that covers every
    /// port and protocol, or [`RULE_DEFAULT`] when no matching rule does
    /// and the network default (deny) decides; also [`RULE_DEFAULT`] for a
    /// name [`normalize_question`] refuses.
    Refuse { rule: RuleId },
    /// Resolve; learn the answer's addresses for connects judged by `ports`.
    Resolve {
        /// The first rule in precedence order that allows or audits
        /// something, or [`RULE_DEFAULT`] when none does and the network
        /// default (allow or audit) is what lets some connect through.
        rule: RuleId,
        /// Allow or audit: the action of `rule` (of the default for
        /// [`RULE_DEFAULT`]).
        action: Action,
        /// `rule`'s `allow_private`; false for [`RULE_DEFAULT`].
        allow_private: bool,
        /// Every matching rule's port rules in precedence order, shadowed
        /// ones dropped, ending at the first that covers every port and
        /// protocol; at most [`MAX_PORT_RULES`].
        ports: Vec<PortRule>,
        /// The network default, with [`RULE_DEFAULT`]: the verdict of a
        /// connect no item of `ports` matches.
        fallback: PolicyVerdict,
    },
}

/// More port rules match one name than a learned address holds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{name} is matched by {needed} port rules, counting those of the wildcard rules above it; \
     the resolver holds at most {MAX_PORT_RULES} per name: merge ports into ranges or drop rules"
)]
pub struct TooManyNameRules {
    /// The rule whose port rule did not fit (index in the rules given to
    /// [`DomainTable::new`]).
    pub rule_index: usize,
    /// The name, or for names below a wildcard's zone the wildcard.
    pub name: String,
    pub needed: usize,
}

/// A policy's domain rules, compiled for lookups (build once per policy
/// instance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainTable {
    /// Port items of the exact rules, by name, most specific first.
    exact: BTreeMap<String, Vec<PortItem>>,
    /// Port items of the wildcard rules, by zone, most specific first.
    below: BTreeMap<String, Vec<PortItem>>,
    /// The rules with `allow_private: true`.
    private: BTreeSet<RuleId>,
    default: Action,
}

impl DomainTable {
    pub fn new(rules: &[DomainRule], network_default: Action) -> DomainTable {
        let mut table = DomainTable {
            exact: BTreeMap::new(),
            below: BTreeMap::new(),
            private: BTreeSet::new(),
            default: network_default,
        };
        for (i, r) in rules.iter().enumerate() {
            let items = match &r.pattern {
                DomainPattern::Exact(name) => table.exact.entry(name.clone()).or_default(),
                DomainPattern::Below(zone) => table.below.entry(zone.clone()).or_default(),
            };
            items.extend(PortItem::of_rule(&r.ports, r.protocol, r.action, r.id, i));
            if r.allow_private {
                table.private.insert(r.id);
            }
        }
        for items in table.exact.values_mut().chain(table.below.values_mut()) {
            sort_most_specific_first(items);
        }
        table
    }

    /// No domain rules: every name is [`NameVerdict::NoRule`].
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.below.is_empty()
    }

    /// Judges one question name (normalised here by
    /// [`normalize_question`]; passing it normalised is fine).
    pub fn judge(&self, name: &str) -> NameVerdict {
        let Some(name) = normalize_question(name) else { return NameVerdict::Refuse { rule: RULE_DEFAULT } };
        let groups = self.matching(&name);
        if groups.is_empty() {
            return NameVerdict::NoRule { action: self.default };
        }
        let (kept, catch_all) = first_match_list(groups);
        let list: Vec<PortItem> = kept.into_iter().chain(catch_all).collect();
        let (rule, action) = match list.iter().find(|i| i.action != Action::Deny) {
            Some(i) => (i.id, i.action),
            None => match catch_all {
                Some(c) => return NameVerdict::Refuse { rule: c.id },
                None if self.default == Action::Deny => return NameVerdict::Refuse { rule: RULE_DEFAULT },
                None => (RULE_DEFAULT, self.default),
            },
        };
        NameVerdict::Resolve {
            rule,
            action,
            allow_private: self.private.contains(&rule),
            // Validation refuses a policy that needs more (see `check_bound`).
            ports: list.iter().take(MAX_PORT_RULES).map(|i| i.to_abi()).collect(),
            fallback: PolicyVerdict { rule_id: RULE_DEFAULT, action: self.default.to_abi(), _pad: [0; 3] },
        }
    }

    /// The item groups whose pattern matches `name`, most specific first:
    /// the exact name's, then each enclosing zone's wildcard items, the
    /// longest zone first.
    fn matching(&self, name: &str) -> Vec<&[PortItem]> {
        let mut groups: Vec<&[PortItem]> = self.exact.get(name).map(Vec::as_slice).into_iter().collect();
        let mut rest = name;
        while let Some((_, zone)) = rest.split_once('.') {
            groups.extend(self.below.get(zone).map(Vec::as_slice));
            rest = zone;
        }
        groups
    }

    /// Checks that no name is matched by more than [`MAX_PORT_RULES`] port
    /// rules. Which wildcards match a name depends only on the longest zone
    /// among them, so the rule names and one name directly below each
    /// wildcard zone cover every case: the bound is known statically.
    pub fn check_bound(&self) -> Result<(), TooManyNameRules> {
        // `*` is no label of any exact rule, so `*.zone` stands for a name
        // below `zone` that no exact rule names.
        let names = self.exact.keys().cloned().chain(self.below.keys().map(|zone| format!("*.{zone}")));
        for name in names {
            let (kept, catch_all) = first_match_list(self.matching(&name));
            let needed = kept.len() + usize::from(catch_all.is_some());
            if needed > MAX_PORT_RULES {
                let over = kept.get(MAX_PORT_RULES).or(catch_all.as_ref()).map_or(0, |i| i.rule_index);
                return Err(TooManyNameRules { rule_index: over, name, needed });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::policy::protocol;

    use super::*;
    use crate::policy::{
        diagnostic::Pos,
        model::{PortRange, Protocol},
    };

    /// A rule from a compact spelling: `pattern ports proto action`, ports
    /// `-` for every port, `443` or `8000-8999`, comma-separated; proto
    /// `tcp`, `udp` or `-`; a trailing `private` sets `allow_private`.
    fn rule(id: RuleId, spec: &str) -> DomainRule {
        let words: Vec<&str> = spec.split_whitespace().collect();
        let ports = match words[1] {
            "-" => Vec::new(),
            p => p.split(',').map(|p| PortRange::parse(p).unwrap()).collect(),
        };
        DomainRule {
            id,
            pos: Pos::FILE,
            pattern: DomainPattern::parse(words[0]).unwrap(),
            ports,
            protocol: (words[2] != "-").then(|| Protocol::parse(words[2]).unwrap()),
            action: Action::parse(words[3]).unwrap(),
            allow_private: words.get(4) == Some(&"private"),
        }
    }

    /// Rules numbered from 1 in the order given.
    fn table(default: Action, specs: &[&str]) -> DomainTable {
        let rules: Vec<DomainRule> = specs.iter().enumerate().map(|(i, s)| rule(i as RuleId + 1, s)).collect();
        DomainTable::new(&rules, default)
    }

    /// `Resolve` as `rule action [lo-hi/proto action#id, ...]`, or the
    /// other variants' names.
    fn show(v: NameVerdict) -> String {
        match v {
            NameVerdict::NoRule { action } => format!("no rule ({action})"),
            NameVerdict::Refuse { rule } => format!("refuse #{rule}"),
            NameVerdict::Resolve { rule, action, allow_private, ports, fallback } => {
                let ports: Vec<String> = ports
                    .iter()
                    .map(|p| {
                        format!(
                            "{}-{}/{} {}#{}",
                            p.port_lo,
                            p.port_hi,
                            p.protocol,
                            Action::from_abi(p.action).unwrap(),
                            p.rule_id
                        )
                    })
                    .collect();
                assert_eq!(fallback.rule_id, RULE_DEFAULT);
                format!(
                    "resolve #{rule} {action}{} [{}] else {}",
                    if allow_private { " private" } else { "" },
                    ports.join(", "),
                    Action::from_abi(fallback.action).unwrap()
                )
            }
        }
    }

    #[test]
    fn questions_are_normalised_or_refused() {
        assert_eq!(normalize_question("WWW.Example.COM.").as_deref(), Some("www.example.com"));
        assert_eq!(normalize_question("_sip._tcp.example.com").as_deref(), Some("_sip._tcp.example.com"));
        assert_eq!(normalize_question("localhost").as_deref(), Some("localhost"));
        assert_eq!(normalize_question("xn--bcher-kva.example").as_deref(), Some("xn--bcher-kva.example"));
        let long_label = format!("{}.example.com", "a".repeat(64));
        let long_name = format!("{}.com", vec!["a".repeat(60); 4].join("."));
        assert_eq!(long_name.len(), 247);
        assert!(normalize_question(&long_name).is_some());
        let too_long = format!("{}.com", vec!["a".repeat(62); 4].join("."));
        for bad in ["", ".", "a..b", ".a.b", "a.b..", "a b.com", "a\\.b.com", "bücher.example", &long_label, &too_long]
        {
            assert_eq!(normalize_question(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn exact_names_and_wildcards_match_what_they_say() {
        let t = table(Action::Deny, &["example.com - - allow", "*.example.org - - allow"]);
        assert!(show(t.judge("example.com")).starts_with("resolve #1"));
        assert!(show(t.judge("EXAMPLE.com.")).starts_with("resolve #1"), "questions are normalised");
        assert_eq!(show(t.judge("www.example.com")), "no rule (deny)", "an exact rule covers no subdomain");
        assert_eq!(show(t.judge("example.org")), "no rule (deny)", "a wildcard does not cover its zone");
        assert!(show(t.judge("a.example.org")).starts_with("resolve #2"));
        assert!(show(t.judge("a.b.c.example.org")).starts_with("resolve #2"), "any depth");
        assert_eq!(show(t.judge("aexample.org")), "no rule (deny)", "labels, not characters");
        assert_eq!(show(t.judge("example.org.evil.example")), "no rule (deny)");
        assert_eq!(show(t.judge("a..example.org")), "refuse #0", "not a valid question");
        assert!(!t.is_empty() && table(Action::Allow, &[]).is_empty());
        assert_eq!(show(table(Action::Audit, &[]).judge("example.com")), "no rule (audit)");
    }

    #[test]
    fn exact_before_longer_zone_before_shorter_zone() {
        let t = table(
            Action::Deny,
            &["*.example.org - - allow", "*.a.example.org 443 tcp deny", "b.a.example.org 443 tcp audit"],
        );
        assert_eq!(
            show(t.judge("b.a.example.org")),
            "resolve #3 audit [443-443/6 audit#3, 0-65535/0 allow#1] else deny",
            "the exact rule's 443/tcp shadows the wildcard's"
        );
        assert_eq!(
            show(t.judge("c.a.example.org")),
            "resolve #1 allow [443-443/6 deny#2, 0-65535/0 allow#1] else deny"
        );
        assert_eq!(show(t.judge("c.example.org")), "resolve #1 allow [0-65535/0 allow#1] else deny");
    }

    #[test]
    fn within_a_pattern_narrow_ports_then_named_protocol_then_deny_first() {
        let t = table(
            Action::Allow,
            &[
                "example.com 1-65535 - deny",
                "example.com 400-500 - audit",
                "example.com 443 - allow",
                "example.com 53 udp allow",
                "example.com 53 - deny",
                "example.com 443 - deny",
            ],
        );
        assert_eq!(
            show(t.judge("example.com")),
            "resolve #4 allow [53-53/17 allow#4, 53-53/0 deny#5, 443-443/0 deny#6, 400-500/0 audit#2, \
             1-65535/0 deny#1] else allow",
            "443 allow#3 is shadowed by the stronger 443 deny#6"
        );
    }

    #[test]
    fn a_name_is_refused_only_when_nothing_could_be_allowed() {
        // A catch-all deny with nothing before it.
        let t = table(Action::Allow, &["example.com - - deny", "*.example.com 443 tcp allow"]);
        assert_eq!(show(t.judge("example.com")), "refuse #1");
        assert!(show(t.judge("www.example.com")).starts_with("resolve #2 allow"));
        // An exact catch-all deny ends the list: the zone's allow is never reached.
        let t = table(Action::Allow, &["www.example.com - - deny", "*.example.com 443 tcp allow"]);
        assert_eq!(show(t.judge("www.example.com")), "refuse #1");
        // A port-specific allow before the catch-all deny: resolve, for 443 only.
        let t = table(Action::Deny, &["example.com 443 tcp allow", "example.com - - deny"]);
        assert_eq!(show(t.judge("example.com")), "resolve #1 allow [443-443/6 allow#1, 0-65535/0 deny#2] else deny");
        // Port-specific denies only: the default decides the other ports.
        let t = table(Action::Deny, &["example.com 22 tcp deny"]);
        assert_eq!(show(t.judge("example.com")), "refuse #0");
        let t = table(Action::Audit, &["example.com 22 tcp deny"]);
        assert_eq!(show(t.judge("example.com")), "resolve #0 audit [22-22/6 deny#1] else audit");
        // Every port but port 0 denied, default allow: port 0 could connect.
        let t = table(Action::Allow, &["example.com 1-65535 - deny"]);
        assert_eq!(show(t.judge("example.com")), "resolve #0 allow [1-65535/0 deny#1] else allow");
        // A catch-all audit is a permissive rule like allow.
        let t = table(Action::Deny, &["example.com - - audit"]);
        assert_eq!(show(t.judge("example.com")), "resolve #1 audit [0-65535/0 audit#1] else deny");
        // Same pattern, deny wins the tie between catch-alls.
        let t = table(Action::Allow, &["example.com - - allow", "example.com - - deny"]);
        assert_eq!(show(t.judge("example.com")), "refuse #2");
    }

    /// The table of docs/policy.md, "How a name is judged".
    #[test]
    fn the_worked_examples_of_the_docs() {
        let t = table(Action::Deny, &["example.com 443 tcp allow"]);
        assert_eq!(show(t.judge("example.com")), "resolve #1 allow [443-443/6 allow#1] else deny");
        assert_eq!(show(t.judge("www.example.com")), "no rule (deny)");
        let t = table(Action::Deny, &["*.example.org - - allow", "build.example.org - - deny"]);
        assert_eq!(show(t.judge("build.example.org")), "refuse #2");
        assert_eq!(show(t.judge("example.org")), "no rule (deny)");
        let t = table(Action::Deny, &["*.example.org - - deny", "*.a.example.org 443 tcp allow"]);
        assert_eq!(
            show(t.judge("x.a.example.org")),
            "resolve #2 allow [443-443/6 allow#2, 0-65535/0 deny#1] else deny"
        );
        let t = table(Action::Allow, &["example.com 22 - deny"]);
        assert_eq!(show(t.judge("example.com")), "resolve #0 allow [22-22/0 deny#1] else allow");
        let t = table(Action::Deny, &["example.com 22 - deny"]);
        assert_eq!(show(t.judge("example.com")), "refuse #0");
        let t = table(Action::Allow, &["example.com 1-65535 - deny"]);
        assert_eq!(show(t.judge("example.com")), "resolve #0 allow [1-65535/0 deny#1] else allow");
    }

    #[test]
    fn allow_private_is_the_deciding_rules() {
        let t = table(
            Action::Deny,
            &["*.example.com - - allow private", "db.example.com 5432 tcp allow", "x.example.com - - allow"],
        );
        assert_eq!(
            show(t.judge("db.example.com")),
            "resolve #2 allow [5432-5432/6 allow#2, 0-65535/0 allow#1] else deny"
        );
        assert_eq!(show(t.judge("a.example.com")), "resolve #1 allow private [0-65535/0 allow#1] else deny");
        assert_eq!(show(t.judge("x.example.com")), "resolve #3 allow [0-65535/0 allow#3] else deny");
    }

    /// `n` distinct ports, `10,20,...`.
    fn ports(n: u16) -> String {
        (1..=n).map(|p| (p * 10).to_string()).collect::<Vec<_>>().join(",")
    }

    #[test]
    fn the_port_rule_bound_is_checked_for_every_name_a_rule_can_meet() {
        // Ten under the zone, seven on a subzone: 17 for names below the
        // subzone, though no rule names one.
        let specs =
            [format!("*.example.org {} tcp allow", ports(10)), format!("*.a.example.org {} udp allow", ports(7))];
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        let t = table(Action::Deny, &specs);
        let err = t.check_bound().unwrap_err();
        assert_eq!((err.rule_index, err.name.as_str(), err.needed), (0, "*.a.example.org", 17), "{err}");
        assert!(err.to_string().contains("at most 16"), "{err}");
        // The judge truncates to the bound.
        let NameVerdict::Resolve { ports: list, .. } = t.judge("b.a.example.org") else { panic!("resolves") };
        assert_eq!(list.len(), MAX_PORT_RULES);
        // Sixteen fit, a catch-all included; an exact name counts its own.
        let t = table(Action::Deny, &[&format!("example.com {} tcp allow", ports(15)), "example.com - - deny"]);
        assert_eq!(t.check_bound(), Ok(()));
        let t = table(Action::Deny, &[&format!("example.com {} tcp allow", ports(16)), "example.com - - deny"]);
        assert_eq!(t.check_bound().unwrap_err().rule_index, 1, "the catch-all did not fit");
        // A catch-all ends the list: wildcard rules after it do not count.
        let t = table(Action::Deny, &["example.com - - allow", &format!("*.com {} tcp deny", ports(16))]);
        assert_eq!(t.check_bound(), Ok(()));
    }

    #[test]
    fn port_rules_carry_protocol_numbers_and_abi_actions() {
        let t = table(Action::Deny, &["example.com 443 tcp allow", "example.com 53 udp audit"]);
        let NameVerdict::Resolve { ports, fallback, .. } = t.judge("example.com") else { panic!() };
        // Both one port with a protocol: audit before allow.
        assert_eq!((ports[0].port_lo, ports[0].protocol), (53, protocol::UDP));
        assert_eq!((ports[1].port_lo, ports[1].protocol), (443, protocol::TCP));
        assert_eq!(Action::from_abi(ports[0].action), Some(Action::Audit));
        assert_eq!((fallback.rule_id, Action::from_abi(fallback.action)), (RULE_DEFAULT, Some(Action::Deny)));
    }
}
