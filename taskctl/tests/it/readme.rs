//! The README's first command, exactly as written, in a fresh copy of the
//! repository: a finished two-step run on the embedded store.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The command in the first sh code block after the first-command marker.
fn first_command(readme: &str) -> String {
    let after = readme
        .split_once("<!-- first command -->")
        .expect("README.md marks its first command with <!-- first command -->")
        .1;
    let block = after
        .split_once("```sh\n")
        .expect("a sh block follows the marker")
        .1;
    block.split_once("```").unwrap().0.trim().to_owned()
}

/// Copies the files git knows (tracked, or new and not ignored) to `to`.
fn copy_repo(from: &Path, to: &Path) {
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(from)
        .output()
        .expect("git ls-files");
    assert!(out.status.success());
    for rel in out.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).unwrap());
        let src = from.join(rel);
        if !src.is_file() {
            continue; // deleted in the work tree
        }
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap();
    }
}

#[test]
fn the_readmes_first_command_runs_the_example_to_the_end_on_the_embedded_store() {
    let root = repo_root();
    let command = first_command(&std::fs::read_to_string(root.join("README.md")).unwrap());
    assert_eq!(command, "bash examples/two-step/run.sh");
    let copy = tempfile::tempdir().unwrap();
    copy_repo(&root, copy.path());

    let out = Command::new("bash")
        .args(["-c", &command])
        .current_dir(copy.path())
        .env("CARGO_NET_OFFLINE", "true")
        .output()
        .expect("run the README's first command");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // The final status: both steps, every task done.
    let tail: Vec<&str> = stdout
        .rsplit("==> status\n")
        .next()
        .unwrap()
        .lines()
        .collect();
    let row = |step: &str| -> Vec<&str> {
        tail.iter()
            .find(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("no status row for {step} in:\n{stdout}"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(
        row("simulate"),
        ["simulate", "20", "0", "0", "0", "20", "0", "100.0%"]
    );
    assert_eq!(
        row("summarize"),
        ["summarize", "20", "0", "0", "0", "20", "0", "100.0%"]
    );

    // A result per sample, computed from step one's reads.
    let sheet = std::fs::read_to_string(copy.path().join("examples/two-step/samples.csv")).unwrap();
    for line in sheet.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (sample, pairs): (&str, u64) = (f[0], f[4].parse().unwrap());
        let summary =
            std::fs::read_to_string(copy.path().join(format!("results/summary/{sample}.tsv")))
                .unwrap_or_else(|e| panic!("no summary for {sample}: {e}"));
        let values: Vec<&str> = summary.lines().nth(1).unwrap().split('\t').collect();
        assert_eq!(values[0], sample);
        assert_eq!(
            values[2].parse::<u64>().unwrap(),
            2 * pairs,
            "reads of {sample}"
        );
        assert_eq!(
            values[3].parse::<u64>().unwrap(),
            200 * pairs,
            "bases of {sample}"
        );
        let gc: f64 = values[4].parse().unwrap();
        assert!((0.3..0.7).contains(&gc), "GC of {sample}: {gc}");
        assert_eq!(values[5].len(), 64);
    }
}
