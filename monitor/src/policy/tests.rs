//! Tests across the policy modules: the example policies, the broken
//! fixtures and their exact diagnostics, the precedence edge cases (each
//! judged by both the compiled maps and the naive rule scan), domain rules
//! through the whole pipeline (validation, numbering, the name judge), a
//! golden encoding, and the property test that the two judges always agree.

use std::{net::IpAddr, path::PathBuf};

use monitor_common::policy::{protocol, MAX_PORT_RULES, RULE_DEFAULT};

use super::{
    judge::naive,
    model::{Access, Action},
    *,
};

const TCP: u8 = protocol::TCP;
const UDP: u8 = protocol::UDP;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn vars(pairs: &[(&str, &str)]) -> Vars {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn std_vars() -> Vars {
    vars(&[("WORKSPACE", "/home/u/proj"), ("HOME", "/home/u")])
}

/// One policy from YAML text, opened with [`std_vars`] as policy id 7, with
/// other policies loaded beside it so the policy id in the key matters.
struct Fixture {
    set: PolicySet,
    resolved: ResolvedPolicy,
    maps: PolicyMaps,
}

const ID: u32 = 7;

impl Fixture {
    fn new(yaml: &str) -> Fixture {
        let other = "name: zz-other\nmode: enforce\ndefaults: {file: deny, exec: deny, network: allow}\n\
                     rules:\n  file: [{path: /, action: audit}]\n  network: [{cidr: 0.0.0.0/0, action: deny}]\n";
        let set = PolicySet::from_sources(&[("p.yaml".into(), yaml.into()), ("o.yaml".into(), other.into())])
            .unwrap_or_else(|d| panic!("{d:#?}"));
        let name = set.policies()[0].name.clone();
        let resolved = resolve(set.get(&name).unwrap(), &std_vars()).unwrap();
        let mut maps = PolicyMaps::new(compile(&resolved).unwrap().map_entries(ID));
        for id in [ID - 1, ID + 1, ID + 256] {
            maps.insert(set.open("zz-other", &std_vars()).unwrap().map_entries(id));
        }
        Fixture { set, resolved, maps }
    }

    fn file(&self, path: &str, access: Access) -> Decision {
        let compiled = judge_file(&self.maps, ID, path.as_bytes(), access).unwrap();
        let naive = naive::judge_file(&self.resolved, path.as_bytes(), access);
        assert_eq!(compiled, naive, "file {path:?} {access:?}");
        compiled
    }

    fn exec(&self, path: &str) -> Decision {
        let compiled = judge_exec(&self.maps, ID, path.as_bytes()).unwrap();
        assert_eq!(compiled, naive::judge_exec(&self.resolved, path.as_bytes()), "exec {path:?}");
        compiled
    }

    fn connect(&self, ip: &str, port: u16, proto: u8) -> Decision {
        let ip: IpAddr = ip.parse().unwrap();
        let compiled = judge_connect(&self.maps, ID, ip, port, proto).unwrap();
        assert_eq!(compiled, naive::judge_connect(&self.resolved, ip, port, proto), "connect {ip} {port} {proto}");
        compiled
    }

    /// The rule's `rules.<class>[index]`, for readable assertions.
    fn by(&self, d: Decision) -> String {
        match self.set.rule(d.rule_id) {
            Some(o) => format!("{} {}[{}]", d.action, o.class.as_str(), o.index),
            None => format!("{} default", d.action),
        }
    }

    /// What the resolver does with `name`, its rule as in [`Fixture::by`].
    fn name(&self, name: &str) -> String {
        let rule = |id: RuleId| match self.set.rule(id) {
            Some(o) => format!("{}[{}]", o.class.as_str(), o.index),
            None => "default".into(),
        };
        match compile(&self.resolved).unwrap().domains().judge(name) {
            NameVerdict::NoRule { action } => format!("no rule ({action})"),
            NameVerdict::Refuse { rule: id } => format!("refuse {}", rule(id)),
            NameVerdict::Resolve { rule: id, action, ports, .. } => {
                let ports: Vec<String> =
                    ports.iter().map(|p| format!("{}-{}/{}", p.port_lo, p.port_hi, p.protocol)).collect();
                format!("{action} {} [{}]", rule(id), ports.join(", "))
            }
        }
    }
}

fn policy(defaults: &str, rules: &str) -> Fixture {
    Fixture::new(&format!("name: p\nmode: enforce\ndefaults: {defaults}\nrules:\n{rules}"))
}

const ALLOW_ALL: &str = "{file: allow, exec: allow, network: allow}";

// ---------------------------------------------------------------- examples

#[test]
fn example_policies_parse_and_say_what_their_comments_say() {
    let set = load_dir(&repo("policies"))
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| format!("{d}\n")).collect::<String>()));
    let names: Vec<&str> = set.policies().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["audit", "default", "reviewer"]);

    let open = |name: &str| {
        let p = resolve(set.get(name).unwrap(), &std_vars()).unwrap();
        let maps = PolicyMaps::new(compile(&p).unwrap().map_entries(1));
        (p, maps)
    };
    let file = |(p, maps): &(ResolvedPolicy, PolicyMaps), path: &str, access| {
        let d = judge_file(maps, 1, path.as_bytes(), access).unwrap();
        assert_eq!(d, naive::judge_file(p, path.as_bytes(), access));
        d.action
    };
    let net = |(p, maps): &(ResolvedPolicy, PolicyMaps), ip: &str, port| {
        let ip = ip.parse().unwrap();
        let d = judge_connect(maps, 1, ip, port, TCP).unwrap();
        assert_eq!(d, naive::judge_connect(p, ip, port, TCP));
        d.action
    };

    let default = open("default");
    assert_eq!(file(&default, "/home/u/proj/src/main.rs", Access::Write), Action::Allow);
    assert_eq!(file(&default, "/home/u/.ssh/id_ed25519", Access::Read), Action::Deny);
    assert_eq!(file(&default, "/home/u/.ssh", Access::Read), Action::Deny);
    assert_eq!(file(&default, "/home/u/.docker/config.json", Access::Read), Action::Deny);
    assert_eq!(file(&default, "/home/u/.docker/other.json", Access::Read), Action::Allow);
    assert_eq!(file(&default, "/etc/shadow", Access::Read), Action::Deny);
    assert_eq!(file(&default, "/etc/passwd", Access::Read), Action::Allow);
    assert_eq!(file(&default, "/etc/passwd", Access::Write), Action::Deny);
    assert_eq!(net(&default, "127.0.0.1", 8080), Action::Allow);
    assert_eq!(net(&default, "::1", 8080), Action::Allow);
    assert_eq!(net(&default, "::ffff:127.0.0.1", 8080), Action::Allow);
    assert_eq!(net(&default, "198.51.100.10", 443), Action::Deny, "addresses are allowed by name only");
    assert_eq!(net(&default, "8.8.8.8", 53), Action::Deny);
    assert_eq!(default.0.mode, Mode::Enforce);
    // The allowlisted names (placeholders), HTTPS only; other names refused.
    let names = set.open("default", &std_vars()).unwrap();
    let https_only = |name: &str| match names.domains().judge(name) {
        NameVerdict::Resolve { action: Action::Allow, ports, fallback, .. } => {
            ports.len() == 1
                && (ports[0].port_lo, ports[0].port_hi, ports[0].protocol) == (443, 443, TCP)
                && Action::from_abi(fallback.action) == Some(Action::Deny)
        }
        _ => false,
    };
    assert!(https_only("example.com") && https_only("pkg.example.com") && https_only("a.b.Example.COM."));
    assert_eq!(names.domains().judge("example.net"), NameVerdict::NoRule { action: Action::Deny });
    assert_eq!(names.domains().judge("example.com.example.net"), NameVerdict::NoRule { action: Action::Deny });

    let reviewer = open("reviewer");
    assert_eq!(file(&reviewer, "/home/u/proj/src/main.rs", Access::Read), Action::Allow);
    assert_eq!(file(&reviewer, "/home/u/proj/src/main.rs", Access::Write), Action::Deny);
    assert_eq!(file(&reviewer, "/tmp/review.md", Access::Write), Action::Allow);
    assert_eq!(file(&reviewer, "/dev/null", Access::Write), Action::Allow);
    assert_eq!(file(&reviewer, "/dev/nullx", Access::Write), Action::Deny);
    assert_eq!(net(&reviewer, "10.0.0.1", 443), Action::Deny);

    // audit.yaml promises the default policy's rules in audit mode.
    let (audit, default_policy) = (set.get("audit").unwrap(), set.get("default").unwrap());
    assert_eq!(audit.mode, Mode::Audit);
    let strip = |p: &Policy| {
        let mut p = p.clone();
        p.name.clear();
        p.file = PathBuf::new();
        p.mode = Mode::Enforce;
        for r in &mut p.file_rules {
            (r.id, r.pos) = (0, Pos::FILE);
        }
        for r in &mut p.exec_rules {
            (r.id, r.pos) = (0, Pos::FILE);
        }
        for r in &mut p.network_rules {
            (r.id, r.pos) = (0, Pos::FILE);
        }
        for r in &mut p.domain_rules {
            (r.id, r.pos) = (0, Pos::FILE);
        }
        p
    };
    assert_eq!(strip(audit), strip(default_policy));
}

#[test]
fn rule_table_names_file_and_line() {
    let set = load_dir(&repo("policies")).unwrap();
    let p = resolve(set.get("default").unwrap(), &std_vars()).unwrap();
    let d = naive::judge_file(&p, b"/etc/shadow", Access::Read);
    let origin = set.rule(d.rule_id).unwrap();
    assert_eq!(origin.policy, "default");
    assert_eq!(origin.class, RuleClass::File);
    let text = std::fs::read_to_string(repo("policies/default.yaml")).unwrap();
    assert_eq!(text.lines().nth(origin.line as usize - 1).unwrap().trim(), "- path: /etc/shadow");
    assert!(origin.to_string().ends_with(&format!("policies/default.yaml:{}", origin.line)));
    assert!(set.rule(RULE_DEFAULT).is_none());
}

#[test]
fn open_reports_a_missing_variable_naming_the_rule() {
    let set = load_dir(&repo("policies")).unwrap();
    let err = set.open("default", &vars(&[("HOME", "/home/u")])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("default.yaml:") && text.contains("rules.file[0].path") && text.contains("${WORKSPACE}"),
        "{text}"
    );
    assert!(matches!(set.open("nope", &std_vars()), Err(OpenError::UnknownPolicy(_))));
}

// ---------------------------------------------------------------- fixtures

#[test]
fn broken_fixtures_report_exact_position_and_field() {
    let cases: &[(&str, u32, u32, &str, &str)] = &[
        ("unknown_field.yaml", 11, 7, "rules.file[0].acess", "unknown field `acess`"),
        (
            "bad_cidr.yaml",
            12,
            13,
            "rules.network[1].cidr",
            "invalid CIDR \"10.0.0.0/33\": prefix length must be 0..=32",
        ),
        ("relative_path.yaml", 10, 13, "rules.exec[0].path", "relative path \"bin/tool\""),
        (
            "unknown_action.yaml",
            12,
            15,
            "rules.file[0].action",
            "unknown action \"block\": expected allow, deny or audit",
        ),
        ("unknown_variable.yaml", 10, 13, "rules.file[0].path", "unknown variable ${PROJECT}"),
        ("bad_port_range.yaml", 11, 20, "rules.network[0].ports[1]", "invalid port range \"9000-8000\""),
        ("wrong_type.yaml", 11, 14, "rules.network[0].ports", "expected sequence"),
        (
            "bad_domain.yaml",
            12,
            15,
            "rules.network[1].domain",
            "invalid domain \"exa mple.com\": label \"exa mple\" has a character other than letters, digits, '-' or '_'",
        ),
        ("domain_and_cidr.yaml", 13, 15, "rules.network[1].domain", "either `cidr` or `domain`, not both"),
        (
            "allow_private_on_cidr.yaml",
            11,
            22,
            "rules.network[0].allow_private",
            "`allow_private` belongs to domain rules",
        ),
    ];
    for &(file, line, column, field, message) in cases {
        let path = repo("tests/fixtures/policies").join(file);
        let diags = check(std::slice::from_ref(&path));
        assert_eq!(diags.len(), 1, "{file}: {diags:#?}");
        let d = &diags[0];
        assert_eq!(
            (d.file.as_path(), d.line, d.column, d.field.as_str()),
            (path.as_path(), line, column, field),
            "{d}"
        );
        assert!(d.message.contains(message), "{file}: {d}");
        assert!(d.to_string().starts_with(&format!("{}:{line}:{column}: {field}: ", path.display())), "{d}");
    }
}

#[test]
fn duplicate_names_across_files_point_at_the_second() {
    let dir = repo("tests/fixtures/policies/duplicate");
    let diags = load_dir(&dir).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags:#?}");
    let d = &diags[0];
    assert_eq!((d.file.as_path(), d.line, d.column, d.field.as_str()), (dir.join("b.yaml").as_path(), 3, 7, "name"));
    assert!(d.message.contains("duplicate policy name \"shared\"") && d.message.contains("a.yaml:2"), "{d}");
}

#[test]
fn every_semantic_error_of_a_file_is_reported() {
    let text = "name: bad name\nmode: enforced\ndefaults: {file: allow, exec: yes, network: deny}\nrules:\n  file:\n    - path: rel\n      access: rw\n      action: allow\n  network:\n    - cidr: 10.0.0.1/8\n      ports: []\n      protocol: icmp\n      action: allow\n";
    let diags = validate_file("x.yaml".as_ref(), text).unwrap_err();
    let fields: Vec<&str> = diags.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "name",
            "mode",
            "defaults.exec",
            "rules.file[0].path",
            "rules.file[0].access",
            "rules.network[0].cidr",
            "rules.network[0].ports",
            "rules.network[0].protocol"
        ]
    );
    assert!(diags.iter().all(|d| d.line > 0 && d.column > 0));
}

#[test]
fn exec_unnamed_and_raw_sockets_default_to_allow_and_deny_and_compile_to_the_config() {
    let f = Fixture::new("name: p\nmode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\n");
    assert_eq!((f.resolved.defaults.exec_unnamed, f.resolved.defaults.raw_sockets), (Action::Allow, Action::Deny));
    let yaml = "name: p\nmode: enforce\ndefaults:\n  file: allow\n  exec: allow\n  network: deny\n  \
                exec_unnamed: deny\n  raw_sockets: audit\n";
    let c = compile(&Fixture::new(yaml).resolved).unwrap().config;
    assert_eq!((c.exec_unnamed, c.raw_sockets), (Action::Deny.to_abi(), Action::Audit.to_abi()));
    let bad = "name: p\nmode: enforce\ndefaults:\n  file: allow\n  exec: allow\n  network: deny\n  \
               exec_unnamed: never\n  raw_sockets: yes\n";
    let diags = validate_file("x.yaml".as_ref(), bad).unwrap_err();
    let at: Vec<(&str, u32)> = diags.iter().map(|d| (d.field.as_str(), d.line)).collect();
    assert_eq!(at, [("defaults.exec_unnamed", 7), ("defaults.raw_sockets", 8)]);
}

#[test]
fn every_domain_rule_error_names_its_field() {
    let text = "name: p\nmode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\nrules:\n  network:\n\
                \x20   - domain: \"*foo.example.com\"\n      action: allow\n\
                \x20   - {cidr: 10.0.0.0/8, domain: example.com, action: allow}\n\
                \x20   - ports: [443]\n      action: allow\n\
                \x20   - domain: localhost\n      action: allow\n\
                \x20   - domain: example.org\n      allow_private: true\n      action: deny\n\
                \x20   - domain: example.net\n      ports: []\n      action: alow\n";
    let diags = validate_file("x.yaml".as_ref(), text).unwrap_err();
    let got: Vec<(u32, u32, &str)> = diags.iter().map(|d| (d.line, d.column, d.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (6, 15, "rules.network[0].domain"),
            (8, 34, "rules.network[1].domain"),
            (9, 7, "rules.network[2]"),
            (11, 15, "rules.network[3].domain"),
            (14, 22, "rules.network[4].allow_private"),
            (17, 14, "rules.network[5].ports"),
            (18, 15, "rules.network[5].action"),
        ],
        "{diags:#?}"
    );
    let message = |i: usize| diags[i].message.as_str();
    assert!(message(0).contains("only a whole leading label may be a wildcard"), "{}", diags[0]);
    assert!(message(1).contains("not both"), "{}", diags[1]);
    assert!(message(2).contains("needs its destination: `cidr` (addresses) or `domain`"), "{}", diags[2]);
    assert!(message(3).contains("a domain rule names a fully qualified name such as example.com"), "{}", diags[3]);
    assert!(message(4).contains("on a deny rule"), "{}", diags[4]);
}

#[test]
fn too_long_paths_and_too_many_port_rules_are_validation_errors() {
    let long = format!("/{}", "x".repeat(251));
    let text = format!(
        "name: p\nmode: enforce\ndefaults: {ALLOW_ALL}\nrules:\n  exec:\n    - path: {long}\n      action: deny\n"
    );
    let d = validate_file("x.yaml".as_ref(), &text).unwrap_err();
    assert_eq!((d[0].line, d[0].column, d[0].field.as_str()), (6, 13, "rules.exec[0].path"));
    assert!(d[0].message.contains("at most 251"), "{}", d[0]);

    let ports: Vec<String> = (1..=MAX_PORT_RULES as u16 + 1).map(|p| (p * 10).to_string()).collect();
    let text = format!(
        "name: p\nmode: enforce\ndefaults: {ALLOW_ALL}\nrules:\n  network:\n    - cidr: 10.0.0.0/8\n      ports: [{}]\n      action: deny\n",
        ports.join(", ")
    );
    let d = validate_file("x.yaml".as_ref(), &text).unwrap_err();
    assert_eq!((d[0].line, d[0].field.as_str()), (6, "rules.network[0]"));
    assert!(d[0].message.contains("at most 16"), "{}", d[0]);
    // Sixteen fit.
    let text = text.replace(&format!(", {}", ports.last().unwrap()), "");
    assert!(validate_file("x.yaml".as_ref(), &text).is_ok());

    // The same bound per name for domain rules, wildcards above a name
    // counting with its own rules.
    let (ten, seven) = (&ports[..10], &ports[10..]);
    let text = format!(
        "name: p\nmode: enforce\ndefaults: {ALLOW_ALL}\nrules:\n  network:\n    - cidr: 10.0.0.0/8\n      action: deny\n\
         \x20   - domain: \"*.example.com\"\n      ports: [{}]\n      action: deny\n\
         \x20   - domain: a.example.com\n      ports: [{}]\n      action: allow\n",
        ten.join(", "),
        seven.join(", ")
    );
    let d = validate_file("x.yaml".as_ref(), &text).unwrap_err();
    assert_eq!((d[0].line, d[0].column, d[0].field.as_str()), (8, 7, "rules.network[1]"), "{}", d[0]);
    assert!(d[0].message.starts_with("a.example.com is matched by 17 port rules"), "{}", d[0]);
    assert!(validate_file("x.yaml".as_ref(), &text.replacen(&format!(", {}", ten[9]), "", 1)).is_ok());
}

// ---------------------------------------------------------------- domain rules

#[test]
fn domain_rules_share_the_network_numbering_and_leave_cidr_rules_alone() {
    let f = policy(
        "{file: allow, exec: allow, network: deny}",
        "  file:\n    - {path: /a, action: deny}\n\
         \x20 network:\n    - {cidr: 10.0.0.0/8, ports: [443], action: allow}\n    \
         - domain: Example.COM.\n      ports: [443]\n      protocol: tcp\n      action: allow\n    \
         - {cidr: 10.1.0.0/16, action: audit}\n    \
         - {domain: \"*.example.org\", action: audit, allow_private: true}\n",
    );
    let p = f.set.get("p").unwrap();
    assert_eq!(p.rule_counts(), [1, 0, 4]);
    let ids = |p: &Policy| -> Vec<RuleId> {
        p.network_rules.iter().map(|r| r.id).chain(p.domain_rules.iter().map(|r| r.id)).collect()
    };
    assert_eq!(ids(p), [2, 4, 3, 5], "CIDR rules 2 and 4, domain rules 3 and 5: file order");
    assert_eq!(p.domain_rules[0].pattern, DomainPattern::Exact("example.com".into()));
    assert_eq!(p.domain_rules[1].pattern.to_string(), "*.example.org");
    assert!(p.domain_rules[1].allow_private && !p.domain_rules[0].allow_private);
    // The rule table names each by its place in `rules.network` and line.
    let origin = f.set.rule(3).unwrap();
    assert_eq!((origin.class, origin.index, origin.line), (RuleClass::Network, 1, 9));
    assert_eq!(origin.to_string(), "p.yaml:9");
    assert_eq!(f.set.rule(5).unwrap().index, 3);
    // CIDR rules judge as without the domain rules between them.
    assert_eq!(f.by(f.connect("10.0.0.1", 443, TCP)), "allow network[0]");
    assert_eq!(f.by(f.connect("10.1.0.1", 22, TCP)), "audit network[2]");
    assert_eq!(f.by(f.connect("11.0.0.1", 443, TCP)), "deny default");
    // The name judge names rules the same way.
    assert_eq!(f.name("example.com"), "allow network[1] [443-443/6]");
    assert_eq!(f.name("a.b.example.org"), "audit network[3] [0-65535/0]");
    assert_eq!(f.name("example.org"), "no rule (deny)");
    let compiled = f.set.open("p", &std_vars()).unwrap();
    let NameVerdict::Resolve { allow_private, .. } = compiled.domains().judge("x.example.org") else { panic!() };
    assert!(allow_private);
}

#[test]
fn refuse_and_resolve_through_a_whole_policy() {
    let f = policy(
        ALLOW_ALL,
        "  network:\n    - {domain: \"*.example.net\", action: deny}\n    \
         - {domain: mirror.example.net, ports: [443], protocol: tcp, action: allow}\n    \
         - {domain: example.com, ports: [22], action: deny}\n    \
         - {domain: example.org, action: deny}\n",
    );
    assert_eq!(f.name("a.example.net"), "refuse network[0]");
    assert_eq!(f.name("mirror.example.net"), "allow network[1] [443-443/6, 0-65535/0]");
    // A port-specific deny under an allow default: resolved, port 22 denied.
    assert_eq!(f.name("example.com"), "allow default [22-22/0]");
    assert_eq!(f.name("example.org"), "refuse network[3]");
    assert_eq!(f.name("www.example.org"), "no rule (allow)");
    assert_eq!(f.name("a b.example.org"), "refuse default", "not a name a rule can judge");
}

// ---------------------------------------------------------------- precedence

#[test]
fn directory_rule_does_not_match_a_sibling_sharing_its_prefix() {
    let f = policy(ALLOW_ALL, "  file:\n    - {path: /a/b/, action: deny}\n");
    assert_eq!(f.by(f.file("/a/b", Access::Read)), "deny file[0]");
    assert_eq!(f.by(f.file("/a/b/", Access::Read)), "deny file[0]");
    assert_eq!(f.by(f.file("/a/b/c/d", Access::Read)), "deny file[0]");
    assert_eq!(f.by(f.file("/a/bc", Access::Read)), "allow default");
    assert_eq!(f.by(f.file("/a/bc/d", Access::Read)), "allow default");
    assert_eq!(f.by(f.file("/a", Access::Read)), "allow default");
}

#[test]
fn exact_rule_matches_only_its_path() {
    let f = policy(ALLOW_ALL, "  file:\n    - {path: /a/b, action: deny}\n");
    assert_eq!(f.by(f.file("/a/b", Access::Write)), "deny file[0]");
    assert_eq!(f.by(f.file("/a/b/c", Access::Write)), "allow default");
    assert_eq!(f.by(f.file("/a/bc", Access::Write)), "allow default");
}

#[test]
fn root_directory_rule_matches_everything_and_loses_to_anything_longer() {
    let f = policy(ALLOW_ALL, "  file:\n    - {path: /, action: deny}\n    - {path: /tmp/, action: allow}\n");
    assert_eq!(f.by(f.file("/", Access::Read)), "deny file[0]");
    assert_eq!(f.by(f.file("/etc/passwd", Access::Read)), "deny file[0]");
    assert_eq!(f.by(f.file("/tmp", Access::Read)), "allow file[1]");
    assert_eq!(f.by(f.file("/tmp/x", Access::Read)), "allow file[1]");
    assert_eq!(f.by(f.file("/tmpx", Access::Read)), "deny file[0]");
}

#[test]
fn exact_beats_directory_on_the_same_path_and_deny_wins_ties() {
    let f = policy(
        ALLOW_ALL,
        "  file:\n    - {path: /a/b/, action: deny}\n    - {path: /a/b, action: allow}\n    \
         - {path: /c/, action: allow}\n    - {path: /c/, action: audit}\n    - {path: /c/, action: deny}\n",
    );
    assert_eq!(f.by(f.file("/a/b", Access::Read)), "allow file[1]");
    assert_eq!(f.by(f.file("/a/b/x", Access::Read)), "deny file[0]");
    assert_eq!(f.by(f.file("/c/x", Access::Read)), "deny file[4]");
    let f = policy(ALLOW_ALL, "  exec:\n    - {path: /bin/, action: allow}\n    - {path: /bin/, action: audit}\n");
    assert_eq!(f.by(f.exec("/bin/sh")), "audit exec[1]");
}

#[test]
fn write_rule_on_a_subdirectory_does_not_hide_a_read_rule_above_it() {
    let f = policy(
        ALLOW_ALL,
        "  file:\n    - {path: /a/, access: read, action: deny}\n    - {path: /a/b/, access: write, action: allow}\n",
    );
    assert_eq!(f.by(f.file("/a/b/x", Access::Read)), "deny file[0]");
    assert_eq!(f.by(f.file("/a/b/x", Access::Write)), "allow file[1]");
    assert_eq!(f.by(f.file("/a/x", Access::Write)), "allow default");
    // The same with the exact-vs-directory entry shared at "/a/b\0".
    let f = policy(
        ALLOW_ALL,
        "  file:\n    - {path: /a/b/, access: read, action: deny}\n    - {path: /a/b, access: write, action: audit}\n",
    );
    assert_eq!(f.by(f.file("/a/b", Access::Read)), "deny file[0]");
    assert_eq!(f.by(f.file("/a/b", Access::Write)), "audit file[1]");
}

#[test]
fn paths_longer_than_the_key_match_directories_but_never_exact_rules() {
    let dir = format!("/{}", "d".repeat(200));
    let exact = format!("{dir}/{}", "f".repeat(MAX_RULE_PATH - dir.len() - 1));
    assert_eq!(exact.len(), MAX_RULE_PATH);
    let f = policy(
        ALLOW_ALL,
        &format!("  file:\n    - {{path: {dir}/, action: audit}}\n    - {{path: {exact}, action: deny}}\n"),
    );
    assert_eq!(f.by(f.file(&exact, Access::Read)), "deny file[1]");
    // Same first 251 bytes and more: a kernel that NUL-terminated the cut
    // key would wrongly match the exact rule.
    assert_eq!(f.by(f.file(&format!("{exact}g"), Access::Read)), "audit file[0]");
    assert_eq!(f.by(f.file(&format!("{exact}/{}", "z".repeat(300)), Access::Read)), "audit file[0]");
}
const MAX_RULE_PATH: usize = monitor_common::policy::MAX_RULE_PATH_LEN;

#[test]
fn variables_expand_per_trajectory() {
    let f = policy(
        ALLOW_ALL,
        "  file:\n    - {path: \"${HOME}/\", action: audit}\n    - {path: \"${WORKSPACE}/\", action: deny}\n",
    );
    assert_eq!(f.by(f.file("/home/u/proj/x", Access::Write)), "deny file[1]");
    assert_eq!(f.by(f.file("/home/u/.bashrc", Access::Write)), "audit file[0]");
    assert_eq!(f.by(f.file("/home/uu", Access::Write)), "allow default");
}

#[test]
fn ipv4_mapped_ipv6_is_judged_by_ipv4_rules() {
    let f = policy(
        ALLOW_ALL,
        "  network:\n    - {cidr: 10.0.0.0/8, action: deny}\n    - {cidr: \"::/0\", action: audit}\n",
    );
    assert_eq!(f.by(f.connect("::ffff:10.0.0.1", 443, TCP)), "deny network[0]");
    assert_eq!(f.by(f.connect("10.0.0.1", 443, TCP)), "deny network[0]");
    assert_eq!(f.by(f.connect("::ffff:11.0.0.1", 443, TCP)), "allow default");
    assert_eq!(f.by(f.connect("2001:db8::1", 443, TCP)), "audit network[1]");
}

#[test]
fn longest_cidr_wins_and_port_rules_inherit_from_covering_cidrs() {
    let f = policy(
        "{file: allow, exec: allow, network: deny}",
        "  network:\n    - {cidr: 10.0.0.0/8, ports: [443], protocol: tcp, action: allow}\n    \
         - {cidr: 10.0.0.0/8, ports: [\"8000-8999\"], action: audit}\n    \
         - {cidr: 10.1.0.0/16, ports: [8080], action: deny}\n    \
         - {cidr: 10.1.2.0/24, action: allow}\n",
    );
    assert_eq!(f.by(f.connect("10.9.9.9", 443, TCP)), "allow network[0]");
    assert_eq!(f.by(f.connect("10.9.9.9", 443, UDP)), "deny default");
    assert_eq!(f.by(f.connect("10.9.9.9", 8500, UDP)), "audit network[1]");
    // 10.1/16 inherits 443 and 8000-8999 from 10/8, its own 8080 comes first.
    assert_eq!(f.by(f.connect("10.1.0.1", 8080, TCP)), "deny network[2]");
    assert_eq!(f.by(f.connect("10.1.0.1", 8081, TCP)), "audit network[1]");
    assert_eq!(f.by(f.connect("10.1.0.1", 443, TCP)), "allow network[0]");
    assert_eq!(f.by(f.connect("10.1.0.1", 22, TCP)), "deny default");
    // The /24 with no ports matches every port: nothing shorter is consulted.
    assert_eq!(f.by(f.connect("10.1.2.3", 8080, TCP)), "allow network[3]");
    assert_eq!(f.by(f.connect("11.0.0.1", 443, TCP)), "deny default");
}

#[test]
fn narrower_ports_and_named_protocols_are_more_specific() {
    let f = policy(
        ALLOW_ALL,
        "  network:\n    - {cidr: 10.0.0.0/8, ports: [\"1-65535\"], action: deny}\n    \
         - {cidr: 10.0.0.0/8, ports: [\"400-500\"], action: audit}\n    \
         - {cidr: 10.0.0.0/8, ports: [443], action: allow}\n    \
         - {cidr: 10.0.0.0/8, ports: [53], protocol: udp, action: allow}\n    \
         - {cidr: 10.0.0.0/8, ports: [53], action: deny}\n",
    );
    assert_eq!(f.by(f.connect("10.0.0.1", 443, TCP)), "allow network[2]");
    assert_eq!(f.by(f.connect("10.0.0.1", 444, TCP)), "audit network[1]");
    assert_eq!(f.by(f.connect("10.0.0.1", 22, TCP)), "deny network[0]");
    assert_eq!(f.by(f.connect("10.0.0.1", 53, UDP)), "allow network[3]");
    assert_eq!(f.by(f.connect("10.0.0.1", 53, TCP)), "deny network[4]");
}

#[test]
fn port_zero_matches_only_rules_without_ports() {
    let f = policy(
        "{file: allow, exec: allow, network: deny}",
        "  network:\n    - {cidr: 10.0.0.0/8, ports: [\"1-65535\"], action: allow}\n    \
         - {cidr: 192.168.0.0/16, protocol: udp, action: allow}\n",
    );
    assert_eq!(f.by(f.connect("10.0.0.1", 0, TCP)), "deny default");
    assert_eq!(f.by(f.connect("10.0.0.1", 1, TCP)), "allow network[0]");
    assert_eq!(f.by(f.connect("192.168.1.1", 0, UDP)), "allow network[1]");
    assert_eq!(f.by(f.connect("192.168.1.1", 0, TCP)), "deny default");
}

#[test]
fn policy_id_separates_policies_in_shared_maps() {
    let f = policy("{file: allow, exec: allow, network: allow}", "");
    // Policy zz-other sits at the neighbouring ids with deny defaults.
    assert_eq!(judge_file(&f.maps, ID, b"/x", Access::Read).unwrap().action, Action::Allow);
    assert_eq!(judge_file(&f.maps, ID + 1, b"/x", Access::Read).unwrap().action, Action::Audit);
    assert_eq!(judge_exec(&f.maps, ID + 256, b"/x").unwrap().action, Action::Deny);
    assert_eq!(judge_connect(&f.maps, ID - 1, "1.1.1.1".parse().unwrap(), 1, TCP).unwrap().action, Action::Deny);
    assert_eq!(judge_connect(&f.maps, ID, "1.1.1.1".parse().unwrap(), 1, TCP).unwrap().action, Action::Allow);
    assert!(judge_file(&f.maps, 99, b"/x", Access::Read).is_none());
}

// ---------------------------------------------------------------- golden

/// The compiled entries of a small policy, one line each.
#[test]
fn golden_encoding() {
    let f = policy(
        "{file: allow, exec: deny, network: deny}",
        "  file:\n    - {path: /a/, access: read, action: deny}\n    - {path: /a/b, access: write, action: audit}\n\
         \x20 exec:\n    - {path: /usr/bin/, action: allow}\n\
         \x20 network:\n    - {cidr: 10.0.0.0/8, ports: [443], protocol: tcp, action: allow}\n    - {cidr: 10.1.0.0/16, action: audit}\n",
    );
    let compiled = compile(&f.resolved).unwrap();
    let v = |v: monitor_common::policy::PolicyVerdict| format!("{}#{}", Action::from_abi(v.action).unwrap(), v.rule_id);
    let mut out = String::new();
    for e in &compiled.file {
        out += &format!(
            "file {:?} read={} write={}\n",
            String::from_utf8_lossy(&e.prefix),
            v(e.value.read),
            v(e.value.write)
        );
    }
    for e in &compiled.exec {
        out += &format!("exec {:?} {}\n", String::from_utf8_lossy(&e.prefix), v(e.value));
    }
    for e in &compiled.net4 {
        let rules: Vec<String> = e.value.rules[..e.value.count as usize]
            .iter()
            .map(|r| {
                format!(
                    "{}-{}/{} {}#{}",
                    r.port_lo,
                    r.port_hi,
                    r.protocol,
                    Action::from_abi(r.action).unwrap(),
                    r.rule_id
                )
            })
            .collect();
        out += &format!("net4 {} [{}] else {}\n", e.cidr, rules.join(", "), v(e.value.fallback));
    }
    let expected = "\
file \"/a\\0\" read=deny#1 write=allow#0
file \"/a/\" read=deny#1 write=allow#0
file \"/a/b\\0\" read=deny#1 write=audit#2
exec \"/usr/bin\\0\" allow#3
exec \"/usr/bin/\" allow#3
net4 10.0.0.0/8 [443-443/6 allow#4] else deny#0
net4 10.1.0.0/16 [] else audit#5
";
    assert_eq!(out, expected);
    let c = compiled.config;
    assert_eq!((c.mode, c.file_default, c.exec_default, c.network_default), (1, 1, 3, 3));
}

// ---------------------------------------------------------------- property

/// xorshift64*: deterministic, so a failure reproduces from the seed.
/// Shared with the other property tests (`landlock::tests`).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A path over a tiny alphabet so that rules and queries collide often,
/// including the `/a/b` vs `/a/bc` kind of near miss.
fn random_path(rng: &mut Rng) -> String {
    let depth = rng.below(4);
    let mut p = String::new();
    for _ in 0..depth {
        p.push('/');
        const NAMES: [&str; 5] = ["a", "b", "bc", "c", "a.b"];
        p.push_str(NAMES[rng.below(NAMES.len())]);
    }
    if p.is_empty() {
        p.push('/');
    }
    p
}

fn random_rule_path(rng: &mut Rng) -> String {
    let mut p = random_path(rng);
    if p != "/" && rng.below(2) == 0 {
        p.push('/');
    }
    if rng.below(6) == 0 {
        p = format!("${{HOME}}{}", if p == "/" { "/".into() } else { p });
    }
    p
}

fn random_cidr(rng: &mut Rng, v6: bool) -> String {
    if v6 {
        let prefix = *rng.pick(&[0u8, 16, 32, 48, 64, 120, 127, 128]);
        let addr = u128::from_be_bytes([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, rng.below(4) as u8])
            | ((rng.below(3) as u128) << 64);
        let addr = addr & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        format!("{}/{prefix}", std::net::Ipv6Addr::from(addr))
    } else {
        let prefix = *rng.pick(&[0u8, 7, 8, 9, 16, 24, 31, 32]);
        let addr = u32::from_be_bytes([10, rng.below(3) as u8, 0, rng.below(4) as u8]);
        let addr = addr & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        format!("{}/{prefix}", std::net::Ipv4Addr::from(addr))
    }
}

fn random_query_ip(rng: &mut Rng) -> IpAddr {
    match rng.below(3) {
        0 => std::net::Ipv4Addr::new(*rng.pick(&[10, 11]), rng.below(3) as u8, 0, rng.below(5) as u8).into(),
        1 => format!("::ffff:10.{}.0.{}", rng.below(3), rng.below(5)).parse().unwrap(),
        _ => format!("2001:db8:0:0:{}::{}", rng.below(3), rng.below(5)).parse().unwrap(),
    }
}

fn random_policy(rng: &mut Rng) -> String {
    let actions = ["allow", "audit", "deny"];
    let mut y = format!(
        "name: p\nmode: enforce\ndefaults: {{file: {}, exec: {}, network: {}}}\nrules:\n  file:\n",
        rng.pick(&actions),
        rng.pick(&actions),
        rng.pick(&actions)
    );
    for _ in 0..rng.below(10) {
        let access = rng.pick(&["read", "write", "read-write"]);
        y += &format!(
            "    - {{path: \"{}\", access: {access}, action: {}}}\n",
            random_rule_path(rng),
            rng.pick(&actions)
        );
    }
    y += "  exec:\n";
    for _ in 0..rng.below(6) {
        y += &format!("    - {{path: \"{}\", action: {}}}\n", random_rule_path(rng), rng.pick(&actions));
    }
    y += "  network:\n";
    for _ in 0..rng.below(8) {
        let v6 = rng.below(3) == 0;
        let cidr = random_cidr(rng, v6);
        let ports = match rng.below(3) {
            0 => String::new(),
            _ => {
                let items: Vec<&str> = (0..1 + rng.below(2))
                    .map(|_| *rng.pick(&["22", "443", "80-443", "1-1024", "8000-8999", "65535"]))
                    .collect();
                format!(", ports: [{}]", items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "))
            }
        };
        let protocol = rng.pick(&["", ", protocol: tcp", ", protocol: udp"]);
        y += &format!("    - {{cidr: \"{cidr}\"{ports}{protocol}, action: {}}}\n", rng.pick(&actions));
    }
    y
}

#[test]
fn compiled_maps_agree_with_the_naive_judge_on_random_policies() {
    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    let (mut policies, mut queries) = (0, 0);
    for round in 0..400 {
        let yaml = random_policy(&mut rng);
        let set = match PolicySet::from_sources(&[("r.yaml".into(), yaml.clone())]) {
            Ok(set) => set,
            Err(d) => {
                // Only the port-rule bound may refuse a generated policy.
                assert!(d.iter().all(|d| d.message.contains("port rules")), "round {round}: {d:#?}\n{yaml}");
                continue;
            }
        };
        let home = rng.pick(&["/a", "/a/b", "/", "/c/"]).to_string();
        let resolved = resolve(&set.policies()[0], &vars(&[("HOME", &home)])).unwrap();
        let maps = PolicyMaps::new(compile(&resolved).unwrap().map_entries(3));
        policies += 1;
        for _ in 0..150 {
            queries += 1;
            let mut path = random_path(&mut rng);
            if rng.below(5) == 0 {
                path.push('/');
            }
            let access = *rng.pick(&[Access::Read, Access::Write]);
            assert_eq!(
                judge_file(&maps, 3, path.as_bytes(), access).unwrap(),
                naive::judge_file(&resolved, path.as_bytes(), access),
                "round {round}: file {path} {access:?} HOME={home}\n{yaml}"
            );
            assert_eq!(
                judge_exec(&maps, 3, path.as_bytes()).unwrap(),
                naive::judge_exec(&resolved, path.as_bytes()),
                "round {round}: exec {path} HOME={home}\n{yaml}"
            );
            let ip = random_query_ip(&mut rng);
            let port = *rng.pick(&[0u16, 1, 22, 80, 443, 444, 1024, 8080, 8999, 65535]);
            let proto = *rng.pick(&[TCP, UDP, 1]);
            assert_eq!(
                judge_connect(&maps, 3, ip, port, proto).unwrap(),
                naive::judge_connect(&resolved, ip, port, proto),
                "round {round}: connect {ip} {port} {proto}\n{yaml}"
            );
        }
    }
    assert!(policies > 300 && queries > 45_000, "{policies} policies, {queries} queries");
}

// ---------------------------------------------------------------- built-in tamper protection

/// With the built-in protection added, a write at or below a protected path
/// is denied by `builtin:tamper` whatever the policy says (an `allow` rule
/// deeper inside included); every other query is judged as before.
#[test]
fn builtin_protection_overrides_writes_below_protected_paths_only() {
    use monitor_common::policy::RULE_BUILTIN_TAMPER;
    let protected = Protected::new([
        (PathBuf::from("/a/b"), true),
        (PathBuf::from("/c"), false),
        // Normalised, and covered by /a/b: dropped.
        (PathBuf::from("/a//b/./bc/../bc"), true),
    ]);
    assert_eq!(protected.paths().len(), 2, "{protected:?}");
    assert!(protected.covers("/a/b") && protected.covers("/a/b/x") && protected.covers("/c"));
    assert!(!protected.covers("/a/bc") && !protected.covers("/c/x") && !protected.covers("/a"));
    let mut rng = Rng(0x7a3b_e001_d00d_0042);
    let mut checked = 0;
    for round in 0..300 {
        let yaml = random_policy(&mut rng);
        let Ok(set) = PolicySet::from_sources(&[("r.yaml".into(), yaml.clone())]) else { continue };
        let resolved = resolve(&set.policies()[0], &vars(&[("HOME", "/a")])).unwrap();
        let compiled = compile(&resolved).unwrap();
        let plain = PolicyMaps::new(compiled.map_entries(3));
        let mut with = compiled.clone();
        with.protect(&protected);
        let maps = PolicyMaps::new(with.map_entries(3));
        for _ in 0..100 {
            let path = random_path(&mut rng);
            for access in [Access::Read, Access::Write] {
                checked += 1;
                let got = judge_file(&maps, 3, path.as_bytes(), access).unwrap();
                let before = judge_file(&plain, 3, path.as_bytes(), access).unwrap();
                if access == Access::Write && protected.covers(&path) {
                    assert_eq!(
                        got,
                        Decision { action: Action::Deny, rule_id: RULE_BUILTIN_TAMPER },
                        "round {round}: write {path}\n{yaml}"
                    );
                } else {
                    assert_eq!(got, before, "round {round}: {path} {access:?} changed\n{yaml}");
                }
            }
        }
    }
    assert!(checked > 40_000, "{checked}");
}

#[test]
fn protected_paths_refuse_what_cannot_be_encoded() {
    let p = Protected::new([
        (PathBuf::from("relative/dir"), true),
        (PathBuf::from("/"), true),
        (PathBuf::from(format!("/{}", "x".repeat(300))), true),
        (PathBuf::from("/ok/"), true),
    ]);
    assert_eq!(p.paths().len(), 1);
    assert_eq!(p.paths()[0].path, "/ok");
    assert_eq!(p.skipped().len(), 3, "{p:?}");
    let d = Protected::for_daemon(
        std::path::Path::new("/run/agent-monitor/control.sock"),
        std::path::Path::new("/var/lib/am-state/agent-monitor"),
        Some(std::path::Path::new("/etc/agent-monitor/policies")),
        Some(std::path::Path::new("/var/log/am.jsonl")),
        std::path::Path::new("/sys/fs/cgroup/unified"),
        4242,
    );
    for covered in [
        "/run/agent-monitor/control.sock",
        "/etc/agent-monitor/policies/x.yaml",
        "/etc/agent-monitor/config.yaml",
        "/var/log/am.jsonl",
        "/sys/fs/cgroup/unified/agent-monitor/t/cgroup.procs",
        "/sys/fs/cgroup/memory/tasks",
        "/sys/fs/bpf/agent-monitor/TRAJECTORIES",
        "/proc/4242/mem",
        "/var/lib/am-state/agent-monitor/t-1.seq",
    ] {
        assert!(d.covers(covered), "{covered} must be protected: {d:?}");
    }
    for free in ["/run/other", "/var/log/am.jsonl.1", "/proc/42/mem", "/proc/self/mem", "/etc/passwd", "/tmp/x"] {
        assert!(!d.covers(free), "{free} must not be protected: {d:?}");
    }
}

#[test]
fn session_and_limits_parse_and_every_error_names_its_field() {
    let head = "name: p\nmode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\n";
    let good = format!(
        "{head}session:\n  user: nobody\n  capabilities: [net_bind_service, CAP_KILL]\nlimits: {{memory: 512M, pids: 256, cpu: 1.5}}\n"
    );
    let (p, _) = validate_file("x.yaml".as_ref(), &good).unwrap();
    assert_eq!(
        p.session,
        Session { user: Some("nobody".into()), capabilities: vec!["kill".into(), "net_bind_service".into()] }
    );
    assert_eq!(p.limits, Limits { memory: Some(512 << 20), pids: Some(256), cpu_millicores: Some(1500) });
    let (p, _) = validate_file("x.yaml".as_ref(), head).unwrap();
    assert!(p.session.is_empty() && p.limits.is_empty());
    let bad = format!(
        "{head}session:\n  user: 'a b'\n  capabilities: [net_bind]\nlimits:\n  memory: 1X\n  pids: 0\n  cpu: 0.001\n"
    );
    let diags = validate_file("x.yaml".as_ref(), &bad).unwrap_err();
    let at: Vec<(&str, u32, u32)> = diags.iter().map(|d| (d.field.as_str(), d.line, d.column)).collect();
    assert_eq!(
        at,
        [
            ("session.user", 5, 9),
            ("session.capabilities[0]", 6, 18),
            ("limits.memory", 8, 11),
            ("limits.pids", 9, 9),
            ("limits.cpu", 10, 8)
        ]
    );
    let orphan = format!("{head}session:\n  capabilities: [kill]\n");
    let diags = validate_file("x.yaml".as_ref(), &orphan).unwrap_err();
    assert_eq!((diags[0].field.as_str(), diags[0].line), ("session.capabilities", 5), "{}", diags[0]);
    let unknown = format!("{head}limits: {{swap: 1G}}\n");
    assert!(validate_file("x.yaml".as_ref(), &unknown).unwrap_err()[0].message.contains("unknown field `swap`"));
}
