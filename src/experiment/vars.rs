//! `${NAME}` and `${NAME:-default}` in an experiment file. A name is looked
//! up in the file's own `variables:` section first, then in the environment,
//! then its default is taken; a name found nowhere is an error at its line
//! and column. Substitution is textual, before the YAML is read, so every
//! later error still points at the right line.

use super::Located;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The `variables:` section alone (every other key is read later).
#[derive(Deserialize)]
struct VariablesOnly {
    #[serde(default)]
    variables: BTreeMap<String, Value>,
}

/// `text` with every `${...}` replaced.
pub fn substitute(path: &Path, text: &str) -> anyhow::Result<String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let defined: VariablesOnly = super::file::parse(path, text)?;
    let env = |name: &str| Ok(std::env::var(name).ok());
    let lookup = |name: &str| match defined.variables.get(name) {
        Some(Value::String(value)) => replace(value, &env)
            .map(Some)
            .map_err(|(_, message)| format!("variable `{name}`: {message}")),
        Some(other) => Ok(Some(other.to_string())),
        None => env(name),
    };
    replace(text, &lookup).map_err(|(offset, message)| {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() as u64 + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
        anyhow::Error::new(Located {
            file: path.to_path_buf(),
            line,
            column,
            message,
        })
    })
}

/// A name's value, `None` when it is not set, or why it cannot be had.
type Lookup<'a> = dyn Fn(&str) -> Result<Option<String>, String> + 'a;

/// Replaces every reference in `text`; an error is its byte offset and what was wrong.
fn replace(text: &str, lookup: &Lookup) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let offset = text.len() - rest.len() + start;
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or((offset, "`${` without a closing `}`".to_string()))?;
        let reference = &after[..end];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((
                offset,
                format!("`${{{reference}}}`: a variable name is letters, digits and `_`"),
            ));
        }
        let value = lookup(name).map_err(|message| (offset, message))?;
        match value.or_else(|| default.map(str::to_string)) {
            Some(value) => out.push_str(&value),
            None => {
                return Err((
                    offset,
                    format!(
                        "`${{{name}}}` is not defined: add it under `variables:`, set it in the environment, or write `${{{name}:-default}}`"
                    ),
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(text: &str) -> anyhow::Result<String> {
        substitute(Path::new("x.yaml"), text)
    }

    #[test]
    fn variables_then_environment_then_defaults() {
        std::env::set_var("TRACEBENCH_TEST_VARS_PORT", "9100");
        let text = "variables:\n  host: 10.0.0.1\n  port: ${TRACEBENCH_TEST_VARS_PORT:-8000}\nurl: http://${host}:${port}\nn: ${TRACEBENCH_TEST_VARS_UNSET:-4}\n";
        let out = sub(text).unwrap();
        assert!(out.contains("url: http://10.0.0.1:9100\n"), "{out}");
        assert!(out.contains("n: 4\n"), "{out}");
    }

    #[test]
    fn an_undefined_name_is_an_error_at_its_place() {
        let err = sub("a: 1\nb: x ${NOPE_NOT_SET_ANYWHERE}\n").unwrap_err();
        let located = err.downcast_ref::<Located>().unwrap();
        assert_eq!((located.line, located.column), (2, 6));
        assert!(located.message.contains("NOPE_NOT_SET_ANYWHERE"));
        assert!(sub("a: ${unclosed\n").is_err());
        assert!(sub("a: ${bad name}\n").is_err());
    }
}
