//! A sheet's header: column names as people write them, and the
//! environment variable each becomes.
//!
//! - Plain columns become upper-case shell identifiers ([`env_name`]).
//! - dsub task files name a column `--KIND NAME` (`--env SAMPLE_ID`,
//!   `--input VCF_FILE`, ...): the variable is `NAME` as written, and the
//!   kind is kept with the column.
//! - `--rename COLUMN=NAME` gives a column another variable: the way out
//!   for columns such as `path` or `user` that would change how the script
//!   runs.
//! - Empty header fields at the end (the 1000 Genomes panel file ends its
//!   header with two tabs) are ignored while no row has a value under them.

use std::collections::HashMap;

use super::{ErrFn, SheetError, env_name};
use crate::envrules;

/// dsub's column kinds.
pub const DSUB_KINDS: &[&str] = &[
    "env",
    "input",
    "input-recursive",
    "output",
    "output-recursive",
    "label",
];

/// One named column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The header field as written.
    pub header: String,
    /// The column's name: the header, or for a dsub column the name after
    /// its kind.
    pub name: String,
    /// The environment variable its values become.
    pub var: String,
    /// The dsub kind (`input`, `output-recursive`, ...), if any.
    pub kind: Option<String>,
}

/// The header's columns (trailing empty fields left out) and the number of
/// fields the header has, empty ones included.
pub fn parse(
    header: &csv::ByteRecord,
    line: u64,
    renames: &[(String, String)],
    err: &ErrFn<'_>,
) -> Result<(Vec<Column>, usize), SheetError> {
    let mut fields = Vec::with_capacity(header.len());
    for (i, field) in header.iter().enumerate() {
        let text = std::str::from_utf8(field).map_err(|_| {
            err(
                Some(line),
                None,
                format!(
                    "header field {} is not valid UTF-8; save the sheet as UTF-8",
                    i + 1
                ),
            )
        })?;
        fields.push(text.trim().to_owned());
    }
    let width = fields.len();
    let named = fields
        .iter()
        .rposition(|f| !f.is_empty())
        .map_or(0, |i| i + 1);
    if let Some(i) = fields[..named].iter().position(String::is_empty) {
        return Err(err(
            Some(line),
            None,
            format!("header field {} is empty; every column needs a name", i + 1),
        ));
    }
    fields.truncate(named);

    let mut columns = Vec::with_capacity(named);
    for header in fields {
        columns.push(column(header, line, err)?);
    }
    apply_renames(&mut columns, renames, line, err)?;

    let mut by_var: HashMap<String, &str> = HashMap::new();
    for col in &columns {
        if col.var.chars().all(|c| c == '_') {
            return Err(err(
                Some(line),
                Some(&col.header),
                format!(
                    "has no letters or digits, so it cannot name an environment variable; load it under a name with {}",
                    rename_hint(&col.header, "COLUMN_1")
                ),
            ));
        }
        if let Some(why) = envrules::refusal(&col.var) {
            return Err(err(
                Some(line),
                Some(&col.header),
                format!(
                    "would become the environment variable {}, {why}; load it under another name with {}",
                    col.var,
                    rename_hint(&col.name, &format!("SHEET_{}", col.var))
                ),
            ));
        }
        if let Some(other) = by_var.insert(col.var.clone(), &col.header) {
            return Err(err(
                Some(line),
                Some(&col.header),
                format!(
                    "and column '{other}' both become the environment variable {}; load one under another name with {}",
                    col.var,
                    rename_hint(&col.name, &format!("{}_2", col.var))
                ),
            ));
        }
    }
    Ok((columns, width))
}

/// A header field as a column: dsub's `--KIND NAME`, or a plain name.
fn column(header: String, line: u64, err: &ErrFn<'_>) -> Result<Column, SheetError> {
    let Some(rest) = header.strip_prefix("--") else {
        return Ok(Column {
            name: header.clone(),
            var: env_name(&header),
            kind: None,
            header,
        });
    };
    let (kind, name) = rest
        .split_once(char::is_whitespace)
        .map_or((rest, ""), |(k, n)| (k, n.trim()));
    if !DSUB_KINDS.contains(&kind) {
        return Err(err(
            Some(line),
            Some(&header),
            format!(
                "looks like a dsub column, but --{kind} is not one of dsub's kinds (--{}); a plain column name cannot start with '--'",
                DSUB_KINDS.join(", --")
            ),
        ));
    }
    let identifier = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier {
        return Err(err(
            Some(line),
            Some(&header),
            format!(
                "a dsub --{kind} column needs a variable name after the kind (letters, digits and '_'), e.g. '--{kind} SAMPLE_ID'"
            ),
        ));
    }
    Ok(Column {
        name: name.to_owned(),
        var: name.to_owned(),
        kind: Some(kind.to_owned()),
        header,
    })
}

/// `--rename COLUMN=NAME`: the column (by its name as written, or by the
/// variable it would become) gets the variable `NAME`.
fn apply_renames(
    columns: &mut [Column],
    renames: &[(String, String)],
    line: u64,
    err: &ErrFn<'_>,
) -> Result<(), SheetError> {
    for (from, to) in renames {
        let Some(col) = columns
            .iter_mut()
            .find(|c| c.name == *from || c.header == *from || c.var == env_name(from))
        else {
            let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
            return Err(err(
                Some(line),
                None,
                format!(
                    "--rename {from}={to}: there is no column '{from}'; the columns are: {}",
                    names.join(", ")
                ),
            ));
        };
        let var = env_name(to);
        if var.chars().all(|c| c == '_') {
            return Err(err(
                Some(line),
                None,
                format!("--rename {from}={to}: '{to}' has no letters or digits"),
            ));
        }
        col.var = var;
    }
    Ok(())
}

/// The `--rename` option that loads `column` as `var`, quoted for a shell
/// when it needs to be.
pub fn rename_hint(column: &str, var: &str) -> String {
    if column
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        format!("--rename {column}={var}")
    } else {
        format!("--rename '{}={var}'", column.replace('\'', r"'\''"))
    }
}
