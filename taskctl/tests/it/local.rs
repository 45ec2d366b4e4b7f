//! Local workers on the embedded store: launch, fleet, stop.

use std::time::{Duration, Instant};

use crate::support::taskctl_with;

#[test]
fn launched_local_workers_show_in_the_fleet_and_stop_releases_their_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state/tasks.db");
    let table = format!("sqlite://{}", db.display());
    let sheet = dir.path().join("s.csv");
    std::fs::write(&sheet, "sample\nA\nB\nC\n").unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--table", table.as_str()];
        all.extend_from_slice(args);
        taskctl_with(&all, &[])
    };
    run(&["init"]).ok();
    run(&[
        "load",
        "--step",
        "qc",
        "--command",
        "sleep 60",
        sheet.to_str().unwrap(),
    ])
    .ok();
    let launched = run(&[
        "launch", "--local", "--step", "qc", "--count", "2", "--grace", "1s",
    ]);
    launched.ok();
    assert!(
        launched
            .stdout()
            .contains("started 2 local workers for step 'qc'"),
        "{}",
        launched.stdout()
    );

    // Both workers pick up a task.
    let start = Instant::now();
    let rows = loop {
        let fleet = run(&["fleet", "--json"]);
        fleet.ok();
        let rows = fleet.json().as_array().unwrap().clone();
        let busy = rows
            .iter()
            .filter(|r| r["tasks"].as_array().is_some_and(|t| t.len() == 1))
            .count();
        if busy == 2 {
            break rows;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "workers did not start tasks: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        rows.iter()
            .all(|r| r["state"] == "running" && r["step"] == "qc"),
        "{rows:?}"
    );
    let human = run(&["fleet"]).stdout();
    assert!(
        human.lines().count() == 3 && human.contains("running"),
        "{human}"
    );

    // Stop: the tasks outlast the 1 s grace, so they are released.
    let stopped = run(&["stop", "--step", "qc"]);
    stopped.ok();
    assert!(
        stopped
            .stdout()
            .contains("all local workers of step 'qc' have stopped"),
        "{}",
        stopped.stdout()
    );
    let status = run(&["status", "--json"]);
    let s = &status.json()[0];
    assert_eq!(
        (s["pending"].as_u64(), s["running"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );
    let after = run(&["fleet"]).stdout();
    assert!(after.contains("no local workers"), "{after}");
    assert!(db.parent().unwrap().join("workers").is_dir());
}

#[test]
fn local_workers_give_their_scripts_the_variables_passed_through_and_not_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("sqlite://{}", dir.path().join("state/tasks.db").display());
    let out = dir.path().join("seen.txt");
    let sheet = dir.path().join("s.csv");
    std::fs::write(&sheet, format!("sample,out\nA,{}\n", out.display())).unwrap();
    let env = [("RESULTS", "/data/results")];
    let run = |args: &[&str]| {
        let mut all = vec!["--table", table.as_str()];
        all.extend_from_slice(args);
        taskctl_with(&all, &env)
    };
    run(&["init"]).ok();
    let script = r#"printf '%s|%s' "${RESULTS-unset}" "${AWS_SECRET_ACCESS_KEY-unset}" > "$OUT""#;
    run(&[
        "load",
        "--step",
        "qc",
        "--command",
        script,
        sheet.to_str().unwrap(),
    ])
    .ok();
    run(&[
        "launch",
        "--local",
        "--step",
        "qc",
        "--idle-timeout",
        "1s",
        "--pass-env",
        "RESULTS",
    ])
    .ok();
    let start = Instant::now();
    loop {
        let status = run(&["status", "--json"]);
        if status.json()[0]["done"].as_u64() == Some(1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the task did not finish: {}",
            status.stdout()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "/data/results|unset"
    );

    // A name taskctl does not have is refused before any worker starts.
    let err = run(&["launch", "--local", "--step", "qc", "--pass-env", "NOPE"]).fails();
    assert!(err.contains("--pass-env NOPE: NOPE is not set"), "{err}");
}
