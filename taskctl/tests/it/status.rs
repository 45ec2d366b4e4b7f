use taskfleet::model::{AttemptRecord, FailureClass};
use taskfleet::store::{Candidate, Claim, Fence, Finish, SettingsChange, TaskStore};
use taskfleet::time::Timestamp;
use taskfleet::{Task, TaskState, schema};

use crate::support::{Taskctl, TestTable};

#[tokio::test]
async fn status_sends_as_many_requests_for_10000_tasks_as_for_100() {
    let t = TestTable::new("reqcount").await;
    t.load_generated("small", "true", 100, SettingsChange::default())
        .await;
    t.load_generated("large", "true", 10_000, SettingsChange::default())
        .await;

    t.requests.reset();
    let small = t.store.status(Some("small")).await.unwrap();
    let small_requests = t.requests.get();
    t.requests.reset();
    let large = t.store.status(Some("large")).await.unwrap();
    let large_requests = t.requests.get();

    assert_eq!((small[0].total, small[0].pending), (100, 100));
    assert_eq!((large[0].total, large[0].pending), (10_000, 10_000));
    assert_eq!(
        small_requests, large_requests,
        "status requests must not grow with the number of tasks"
    );
    // One step read, one counter query, one running count per shard.
    assert_eq!(large_requests, 2 + usize::from(schema::DEFAULT_SHARDS));

    t.requests.reset();
    let all = t.store.status(None).await.unwrap();
    assert_eq!(
        all.iter().map(|s| s.step.as_str()).collect::<Vec<_>>(),
        ["large", "small"]
    );
    assert_eq!(
        t.requests.get(),
        1 + 2 * (1 + usize::from(schema::DEFAULT_SHARDS))
    );
}

const OWNER: &str = "i-test/w0";

/// Claims `id` the way a worker does, through the store.
async fn claim(t: &TestTable, step: &str, id: &str) -> Task {
    let meta = t.store.step(step).await.unwrap().unwrap();
    let task = t.store.task(step, id).await.unwrap().unwrap();
    let candidate = Candidate {
        task_id: id.into(),
        state: TaskState::Pending,
        attempt: task.attempt,
        state_at: taskfleet::time::Timestamp::from_millis(0),
    };
    match t
        .store
        .claim(&meta, &candidate, OWNER, Timestamp::now())
        .await
        .unwrap()
    {
        Claim::Claimed(task) => *task,
        other => panic!("claim of {id}: {other:?}"),
    }
}

/// Runs one attempt of `id` through the store as a worker does: a claim,
/// then the fenced finish that leaves it `next` with `exit_code` and
/// `tail`. The counters move with these transitions, not by hand.
async fn attempt(t: &TestTable, step: &str, id: &str, next: TaskState, exit_code: i32, tail: &str) {
    let meta = t.store.step(step).await.unwrap().unwrap();
    let task = claim(t, step, id).await;
    let now = Timestamp::now();
    let failed = exit_code != 0;
    let finish = Finish {
        next,
        counts_as_failure: failed,
        // A retry may be claimed at once.
        ready_at: now,
        record: AttemptRecord {
            attempt: task.attempt,
            owner: OWNER.into(),
            started_at: task.started_at.unwrap_or(now),
            finished_at: now,
            outcome: next,
            exit_code: Some(exit_code),
            signal: None,
            failure_class: failed.then_some(FailureClass::Exit),
            log_uri: None,
            provenance: None,
        },
        output_tail: Some(tail.into()),
        escalate_to: None,
        expires_at: None,
    };
    assert_eq!(
        t.store.finish(&meta, &task, &finish).await.unwrap(),
        Fence::Held,
        "finish of {id}"
    );
}

#[tokio::test]
async fn status_counts_tasks_through_their_transitions_and_lists_failed_ones_newest_first() {
    let t = TestTable::new("failed").await;
    let sheet = t.file("s.csv", "sample\nA\nB\nC\nD\nE\n");
    t.taskctl(&[
        "load",
        "--step",
        "call",
        "--command",
        "exit 3",
        "--max-attempts",
        "2",
        sheet.to_str().unwrap(),
    ])
    .ok();
    // A and C fail twice (a retry, then out of attempts), C last; B is
    // done; D is running; E was never claimed.
    attempt(&t, "call", "A", TaskState::Pending, 3, "reading A\n").await;
    attempt(
        &t,
        "call",
        "A",
        TaskState::Failed,
        3,
        "reading A\nbwa: index missing\n",
    )
    .await;
    attempt(&t, "call", "B", TaskState::Done, 0, "ok\n").await;
    attempt(&t, "call", "C", TaskState::Pending, 137, "killed\n").await;
    // Finish times are in milliseconds: keep C's strictly after A's.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    attempt(&t, "call", "C", TaskState::Failed, 137, "killed\n").await;
    claim(&t, "call", "D").await;

    let status = t.taskctl(&["status", "--step", "call", "--json"]);
    status.ok();
    let s = &status.json()[0];
    let count = |k: &str| s[k].as_u64();
    assert_eq!(
        (
            count("total"),
            count("failed"),
            count("done"),
            count("running"),
            count("pending")
        ),
        (Some(5), Some(2), Some(1), Some(1), Some(1)),
        "{s}"
    );

    let listed = t.taskctl(&["status", "--failed", "--step", "call", "--json"]);
    listed.ok();
    let listed = listed.json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["C", "A"]);
    assert_eq!(listed[1]["exit_code"], 3);
    assert_eq!(listed[1]["failure_class"], "exit");
    assert_eq!(listed[1]["output_tail"], "reading A\nbwa: index missing\n");
    assert_eq!(listed[0]["exit_code"], 137);

    let text = t.taskctl(&["status", "--failed"]);
    text.ok();
    let out = text.stdout();
    assert!(
        out.contains("call/A: exit 3, class exit, 2 attempts"),
        "{out}"
    );
    assert!(out.contains("    | bwa: index missing"), "{out}");
}

#[tokio::test]
async fn status_of_an_empty_table_says_how_to_start() {
    let t = TestTable::new("emptystatus").await;
    let run = t.taskctl(&["status"]);
    run.ok();
    assert!(
        run.stdout().contains("no steps in DynamoDB table"),
        "{}",
        run.stdout()
    );
    let human = TestTable::new("human").await;
    let sheet = human.file("s.csv", "sample\nA\nB\n");
    human
        .taskctl(&[
            "load",
            "--step",
            "qc",
            "--command",
            "true",
            sheet.to_str().unwrap(),
        ])
        .ok();
    let out = human.taskctl(&["status"]).stdout();
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["qc", "2", "0", "2", "0", "0", "0", "0.0%"]);
}
