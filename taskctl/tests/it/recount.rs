//! `taskctl recount`: a counter that drifted is shown by `status` and
//! corrected from the tasks themselves.

use aws_sdk_dynamodb::types::AttributeValue;
use taskfleet::schema;
use taskfleet::store::{SettingsChange, TaskStore};

use crate::support::{Taskctl, TestTable};

#[tokio::test]
async fn recount_finds_and_corrects_a_drifted_counter_and_says_what_it_did() {
    let t = TestTable::new("recount").await;
    t.load_generated("qc", "true", 50, SettingsChange::default())
        .await;
    let clean = t.taskctl(&["recount", "--step", "qc"]);
    assert!(
        clean.ok().stdout().contains("agree with the tasks"),
        "{}",
        clean.stdout()
    );

    // Counters as a writer of an older version could leave them: `done`
    // counts more tasks than were loaded, which `status` must not show as
    // more than 100%.
    let shard = schema::shard_of("S0000007", 16);
    t.store
        .client()
        .update_item()
        .table_name(&t.name)
        .key("pk", AttributeValue::S(schema::counts_pk("qc")))
        .key("sk", AttributeValue::S(schema::shard_sk(shard)))
        .update_expression("ADD done :n")
        .expression_attribute_values(":n", AttributeValue::N("60".into()))
        .send()
        .await
        .unwrap();
    let status = t.taskctl(&["status"]);
    assert!(
        status.ok().stdout().contains("taskctl recount --step qc"),
        "{}",
        status.stdout()
    );
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert!(s.counts_drift && s.percent_done <= 100.0, "{s:?}");
    assert_ne!(
        s.remaining(),
        0,
        "a watch must not end on counts that drift"
    );

    let dry = t.taskctl(&["recount", "--step", "qc", "--dry-run"]);
    assert!(
        dry.ok().stdout().contains(&format!(
            "would correct qc shard {shard:03}: done was 60, the tasks say 0"
        )),
        "{}",
        dry.stdout()
    );
    assert_eq!(
        t.store.status(Some("qc")).await.unwrap()[0].done,
        60,
        "a dry run writes nothing"
    );

    let fixed = t.taskctl(&["recount", "--step", "qc", "--json"]);
    let json = fixed.ok().json();
    assert_eq!(json.as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json[0]["counter"], "done");
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!(
        (s.total, s.pending, s.done, s.counts_drift),
        (50, 50, 0, false)
    );
}
