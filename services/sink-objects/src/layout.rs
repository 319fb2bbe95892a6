//! The bytes of each object (terra-wire-format §7). Every other event is stored as the exact
//! webhook body. A data record is stored as a Terra-shaped payload whose `data` holds only
//! that record, so Terra's SDK models parse it: the body's own top-level fields in their
//! order, each value's bytes as received, `data` replaced by `[<the record's bytes>]`. A body
//! with a single record (and every `athlete` body) is stored as received.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The top-level entries of a JSON object, in order, values as raw text.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// Splits a data webhook body into one Terra-shaped body per record of its `data` array, in
/// order. `None` when the body has no `data` array of objects (the caller then stores the body
/// as received). A body with exactly one record yields the body itself, byte for byte.
pub fn split_records(body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let Entries(entries) = serde_json::from_slice(body).ok()?;
    let data = entries.iter().find(|(k, _)| k == "data")?.1;
    let records: Vec<&RawValue> = serde_json::from_str(data.get()).ok()?;
    if records.len() == 1 {
        return Some(vec![body.to_vec()]);
    }
    let out = records
        .iter()
        .map(|record| {
            let mut doc = Vec::with_capacity(body.len() / records.len().max(1) + 256);
            doc.push(b'{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    doc.extend_from_slice(b", ");
                }
                doc.extend_from_slice(
                    serde_json::to_string(key)
                        .expect("a string serialises")
                        .as_bytes(),
                );
                doc.extend_from_slice(b": ");
                if key == "data" {
                    doc.push(b'[');
                    doc.extend_from_slice(record.get().as_bytes());
                    doc.push(b']');
                } else {
                    doc.extend_from_slice(value.get().as_bytes());
                }
            }
            doc.push(b'}');
            doc
        })
        .collect();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_record_keeps_its_bytes_and_the_bodys_other_fields() {
        let body = br#"{"type": "activity", "user": {"user_id": "u1", "provider": "GARMIN"}, "data": [{"metadata": {"summary_id": "a"}, "x": 1.50}, {"metadata": {"summary_id": "b"}}], "version": "2022-03-16"}"#;
        let parts = split_records(body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            String::from_utf8(parts[0].clone()).unwrap(),
            r#"{"type": "activity", "user": {"user_id": "u1", "provider": "GARMIN"}, "data": [{"metadata": {"summary_id": "a"}, "x": 1.50}], "version": "2022-03-16"}"#
        );
        let second: serde_json::Value = serde_json::from_slice(&parts[1]).unwrap();
        assert_eq!(second["data"][0]["metadata"]["summary_id"], "b");
        assert_eq!(second["data"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn one_record_is_the_body_as_received() {
        let body = br#"{"type":"sleep","data":[{"a":1}],"user":{"user_id":"u"}}"#;
        assert_eq!(split_records(body).unwrap(), vec![body.to_vec()]);
    }

    #[test]
    fn bodies_without_a_data_array_are_not_split() {
        assert!(split_records(br#"{"type": "athlete", "athlete": {}}"#).is_none());
        assert!(split_records(br#"{"data": 3}"#).is_none());
        assert!(split_records(b"not json").is_none());
        assert_eq!(split_records(br#"{"data": []}"#).unwrap().len(), 0);
    }
}
