//! Agents started together (`--launch-index`) start spread over the step:
//! agent i in shard i mod shards, the first round of a fleet at the oldest
//! end of its shard and the second at the newest, without a counter read.

use std::sync::atomic::Ordering;

use agent::Stats;
use agent::finder::Finder;
use taskfleet::model::TaskState;
use taskfleet::schema::shard_of;
use taskfleet::store::{Order, SettingsChange, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{TestStore, generated_sheet, load_text};

const SHARDS: u16 = 4;

async fn launch_index_places_each_agent(t: TestStore) {
    load_text(
        &t.store,
        "spread",
        "true",
        &generated_sheet(64),
        SettingsChange {
            shards: Some(SHARDS),
            ..SettingsChange::default()
        },
    )
    .await;
    let meta = t.store.step("spread").await.unwrap().unwrap();
    // (launch index, its shard, from the newest end)
    for (index, shard, newest) in [(1, 1, false), (6, 2, true), (11, 3, false), (12, 0, true)] {
        let pending = t
            .store
            .candidates(
                &meta,
                shard,
                TaskState::Pending,
                Timestamp::now(),
                100,
                Order::OldestFirst,
            )
            .await
            .unwrap();
        let ends = (
            pending.iter().map(|c| c.state_at).min().unwrap(),
            pending.iter().map(|c| c.state_at).max().unwrap(),
        );
        let stats = Stats::default();
        let owner = format!("test/{index}");
        let mut finder = Finder::new(&owner, Some(index), SHARDS);
        let task = finder
            .claim_next(&t.store, &meta, &owner, &stats)
            .await
            .unwrap()
            .expect("a task claimed");
        assert_eq!(
            shard_of(&task.task_id, SHARDS),
            shard,
            "agent {index} starts in shard {shard}"
        );
        let at = pending
            .iter()
            .find(|c| c.task_id == task.task_id)
            .expect("the claimed task was pending in that shard")
            .state_at;
        assert_eq!(
            at,
            if newest { ends.1 } else { ends.0 },
            "agent {index} starts at the {} end",
            if newest { "newest" } else { "oldest" }
        );
        assert_eq!(
            stats.other_reads.load(Ordering::Relaxed),
            0,
            "no counter read before its first claim"
        );
        assert_eq!(stats.candidate_queries.load(Ordering::Relaxed), 1);
    }
}

per_store!(launch_index_places_each_agent);
