//! `taskctl where` and `taskctl export`: reads by key and by partition,
//! whose cost does not grow with the table.

use std::collections::BTreeSet;

use taskfleet::store::{SettingsChange, TaskStore};

use crate::support::{Taskctl, TestTable, taskctl_with};

#[tokio::test(flavor = "multi_thread")]
async fn where_costs_the_same_requests_at_1000_and_100000_tasks() {
    let small = TestTable::new("wheresmall").await;
    small
        .load_generated("align", "true", 1_000, SettingsChange::default())
        .await;
    small
        .load_generated("call", "true", 1_000, SettingsChange::default())
        .await;
    let large = TestTable::new("wherelarge").await;
    large
        .load_generated("align", "true", 100_000, SettingsChange::default())
        .await;
    large
        .load_generated("call", "true", 1_000, SettingsChange::default())
        .await;

    let mut counts = Vec::new();
    for t in [&small, &large] {
        t.requests.reset();
        let found = t.store.find("S0000007").await.unwrap();
        counts.push(t.requests.get());
        let steps: Vec<&str> = found.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(steps, ["align", "call"]);
        assert!(
            found
                .iter()
                .all(|s| s.task_id == "S0000007" && s.attempt == 0)
        );
        // An id past the small steps is only in the large one.
        t.requests.reset();
        let only = t.store.find("S0050000").await.unwrap();
        assert_eq!(only.len(), usize::from(t.name == large.name));
        assert_eq!(t.requests.get(), counts[counts.len() - 1]);
    }
    assert_eq!(
        counts[0], counts[1],
        "where must not cost more as the table grows"
    );
    // The step list, then one batch read of the keys.
    assert_eq!(counts[0], 2);

    let text = large.taskctl(&["where", "S0000007"]).ok().stdout();
    assert!(text.contains("align"), "{text}");
    assert!(text.contains("pending"), "{text}");
    let err = large.taskctl(&["where", "nobody"]).fails();
    assert!(err.contains("no step of"), "{err}");
}

/// Every task of a step exported, once each, as TSV and JSON Lines, from
/// `run`'s store.
fn check_export(run: &dyn Fn(&[&str]) -> crate::support::Run, n: usize, dir: &std::path::Path) {
    let tsv = run(&["export", "--step", "qc"]).ok().stdout();
    let mut lines = tsv.lines();
    assert_eq!(
        lines.next(),
        Some("task_id\tstate\tattempts\texit_code\tfailure_class\tduration_s\tlog_uri")
    );
    let ids: BTreeSet<String> = lines
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), n, "each task once");
    assert_eq!(tsv.lines().count(), n + 1);
    let file = dir.join("qc.jsonl");
    run(&[
        "export",
        "--step",
        "qc",
        "--format",
        "jsonl",
        "--output",
        file.to_str().unwrap(),
    ])
    .ok();
    let text = std::fs::read_to_string(&file).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), n);
    let done: Vec<&serde_json::Value> = rows.iter().filter(|r| r["state"] == "done").collect();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["task_id"], "S0000001");
    assert!(done[0]["duration_s"].as_f64().is_some(), "{}", done[0]);
    let err = run(&["export", "--step", "nope"]).fails();
    assert!(err.contains("there is no step 'nope'"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn export_writes_every_task_of_a_step_once_on_both_stores() {
    use taskfleet::model::{AttemptRecord, TaskState};
    use taskfleet::store::{Candidate, Claim, Finish};
    use taskfleet::time::Timestamp;
    const N: usize = 2_500;
    // DynamoDB: pages of 1,000 over 16 shards.
    let t = TestTable::new("export").await;
    t.load_generated("qc", "true", N, SettingsChange::default())
        .await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let candidate = Candidate {
        task_id: "S0000001".into(),
        state: TaskState::Pending,
        attempt: 0,
        state_at: taskfleet::time::Timestamp::from_millis(0),
    };
    let Claim::Claimed(task) = t
        .store
        .claim(&meta, &candidate, "i-1/w0", Timestamp::now())
        .await
        .unwrap()
    else {
        panic!("claim")
    };
    let finish = |started: Timestamp| Finish {
        next: TaskState::Done,
        counts_as_failure: false,
        ready_at: Timestamp::now(),
        record: AttemptRecord {
            attempt: 1,
            owner: "i-1/w0".into(),
            started_at: started,
            finished_at: Timestamp::now(),
            outcome: TaskState::Done,
            exit_code: Some(0),
            signal: None,
            failure_class: None,
            log_uri: Some("s3://b/k".into()),
            provenance: None,
        },
        output_tail: None,
        escalate_to: None,
        expires_at: None,
    };
    t.store
        .finish(&meta, &task, &finish(task.started_at.unwrap()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    check_export(&|args| t.taskctl(args), N, dir.path());

    // The embedded store, through the binary alone.
    let table = format!("sqlite://{}", dir.path().join("tasks.db").display());
    let sheet = dir.path().join("qc.csv");
    std::fs::write(&sheet, testkit::generated_sheet(N)).unwrap();
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
        "true",
        sheet.to_str().unwrap(),
    ])
    .ok();
    let store = taskfleet::store::sqlite::SqliteStore::open(&dir.path().join("tasks.db")).unwrap();
    let meta = store.step("qc").await.unwrap().unwrap();
    let Claim::Claimed(task) = store
        .claim(&meta, &candidate, "h/w0", Timestamp::now())
        .await
        .unwrap()
    else {
        panic!("claim")
    };
    store
        .finish(&meta, &task, &finish(task.started_at.unwrap()))
        .await
        .unwrap();
    check_export(&run, N, dir.path());
}
