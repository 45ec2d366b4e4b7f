//! Every bad input gets one clear message naming file, line and column, and
//! leaves the table exactly as it was.

use crate::support::{Taskctl, TestTable};

/// Loads `content` (or a missing file when `None`) with `extra` arguments
/// into a table that already holds a step, and checks that the load fails
/// with a message containing `expected` and writes nothing.
async fn rejects(label: &str, content: Option<&[u8]>, extra: &[&str], expected: &str) {
    let t = TestTable::new(label).await;
    let good = t.file("good.csv", "sample,x\nA,1\nB,2\n");
    t.taskctl(&[
        "load",
        "--step",
        "existing",
        "--command",
        "true",
        good.to_str().unwrap(),
    ])
    .ok();
    let before = t.dump().await;
    assert!(!before.is_empty());

    let sheet = match content {
        Some(c) => t.file("sheet.csv", c),
        None => t.dir.path().join("missing.csv"),
    };
    let sheet_s = sheet.to_str().unwrap();
    let mut args = vec!["load", "--step", "align", "--command", "echo \"$SAMPLE\""];
    args.extend_from_slice(extra);
    args.push(sheet_s);
    let err = t.taskctl(&args).fails();
    let expected = expected.replace("{sheet}", sheet_s);
    assert!(err.contains(&expected), "expected {expected:?} in:\n{err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line of error, got:\n{err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(
        t.dump().await,
        before,
        "a rejected load must not write anything"
    );
}

#[tokio::test]
async fn a_missing_sheet_is_rejected() {
    rejects("missing", None, &[], "{sheet}: no such file").await;
}

#[tokio::test]
async fn an_empty_sheet_is_rejected() {
    rejects("empty", Some(b""), &[], "{sheet}: the sheet is empty").await;
}

#[tokio::test]
async fn a_sheet_with_only_a_header_is_rejected() {
    rejects(
        "header",
        Some(b"sample,x\n"),
        &[],
        "{sheet}: has a header but no rows",
    )
    .await;
}

#[tokio::test]
async fn duplicate_ids_are_rejected_with_both_lines() {
    rejects(
        "dup",
        Some(b"sample,x\nA,1\nB,2\nA,3\n"),
        &[],
        "{sheet}:4: column 'sample': the task id 'A' is already used on line 2",
    )
    .await;
}

#[tokio::test]
async fn an_empty_id_is_rejected() {
    rejects(
        "emptyid",
        Some(b"sample,x\nA,1\n,2\n"),
        &[],
        "{sheet}:3: column 'sample': the task id is empty",
    )
    .await;
}

#[tokio::test]
async fn a_ragged_row_is_rejected() {
    rejects(
        "ragged",
        Some(b"sample,x\nA,1\nB\n"),
        &[],
        "{sheet}:3: has 1 fields but the header has 2",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_id_column_is_rejected_with_the_columns_there_are() {
    rejects(
        "idcol",
        Some(b"sample,x\nA,1\n"),
        &["--id-column", "sample_id"],
        "{sheet}:1: there is no id column 'sample_id'; the columns are: sample, x",
    )
    .await;
}

#[tokio::test]
async fn columns_that_collide_as_variables_are_rejected() {
    rejects(
        "collide",
        Some(b"sample,fastq-1,fastq_1\nA,1,2\n"),
        &[],
        "{sheet}:1: column 'fastq_1': and column 'fastq-1' both become the environment variable FASTQ_1",
    )
    .await;
}

#[tokio::test]
async fn non_utf8_bytes_are_rejected() {
    rejects(
        "utf8",
        Some(b"sample,x\nA,1\nB,caf\xe9\n"),
        &[],
        "{sheet}:3: column 'x': is not valid UTF-8",
    )
    .await;
}

#[tokio::test]
async fn a_task_over_the_item_size_limit_is_rejected() {
    // Three values of 127 KiB: each fits in an environment string, the
    // three together do not fit in an item.
    let mut sheet = b"sample,a,b,c\nA,1,2,3\nB".to_vec();
    for _ in 0..3 {
        sheet.push(b',');
        sheet.extend(std::iter::repeat_n(b'n', 127 * 1024));
    }
    sheet.push(b'\n');
    rejects(
        "size",
        Some(&sheet),
        &[],
        "{sheet}:3: task 'B' would take 382 KB; a task may take at most 352 KB at load time",
    )
    .await;
}

#[tokio::test]
async fn an_unsafe_step_name_is_rejected() {
    let t = TestTable::new("stepname").await;
    let sheet = t.file("s.csv", "sample\nA\n");
    let before = t.dump().await;
    let err = t
        .taskctl(&[
            "load",
            "--step",
            "align;rm -rf /",
            "--command",
            "true",
            sheet.to_str().unwrap(),
        ])
        .fails();
    assert!(
        err.contains("'align;rm -rf /' is not a valid step name"),
        "{err}"
    );
    assert_eq!(t.dump().await, before);
}

#[tokio::test]
async fn a_column_that_would_set_bash_options_is_rejected() {
    // SHELLOPTS=noexec would turn every script into a no-op recorded done.
    rejects(
        "shellopts",
        Some(b"sample,shellopts\nA,noexec\n"),
        &[],
        "{sheet}:1: column 'shellopts': would become the environment variable SHELLOPTS, \
         which bash reads",
    )
    .await;
}

#[tokio::test]
async fn a_column_that_would_run_code_through_the_xtrace_prompt_is_rejected() {
    // SHELLOPTS=xtrace with PS4='$(cmd)' runs cmd before every line.
    rejects(
        "ps4",
        Some(b"sample,ps4,shellopts\nA,$(touch /tmp/taskfleet-ps4-ran),xtrace\n"),
        &[],
        "{sheet}:1: column 'ps4': would become the environment variable PS4, which bash reads",
    )
    .await;
}

#[tokio::test]
async fn a_column_named_like_an_aws_credential_is_rejected() {
    rejects(
        "awscol",
        Some(b"sample,aws secret access key\nA,x\n"),
        &[],
        "{sheet}:1: column 'aws secret access key': would become the environment variable \
         AWS_SECRET_ACCESS_KEY",
    )
    .await;
}

#[tokio::test]
async fn a_value_over_the_kernels_limit_for_one_environment_string_is_rejected() {
    // 130 KiB: under the item size limit, over the 128 KiB the kernel
    // allows one NAME=value string, so execve would fail on every attempt.
    let mut sheet = b"sample,notes\nA,short\nB,".to_vec();
    sheet.extend(std::iter::repeat_n(b'n', 130 * 1024));
    sheet.push(b'\n');
    rejects(
        "argmax",
        Some(&sheet),
        &[],
        "{sheet}:3: column 'notes': task 'B': NOTES=... takes 133127 bytes as an environment \
         string; the kernel allows at most 131072",
    )
    .await;
}
