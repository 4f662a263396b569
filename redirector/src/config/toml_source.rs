//! Reading the TOML text with spans, shared by all tables: the `raw_table!`
//! macro that declares each table's raw (unvalidated) keys in its module, raw
//! values that keep their byte ranges, and the `Source` / `Section` helpers that
//! turn them into validated values with messages naming the file, line, table
//! and key.
use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::values::parse_duration;
use super::{ConfigError, Location};

/// The key under which toml hands a datetime to a visitor, as a one-entry map
/// (a private marker of `toml_datetime`); met where a table was expected.
pub(super) const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

/// Declares a raw table: every key optional and spanned, and the keys it does
/// not know kept with their spans, so that conversion can reject them naming
/// the section (serde's `deny_unknown_fields` cannot say which service).
/// `$vis` applies to the struct and its fields; paths are absolute so that a
/// table's module can declare its raw table without importing serde for it.
macro_rules! raw_table {
    ($(#[$doc:meta])* $vis:vis $name:ident, $expecting:literal { $($key:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Default)]
        $vis struct $name {
            $($vis $key: Option<::toml::Spanned<$ty>>,)*
            /// Keys not listed above, with the span of each value.
            $vis unknown: Vec<(String, ::std::ops::Range<usize>)>,
        }

        impl $name {
            /// The keys the table allows, in declaration order.
            const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct TableVisitor;
                impl<'de> ::serde::de::Visitor<'de> for TableVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: ::serde::de::MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        let mut table = $name::default();
                        while let Some(key) = map.next_key::<String>()? {
                            match key.as_str() {
                                $(stringify!($key) => table.$key = Some(map.next_value()?),)*
                                $crate::config::toml_source::TOML_DATETIME_KEY => {
                                    return Err(::serde::de::Error::invalid_type(
                                        ::serde::de::Unexpected::Other("datetime"),
                                        &self,
                                    ));
                                }
                                _ => {
                                    let value: ::toml::Spanned<::serde::de::IgnoredAny> = map.next_value()?;
                                    table.unknown.push((key, value.span()));
                                }
                            }
                        }
                        Ok(table)
                    }
                }
                deserializer.deserialize_map(TableVisitor)
            }
        }
    };
}
pub(super) use raw_table;

/// A value that should be a table: the table, or a description of what was
/// found instead, so that conversion can name the section and the key.
pub(super) enum MaybeTable<T> {
    Table(T),
    Other(String),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MaybeTable<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MaybeTableVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MaybeTableVisitor<T> {
            type Value = MaybeTable<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(MaybeTable::Table)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(MaybeTable::Other("an array".to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(MaybeTable::Other(describe(&toml::Value::Boolean(v))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(MaybeTable::Other(describe(&toml::Value::Integer(v))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(MaybeTable::Other(format!("integer {v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(MaybeTable::Other(describe(&toml::Value::Float(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeTable::Other(format!("string {v:?}")))
            }
        }
        deserializer.deserialize_any(MaybeTableVisitor(std::marker::PhantomData))
    }
}

/// Any TOML value; arrays keep the span of each element. Type checks are
/// done after deserialization so that errors can name the key.
pub(super) enum RawValue {
    Scalar(toml::Value),
    Array(Vec<Spanned<toml::Value>>),
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = RawValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(toml::Value::Boolean(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(toml::Value::Integer(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
                i64::try_from(v)
                    .map(|v| RawValue::Scalar(toml::Value::Integer(v)))
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(toml::Value::Float(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(toml::Value::String(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(toml::Value::String(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(RawValue::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawValue, A::Error> {
                // Tables and datetimes.
                toml::Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawValue::Scalar)
            }
        }
        deserializer.deserialize_any(RawVisitor)
    }
}

/// Short description of a value for "found ..." messages.
pub(super) fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer {i}"),
        toml::Value::Float(x) => format!("float {x}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        toml::Value::Datetime(d) => format!("datetime {d}"),
        toml::Value::Array(_) => "an array".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

fn describe_raw(value: &RawValue) -> String {
    match value {
        RawValue::Scalar(v) => describe(v),
        RawValue::Array(_) => "an array".to_owned(),
    }
}

/// The text being parsed and the name used for it in messages.
pub(super) struct Source<'a> {
    pub(super) origin: &'a str,
    pub(super) text: &'a str,
}

impl Source<'_> {
    /// 1-based line of a byte offset.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        let bytes = self.text.as_bytes();
        let before = bytes.get(..offset).unwrap_or(bytes);
        before.iter().filter(|&&b| b == b'\n').count() + 1
    }

    pub(super) fn at(&self, span: &Range<usize>) -> Location {
        Location {
            origin: self.origin.to_owned(),
            line: Some(self.line_of(span.start)),
        }
    }

    pub(super) fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let at = Location {
            origin: self.origin.to_owned(),
            line: err.span().map(|span| self.line_of(span.start)),
        };
        let message = err.message().trim();
        // serde's deny_unknown_fields message: "unknown field `k`, expected ...".
        if let Some((key, rest)) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            && let Some(expected) = rest.strip_prefix(", expected ")
        {
            return ConfigError::UnknownKey {
                at,
                section: None,
                key: key.to_owned(),
                expected: expected.replace('`', "\""),
            };
        }
        // toml's duplicate key message does not say which key; the span does.
        if message == "duplicate key"
            && let Some(key) = err.span().and_then(|span| self.text.get(span))
        {
            let key = key.trim();
            let message = if key.starts_with(['"', '\'']) {
                format!("duplicate key {key}")
            } else {
                format!("duplicate key \"{key}\"")
            };
            return ConfigError::Toml { at, message };
        }
        ConfigError::Toml {
            at,
            message: message.replace('\n', " "),
        }
    }
}

/// A table being converted: knows its name for error messages.
pub(super) struct Section<'a> {
    pub(super) src: &'a Source<'a>,
    pub(super) name: String,
    pub(super) span: Range<usize>,
}

impl Section<'_> {
    /// The items of an array value; anything else is an error saying `expected`
    /// (e.g. "an array of interface names").
    pub(super) fn array<'v>(
        &self,
        key: &str,
        value: &'v Spanned<RawValue>,
        expected: &str,
    ) -> Result<&'v [Spanned<toml::Value>], ConfigError> {
        match value.get_ref() {
            RawValue::Array(items) => Ok(items),
            other => Err(self.invalid(
                key,
                &value.span(),
                format!("expected {expected}, found {}", describe_raw(other)),
            )),
        }
    }

    pub(super) fn invalid(&self, key: &str, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            at: self.src.at(span),
            section: self.name.clone(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    pub(super) fn required<'v>(
        &self,
        key: &str,
        field: &'v Option<Spanned<RawValue>>,
    ) -> Result<&'v Spanned<RawValue>, ConfigError> {
        field.as_ref().ok_or_else(|| ConfigError::MissingKey {
            at: self.src.at(&self.span),
            section: self.name.clone(),
            key: key.to_owned(),
        })
    }

    pub(super) fn boolean(&self, key: &str, value: &Spanned<RawValue>) -> Result<bool, ConfigError> {
        match value.get_ref() {
            RawValue::Scalar(toml::Value::Boolean(b)) => Ok(*b),
            other => Err(self.invalid(
                key,
                &value.span(),
                format!("expected true or false, found {}", describe_raw(other)),
            )),
        }
    }

    pub(super) fn string<'v>(&self, key: &str, value: &'v Spanned<RawValue>) -> Result<&'v str, ConfigError> {
        match value.get_ref() {
            RawValue::Scalar(toml::Value::String(s)) => Ok(s),
            other => Err(self.invalid(
                key,
                &value.span(),
                format!("expected a string, found {}", describe_raw(other)),
            )),
        }
    }

    pub(super) fn ranged<T>(
        &self,
        key: &str,
        value: &Spanned<RawValue>,
        range: RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display,
    {
        let int = match value.get_ref() {
            RawValue::Scalar(toml::Value::Integer(i)) => *i,
            other => {
                return Err(self.invalid(
                    key,
                    &value.span(),
                    format!("expected an integer, found {}", describe_raw(other)),
                ));
            }
        };
        match T::try_from(int) {
            Ok(v) if range.contains(&v) => Ok(v),
            _ => Err(self.invalid(
                key,
                &value.span(),
                format!(
                    "{int} is out of range, expected {}..={}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    pub(super) fn choice<T: Copy>(
        &self,
        key: &str,
        value: &Spanned<RawValue>,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let s = self.string(key, value)?;
        choices
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                let expected = match names.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => names.join(""),
                };
                self.invalid(
                    key,
                    &value.span(),
                    format!("unknown value {s:?}, expected {expected}"),
                )
            })
    }
}

impl Section<'_> {
    /// A table inside this one, e.g. `service "web" health`.
    pub(super) fn sub(&self, key: &str, span: Range<usize>) -> Section<'_> {
        Section {
            src: self.src,
            name: format!("{} {key}", self.name),
            span,
        }
    }

    /// Rejects the first (in file order) key the table does not allow.
    pub(super) fn unknown_keys(
        &self,
        unknown: &[(String, Range<usize>)],
        allowed: &[&str],
    ) -> Result<(), ConfigError> {
        match unknown.iter().min_by_key(|(_, span)| span.start) {
            None => Ok(()),
            Some((key, span)) => Err(ConfigError::UnknownKey {
                at: self.src.at(span),
                section: Some(self.name.clone()),
                key: key.clone(),
                expected: expected_keys(allowed),
            }),
        }
    }

    /// A table-valued key: `None` when absent, else the table and its span.
    pub(super) fn table<'v, T>(
        &self,
        key: &str,
        field: &'v Option<Spanned<MaybeTable<T>>>,
    ) -> Result<Option<(&'v T, Range<usize>)>, ConfigError> {
        let Some(value) = field else {
            return Ok(None);
        };
        match value.get_ref() {
            MaybeTable::Table(table) => Ok(Some((table, value.span()))),
            MaybeTable::Other(found) => {
                Err(self.invalid(key, &value.span(), format!("expected a table, found {found}")))
            }
        }
    }

    /// A duration string within `range`; zero gets its own message.
    pub(super) fn duration(
        &self,
        key: &str,
        value: &Spanned<RawValue>,
        range: RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let span = value.span();
        let text = match value.get_ref() {
            RawValue::Scalar(toml::Value::String(s)) => s,
            other => {
                return Err(self.invalid(
                    key,
                    &span,
                    format!(
                        "expected a duration string such as \"500us\" or \"1.5s\", found {}",
                        describe_raw(other)
                    ),
                ));
            }
        };
        let duration = parse_duration(text).map_err(|m| self.invalid(key, &span, m))?;
        let message = if duration.is_zero() && !range.contains(&duration) {
            format!("{text:?} is zero, it must be greater than zero")
        } else if duration < *range.start() {
            format!("{text:?} is too short, the minimum is {:?}", range.start())
        } else if duration > *range.end() {
            format!("{text:?} is too long, the maximum is {:?}", range.end())
        } else {
            return Ok(duration);
        };
        Err(self.invalid(key, &span, message))
    }

    /// An absolute path.
    pub(super) fn absolute_path(&self, key: &str, value: &Spanned<RawValue>) -> Result<PathBuf, ConfigError> {
        let path = self.string(key, value)?;
        if !path.starts_with('/') {
            return Err(self.invalid(key, &value.span(), format!("{path:?} is not an absolute path")));
        }
        if path.contains('\0') {
            return Err(self.invalid(key, &value.span(), format!("{path:?} contains a NUL character")));
        }
        Ok(PathBuf::from(path))
    }
}

/// `"a"` or `one of "a", "b"`, as in serde's unknown field messages.
fn expected_keys(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("one of {}", quoted.join(", ")),
    }
}
