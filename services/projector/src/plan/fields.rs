//! What Terra's columns cannot hold, checked before any sink sees it.

use super::{EventPlan, MAX_FIELD};

/// What Terra's columns cannot hold is poison, named, rather than a database error later.
pub(super) fn check_fields(plan: &EventPlan) -> Result<(), String> {
    let user_ok = |user_id: &str| -> Result<(), String> {
        match terra_core::UserId::parse(user_id) {
            // an empty id is Terra's to send; only what the column cannot hold is poison
            Ok(_) | Err(terra_core::IdError::Empty { .. }) => Ok(()),
            Err(err) => Err(err.to_string()),
        }
    };
    let mut texts: Vec<(&str, &str)> = Vec::new();
    for user in plan
        .seen_users
        .iter()
        .chain(plan.lifecycle.iter().map(|c| &c.user))
    {
        user_ok(&user.user_id)?;
        texts.extend([
            ("user_id", user.user_id.as_str()),
            ("provider", user.provider.as_str()),
            ("created_at", user.created_at.as_str()),
        ]);
        texts.extend(user.reference_id.as_deref().map(|v| ("reference_id", v)));
        texts.extend(user.scopes.as_deref().map(|v| ("scopes", v)));
    }
    for row in &plan.payloads {
        if let Some(user_id) = &row.user_id {
            user_ok(user_id)?;
            texts.push(("user_id", user_id));
        }
        texts.extend([
            ("type", row.event_type.as_str()),
            ("natural key", row.natural_key.as_str()),
        ]);
        texts.extend(row.data_type.as_deref().map(|v| ("data_type", v)));
        texts.extend(row.start_time.as_deref().map(|v| ("start_time", v)));
        texts.extend(row.end_time.as_deref().map(|v| ("end_time", v)));
    }
    for (name, value) in texts {
        if value.len() > MAX_FIELD {
            return Err(format!(
                "{name} is {} bytes long (at most {MAX_FIELD})",
                value.len()
            ));
        }
        if value.contains('\0') {
            return Err(format!("{name} contains a NUL character"));
        }
    }
    Ok(())
}
