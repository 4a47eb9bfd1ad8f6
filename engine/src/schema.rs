//! The JSON Schema layer: validate the document against the checked-in workflow schema and turn
//! each error into a located, human diagnostic (unknown keys get a "did you mean").

use std::path::Path;
use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::diag::{Diagnostic, Diagnostics, Layer, did_you_mean, pointer_segment};
use crate::model::{ID_PATTERN, workflow_schema};
use crate::units::{DURATION_PATTERN, SIZE_PATTERN, UnitError};
use crate::yaml::SourceMap;

static SCHEMA: LazyLock<Value> = LazyLock::new(workflow_schema);

static VALIDATOR: LazyLock<Result<Validator, String>> =
    LazyLock::new(|| jsonschema::validator_for(&SCHEMA).map_err(|e| e.to_string()));

/// Validate `doc` against the workflow schema, appending one diagnostic per problem.
pub fn check(doc: &Value, map: &SourceMap, file: &Path, out: &mut Diagnostics) {
    let validator = match &*VALIDATOR {
        Ok(v) => v,
        Err(e) => {
            // Only reachable if the generated schema itself is broken: a bug, reported as such.
            out.push(Diagnostic::new(
                file,
                Default::default(),
                Layer::Schema,
                "",
                format!("internal error: the workflow schema does not compile: {e}"),
            ));
            return;
        }
    };
    let mut found = Diagnostics::default();
    for err in validator.iter_errors(doc) {
        describe(&err, doc, map, file, &mut found);
    }
    // "needs exactly one action; found none" is noise when the same step has an unknown key:
    // that key is almost always the misspelled action, and it has its own error.
    let unknown_parents: Vec<String> = found
        .iter()
        .filter(|d| d.message.starts_with("unknown key"))
        .filter_map(|d| {
            d.path
                .rsplit_once('/')
                .map(|(parent, _)| parent.to_string())
        })
        .collect();
    for d in found.0 {
        if d.message.contains("; found none") && unknown_parents.contains(&d.path) {
            continue;
        }
        out.push(d);
    }
}

/// The unit pattern ([`DURATION_PATTERN`] or [`SIZE_PATTERN`]) of the value at `pointer`, if it
/// is a duration or a size.
fn unit_pattern(pointer: &str) -> Option<&'static str> {
    let pattern = schema_for_instance(pointer)?.get("pattern")?.as_str()?;
    [DURATION_PATTERN, SIZE_PATTERN]
        .into_iter()
        .find(|p| *p == pattern)
}

fn type_words(t: &str) -> &'static str {
    match t {
        "array" => "a list",
        "object" => "a mapping",
        "boolean" => "true or false",
        "integer" => "an integer",
        "number" => "a number",
        "string" => "a string",
        "null" => "empty",
        _ => "another type",
    }
}

/// `const` values of a `oneOf` (how documented enums are generated).
fn one_of_consts(pointer: &str) -> Vec<String> {
    schema_for_instance(pointer)
        .and_then(|n| n.get("oneOf").or_else(|| n.get("anyOf")))
        .and_then(Value::as_array)
        .map(|alts| {
            alts.iter()
                .flat_map(|a| {
                    a.get("const").into_iter().chain(
                        a.get("enum")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten(),
                    )
                })
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null (an empty value)",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn snippet(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// The schema node describing the instance at `pointer` (through `$ref`, `items`,
/// `properties`, `additionalProperties`, and the first matching `anyOf` branch).
fn schema_for_instance<'a>(pointer: &str) -> Option<&'a Value> {
    let root: &'a Value = &SCHEMA;
    let mut node = deref(root, root);
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        node = deref(root, node);
        let next = node
            .get("properties")
            .and_then(|p| p.get(&seg))
            .or_else(|| seg.parse::<usize>().ok().and(node.get("items")))
            .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))
            .or_else(|| {
                node.get("anyOf")?
                    .as_array()?
                    .iter()
                    .map(|b| deref(root, b))
                    .find_map(|b| b.get("properties").and_then(|p| p.get(&seg)))
            })?;
        node = next;
    }
    Some(deref(root, node))
}

fn deref<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(r) = node.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let Some(path) = r.strip_prefix('#') else {
            break;
        };
        match root.pointer(path) {
            Some(n) => node = n,
            None => break,
        }
    }
    // `anyOf: [{$ref}, {type: null}]` wrappers: look through to the real schema.
    if let Some(branches) = node.get("anyOf").and_then(Value::as_array)
        && branches.len() == 1
    {
        return deref(root, &branches[0]);
    }
    node
}

fn allowed_keys(pointer: &str) -> Vec<String> {
    let root: &Value = &SCHEMA;
    schema_for_instance(pointer)
        .and_then(|n| {
            // A short-or-mapping value: the keys are those of its mapping form.
            n.get("properties").or_else(|| {
                n.get("anyOf")?
                    .as_array()?
                    .iter()
                    .find_map(|b| deref(root, b).get("properties"))
            })
        })
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The `required` alternatives of a `oneOf` on the object at `pointer` (e.g. the five actions).
fn one_of_alternatives(pointer: &str) -> Vec<String> {
    schema_for_instance(pointer)
        .and_then(|n| n.get("oneOf"))
        .and_then(Value::as_array)
        .map(|alts| {
            alts.iter()
                .filter_map(|a| a.get("required")?.get(0)?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn what(pointer: &str) -> String {
    let last = pointer.rsplit('/').next().unwrap_or("");
    if pointer.is_empty() {
        "the workflow".to_string()
    } else if last.parse::<usize>().is_ok() {
        let parent = pointer[..pointer.len() - last.len() - 1]
            .rsplit('/')
            .next()
            .unwrap_or("");
        match parent {
            "steps" => format!("step #{}", last.parse::<usize>().unwrap_or(0) + 1),
            _ => format!("item {last} of `{parent}`"),
        }
    } else {
        format!("`{last}`")
    }
}

fn describe(
    err: &ValidationError<'_>,
    doc: &Value,
    map: &SourceMap,
    file: &Path,
    out: &mut Diagnostics,
) {
    let pointer = err.instance_path().as_str().to_string();
    let at = map.value(&pointer);
    let instance = err.instance();
    let diag = |message: String| Diagnostic::new(file, at, Layer::Schema, pointer.clone(), message);
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = allowed_keys(&pointer);
            for key in unexpected {
                let key_pointer = format!("{pointer}/{}", pointer_segment(key));
                let mut d = Diagnostic::new(
                    file,
                    map.key(&key_pointer),
                    Layer::Schema,
                    key_pointer,
                    format!("unknown key `{key}` in {}", what(&pointer)),
                );
                d = match did_you_mean(key, allowed.iter().map(String::as_str)) {
                    Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                    None => d.with_hint(format!("allowed keys here: {}", allowed.join(", "))),
                };
                out.push(d);
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            out.push(
                diag(format!(
                    "{} is missing the required key `{name}`",
                    what(&pointer)
                ))
                .with_hint(format!("add `{name}:`")),
            );
        }
        ValidationErrorKind::OneOfNotValid { .. } if !one_of_consts(&pointer).is_empty() => {
            out.push(not_one_of(
                diag,
                &pointer,
                instance,
                &one_of_consts(&pointer),
            ));
        }
        ValidationErrorKind::OneOfNotValid { .. }
        | ValidationErrorKind::OneOfMultipleValid { .. } => {
            let alternatives = one_of_alternatives(&pointer);
            let present: Vec<&String> = alternatives
                .iter()
                .filter(|a| {
                    doc.pointer(&pointer)
                        .and_then(|o| o.get(a.as_str()))
                        .is_some()
                })
                .collect();
            let list = alternatives
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ");
            if alternatives.is_empty() {
                out.push(diag(err.to_string()));
            } else if present.is_empty() {
                out.push(
                    diag(format!(
                        "{} needs exactly one of {list}; found none",
                        what(&pointer)
                    ))
                    .with_hint("add the action this step should perform"),
                );
            } else if present.len() > 1 {
                let found = present
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(" and ");
                out.push(
                    diag(format!(
                        "{} has both {found}; only one of {list} is allowed",
                        what(&pointer)
                    ))
                    .with_hint("split it into separate steps joined with `needs`"),
                );
            }
            // Exactly one present: the real problem is inside it and is reported on its own.
        }
        ValidationErrorKind::Type { .. }
            if instance.is_number() && unit_pattern(&pointer).is_some() =>
        {
            let number = instance.to_string();
            let (message, hint) = match unit_pattern(&pointer) {
                Some(DURATION_PATTERN) => (
                    format!("durations need a unit: `{number}s`"),
                    format!(
                        "write `{number}s` for {number} seconds, or another unit: `250ms`, `5m`, `1h30m`"
                    ),
                ),
                _ => (
                    format!("sizes need a unit: `{number}Mi`"),
                    format!(
                        "write `{number}Mi` for {number} MiB, or another unit: `64Ki`, `1Gi` (binary), `64M`, `1G` (decimal)"
                    ),
                ),
            };
            out.push(diag(message).with_hint(hint));
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => type_words(&t.to_string()).to_string(),
                TypeKind::Multiple(ts) => ts
                    .iter()
                    .map(|t| type_words(&t.to_string()))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            out.push(
                diag(format!(
                    "{} must be {expected}, found {} {}",
                    what(&pointer),
                    json_type(instance),
                    snippet(instance)
                ))
                .with_hint(if instance.is_null() {
                    "give it a value or remove the key".to_string()
                } else if expected == "a string" {
                    "quote the value to make it a string".to_string()
                } else {
                    format!("write {expected} here")
                }),
            );
        }
        ValidationErrorKind::Pattern { pattern } => {
            let text = instance.as_str().unwrap_or_default();
            let (message, hint) = if pattern == DURATION_PATTERN {
                let e = UnitError::Duration(text.into());
                (e.to_string(), e.hint().to_string())
            } else if pattern == SIZE_PATTERN {
                let e = UnitError::Size(text.into());
                (e.to_string(), e.hint().to_string())
            } else if pattern == ID_PATTERN {
                (
                    format!("`{text}` is not a valid id"),
                    "ids start with a letter or `_` and contain only letters, digits, `_` and `-` (at most 64)".into(),
                )
            } else {
                (
                    format!(
                        "{} `{text}` does not match the required pattern",
                        what(&pointer)
                    ),
                    format!("it must match `{pattern}`"),
                )
            };
            out.push(diag(message).with_hint(hint));
        }
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            out.push(not_one_of(diag, &pointer, instance, &opts));
        }
        ValidationErrorKind::Minimum { .. } | ValidationErrorKind::Maximum { .. }
            if pointer == "/version" =>
        {
            out.push(
                diag(format!(
                    "unsupported workflow version {}",
                    snippet(instance)
                ))
                .with_hint("this secureclaw reads `version: 1`"),
            );
        }
        ValidationErrorKind::MinItems { .. } if pointer == "/steps" => {
            out.push(
                diag("a workflow needs at least one step".into())
                    .with_hint("add a step under `steps:`"),
            );
        }
        ValidationErrorKind::AnyOf { .. } if pointer.ends_with("/retry") => {
            out.push(
                diag(format!("`retry` is {}", snippet(instance))).with_hint(
                    "write a number of attempts (1-20), or `{attempts: 3, backoff: 2s}`",
                ),
            );
        }
        // A value with a short and a mapping form (`schedule: "0 3 * * *"` or `schedule: {cron,
        // timezone}`) given as a mapping: the mapping form's own errors (an unknown key, a bad
        // enum) say what is wrong; "matches no alternative" does not.
        ValidationErrorKind::AnyOf { context } if instance.is_object() => {
            let is_wrong_type = |e: &ValidationError<'_>| {
                matches!(e.kind(), ValidationErrorKind::Type { .. })
                    && e.instance_path().as_str() == pointer
            };
            match context.iter().find(|errs| !errs.iter().any(is_wrong_type)) {
                Some(errs) => errs.iter().for_each(|e| describe(e, doc, map, file, out)),
                None => out.push(diag(format!("{}: {err}", what(&pointer)))),
            }
        }
        ValidationErrorKind::PropertyNames { error } => {
            let name = error.instance().as_str().unwrap_or_default().to_string();
            out.push(
                Diagnostic::new(
                    file,
                    map.key(&format!("{pointer}/{}", pointer_segment(&name))),
                    Layer::Schema,
                    pointer.clone(),
                    format!("`{name}` is not a valid environment variable name"),
                )
                .with_hint("use letters, digits and `_`, not starting with a digit"),
            );
        }
        _ => out.push(diag(format!("{}: {err}", what(&pointer)))),
    }
}

/// "`x` is "y"; expected one of: …" with a "did you mean" for near misses.
fn not_one_of(
    diag: impl Fn(String) -> Diagnostic,
    pointer: &str,
    instance: &Value,
    options: &[String],
) -> Diagnostic {
    let d = diag(format!(
        "{} is {}; expected one of: {}",
        what(pointer),
        snippet(instance),
        options.join(", ")
    ));
    let text = instance.as_str().unwrap_or_default();
    match did_you_mean(text, options.iter().map(String::as_str)) {
        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
        None => d,
    }
}
