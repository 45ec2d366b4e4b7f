//! `taskctl prune`: done tasks older than the age asked are written to a
//! JSON Lines file, then removed, with the counters exact afterwards (a
//! recount finds nothing to correct); `--dry-run` changes nothing and
//! writes no file. On both stores, with a real agent finishing the tasks.

use std::fmt::Write as _;
use std::path::Path;

use crate::support::{Run, Taskctl, TestTable, agent_command, embedded, run_agent};

/// The agent on step `qc` of `table` until the step has nothing to run.
fn run_qc_agent(table: &str, endpoint: Option<&str>, dir: &Path) {
    run_agent(agent_command(table, endpoint, dir, "qc"));
}

/// (loaded, done, failed, pending) of `qc`.
fn counts(t: &dyn Fn(&[&str]) -> Run) -> (u64, u64, u64, u64) {
    let s = t(&["status", "--step", "qc", "--json"]).ok().json();
    let n = |k: &str| s[0][k].as_u64().unwrap();
    (n("total"), n("done"), n("failed"), n("pending"))
}

fn prune_exports_then_removes_and_the_counts_stay_exact(
    t: &dyn Fn(&[&str]) -> Run,
    agent: &dyn Fn(),
    dir: &Path,
) {
    // 8 done, 2 failed, then 3 more loaded and never run.
    let sheet = dir.join("s.csv");
    let mut rows = "sample\n".to_owned();
    for i in 0..10 {
        writeln!(rows, "S{i:02}").unwrap();
    }
    std::fs::write(&sheet, rows).unwrap();
    let script = r#"case "$SAMPLE" in S03|S07) exit 4 ;; esac; echo "$SAMPLE""#;
    let load = |sheet: &Path| {
        t(&[
            "load",
            "--step",
            "qc",
            "--max-attempts",
            "1",
            "--command",
            script,
            sheet.to_str().unwrap(),
        ])
        .ok();
    };
    load(&sheet);
    agent();
    let later = dir.join("later.csv");
    std::fs::write(&later, "sample\nL1\nL2\nL3\n").unwrap();
    load(&later);
    assert_eq!(counts(t), (13, 8, 2, 3));

    let export = dir.join("pruned.jsonl");
    let export_arg = export.to_str().unwrap();
    // Younger than the age asked: nothing to prune.
    let young = t(&["prune", "--step", "qc", "--done-older-than", "1h", "--json"]);
    assert_eq!(young.ok().json()["found"], 0);
    let dry = t(&[
        "prune",
        "--step",
        "qc",
        "--done-older-than",
        "0s",
        "--export",
        export_arg,
        "--dry-run",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(
        (dry["found"].as_u64(), dry["removed"].as_u64()),
        (Some(8), Some(0))
    );
    assert_eq!(counts(t), (13, 8, 2, 3), "--dry-run changes nothing");
    assert!(!export.exists(), "--dry-run writes no file");

    let done = t(&[
        "prune",
        "--step",
        "qc",
        "--done-older-than",
        "0s",
        "--export",
        export_arg,
    ])
    .ok()
    .stdout();
    assert!(done.contains("pruned 8 done task(s)"), "{done}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["task_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["S00", "S01", "S02", "S04", "S05", "S06", "S08", "S09"]
    );
    assert!(
        lines
            .iter()
            .all(|l| l["state"] == "done" && l["env"]["SAMPLE"].is_string())
    );
    assert_eq!(counts(t), (5, 0, 2, 3));
    let gone = t(&["show", "qc", "S00"]);
    assert_ne!(gone.code(), Some(0), "a pruned task is gone");
    let recount = t(&["recount", "--step", "qc"]).ok().stdout();
    assert!(recount.contains("agree with the tasks"), "{recount}");
    // Again: nothing left to prune; the failed and pending stay.
    let again = t(&["prune", "--step", "qc", "--done-older-than", "0s", "--json"]);
    assert_eq!(again.ok().json()["found"], 0);
    assert_eq!(counts(t), (5, 0, 2, 3));
}

#[test]
fn prune_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let (table, t) = embedded(dir.path());
    t(&["init"]).ok();
    prune_exports_then_removes_and_the_counts_stay_exact(
        &t,
        &|| run_qc_agent(&table, None, dir.path()),
        dir.path(),
    );
}

#[tokio::test]
async fn prune_on_dynamodb() {
    let table = TestTable::new("prune").await;
    let dir = tempfile::tempdir().unwrap();
    prune_exports_then_removes_and_the_counts_stay_exact(
        &|args| table.taskctl(args),
        &|| run_qc_agent(&table.name, Some(&table.endpoint), dir.path()),
        dir.path(),
    );
}

/// How long `expire_after_*` keeps done tasks: enough for the agent's run
/// and the checks made before they expire.
const KEEP_SECS: u64 = 10;

fn done_tasks_expire_with_exact_counts(t: &dyn Fn(&[&str]) -> Run, agent: &dyn Fn(), dir: &Path) {
    let sheet = dir.join("s.csv");
    std::fs::write(&sheet, "sample\nS00\nS01\nS02\nS03\n").unwrap();
    let keep = format!("{KEEP_SECS}s");
    t(&[
        "load",
        "--step",
        "qc",
        "--max-attempts",
        "1",
        "--expire-after",
        &keep,
        "--command",
        r#"[ "$SAMPLE" != S03 ]"#,
        sheet.to_str().unwrap(),
    ])
    .ok();
    let settings = t(&["show", "--step", "qc"]).ok().stdout();
    assert!(
        settings.contains(&format!("expire after:    {keep} (done tasks)")),
        "{settings}"
    );
    let started = std::time::Instant::now();
    agent();
    assert_eq!(counts(t), (4, 3, 1, 0));
    let shown = t(&["show", "qc", "S00"]).ok().stdout();
    assert!(shown.contains("expires:"), "{shown}");
    assert!(
        started.elapsed().as_secs() < KEEP_SECS,
        "the agent's run took longer than the tasks are kept; KEEP_SECS is too short here"
    );
    // Every task expires at most a slot (1 s here) after KEEP.
    std::thread::sleep(std::time::Duration::from_millis(KEEP_SECS * 1000 + 1500));
    assert_eq!(
        counts(t),
        (1, 0, 1, 0),
        "the done tasks are gone, the failed one stays"
    );
    let gone = t(&["show", "qc", "S00"]);
    assert_ne!(gone.code(), Some(0), "an expired task is gone");
    let export = t(&["export", "--step", "qc", "--format", "jsonl"])
        .ok()
        .stdout();
    let ids: Vec<String> = export
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["task_id"].to_string())
        .collect();
    assert_eq!(ids, ["\"S03\""]);
    t(&["recount", "--step", "qc"]).ok();
    assert_eq!(counts(t), (1, 0, 1, 0), "a recount agrees");
}

#[test]
fn expire_after_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let (table, t) = embedded(dir.path());
    t(&["init"]).ok();
    done_tasks_expire_with_exact_counts(&t, &|| run_qc_agent(&table, None, dir.path()), dir.path());
}

#[tokio::test]
async fn expire_after_on_dynamodb() {
    let table = TestTable::new("expire").await;
    let dir = tempfile::tempdir().unwrap();
    done_tasks_expire_with_exact_counts(
        &|args| table.taskctl(args),
        &|| run_qc_agent(&table.name, Some(&table.endpoint), dir.path()),
        dir.path(),
    );
}
