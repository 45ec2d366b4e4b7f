//! Cancelling (`taskctl cancel`): a pending task is set aside at once; a
//! running one stays its owner's, whose next renewal (or end other than
//! done) is refused as cancelled, not lost; a dead owner's is ended by the
//! reclaim instead of being run again. Counts exact throughout.

use std::time::Duration;

use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::ReplaceOutcome::{Changed, Replaced};
use taskfleet::store::{Candidate, Claim, Fence, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{TestStore, generated_sheet, load_text};

use super::{claimed, finish, settings};

per_store!(
    a_cancelled_running_task_is_refused_its_renewal_and_ends_cancelled,
    a_cancel_asked_of_a_dead_owner_is_ended_by_the_reclaim,
);

async fn a_cancelled_running_task_is_refused_its_renewal_and_ends_cancelled(t: TestStore) {
    load_text(&t.store, "qc", "true", &generated_sheet(3), settings(3, 60)).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let held = claimed(&t.store, "qc", "S0000000", "a/w").await;
    let pending_one = t.store.task("qc", "S0000001").await.unwrap().unwrap();
    assert_eq!(
        t.store
            .cancel(&meta, &pending_one, "ana@login")
            .await
            .unwrap(),
        Replaced
    );
    // As read before it was cancelled: changed, left alone.
    assert_eq!(
        t.store
            .cancel(&meta, &pending_one, "ana@login")
            .await
            .unwrap(),
        Changed
    );
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!(
        (s.cancelled, s.pending, s.running, s.total),
        (1, 1, 1, 3),
        "{s:?}"
    );
    // The renewal before the cancel holds; the one after is refused as
    // cancelled, not lost, and so is an end that would run it again.
    let until = Timestamp::now().plus(Duration::from_secs(60));
    assert_eq!(
        t.store.heartbeat(&meta, &held, until).await.unwrap(),
        Fence::Held
    );
    let running = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        t.store.cancel(&meta, &running, "ana@login").await.unwrap(),
        Replaced
    );
    assert_eq!(
        t.store.heartbeat(&meta, &held, until).await.unwrap(),
        Fence::Cancelled
    );
    let retry = finish(
        1,
        TaskState::Pending,
        Some(FailureClass::Exit),
        Timestamp::now(),
    );
    assert_eq!(
        t.store.finish(&meta, &held, &retry).await.unwrap(),
        Fence::Cancelled
    );
    // Someone else's copy is simply lost.
    let mut other = held.clone();
    other.owner = Some("b/w".into());
    assert_eq!(
        t.store.heartbeat(&meta, &other, until).await.unwrap(),
        Fence::Lost
    );
    let mut end = finish(
        1,
        TaskState::Cancelled,
        Some(FailureClass::Cancelled),
        Timestamp::now(),
    );
    end.counts_as_failure = false;
    assert_eq!(
        t.store.finish(&meta, &held, &end).await.unwrap(),
        Fence::Held
    );
    let task = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.failed_attempts, task.owner),
        (TaskState::Cancelled, 0, None)
    );
    assert_eq!(task.cancelled_by.as_deref(), Some("ana@login"));
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!(
        (s.cancelled, s.pending, s.running, s.done),
        (2, 1, 0, 0),
        "{s:?}"
    );
    assert!(s.percent_done <= 100.0);
    assert!(
        t.store.recount(&meta, false).await.unwrap().is_empty(),
        "counts exact"
    );
    // Put back, it runs again as the next attempt, free of the mark.
    assert_eq!(
        t.store
            .retry(&meta, "S0000000", 1, "ana@login")
            .await
            .unwrap(),
        Replaced
    );
    let again = claimed(&t.store, "qc", "S0000000", "b/w").await;
    assert_eq!((again.attempt, again.cancelled_by.is_none()), (2, true));
    assert_eq!(
        t.store.heartbeat(&meta, &again, until).await.unwrap(),
        Fence::Held
    );
}

async fn a_cancel_asked_of_a_dead_owner_is_ended_by_the_reclaim(t: TestStore) {
    load_text(&t.store, "qc", "true", &generated_sheet(1), settings(3, 3)).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    claimed(&t.store, "qc", "S0000000", "a/w").await;
    let running = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    t.store.cancel(&meta, &running, "ana@login").await.unwrap();
    let candidate = Candidate {
        task_id: "S0000000".into(),
        state: TaskState::Running,
        attempt: 1,
        state_at: Timestamp::from_millis(0),
    };
    let later = Timestamp::now().plus(Duration::from_secs(9));
    assert_eq!(
        t.store
            .claim(&meta, &candidate, "b/w", later)
            .await
            .unwrap(),
        Claim::FailedLost
    );
    let task = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.attempt),
        (TaskState::Cancelled, 1),
        "not run again"
    );
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!((s.cancelled, s.running, s.pending), (1, 0, 0), "{s:?}");
}
