//! Four agent processes with two slots each over the 2,504-sample sheet.

use std::collections::HashMap;
use std::time::Duration;

use taskfleet::load::{self, LoadRequest};
use taskfleet::model::TaskState;
use taskfleet::sheet::{Sheet, SheetOptions};
use taskfleet::store::{SettingsChange, TaskStore};

use crate::support::{Agent, TestTable, samples_2504};

#[tokio::test]
async fn four_agents_run_every_one_of_2504_tasks_exactly_once() {
    let t = TestTable::new("fleet").await;
    let sheet = Sheet::read(&samples_2504(), &SheetOptions::default()).unwrap();
    let request = LoadRequest {
        step: "align".into(),
        script: r#"echo "$TASK_ID" >> "$OUT""#.into(),
        settings: SettingsChange::default(),
        replace: false,
        concurrency: 8,
    };
    load::load(&t.store, &load::prepare(request, sheet).unwrap(), &|_| {})
        .await
        .unwrap();
    let out = t.dir.path().join("ran.txt");
    let out_s = out.display().to_string();
    let mut agents: Vec<Agent> = (0..4)
        .map(|_| {
            Agent::spawn(
                &t,
                "align",
                &["--slots", "2", "--idle-timeout", "3s"],
                &[("OUT", &out_s)],
            )
        })
        .collect();
    for agent in &mut agents {
        let status = agent.wait(Duration::from_secs(600));
        assert!(status.success(), "{}", agent.stderr());
    }
    let s = &t.store.status(Some("align")).await.unwrap()[0];
    assert_eq!(
        (s.total, s.done, s.pending, s.running, s.failed),
        (2504, 2504, 0, 0, 0)
    );

    let ran = std::fs::read_to_string(&out).unwrap();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in ran.lines() {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), 2504, "every task ran");
    let twice: Vec<_> = seen.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "tasks ran more than once: {twice:?}");
    let sample = t.store.task("align", "HG00098").await.unwrap().unwrap();
    assert_eq!((sample.state, sample.attempt), (TaskState::Done, 1));
}
