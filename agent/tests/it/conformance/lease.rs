//! Claim, lease and fence: one winner of a race, a dead owner's task
//! reclaimed and the owner fenced out, a release that costs no attempt.

use std::time::Duration;

use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::{Candidate, Claim, Fence, SettingsChange, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{TestStore, generated_sheet, load_text};

use super::{OLDEST, claimed, counts, finish, pending, settings};

per_store!(
    racing_claims_have_exactly_one_winner,
    an_expired_lease_is_reclaimed_and_the_old_owner_is_fenced_out,
    a_dead_owner_on_the_last_attempt_leaves_the_task_failed_lost,
    a_release_does_not_use_up_an_attempt,
    a_reclaim_loses_to_a_heartbeat_that_landed_after_its_read,
);

async fn racing_claims_have_exactly_one_winner(t: TestStore) {
    load_text(
        &t.store,
        "qc",
        "true",
        &generated_sheet(25),
        SettingsChange::default(),
    )
    .await;
    let other = t.other_handle();
    let meta = t.store.step("qc").await.unwrap().unwrap();
    for i in 0..25 {
        let c = pending(&format!("S{i:07}"));
        let now = Timestamp::now();
        let (a, b) = tokio::join!(
            t.store.claim(&meta, &c, "a/w", now),
            other.claim(&meta, &c, "b/w", now)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let won = [&a, &b]
            .iter()
            .filter(|c| matches!(c, Claim::Claimed(_)))
            .count();
        assert_eq!(won, 1, "{a:?} / {b:?}");
        assert!(
            matches!(a, Claim::Lost) || matches!(b, Claim::Lost),
            "{a:?} / {b:?}"
        );
    }
    assert_eq!(counts(&t.store, "qc").await, (25, 0, 25, 0, 0));
}

async fn an_expired_lease_is_reclaimed_and_the_old_owner_is_fenced_out(t: TestStore) {
    load_text(&t.store, "qc", "true", &generated_sheet(1), settings(3, 3)).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let first = claimed(&t.store, "qc", "S0000000", "a/w").await;
    let running = Candidate {
        task_id: "S0000000".into(),
        state: TaskState::Running,
        attempt: 1,
        state_at: taskfleet::time::Timestamp::from_millis(0),
    };
    // Nothing is reclaimable before the lease and the skew margin (5 s)
    // are over, in any shard.
    let almost = first.lease_expires_at.unwrap().plus(Duration::from_secs(4));
    for shard in 0..meta.shards {
        assert!(
            t.store
                .candidates(&meta, shard, TaskState::Running, almost, 10, OLDEST)
                .await
                .unwrap()
                .is_empty(),
            "reclaimable in shard {shard} before the lease and margin ran out"
        );
    }
    assert_eq!(
        t.store
            .claim(&meta, &running, "b/w", Timestamp::now())
            .await
            .unwrap(),
        Claim::Lost
    );
    let later = Timestamp::now().plus(Duration::from_secs(9));
    let mut found = Vec::new();
    for shard in 0..meta.shards {
        found.extend(
            t.store
                .candidates(&meta, shard, TaskState::Running, later, 10, OLDEST)
                .await
                .unwrap(),
        );
    }
    assert_eq!(found.first().map(|c| c.task_id.as_str()), Some("S0000000"));
    let Claim::Claimed(second) = t.store.claim(&meta, &running, "b/w", later).await.unwrap() else {
        panic!("an expired lease must be reclaimable")
    };
    assert_eq!((second.attempt, second.failed_attempts), (2, 1));
    assert_eq!(
        second.history.last().unwrap().failure_class,
        Some(FailureClass::Lost)
    );
    assert_eq!(
        t.store.heartbeat(&meta, &first, later).await.unwrap(),
        Fence::Lost
    );
    let done = finish(1, TaskState::Done, None, Timestamp::now());
    assert_eq!(
        t.store.finish(&meta, &first, &done).await.unwrap(),
        Fence::Lost
    );
    assert_eq!(
        t.store.heartbeat(&meta, &second, later).await.unwrap(),
        Fence::Held
    );
    assert_eq!(
        t.store
            .finish(
                &meta,
                &second,
                &finish(2, TaskState::Done, None, Timestamp::now())
            )
            .await
            .unwrap(),
        Fence::Held
    );
    let task = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.attempt, task.output_tail.as_deref()),
        (TaskState::Done, 2, Some("attempt 2"))
    );
    assert_eq!(counts(&t.store, "qc").await, (1, 0, 0, 1, 0));
}

async fn a_dead_owner_on_the_last_attempt_leaves_the_task_failed_lost(t: TestStore) {
    load_text(&t.store, "qc", "true", &generated_sheet(1), settings(1, 3)).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    claimed(&t.store, "qc", "S0000000", "a/w").await;
    let running = Candidate {
        task_id: "S0000000".into(),
        state: TaskState::Running,
        attempt: 1,
        state_at: taskfleet::time::Timestamp::from_millis(0),
    };
    let later = Timestamp::now().plus(Duration::from_secs(9));
    assert_eq!(
        t.store.claim(&meta, &running, "b/w", later).await.unwrap(),
        Claim::FailedLost
    );
    let task = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.failure_class),
        (TaskState::Failed, Some(FailureClass::Lost))
    );
    assert_eq!(counts(&t.store, "qc").await, (1, 0, 0, 0, 1));
}

async fn a_release_does_not_use_up_an_attempt(t: TestStore) {
    load_text(&t.store, "qc", "true", &generated_sheet(1), settings(1, 60)).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let first = claimed(&t.store, "qc", "S0000000", "a/w").await;
    let release = finish(
        1,
        TaskState::Pending,
        Some(FailureClass::Interrupted),
        Timestamp::now(),
    );
    assert_eq!(
        t.store.finish(&meta, &first, &release).await.unwrap(),
        Fence::Held
    );
    assert_eq!(counts(&t.store, "qc").await, (1, 1, 0, 0, 0));
    // Still claimable at once, and its one attempt is still there to use.
    let second = claimed(&t.store, "qc", "S0000000", "b/w").await;
    assert_eq!((second.attempt, second.failed_attempts), (2, 0));
}

async fn a_reclaim_loses_to_a_heartbeat_that_landed_after_its_read(t: TestStore) {
    // max_attempts 1: the reclaim would fail the task (the last attempt).
    for (step, max) in [("last", 1), ("more", 3)] {
        load_text(
            &t.store,
            step,
            "true",
            &generated_sheet(1),
            settings(max, 3),
        )
        .await;
        let meta = t.store.step(step).await.unwrap().unwrap();
        let held = claimed(&t.store, step, "S0000000", "a/w").await;
        let later = Timestamp::now().plus(Duration::from_secs(9));
        // The reclaimer read the task while its lease looked expired...
        let seen = t.store.task(step, "S0000000").await.unwrap().unwrap();
        // ...then the owner's renewal landed.
        assert_eq!(
            t.store
                .heartbeat(&meta, &held, later.plus(Duration::from_secs(60)))
                .await
                .unwrap(),
            Fence::Held
        );
        assert_eq!(
            t.other_handle()
                .reclaim(&meta, &seen, "b/w", later)
                .await
                .unwrap(),
            Claim::Lost,
            "{step}: a reclaim overruled a heartbeat"
        );
        let task = t.store.task(step, "S0000000").await.unwrap().unwrap();
        assert_eq!(
            (task.state, task.owner.as_deref(), task.failed_attempts),
            (TaskState::Running, Some("a/w"), 0)
        );
        assert_eq!(counts(&t.store, step).await, (1, 0, 1, 0, 0));
    }
}
