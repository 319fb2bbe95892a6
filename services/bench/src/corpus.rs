//! Distinct webhook bodies for the end-to-end benchmark (`standalone`): every fixture as a
//! template in which the user, the records' ids and their days are replaced per delivery, so
//! delivery `seq` is new data for the projections (its own rows and objects), not a copy the
//! sinks skip. Data types are in the rotation [`DATA_WEIGHT`] times each, other events once
//! (Terra's traffic is mostly data). Delivery `seq` uses template `seq % T`, user `(seq / T) % users` and day
//! `seq / (T · users)` after 2021-01-01: no two deliveries name the same record (Terra's
//! de-duplication keys: summary ids, the day of `start_time`, timestamps, planned dates,
//! event ids). Bodies keep Terra's separators (`", "`, `": "`).

use serde_json::Value;

/// Keys whose string values identify a record or an event: made unique per delivery.
const ID_KEYS: &[&str] = &["summary_id", "id", "planned_workout_id", "event_id"];
/// Keys whose values carry a record's day: the date part is replaced per delivery.
const DAY_KEYS: &[&str] = &["start_time", "end_time", "timestamp", "planned_date"];

// placeholders no fixture contains and JSON does not escape
/// How many times each data type is in the rotation (other events: once).
pub(crate) const DATA_WEIGHT: usize = 4;

const USER: &str = "@@U@@";
const SEQ: &str = "@@S@@";
const DAY: &str = "@@D@@";
const MARK: usize = USER.len();

/// One template: the serialized body cut at its placeholders.
struct Template {
    name: &'static str,
    parts: Vec<Part>,
    /// Which of a data type's copies in the rotation this is: its own days.
    copy: u64,
}

enum Part {
    Text(String),
    User,
    Seq,
    Day,
}

/// The templates and the user count.
pub(crate) struct Corpus {
    templates: Vec<Template>,
    users: u64,
}

impl Corpus {
    pub(crate) fn new(users: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(users > 0, "--users must be at least 1");
        let mut templates = Vec::new();
        for (name, body) in terra_core::fixtures::ALL {
            anyhow::ensure!(
                !body.windows(2).any(|w| w == b"@@"),
                "fixture {name} contains the placeholder mark @@"
            );
            let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
                continue;
            };
            mark(&mut value, None, false);
            let mut text = terra_json(&value);
            // a body naming no id of its own (auth_cancelled, healthcheck) gets a field for
            // the delivery's number, as `terra-bench ingress` does for every body
            if !text.contains(SEQ) && text.starts_with('{') && text.len() > 2 {
                text = format!("{{\"bench_seq\": {SEQ}, {}", &text[1..]);
            }
            // Terra's traffic is mostly data: each data type is in the rotation four times,
            // every other event once
            let data = terra_core::classify::classify(body)
                .is_ok_and(|c| c.group == terra_core::classify::EventGroup::Data);
            for copy in 0..if data { DATA_WEIGHT } else { 1 } {
                templates.push(Template {
                    name,
                    parts: split(&text),
                    copy: copy as u64,
                });
            }
        }
        anyhow::ensure!(!templates.is_empty(), "no fixture parses as JSON");
        Ok(Self { templates, users })
    }

    /// Templates in rotation.
    pub(crate) fn len(&self) -> u64 {
        self.templates.len() as u64
    }

    /// The body of delivery `seq`, and its template's name.
    pub(crate) fn body(&self, seq: u64) -> (Vec<u8>, &'static str) {
        let t = self.len();
        let template = &self.templates[(seq % t) as usize];
        let user = format!("bench-{:08}", (seq / t) % self.users);
        // each copy of a type has its own days: records keyed by their day stay distinct
        let day = date_after_2021(seq / (t * self.users) * DATA_WEIGHT as u64 + template.copy);
        let seq_text = seq.to_string();
        let mut out = Vec::with_capacity(1200);
        for part in &template.parts {
            out.extend_from_slice(match part {
                Part::Text(text) => text.as_bytes(),
                Part::User => user.as_bytes(),
                Part::Seq => seq_text.as_bytes(),
                Part::Day => day.as_bytes(),
            });
        }
        (out, template.name)
    }
}

/// Puts the placeholders into a fixture: user ids, ids with the delivery's number appended,
/// dates with the delivery's day.
fn mark(value: &mut Value, key: Option<&str>, in_user: bool) {
    match value {
        Value::Object(map) => {
            let user_like = |k: &str| matches!(k, "user" | "old_user" | "new_user");
            for (k, v) in map.iter_mut() {
                if in_user && k == "user_id" && v.is_string() {
                    *v = Value::String(USER.into());
                } else {
                    mark(v, Some(k), user_like(k));
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mark(v, key, false)),
        Value::String(s) => {
            let key = key.unwrap_or_default();
            if ID_KEYS.contains(&key) {
                *s = format!("{s}-{SEQ}");
            } else if DAY_KEYS.contains(&key) && is_date(s) {
                *s = format!("{DAY}{}", &s[10..]);
            }
        }
        _ => {}
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b[..4]
            .iter()
            .chain(&b[5..7])
            .chain(&b[8..10])
            .all(u8::is_ascii_digit)
}

fn split(text: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("@@") {
        parts.push(Part::Text(rest[..at].to_owned()));
        let marker = &rest[at..at + MARK];
        parts.push(match marker {
            USER => Part::User,
            SEQ => Part::Seq,
            _ => Part::Day,
        });
        rest = &rest[at + MARK..];
    }
    parts.push(Part::Text(rest.to_owned()));
    parts
}

/// JSON with Terra's separators (Python's `json.dumps` defaults: `", "` and `": "`).
fn terra_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), terra_json(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(terra_json).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// `YYYY-MM-DD`, `days` after 2021-01-01 (day 18,628 of the Unix epoch).
fn date_after_2021(days: u64) -> String {
    let ms = (18_628 + days as i64) * 86_400_000;
    terra_core::keys::unix_ms_to_utc_seconds(ms)[..10].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_from_2021() {
        assert_eq!(date_after_2021(0), "2021-01-01");
        assert_eq!(date_after_2021(59), "2021-03-01");
        assert_eq!(date_after_2021(365), "2022-01-01");
        assert_eq!(date_after_2021(365 + 365 + 365 + 59), "2024-02-29");
    }

    #[test]
    fn deliveries_are_distinct_json_with_the_users_and_days_they_name() {
        let corpus = Corpus::new(3).unwrap();
        let t = corpus.len();
        let mut seen = std::collections::HashSet::new();
        let mut days = std::collections::HashSet::new();
        for seq in 0..(t * 3 * 2) {
            let (body, name) = corpus.body(seq);
            let value: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!("{name} #{seq}: {e}: {}", String::from_utf8_lossy(&body))
            });
            assert!(seen.insert(body.clone()), "{name} #{seq} repeats a body");
            if let Some(user) = value.pointer("/user/user_id") {
                let expected = format!("bench-{:08}", (seq / t) % 3);
                assert_eq!(user.as_str(), Some(expected.as_str()), "{name}");
            }
            if name == "activity" {
                let id = value.pointer("/data/0/metadata/summary_id").unwrap();
                assert_eq!(id.as_str(), Some(format!("act-55821-{seq}").as_str()));
                assert!(String::from_utf8_lossy(&body).contains("\"type\": \"activity\", "));
            }
            // records keyed by their day (daily): one per (user, day), whatever the copy
            if name == "daily" {
                let start = value.pointer("/data/0/metadata/start_time").unwrap();
                let user = value.pointer("/user/user_id").unwrap();
                let key = format!("{user} {}", &start.as_str().unwrap()[..10]);
                assert!(days.insert(key.clone()), "daily {key} twice");
            }
        }
    }
}
