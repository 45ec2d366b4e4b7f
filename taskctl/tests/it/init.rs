use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};

use crate::support::{TestTable, taskctl_with, unique_table};

#[test]
fn init_twice_creates_then_reports_the_table_matches() {
    let name = unique_table("init");
    let endpoint = crate::support::endpoint();
    let env = [("TASKFLEET_ENDPOINT", endpoint.as_str())];
    let first = taskctl_with(&["--table", &name, "init"], &env);
    first.ok();
    assert!(
        first.stdout().contains(&format!("created table '{name}'")),
        "{}",
        first.stdout()
    );
    let second = taskctl_with(&["--table", &name, "init"], &env);
    second.ok();
    assert!(
        second.stdout().contains(&format!(
            "table '{name}' already exists and matches the schema"
        )),
        "{}",
        second.stdout()
    );
}

#[tokio::test]
async fn init_on_a_foreign_table_says_what_differs() {
    let t = TestTable::new("foreign-src").await;
    let name = unique_table("foreign");
    let key = |n: &str, k| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(k)
            .build()
            .unwrap()
    };
    t.store
        .client()
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(key("id", KeyType::Hash))
        .send()
        .await
        .unwrap();
    let endpoint = crate::support::endpoint();
    let err = taskctl_with(
        &["--table", &name, "init"],
        &[("TASKFLEET_ENDPOINT", endpoint.as_str())],
    )
    .fails();
    assert!(
        err.contains(&format!(
            "table '{name}' does not match the task table schema"
        )),
        "{err}"
    );
    assert!(
        err.contains("key schema is [id (HASH)], expected [pk (HASH), sk (RANGE)]"),
        "{err}"
    );
    assert!(err.contains("index 'by_state' is missing"), "{err}");
}
