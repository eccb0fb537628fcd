//! GGUF metadata values and typed look-ups over the key/value table.

use crate::error::{Error, Result};

/// The type tag GGUF writes before each metadata value (and array element).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::U8 => 0,
            Self::I8 => 1,
            Self::U16 => 2,
            Self::I16 => 3,
            Self::U32 => 4,
            Self::I32 => 5,
            Self::F32 => 6,
            Self::Bool => 7,
            Self::String => 8,
            Self::Array => 9,
            Self::U64 => 10,
            Self::I64 => 11,
            Self::F64 => 12,
        }
    }
}

/// One metadata value. Arrays carry their element type so empty arrays round-trip.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(..) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    pub fn string_array<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Self {
        Self::Array(ValueType::String, items.into_iter().map(|s| Self::String(s.into())).collect())
    }

    pub fn i32_array(items: impl IntoIterator<Item = i32>) -> Self {
        Self::Array(ValueType::I32, items.into_iter().map(Self::I32).collect())
    }

    pub fn f32_array(items: impl IntoIterator<Item = f32>) -> Self {
        Self::Array(ValueType::F32, items.into_iter().map(Self::F32).collect())
    }

    /// Any integer value, widened; GGUF writers disagree on which width a count uses.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// Short description for error messages: `u32`, `array of 3 string`, ...
    pub fn describe(&self) -> String {
        match self {
            Self::Array(t, items) => format!("array of {} {:?}", items.len(), t).to_lowercase(),
            other => format!("{:?}", other.value_type()).to_lowercase(),
        }
    }
}

/// The key/value table in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key`, replacing an earlier value with the same key in place.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::MissingKey(key.to_string()))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| wrong(key, "string", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(wrong(key, "bool", v)),
        }
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_i128().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| wrong(key, "u32", v))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_i128().and_then(|i| u64::try_from(i).ok()).ok_or_else(|| wrong(key, "u64", v))
    }

    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        v.as_i128().and_then(|i| i64::try_from(i).ok()).ok_or_else(|| wrong(key, "i64", v))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64().map(|f| f as f32).ok_or_else(|| wrong(key, "f32", v))
    }

    fn get_array(&self, key: &str, expected: &'static str) -> Result<&[Value]> {
        match self.require(key)? {
            Value::Array(_, items) => Ok(items),
            v => Err(wrong(key, expected, v)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let items = self.get_array(key, "array of string")?;
        items.iter().map(|v| v.as_str().ok_or_else(|| wrong(key, "array of string", v))).collect()
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        let items = self.get_array(key, "array of i32")?;
        items
            .iter()
            .map(|v| {
                v.as_i128()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| wrong(key, "array of i32", v))
            })
            .collect()
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        let items = self.get_array(key, "array of f32")?;
        items
            .iter()
            .map(|v| v.as_f64().map(|f| f as f32).ok_or_else(|| wrong(key, "array of f32", v)))
            .collect()
    }

    /// `Ok(None)` when the key is absent; a present key of the wrong type is still an error.
    pub fn opt<'a, T>(
        &'a self,
        key: &str,
        get: impl Fn(&'a Self, &str) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.contains(key) { get(self, key).map(Some) } else { Ok(None) }
    }
}

fn wrong(key: &str, expected: &'static str, found: &Value) -> Error {
    Error::WrongType { key: key.to_string(), expected, found: found.describe() }
}
