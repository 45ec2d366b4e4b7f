//! A step's retry rules, run by real agents on both stores: an
//! out-of-memory exit (137) is escalated to the step with the bigger
//! template and the sample goes on from there; bad input (exit 2) fails at
//! once; a failure no rule names uses the step's attempts; and the tasks
//! after the step follow each outcome.

use std::time::Duration;

use taskfleet::model::{FailureClass, TaskState};
use taskfleet::rules;
use taskfleet::store::{SettingsChange, TaskStore};
use testkit::{TestStore, load_text};

use crate::support::Agent;

per_store!(out_of_memory_is_escalated_bad_input_fails_at_once_and_dependents_follow);

/// (waiting, pending, running, done, failed) of `step`.
async fn states(t: &TestStore, step: &str) -> (u64, u64, u64, u64, u64) {
    let s = &t.store.status(Some(step)).await.unwrap()[0];
    (s.waiting, s.pending, s.running, s.done, s.failed)
}

/// An agent for each step at once (the escalation step's waits longer:
/// its work comes only from escalations), until they have nothing left.
fn run_agents(t: &TestStore) {
    let mut agents: Vec<Agent> = [("align", "3s"), ("align-large", "8s"), ("call", "3s")]
        .iter()
        .map(|(step, idle)| {
            Agent::spawn_on(
                &t.locator,
                t.dir.path(),
                step,
                &[
                    "--slots",
                    "2",
                    "--idle-timeout",
                    idle,
                    "--retry-delay",
                    "100ms",
                ],
                &[],
            )
        })
        .collect();
    for agent in &mut agents {
        let status = agent.wait(Duration::from_secs(120));
        assert!(status.success(), "{}", agent.stderr());
    }
}

async fn out_of_memory_is_escalated_bad_input_fails_at_once_and_dependents_follow(t: TestStore) {
    let settings = SettingsChange {
        max_attempts: Some(3),
        rules: Some(vec![
            rules::parse("exit=2", true).unwrap(),
            rules::parse("exit=137:escalate-to=align-large", false).unwrap(),
        ]),
        ..SettingsChange::default()
    };
    // Out of memory everywhere but on the big instances; bad input always;
    // one sample fails once, for no reason a rule names.
    let script = r#"case "$SAMPLE" in
  oom*) [ "$STEP" = align-large ] || { echo "killed: out of memory"; exit 137; } ;;
  bad*) echo "bad input"; exit 2 ;;
  flaky*) [ "$ATTEMPT" -ge 2 ] || exit 1 ;;
esac
echo "$SAMPLE aligned on $STEP""#;
    let sheet = "sample\nok1\nok2\noom1\noom2\nbad1\nflaky1\n";
    load_text(&t.store, "align", script, sheet, settings).await;
    let after = SettingsChange {
        after: Some(vec!["align".into()]),
        ..SettingsChange::default()
    };
    load_text(&t.store, "call", "true", sheet, after).await;
    // The load made the escalation step, with the step's settings and no
    // rules of its own.
    let big = t.store.step("align-large").await.unwrap().unwrap();
    assert_eq!(
        (big.settings.max_attempts, big.settings.rules.len()),
        (3, 0)
    );
    assert_eq!(states(&t, "align-large").await, (0, 0, 0, 0, 0));

    run_agents(&t);

    assert_eq!(states(&t, "align").await, (0, 0, 0, 5, 1));
    assert_eq!(states(&t, "align-large").await, (0, 0, 0, 2, 0));
    assert_eq!(states(&t, "call").await, (0, 0, 0, 5, 1));
    let task = |step: &'static str, id: &'static str| {
        let store = &t.store;
        async move { store.task(step, id).await.unwrap().unwrap() }
    };

    // Exit 2: failed on its first attempt, not after three.
    let bad = task("align", "bad1").await;
    assert_eq!(
        (bad.state, bad.attempt, bad.exit_code, bad.failure_class),
        (TaskState::Failed, 1, Some(2), Some(FailureClass::Exit))
    );
    // Exit 1, no rule: retried within the step's attempts.
    let flaky = task("align", "flaky1").await;
    assert_eq!(
        (flaky.state, flaky.attempt, flaky.failed_attempts),
        (TaskState::Done, 2, 1)
    );
    for id in ["oom1", "oom2"] {
        let small = task("align", id).await;
        let big = task("align-large", id).await;
        // One attempt on the small template, then the run on the big one.
        assert_eq!(
            (small.state, small.attempt, small.escalated_to.as_deref()),
            (TaskState::Done, 1, Some("align-large")),
            "{small:?}"
        );
        assert_eq!(small.history.last().unwrap().exit_code, Some(137));
        assert_eq!(
            small.reason.as_deref(),
            Some(format!("escalated; done as align-large/{id} (attempt 1)").as_str())
        );
        assert_eq!((big.state, big.attempt), (TaskState::Done, 1));
        assert_eq!(big.env["SAMPLE"], id);
        assert_eq!(big.script, small.script);
        assert!(
            big.output_tail
                .as_deref()
                .is_some_and(|o| o.contains(&format!("{id} aligned on align-large"))),
            "{:?}",
            big.output_tail
        );
        // The next step ran once the escalated run was done.
        let call = task("call", id).await;
        assert_eq!(call.state, TaskState::Done);
        assert!(call.started_at.unwrap() >= big.finished_at.unwrap());
    }
    let call_bad = task("call", "bad1").await;
    assert_eq!(
        (call_bad.state, call_bad.failure_class),
        (TaskState::Failed, Some(FailureClass::Upstream))
    );
}
