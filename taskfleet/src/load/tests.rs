//! Unit tests of [`super::prepare`] and the batching of a load.

use std::path::Path;

use super::*;
use crate::sheet::SheetOptions;

fn prepare_sheet(text: &str) -> Result<PreparedLoad, LoadError> {
    let sheet = Sheet::parse(
        Path::new("s.csv"),
        text.as_bytes(),
        &SheetOptions::default(),
    )
    .unwrap();
    let request = LoadRequest {
        step: "qc".into(),
        script: "true".into(),
        settings: SettingsChange::default(),
        replace: false,
        concurrency: 1,
    };
    prepare(request, sheet)
}

#[test]
fn a_value_the_kernel_would_refuse_as_environment_is_refused_with_task_column_and_sizes() {
    let at_limit = "v".repeat(envrules::MAX_ENV_STRING_BYTES - "NOTES=".len() - 1);
    assert!(prepare_sheet(&format!("sample,notes\nA,{at_limit}\n")).is_ok());
    let err = prepare_sheet(&format!("sample,notes\nA,x\nB,{at_limit}v\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "s.csv:3: column 'notes': task 'B': NOTES=... takes 131073 bytes as an \
             environment string; the kernel allows at most 131072"
        ),
        "{err}"
    );
}

#[test]
fn a_row_over_the_environment_budget_is_refused() {
    let value = "v".repeat(100_000);
    let header: Vec<String> = (0..11).map(|i| format!("c{i:02}")).collect();
    let row: Vec<&str> = (0..11).map(|_| value.as_str()).collect();
    let text = format!("sample,{}\nA,{}\n", header.join(","), row.join(","));
    let err = prepare_sheet(&text).unwrap_err().to_string();
    assert!(
        err.starts_with("s.csv:2: task 'A': the row takes 1100160 bytes as environment"),
        "{err}"
    );
    assert!(err.contains("at most 1048576 are allowed"), "{err}");
}

#[test]
fn a_step_after_itself_or_after_a_bad_name_is_refused() {
    let sheet =
        || Sheet::parse(Path::new("s.csv"), b"sample\nA\n", &SheetOptions::default()).unwrap();
    let request = |after: &str| LoadRequest {
        step: "qc".into(),
        script: "true".into(),
        settings: SettingsChange {
            after: Some(vec![after.to_owned()]),
            ..SettingsChange::default()
        },
        replace: false,
        concurrency: 1,
    };
    let err = prepare(request("qc"), sheet()).unwrap_err().to_string();
    assert_eq!(
        err,
        "--after qc: a step cannot wait for itself; name the step whose tasks must be done first"
    );
    let err = prepare(request("a#b"), sheet()).unwrap_err().to_string();
    assert!(
        err.starts_with("--after 'a#b' is not a valid step name"),
        "{err}"
    );
    assert!(prepare(request("align"), sheet()).is_ok());
}

#[test]
fn a_step_after_more_steps_than_a_write_carries_is_refused() {
    use crate::transition::deps::MAX_AFTER;
    let sheet =
        || Sheet::parse(Path::new("s.csv"), b"sample\nA\n", &SheetOptions::default()).unwrap();
    let request = |n: usize| LoadRequest {
        step: "merge".into(),
        script: "true".into(),
        settings: SettingsChange {
            // One named twice: counted once.
            after: Some((0..n).chain([0]).map(|i| format!("s{i}")).collect()),
            ..SettingsChange::default()
        },
        replace: false,
        concurrency: 1,
    };
    assert!(prepare(request(MAX_AFTER), sheet()).is_ok());
    for n in [MAX_AFTER + 1, 60, 120] {
        let err = prepare(request(n), sheet()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "--after names {n} steps; a step can wait for at most {MAX_AFTER}: load a step that waits for some of them, and this one after it"
            )
        );
    }
}
