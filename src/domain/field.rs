//! What is wrong with a field of a request, and the one text rule every
//! field shares. Pure.

/// Text no store may be given (GUARANTEES.md: "One behaviour, either store"):
/// PostgreSQL's `text` and `jsonb` cannot hold U+0000, and a store's refusal
/// would be a 5xx that a sender retries forever, so it is refused at the edge,
/// the same for either store.
pub fn unstorable(text: &str) -> bool {
    text.contains('\0')
}

/// The issue of a field that holds U+0000.
pub const UNSTORABLE: &str = "must not contain U+0000";

/// One problem with one field, as shown in an error's `details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    pub field: String,
    pub issue: String,
}

impl FieldIssue {
    pub fn new(field: impl Into<String>, issue: impl Into<String>) -> FieldIssue {
        FieldIssue {
            field: field.into(),
            issue: issue.into(),
        }
    }
}

/// A count a client asks for (a page, a page's size): a whole number from
/// 1 to `max`, or `None` with the issue of `field` added to `issues`.
pub fn count_up_to(
    field: &str,
    value: &str,
    max: usize,
    issues: &mut Vec<FieldIssue>,
) -> Option<usize> {
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Some(n),
        _ => {
            issues.push(FieldIssue::new(
                field,
                format!("must be an integer from 1 to {max}"),
            ));
            None
        }
    }
}
