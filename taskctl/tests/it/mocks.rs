//! Paths no emulator produces (DynamoDB Local never throttles and never
//! leaves items unprocessed), driven by scripted SDK responses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::types::CancellationReason;
use aws_sdk_dynamodb::types::error::{
    ProvisionedThroughputExceededException, TransactionCanceledException,
};
use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};
use taskfleet::model::{NewTask, StepMeta, StepSettings};
use taskfleet::retry::RetryPolicy;
use taskfleet::store::{TaskStore, new_pending_task};
use taskfleet::time::Timestamp;
use taskfleet::{DynamoStore, StoreError};

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

/// The `loaded` delta a transaction's counter update adds.
fn loaded_delta(
    req: &aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput,
) -> i64 {
    let update = req
        .transact_items()
        .iter()
        .find_map(|i| i.update())
        .expect("a load transaction carries its counter update");
    let name = update
        .expression_attribute_names()
        .unwrap()
        .iter()
        .find(|(_, v)| v.as_str() == "loaded")
        .map(|(k, _)| k.clone())
        .expect("the counter update adds to loaded");
    let value = update
        .update_expression()
        .split(", ")
        .find_map(|part| {
            part.strip_prefix("ADD ")
                .unwrap_or(part)
                .strip_prefix(&format!("{name} "))
        })
        .unwrap()
        .to_owned();
    update.expression_attribute_values().unwrap()[&value]
        .as_n()
        .unwrap()
        .parse()
        .unwrap()
}

fn put_ids(
    req: &aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput,
) -> Vec<String> {
    req.transact_items()
        .iter()
        .filter_map(|i| i.put())
        .map(|p| p.item()["sk"].as_s().unwrap().clone())
        .collect()
}

fn cancelled(codes: &[&str]) -> TransactWriteItemsError {
    TransactWriteItemsError::TransactionCanceledException(
        TransactionCanceledException::builder()
            .message("Transaction cancelled")
            .set_cancellation_reasons(Some(
                codes
                    .iter()
                    .map(|c| CancellationReason::builder().code(*c).build())
                    .collect(),
            ))
            .build(),
    )
}

#[tokio::test]
async fn throttled_and_conflicting_load_transactions_are_retried_until_every_task_is_counted_once()
{
    let written: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counted = Arc::new(Mutex::new(0i64));
    let calls = Arc::new(Mutex::new(0usize));
    let (w, k, c) = (written.clone(), counted.clone(), calls.clone());
    let rule = mock!(Client::transact_write_items).then_compute_response(move |req| {
        let call = {
            let mut c = c.lock().unwrap();
            *c += 1;
            *c
        };
        let ids = put_ids(req);
        match call % 3 {
            // Throttled outright.
            1 => MockResponse::Error(
                TransactWriteItemsError::ProvisionedThroughputExceededException(
                    ProvisionedThroughputExceededException::builder()
                        .message("slow down")
                        .build(),
                ),
            ),
            // In conflict with another transaction on one item.
            2 => {
                let mut codes = vec!["None"; ids.len() + 1];
                codes[0] = "TransactionConflict";
                MockResponse::Error(cancelled(&codes))
            }
            _ => {
                for id in ids {
                    *w.lock().unwrap().entry(id).or_default() += 1;
                }
                *k.lock().unwrap() += loaded_delta(req);
                MockResponse::Output(TransactWriteItemsOutput::builder().build())
            }
        }
    });
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule], |c| {
        c.retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
    });
    let store = DynamoStore::new(client, TABLE, "mock").with_retry(fast_retry(100));

    let all = tasks(150);
    let mut inserted = 0;
    for chunk in all.chunks(99) {
        let out = store.insert(&meta(), chunk).await.unwrap();
        assert!(out.existing.is_empty());
        inserted += out.inserted;
    }
    let written = written.lock().unwrap();
    assert_eq!((inserted, written.len()), (150, 150), "every task written");
    assert!(
        written.values().all(|&n| n == 1),
        "no task written twice: {written:?}"
    );
    assert_eq!(
        *counted.lock().unwrap(),
        150,
        "counted once, with the tasks"
    );
    assert_eq!(
        rule.num_calls(),
        6,
        "two refused tries before each of two transactions"
    );
}

#[tokio::test]
async fn tasks_that_exist_leave_the_batch_and_are_not_counted() {
    let counted = Arc::new(Mutex::new(Vec::new()));
    let k = counted.clone();
    let rule = mock!(Client::transact_write_items).then_compute_response(move |req| {
        let ids = put_ids(req);
        // S000 and S002 exist (loaded by someone else).
        if ids.iter().any(|id| id == "S000" || id == "S002") {
            let mut codes: Vec<&str> = ids
                .iter()
                .map(|id| {
                    if id == "S000" || id == "S002" {
                        "ConditionalCheckFailed"
                    } else {
                        "None"
                    }
                })
                .collect();
            codes.push("None");
            return MockResponse::Error(cancelled(&codes));
        }
        k.lock().unwrap().push((ids, loaded_delta(req)));
        MockResponse::Output(TransactWriteItemsOutput::builder().build())
    });
    let get = mock!(Client::get_item).then_compute_response(|req| {
        let mut task = tasks(3).remove(0);
        task.task_id = req.key().unwrap()["sk"].as_s().unwrap().clone();
        task.state = taskfleet::model::TaskState::Done;
        let item = serde_dynamo::to_item(&task).unwrap();
        MockResponse::Output(GetItemOutput::builder().set_item(Some(item)).build())
    });
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule, &get], |c| {
        c.retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
    });
    let store = DynamoStore::new(client, TABLE, "mock").with_retry(fast_retry(4));
    let out = store.insert(&meta(), &tasks(5)).await.unwrap();
    assert_eq!(out.inserted, 3);
    let mut existing: Vec<_> = out
        .existing
        .iter()
        .map(|t| (t.task_id.as_str(), t.state))
        .collect();
    existing.sort_unstable();
    assert_eq!(
        existing,
        [
            ("S000", taskfleet::model::TaskState::Done),
            ("S002", taskfleet::model::TaskState::Done)
        ]
    );
    assert_eq!(
        *counted.lock().unwrap(),
        [(
            vec!["S001".to_owned(), "S003".to_owned(), "S004".to_owned()],
            3
        )]
    );
}

#[tokio::test]
async fn a_batch_still_throttled_after_the_retry_budget_is_reported_not_lost() {
    let rule = mock!(Client::transact_write_items).then_error(|| {
        TransactWriteItemsError::ProvisionedThroughputExceededException(
            ProvisionedThroughputExceededException::builder()
                .message("slow down")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule], |c| {
        c.retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
    });
    let store = DynamoStore::new(client, TABLE, "mock").with_retry(fast_retry(4));
    let err = store.insert(&meta(), &tasks(5)).await.unwrap_err();
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
    assert_eq!(rule.num_calls(), 4);
}
