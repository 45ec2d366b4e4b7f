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
mod input;
mod rows;
mod sections;

pub use header::{Column, DSUB_KINDS};
pub use ids::SEPARATOR as ID_SEPARATOR;
pub use input::SheetInput;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_128;

use crate::model::NewTask;
use crate::schema::MAX_TASK_ID_BYTES;
use ids::{IdSource, collision_hint};
pub use rows::Rows;
use rows::{RowReader, row_hash};
use sections::Found;

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

/// A sheet: its columns and where its ids come from, read from its header;
/// once validated ([`Sheet::validate`]), its row count and digest. Rows are
/// read again for each pass ([`Sheet::rows`]), never held in memory.
#[derive(Debug, Clone)]
pub struct Sheet {
    /// The file it came from (`-`: standard input), for messages.
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
    /// Rows (tasks), once validated.
    pub rows: usize,
    /// SHA-256 of the sheet's bytes, hex, once validated.
    pub sha256: String,
    /// A 16-byte hash of each validated row, in file order: a later pass
    /// stops at the first row that differs from what was checked.
    row_hashes: std::sync::Arc<Vec<u128>>,
    input: SheetInput,
    /// Byte range of the table (a section's, or the whole file's).
    table: (u64, u64),
    format: Format,
    source: IdSource,
    /// Header fields, empty trailing ones included.
    width: usize,
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
        Self::open(path, SheetInput::File(path.to_owned()), options)?.validate(&mut |_, _| Ok(()))
    }

    /// Validates sheet content already in memory; `path` is for messages.
    pub fn parse(path: &Path, bytes: &[u8], options: &SheetOptions) -> Result<Self, SheetError> {
        Self::open(path, SheetInput::Bytes(bytes.into()), options)?.validate(&mut |_, _| Ok(()))
    }

    /// Reads what comes before the rows: sections, format, header and id
    /// columns. `path` names the sheet in messages. Not validated yet:
    /// [`Sheet::validate`] reads the rows.
    pub fn open(
        path: &Path,
        input: SheetInput,
        options: &SheetOptions,
    ) -> Result<Self, SheetError> {
        let err = |line: Option<u64>, column: Option<&str>, message: String| SheetError {
            path: path.to_owned(),
            line,
            column: column.map(str::to_owned),
            message,
        };
        let io_err = |e: std::io::Error| {
            err(
                None,
                None,
                match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file".to_owned(),
                    _ => format!("cannot read it: {e}"),
                },
            )
        };
        let mut reader = std::io::BufReader::new(input.open().map_err(io_err)?);
        let bom = {
            let start = reader.fill_buf().map_err(io_err)?;
            if start.starts_with(BOM) { BOM.len() } else { 0 }
        };
        reader.consume(bom);
        let table = match sections::find(&mut reader, bom as u64).map_err(io_err)? {
            Found::Empty => return Err(err(None, None, EMPTY.into())),
            Found::Sections(found) => {
                let section = sections::choose(&found, options.section.as_deref(), &err)?;
                (section.start, section.end)
            }
            Found::Plain if options.section.is_some() => {
                return Err(err(
                    None,
                    None,
                    "has no [Section] lines; --section is for sheets with sections, such as Illumina's"
                        .into(),
                ));
            }
            Found::Plain => (bom as u64, u64::MAX),
        };
        let format = if let Some(format) = options.format {
            format
        } else {
            let mut first = input.open().map_err(io_err)?;
            std::io::copy(&mut first.by_ref().take(table.0), &mut std::io::sink())
                .map_err(io_err)?;
            let mut line = Vec::new();
            std::io::BufReader::new(first.take((table.1 - table.0).min(HEADER_PEEK)))
                .read_until(b'\n', &mut line)
                .map_err(io_err)?;
            Format::detect(path, &line)
        };
        let mut sheet = Sheet {
            path: path.to_owned(),
            columns: Vec::new(),
            env_names: Vec::new(),
            column_info: Vec::new(),
            id_column: String::new(),
            rows: 0,
            sha256: String::new(),
            row_hashes: std::sync::Arc::default(),
            input,
            table,
            format,
            source: IdSource::RowNumber,
            width: 0,
        };
        let mut rows = RowReader::start(&sheet)?;
        let (header, header_line) = rows.header()?;
        drop(rows);
        let (column_info, width) = header::parse(&header, header_line, &options.renames, &err)?;
        sheet.source = id_source(&column_info, options, header_line, &err)?;
        sheet.id_column = sheet.source.describe(&column_info);
        sheet.env_names = column_info.iter().map(|c| c.var.clone()).collect();
        sheet.columns = column_info.iter().map(|c| c.name.clone()).collect();
        sheet.column_info = column_info;
        sheet.width = width;
        Ok(sheet)
    }

    /// Reads every row, streaming: each must make a valid task and pass
    /// `check`; ids must be unique (checked on 16-byte hashes, then on the
    /// ids themselves for a hash seen twice). Memory grows by 32 bytes a
    /// row (the id's hash and the row's), not by the row.
    pub fn validate(
        mut self,
        check: &mut dyn FnMut(&Sheet, &NewTask) -> Result<(), SheetError>,
    ) -> Result<Self, SheetError> {
        let by_columns = matches!(self.source, IdSource::Columns(_));
        let mut hashes: Vec<u128> = Vec::new();
        let mut row_hashes: Vec<u128> = Vec::new();
        let mut rows = 0;
        let mut reader = RowReader::start(&self)?;
        reader.header()?;
        while let Some(task) = reader.next_task()? {
            check(&self, &task)?;
            if by_columns {
                hashes.push(xxh3_128(task.task_id.as_bytes()));
            }
            row_hashes.push(row_hash(&task));
            rows += 1;
        }
        let sha256 = reader.finish()?;
        if rows == 0 {
            return Err(self.error(
                None,
                None,
                "has a header but no rows; add one row per task".into(),
            ));
        }
        hashes.sort_unstable();
        let repeated: HashSet<u128> = hashes
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        drop(hashes);
        self.rows = rows;
        self.sha256 = sha256;
        self.row_hashes = std::sync::Arc::new(row_hashes);
        if !repeated.is_empty() {
            self.check_repeated(&repeated)?;
        }
        Ok(self)
    }

    /// The first id that repeats, among the rows whose id hash repeats.
    fn check_repeated(&self, repeated: &HashSet<u128>) -> Result<(), SheetError> {
        let mut first_line_of: HashMap<String, u64> = HashMap::new();
        for task in self.rows()? {
            let task = task?;
            if !repeated.contains(&xxh3_128(task.task_id.as_bytes())) {
                continue;
            }
            if let Some(first) = first_line_of.insert(task.task_id.clone(), task.line) {
                let hint = if self.rows > ids::MAX_ROWS_SEARCHED {
                    String::new()
                } else {
                    collision_hint(&self.column_info, &self.tasks()?)
                };
                return Err(self.error(
                    Some(task.line),
                    Some(&self.id_column),
                    format!(
                        "the task id '{}' is already used on line {first}; ids must be unique{hint}",
                        task.task_id
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The rows, read again from the start, in file order. Once the sheet
    /// is validated, a file that changed since is an error at its end.
    pub fn rows(&self) -> Result<Rows<'_>, SheetError> {
        let mut reader = RowReader::start(self)?;
        reader.header()?;
        Ok(Rows {
            sheet: self,
            reader: Some(reader),
            index: 0,
        })
    }

    /// Every row, in memory (small sheets, tests).
    pub fn tasks(&self) -> Result<Vec<NewTask>, SheetError> {
        self.rows()?.collect()
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

    fn error(&self, line: Option<u64>, column: Option<&str>, message: String) -> SheetError {
        SheetError {
            path: self.path.clone(),
            line,
            column: column.map(str::to_owned),
            message,
        }
    }
}

/// A UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How much of a table's first line format detection reads.
const HEADER_PEEK: u64 = 1 << 20;

/// What an empty sheet is told.
const EMPTY: &str = "the sheet is empty: expected a header row and one row per task";

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
