//! Sample sheets: CSV or TSV with a header row, one task per row.
//!
//! [`Sheet::read`] validates the whole file before anything is written:
//! the caller gets either a sheet whose every row makes a valid task, or one
//! [`SheetError`] naming the file, the line and the column. Values are data:
//! they become environment variables of the task and never script text,
//! and no column may become a variable that changes how the script runs
//! ([`crate::envrules`]).
//!
//! Sheets as people have them are read too: the 1000 Genomes panel's
//! trailing empty header fields and dsub's `--KIND NAME` columns
//! ([`header`]), sequencer sheets with `[Section]`s ([`sections`]), ids
//! made of several columns or of row numbers ([`ids`]), and columns loaded
//! under another variable name (`--rename`).

mod header;
mod ids;
mod sections;

pub use header::{Column, DSUB_KINDS};
pub use ids::SEPARATOR as ID_SEPARATOR;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::model::NewTask;
use crate::schema::MAX_TASK_ID_BYTES;
use ids::IdSource;

/// Field separator of a sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated.
    Csv,
    /// Tab-separated.
    Tsv,
}

impl Format {
    /// `.tsv`/`.tab`/`.txt` and `.csv` decide by extension; otherwise the
    /// header line decides (more tabs than commas means TSV).
    pub fn detect(path: &Path, bytes: &[u8]) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("tsv" | "tab") => Format::Tsv,
            Some("csv") => Format::Csv,
            _ => {
                let header = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
                let tabs = header.iter().filter(|&&b| b == b'\t').count();
                let commas = header.iter().filter(|&&b| b == b',').count();
                if tabs > commas {
                    Format::Tsv
                } else {
                    Format::Csv
                }
            }
        }
    }

    fn delimiter(self) -> u8 {
        match self {
            Format::Csv => b',',
            Format::Tsv => b'\t',
        }
    }
}

/// What is wrong with a sheet, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SheetError {
    /// The sheet.
    pub path: PathBuf,
    /// 1-based line, when the problem is on one.
    pub line: Option<u64>,
    /// The column concerned, when there is one.
    pub column: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for SheetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path == Path::new("-") {
            write!(f, "standard input")?;
        } else {
            write!(f, "{}", self.path.display())?;
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(col) = &self.column {
            write!(f, ": column '{col}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SheetError {}

/// How to read a sheet.
#[derive(Debug, Clone, Default)]
pub struct SheetOptions {
    /// The columns whose values, joined with [`ID_SEPARATOR`], are the task
    /// id; the first column if empty.
    pub id_columns: Vec<String>,
    /// Number the rows (1, 2, ...) instead of taking ids from columns.
    pub row_ids: bool,
    /// Separator; detected if `None`.
    pub format: Option<Format>,
    /// The `[Section]` whose table to load, in a sheet with sections.
    pub section: Option<String>,
    /// Column (as written, or its variable) to the variable it becomes
    /// instead.
    pub renames: Vec<(String, String)>,
}

/// A validated sheet.
#[derive(Debug, Clone)]
pub struct Sheet {
    /// The file it came from (`-`: standard input).
    pub path: PathBuf,
    /// The column names (a dsub column's name is the one after its kind).
    pub columns: Vec<String>,
    /// Environment variable name of each column, in column order.
    pub env_names: Vec<String>,
    /// Each column in full: header as written, variable, dsub kind.
    pub column_info: Vec<Column>,
    /// Where ids come from: a column's name, several joined with ',', or
    /// `(row number)`.
    pub id_column: String,
    /// One task per row, in file order.
    pub tasks: Vec<NewTask>,
    /// SHA-256 of the sheet's bytes, hex.
    pub sha256: String,
}

/// An environment variable name for a column: upper case, anything outside
/// `[A-Z0-9_]` becomes `_`, and a leading digit gets a `_` in front.
pub fn env_name(column: &str) -> String {
    let mut out: String = column
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

impl Sheet {
    /// Reads and validates the sheet at `path`.
    pub fn read(path: &Path, options: &SheetOptions) -> Result<Self, SheetError> {
        let bytes = std::fs::read(path).map_err(|e| SheetError {
            path: path.to_owned(),
            line: None,
            column: None,
            message: match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_owned(),
                _ => format!("cannot read it: {e}"),
            },
        })?;
        Self::parse(path, &bytes, options)
    }

    /// Validates sheet content already in memory; `path` is for messages.
    pub fn parse(path: &Path, bytes: &[u8], options: &SheetOptions) -> Result<Self, SheetError> {
        let err = |line: Option<u64>, column: Option<&str>, message: String| SheetError {
            path: path.to_owned(),
            line,
            column: column.map(str::to_owned),
            message,
        };
        let sha256 = crate::fleet::hex(&Sha256::digest(bytes));
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(err(None, None, EMPTY.into()));
        }
        let (start, end) = table_bounds(bytes, options, &err)?;
        let table = &bytes[start..end];
        let format = options
            .format
            .unwrap_or_else(|| Format::detect(path, table));
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(format.delimiter())
            .has_headers(false)
            .flexible(true)
            .from_reader(table);
        let mut lines = LineCounter::new(bytes);
        let mut line_of = |record: &csv::ByteRecord| {
            lines.line_at(start as u64 + record.position().map_or(0, csv::Position::byte))
        };

        let mut records = reader.byte_records();
        let header = first_record(&mut records, &err)?;
        let header_line = line_of(&header);
        let (column_info, width) = header::parse(&header, header_line, &options.renames, &err)?;
        let source = id_source(&column_info, options, header_line, &err)?;
        let id_column = source.describe(&column_info);
        let env_names: Vec<String> = column_info.iter().map(|c| c.var.clone()).collect();

        let mut tasks = Vec::new();
        let mut first_line_of: HashMap<String, u64> = HashMap::new();
        let mut collision: Option<(u64, String, u64)> = None;
        for record in records {
            let record = record.map_err(|e| {
                err(
                    e.position().map(csv::Position::line),
                    None,
                    format!("cannot parse the row: {e}"),
                )
            })?;
            let line = line_of(&record);
            if is_blank(&record) {
                continue;
            }
            let values = row_values(&record, line, &column_info, width, &err)?;
            let id = match &source {
                IdSource::RowNumber => (tasks.len() + 1).to_string(),
                IdSource::Columns(list) => ids::join(list, &values),
            };
            check_id(&id, line, &id_column, &err)?;
            if let Some(first) = first_line_of.insert(id.clone(), line)
                && collision.is_none()
            {
                collision = Some((line, id.clone(), first));
            }
            let env = env_names
                .iter()
                .zip(&values)
                .map(|(k, v)| (k.clone(), (*v).to_owned()))
                .collect();
            tasks.push(NewTask {
                task_id: id,
                line,
                env,
            });
        }
        if let Some((line, id, first)) = collision {
            let hint = collision_hint(&column_info, &tasks);
            return Err(err(
                Some(line),
                Some(&id_column),
                format!(
                    "the task id '{id}' is already used on line {first}; ids must be unique{hint}"
                ),
            ));
        }
        if tasks.is_empty() {
            return Err(err(
                None,
                None,
                "has a header but no rows; add one row per task".into(),
            ));
        }
        Ok(Sheet {
            path: path.to_owned(),
            columns: column_info.iter().map(|c| c.name.clone()).collect(),
            env_names,
            column_info,
            id_column,
            tasks,
            sha256,
        })
    }

    /// Each variable whose column is written otherwise, and that column's
    /// header as written (`--input VCF_FILE`, `Sample Name`): what `show`
    /// prints beside a task's variables.
    pub fn origins(&self) -> BTreeMap<String, String> {
        self.column_info
            .iter()
            .filter(|c| c.header != c.var)
            .map(|c| (c.var.clone(), c.header.clone()))
            .collect()
    }
}

/// Where the table to read is: a sheet with [Section]s has only the chosen
/// section's table read.
fn table_bounds(
    bytes: &[u8],
    options: &SheetOptions,
    err: &ErrFn<'_>,
) -> Result<(usize, usize), SheetError> {
    match sections::find(bytes) {
        Some(found) => {
            let section = sections::choose(&found, options.section.as_deref(), err)?;
            Ok((section.start, section.end))
        }
        None if options.section.is_some() => Err(err(
            None,
            None,
            "has no [Section] lines; --section is for sheets with sections, such as Illumina's"
                .into(),
        )),
        None => Ok((0, bytes.len())),
    }
}

/// What an empty sheet is told.
const EMPTY: &str = "the sheet is empty: expected a header row and one row per task";

/// The first record that is not blank: the header.
fn first_record(
    records: &mut csv::ByteRecordsIter<'_, &[u8]>,
    err: &ErrFn<'_>,
) -> Result<csv::ByteRecord, SheetError> {
    for record in records.by_ref() {
        match record {
            Ok(h) if is_blank(&h) => {}
            Ok(h) => return Ok(h),
            Err(e) => {
                return Err(err(
                    e.position().map(csv::Position::line),
                    None,
                    format!("cannot parse the header: {e}"),
                ));
            }
        }
    }
    Err(err(None, None, EMPTY.into()))
}

/// Whether every field of a record is empty (a blank line, or one of only
/// commas as sequencer sheets pad them).
fn is_blank(record: &csv::ByteRecord) -> bool {
    record.iter().all(|f| f.trim_ascii().is_empty())
}

/// Where ids come from, by the options.
fn id_source(
    columns: &[Column],
    options: &SheetOptions,
    line: u64,
    err: &ErrFn<'_>,
) -> Result<IdSource, SheetError> {
    if options.row_ids {
        if !options.id_columns.is_empty() {
            return Err(err(
                Some(line),
                None,
                "give --id-column or --row-ids, not both".into(),
            ));
        }
        return Ok(IdSource::RowNumber);
    }
    if options.id_columns.is_empty() {
        return Ok(IdSource::Columns(vec![0]));
    }
    let mut list = Vec::new();
    for wanted in &options.id_columns {
        let found = columns
            .iter()
            .position(|c| c.name == *wanted || c.header == *wanted || c.var == *wanted)
            .ok_or_else(|| {
                err(
                    Some(line),
                    None,
                    format!(
                        "there is no id column '{wanted}'; the columns are: {}",
                        columns
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
        list.push(found);
    }
    Ok(IdSource::Columns(list))
}

/// "; the columns a,b together are unique: --id-column a,b", when some
/// set of at most three columns is.
fn collision_hint(columns: &[Column], tasks: &[NewTask]) -> String {
    if tasks.len() > ids::MAX_ROWS_SEARCHED {
        return String::new();
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| columns.iter().map(|c| t.env[&c.var].clone()).collect())
        .collect();
    match ids::unique_columns(columns.len(), &rows) {
        Some(set) => {
            let names: Vec<&str> = set.iter().map(|&i| columns[i].name.as_str()).collect();
            let joined = names.join(",");
            let option = if joined
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ','))
            {
                format!("--id-column {joined}")
            } else {
                format!("--id-column '{joined}'")
            };
            let which = if set.len() == 1 {
                format!("the column {} is unique", names[0])
            } else {
                format!("the columns {} together are unique", names.join(", "))
            };
            format!("; {which}: {option}")
        }
        None => "; no set of up to three columns is unique: give every row an id column, or --row-ids to number the rows".to_owned(),
    }
}

/// Line numbers from byte offsets. The `csv` crate's own line count lags
/// behind on CRLF files, so lines are counted here, incrementally, from the
/// record's byte offset (skipping the line break it may point at).
struct LineCounter<'a> {
    bytes: &'a [u8],
    offset: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: 0,
            line: 1,
        }
    }

    fn line_at(&mut self, offset: u64) -> u64 {
        let mut target = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        while target < self.bytes.len() && matches!(self.bytes[target], b'\r' | b'\n') {
            target += 1;
        }
        if target >= self.offset {
            self.line += self.bytes[self.offset..target]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            self.offset = target;
        }
        self.line
    }
}

type ErrFn<'a> = dyn Fn(Option<u64>, Option<&str>, String) -> SheetError + 'a;

/// A row's values, one per named column. Fields past the named columns
/// must be empty: sequencer sheets pad rows with commas, and the 1000
/// Genomes panel's header has empty fields at its end.
fn row_values<'r>(
    record: &'r csv::ByteRecord,
    line: u64,
    columns: &[Column],
    width: usize,
    err: &ErrFn<'_>,
) -> Result<Vec<&'r str>, SheetError> {
    let named = columns.len();
    if record.len() < named {
        return Err(err(
            Some(line),
            None,
            format!(
                "has {} fields but the header has {named}; every row needs one value per column",
                record.len()
            ),
        ));
    }
    if let Some(i) = (named..record.len()).find(|&i| !record[i].trim_ascii().is_empty()) {
        let message = if i < width {
            format!(
                "has a value under header field {}, which has no name; name that column",
                i + 1
            )
        } else {
            format!(
                "has {} fields but the header has {named}; every row needs one value per column",
                record.len()
            )
        };
        return Err(err(Some(line), None, message));
    }
    let mut values = Vec::with_capacity(named);
    for (i, col) in columns.iter().enumerate() {
        let value = std::str::from_utf8(&record[i]).map_err(|e| {
            err(
                Some(line),
                Some(&col.header),
                format!(
                    "is not valid UTF-8 (bad byte at offset {}); save the sheet as UTF-8",
                    e.valid_up_to()
                ),
            )
        })?;
        values.push(value);
    }
    Ok(values)
}

/// A task id must be there, short enough for the table, and printable.
fn check_id(id: &str, line: u64, column: &str, err: &ErrFn<'_>) -> Result<(), SheetError> {
    if id.is_empty() {
        return Err(err(
            Some(line),
            Some(column),
            "the task id is empty; every row needs an id".into(),
        ));
    }
    if id.len() > MAX_TASK_ID_BYTES {
        return Err(err(
            Some(line),
            Some(column),
            format!(
                "the task id is {} bytes; at most {MAX_TASK_ID_BYTES} are allowed",
                id.len()
            ),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(err(
            Some(line),
            Some(column),
            "the task id contains a control character (tab, newline, ...)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
