//! Checks on text people type into forms, shared by every form of the
//! domain: required, bounded, free of control characters, one line.

use std::collections::BTreeMap;

/// Problems with a submitted form, by field name.
pub(crate) type FieldErrors = BTreeMap<String, String>;

/// `field` trimmed, when it is present, at most `max` characters, and free
/// of control characters other than line breaks and tabs; otherwise what is
/// wrong, naming the field as `label`.
pub(crate) fn text(field: &str, max: usize, label: &str) -> Result<String, String> {
    let value = field.trim();
    if value.is_empty() {
        return Err(format!("{label} is required"));
    }
    if value.chars().count() > max {
        return Err(format!("{label} has at most {max} characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err(format!("{label} contains control characters"));
    }
    Ok(value.to_owned())
}

/// [`text`], on one line.
pub(crate) fn single_line(field: &str, max: usize, label: &str) -> Result<String, String> {
    let value = text(field, max, label)?;
    if value.contains(['\n', '\r']) {
        return Err(format!("{label} must be on one line"));
    }
    Ok(value)
}
