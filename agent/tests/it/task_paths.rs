//! Every task gets its own work directory, script file and log, whatever
//! its id: ids that differ only in characters a file name cannot hold,
//! ids that look like `..`, ids longer than a file name may be.

use std::collections::BTreeSet;
use std::time::Duration;

use taskfleet::model::TaskState;
use taskfleet::store::SettingsChange;

use crate::support::{Agent, TestTable, task};

#[tokio::test]
async fn look_alike_climbing_and_very_long_ids_each_run_in_their_own_directory_with_their_own_log()
{
    let t = TestTable::new("paths").await;
    let long_id = format!("HG{}", "0123456789".repeat(100))
        .chars()
        .take(1000)
        .collect::<String>();
    let ids = ["NA12878/1", "NA12878_1", "..", long_id.as_str()];
    let sheet = format!("sample\n{}\n", ids.join("\n"));
    // A work directory shared with another task would already hold `seen`.
    let script = r#"[ ! -e seen ] || { echo "work directory already used"; exit 9; }
echo "$TASK_ID" > seen
echo "$TASK_ID"
pwd"#;
    let once = SettingsChange {
        max_attempts: Some(1),
        ..SettingsChange::default()
    };
    t.load_text("qc", script, &sheet, once).await;
    let mut agent = Agent::spawn(&t, "qc", &["--idle-timeout", "2s"], &[]);
    assert!(
        agent.wait(Duration::from_secs(60)).success(),
        "{}",
        agent.stderr()
    );

    let step_dir = t.dir.path().join("work").join("qc");
    let mut logs = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    for id in ids {
        let a = task(&t, "qc", id).await;
        let short: String = id.chars().take(20).collect();
        assert_eq!(
            a.state,
            TaskState::Done,
            "{short}...: {:?} {:?}",
            a.output_tail,
            a.history
        );
        let uri = a.history[0].log_uri.clone().expect("a log");
        let log = std::fs::read_to_string(uri.strip_prefix("file://").unwrap()).unwrap();
        let mut lines = log.lines();
        assert_eq!(
            lines.next(),
            Some(id),
            "the log holds this task's output only"
        );
        let pwd = lines.next().unwrap().to_owned();
        assert!(
            std::path::Path::new(&pwd).starts_with(&step_dir),
            "{short}... ran in {pwd}, outside {}",
            step_dir.display()
        );
        logs.insert(uri);
        dirs.insert(pwd);
    }
    assert_eq!((logs.len(), dirs.len()), (ids.len(), ids.len()));
}
