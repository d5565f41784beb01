//! No two files of the workspace import each other: a file that names an item of another
//! (through `use` or a path such as `crate::a::b`, `super::x`, `child::y`) depends on it, and a
//! pair depending on each other is one concern in two files, or two concerns tangled. Names
//! re-exported by a `lib.rs` or `mod.rs` (`pub use a::X`) count as the file that defines them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module's path from its crate root, `["commands", "train"]`.
type ModulePath = Vec<String>;

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

/// One crate's source files by module path.
struct Crate {
    name: String,
    files: BTreeMap<ModulePath, PathBuf>,
}

#[test]
fn no_two_files_of_the_workspace_import_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut crates: Vec<Crate> = fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| dir.join("src").is_dir())
        .map(|dir| crate_files(&dir))
        .collect();
    crates.push(crate_files(&root.join("xtask")));
    assert!(crates.len() >= 5, "the workspace's crates were not found");

    let mut circles = Vec::new();
    for krate in &crates {
        let edges = dependencies(krate);
        for (from, targets) in &edges {
            for to in targets {
                let back = edges.get(to).is_some_and(|back| back.contains(from));
                if back && from < to {
                    circles.push(format!(
                        "{}: {} <-> {}",
                        krate.name,
                        display(&krate.files[from]),
                        display(&krate.files[to])
                    ));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "files importing each other:\n{}",
        circles.join("\n")
    );
}

/// The checker itself finds a circle, a re-export and a child module's path.
#[test]
fn a_circle_through_a_re_export_is_found() {
    let dir = tempdir();
    let src = dir.join("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("lib.rs"), "mod a;\nmod b;\npub use b::Thing;\n").unwrap();
    fs::write(
        src.join("a/mod.rs"),
        "mod c;\nfn f() { c::g(); }\nmod tests {\n    use super::f;\n}\n",
    )
    .unwrap();
    fs::write(
        src.join("a/c.rs"),
        "use crate::Thing; // crate::a\nfn g() {}\n",
    )
    .unwrap();
    fs::write(
        src.join("b.rs"),
        "use crate::a::{self as x};\npub struct Thing;\n",
    )
    .unwrap();
    let edges = dependencies(&crate_files(&dir));
    let path = |parts: &[&str]| parts.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert!(edges[&path(&["a"])].contains(&path(&["a", "c"])));
    assert!(edges[&path(&["a", "c"])].contains(&path(&["b"])));
    assert!(edges[&path(&["b"])].contains(&path(&["a"])));
    assert!(
        !edges[&path(&["a"])].contains(&path(&[])),
        "an inline module's super is its file"
    );
    assert!(
        !edges[&path(&["a", "c"])].contains(&path(&["a"])),
        "a comment is not an import"
    );
    fs::remove_dir_all(&dir).unwrap();
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imports-check-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn display(path: &Path) -> String {
    let text = path.display().to_string();
    text.split_once("/../")
        .map_or(text.clone(), |(_, rest)| rest.to_string())
}

/// The files under `dir/src` by module path (the library's tree where there is one, else the
/// binary's).
fn crate_files(dir: &Path) -> Crate {
    let src = dir.join("src");
    let mut files = BTreeMap::new();
    collect(&src, &src, &mut files);
    let root = if src.join("lib.rs").is_file() {
        "lib.rs"
    } else {
        "main.rs"
    };
    files.insert(Vec::new(), src.join(root));
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    Crate { name, files }
}

fn collect(src: &Path, dir: &Path, files: &mut BTreeMap<ModulePath, PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(src, &path, files);
            continue;
        }
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        let relative = path.strip_prefix(src).unwrap().with_extension("");
        let mut module: ModulePath = relative
            .iter()
            .map(|part| part.to_string_lossy().into_owned())
            .collect();
        if module.last().is_some_and(|last| last == "mod") {
            module.pop();
        }
        if module != ["lib"] && module != ["main"] {
            files.insert(module, path);
        }
    }
}

/// Which files each file of `krate` names items of.
fn dependencies(krate: &Crate) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let tokens: BTreeMap<&ModulePath, Vec<Token>> = krate
        .files
        .iter()
        .map(|(module, path)| (module, tokenize(&fs::read_to_string(path).unwrap())))
        .collect();
    let re_exports: BTreeMap<&ModulePath, BTreeMap<String, ModulePath>> = tokens
        .iter()
        .map(|(module, tokens)| (*module, re_exports(module, tokens)))
        .collect();
    let mut edges = BTreeMap::new();
    for (module, tokens) in &tokens {
        let mut targets = BTreeSet::new();
        for path in named_paths(module, tokens) {
            let target = resolve(&path, krate, &re_exports, 0);
            if &target != *module && !module.starts_with(&target) {
                targets.insert(target);
            } else if &target != *module && uses_item_of(&path, &target) {
                // A child naming an item of its parent (`super::Item`) depends on it.
                targets.insert(target);
            }
        }
        edges.insert((*module).clone(), targets);
    }
    edges
}

/// Whether `path` goes past the module `target` it resolved to, naming an item in it.
fn uses_item_of(path: &ModulePath, target: &ModulePath) -> bool {
    path.len() > target.len()
}

/// The file of the module `path` names (or of the item it names): the longest prefix that is a
/// file, following `pub use` re-exports from there.
fn resolve(
    path: &ModulePath,
    krate: &Crate,
    re_exports: &BTreeMap<&ModulePath, BTreeMap<String, ModulePath>>,
    depth: usize,
) -> ModulePath {
    let mut module = Vec::new();
    for (index, part) in path.iter().enumerate() {
        let mut next = module.clone();
        next.push(part.clone());
        if krate.files.contains_key(&next) {
            module = next;
            continue;
        }
        let target = re_exports.get(&module).and_then(|names| names.get(part));
        if let Some(target) = target.filter(|_| depth < 8) {
            let mut full = target.clone();
            full.extend(path[index + 1..].iter().cloned());
            return resolve(&full, krate, re_exports, depth + 1);
        }
        break;
    }
    module
}

/// `pub use` names of a file, by name, as absolute paths.
fn re_exports(module: &ModulePath, tokens: &[Token]) -> BTreeMap<String, ModulePath> {
    let mut names = BTreeMap::new();
    let inline = inline_depths(tokens);
    for (is_pub, tree, at) in use_statements(tokens) {
        if !is_pub {
            continue;
        }
        for (path, alias) in expand(&tree) {
            if let Some(absolute) = absolute(module, &path, &child_modules(tokens), inline[at]) {
                let name = alias.unwrap_or_else(|| path.last().unwrap().clone());
                names.insert(name, absolute);
            }
        }
    }
    names
}

/// Every crate-internal path the file names, absolute.
fn named_paths(module: &ModulePath, tokens: &[Token]) -> Vec<ModulePath> {
    let children = child_modules(tokens);
    let inline = inline_depths(tokens);
    let mut paths = Vec::new();
    for (_, tree, at) in use_statements(tokens) {
        for (path, _) in expand(&tree) {
            paths.extend(absolute(module, &path, &children, inline[at]));
        }
    }
    // Paths in code: `crate::a::b`, `super::x`, `child::y`.
    let mut index = 0;
    while index < tokens.len() {
        let starts = index == 0 || tokens[index - 1] != Token::PathSep;
        if let (true, Token::Ident(first)) = (starts, &tokens[index]) {
            let mut path = vec![first.clone()];
            let mut next = index + 1;
            while tokens.get(next) == Some(&Token::PathSep) {
                match tokens.get(next + 1) {
                    Some(Token::Ident(part)) => path.push(part.clone()),
                    _ => break,
                }
                next += 2;
            }
            if path.len() > 1 {
                paths.extend(absolute(module, &path, &children, inline[index]));
            }
            index = next;
            continue;
        }
        index += 1;
    }
    paths
}

/// `path` from the crate root, for paths that start at `crate`, `super`, `self` or a child
/// module of the file, named `inline` modules deep inside the file (`mod tests { … }`);
/// `None` for paths into other crates.
fn absolute(
    module: &ModulePath,
    path: &[String],
    children: &[String],
    inline: usize,
) -> Option<ModulePath> {
    let first = path.first()?;
    let mut base = match first.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => module.clone(),
        child if inline == 0 && children.iter().any(|name| name == child) => {
            let mut base = module.clone();
            base.push(child.to_string());
            base
        }
        _ => return None,
    };
    let skip = usize::from(first != "super");
    let mut inline = inline;
    let mut rest = path[skip..].iter().peekable();
    while rest.peek().is_some_and(|part| *part == "super") {
        // Out of an inline module stays in this file; out of the file goes to its parent.
        if inline > 0 {
            inline -= 1;
        } else {
            base.pop()?;
        }
        rest.next();
    }
    base.extend(rest.filter(|part| *part != "self").cloned());
    Some(base)
}

/// For each token, how many inline modules (`mod name { … }`) it sits in.
fn inline_depths(tokens: &[Token]) -> Vec<usize> {
    let (mut depths, mut open, mut braces) = (Vec::with_capacity(tokens.len()), Vec::new(), 0);
    for (index, token) in tokens.iter().enumerate() {
        match token {
            Token::Open => {
                braces += 1;
                let starts_module = index >= 2
                    && tokens[index - 2] == Token::Ident("mod".into())
                    && matches!(tokens[index - 1], Token::Ident(_));
                if starts_module {
                    open.push(braces);
                }
            }
            Token::Close => {
                if open.last() == Some(&braces) {
                    open.pop();
                }
                braces -= 1;
            }
            _ => {}
        }
        depths.push(open.len());
    }
    depths
}

/// The modules a file declares with `mod name;`.
fn child_modules(tokens: &[Token]) -> Vec<String> {
    tokens
        .windows(3)
        .filter_map(|window| match window {
            [Token::Ident(keyword), Token::Ident(name), Token::Semi] if keyword == "mod" => {
                Some(name.clone())
            }
            _ => None,
        })
        .collect()
}

/// Each `use` statement's tree (the tokens between `use` and `;`), whether it is `pub`, and
/// where it starts.
fn use_statements(tokens: &[Token]) -> Vec<(bool, Vec<Token>, usize)> {
    let mut statements = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        if *token != Token::Ident("use".into()) {
            continue;
        }
        // `pub use` or `pub(crate) use`.
        let is_pub = tokens[index.saturating_sub(4)..index]
            .iter()
            .rev()
            .take_while(|token| !matches!(token, Token::Semi | Token::Open | Token::Close))
            .any(|token| *token == Token::Ident("pub".into()));
        let end = tokens[index..]
            .iter()
            .position(|token| *token == Token::Semi)
            .map_or(tokens.len(), |end| index + end);
        statements.push((is_pub, tokens[index + 1..end].to_vec(), index));
    }
    statements
}

/// The paths of a use tree, each with its `as` alias.
fn expand(tree: &[Token]) -> Vec<(ModulePath, Option<String>)> {
    let mut paths = Vec::new();
    expand_into(tree, &mut Vec::new(), &mut paths);
    paths
}

fn expand_into(
    tree: &[Token],
    prefix: &mut ModulePath,
    out: &mut Vec<(ModulePath, Option<String>)>,
) {
    let mut path = prefix.clone();
    let mut index = 0;
    while index < tree.len() {
        match &tree[index] {
            Token::Ident(word) if word == "as" => {
                if let Some(Token::Ident(alias)) = tree.get(index + 1) {
                    out.push((path.clone(), Some(alias.clone())));
                }
                return;
            }
            Token::Ident(part) => path.push(part.clone()),
            Token::Open => {
                let close = matching_close(tree, index);
                for group in split_groups(&tree[index + 1..close]) {
                    expand_into(group, &mut path.clone(), out);
                }
                return;
            }
            Token::Star => return,
            _ => {}
        }
        index += 1;
    }
    if !path.is_empty() {
        out.push((path, None));
    }
}

fn matching_close(tree: &[Token], open: usize) -> usize {
    let mut depth = 0;
    for (index, token) in tree.iter().enumerate().skip(open) {
        match token {
            Token::Open => depth += 1,
            Token::Close => {
                depth -= 1;
                if depth == 0 {
                    return index;
                }
            }
            _ => {}
        }
    }
    tree.len()
}

/// The comma-separated parts of a use group, nested groups kept whole.
fn split_groups(tokens: &[Token]) -> Vec<&[Token]> {
    let (mut groups, mut depth, mut start) = (Vec::new(), 0, 0);
    for (index, token) in tokens.iter().enumerate() {
        match token {
            Token::Open => depth += 1,
            Token::Close => depth -= 1,
            Token::Comma if depth == 0 => {
                groups.push(&tokens[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    groups.push(&tokens[start..]);
    groups
}

/// Rust source as the tokens the checker reads, without comments, strings and characters.
fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let next = chars.get(index + 1).copied();
        if c.is_whitespace() {
            index += 1;
        } else if c == '/' && next == Some('/') {
            while index < chars.len() && chars[index] != '\n' {
                index += 1;
            }
        } else if c == '/' && next == Some('*') {
            index += 2;
            while index + 1 < chars.len() && !(chars[index] == '*' && chars[index + 1] == '/') {
                index += 1;
            }
            index += 2;
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && is_raw_string(&chars, index)
        {
            index = skip_raw_string(&chars, index);
        } else if c == '"' {
            index += 1;
            while index < chars.len() && chars[index] != '"' {
                index += if chars[index] == '\\' { 2 } else { 1 };
            }
            index += 1;
        } else if c == '\'' && (next == Some('\\') || chars.get(index + 2) == Some(&'\'')) {
            index += 2;
            while index < chars.len() && chars[index] != '\'' {
                index += 1;
            }
            index += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = index;
            while index < chars.len() && (chars[index].is_alphanumeric() || chars[index] == '_') {
                index += 1;
            }
            tokens.push(Token::Ident(chars[start..index].iter().collect()));
        } else {
            tokens.push(match (c, next) {
                (':', Some(':')) => {
                    index += 1;
                    Token::PathSep
                }
                ('{', _) => Token::Open,
                ('}', _) => Token::Close,
                (',', _) => Token::Comma,
                (';', _) => Token::Semi,
                ('*', _) => Token::Star,
                _ => Token::Other,
            });
            index += 1;
        }
    }
    tokens
}

/// Whether `r` at `index` starts a raw string (`r"…"`, `r#"…"#`), not an identifier.
fn is_raw_string(chars: &[char], index: usize) -> bool {
    let before = index.checked_sub(1).map(|before| chars[before]);
    if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
        return false;
    }
    let hashes = chars[index + 1..].iter().take_while(|c| **c == '#').count();
    chars.get(index + 1 + hashes) == Some(&'"')
}

fn skip_raw_string(chars: &[char], index: usize) -> usize {
    let hashes = chars[index + 1..].iter().take_while(|c| **c == '#').count();
    let mut at = index + 2 + hashes;
    while at < chars.len() {
        if chars[at] == '"' && chars[at + 1..].iter().take(hashes).all(|c| *c == '#') {
            let closed = chars[at + 1..].len() >= hashes;
            if closed {
                return at + 1 + hashes;
            }
        }
        at += 1;
    }
    chars.len()
}
