//! Parquet files as a [`Table`]: every arrow value becomes JSON (behind the `parquet` feature).

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};

use super::{Row, Skipped, Table};

pub(super) fn read_parquet(path: &Path) -> Result<Table> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len == 0 {
        bail!("{}: the file is empty", path.display());
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{}: not a readable parquet file", path.display()))?;
    let columns: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let reader = builder
        .with_batch_size(1024)
        .build()
        .with_context(|| format!("{}: cannot read the parquet data", path.display()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| {
            format!(
                "{}: corrupt parquet data after row {}",
                path.display(),
                rows.len()
            )
        })?;
        for i in 0..batch.num_rows() {
            let mut fields = Map::new();
            for (name, array) in columns.iter().zip(batch.columns()) {
                let value = json_value(array.as_ref(), i)
                    .map_err(|what| anyhow!("{}: column \"{name}\": {what}", path.display()))?;
                fields.insert(name.clone(), value);
            }
            let location = format!("{}: row {}", path.display(), rows.len() + 1);
            rows.push(Row { location, fields });
        }
    }
    Ok(Table {
        path: path.to_path_buf(),
        columns,
        rows,
        skipped: Skipped::default(),
    })
}

/// A float as JSON, written through its shortest decimal form (`3.8f32` -> `3.8`); NaN and
/// infinities become null.
fn float_json(text: String) -> Value {
    text.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// Element `i` of an arrow array as a JSON value.
fn json_value(array: &dyn Array, i: usize) -> Result<Value, String> {
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    let wrong = || format!("unexpected array layout for type {}", array.data_type());
    Ok(match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean_opt().ok_or_else(wrong)?.value(i)),
        DataType::Int8 => array
            .as_primitive_opt::<Int8Type>()
            .ok_or_else(wrong)?
            .value(i)
            .into(),
        DataType::Int16 => array
            .as_primitive_opt::<Int16Type>()
            .ok_or_else(wrong)?
            .value(i)
            .into(),
        DataType::Int32 => array
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(wrong)?
            .value(i)
            .into(),
        DataType::Int64 => array
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(wrong)?
            .value(i)
            .into(),
        DataType::UInt8 => array
            .as_primitive_opt::<UInt8Type>()
            .ok_or_else(wrong)?
            .value(i)
            .into(),
        DataType::UInt16 => array
            .as_primitive_opt::<UInt16Type>()
            .ok_or_else(wrong)?
            .value(i)
            .into(),
        DataType::UInt32 => array
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(wrong)?
            .value(i)
            .into(),
        DataType::UInt64 => array
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(wrong)?
            .value(i)
            .into(),
        DataType::Float16 => float_json(
            array
                .as_primitive_opt::<Float16Type>()
                .ok_or_else(wrong)?
                .value(i)
                .to_string(),
        ),
        DataType::Float32 => float_json(
            array
                .as_primitive_opt::<Float32Type>()
                .ok_or_else(wrong)?
                .value(i)
                .to_string(),
        ),
        DataType::Float64 => float_json(
            array
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(wrong)?
                .value(i)
                .to_string(),
        ),
        DataType::Utf8 => Value::String(
            array
                .as_string_opt::<i32>()
                .ok_or_else(wrong)?
                .value(i)
                .into(),
        ),
        DataType::LargeUtf8 => Value::String(
            array
                .as_string_opt::<i64>()
                .ok_or_else(wrong)?
                .value(i)
                .into(),
        ),
        DataType::Utf8View => Value::String(
            array
                .as_string_view_opt()
                .ok_or_else(wrong)?
                .value(i)
                .into(),
        ),
        DataType::Binary => binary_json(array.as_binary_opt::<i32>().ok_or_else(wrong)?.value(i))?,
        DataType::LargeBinary => {
            binary_json(array.as_binary_opt::<i64>().ok_or_else(wrong)?.value(i))?
        }
        DataType::List(_) => list_json(array.as_list_opt::<i32>().ok_or_else(wrong)?.value(i))?,
        DataType::LargeList(_) => {
            list_json(array.as_list_opt::<i64>().ok_or_else(wrong)?.value(i))?
        }
        DataType::FixedSizeList(..) => {
            list_json(array.as_fixed_size_list_opt().ok_or_else(wrong)?.value(i))?
        }
        DataType::Struct(fields) => {
            let s = array.as_struct_opt().ok_or_else(wrong)?;
            let mut object = Map::new();
            for (field, child) in fields.iter().zip(s.columns()) {
                object.insert(field.name().clone(), json_value(child.as_ref(), i)?);
            }
            Value::Object(object)
        }
        DataType::Dictionary(..) => {
            let d = array.as_any_dictionary_opt().ok_or_else(wrong)?;
            let key = json_value(d.keys(), i)?;
            let key = key
                .as_u64()
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| format!("bad dictionary key {key}"))?;
            if key >= d.values().len() {
                return Err(format!("dictionary key {key} out of range"));
            }
            json_value(d.values().as_ref(), key)?
        }
        other => return Err(format!("unsupported type {other}")),
    })
}

fn binary_json(bytes: &[u8]) -> Result<Value, String> {
    std::str::from_utf8(bytes)
        .map(|s| Value::String(s.to_string()))
        .map_err(|_| "binary value is not valid UTF-8".to_string())
}

fn list_json(items: arrow_array::ArrayRef) -> Result<Value, String> {
    (0..items.len())
        .map(|j| json_value(items.as_ref(), j))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}
