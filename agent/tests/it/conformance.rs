//! The store contract, written once and run against both stores: DynamoDB
//! (Local) and the embedded SQLite file.

use std::time::Duration;

use taskfleet::model::{AttemptRecord, FailureClass, TaskState};
use taskfleet::store::{Candidate, Claim, Fence, Finish, Order, SettingsChange, Store, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{TestStore, generated_sheet, load_text};

per_store!(
    loading_twice_adds_nothing,
    failures_are_retried_after_a_delay_then_fail,
    concurrent_loads_never_reset_a_task_and_count_it_once,
    replace_keeps_the_attempt_number_and_history,
    a_retry_records_its_ready_time,
    a_finish_too_large_for_an_item_is_trimmed_not_refused,
    recount_makes_the_counters_what_the_tasks_say,
    a_retry_puts_a_failed_task_back_with_a_fresh_budget_once,
);

mod cancel;
mod deps;
mod expiry;
mod lease;
mod loads;
mod shards;

/// align's settings in the escalation cases: an exit 137 moves the run to
/// align-large.
fn escalating() -> SettingsChange {
    SettingsChange {
        rules: Some(vec![
            taskfleet::rules::parse("exit=137:escalate-to=align-large", false).unwrap(),
        ]),
        ..settings(3, 60)
    }
}

/// Escalates `id` of align, as its worker does after an exit 137.
async fn escalated(t: &TestStore, id: &str) {
    let meta = t.store.step("align").await.unwrap().unwrap();
    let held = claimed(&t.store, "align", id, "a/w").await;
    let mut end = finish(
        held.attempt,
        TaskState::Waiting,
        Some(FailureClass::Exit),
        Timestamp::now(),
    );
    end.record.exit_code = Some(137);
    end.escalate_to = Some("align-large".into());
    assert_eq!(
        t.store.finish(&meta, &held, &end).await.unwrap(),
        Fence::Held
    );
    let task = t.store.task("align", id).await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.waiting_on.clone()),
        (TaskState::Waiting, vec!["align-large".to_owned()])
    );
}

/// Where candidate queries read from, unless a case says otherwise.
const OLDEST: Order = Order::OldestFirst;

pub(crate) fn settings(max_attempts: u32, lease_secs: u64) -> SettingsChange {
    SettingsChange {
        max_attempts: Some(max_attempts),
        lease: Some(Duration::from_secs(lease_secs)),
        ..SettingsChange::default()
    }
}

fn pending(id: &str) -> Candidate {
    Candidate {
        task_id: id.into(),
        state: TaskState::Pending,
        attempt: 0,
        state_at: taskfleet::time::Timestamp::from_millis(0),
    }
}

pub(crate) fn finish(
    attempt: u32,
    next: TaskState,
    class: Option<FailureClass>,
    ready_at: Timestamp,
) -> Finish {
    let now = Timestamp::now();
    Finish {
        next,
        counts_as_failure: !matches!(class, None | Some(FailureClass::Interrupted)),
        ready_at,
        record: AttemptRecord {
            attempt,
            owner: "w".into(),
            started_at: now,
            finished_at: now,
            outcome: next,
            exit_code: class.map(|_| 1).or(Some(0)),
            signal: None,
            failure_class: class,
            log_uri: None,
            provenance: None,
        },
        output_tail: Some(format!("attempt {attempt}")),
        escalate_to: None,
        expires_at: None,
    }
}

pub(crate) async fn claimed(store: &Store, step: &str, id: &str, owner: &str) -> taskfleet::Task {
    let meta = store.step(step).await.unwrap().unwrap();
    match store
        .claim(&meta, &pending(id), owner, Timestamp::now())
        .await
        .unwrap()
    {
        Claim::Claimed(t) => *t,
        other => panic!("claim of {id} by {owner}: {other:?}"),
    }
}

async fn counts(store: &Store, step: &str) -> (u64, u64, u64, u64, u64) {
    let s = &store.status(Some(step)).await.unwrap()[0];
    (s.total, s.pending, s.running, s.done, s.failed)
}

async fn loading_twice_adds_nothing(t: TestStore) {
    let first = load_text(
        &t.store,
        "qc",
        "true",
        &generated_sheet(60),
        SettingsChange::default(),
    )
    .await;
    assert_eq!((first.loaded, first.skipped_existing), (60, 0));
    let again = load_text(
        &t.store,
        "qc",
        "true",
        &generated_sheet(60),
        SettingsChange::default(),
    )
    .await;
    assert_eq!((again.loaded, again.skipped_existing), (0, 60));
    let more = load_text(
        &t.store,
        "qc",
        "true",
        &generated_sheet(70),
        SettingsChange::default(),
    )
    .await;
    assert_eq!((more.loaded, more.skipped_existing), (10, 60));
    assert_eq!(counts(&t.store, "qc").await, (70, 70, 0, 0, 0));
}

async fn failures_are_retried_after_a_delay_then_fail(t: TestStore) {
    load_text(&t.store, "qc", "true", &generated_sheet(1), settings(2, 60)).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let first = claimed(&t.store, "qc", "S0000000", "a/w").await;
    let ready_at = Timestamp::now().plus(Duration::from_secs(2));
    let retry = finish(1, TaskState::Pending, Some(FailureClass::Exit), ready_at);
    assert_eq!(
        t.store.finish(&meta, &first, &retry).await.unwrap(),
        Fence::Held
    );
    // Not claimable before its ready time.
    let mut early = Vec::new();
    for shard in 0..meta.shards {
        early.extend(
            t.store
                .candidates(
                    &meta,
                    shard,
                    TaskState::Pending,
                    Timestamp::now(),
                    10,
                    OLDEST,
                )
                .await
                .unwrap(),
        );
    }
    assert!(early.is_empty(), "claimable too early: {early:?}");
    assert_eq!(
        t.store
            .claim(&meta, &pending("S0000000"), "b/w", Timestamp::now())
            .await
            .unwrap(),
        Claim::Lost
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = claimed(&t.store, "qc", "S0000000", "b/w").await;
    assert_eq!((second.attempt, second.failed_attempts), (2, 1));
    let fail = finish(
        2,
        TaskState::Failed,
        Some(FailureClass::Exit),
        Timestamp::now(),
    );
    assert_eq!(
        t.store.finish(&meta, &second, &fail).await.unwrap(),
        Fence::Held
    );
    let task = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.failed_attempts, task.history.len()),
        (TaskState::Failed, 2, 2)
    );
    let failed = t.store.failed(Some("qc"), 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].exit_code, failed[0].output_tail.as_deref()),
        (Some(1), Some("attempt 2"))
    );
    assert_eq!(counts(&t.store, "qc").await, (1, 0, 0, 0, 1));
}

async fn concurrent_loads_never_reset_a_task_and_count_it_once(t: TestStore) {
    // The step exists first, so both loads race on tasks, not on the step.
    load_text(
        &t.store,
        "qc",
        "true",
        &generated_sheet(1),
        SettingsChange::default(),
    )
    .await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let claimed_early = claimed(&t.store, "qc", "S0000000", "a/w").await;
    let other = t.other_handle();
    let sheet = generated_sheet(600);
    let claimer = async {
        // Claims tasks while the loads run: a reset would put them back to
        // pending with attempt 0.
        let mut got = Vec::new();
        for i in (0..600).step_by(7) {
            if let Ok(Claim::Claimed(task)) = t
                .store
                .claim(
                    &meta,
                    &pending(&format!("S{i:07}")),
                    "c/w",
                    Timestamp::now(),
                )
                .await
            {
                got.push(task.task_id.clone());
            }
            tokio::task::yield_now().await;
        }
        got
    };
    let (a, b, got) = tokio::join!(
        load_text(&t.store, "qc", "true", &sheet, SettingsChange::default()),
        load_text(&other, "qc", "true", &sheet, SettingsChange::default()),
        claimer
    );
    assert_eq!(a.loaded + b.loaded, 599, "{a:?} / {b:?}");
    assert_eq!(a.skipped_existing + b.skipped_existing, 601);
    let again = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        (again.state, again.attempt, again.owner.as_deref()),
        (TaskState::Running, claimed_early.attempt, Some("a/w"))
    );
    for id in &got {
        let task = t.store.task("qc", id).await.unwrap().unwrap();
        assert_eq!(
            (task.state, task.attempt),
            (TaskState::Running, 1),
            "{id} was reset"
        );
    }
    let running = 1 + got.len() as u64;
    assert_eq!(
        counts(&t.store, "qc").await,
        (600, 600 - running, running, 0, 0)
    );
}

async fn replace_keeps_the_attempt_number_and_history(t: TestStore) {
    load_text(&t.store, "qc", "v1", &generated_sheet(1), settings(1, 60)).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let first = claimed(&t.store, "qc", "S0000000", "a/w").await;
    let fail = finish(
        1,
        TaskState::Failed,
        Some(FailureClass::Exit),
        Timestamp::now(),
    );
    assert_eq!(
        t.store.finish(&meta, &first, &fail).await.unwrap(),
        Fence::Held
    );
    let request = taskfleet::load::LoadRequest {
        step: "qc".into(),
        script: "v2".into(),
        settings: SettingsChange::default(),
        replace: true,
        concurrency: 2,
    };
    let sheet = taskfleet::sheet::Sheet::parse(
        std::path::Path::new("s.csv"),
        generated_sheet(1).as_bytes(),
        &taskfleet::sheet::SheetOptions::default(),
    )
    .unwrap();
    let prepared = taskfleet::load::prepare(request, sheet).unwrap();
    let report = taskfleet::load::load(&t.store, &prepared, &|_| {})
        .await
        .unwrap();
    assert_eq!(report.replaced, 1);
    let task = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        (
            task.state,
            task.attempt,
            task.failed_attempts,
            task.history.len(),
            task.script.as_str()
        ),
        (TaskState::Pending, 1, 0, 1, "v2")
    );
    assert_eq!(counts(&t.store, "qc").await, (1, 1, 0, 0, 0));
    // The next run is attempt 2: a new log and work directory, a new fence.
    let second = claimed(&t.store, "qc", "S0000000", "b/w").await;
    assert_eq!(second.attempt, 2);
    assert_eq!(
        t.store
            .heartbeat(&meta, &first, Timestamp::now())
            .await
            .unwrap(),
        Fence::Lost
    );
}

async fn a_retry_records_its_ready_time(t: TestStore) {
    load_text(&t.store, "qc", "true", &generated_sheet(1), settings(3, 60)).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let first = claimed(&t.store, "qc", "S0000000", "a/w").await;
    let ready_at = Timestamp::now().plus(Duration::from_secs(30));
    let retry = finish(1, TaskState::Pending, Some(FailureClass::Exit), ready_at);
    assert_eq!(
        t.store.finish(&meta, &first, &retry).await.unwrap(),
        Fence::Held
    );
    let task = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(task.ready_at, Some(ready_at));
    assert!(
        task.updated_at <= Timestamp::now(),
        "updated_at is a write time, not the ready time"
    );
}

async fn a_finish_too_large_for_an_item_is_trimmed_not_refused(t: TestStore) {
    // 300 KB of row, in values each small enough for the kernel.
    let big = "x".repeat(100 * 1024);
    load_text(
        &t.store,
        "qc",
        "true",
        &format!("sample,p1,p2,p3\nA,{big},{big},{big}\n"),
        settings(3, 60),
    )
    .await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let first = claimed(&t.store, "qc", "A", "a/w").await;
    let mut done = finish(1, TaskState::Done, None, Timestamp::now());
    done.output_tail = Some(format!("{}end", "y".repeat(120 * 1024)));
    assert_eq!(
        t.store.finish(&meta, &first, &done).await.unwrap(),
        Fence::Held
    );
    let task = t.store.task("qc", "A").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Done);
    assert!(task.output_tail.unwrap().ends_with("end"));
    assert_eq!(counts(&t.store, "qc").await, (1, 0, 0, 1, 0));
}

async fn recount_makes_the_counters_what_the_tasks_say(t: TestStore) {
    load_text(
        &t.store,
        "qc",
        "true",
        &generated_sheet(40),
        settings(3, 60),
    )
    .await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let first = claimed(&t.store, "qc", "S0000003", "a/w").await;
    let done = finish(1, TaskState::Done, None, Timestamp::now());
    assert_eq!(
        t.store.finish(&meta, &first, &done).await.unwrap(),
        Fence::Held
    );
    assert_eq!(
        t.store.recount(&meta, true).await.unwrap(),
        vec![],
        "nothing to correct"
    );
    if let Store::Dynamo(d) = &t.store {
        // A counter that drifted (as an interrupted older loader left it).
        let shard = taskfleet::schema::shard_of("S0000003", meta.shards);
        d.client()
            .update_item()
            .table_name(d.table())
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(taskfleet::schema::counts_pk("qc")),
            )
            .key(
                "sk",
                aws_sdk_dynamodb::types::AttributeValue::S(taskfleet::schema::shard_sk(shard)),
            )
            .update_expression("ADD loaded :a, done :b")
            .expression_attribute_values(
                ":a",
                aws_sdk_dynamodb::types::AttributeValue::N("-2".into()),
            )
            .expression_attribute_values(
                ":b",
                aws_sdk_dynamodb::types::AttributeValue::N("3".into()),
            )
            .send()
            .await
            .unwrap();
        assert_ne!(counts(&t.store, "qc").await, (40, 39, 0, 1, 0));
        let found = t.store.recount(&meta, false).await.unwrap();
        assert_eq!(found.len(), 2, "a dry run finds both: {found:?}");
        let mut fixed = t.store.recount(&meta, true).await.unwrap();
        fixed.sort_by(|a, b| a.counter.cmp(&b.counter));
        let fixed: Vec<_> = fixed
            .iter()
            .map(|c| (c.shard, c.counter.as_str(), c.was - c.now))
            .collect();
        assert_eq!(fixed, [(shard, "done", 3), (shard, "loaded", -2)]);
    }
    assert_eq!(counts(&t.store, "qc").await, (40, 39, 0, 1, 0));
}

async fn a_retry_puts_a_failed_task_back_with_a_fresh_budget_once(t: TestStore) {
    load_text(&t.store, "qc", "true", &generated_sheet(2), settings(1, 60)).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let first = claimed(&t.store, "qc", "S0000000", "a/w").await;
    let failed = finish(
        1,
        TaskState::Failed,
        Some(FailureClass::Exit),
        Timestamp::now(),
    );
    assert_eq!(
        t.store.finish(&meta, &first, &failed).await.unwrap(),
        Fence::Held
    );
    assert_eq!(t.store.status(Some("qc")).await.unwrap()[0].failed, 1);

    // A retry of another attempt than the stored one changes nothing.
    assert_eq!(
        t.store
            .retry(&meta, "S0000000", 2, "ana@login")
            .await
            .unwrap(),
        taskfleet::store::ReplaceOutcome::Changed
    );
    assert_eq!(
        t.store
            .retry(&meta, "S0000000", 1, "ana@login")
            .await
            .unwrap(),
        taskfleet::store::ReplaceOutcome::Replaced
    );
    let task = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Pending);
    assert_eq!(task.attempt, 1, "the attempt number stays");
    assert_eq!(task.failed_attempts, 0, "a fresh attempt budget");
    assert_eq!(task.retried_by.as_deref(), Some("ana@login"));
    assert_eq!(
        task.history.len(),
        1,
        "the failed attempt stays in the history"
    );
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!((s.failed, s.pending, s.total), (0, 2, 2), "{s:?}");
    // Only once: it is no longer failed.
    assert_eq!(
        t.store
            .retry(&meta, "S0000000", 1, "ana@login")
            .await
            .unwrap(),
        taskfleet::store::ReplaceOutcome::Changed
    );
    // And it runs again, as attempt 2.
    let again = claimed(&t.store, "qc", "S0000000", "b/w").await;
    assert_eq!(again.attempt, 2);
}
