//! `taskctl retry`: failed tasks back to pending by class, exit code or
//! id, `--dry-run` changing nothing, on the embedded store with real
//! agents.

use crate::support::{agent_command, embedded, run_agent};

fn run_call_agent(table: &str, dir: &std::path::Path) {
    run_agent(agent_command(table, None, dir, "call"));
}

#[test]
fn retry_puts_back_the_failed_tasks_asked_for_and_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (table, t) = embedded(dir.path());
    let sheet = dir.path().join("s.csv");
    std::fs::write(&sheet, "sample,code\nA,0\nB,2\nC,137\nD,137\n").unwrap();
    t(&["init"]).ok();
    // The first attempt exits with the row's code; a retried one succeeds.
    t(&[
        "load",
        "--step",
        "call",
        "--max-attempts",
        "1",
        "--command",
        "if [ \"$ATTEMPT\" = 1 ]; then exit \"$CODE\"; fi",
        sheet.to_str().unwrap(),
    ])
    .ok();
    run_call_agent(&table, dir.path());
    let counts = |t: &dyn Fn(&[&str]) -> crate::support::Run| {
        let s = t(&["status", "--step", "call", "--json"]).ok().json();
        (
            s[0]["done"].as_u64().unwrap(),
            s[0]["failed"].as_u64().unwrap(),
            s[0]["pending"].as_u64().unwrap(),
        )
    };
    assert_eq!(counts(&t), (1, 3, 0));

    let dry = t(&[
        "retry",
        "--step",
        "call",
        "--exit",
        "137",
        "--dry-run",
        "--json",
    ])
    .ok()
    .json();
    let mut ids: Vec<&str> = dry["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["task_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["C", "D"]);
    assert_eq!(counts(&t), (1, 3, 0), "--dry-run changes nothing");

    let out = t(&["retry", "--step", "call", "--exit", "137"])
        .ok()
        .stdout();
    assert!(
        out.starts_with("retried 2 failed tasks of step 'call'"),
        "{out}"
    );
    assert_eq!(counts(&t), (1, 1, 2));
    let c = t(&["show", "call", "C", "--json"]).ok().json();
    assert_eq!(c["state"], "pending");
    assert_eq!(c["attempt"], 1);
    assert!(
        c["retried_by"].as_str().is_some_and(|b| b.contains('@')),
        "{c}"
    );

    // By id; a task that is not failed is named and left alone.
    let out = t(&["retry", "--step", "call", "--task", "B", "--task", "A"])
        .ok()
        .stdout();
    assert!(
        out.contains("retried 1 failed task of step 'call'"),
        "{out}"
    );
    assert!(out.contains("A: left alone, it is done"), "{out}");
    assert_eq!(counts(&t), (1, 0, 3));

    run_call_agent(&table, dir.path());
    assert_eq!(
        counts(&t),
        (4, 0, 0),
        "the retried tasks ran again and succeeded"
    );
    let d = t(&["show", "call", "D", "--json"]).ok().json();
    assert_eq!(d["attempt"], 2, "attempt numbers go on");

    let err = t(&["retry", "--step", "nope"]).fails();
    assert!(err.contains("there is no step 'nope'"), "{err}");
    let err = t(&["retry", "--step", "call", "--class", "oom"]).fails();
    assert!(err.contains("'oom' is not a failure class"), "{err}");
}
