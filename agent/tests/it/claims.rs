//! Claims and fences at the store level.

use std::time::Duration;

use taskfleet::model::{AttemptRecord, TaskState};
use taskfleet::store::{Candidate, Claim, Fence, Finish, SettingsChange, TaskStore};
use taskfleet::time::Timestamp;

use crate::support::TestTable;

fn pending(id: &str) -> Candidate {
    Candidate {
        task_id: id.into(),
        state: TaskState::Pending,
        attempt: 0,
    }
}

#[tokio::test]
async fn two_claims_racing_for_one_task_one_wins_and_the_other_sees_lost() {
    let t = TestTable::new("race").await;
    t.load_generated("align", "true", 20, SettingsChange::default())
        .await;
    let meta = t.store.step("align").await.unwrap().unwrap();
    for i in 0..20 {
        let c = pending(&format!("S{i:07}"));
        let now = Timestamp::now();
        let (a, b) = tokio::join!(
            t.store.claim(&meta, &c, "host-a/w", now),
            t.store.claim(&meta, &c, "host-b/w", now)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let winners: Vec<&Claim> = [&a, &b]
            .into_iter()
            .filter(|c| matches!(c, Claim::Claimed(_)))
            .collect();
        assert_eq!(winners.len(), 1, "exactly one winner: {a:?} / {b:?}");
        assert!(matches!(a, Claim::Lost) || matches!(b, Claim::Lost));
        let Claim::Claimed(task) = winners[0] else {
            unreachable!()
        };
        assert_eq!((task.state, task.attempt), (TaskState::Running, 1));
    }
    let s = &t.store.status(Some("align")).await.unwrap()[0];
    assert_eq!((s.running, s.pending), (20, 0));
}

#[tokio::test]
async fn fenced_writes_of_a_previous_owner_are_refused() {
    let t = TestTable::new("fence").await;
    let lease = SettingsChange {
        lease: Some(Duration::from_secs(3)),
        ..SettingsChange::default()
    };
    t.load_generated("align", "true", 1, lease).await;
    let meta = t.store.step("align").await.unwrap().unwrap();
    let Claim::Claimed(first) = t
        .store
        .claim(&meta, &pending("S0000000"), "a/w", Timestamp::now())
        .await
        .unwrap()
    else {
        panic!("first claim must win")
    };
    // Not expired yet: nobody can reclaim.
    let running = Candidate {
        task_id: "S0000000".into(),
        state: TaskState::Running,
        attempt: 1,
    };
    assert_eq!(
        t.store
            .claim(&meta, &running, "b/w", Timestamp::now())
            .await
            .unwrap(),
        Claim::Lost
    );
    // Expired (as seen from a clock past the lease and the skew margin).
    let later = Timestamp::now().plus(Duration::from_secs(9));
    let Claim::Claimed(second) = t.store.claim(&meta, &running, "b/w", later).await.unwrap() else {
        panic!("reclaim of an expired lease must win")
    };
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.history.last().unwrap().failure_class,
        Some(taskfleet::model::FailureClass::Lost)
    );
    // The first owner's heartbeat and finish are refused.
    assert_eq!(
        t.store.heartbeat(&meta, &first, later).await.unwrap(),
        Fence::Lost
    );
    let record = AttemptRecord {
        attempt: first.attempt,
        owner: "a/w".into(),
        started_at: Timestamp::now(),
        finished_at: Timestamp::now(),
        outcome: TaskState::Done,
        exit_code: Some(0),
        signal: None,
        failure_class: None,
        log_uri: None,
        provenance: None,
    };
    let done = Finish {
        next: TaskState::Done,
        counts_as_failure: false,
        ready_at: Timestamp::now(),
        record,
        output_tail: None,
    };
    assert_eq!(
        t.store.finish(&meta, &first, &done).await.unwrap(),
        Fence::Lost
    );
    assert_eq!(
        t.store.heartbeat(&meta, &second, later).await.unwrap(),
        Fence::Held
    );
    let task = t.store.task("align", "S0000000").await.unwrap().unwrap();
    assert_eq!(
        (task.state, task.owner.as_deref(), task.attempt),
        (TaskState::Running, Some("b/w"), 2)
    );
}
