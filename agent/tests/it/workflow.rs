//! A workflow of three steps run per sample by real agents, on both
//! stores: each sample's next step starts as soon as its own previous step
//! is done, failures run down to the end of the chain, and a retry of the
//! failed first step carries those samples through.

use std::collections::BTreeMap;
use std::time::Duration;

use taskfleet::model::{FailureClass, Task, TaskState};
use taskfleet::store::{ReplaceOutcome, SettingsChange, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{TestStore, load_text};

use crate::support::Agent;

per_store!(three_steps_run_per_sample_interleaved_and_a_retry_carries_the_failed_through);

const STEPS: [&str; 3] = ["align", "call", "qc"];
const SAMPLES: usize = 50;

fn settings(after: Option<&str>) -> SettingsChange {
    SettingsChange {
        max_attempts: Some(1),
        after: after.map(|a| vec![a.to_owned()]),
        ..SettingsChange::default()
    }
}

/// Every task of `step`, by id.
async fn tasks(t: &TestStore, step: &str) -> BTreeMap<String, Task> {
    let mut out = BTreeMap::new();
    for i in 0..SAMPLES {
        let id = format!("S{i:03}");
        let task = t.store.task(step, &id).await.unwrap().unwrap();
        out.insert(id, task);
    }
    out
}

/// (waiting, pending, running, done, failed) of `step`.
async fn states(t: &TestStore, step: &str) -> (u64, u64, u64, u64, u64) {
    let s = &t.store.status(Some(step)).await.unwrap()[0];
    (s.waiting, s.pending, s.running, s.done, s.failed)
}

/// Two agents per step, all at once, until every one of them has nothing
/// left to do.
fn run_all(t: &TestStore) {
    let mut agents: Vec<Agent> = STEPS
        .iter()
        .flat_map(|step| {
            (0..2).map(|_| {
                Agent::spawn_on(
                    &t.locator,
                    t.dir.path(),
                    step,
                    &["--slots", "2", "--idle-timeout", "3s"],
                    &[],
                )
            })
        })
        .collect();
    for agent in &mut agents {
        let status = agent.wait(Duration::from_secs(240));
        assert!(status.success(), "{}", agent.stderr());
    }
}

fn ms(t: Option<Timestamp>) -> i64 {
    t.expect("the task ran").as_millis()
}

async fn three_steps_run_per_sample_interleaved_and_a_retry_carries_the_failed_through(
    t: TestStore,
) {
    let bad = t.dir.path().join("bad-samples");
    std::fs::write(&bad, "S007\nS023\nS041\n").unwrap();
    let sheet: String = std::iter::once("sample\n".to_owned())
        .chain((0..SAMPLES).map(|i| format!("S{i:03}\n")))
        .collect();
    let align = format!(
        "if grep -qx \"$SAMPLE\" {}; then echo \"bad input for $SAMPLE\"; exit 3; fi; sleep 0.3",
        bad.display()
    );
    load_text(&t.store, "align", &align, &sheet, settings(None)).await;
    load_text(
        &t.store,
        "call",
        "sleep 0.1",
        &sheet,
        settings(Some("align")),
    )
    .await;
    load_text(&t.store, "qc", "true", &sheet, settings(Some("call"))).await;
    assert_eq!(states(&t, "call").await, (50, 0, 0, 0, 0));

    run_all(&t);

    assert_eq!(states(&t, "align").await, (0, 0, 0, 47, 3));
    assert_eq!(states(&t, "call").await, (0, 0, 0, 47, 3));
    assert_eq!(states(&t, "qc").await, (0, 0, 0, 47, 3));
    let (align, call, qc) = (
        tasks(&t, "align").await,
        tasks(&t, "call").await,
        tasks(&t, "qc").await,
    );
    for id in ["S007", "S023", "S041"] {
        assert_eq!(align[id].exit_code, Some(3));
        for (step, task) in [("call", &call[id]), ("qc", &qc[id])] {
            assert_eq!(
                (task.state, task.failure_class, task.attempt),
                (TaskState::Failed, Some(FailureClass::Upstream), 0),
                "{step}/{id} never runs"
            );
        }
        assert!(
            qc[id]
                .reason
                .as_deref()
                .unwrap()
                .contains(&format!("call/{id} failed"))
        );
    }
    // No sample's step started before its own previous step ended...
    for (id, c) in call.iter().filter(|(_, c)| c.state == TaskState::Done) {
        assert!(ms(c.started_at) >= ms(align[id].finished_at), "call/{id}");
        assert!(ms(qc[id].started_at) >= ms(c.finished_at), "qc/{id}");
    }
    // ...and samples did not wait for the slowest: a call started before
    // the last alignment ended.
    let first_call = call.values().filter_map(|c| c.started_at).min().unwrap();
    let last_align = align.values().filter_map(|a| a.finished_at).max().unwrap();
    assert!(
        first_call < last_align,
        "call started at {first_call:?}, after the last alignment ended at {last_align:?}"
    );

    // The input is fixed; retrying the failed alignments carries those
    // samples through the whole chain.
    std::fs::write(&bad, "").unwrap();
    let meta = t.store.step("align").await.unwrap().unwrap();
    for id in ["S007", "S023", "S041"] {
        assert_eq!(
            t.store.retry(&meta, id, 1, "ana@login").await.unwrap(),
            ReplaceOutcome::Replaced
        );
    }
    assert_eq!(states(&t, "call").await, (3, 0, 0, 47, 0));
    assert_eq!(states(&t, "qc").await, (3, 0, 0, 47, 0));
    run_all(&t);
    for step in STEPS {
        assert_eq!(states(&t, step).await, (0, 0, 0, 50, 0), "{step}");
    }
    let qc = tasks(&t, "qc").await;
    assert!(qc.values().all(|q| q.attempt == 1));
    assert_eq!(tasks(&t, "align").await["S023"].attempt, 2);
}
