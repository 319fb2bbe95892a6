//! The typed, borrowing classification path. Returns `None` whenever the body is anything
//! but the usual shape (the `Value` path then decides), so both paths always agree.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{
    Classification, DataRecord, EventGroup, UserFields, is_report_scoped, key_without_hash,
    start_of, user_ids,
};

#[derive(Deserialize)]
struct Top<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<MapOnly<User<'a>>>,
    #[serde(borrow)]
    new_user: Option<MapOnly<User<'a>>>,
    #[serde(borrow)]
    old_user: Option<MapOnly<User<'a>>>,
    #[serde(borrow)]
    version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reference: Option<Cow<'a, str>>,
    #[serde(borrow)]
    scopes_added: Option<Cow<'a, str>>,
    #[serde(borrow)]
    scopes_removed: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    reference_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<DataField<'a>>,
    athlete: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct User<'a> {
    #[serde(borrow)]
    user_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    provider: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reference_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    scopes: Option<Cow<'a, str>>,
    #[serde(borrow)]
    created_at: Option<Cow<'a, str>>,
}

impl User<'_> {
    fn fields(&self) -> UserFields {
        let owned = |v: &Option<Cow<'_, str>>| v.as_deref().map(str::to_owned);
        UserFields {
            user_id: text(&self.user_id),
            provider: owned(&self.provider),
            reference_id: owned(&self.reference_id),
            scopes: owned(&self.scopes),
            created_at: owned(&self.created_at),
        }
    }
}

/// `data`: the records of a data event, or the resource of a report-scoped event (lab
/// reports), of which only `reference_id` is read.
enum DataField<'a> {
    Records(Vec<MapOnly<Item<'a>>>),
    Report(Option<Cow<'a, str>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for DataField<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = DataField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of records or an object")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut records = Vec::new();
                while let Some(item) = seq.next_element()? {
                    records.push(item);
                }
                Ok(DataField::Records(records))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut reference_id = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "reference_id" {
                        // the last one, as the `Value` path keeps it
                        reference_id = map.next_value::<Option<Cow<'de, str>>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(DataField::Report(reference_id))
            }
        }
        deserializer.deserialize_any(DataVisitor)
    }
}

/// One record: the fields the identity reads, at the record's top level (flat shapes),
/// under `metadata`, and under `details.metadata` (the `Value` path's `record_field`).
/// Spelled out rather than `#[serde(flatten)]`, which would buffer every other field of the
/// record (sample arrays) instead of skipping it.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    metadata: Option<MapOnly<Fields<'a>>>,
    #[serde(borrow)]
    details: Option<MapOnly<Details<'a>>>,
    #[serde(borrow)]
    summary_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    start_time: Option<Scalar<'a>>,
    #[serde(borrow)]
    end_time: Option<Scalar<'a>>,
    #[serde(borrow)]
    id: Option<Scalar<'a>>,
    #[serde(borrow)]
    planned_date: Option<Scalar<'a>>,
    #[serde(borrow)]
    timestamp: Option<Scalar<'a>>,
    #[serde(borrow)]
    planned_workout_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    route_id: Option<Scalar<'a>>,
}

impl Item<'_> {
    fn get(&self, key: &str) -> Option<String> {
        text(match key {
            "summary_id" => &self.summary_id,
            "start_time" => &self.start_time,
            "end_time" => &self.end_time,
            "id" => &self.id,
            "planned_date" => &self.planned_date,
            "timestamp" => &self.timestamp,
            "planned_workout_id" => &self.planned_workout_id,
            "route_id" => &self.route_id,
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
struct Details<'a> {
    #[serde(borrow)]
    metadata: Option<MapOnly<Fields<'a>>>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    summary_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    start_time: Option<Scalar<'a>>,
    #[serde(borrow)]
    end_time: Option<Scalar<'a>>,
    #[serde(borrow)]
    id: Option<Scalar<'a>>,
    #[serde(borrow)]
    planned_date: Option<Scalar<'a>>,
    #[serde(borrow)]
    timestamp: Option<Scalar<'a>>,
    #[serde(borrow)]
    planned_workout_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    route_id: Option<Scalar<'a>>,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<String> {
        text(match key {
            "summary_id" => &self.summary_id,
            "start_time" => &self.start_time,
            "end_time" => &self.end_time,
            "id" => &self.id,
            "planned_date" => &self.planned_date,
            "timestamp" => &self.timestamp,
            "planned_workout_id" => &self.planned_workout_id,
            "route_id" => &self.route_id,
            _ => return None,
        })
    }
}

/// A struct read only from a JSON object. Derived structs also accept arrays (fields by
/// position), which the `Value` path never reads as objects; refusing them keeps both paths
/// in agreement (`{"new_user": [0]}` has no user id).
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapVisitor<T> {
            type Value = MapOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(MapOnly)
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// A string or number as text (like the `Value` path's `scalar_text`); `None` for anything
/// else (booleans, objects, arrays).
struct Scalar<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Owned(v))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Owned(
                    serde_json::Number::from(v).to_string(),
                ))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Owned(
                    serde_json::Number::from(v).to_string(),
                ))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar(
                    serde_json::Number::from_f64(v).map(|n| Cow::Owned(n.to_string())),
                ))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

fn text(scalar: &Option<Scalar<'_>>) -> Option<String> {
    scalar
        .as_ref()
        .and_then(|s| s.0.as_deref())
        .map(str::to_owned)
}

/// True when the body may hold a number beyond `f64` (about 1.8e308), which serde_json's
/// `Value` refuses: a number below 10^d (d digits, fraction digits counted too) times 10^e
/// stays below 10^308 when d + e <= 308. Conservative (digits in strings count as well): a
/// false alarm only sends the body the `Value` way.
pub(super) fn may_hold_a_huge_number(body: &[u8]) -> bool {
    could_hold_a_huge_number(body) && holds_a_long_number(body)
}

/// A quick test that is true whenever [`holds_a_long_number`] is (and for a few more). That
/// scan finds a run of more than 308 digits, or an exponent that with the digits before it
/// passes 308. An exponent of 100 or more has three digits or more; a smaller one needs more
/// than 208 digits before it. Two bytes [`SAMPLE`] apart that are both digits or points show
/// any run longer than 2 × `SAMPLE`, so this looks only for those and for `e`/`E` after a
/// digit or a point followed by an optional `+` and three digits. Most bodies have neither
/// (ids such as `8e-9f` or `1e29` are not enough), and the byte-by-byte scan is then skipped.
pub(super) fn could_hold_a_huge_number(body: &[u8]) -> bool {
    const SAMPLE: usize = 100;
    let numeric = |b: u8| b.is_ascii_digit() || b == b'.';
    let long_exponent = |at: usize| {
        let rest = &body[at + 1..];
        let rest = rest.strip_prefix(b"+").unwrap_or(rest);
        rest.len() >= 3 && rest[..3].iter().all(u8::is_ascii_digit)
    };
    memchr::memchr2_iter(b'e', b'E', body)
        .any(|i| i > 0 && numeric(body[i - 1]) && long_exponent(i))
        || body
            .iter()
            .step_by(SAMPLE)
            .zip(body.iter().skip(SAMPLE).step_by(SAMPLE))
            .any(|(a, b)| numeric(*a) && numeric(*b))
}

/// The byte-by-byte test behind [`may_hold_a_huge_number`].
pub(super) fn holds_a_long_number(body: &[u8]) -> bool {
    let mut digits = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'0'..=b'9' => digits += 1,
            b'.' => {}
            b'e' | b'E' if digits > 0 => {
                let mut j = i + 1;
                let negative = body.get(j) == Some(&b'-');
                if matches!(body.get(j), Some(b'+' | b'-')) {
                    j += 1;
                }
                let mut exponent = 0usize;
                while let Some(d @ b'0'..=b'9') = body.get(j) {
                    exponent = exponent
                        .saturating_mul(10)
                        .saturating_add(usize::from(d - b'0'));
                    j += 1;
                }
                if !negative && digits.saturating_add(exponent) > 308 {
                    return true;
                }
                digits = 0;
                i = j;
                continue;
            }
            _ => digits = 0,
        }
        if digits > 308 {
            return true;
        }
        i += 1;
    }
    false
}

/// The top-level fields an envelope carries, and nothing else: `data` and every other field
/// are skipped without being read into records.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<MapOnly<UserId<'a>>>,
    #[serde(borrow)]
    new_user: Option<MapOnly<UserId<'a>>>,
    #[serde(borrow)]
    old_user: Option<MapOnly<UserId<'a>>>,
    #[serde(borrow)]
    version: Option<Cow<'a, str>>,
}

/// The `user_id` of a user object (its other fields are skipped).
#[derive(Deserialize)]
struct UserId<'a> {
    #[serde(borrow)]
    user_id: Option<Scalar<'a>>,
}

/// [`super::envelope_fields`]'s typed path: `None` where it declines (the body is not the
/// usual shape), and then the caller classifies the whole body. Where it answers, the answer
/// is what the whole classification says of these fields (fuzzed in `crate::fuzz`).
pub(super) fn envelope_fields(body: &[u8]) -> Option<super::EnvelopeFields> {
    let utf8 = std::str::from_utf8(body).ok()?;
    if may_hold_a_huge_number(body) {
        return None;
    }
    let MapOnly(head) = serde_json::from_str::<MapOnly<Head<'_>>>(utf8).ok()?;
    let event_type = head.event_type.map(Cow::into_owned).unwrap_or_default();
    let id = |user: &Option<MapOnly<UserId<'_>>>| user.as_ref().and_then(|u| text(&u.0.user_id));
    let (user_id, old_user_id) = user_ids(&head.user, &head.new_user, &head.old_user, id);
    Some(super::EnvelopeFields {
        group: EventGroup::of(&event_type),
        event_type,
        user_id,
        old_user_id,
        version: head.version.map(Cow::into_owned),
    })
}

pub(super) fn classify(body: &[u8]) -> Option<Classification> {
    // serde_json skips the values of fields it ignores without checking their UTF-8 or the
    // range of their numbers, both of which the `Value` path refuses: those bodies go the
    // `Value` way (found by `crate::fuzz`)
    let utf8 = std::str::from_utf8(body).ok()?;
    if may_hold_a_huge_number(body) {
        return None;
    }
    let MapOnly(top) = serde_json::from_str::<MapOnly<Top<'_>>>(utf8).ok()?;
    let event_type = top.event_type.map(Cow::into_owned).unwrap_or_default();
    let group = EventGroup::of(&event_type);
    let fields = |user: &Option<MapOnly<User<'_>>>| user.as_ref().map(|u| u.0.fields());
    let (user, new_user, old_user) = (
        fields(&top.user),
        fields(&top.new_user),
        fields(&top.old_user),
    );
    let user_of = |fields: &Option<UserFields>| fields.as_ref().and_then(|u| u.user_id.clone());
    let (user_id, old_user_id) = user_ids(&user, &new_user, &old_user, user_of);
    let mut records = Vec::new();
    if group == EventGroup::Data && !is_report_scoped(&event_type) {
        if event_type == "athlete" {
            if top.athlete.is_some() {
                records.push(DataRecord {
                    index: 0,
                    natural_key: "athlete".to_owned(),
                    start_time: None,
                    end_time: None,
                });
            }
        } else {
            let items = match &top.data {
                Some(DataField::Records(items)) => items.as_slice(),
                _ => &[],
            };
            for (index, MapOnly(item)) in items.iter().enumerate() {
                let details = item.details.as_ref().and_then(|d| d.0.metadata.as_ref());
                let field = |key: &str| {
                    item.metadata
                        .as_ref()
                        .and_then(|m| m.0.get(key))
                        .or_else(|| item.get(key))
                        .or_else(|| details.and_then(|m| m.0.get(key)))
                };
                let start_time = start_of(&field);
                // a record that needs its content hashed goes the `Value` way
                let natural_key = key_without_hash(&event_type, &field, start_time.as_deref())?;
                records.push(DataRecord {
                    index,
                    natural_key,
                    start_time,
                    end_time: field("end_time"),
                });
            }
        }
    }
    Some(Classification {
        event_type,
        group,
        user_id,
        old_user_id,
        version: top.version.map(Cow::into_owned),
        status: top.status.map(Cow::into_owned),
        reference: top.reference.map(Cow::into_owned),
        records,
        user,
        new_user,
        old_user,
        scopes_added: top.scopes_added.map(Cow::into_owned),
        scopes_removed: top.scopes_removed.map(Cow::into_owned),
        data_type: top.data_type.map(Cow::into_owned),
        event_id: text(&top.event_id),
        reference_id: top
            .reference_id
            .map(Cow::into_owned)
            .or_else(|| match top.data {
                Some(DataField::Report(reference_id)) => reference_id.map(Cow::into_owned),
                _ => None,
            }),
    })
}
