//! Paths no emulator produces (DynamoDB Local never throttles and never
//! leaves items unprocessed), driven by scripted SDK responses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::batch_write_item::{BatchWriteItemError, BatchWriteItemOutput};
use aws_sdk_dynamodb::operation::update_item::UpdateItemOutput;
use aws_sdk_dynamodb::types::error::ProvisionedThroughputExceededException;
use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};
use taskfleet::model::{NewTask, StepMeta, StepSettings};
use taskfleet::retry::RetryPolicy;
use taskfleet::store::{TaskStore, new_pending_task};
use taskfleet::time::Timestamp;
use taskfleet::{DynamoStore, StoreError, schema};

const TABLE: &str = "mocked";

fn meta() -> StepMeta {
    StepMeta {
        step: "align".into(),
        shards: 1,
        settings: StepSettings::default(),
        created_at: Timestamp::from_millis(0),
        updated_at: Timestamp::from_millis(0),
    }
}

fn tasks(n: usize) -> Vec<taskfleet::Task> {
    (0..n)
        .map(|i| {
            let row = NewTask {
                task_id: format!("S{i:03}"),
                line: i as u64 + 2,
                env: std::collections::BTreeMap::default(),
            };
            new_pending_task("align", "true", "d", &row, Timestamp::from_millis(0))
        })
        .collect()
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
    }
}

#[tokio::test]
async fn unprocessed_items_and_throttling_are_retried_until_every_task_is_written_exactly_once() {
    let written: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let calls = Arc::new(Mutex::new(0usize));
    let (w, c) = (written.clone(), calls.clone());
    let batch_rule = mock!(Client::batch_write_item).then_compute_response(move |req| {
        let call = {
            let mut c = c.lock().unwrap();
            *c += 1;
            *c
        };
        // Every third request is throttled outright.
        if call % 3 == 1 {
            return MockResponse::Error(
                BatchWriteItemError::ProvisionedThroughputExceededException(
                    ProvisionedThroughputExceededException::builder()
                        .message("slow down")
                        .build(),
                ),
            );
        }
        // The others write only their first two items.
        let requests = req.request_items().unwrap()[TABLE].clone();
        let (done, rest) = requests.split_at(requests.len().min(2));
        for r in done {
            let id = r.put_request().unwrap().item()["sk"]
                .as_s()
                .unwrap()
                .clone();
            *w.lock().unwrap().entry(id).or_default() += 1;
        }
        let mut out = BatchWriteItemOutput::builder();
        if !rest.is_empty() {
            out = out.unprocessed_items(TABLE, rest.to_vec());
        }
        MockResponse::Output(out.build())
    });
    // The counter updates: which shard's counter, and by how much.
    let counted: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let counted_in = counted.clone();
    let counter_rule = mock!(Client::update_item).then_compute_output(move |req| {
        let shard = req.key().unwrap()["sk"].as_s().unwrap().clone();
        let by = req
            .expression_attribute_values()
            .unwrap()
            .values()
            .filter_map(|v| v.as_n().ok()?.parse::<i64>().ok())
            .sum();
        counted_in.lock().unwrap().push((shard, by));
        UpdateItemOutput::builder().build()
    });
    let client = mock_client!(
        aws_sdk_dynamodb,
        RuleMode::MatchAny,
        [&batch_rule, &counter_rule],
        |c| { c.retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled()) }
    );
    let store = DynamoStore::new(client, TABLE, "mock").with_retry(fast_retry(100));

    let all = tasks(30);
    for chunk in all.chunks(25) {
        store.insert_new(&meta(), chunk).await.unwrap();
    }
    let written = written.lock().unwrap();
    assert_eq!(written.len(), 30, "every task written");
    assert!(
        written.values().all(|&n| n == 1),
        "no task written twice: {written:?}"
    );
    assert!(
        *calls.lock().unwrap() > 30 / 2,
        "the unprocessed path was exercised"
    );
    assert_eq!(counter_rule.num_calls(), 2, "one counter update per batch");
    // Each batch counts what it wrote, once it is all written, on the
    // counter of the one shard a one-shard step has.
    assert_eq!(
        *counted.lock().unwrap(),
        [(schema::shard_sk(0), 25), (schema::shard_sk(0), 5)]
    );
}

#[tokio::test]
async fn a_batch_still_throttled_after_the_retry_budget_is_reported_not_lost() {
    let batch_rule = mock!(Client::batch_write_item).then_error(|| {
        BatchWriteItemError::ProvisionedThroughputExceededException(
            ProvisionedThroughputExceededException::builder()
                .message("slow down")
                .build(),
        )
    });
    let counter_rule =
        mock!(Client::update_item).then_output(|| UpdateItemOutput::builder().build());
    let client = mock_client!(
        aws_sdk_dynamodb,
        RuleMode::MatchAny,
        [&batch_rule, &counter_rule],
        |c| { c.retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled()) }
    );
    let store = DynamoStore::new(client, TABLE, "mock").with_retry(fast_retry(4));
    let err = store.insert_new(&meta(), &tasks(5)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::RetriesExhausted {
                attempts: 4,
                remaining: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("run the same command again"),
        "{err}"
    );
    assert_eq!(batch_rule.num_calls(), 4);
    assert_eq!(
        counter_rule.num_calls(),
        0,
        "nothing counted that was not written"
    );
}
