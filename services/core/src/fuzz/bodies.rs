//! Webhook bodies made from Terra's fixtures (`tests/fixtures/webhooks/`) with mutations:
//! fields classification reads set to other values and types (strings, numbers, huge
//! numbers, null, arrays, objects, unicode), nodes anywhere replaced, removed, inserted or
//! wrapped in more nesting, the event type changed (one type's shape under another's name),
//! and at the text level repeated keys, a flipped byte, truncation, trailing bytes and lone
//! surrogate escapes. Properties: classification never panics, the fast path agrees with
//! the `Value` path whenever it answers, every payload id stays bounded; and the fast path
//! answers for most of these inputs (a regression that turned it off would fail here).

use std::cell::Cell;
use std::time::Instant;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::classify::{EnvelopeFields, both_paths, classify, envelope_fast_path, envelope_fields};
use crate::keys::{MAX_PAYLOAD_ID_LEN, data_payload_id, event_payload_id};

/// Floors on how often the fast path answers (percent): for fixtures as they are (verbatim or
/// re-serialised), for mutated fixtures that are still JSON objects, and for every input
/// that is JSON (measured at 100, 40 and 52).
const FAST_FLOOR_FIXTURES: f64 = 99.0;
const FAST_FLOOR_MUTATED: f64 = 30.0;
const FAST_FLOOR_JSON: f64 = 40.0;

const EVENT_TYPES: &[&str] = &[
    "activity",
    "athlete",
    "body",
    "daily",
    "menstruation",
    "nutrition",
    "sleep",
    "planned_workout",
    "hormone",
    "health_observation",
    "auth",
    "user_reauth",
    "deauth",
    "permission_change",
    "healthcheck",
    "s3_payload",
    "large_request_processing",
    "",
    "SLEEP",
    "sleep ",
];

/// Fields classification reads, as JSON pointers.
const FIELDS: &[&str] = &[
    "/type",
    "/user",
    "/user/user_id",
    "/new_user",
    "/new_user/user_id",
    "/old_user/user_id",
    "/version",
    "/status",
    "/reference",
    "/data",
    "/data/0",
    "/data/0/metadata",
    "/data/0/metadata/summary_id",
    "/data/0/metadata/start_time",
    "/data/0/metadata/end_time",
    "/data/0/metadata/id",
    "/data/0/metadata/planned_date",
    "/data/1/metadata/start_time",
    "/data/1/metadata/summary_id",
    "/athlete",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// A field classification reads gets `value` (its parents made when missing).
    SetField(usize, Value),
    /// Node number `at` (pre-order, modulo the node count) becomes `value`.
    Replace(u32, Value),
    /// A child of container node `at` is removed.
    Remove(u32, u32),
    /// `key: value` goes into object node `at` (or `value` onto array node `at`).
    Insert(u32, String, Value),
    /// Node `at` is wrapped in an array or in an object.
    Wrap(u32, bool),
    /// The event type changes.
    Retype(&'static str),
}

#[derive(Debug, Clone)]
enum TextMutation {
    None,
    /// A repeated key at the top: `{"<key>": <json>, …the rest`.
    RepeatedKey(&'static str, String),
    /// Byte `at` (modulo the length) becomes `byte`.
    FlipByte(u32, u8),
    /// The text is cut at `at` (modulo the length).
    Truncate(u32),
    /// Bytes after the document.
    Trailing(Vec<u8>),
    /// The first character of the `n`-th string becomes a lone surrogate escape.
    LoneSurrogate(u32),
}

#[derive(Debug, Clone)]
struct Body {
    fixture: usize,
    /// The fixture's exact bytes, untouched.
    verbatim: bool,
    mutations: Vec<Mutation>,
    pretty: bool,
    text: TextMutation,
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e300f64..1e300).prop_map(|f| json!(f)),
        Just(json!(1e20)),
        "\\PC{0,16}".prop_map(Value::String),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})?"
            .prop_map(Value::String),
        "[a-z0-9-]{0,40}".prop_map(Value::String),
        prop::sample::select(EVENT_TYPES).prop_map(|t| json!(t)),
        Just(json!("../../etc")),
        Just(json!("\u{0}\u{202e}\u{1F600}")),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,10}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        5 => (0..FIELDS.len(), value()).prop_map(|(f, v)| Mutation::SetField(f, v)),
        2 => (any::<u32>(), value()).prop_map(|(at, v)| Mutation::Replace(at, v)),
        2 => (any::<u32>(), any::<u32>()).prop_map(|(at, k)| Mutation::Remove(at, k)),
        2 => (any::<u32>(), "(type|user|user_id|data|metadata|summary_id|start_time|[a-z]{1,6})", value())
            .prop_map(|(at, k, v)| Mutation::Insert(at, k, v)),
        1 => (any::<u32>(), any::<bool>()).prop_map(|(at, a)| Mutation::Wrap(at, a)),
        2 => prop::sample::select(EVENT_TYPES).prop_map(Mutation::Retype),
    ]
}

fn text_mutation() -> impl Strategy<Value = TextMutation> {
    prop_oneof![
        12 => Just(TextMutation::None),
        1 => (
            prop::sample::select(&["type", "user", "data", "version", "new_user"][..]),
            value().prop_map(|v| v.to_string())
        )
            .prop_map(|(k, v)| TextMutation::RepeatedKey(k, v)),
        1 => (any::<u32>(), any::<u8>()).prop_map(|(at, b)| TextMutation::FlipByte(at, b)),
        1 => any::<u32>().prop_map(TextMutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(TextMutation::Trailing),
        1 => any::<u32>().prop_map(TextMutation::LoneSurrogate),
    ]
}

fn body(fixtures: usize) -> impl Strategy<Value = Body> {
    (
        0..fixtures,
        prop::bool::weighted(0.05),
        prop::collection::vec(mutation(), 0..5),
        any::<bool>(),
        text_mutation(),
    )
        .prop_map(|(fixture, verbatim, mutations, pretty, text)| Body {
            fixture,
            verbatim,
            mutations,
            pretty,
            text,
        })
}

fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn node(value: &mut Value, at: u32) -> &mut Value {
    let mut all = Vec::new();
    pointers(value, String::new(), &mut all);
    let pointer = all[at as usize % all.len()].clone();
    value.pointer_mut(&pointer).expect("a pointer just listed")
}

/// Sets `pointer`, making missing parents objects (an array index past the end is skipped).
fn set(root: &mut Value, pointer: &str, new: Value) {
    let mut current = root;
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let next = match current {
            Value::Object(map) => {
                let entry = map
                    .entry((*part).to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if last {
                    *entry = new;
                    return;
                }
                entry
            }
            Value::Array(items) => {
                match part.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(item) if last => {
                        *item = new;
                        return;
                    }
                    Some(item) => item,
                    None => return,
                }
            }
            _ => return,
        };
        current = next;
    }
}

fn apply(value: &mut Value, mutation: &Mutation) {
    match mutation {
        Mutation::SetField(field, new) => set(value, FIELDS[*field], new.clone()),
        Mutation::Replace(at, new) => *node(value, *at) = new.clone(),
        Mutation::Remove(at, pick) => match node(value, *at) {
            Value::Object(map) if !map.is_empty() => {
                let key = map.keys().nth(*pick as usize % map.len()).cloned();
                if let Some(key) = key {
                    map.remove(&key);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                items.remove(*pick as usize % items.len());
            }
            _ => {}
        },
        Mutation::Insert(at, key, new) => match node(value, *at) {
            Value::Object(map) => {
                map.insert(key.clone(), new.clone());
            }
            Value::Array(items) => items.push(new.clone()),
            _ => {}
        },
        Mutation::Wrap(at, in_array) => {
            let target = node(value, *at);
            let inner = target.take();
            *target = if *in_array {
                Value::Array(vec![inner])
            } else {
                json!({ "x": inner })
            };
        }
        Mutation::Retype(event_type) => set(value, "/type", json!(event_type)),
    }
}

fn mutate_text(mut text: Vec<u8>, mutation: &TextMutation) -> Vec<u8> {
    match mutation {
        TextMutation::None => {}
        TextMutation::RepeatedKey(key, json) => {
            if text.first() == Some(&b'{') {
                let repeated = format!("{{\"{key}\": {json}, ");
                text.splice(0..1, repeated.into_bytes());
            }
        }
        TextMutation::FlipByte(at, byte) => {
            if !text.is_empty() {
                let at = *at as usize % text.len();
                text[at] = *byte;
            }
        }
        TextMutation::Truncate(at) => text.truncate(*at as usize % (text.len() + 1)),
        TextMutation::Trailing(bytes) => text.extend_from_slice(bytes),
        TextMutation::LoneSurrogate(n) => {
            let quotes: Vec<usize> = text
                .iter()
                .enumerate()
                .filter(|(i, b)| **b == b'"' && (*i == 0 || text[i - 1] != b'\\'))
                .map(|(i, _)| i)
                .step_by(2)
                .collect();
            if !quotes.is_empty() {
                let at = quotes[*n as usize % quotes.len()] + 1;
                text.splice(at..at, b"\\ud83d".iter().copied());
            }
        }
    }
    text
}

fn fixtures() -> Vec<(Vec<u8>, Value)> {
    let dir = format!(
        "{}/../../tests/fixtures/webhooks",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let value = serde_json::from_slice(&bytes).unwrap();
            (bytes, value)
        })
        .collect()
}

#[test]
fn fuzz_classify_fast_path_agrees_and_answers_for_most_bodies() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 20, "fixtures lost");
    let (mut runner, cases) = super::runner();
    let executions = Cell::new(0u64);
    let json = Cell::new(0u64);
    let fast_on_json = Cell::new(0u64);
    let unmutated = Cell::new(0u64);
    let fast_on_unmutated = Cell::new(0u64);
    let mutated = Cell::new(0u64);
    let fast_on_mutated = Cell::new(0u64);
    let verbatim = Cell::new(0u64);
    let light_on_verbatim = Cell::new(0u64);
    let started = Instant::now();
    let result = runner.run(&body(fixtures.len()), |input| {
        let (bytes, value) = &fixtures[input.fixture];
        let text_mutated = !matches!(input.text, TextMutation::None);
        let body = if input.verbatim {
            bytes.clone()
        } else {
            let mut value = value.clone();
            for mutation in &input.mutations {
                apply(&mut value, mutation);
            }
            let text = if input.pretty {
                serde_json::to_vec_pretty(&value)
            } else {
                serde_json::to_vec(&value)
            }
            .expect("a Value serialises");
            mutate_text(text, &input.text)
        };
        let (fast, slow) = both_paths(&body);
        executions.set(executions.get() + 1);
        if let Some(fast) = &fast {
            prop_assert_eq!(
                Ok(fast),
                slow.as_ref(),
                "body {:?}",
                String::from_utf8_lossy(&body)
            );
        }
        // the envelope's fields, read without the records, are the whole classification's
        let whole = slow.clone().map(EnvelopeFields::from);
        prop_assert_eq!(
            &envelope_fields(&body),
            &whole,
            "body {:?}",
            String::from_utf8_lossy(&body)
        );
        let light = envelope_fast_path(&body);
        if let Some(light) = &light {
            prop_assert_eq!(
                Ok(light),
                whole.as_ref(),
                "light path, body {:?}",
                String::from_utf8_lossy(&body)
            );
        }
        if input.verbatim {
            verbatim.set(verbatim.get() + 1);
            light_on_verbatim.set(light_on_verbatim.get() + u64::from(light.is_some()));
        }
        if slow.is_ok() {
            json.set(json.get() + 1);
            fast_on_json.set(fast_on_json.get() + u64::from(fast.is_some()));
        }
        let count = |seen: &Cell<u64>, answered: &Cell<u64>| {
            seen.set(seen.get() + 1);
            answered.set(answered.get() + u64::from(fast.is_some()));
        };
        if input.verbatim || (input.mutations.is_empty() && !text_mutated) {
            count(&unmutated, &fast_on_unmutated);
        } else if slow.is_ok() && body.first() == Some(&b'{') {
            count(&mutated, &fast_on_mutated);
        }
        // what the projections derive from it stays bounded
        if let Ok(c) = classify(&body) {
            let user = c.user_id.as_deref().unwrap_or("");
            for record in &c.records {
                let id = data_payload_id(c.version.as_deref(), &c.event_type, user, record);
                prop_assert!(
                    id.len() <= MAX_PAYLOAD_ID_LEN && id.split('/').count() == 3,
                    "{}",
                    id
                );
            }
            let id = event_payload_id(c.version.as_deref(), &c.event_type, c.user_id.as_deref(), 0);
            prop_assert!(
                id.len() <= MAX_PAYLOAD_ID_LEN && id.split('/').count() == 3,
                "{}",
                id
            );
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let on_unmutated = super::percent(fast_on_unmutated.get(), unmutated.get());
    let on_mutated = super::percent(fast_on_mutated.get(), mutated.get());
    let on_json = super::percent(fast_on_json.get(), json.get());
    let details = format!(
        "{:.1}% JSON; the fast path answered for {on_unmutated:.1}% of {} fixtures as they are, {on_mutated:.1}% of {} mutated fixtures still JSON objects, {on_json:.1}% of {} JSON inputs (the Value path took the rest)",
        super::percent(json.get(), executions.get()),
        unmutated.get(),
        mutated.get(),
        json.get(),
    );
    super::report("classify", executions.get(), started, &details);
    assert!(executions.get() >= u64::from(cases));
    // every fixture is the usual shape: the envelope's light path must answer for all of them
    let light_verbatim = super::percent(light_on_verbatim.get(), verbatim.get());
    assert!(
        light_verbatim >= 100.0,
        "the envelope's light path declined a fixture as it is: {light_verbatim:.1}% of {}",
        verbatim.get()
    );
    for (share, floor) in [
        (on_unmutated, FAST_FLOOR_FIXTURES),
        (on_mutated, FAST_FLOOR_MUTATED),
        (on_json, FAST_FLOOR_JSON),
    ] {
        assert!(
            share >= floor,
            "the fast path answered too rarely: {details}"
        );
    }
}
