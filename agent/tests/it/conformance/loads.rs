//! The record each load keeps beside its step: kept whole, read newest
//! first, bounded by the limit asked for, and separate per step.

use taskfleet::model::{GitState, LoadRecord};
use taskfleet::store::TaskStore;
use taskfleet::time::Timestamp;
use testkit::{TestStore, generated_sheet, load_text};

use super::settings;

per_store!(load_records_are_kept_per_step_newest_first);

fn record(at: i64, sheet: &str) -> LoadRecord {
    LoadRecord {
        at: Timestamp::from_millis(at),
        user: "ana".into(),
        host: "login-1".into(),
        command: vec![
            "taskctl".into(),
            "load".into(),
            "--step".into(),
            "qc".into(),
        ],
        sheet: sheet.into(),
        sheet_sha256: format!("{at:064x}"),
        rows: 60,
        loaded: 60,
        skipped_existing: 0,
        replaced: 0,
        script_file: Some("/work/qc.sh".into()),
        script_sha256: "ab".repeat(32),
        git: Some(GitState {
            commit: "c".repeat(40),
            path: "pipelines/qc.sh".into(),
            tracked: true,
            dirty: at % 2 == 0,
        }),
    }
}

async fn load_records_are_kept_per_step_newest_first(t: TestStore) {
    load_text(&t.store, "qc", "true", &generated_sheet(3), settings(3, 60)).await;
    load_text(
        &t.store,
        "call",
        "true",
        &generated_sheet(3),
        settings(3, 60),
    )
    .await;
    assert!(t.store.loads("qc", 20).await.unwrap().is_empty());
    // Two in the same millisecond both stay.
    let records = [
        record(1_000, "a.csv"),
        record(3_000, "c.csv"),
        record(2_000, "b.csv"),
        record(3_000, "d.csv"),
    ];
    for r in &records {
        t.store.record_load("qc", r).await.unwrap();
    }
    t.store
        .record_load("call", &record(5_000, "other.csv"))
        .await
        .unwrap();
    let got = t.store.loads("qc", 20).await.unwrap();
    assert_eq!(got.len(), 4, "{got:?}");
    let times: Vec<i64> = got.iter().map(|r| r.at.as_millis()).collect();
    assert_eq!(times, [3_000, 3_000, 2_000, 1_000]);
    let mut newest: Vec<&str> = got[..2].iter().map(|r| r.sheet.as_str()).collect();
    newest.sort_unstable();
    assert_eq!(newest, ["c.csv", "d.csv"]);
    assert_eq!(got[3], records[0], "a record comes back whole");
    let two = t.store.loads("qc", 2).await.unwrap();
    assert_eq!(two.len(), 2);
    assert!(two.iter().all(|r| r.at.as_millis() == 3_000));
    let other = t.store.loads("call", 20).await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].sheet, "other.csv");
    // The step list is not disturbed by load records.
    let steps: Vec<String> = t
        .store
        .status(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(steps, ["call", "qc"]);
}
