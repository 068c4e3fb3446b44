// The build script of each binary crate (`include!`d by agent, cli and
// control-plane build.rs): sets PICKET_VERSION to the release and the
// commit it was built from, `0.1.0+1a2b3c4d` (semver build metadata), so
// that `--version`, `agents list` and /metrics tell builds apart. Without
// git (a source tarball) the commit reads `unknown`; PICKET_COMMIT in the
// environment overrides it (packagers).

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = root.join(".git");
    // Rebuilt when HEAD moves: the file, and the branch it points to.
    println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
    println!("cargo:rerun-if-env-changed=PICKET_COMMIT");
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(r) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed={}", git.join(r).display());
        println!("cargo:rerun-if-changed={}", git.join("packed-refs").display());
    }
    let commit = std::env::var("PICKET_COMMIT").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=8", "HEAD"])
            .current_dir(&root)
            .output()
            .ok()?;
        let c = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !c.trim().is_empty()).then(|| c.trim().to_string())
    });
    let commit = commit.unwrap_or_else(|| "unknown".into());
    println!(
        "cargo:rustc-env=PICKET_VERSION={}+{commit}",
        env!("CARGO_PKG_VERSION")
    );
}
