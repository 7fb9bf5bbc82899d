//! `cargo xtask modules`: no module of `monitor/` or `monitor-ebpf/` may
//! import, directly or through others, a module that imports it.
//!
//! Each crate is checked at two levels: its top-level modules (the first
//! path segment under `src/`: `events/pipeline.rs` belongs to `events`) and
//! its module files (`events::pipeline`). The crate root (`lib.rs`,
//! `main.rs`) is no node. A module depends on another when its source names
//! it through `crate::…`, `super::…` or `self::…`, in a `use` item or inline
//! (`crate::pins::Fnv::new()`); a path counts for the deepest module file it
//! names. Test code may depend on anything: `#[cfg(test)]` items and files
//! named `tests.rs` are skipped. A `pub use` between a module file and its
//! own parent or child only re-exports, so it is no dependency.
//!
//! The same scan measures functions: one longer than [`MAX_FN_LINES`]
//! lines fails the check unless a comment right above it (its doc comment
//! or attributes included) says `Long:` and why it must be.
//!
//! The scan is lexical, not a parser: comments and literals are dropped,
//! then paths are read off the tokens. Paths relative to a name in scope
//! (`use events::x` in the crate root, `child::f()` in a parent) are not
//! seen; the code base writes `crate::`/`super::` paths.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The crates checked, by their directory under the workspace root.
const CRATES: &[&str] = &["monitor", "monitor-ebpf"];
/// Longest function, in lines from `fn` to its closing brace, that needs
/// no comment saying why.
const MAX_FN_LINES: u32 = 80;

pub fn run() -> Result<()> {
    let root = crate::root();
    let (mut cycles, mut long) = (0, 0);
    for name in CRATES {
        let report = check(&root, name)?;
        print!("{}", report.text);
        cycles += report.cycles;
        long += report.long;
    }
    if cycles > 0 || long > 0 {
        bail!("{cycles} module cycle(s), {long} function(s) over {MAX_FN_LINES} lines without a `Long:` comment");
    }
    Ok(())
}

struct Report {
    text: String,
    cycles: usize,
    /// Functions over [`MAX_FN_LINES`] without a `Long:` comment.
    long: usize,
}

/// Checks the crate in `root/name`; `text` is what to print.
fn check(root: &Path, name: &str) -> Result<Report> {
    let files = load(root, name)?;
    let (top, files_graph) = graphs(&files);
    let mut text = String::new();
    let mut cycles = 0;
    for (level, graph) in [("top-level modules", &top), ("module files", &files_graph)] {
        for scc in graph.components() {
            cycles += 1;
            writeln!(text, "{name}: cycle among {level} {}:", scc.join(", ")).unwrap();
            for cycle in graph.cycles(&scc) {
                writeln!(text, "  {}", cycle.join(" -> ")).unwrap();
                for pair in cycle.windows(2) {
                    let site = &graph.edges[&pair[0]][&pair[1]];
                    writeln!(text, "      {} -> {}: {}:{}", pair[0], pair[1], site.file, site.line).unwrap();
                }
            }
        }
    }
    let outcome = match cycles {
        0 => "no cycle".to_owned(),
        1 => "1 cycle".to_owned(),
        n => format!("{n} cycles"),
    };
    writeln!(text, "{name}: {} top-level modules, {} files, {outcome}", top.nodes.len(), files_graph.nodes.len())
        .unwrap();
    let mut long = 0;
    for f in &files {
        for func in &f.long_fns {
            let verdict = if func.justified { "justified by its `Long:` comment" } else { "too long" };
            writeln!(text, "{name}: {}:{} fn {}: {} lines, {verdict}", f.display, func.line, func.name, func.lines)
                .unwrap();
            long += usize::from(!func.justified);
        }
    }
    Ok(Report { text, cycles, long })
}

/// One source file of a crate, scanned.
struct SourceFile {
    /// Path shown in reports (relative to the workspace root).
    display: String,
    /// Module path; empty for the crate root.
    module: Vec<String>,
    refs: Vec<Reference>,
    /// Functions over [`MAX_FN_LINES`].
    long_fns: Vec<LongFn>,
}

#[derive(Debug, PartialEq, Eq)]
struct LongFn {
    name: String,
    line: u32,
    lines: u32,
    justified: bool,
}

/// A path naming something of the same crate.
#[derive(Debug, PartialEq, Eq)]
struct Reference {
    /// Absolute path from the crate root, without `crate`.
    path: Vec<String>,
    line: u32,
    /// Named by a `pub use` (of any visibility): a re-export.
    reexport: bool,
}

fn load(root: &Path, name: &str) -> Result<Vec<SourceFile>> {
    let src = root.join(name).join("src");
    let mut paths = Vec::new();
    rs_files(&src, &mut paths)?;
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let rel = path.strip_prefix(&src).expect("found under src/");
        if rel.file_name().is_some_and(|f| f == "tests.rs") {
            continue;
        }
        let module = module_path(rel);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let tokens = tokenize(&text);
        let refs = references(&tokens, &module);
        let long_fns = long_functions(&tokens, &text);
        let display = path.strip_prefix(root).unwrap_or(&path).display().to_string();
        files.push(SourceFile { display, module, refs, long_fns });
    }
    Ok(files)
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rs_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `events/pipeline.rs` → `[events, pipeline]`, `events/mod.rs` →
/// `[events]`, `lib.rs`/`main.rs` → `[]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return Vec::new();
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

// ---------------------------------------------------------------- lengths

/// Functions (with a body) longer than [`MAX_FN_LINES`], and whether the
/// comment block right above each says `Long:`.
fn long_functions(t: &[Token], text: &str) -> Vec<LongFn> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for i in 0..t.len() {
        let (Tok::Ident(kw), Some(Tok::Ident(name))) = (&t[i].tok, tok(t, i + 1)) else { continue };
        if kw != "fn" {
            continue;
        }
        let Some(end) = body_end(t, i + 2) else { continue };
        let n = t[end].line - t[i].line + 1;
        if n > MAX_FN_LINES {
            let justified = comment_above(&lines, t[i].line).to_lowercase().contains("long:");
            out.push(LongFn { name: name.clone(), line: t[i].line, lines: n, justified });
        }
    }
    out
}

/// From just after a function's name: the index of its body's closing
/// brace, or `None` for a declaration without a body.
fn body_end(t: &[Token], mut i: usize) -> Option<usize> {
    // Parentheses and brackets hold the signature's `;` (array types).
    let mut nesting = 0i32;
    while i < t.len() {
        match t[i].tok {
            Tok::Punct('(' | '[') => nesting += 1,
            Tok::Punct(')' | ']') => nesting -= 1,
            Tok::Punct(';') if nesting == 0 => return None,
            Tok::Punct('{') if nesting == 0 => break,
            _ => {}
        }
        i += 1;
    }
    let mut depth = 0;
    for (j, token) in t.iter().enumerate().skip(i) {
        match token.tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// The comment and attribute lines right above line `line` (1-based).
fn comment_above(lines: &[&str], line: u32) -> String {
    let mut above = Vec::new();
    for l in lines[..(line as usize).saturating_sub(1)].iter().rev() {
        let l = l.trim_start();
        if !(l.starts_with("//") || l.starts_with("#[")) {
            break;
        }
        above.push(l);
    }
    above.join("\n")
}

// ---------------------------------------------------------------- tokens

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: u32,
}

/// Rust source as identifiers, `::` and single punctuation characters;
/// comments, string, character and number literals are dropped, so nothing
/// quoted or commented out can look like a path.
fn tokenize(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            i = skip_block_comment(&c, i, &mut line);
        } else if ch == '"' {
            i = skip_string(&c, i + 1, &mut line);
        } else if ch == '\'' {
            i = skip_char_or_lifetime(&c, i);
        } else if ch.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let raw_string = at(i) == '"' || (at(i) == '#' && raw_string_opens(&c, i));
            match word.as_str() {
                "b" | "c" if at(i) == '"' => i = skip_string(&c, i + 1, &mut line),
                "r" | "br" | "cr" if raw_string => i = skip_raw_string(&c, i, &mut line),
                "b" if at(i) == '\'' => i = skip_char_or_lifetime(&c, i),
                // A raw identifier (`r#type`): the identifier follows.
                "r" if at(i) == '#' => i += 1,
                _ => out.push(Token { tok: Tok::Ident(word), line }),
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Token { tok: Tok::PathSep, line });
            i += 2;
        } else {
            out.push(Token { tok: Tok::Punct(ch), line });
            i += 1;
        }
    }
    out
}

/// `i` at `/*`; returns the index after the matching `*/` (they nest).
fn skip_block_comment(c: &[char], mut i: usize, line: &mut u32) -> usize {
    let mut depth = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            if c[i] == '\n' {
                *line += 1;
            }
            i += 1;
        }
    }
    i
}

/// `i` just after the opening quote; returns the index after the closing one.
fn skip_string(c: &[char], mut i: usize, line: &mut u32) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => {
                if c.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
            }
            '"' => return i + 1,
            ch => {
                if ch == '\n' {
                    *line += 1;
                }
                i += 1;
            }
        }
    }
    i
}

/// Whether the `#`s at `i` are followed by a quote (`r#"…"#`).
fn raw_string_opens(c: &[char], mut i: usize) -> bool {
    while c.get(i) == Some(&'#') {
        i += 1;
    }
    c.get(i) == Some(&'"')
}

/// `i` at the `#`s or quote after `r`; returns the index after the end.
fn skip_raw_string(c: &[char], mut i: usize, line: &mut u32) -> usize {
    let mut hashes = 0;
    while c.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    i += 1;
    while i < c.len() {
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        if c[i] == '\n' {
            *line += 1;
        }
        i += 1;
    }
    i
}

/// `i` at a `'`: skips a character literal (`'x'`, `'\n'`, `'\''`), or only
/// the quote of a lifetime or label, whose name then reads as an identifier.
fn skip_char_or_lifetime(c: &[char], i: usize) -> usize {
    if c.get(i + 1) == Some(&'\\') {
        // The escaped character itself may be a quote: search after it.
        let mut j = i + 3;
        while j < c.len() && c[j] != '\'' {
            j += 1;
        }
        return j + 1;
    }
    if c.get(i + 2) == Some(&'\'') {
        return i + 3;
    }
    i + 1
}

// ---------------------------------------------------------------- paths

/// The crate-internal paths named in a file whose module is `module`,
/// outside `#[cfg(test)]` items.
fn references(t: &[Token], module: &[String]) -> Vec<Reference> {
    let mut refs = Vec::new();
    // Inline `mod name { … }` blocks change what `super`/`self` mean: the
    // module path inside each, and the brace depth that closes it.
    let mut scope: Vec<String> = module.to_vec();
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < t.len() {
        if is_cfg_test(t, i) {
            i = skip_item(t, skip_attributes(t, i));
            continue;
        }
        match &t[i].tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                    scope.pop();
                }
                depth -= 1;
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct('{'))) = (tok(t, i + 1), tok(t, i + 2)) {
                    scope.push(name.clone());
                    inline.push(depth + 1);
                    i += 2;
                    continue;
                }
            }
            Tok::Ident(w) if w == "use" => {
                let reexport = is_pub(t, i);
                let mut raw = Vec::new();
                i += 1;
                use_tree(t, &mut i, &mut Vec::new(), &mut raw);
                for (path, line) in raw {
                    if let Some(path) = absolute(&path, &scope) {
                        refs.push(Reference { path, line, reexport });
                    }
                }
                continue;
            }
            Tok::Ident(w) if is_path_start(w) && tok(t, i + 1) == Some(&Tok::PathSep) => {
                // `pub(in crate::x)` names where an item is visible, not a dependency.
                let visibility = i > 0 && t[i - 1].tok == Tok::Ident("in".into());
                let mut path = vec![w.clone()];
                let mut line = t[i].line;
                i += 1;
                while let (Some(Tok::PathSep), Some(Tok::Ident(seg))) = (tok(t, i), tok(t, i + 1)) {
                    path.push(seg.clone());
                    line = t[i + 1].line;
                    i += 2;
                }
                if !visibility {
                    if let Some(path) = absolute(&path, &scope) {
                        refs.push(Reference { path, line, reexport: false });
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    refs
}

fn tok(t: &[Token], i: usize) -> Option<&Tok> {
    t.get(i).map(|t| &t.tok)
}

fn is_path_start(w: &str) -> bool {
    matches!(w, "crate" | "super" | "self")
}

/// `#[cfg(test)]` at `i`.
fn is_cfg_test(t: &[Token], i: usize) -> bool {
    let want = [
        Tok::Punct('#'),
        Tok::Punct('['),
        Tok::Ident("cfg".into()),
        Tok::Punct('('),
        Tok::Ident("test".into()),
        Tok::Punct(')'),
        Tok::Punct(']'),
    ];
    t.len() >= i + want.len() && t[i..i + want.len()].iter().zip(&want).all(|(a, b)| a.tok == *b)
}

/// Past the outer attributes (`#[…]`) starting at `i`.
fn skip_attributes(t: &[Token], mut i: usize) -> usize {
    while tok(t, i) == Some(&Tok::Punct('#')) && tok(t, i + 1) == Some(&Tok::Punct('[')) {
        let mut depth = 0;
        i += 1;
        while i < t.len() {
            match t[i].tok {
                Tok::Punct('[') => depth += 1,
                Tok::Punct(']') => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
    i
}

/// Past the item (or statement) starting at `i`: up to a `;` outside any
/// bracket, or through its first `{ … }` block (a module, function or impl
/// body).
fn skip_item(t: &[Token], mut i: usize) -> usize {
    let mut nesting = 0usize;
    while i < t.len() {
        match t[i].tok {
            Tok::Punct('(' | '[') => nesting += 1,
            Tok::Punct(')' | ']') => nesting = nesting.saturating_sub(1),
            Tok::Punct(';') if nesting == 0 => return i + 1,
            Tok::Punct('{') if nesting == 0 => {
                let mut depth = 0;
                while i < t.len() {
                    match t[i].tok {
                        Tok::Punct('{') => depth += 1,
                        Tok::Punct('}') => {
                            depth -= 1;
                            if depth == 0 {
                                return i + 1;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                return i;
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Whether the `use` at `i` has a visibility: `pub use`, `pub(crate) use`, …
fn is_pub(t: &[Token], i: usize) -> bool {
    let pub_kw = Tok::Ident("pub".into());
    if i == 0 {
        return false;
    }
    if t[i - 1].tok == pub_kw {
        return true;
    }
    if t[i - 1].tok != Tok::Punct(')') {
        return false;
    }
    let mut j = i - 1;
    while j > 0 && t[j].tok != Tok::Punct('(') {
        j -= 1;
    }
    j > 0 && t[j - 1].tok == pub_kw
}

/// Reads one use tree at `i` (after `use`, or inside a group), adding each
/// path it imports, with the line of its last segment, to `out`.
fn use_tree(t: &[Token], i: &mut usize, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, u32)>) {
    let base = prefix.len();
    if tok(t, *i) == Some(&Tok::PathSep) {
        *i += 1;
    }
    while let Some(token) = t.get(*i) {
        match &token.tok {
            Tok::Punct('{') => {
                *i += 1;
                loop {
                    match tok(t, *i) {
                        Some(Tok::Punct('}')) => {
                            *i += 1;
                            break;
                        }
                        Some(Tok::Punct(',')) => *i += 1,
                        None | Some(Tok::Punct(';')) => break,
                        Some(_) => {
                            let before = *i;
                            use_tree(t, i, prefix, out);
                            if *i == before {
                                // Not a use tree: give up on this group.
                                *i += 1;
                            }
                        }
                    }
                }
                break;
            }
            Tok::Punct('*') => {
                out.push((prefix.clone(), token.line));
                *i += 1;
                break;
            }
            Tok::Ident(seg) => {
                prefix.push(seg.clone());
                *i += 1;
                if tok(t, *i) == Some(&Tok::PathSep) {
                    *i += 1;
                    continue;
                }
                if tok(t, *i) == Some(&Tok::Ident("as".into())) {
                    *i += 2;
                }
                out.push((prefix.clone(), token.line));
                break;
            }
            _ => break,
        }
    }
    prefix.truncate(base);
}

/// `raw` (starting with `crate`, `super` or `self`, as written in module
/// `scope`) as a path from the crate root; `None` for other crates' paths
/// and for a `super` above the root.
fn absolute(raw: &[String], scope: &[String]) -> Option<Vec<String>> {
    let mut segs = raw.iter().peekable();
    let mut path = match segs.next()?.as_str() {
        "crate" => Vec::new(),
        "self" => scope.to_vec(),
        "super" => {
            let mut p = scope.to_vec();
            p.pop()?;
            p
        }
        _ => return None,
    };
    while segs.peek().is_some_and(|s| *s == "super") {
        segs.next();
        path.pop()?;
    }
    // `use crate::events::{self, …}`: `self` is the module named so far.
    path.extend(segs.filter(|s| *s != "self").cloned());
    Some(path)
}

// ---------------------------------------------------------------- graphs

/// Where a dependency is written.
#[derive(Debug, Clone)]
struct Site {
    file: String,
    line: u32,
}

#[derive(Default)]
struct Graph {
    nodes: BTreeSet<String>,
    /// `edges[a][b]`: the first place `a` names `b`.
    edges: BTreeMap<String, BTreeMap<String, Site>>,
}

impl Graph {
    fn add_edge(&mut self, from: &str, to: &str, site: Site) {
        self.edges.entry(from.to_owned()).or_default().entry(to.to_owned()).or_insert(site);
    }

    fn successors(&self, n: &str) -> impl Iterator<Item = &String> {
        self.edges.get(n).into_iter().flat_map(|m| m.keys())
    }

    /// Strongly connected components of more than one node, each sorted
    /// (Tarjan's algorithm).
    fn components(&self) -> Vec<Vec<String>> {
        struct State<'a> {
            graph: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            out: Vec<Vec<String>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a str) {
            let n = s.index.len();
            s.index.insert(v, n);
            s.low.insert(v, n);
            s.stack.push(v);
            s.on_stack.insert(v);
            for w in s.graph.successors(v) {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
            if s.low[v] == s.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    scc.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    s.out.push(scc);
                }
            }
        }
        let mut s = State {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            out: Vec::new(),
        };
        for v in &self.nodes {
            if !s.index.contains_key(v.as_str()) {
                visit(&mut s, v);
            }
        }
        s.out.sort();
        s.out
    }

    /// Cycles within the component `scc` that together use each of its
    /// edges: for each edge, the shortest way back. Each cycle is closed
    /// (`[a, b, a]`) and starts at its smallest node.
    fn cycles(&self, scc: &[String]) -> Vec<Vec<String>> {
        let inside: BTreeSet<&str> = scc.iter().map(String::as_str).collect();
        let mut cycles: Vec<Vec<String>> = Vec::new();
        for a in scc {
            for b in self.successors(a).filter(|b| inside.contains(b.as_str())) {
                let Some(back) = self.shortest_path(b, a, &inside) else {
                    continue;
                };
                let mut cycle: Vec<String> = std::iter::once(a.clone()).chain(back).collect();
                cycle.pop();
                let first = (0..cycle.len()).min_by_key(|&k| &cycle[k]).unwrap_or(0);
                cycle.rotate_left(first);
                cycle.push(cycle[0].clone());
                if !cycles.contains(&cycle) {
                    cycles.push(cycle);
                }
            }
        }
        cycles
    }

    /// `from … to` through nodes of `inside` only (breadth first).
    fn shortest_path(&self, from: &str, to: &str, inside: &BTreeSet<&str>) -> Option<Vec<String>> {
        let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        let mut seen = BTreeSet::from([from]);
        while let Some(n) = queue.pop_front() {
            if n == to {
                let mut path = vec![to.to_owned()];
                let mut at = to;
                while at != from {
                    at = previous[at];
                    path.push(at.to_owned());
                }
                path.reverse();
                return Some(path);
            }
            for m in self.successors(n).map(String::as_str) {
                if inside.contains(m) && seen.insert(m) {
                    previous.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
        None
    }
}

/// The top-level module graph and the module file graph of one crate.
fn graphs(files: &[SourceFile]) -> (Graph, Graph) {
    let modules: BTreeSet<&[String]> = files.iter().map(|f| f.module.as_slice()).filter(|m| !m.is_empty()).collect();
    let mut top = Graph::default();
    let mut all = Graph::default();
    for m in &modules {
        top.nodes.insert(m[0].clone());
        all.nodes.insert(m.join("::"));
    }
    for file in files.iter().filter(|f| !f.module.is_empty()) {
        let from = file.module.as_slice();
        for r in &file.refs {
            // The deepest module file the path names.
            let Some(to) = (1..=r.path.len()).rev().map(|n| &r.path[..n]).find(|p| modules.contains(p)) else {
                continue;
            };
            let site = Site { file: file.display.clone(), line: r.line };
            let related = to.starts_with(from) || from.starts_with(to);
            if to != from && !(r.reexport && related) {
                all.add_edge(&from.join("::"), &to.join("::"), site.clone());
            }
            if to[0] != from[0] {
                top.add_edge(&from[0], &to[0], site);
            }
        }
    }
    (top, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(m: &str) -> Vec<String> {
        if m.is_empty() {
            return Vec::new();
        }
        m.split("::").map(str::to_owned).collect()
    }

    /// `(path, line)` of each reference in `src`, a file of module `m`.
    fn refs(src: &str, m: &str) -> Vec<(String, u32)> {
        references(&tokenize(src), &module(m)).into_iter().map(|r| (r.path.join("::"), r.line)).collect()
    }

    fn graph(edges: &[(&str, &str)]) -> Graph {
        let mut g = Graph::default();
        for (a, b) in edges {
            g.nodes.insert((*a).to_owned());
            g.nodes.insert((*b).to_owned());
            g.add_edge(a, b, Site { file: "f.rs".into(), line: 1 });
        }
        g
    }

    #[test]
    fn grouped_use_over_several_lines() {
        let src = "use std::fmt;\nuse crate::{\n    a::x,\n    b::{y, z as w},\n    c::{self, d::*},\n};\n";
        assert_eq!(
            refs(src, "m"),
            [("a::x".into(), 3), ("b::y".into(), 4), ("b::z".into(), 4), ("c".into(), 5), ("c::d".into(), 5)]
        );
    }

    #[test]
    fn inline_paths() {
        let src = "fn f() {\n    let h = crate::pins::Fnv::new();\n    crate::x::<u8>();\n}\npub(crate) fn g() {}\n";
        assert_eq!(refs(src, "m"), [("pins::Fnv::new".into(), 2), ("x".into(), 3)]);
    }

    #[test]
    fn super_and_self_resolve_from_the_files_module() {
        let src = "use super::Batch;\nuse super::super::top::T;\nfn f() { self::child::g(); }\n";
        assert_eq!(
            refs(src, "sinks::jsonl"),
            [("sinks::Batch".into(), 1), ("top::T".into(), 2), ("sinks::jsonl::child::g".into(), 3)]
        );
        // In `mod.rs`, `super` is the parent of the directory's module.
        assert_eq!(refs("use super::events::record::Record;", "sinks"), [("events::record::Record".into(), 1)]);
        // Inside an inline module, `super` is the file's own module.
        assert_eq!(
            refs("mod kind {\n    use super::X;\n}\nuse super::Y;", "btf"),
            [("btf::X".into(), 2), ("Y".into(), 4)]
        );
        assert!(refs("use super::x;", "").is_empty(), "no module above the crate root");
    }

    #[test]
    fn comments_and_literals_are_no_paths() {
        let src = r####"
            // use crate::a;
            /* crate::b /* nested crate::c */ crate::d */
            /// See [`crate::e`].
            let s = "crate::f \" crate::g";
            let r = r#"crate::h "quoted" crate::i"#;
            let b = b"crate::j";
            let c = '"'; let q = '\''; let l: &'static str = "x";
            use crate::real;
        "####;
        assert_eq!(refs(src, "m"), [("real".into(), 9)]);
    }

    #[test]
    fn test_code_is_skipped() {
        let src = "#[cfg(test)]\nmod tests {\n    use crate::a;\n    fn t() { crate::b::f(); }\n}\n\
                   #[cfg(test)]\n#[allow(unused)]\nuse crate::{c, d};\n#[cfg(test)]\nmod more;\nuse crate::e;\n\
                   #[cfg(not(test))]\nuse crate::f;\n";
        assert_eq!(refs(src, "m"), [("e".into(), 11), ("f".into(), 13)]);
    }

    #[test]
    fn reexports_are_marked() {
        let t = tokenize("pub use self::a::X;\npub(crate) use super::b;\nuse crate::c;");
        let marks: Vec<bool> = references(&t, &module("m")).iter().map(|r| r.reexport).collect();
        assert_eq!(marks, [true, true, false]);
    }

    #[test]
    fn long_functions_need_a_long_comment() {
        let body = |n: usize| "    let x = 1;\n".repeat(n);
        let src = format!(
            "fn short() {{\n{}}}\n/// Long: one match over every case.\n#[inline]\nfn explained() {{\n{}}}\n\
             fn declared(a: [u8; 4]);\nimpl X {{\n    pub async fn long_one(&self) -> [u8; 2] {{\n{}    }}\n}}\n",
            body(78),
            body(90),
            body(79)
        );
        let found = long_functions(&tokenize(&src), &src);
        let summary: Vec<(&str, u32, bool)> = found.iter().map(|f| (f.name.as_str(), f.lines, f.justified)).collect();
        assert_eq!(summary, [("explained", 92, true), ("long_one", 81, false)]);
    }

    #[test]
    fn components_of_a_small_graph() {
        // a ⇄ b → c → d → c, e alone.
        let g = graph(&[("a", "b"), ("b", "a"), ("b", "c"), ("c", "d"), ("d", "c"), ("e", "a")]);
        assert_eq!(g.components(), [vec!["a", "b"], vec!["c", "d"]]);
        let g = graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("a", "c")]);
        let scc = g.components().remove(0);
        assert_eq!(g.cycles(&scc), [vec!["a", "b", "c", "a"], vec!["a", "c", "a"]]);
        assert!(graph(&[("a", "b"), ("b", "c")]).components().is_empty());
    }

    /// A throwaway crate under the system's temporary directory.
    struct TempCrate(PathBuf);

    impl TempCrate {
        fn new(name: &str, files: &[(&str, &str)]) -> TempCrate {
            let root = std::env::temp_dir().join(format!("xtask-modules-{}-{name}", std::process::id()));
            for (path, text) in files {
                let path = root.join(name).join("src").join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
            TempCrate(root)
        }
    }

    impl Drop for TempCrate {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_crate_with_a_cycle_and_one_without() {
        let dir = TempCrate::new(
            "k",
            &[
                ("main.rs", "mod lsm;\nmod tamper;\nmod maps;\nuse crate::lsm::x;\n"),
                ("lsm.rs", "use crate::{maps::M, tamper};\n"),
                ("tamper.rs", "fn f() {\n    crate::lsm::lsm_ret(0);\n}\n"),
                ("maps.rs", "#[cfg(test)]\nmod tests { use crate::lsm; }\n"),
                ("tests.rs", "use crate::tamper;\n"),
            ],
        );
        let report = check(&dir.0, "k").unwrap();
        assert_eq!(report.cycles, 2);
        assert_eq!(
            report.text,
            "k: cycle among top-level modules lsm, tamper:\n  lsm -> tamper -> lsm\n      \
             lsm -> tamper: k/src/lsm.rs:1\n      tamper -> lsm: k/src/tamper.rs:2\n\
             k: cycle among module files lsm, tamper:\n  lsm -> tamper -> lsm\n      \
             lsm -> tamper: k/src/lsm.rs:1\n      tamper -> lsm: k/src/tamper.rs:2\n\
             k: 3 top-level modules, 3 files, 2 cycles\n"
        );

        let dir = TempCrate::new(
            "u",
            &[
                ("lib.rs", "pub mod sinks;\npub mod events;\n"),
                ("sinks/mod.rs", "pub mod jsonl;\npub use self::jsonl::Sink;\npub struct Batch;\n"),
                ("sinks/jsonl.rs", "use super::Batch;\nuse crate::events::record::Record;\n"),
                ("events/mod.rs", "pub mod record;\n"),
                ("events/record.rs", "pub struct Record;\n"),
            ],
        );
        let report = check(&dir.0, "u").unwrap();
        assert_eq!(report.cycles, 0, "{}", report.text);
        assert_eq!(report.text, "u: 2 top-level modules, 4 files, no cycle\n");
    }
}
