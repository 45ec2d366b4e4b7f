//! What a claiming agent reads to choose where to look: the open tasks of
//! each shard, and either end of a shard's pending tasks.

use taskfleet::model::TaskState;
use taskfleet::store::{Fence, Order, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{TestStore, generated_sheet, load_text};

use super::{claimed, finish, settings};

per_store!(open_tasks_per_shard_and_both_ends_of_a_shard);

async fn open_tasks_per_shard_and_both_ends_of_a_shard(t: TestStore) {
    load_text(
        &t.store,
        "qc",
        "true",
        &generated_sheet(60),
        settings(3, 60),
    )
    .await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let shard_of = |id: &str| usize::from(taskfleet::schema::shard_of(id, meta.shards));
    let mut open = vec![0u64; usize::from(meta.shards)];
    for i in 0..60 {
        open[shard_of(&format!("S{i:07}"))] += 1;
    }
    assert_eq!(t.store.open_per_shard(&meta).await.unwrap(), open);
    // Running is still open; done is not.
    let first = claimed(&t.store, "qc", "S0000003", "a/w").await;
    assert_eq!(t.store.open_per_shard(&meta).await.unwrap(), open);
    let done = finish(1, TaskState::Done, None, Timestamp::now());
    assert_eq!(
        t.store.finish(&meta, &first, &done).await.unwrap(),
        Fence::Held
    );
    open[shard_of("S0000003")] -= 1;
    assert_eq!(t.store.open_per_shard(&meta).await.unwrap(), open);

    // The two ends of a shard's pending tasks: the same tasks, in opposite
    // orders.
    let fullest = (0..meta.shards)
        .max_by_key(|&k| open[usize::from(k)])
        .unwrap();
    let ids = |order| {
        let (store, meta) = (&t.store, &meta);
        async move {
            store
                .candidates(
                    meta,
                    fullest,
                    TaskState::Pending,
                    Timestamp::now(),
                    100,
                    order,
                )
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.task_id)
                .collect::<Vec<_>>()
        }
    };
    let oldest = ids(Order::OldestFirst).await;
    let mut newest = ids(Order::NewestFirst).await;
    assert!(oldest.len() >= 3, "{oldest:?}");
    newest.reverse();
    assert_eq!(oldest, newest);
}
