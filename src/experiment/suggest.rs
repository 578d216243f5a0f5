//! "Did you mean ...?" for misspelt names: the closest known name by edit
//! distance, offered only when it is close enough to be a typo.

/// The known name closest to `given`, when it is within a typo's distance.
pub fn closest<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (given.chars().count() / 3).max(2);
    known
        .into_iter()
        .map(|name| (strsim::damerau_levenshtein(given, name), name))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// ` (did you mean `x`?)`, or nothing.
pub fn hint<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    closest(given, known)
        .map(|name| format!(" (did you mean `{name}`?)"))
        .unwrap_or_default()
}

/// The hint for a YAML reader's "unknown field `x`, expected one of a, b" message.
pub fn for_unknown_field(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return String::new();
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return String::new();
    };
    let known = expected
        .trim_start_matches(|c: char| c == ',' || c.is_whitespace())
        .trim_start_matches("expected one of")
        .trim_start_matches("expected")
        .split(',')
        .map(|name| name.trim().trim_matches('`'))
        .filter(|name| !name.is_empty());
    hint(given, known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion_and_strangers_do_not() {
        let known = ["concurrency", "rate", "requests", "batch_size"];
        assert_eq!(closest("concurency", known), Some("concurrency"));
        assert_eq!(closest("requets", known), Some("requests"));
        assert_eq!(closest("temperature", known), None);
        assert_eq!(
            for_unknown_field("unknown field `repeets`, expected one of model, params, repeats"),
            " (did you mean `repeats`?)"
        );
        assert_eq!(for_unknown_field("invalid u32"), "");
    }
}
