//! What a load records on its step (`taskctl show --step`), and
//! `load --require-clean`, with scripts in a real git work tree.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};
use taskfleet::fleet::hex;

use crate::support::{Taskctl, TestTable, taskctl_with};

/// Runs git in `dir`, panicking with its output on failure.
#[track_caller]
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.org"])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A work tree with `pipelines/qc.sh` committed, and a sheet beside it.
fn repo() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    std::fs::write(dir.path().join("pipelines/qc.sh"), "echo \"$SAMPLE\"\n").unwrap();
    git(dir.path(), &["add", "pipelines/qc.sh"]);
    git(dir.path(), &["commit", "-q", "-m", "qc"]);
    let head = git(dir.path(), &["rev-parse", "HEAD"]);
    std::fs::write(dir.path().join("samples.csv"), "sample\nS1\nS2\nS3\n").unwrap();
    (dir, head)
}

fn load(table: &str, dir: &Path, extra: &[&str]) -> crate::support::Run {
    let script = dir.join("pipelines/qc.sh");
    let sheet = dir.join("samples.csv");
    let mut args = vec![
        "--table",
        table,
        "load",
        "--step",
        "qc",
        "--script",
        script.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(sheet.to_str().unwrap());
    taskctl_with(&args, &[])
}

#[test]
fn a_load_records_its_sheet_script_commit_and_command_on_the_step() {
    let (dir, head) = repo();
    let table = format!("sqlite://{}", dir.path().join("tasks.db").display());
    taskctl_with(&["--table", &table, "init"], &[]).ok();
    load(&table, dir.path(), &["--require-clean"]).ok();
    let shown = taskctl_with(&["--table", &table, "show", "--step", "qc", "--json"], &[]);
    let shown = shown.ok().json();
    let rec = &shown["loads"][0];
    let sheet = std::fs::read(dir.path().join("samples.csv")).unwrap();
    let script = std::fs::read(dir.path().join("pipelines/qc.sh")).unwrap();
    assert_eq!(rec["sheet_sha256"], hex(&Sha256::digest(&sheet)), "{rec}");
    assert_eq!(rec["script_sha256"], hex(&Sha256::digest(&script)), "{rec}");
    assert_eq!(rec["rows"], 3);
    assert_eq!(rec["loaded"], 3);
    assert_eq!(rec["git"]["commit"], head.as_str());
    assert_eq!(rec["git"]["path"], "pipelines/qc.sh");
    assert_eq!(rec["git"]["tracked"], true);
    assert_eq!(rec["git"]["dirty"], false);
    assert!(rec["host"].as_str().is_some_and(|h| !h.is_empty()), "{rec}");
    assert!(rec["user"].as_str().is_some_and(|u| !u.is_empty()), "{rec}");
    let command: Vec<&str> = rec["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(command.contains(&"--require-clean"), "{command:?}");
    assert!(command.ends_with(&[dir.path().join("samples.csv").to_str().unwrap()]));

    // Edited and loaded again without --require-clean: recorded as dirty,
    // newest first.
    std::fs::write(dir.path().join("pipelines/qc.sh"), "echo changed\n").unwrap();
    load(&table, dir.path(), &[]).ok();
    let text = taskctl_with(&["--table", &table, "show", "--step", "qc"], &[]);
    let text = text.ok().stdout();
    let first = text.find("with uncommitted changes").expect(&text);
    let second = text
        .find(&format!("pipelines/qc.sh at {head}\n"))
        .expect(&text);
    assert!(first < second, "newest load first:\n{text}");
    assert!(text.contains("3 rows"), "{text}");
    assert!(text.contains("0 loaded, 3 existing left alone"), "{text}");
}

#[test]
fn require_clean_refuses_a_changed_or_uncommitted_script_naming_it_and_writes_nothing() {
    let (dir, _) = repo();
    let table = format!("sqlite://{}", dir.path().join("tasks.db").display());
    taskctl_with(&["--table", &table, "init"], &[]).ok();
    let script = dir.path().join("pipelines/qc.sh");
    let nothing_loaded = || {
        let steps = taskctl_with(&["--table", &table, "status", "--json"], &[]);
        assert_eq!(
            steps.ok().json(),
            serde_json::json!([]),
            "nothing may be written"
        );
    };

    std::fs::write(&script, "echo edited\n").unwrap();
    let run = load(&table, dir.path(), &["--require-clean"]);
    let err = run.fails();
    assert_eq!(run.code(), Some(6), "{err}");
    assert!(
        err.contains(&format!(
            "the script {} has uncommitted changes",
            script.display()
        )),
        "{err}"
    );
    nothing_loaded();

    // Nor through a committed link to it, nor with git told to look away.
    std::os::unix::fs::symlink("pipelines/qc.sh", dir.path().join("link.sh")).unwrap();
    git(dir.path(), &["add", "link.sh"]);
    git(dir.path(), &["commit", "-q", "-m", "link"]);
    let run = taskctl_with(
        &[
            "--table",
            &table,
            "load",
            "--step",
            "qc",
            "--script",
            dir.path().join("link.sh").to_str().unwrap(),
            "--require-clean",
            dir.path().join("samples.csv").to_str().unwrap(),
        ],
        &[],
    );
    assert!(run.fails().contains("has uncommitted changes"));
    git(
        dir.path(),
        &["update-index", "--assume-unchanged", "pipelines/qc.sh"],
    );
    let run = load(&table, dir.path(), &["--require-clean"]);
    assert!(run.fails().contains("has uncommitted changes"));
    nothing_loaded();

    let new = dir.path().join("pipelines/new.sh");
    std::fs::write(&new, "true\n").unwrap();
    let sheet = dir.path().join("samples.csv");
    let run = taskctl_with(
        &[
            "--table",
            &table,
            "load",
            "--step",
            "qc",
            "--script",
            new.to_str().unwrap(),
            "--require-clean",
            sheet.to_str().unwrap(),
        ],
        &[],
    );
    let err = run.fails();
    assert!(
        err.contains(&format!("the script {} is not committed", new.display())),
        "{err}"
    );
    nothing_loaded();

    let outside = tempfile::tempdir().unwrap();
    let loose = outside.path().join("loose.sh");
    std::fs::write(&loose, "true\n").unwrap();
    let run = taskctl_with(
        &[
            "--table",
            &table,
            "load",
            "--step",
            "qc",
            "--script",
            loose.to_str().unwrap(),
            "--require-clean",
            sheet.to_str().unwrap(),
        ],
        &[],
    );
    let err = run.fails();
    assert!(err.contains("is not in a git work tree"), "{err}");
    nothing_loaded();
}

#[tokio::test(flavor = "multi_thread")]
async fn show_step_on_dynamodb_prints_the_load_record() {
    let (dir, head) = repo();
    let table = TestTable::new("provenance").await;
    let script = dir.path().join("pipelines/qc.sh");
    let sheet = dir.path().join("samples.csv");
    table
        .taskctl(&[
            "load",
            "--step",
            "qc",
            "--script",
            script.to_str().unwrap(),
            sheet.to_str().unwrap(),
        ])
        .ok();
    let shown = table
        .taskctl(&["show", "--step", "qc", "--json"])
        .ok()
        .json();
    assert_eq!(shown["step"]["step"], "qc");
    assert_eq!(shown["loads"].as_array().map(Vec::len), Some(1), "{shown}");
    assert_eq!(shown["loads"][0]["git"]["commit"], head.as_str());
    assert_eq!(shown["loads"][0]["rows"], 3);
}

#[test]
fn retry_rules_given_at_load_are_stored_on_the_step_and_printed_and_a_bad_one_writes_nothing() {
    let (dir, _) = repo();
    let table = format!("sqlite://{}", dir.path().join("tasks.db").display());
    taskctl_with(&["--table", &table, "init"], &[]).ok();
    let refused = load(&table, dir.path(), &["--retry-on", "exit=137:attempts=0"]).fails();
    assert!(
        refused.contains("attempts takes a number of 1 or more"),
        "{refused}"
    );
    let steps = taskctl_with(&["--table", &table, "status", "--json"], &[]);
    assert_eq!(steps.ok().json(), serde_json::json!([]), "nothing written");

    load(
        &table,
        dir.path(),
        &[
            "--retry-on",
            "exit=137:attempts=2",
            "--escalate-to",
            "qc-large",
            "--fail-on",
            "exit=2",
            "--retry-on",
            "class=lost:free",
        ],
    )
    .ok();
    let text = taskctl_with(&["--table", &table, "show", "--step", "qc"], &[]);
    let text = text.ok().stdout();
    for line in [
        "retry rules:     fail-on exit=2\n",
        "                 retry-on exit=137:attempts=2:escalate-to=qc-large\n",
        "                 retry-on class=lost:free\n",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    // The escalation step exists, with the step's settings and no rules.
    let big = taskctl_with(&["--table", &table, "show", "--step", "qc-large"], &[]);
    let big = big.ok().stdout();
    assert!(big.contains("retry rules:     none"), "{big}");
    // A later load without rules keeps them; --no-retry-rules drops them.
    load(&table, dir.path(), &[]).ok();
    let shown = taskctl_with(&["--table", &table, "show", "--step", "qc", "--json"], &[]);
    assert_eq!(
        shown.ok().json()["step"]["settings"]["rules"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    load(&table, dir.path(), &["--no-retry-rules"]).ok();
    let shown = taskctl_with(&["--table", &table, "show", "--step", "qc", "--json"], &[]);
    assert!(shown.ok().json()["step"]["settings"].get("rules").is_none());
}
