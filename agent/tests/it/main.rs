//! Integration tests of the agent against DynamoDB Local: the real binary
//! as separate processes, and the store's claim and fence directly.

mod support;

mod chaos;
mod concurrent_loads;
mod conformance;
mod host_faults;
mod library;
mod lifecycle;
mod many_agents;
mod outage;
mod partition;
mod script_env;
mod stopping;
mod supervision;
mod task_paths;
