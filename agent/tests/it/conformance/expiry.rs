//! Done tasks of a step loaded `--expire-after`: when they expire they
//! leave the counts and every read at once, whether or not the table's TTL
//! has deleted them yet; a task pruned or replaced before it expires takes
//! its expiry with it; recount and delete-step agree with the counts.

use std::time::Duration;

use taskfleet::model::{StepMeta, TaskState};
use taskfleet::store::ReplaceOutcome::Replaced;
use taskfleet::store::{SettingsChange, Store, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{TestStore, generated_sheet, load_text};

use super::{claimed, counts, escalated, escalating, finish, settings};

per_store!(
    expired_tasks_leave_the_counts_whether_or_not_the_ttl_deleted_them,
    a_task_done_as_its_escalated_run_is_expires_as_its_own_steps_tasks_do,
);

fn id(i: usize) -> String {
    format!("S{i:07}")
}

/// S0..S4 finished done (with their expiry), S5 failed; the earliest and
/// latest expiry.
async fn five_done_one_failed(t: &TestStore, meta: &StepMeta) -> (i64, i64) {
    let (mut first, mut last) = (i64::MAX, 0);
    for i in 0..6 {
        let held = claimed(&t.store, "qc", &id(i), "a/w").await;
        let now = Timestamp::now();
        let end = if i < 5 {
            let mut f = finish(held.attempt, TaskState::Done, None, now);
            f.expires_at = meta.settings.expiry_of(f.record.finished_at);
            first = first.min(f.expires_at.unwrap());
            last = last.max(f.expires_at.unwrap());
            f
        } else {
            let class = Some(taskfleet::model::FailureClass::Exit);
            finish(held.attempt, TaskState::Failed, class, now)
        };
        t.store.finish(meta, &held, &end).await.unwrap();
    }
    (first, last)
}

/// The table's TTL deletes S0 and S1 (not a write of the store's: no
/// counter changes).
async fn ttl_deletes_two(d: &taskfleet::DynamoStore, meta: &StepMeta) {
    for i in [0, 1] {
        d.client()
            .delete_item()
            .table_name(d.table())
            .set_key(Some(taskfleet::schema::task_key("qc", meta.shards, &id(i))))
            .send()
            .await
            .unwrap();
    }
}

/// `loaded` as stored on the counter item of `shard`.
async fn stored_loaded(d: &taskfleet::DynamoStore, shard: u16) -> String {
    use aws_sdk_dynamodb::types::AttributeValue::S;
    let item = d
        .client()
        .get_item()
        .table_name(d.table())
        .key("pk", S(taskfleet::schema::counts_pk("qc")))
        .key("sk", S(taskfleet::schema::shard_sk(shard)))
        .send()
        .await
        .unwrap();
    item.item().unwrap()["loaded"].as_n().unwrap().clone()
}

/// delete-step's way: every task left, in every state, then the step.
async fn delete_the_step(t: &TestStore, meta: &StepMeta) {
    for state in TaskState::ALL {
        for shard in 0..meta.shards {
            let far = Timestamp::now().plus(Duration::from_secs(3600));
            let (tasks, _) = t
                .store
                .in_state(meta, shard, state, far, None, 100)
                .await
                .unwrap();
            t.store.prune(meta, &tasks).await.unwrap();
        }
    }
    assert_eq!(counts(&t.store, "qc").await, (0, 0, 0, 0, 0));
    t.store.remove_step(meta).await.unwrap();
    assert_eq!(t.store.step("qc").await.unwrap(), None);
}

/// How long the step's done tasks are kept: long enough for the checks
/// made before they expire, on a slow emulator too.
const KEEP: Duration = Duration::from_secs(8);

async fn expired_tasks_leave_the_counts_whether_or_not_the_ttl_deleted_them(t: TestStore) {
    let keep = SettingsChange {
        expire_after: Some(KEEP),
        shards: Some(2),
        ..settings(1, 60)
    };
    load_text(&t.store, "qc", "true", &generated_sheet(8), keep).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    assert_eq!(meta.settings.expire_after, Some(KEEP));
    let (first_expiry, last_expiry) = five_done_one_failed(&t, &meta).await;
    let done = t.store.task("qc", &id(0)).await.unwrap().unwrap();
    assert!(
        done.expires_at
            .is_some_and(|at| at * 1000 > Timestamp::now().as_millis()),
        "a done task carries its expiry: {:?}",
        done.expires_at
    );
    assert_eq!(counts(&t.store, "qc").await, (8, 2, 0, 5, 1));

    // Before they expire: S4 pruned, S3 loaded again over (pending).
    let s4 = t.store.task("qc", &id(4)).await.unwrap().unwrap();
    assert_eq!(t.store.prune(&meta, &[s4]).await.unwrap(), 1);
    let s3 = t.store.task("qc", &id(3)).await.unwrap().unwrap();
    let mut again = s3.clone();
    again.script = "true # again".into();
    assert_eq!(t.store.replace(&meta, &s3, &again).await.unwrap(), Replaced);
    let s3 = t.store.task("qc", &id(3)).await.unwrap().unwrap();
    assert_eq!((s3.state, s3.expires_at), (TaskState::Pending, None));
    assert_eq!(counts(&t.store, "qc").await, (7, 3, 0, 3, 1));
    assert_eq!(t.store.recount(&meta, false).await.unwrap(), vec![]);
    assert!(
        Timestamp::now().as_millis() < first_expiry * 1000,
        "the checks before expiry took longer than {KEEP:?}: the case needs a longer KEEP here"
    );

    // S0..S2 expire.
    let wait = last_expiry * 1000 - Timestamp::now().as_millis() + 200;
    tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
    let after = (4, 3, 0, 0, 1);
    assert_eq!(counts(&t.store, "qc").await, after);
    assert_eq!(t.store.task("qc", &id(0)).await.unwrap(), None);
    assert!(t.store.find(&id(1)).await.unwrap().is_empty());
    let mut listed = Vec::new();
    for shard in 0..meta.shards {
        let page = t.store.shard_page(&meta, shard, None, 100).await.unwrap();
        listed.extend(page.tasks.into_iter().map(|s| s.task_id));
    }
    listed.sort();
    assert_eq!(listed, [id(3), id(5), id(6), id(7)]);
    assert_eq!(
        t.store.recount(&meta, false).await.unwrap(),
        vec![],
        "expired tasks are no drift"
    );

    if let Store::Dynamo(d) = &t.store {
        ttl_deletes_two(d, &meta).await;
        assert_eq!(counts(&t.store, "qc").await, after, "deleted by the TTL");
        // Nor are deleted ones: a recount takes them off the counters
        // without a correction, and the counts stay.
        assert_eq!(t.store.recount(&meta, true).await.unwrap(), vec![]);
        assert_eq!(counts(&t.store, "qc").await, after, "after a recount");
        let shard = taskfleet::schema::shard_of(&id(0), meta.shards);
        let present = (0..8)
            .filter(|i| ![0, 1, 4].contains(i))
            .filter(|i| taskfleet::schema::shard_of(&id(*i), meta.shards) == shard)
            .count();
        assert_eq!(
            stored_loaded(d, shard).await,
            present.to_string(),
            "the deleted are off `loaded`"
        );
    }
    assert_eq!(t.store.recount(&meta, true).await.unwrap(), vec![]);

    // The sheet loaded again: the expired (S2 still stored on DynamoDB,
    // S0 and S1 deleted) and the pruned come back as new tasks.
    let again = load_text(
        &t.store,
        "qc",
        "true",
        &generated_sheet(8),
        SettingsChange::default(),
    )
    .await;
    assert_eq!(
        (again.loaded, again.skipped_existing, again.replaced),
        (4, 4, 0)
    );
    let s2 = t.store.task("qc", &id(2)).await.unwrap().unwrap();
    assert_eq!((s2.state, s2.expires_at), (TaskState::Pending, None));
    assert_eq!(counts(&t.store, "qc").await, (8, 7, 0, 0, 1));
    assert_eq!(t.store.recount(&meta, false).await.unwrap(), vec![]);

    delete_the_step(&t, &meta).await;
}

/// The step a retry rule moves a run to has its own settings: the task that
/// waited for that run, done as it is, expires as align's done tasks do,
/// and is counted as expiring.
async fn a_task_done_as_its_escalated_run_is_expires_as_its_own_steps_tasks_do(t: TestStore) {
    let keep = SettingsChange {
        expire_after: Some(Duration::from_secs(86_400)),
        ..escalating()
    };
    load_text(&t.store, "align", "true", &generated_sheet(1), keep).await;
    let align = t.store.step("align").await.unwrap().unwrap();
    escalated(&t, &id(0)).await;
    let large = t.store.step("align-large").await.unwrap().unwrap();
    let run = claimed(&t.store, "align-large", &id(0), "big/w").await;
    let before = Timestamp::now();
    let done = finish(run.attempt, TaskState::Done, None, Timestamp::now());
    t.store.finish(&large, &run, &done).await.unwrap();
    let after = Timestamp::now();
    let task = t.store.task("align", &id(0)).await.unwrap().unwrap();
    let (lo, hi) = (
        align.settings.expiry_of(before).unwrap(),
        align.settings.expiry_of(after).unwrap(),
    );
    assert_eq!(task.state, TaskState::Done);
    assert!(
        task.expires_at.is_some_and(|at| (lo..=hi).contains(&at)),
        "expires at {:?}, not in {lo}..={hi}",
        task.expires_at
    );
    assert_eq!(t.store.recount(&align, false).await.unwrap(), vec![]);
}
