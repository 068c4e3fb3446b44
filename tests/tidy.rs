//! Rules about the shape of the workspace, checked rather than remembered
//! (as rust-analyzer's tidy tests do). Each rule is stated in
//! ARCHITECTURE.md under "Crates and the arrows between them"; a failure
//! names the rule and the dependency path that breaks it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Where each workspace crate sits: a crate may depend only on crates of
/// a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("picket-clock", 0),
    ("picket-model", 0),
    ("picket-segment", 0),
    ("picket-log", 0),
    ("picket-tls", 0),
    ("picket-proto", 1),
    ("picket-config", 1),
    ("picket-sources", 1),
    ("picket-pki", 1),
    ("picket-cluster", 1),
    ("picket-driver", 1),
    ("picket-rollout", 2),
    ("picket-alert", 2),
    ("picket-store", 2),
    ("picket-notify", 3),
    ("picket-backup", 3),
    ("picket-feed", 3),
    ("picket-records-pg", 3),
    ("picket-tap", 3),
    ("picket-control", 4),
    ("picket-agent", 4),
    ("picketctl", 4),
    ("picket-tests", 5),
    ("picket-cluster-tests", 6),
];

/// The pure crates: decisions from inputs, no I/O, no clock.
const PURE: &[&str] = &[
    "picket-model",
    "picket-rollout",
    "picket-alert",
    "picket-sources",
    "picket-config",
];

/// What a pure crate must not reach, even through another crate.
const RUNTIME: &[&str] = &[
    "tokio", "tonic", "sled", "reqwest", "hyper", "lettre", "axum",
];

/// The binaries' crates: nothing but tests links them.
const SHELLS: &[&str] = &["picket-control", "picket-agent", "picketctl"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A resolved dependency graph: package name → names of its normal
/// (not dev, not build) dependencies.
struct Graph {
    deps: BTreeMap<String, BTreeSet<String>>,
    members: BTreeSet<String>,
    /// Each member's folder.
    dirs: BTreeMap<String, PathBuf>,
}

impl Graph {
    fn load(manifest: &Path) -> Graph {
        let out = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(manifest)
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "cargo metadata --manifest-path {}: {}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
        let name_of: BTreeMap<&str, &str> = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let members: BTreeSet<String> = meta["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .map(|id| name_of[id.as_str().unwrap()].to_string())
            .collect();
        let dirs = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| members.contains(p["name"].as_str().unwrap()))
            .map(|p| {
                let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap());
                let dir = manifest.parent().unwrap().to_path_buf();
                (p["name"].as_str().unwrap().to_string(), dir)
            })
            .collect();
        let mut deps = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().expect("resolve") {
            let name = name_of[node["id"].as_str().unwrap()].to_string();
            let normal: BTreeSet<String> = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| name_of[d["pkg"].as_str().unwrap()].to_string())
                .collect();
            deps.entry(name)
                .or_insert_with(BTreeSet::new)
                .extend(normal);
        }
        Graph {
            deps,
            members,
            dirs,
        }
    }

    /// The shortest dependency path from `from` to `to`, if there is one.
    fn path(&self, from: &str, to: &str) -> Option<Vec<String>> {
        let mut back: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        while let Some(n) = queue.pop_front() {
            if n == to {
                let mut path = vec![to.to_string()];
                let mut at = to;
                while let Some(prev) = back.get(at) {
                    path.push(prev.to_string());
                    at = prev;
                }
                path.reverse();
                return Some(path);
            }
            for d in self.deps.get(n).into_iter().flatten() {
                if d != from && !back.contains_key(d.as_str()) {
                    back.insert(d, n);
                    queue.push_back(d);
                }
            }
        }
        None
    }
}

fn layer(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

#[test]
fn every_member_has_a_layer() {
    let g = Graph::load(&root().join("Cargo.toml"));
    let missing: Vec<_> = g.members.iter().filter(|m| layer(m).is_none()).collect();
    assert!(
        missing.is_empty(),
        "rule: every crate has a place in the layers (tests/tidy.rs LAYERS and \
         ARCHITECTURE.md); not placed: {missing:?}"
    );
}

#[test]
fn no_crate_depends_upward_or_sideways() {
    let g = Graph::load(&root().join("Cargo.toml"));
    let mut broken = Vec::new();
    for m in &g.members {
        let Some(l) = layer(m) else { continue };
        for d in &g.deps[m] {
            if let Some(dl) = layer(d)
                && dl >= l
            {
                broken.push(format!("{m} (layer {l}) -> {d} (layer {dl})"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "rule: a crate depends only on crates of a lower layer; broken by:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn pure_crates_reach_no_runtime_no_network_no_disk_engine_and_no_clock() {
    let g = Graph::load(&root().join("Cargo.toml"));
    let mut broken = Vec::new();
    for p in PURE {
        for r in RUNTIME.iter().chain(&["picket-clock"]) {
            if let Some(path) = g.path(p, r) {
                broken.push(path.join(" -> "));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "rule: the model, the engines, the parsers and the config readers \
         depend on no tokio, tonic, sled, reqwest, hyper, lettre, axum or \
         picket-clock; broken by:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn engines_read_no_clock() {
    let mut broken = Vec::new();
    for krate in ["model", "rollout", "alert", "sources"] {
        for file in rust_files(&root().join(krate).join("src")) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if ["SystemTime::now", "Instant::now", "OffsetDateTime::now"]
                    .iter()
                    .any(|c| code.contains(c))
                {
                    broken.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "rule: the model, the engines and the parsers read no clock (`now` is an \
         argument); broken by:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn the_clock_is_read_in_one_place() {
    let mut broken = Vec::new();
    let g = Graph::load(&root().join("Cargo.toml"));
    for (name, dir) in &g.dirs {
        if matches!(
            name.as_str(),
            "picket-clock" | "picket-tests" | "picket-cluster-tests"
        ) {
            continue;
        }
        for file in rust_files(&dir.join("src")) {
            let text = std::fs::read_to_string(&file).unwrap();
            // Unit tests may read the clock to make their inputs.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (i, line) in code.lines().enumerate() {
                if line
                    .split("//")
                    .next()
                    .unwrap_or("")
                    .contains("SystemTime::now")
                {
                    broken.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "rule: wall time is read only through picket-clock (`now`, `now_ms`, \
         `ago_ms`); broken by:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn nothing_depends_on_a_shell_crate() {
    let g = Graph::load(&root().join("Cargo.toml"));
    let mut broken = Vec::new();
    for m in &g.members {
        if m == "picket-tests" {
            continue;
        }
        for s in SHELLS {
            if m != s && g.deps[m].contains(*s) {
                broken.push(format!("{m} -> {s}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "rule: nothing but the end-to-end tests depends on picket-control, \
         picket-agent or picketctl (what two binaries share lives in a crate \
         below them); broken by:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn fuzz_targets_link_no_shell_crate_and_no_runtime() {
    let g = Graph::load(&root().join("fuzz/Cargo.toml"));
    let mut broken = Vec::new();
    for forbidden in SHELLS.iter().chain(&["sled", "reqwest", "hyper", "lettre"]) {
        if let Some(path) = g.path("picket-fuzz", forbidden) {
            broken.push(path.join(" -> "));
        }
    }
    assert!(
        broken.is_empty(),
        "rule: the fuzz crate depends only on the small crates it fuzzes (no \
         shell crate, no server stack), so it builds in minutes; broken by:\n  {}",
        broken.join("\n  ")
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// Lines of Rust code (tests included; blank lines and comment lines
/// not counted, as tokei and cloc count) in each workspace crate's folder.
#[test]
fn no_crate_over_8000_lines() {
    let g = Graph::load(&root().join("Cargo.toml"));
    let mut broken = Vec::new();
    for m in &g.members {
        let lines: usize = rust_files(&g.dirs[m])
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("//"))
                    .count()
            })
            .sum();
        if lines > 8000 {
            broken.push(format!("{m}: {lines} lines"));
        }
    }
    assert!(
        broken.is_empty(),
        "rule: no crate over 8,000 lines of code (one that is holds two ideas: \
         split it); broken by:\n  {}",
        broken.join("\n  ")
    );
}

/// The top-level modules of a crate (`src/X.rs`, `src/X/`) and which of
/// them each one names through `crate::`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let top = |file: &Path| -> Option<String> {
        let rel = file.strip_prefix(src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        Some(first.trim_end_matches(".rs").to_string())
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let Some(from) = top(&file) else { continue };
        if matches!(from.as_str(), "lib" | "main") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(from.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != from {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the modules on it, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            if graph.contains_key(d)
                && let Some(c) = visit(d, graph, path, done)
            {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_circle_among_a_crates_modules() {
    let g = Graph::load(&root().join("Cargo.toml"));
    let mut broken = Vec::new();
    for (name, dir) in &g.dirs {
        let src = dir.join("src");
        if !src.is_dir() {
            continue;
        }
        if let Some(c) = cycle(&module_graph(&src)) {
            broken.push(format!("{name}: {}", c.join(" -> ")));
        }
    }
    assert!(
        broken.is_empty(),
        "rule: a crate's top-level modules import each other one way only (a \
         module that every other imports and that imports them back is a \
         bag); broken by:\n  {}",
        broken.join("\n  ")
    );
}
