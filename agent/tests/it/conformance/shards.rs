//! What a claiming agent reads to choose where to look: the open tasks of
//! each shard, and either end of a shard's pending tasks.

use taskfleet::model::{StepMeta, TaskState};
use taskfleet::store::{Candidate, Fence, Order, SettingsChange, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{TestStore, generated_sheet, load_text};

use super::{claimed, finish, settings};

per_store!(open_tasks_per_shard_and_both_ends_of_a_shard);

/// Up to `limit` claimable pending tasks of `shard`, read in `order`.
async fn pending<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    shard: u16,
    limit: usize,
    order: Order,
) -> Vec<Candidate> {
    store
        .candidates(
            meta,
            shard,
            TaskState::Pending,
            Timestamp::now(),
            limit,
            order,
        )
        .await
        .unwrap()
}

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
            pending(store, meta, fullest, 100, order)
                .await
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

per_store!(a_shards_pending_tasks_are_read_from_any_point_between_its_ends);

async fn a_shards_pending_tasks_are_read_from_any_point_between_its_ends(t: TestStore) {
    let before = Timestamp::now();
    load_text(
        &t.store,
        "qc",
        "true",
        &generated_sheet(90),
        SettingsChange {
            shards: Some(3),
            ..settings(3, 60)
        },
    )
    .await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    assert_eq!(meta.shards, 3);
    let read = |shard, order| pending(&t.store, &meta, shard, 100, order);
    for shard in 0..meta.shards {
        let all = read(shard, Order::OldestFirst).await;
        assert!(all.len() >= 10, "shard {shard}: {} tasks", all.len());
        let places: Vec<i64> = all.iter().map(|c| c.state_at.as_millis()).collect();
        assert!(places.is_sorted(), "not oldest first: {places:?}");
        // A load places its tasks within the second before it, not all at
        // one point.
        assert!(
            places[0] >= before.as_millis() - 1_000
                && places[places.len() - 1] <= Timestamp::now().as_millis(),
            "{places:?}"
        );
        let distinct: std::collections::BTreeSet<_> = places.iter().collect();
        assert!(distinct.len() * 10 >= places.len() * 8, "{places:?}");

        // From a point in between: exactly the tasks placed there or later.
        let mid = all[all.len() / 2].state_at;
        let from = read(shard, Order::OldestFrom(mid)).await;
        let expected: Vec<&str> = all
            .iter()
            .filter(|c| c.state_at >= mid)
            .map(|c| c.task_id.as_str())
            .collect();
        let mut got: Vec<&str> = from.iter().map(|c| c.task_id.as_str()).collect();
        assert!(from.iter().all(|c| c.state_at >= mid));
        let mut want = expected.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "shard {shard} from {mid:?}");
        // Oldest first, and a limit keeps the oldest of them.
        let from_places: Vec<i64> = from.iter().map(|c| c.state_at.as_millis()).collect();
        assert!(from_places.is_sorted(), "not oldest first: {from_places:?}");
        let first_five = pending(&t.store, &meta, shard, 5, Order::OldestFrom(mid)).await;
        let five: Vec<i64> = first_five.iter().map(|c| c.state_at.as_millis()).collect();
        assert_eq!(five, from_places[..5.min(from_places.len())]);
        // Past every claimable task: nothing, and no error.
        let later = Timestamp::now().plus(std::time::Duration::from_secs(60));
        assert!(read(shard, Order::OldestFrom(later)).await.is_empty());
    }
}
