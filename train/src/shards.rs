//! The pretraining shard format: parquet files that pyarrow, pandas and Spark read as they are.
//!
//! One row per training sequence, complete with special tokens and without padding:
//!
//! | column                | type           | meaning                                            |
//! |-----------------------|----------------|----------------------------------------------------|
//! | `input_ids`           | list<int32>    | `[CLS] A [SEP]` (packed) or `[CLS] A [SEP] B [SEP]` (NSP) |
//! | `token_type_ids`      | list<int8>     | 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`             |
//! | `next_sentence_label` | int8           | only in NSP shards: 0 = B follows A, 1 = B is random (HF convention) |
//! | `length`              | int32          | number of tokens in the row                        |
//!
//! Row groups hold [`ROWS_PER_GROUP`] rows; columns are Snappy-compressed. A shard is written to a
//! hidden temporary file in the same folder, synced, and renamed into place, so a reader never
//! sees half a shard, whatever happens to the writer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow_array::builder::{Int32Builder, Int8Builder, ListBuilder};
use arrow_array::{Array, ArrayRef, Int32Array, Int8Array, ListArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use bertkit_model::fs;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

pub const ROWS_PER_GROUP: usize = 8192;

/// One training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u8>,
    /// NSP label (0 = next, 1 = random); `None` in packed (non-NSP) data.
    pub next_sentence_label: Option<u8>,
}

fn schema(nsp: bool) -> Arc<Schema> {
    let mut fields = vec![
        Field::new(
            "input_ids",
            DataType::List(Arc::new(Field::new("item", DataType::Int32, false))),
            false,
        ),
        Field::new(
            "token_type_ids",
            DataType::List(Arc::new(Field::new("item", DataType::Int8, false))),
            false,
        ),
    ];
    if nsp {
        fields.push(Field::new("next_sentence_label", DataType::Int8, false));
    }
    fields.push(Field::new("length", DataType::Int32, false));
    Arc::new(Schema::new(fields))
}

fn batch(rows: &[Sequence], nsp: bool) -> Result<RecordBatch> {
    let tokens: usize = rows.iter().map(|r| r.input_ids.len()).sum();
    let mut ids = ListBuilder::new(Int32Builder::with_capacity(tokens))
        .with_field(Arc::new(Field::new("item", DataType::Int32, false)));
    let mut types = ListBuilder::new(Int8Builder::with_capacity(tokens))
        .with_field(Arc::new(Field::new("item", DataType::Int8, false)));
    let mut labels = Int8Builder::with_capacity(rows.len());
    let mut lengths = Int32Builder::with_capacity(rows.len());
    for row in rows {
        for &id in &row.input_ids {
            ids.values().append_value(id as i32);
        }
        ids.append(true);
        for &t in &row.token_type_ids {
            types.values().append_value(t as i8);
        }
        types.append(true);
        if nsp {
            let label = row
                .next_sentence_label
                .context("an NSP shard row without a next_sentence_label")?;
            labels.append_value(label as i8);
        }
        lengths.append_value(row.input_ids.len() as i32);
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(ids.finish()), Arc::new(types.finish())];
    if nsp {
        columns.push(Arc::new(labels.finish()));
    }
    columns.push(Arc::new(lengths.finish()));
    Ok(RecordBatch::try_new(schema(nsp), columns)?)
}

/// Write `rows` to `path` atomically; returns the file's size and sha256 (hex).
pub fn write_shard(path: &Path, rows: &[Sequence], nsp: bool) -> Result<(u64, String)> {
    write_shard_then(path, rows, nsp, |_, _| Ok(()))
}

/// [`write_shard`], calling `before_publish(size, sha256)` once the complete shard is on disk
/// under its temporary name and before the rename makes it visible (to record it first).
pub fn write_shard_then(
    path: &Path,
    rows: &[Sequence],
    nsp: bool,
    before_publish: impl FnOnce(u64, &str) -> Result<()>,
) -> Result<(u64, String)> {
    let tmp = fs::temp_path(path);
    let result = (|| -> Result<()> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
            .build();
        let mut writer = ArrowWriter::try_new(BufWriter::new(file), schema(nsp), Some(props))?;
        for chunk in rows.chunks(ROWS_PER_GROUP) {
            writer.write(&batch(chunk, nsp)?)?;
            writer.flush()?;
        }
        let mut out = writer.into_inner()?;
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing shard {}", path.display())));
    }
    let (size, sha) = file_sha256(&tmp)?;
    if let Err(e) = before_publish(size, &sha) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok((size, sha))
}

/// Size and sha256 (hex) of a file.
pub fn file_sha256(path: &Path) -> Result<(u64, String)> {
    fs::file_sha256(path).with_context(|| format!("reading {}", path.display()))
}

/// A whole shard in memory, in flat arrays (a few bytes per token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardData {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u8>,
    /// Row `i` is `input_ids[offsets[i]..offsets[i + 1]]`.
    pub offsets: Vec<usize>,
    pub next_sentence_label: Option<Vec<u8>>,
}

impl ShardData {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn input_ids(&self, row: usize) -> &[u32] {
        &self.input_ids[self.offsets[row]..self.offsets[row + 1]]
    }

    pub fn token_type_ids(&self, row: usize) -> &[u8] {
        &self.token_type_ids[self.offsets[row]..self.offsets[row + 1]]
    }

    pub fn next_sentence_label(&self, row: usize) -> Option<u8> {
        self.next_sentence_label.as_ref().map(|l| l[row])
    }

    pub fn sequence(&self, row: usize) -> Sequence {
        Sequence {
            input_ids: self.input_ids(row).to_vec(),
            token_type_ids: self.token_type_ids(row).to_vec(),
            next_sentence_label: self.next_sentence_label(row),
        }
    }
}

fn list_values<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<(&'a ListArray, &'a T)> {
    let column = batch
        .column_by_name(name)
        .with_context(|| format!("{}: no column '{name}'", path.display()))?;
    let list = column
        .as_any()
        .downcast_ref::<ListArray>()
        .with_context(|| format!("{}: column '{name}' is not a list", path.display()))?;
    let values = list
        .values()
        .as_any()
        .downcast_ref::<T>()
        .with_context(|| {
            format!(
                "{}: column '{name}' has the wrong item type",
                path.display()
            )
        })?;
    Ok((list, values))
}

/// Read a whole shard, checking its columns.
pub fn read_shard(path: &Path) -> Result<ShardData> {
    let file = File::open(path).with_context(|| format!("opening shard {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{}: not a readable parquet file", path.display()))?
        .with_batch_size(ROWS_PER_GROUP)
        .build()?;
    let mut data = ShardData {
        offsets: vec![0],
        ..Default::default()
    };
    for batch in reader {
        let batch = batch.with_context(|| format!("reading shard {}", path.display()))?;
        let (ids_list, ids) = list_values::<Int32Array>(&batch, "input_ids", path)?;
        let (types_list, types) = list_values::<Int8Array>(&batch, "token_type_ids", path)?;
        if ids_list.value_offsets() != types_list.value_offsets() {
            bail!(
                "{}: input_ids and token_type_ids differ in length",
                path.display()
            );
        }
        // Values may start past 0 when the list array is a slice: go through the offsets.
        let offs = ids_list.value_offsets();
        for w in offs.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            data.input_ids
                .extend(ids.values()[a..b].iter().map(|&v| v as u32));
            data.token_type_ids
                .extend(types.values()[a..b].iter().map(|&v| v as u8));
            data.offsets.push(data.input_ids.len());
        }
        if let Some(col) = batch.column_by_name("next_sentence_label") {
            let labels = col
                .as_any()
                .downcast_ref::<Int8Array>()
                .with_context(|| format!("{}: next_sentence_label is not int8", path.display()))?;
            data.next_sentence_label
                .get_or_insert_with(Vec::new)
                .extend(labels.values().iter().map(|&v| v as u8));
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(nsp: bool, n: usize) -> Vec<Sequence> {
        (0..n)
            .map(|i| Sequence {
                input_ids: (0..(i % 7 + 3) as u32)
                    .map(|t| t * 1000 + i as u32)
                    .collect(),
                token_type_ids: (0..(i % 7 + 3)).map(|t| (t > 1) as u8).collect(),
                next_sentence_label: nsp.then_some((i % 2) as u8),
            })
            .collect()
    }

    #[test]
    fn round_trip_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        for nsp in [false, true] {
            let want = rows(nsp, ROWS_PER_GROUP + 17);
            let path = dir.path().join(format!("s-{nsp}.parquet"));
            let (size, sha) = write_shard(&path, &want, nsp).unwrap();
            assert_eq!((size, sha.clone()), file_sha256(&path).unwrap());
            let got = read_shard(&path).unwrap();
            assert_eq!(got.len(), want.len());
            for (i, w) in want.iter().enumerate() {
                assert_eq!(&got.sequence(i), w);
            }
            // No temporary file left behind.
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
        }
    }

    #[test]
    fn corrupt_shard_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.parquet");
        write_shard(&path, &rows(false, 10), false).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", read_shard(&path).unwrap_err());
        assert!(err.contains("bad.parquet"), "{err}");
    }
}
