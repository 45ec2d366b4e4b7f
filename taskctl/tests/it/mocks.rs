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
        first_load: None,
        after: Vec::new(),
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

// --- EC2: refusals moto cannot produce, and what a launch sends -----------

mod ec2 {
    use std::sync::{Arc, Mutex};

    use aws_sdk_ec2::Client;
    use aws_sdk_ec2::operation::run_instances::{RunInstancesError, RunInstancesOutput};
    use aws_sdk_ec2::types::{Instance, MarketType};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_types::error::ErrorMetadata;
    use taskfleet::fleet::FleetError;
    use taskfleet::fleet::launch::{LaunchRequest, Spot, run_instances};

    fn request() -> LaunchRequest {
        LaunchRequest {
            table: "cohort".into(),
            step: "align".into(),
            template: "taskfleet-align".into(),
            template_version: "$Latest".into(),
            count: 3,
            launch_id: "L1".into(),
            slots: 2,
            spot: None,
            instance_type: Some("c6i.large".into()),
            subnet: None,
            security_groups: vec![],
            first_place: 4,
        }
    }

    fn refusal(code: &'static str) -> RunInstancesError {
        RunInstancesError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("refused by the script")
                .build(),
        )
    }

    async fn launch_refused(code: &'static str) -> FleetError {
        let rule = mock!(Client::run_instances).then_error(move || refusal(code));
        let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&rule], |c| {
            c.retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
        });
        run_instances(&client, &request()).await.unwrap_err()
    }

    #[tokio::test]
    async fn the_vcpu_limit_and_no_capacity_are_named_with_what_to_do() {
        let err = launch_refused("VcpuLimitExceeded").await;
        assert!(matches!(err, FleetError::VcpuLimit { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("launching would exceed the account's vCPU limit for c6i.large"),
            "{err}"
        );
        assert!(err.to_string().contains("Service Quotas"), "{err}");

        let err = launch_refused("InsufficientInstanceCapacity").await;
        assert!(
            matches!(err, FleetError::InsufficientCapacity { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("EC2 has no capacity for c6i.large")
                && err
                    .to_string()
                    .contains("another --instance-type or --subnet"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_missing_permission_and_a_missing_template_say_what_to_do() {
        let err = launch_refused("UnauthorizedOperation").await;
        assert!(
            err.to_string()
                .starts_with("EC2 refused RunInstances for lack of permission")
                && err.to_string().contains("grant ec2:RunInstances"),
            "{err}"
        );
        let err = launch_refused("InvalidLaunchTemplateName.NotFoundException").await;
        assert_eq!(
            err.to_string(),
            "there is no launch template 'taskfleet-align' for step 'align'; create it with `taskctl template apply --step align`"
        );
        let err = launch_refused("IdempotentParameterMismatch").await;
        assert!(err.to_string().contains("launch id 'L1'"), "{err}");
    }

    #[tokio::test]
    async fn a_launch_asks_for_exactly_its_count_with_its_tags_token_and_spot_price() {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let rule = mock!(Client::run_instances)
            .match_requests(move |req| {
                *s.lock().unwrap() = Some(req.clone());
                true
            })
            .then_output(|| {
                RunInstancesOutput::builder()
                    .instances(Instance::builder().instance_id("i-1").build())
                    .build()
            });
        let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&rule]);
        let mut req = request();
        req.spot = Some(Spot {
            max_price: Some("0.12".into()),
        });
        req.subnet = Some("subnet-1".into());
        req.security_groups = vec!["sg-1".into()];
        assert_eq!(run_instances(&client, &req).await.unwrap(), ["i-1"]);

        let sent = seen.lock().unwrap().clone().unwrap();
        assert_eq!((sent.min_count(), sent.max_count()), (Some(3), Some(3)));
        assert_eq!(sent.client_token(), Some(req.client_token().as_str()));
        let template = sent.launch_template().unwrap();
        assert_eq!(
            (template.launch_template_name(), template.version()),
            (Some("taskfleet-align"), Some("$Latest"))
        );
        let market = sent.instance_market_options().unwrap();
        assert_eq!(market.market_type(), Some(&MarketType::Spot));
        assert_eq!(
            market.spot_options().and_then(|o| o.max_price()),
            Some("0.12")
        );
        assert_eq!(sent.subnet_id(), Some("subnet-1"));
        assert_eq!(sent.security_group_ids(), ["sg-1"]);
        let tags: Vec<(String, String)> = sent.tag_specifications()[0]
            .tags()
            .iter()
            .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
            .collect();
        for pair in [
            ("Name", "align"),
            ("taskfleet:table", "cohort"),
            ("taskfleet:step", "align"),
            ("taskfleet:launch-id", "L1"),
            ("taskfleet:slots", "2"),
            ("taskfleet:first-place", "4"),
        ] {
            assert!(
                tags.contains(&(pair.0.to_owned(), pair.1.to_owned())),
                "{pair:?} in {tags:?}"
            );
        }
    }
}
