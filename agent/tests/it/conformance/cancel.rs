//! Cancelling (`taskctl cancel`): a pending task is set aside at once; a
//! running one stays its owner's, whose next renewal (or end other than
//! done) is refused as cancelled, not lost; a dead owner's is ended by the
//! reclaim instead of being run again. Counts exact throughout.

use std::time::Duration;

use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::ReplaceOutcome::{Changed, Replaced};
use taskfleet::store::{Candidate, Claim, Fence, SettingsChange, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{TestStore, generated_sheet, load_text};

use super::{claimed, escalated, escalating, finish, settings};

per_store!(
    a_cancelled_running_task_is_refused_its_renewal_and_ends_cancelled,
    a_cancel_asked_of_a_dead_owner_is_ended_by_the_reclaim,
    cancelling_an_escalated_task_cancels_its_run_on_the_other_step,
    a_retried_task_takes_its_running_run_back_from_the_cancel,
    a_worker_stopped_by_a_cancel_passes_who_asked_to_the_dependents,
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
    assert_eq!(end_cancelled(&t.store, &meta, &held).await, Fence::Held);
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

/// The worker's copy of a task predates the cancel: its cancelled end still
/// tells the steps `--after` it who cancelled, as an operator's cancel of a
/// pending task does.
async fn a_worker_stopped_by_a_cancel_passes_who_asked_to_the_dependents(t: TestStore) {
    load_text(&t.store, "qc", "true", &generated_sheet(2), settings(3, 60)).await;
    let after = SettingsChange {
        after: Some(vec!["qc".into()]),
        ..SettingsChange::default()
    };
    load_text(&t.store, "call", "true", &generated_sheet(2), after).await;
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let held = claimed(&t.store, "qc", "S0000000", "a/w").await;
    let running = t.store.task("qc", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        t.store.cancel(&meta, &running, "ana@login").await.unwrap(),
        Replaced
    );
    let pending = t.store.task("qc", "S0000001").await.unwrap().unwrap();
    assert_eq!(
        t.store.cancel(&meta, &pending, "bo@login").await.unwrap(),
        Replaced
    );
    assert_eq!(end_cancelled(&t.store, &meta, &held).await, Fence::Held);
    for (id, by) in [("S0000000", "ana@login"), ("S0000001", "bo@login")] {
        let qc = t.store.task("qc", id).await.unwrap().unwrap();
        assert_eq!(
            (qc.state, qc.cancelled_by.as_deref()),
            (TaskState::Cancelled, Some(by))
        );
        let call = t.store.task("call", id).await.unwrap().unwrap();
        assert_eq!(
            (call.state, call.failure_class, call.cancelled_by.as_deref()),
            (TaskState::Cancelled, Some(FailureClass::Upstream), Some(by)),
            "{id}"
        );
    }
    let s = &t.store.status(Some("call")).await.unwrap()[0];
    assert_eq!((s.cancelled, s.waiting), (2, 0), "{s:?}");
}

/// The worker's end of attempt 1 of `held` after it was asked to stop.
async fn end_cancelled(
    store: &taskfleet::store::Store,
    meta: &taskfleet::model::StepMeta,
    held: &taskfleet::Task,
) -> Fence {
    let mut end = finish(
        1,
        TaskState::Cancelled,
        Some(FailureClass::Cancelled),
        Timestamp::now(),
    );
    end.counts_as_failure = false;
    store.finish(meta, held, &end).await.unwrap()
}

/// Loads `n` tasks of align, whose exit 137 escalates to align-large.
async fn load_escalating(t: &TestStore, n: usize) {
    load_text(&t.store, "align", "true", &generated_sheet(n), escalating()).await;
}

async fn cancelling_an_escalated_task_cancels_its_run_on_the_other_step(t: TestStore) {
    load_escalating(&t, 3).await;
    let after = SettingsChange {
        after: Some(vec!["align".into()]),
        ..SettingsChange::default()
    };
    load_text(&t.store, "call", "true", &generated_sheet(3), after).await;
    let align = t.store.step("align").await.unwrap().unwrap();
    let large = t.store.step("align-large").await.unwrap().unwrap();
    // S0: its run is pending on align-large; S1: its run is running there.
    escalated(&t, "S0000000").await;
    escalated(&t, "S0000001").await;
    let running = claimed(&t.store, "align-large", "S0000001", "big/w").await;

    for id in ["S0000000", "S0000001"] {
        let task = t.store.task("align", id).await.unwrap().unwrap();
        assert_eq!(
            t.store.cancel(&align, &task, "ana@login").await.unwrap(),
            Replaced
        );
    }
    let run = t
        .store
        .task("align-large", "S0000000")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (run.state, run.cancelled_by.as_deref()),
        (TaskState::Cancelled, Some("ana@login")),
        "the pending run is cancelled with its task"
    );
    // The running one's worker is told at its next renewal, and its end
    // leaves the cancelled task as it is.
    let until = Timestamp::now().plus(Duration::from_secs(60));
    assert_eq!(
        t.store.heartbeat(&large, &running, until).await.unwrap(),
        Fence::Cancelled
    );
    assert_eq!(end_cancelled(&t.store, &large, &running).await, Fence::Held);
    for id in ["S0000000", "S0000001"] {
        let task = t.store.task("align", id).await.unwrap().unwrap();
        assert_eq!(
            (task.state, task.failure_class, task.cancelled_by.as_deref()),
            (TaskState::Cancelled, None, Some("ana@login")),
            "{id}"
        );
        let call = t.store.task("call", id).await.unwrap().unwrap();
        assert_eq!(
            (call.state, call.failure_class),
            (TaskState::Cancelled, Some(FailureClass::Upstream)),
            "{id}"
        );
    }
    let cancelled = |step: &'static str| {
        let store = &t.store;
        async move {
            let s = &store.status(Some(step)).await.unwrap()[0];
            (s.total, s.cancelled, s.pending, s.running, s.waiting)
        }
    };
    assert_eq!(cancelled("align").await, (3, 2, 1, 0, 0));
    assert_eq!(cancelled("align-large").await, (2, 2, 0, 0, 0));
    assert_eq!(cancelled("call").await, (3, 2, 0, 0, 1));
    for meta in [&align, &large] {
        assert!(t.store.recount(meta, false).await.unwrap().is_empty());
    }
}

/// Cancelling align/A only asks its running run on align-large to stop;
/// retried and escalated again before the run's worker acted on that, the
/// task takes the run back: the stale ask is withdrawn, and the run's end
/// is the retried task's. S0: the worker had not heard of the ask, its run
/// goes on; S1: it had, and killed its script: its cancelled end is
/// refused and it gives the run back to be run again.
async fn a_retried_task_takes_its_running_run_back_from_the_cancel(t: TestStore) {
    load_escalating(&t, 2).await;
    let align = t.store.step("align").await.unwrap().unwrap();
    let large = t.store.step("align-large").await.unwrap().unwrap();
    let until = Timestamp::now().plus(Duration::from_secs(60));
    let mut runs = Vec::new();
    for id in ["S0000000", "S0000001"] {
        escalated(&t, id).await;
        runs.push(claimed(&t.store, "align-large", id, "big/w").await);
        let task = t.store.task("align", id).await.unwrap().unwrap();
        assert_eq!(
            t.store.cancel(&align, &task, "ana@login").await.unwrap(),
            Replaced
        );
    }
    assert_eq!(
        t.store.heartbeat(&large, &runs[1], until).await.unwrap(),
        Fence::Cancelled,
        "S1's worker hears of the ask"
    );
    for id in ["S0000000", "S0000001"] {
        let task = t.store.task("align", id).await.unwrap().unwrap();
        assert_eq!(
            t.store
                .retry(&align, id, task.attempt, "ana@login")
                .await
                .unwrap(),
            Replaced
        );
        escalated(&t, id).await;
        let run = t.store.task("align-large", id).await.unwrap().unwrap();
        assert_eq!(
            (run.state, run.attempt, run.cancelled_by, run.dependents),
            (TaskState::Running, 1, None, vec!["align".to_owned()]),
            "{id}: the ask is withdrawn"
        );
    }
    // S0 goes on and ends done, and so does its task.
    assert_eq!(
        t.store.heartbeat(&large, &runs[0], until).await.unwrap(),
        Fence::Held
    );
    let done = finish(1, TaskState::Done, None, Timestamp::now());
    assert_eq!(
        t.store.finish(&large, &runs[0], &done).await.unwrap(),
        Fence::Held
    );
    let s0 = t.store.task("align", "S0000000").await.unwrap().unwrap();
    assert_eq!((s0.state, s0.failure_class), (TaskState::Done, None));
    // S1's worker may no longer end its run cancelled; it releases it.
    assert_eq!(end_cancelled(&t.store, &large, &runs[1]).await, Fence::Lost);
    let release = finish(
        1,
        TaskState::Pending,
        Some(FailureClass::Interrupted),
        Timestamp::now(),
    );
    assert_eq!(
        t.store.finish(&large, &runs[1], &release).await.unwrap(),
        Fence::Held
    );
    let s1 = t.store.task("align", "S0000001").await.unwrap().unwrap();
    assert_eq!(
        (s1.state, s1.waiting_on),
        (TaskState::Waiting, vec!["align-large".to_owned()])
    );
    let again = claimed(&t.store, "align-large", "S0000001", "big/w2").await;
    assert_eq!((again.attempt, again.failed_attempts), (2, 0));

    let s = &t.store.status(Some("align")).await.unwrap()[0];
    assert_eq!(
        (s.total, s.done, s.waiting, s.cancelled),
        (2, 1, 1, 0),
        "{s:?}"
    );
    let s = &t.store.status(Some("align-large")).await.unwrap()[0];
    assert_eq!(
        (s.total, s.done, s.running, s.cancelled),
        (2, 1, 1, 0),
        "{s:?}"
    );
    for meta in [&align, &large] {
        assert!(t.store.recount(meta, false).await.unwrap().is_empty());
    }
}
