use aws_sdk_dynamodb::types::AttributeValue;
use taskfleet::model::FailureClass;
use taskfleet::store::{SettingsChange, TaskStore};
use taskfleet::time::Timestamp;
use taskfleet::{TaskState, schema};

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

/// Leaves `id` failed the way a worker does: the task and its shard's
/// counter in one transaction.
async fn fail_task(t: &TestTable, step: &str, id: &str, exit_code: i32, tail: &str, at: i64) {
    let meta = t.store.step(step).await.unwrap().unwrap();
    let mut task = t.store.task(step, id).await.unwrap().unwrap();
    task.state = TaskState::Failed;
    task.attempt = 2;
    task.failed_attempts = 2;
    task.exit_code = Some(exit_code);
    task.failure_class = Some(FailureClass::Exit);
    task.output_tail = Some(tail.into());
    task.finished_at = Some(Timestamp::from_millis(at));
    let shard = schema::shard_of(id, meta.shards);
    let client = t.store.client();
    client
        .put_item()
        .table_name(&t.name)
        .set_item(Some(taskfleet::store::dynamo::task_item(&meta, &task)))
        .send()
        .await
        .unwrap();
    client
        .update_item()
        .table_name(&t.name)
        .key("pk", AttributeValue::S(schema::counts_pk(step)))
        .key("sk", AttributeValue::S(schema::shard_sk(shard)))
        .update_expression("ADD failed :one")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn status_failed_lists_failed_tasks_newest_first_with_exit_code_and_output_tail() {
    let t = TestTable::new("failed").await;
    let sheet = t.file("s.csv", "sample\nA\nB\nC\n");
    t.taskctl(&[
        "load",
        "--step",
        "call",
        "--command",
        "exit 3",
        sheet.to_str().unwrap(),
    ])
    .ok();
    fail_task(&t, "call", "A", 3, "reading A\nbwa: index missing\n", 1_000).await;
    fail_task(&t, "call", "C", 137, "killed\n", 2_000).await;

    let status = t.taskctl(&["status", "--step", "call", "--json"]);
    status.ok();
    let s = &status.json()[0];
    assert_eq!(
        (s["failed"].as_u64(), s["pending"].as_u64()),
        (Some(2), Some(1))
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
