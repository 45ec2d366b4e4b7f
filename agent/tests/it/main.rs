//! Integration tests of the agent against DynamoDB Local: the real binary
//! as separate processes, and the store's claim and fence directly.

/// Generates, for each case (an `async fn(TestStore)`), one test per
/// store: `case::dynamodb` and `case::sqlite`.
macro_rules! per_store {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn dynamodb() {
                    super::$case(testkit::TestStore::new(testkit::Kind::Dynamo, stringify!($case)).await).await;
                }

                #[tokio::test]
                async fn sqlite() {
                    super::$case(testkit::TestStore::new(testkit::Kind::Sqlite, stringify!($case)).await).await;
                }
            }
        )*
    };
}

mod support;

mod chaos;
mod concurrent_loads;
mod conformance;
mod deps_race;
mod ec2;
mod first_load;
mod host_faults;
mod library;
mod lifecycle;
mod many_agents;
mod outage;
mod partition;
mod retry_rules;
mod script_env;
mod spread;
mod stopping;
mod supervision;
mod task_paths;
mod workflow;
