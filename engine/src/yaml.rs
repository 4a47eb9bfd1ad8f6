//! YAML → JSON value with a source map, under hard limits.
//!
//! We drive saphyr-parser's event API ourselves instead of deserialising straight into types:
//! it keeps a position for every node (so schema errors can point at a line and column), lets us
//! reject duplicate keys (which most loaders silently overwrite), and bounds depth, node count
//! and alias expansion so a hostile file ("billion laughs", 100k nested lists) fails fast with a
//! clear message instead of exhausting memory or the stack.

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

use crate::diag::{Location, pointer_segment};

/// Hard limits for one document.
#[derive(Debug, Clone, Copy)]
pub struct YamlLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
    /// Nodes after alias expansion: this is what defeats "billion laughs".
    pub max_nodes: usize,
}

impl Default for YamlLimits {
    fn default() -> Self {
        YamlLimits {
            max_bytes: 16 * 1024 * 1024,
            max_depth: 64,
            max_nodes: 2_000_000,
        }
    }
}

/// The source map's keys are the document's own JSON pointers, not attacker-chosen in a way a
/// collision could exploit beyond the file's own size limit: a fast hasher keeps a 100,000-step
/// file's map from dominating validation.
type PointerMap = HashMap<String, SourceSpan, foldhash::fast::RandomState>;

/// Where a node starts and where it ends (just past its last character).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSpan {
    pub start: Location,
    pub end: Location,
}

/// Where each node of the document came from, keyed by JSON pointer.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    values: PointerMap,
    keys: PointerMap,
}

impl SourceMap {
    /// The location of the value at `pointer`, or of its nearest located ancestor.
    pub fn value(&self, pointer: &str) -> Location {
        self.value_span(pointer)
            .map_or(Location { line: 1, column: 1 }, |s| s.start)
    }

    /// The span of the value at `pointer`, or of its nearest located ancestor.
    pub fn value_span(&self, pointer: &str) -> Option<SourceSpan> {
        let mut p = pointer;
        loop {
            if let Some(span) = self.values.get(p) {
                return Some(*span);
            }
            p = &p[..p.rfind('/')?];
        }
    }

    /// The location of the mapping key whose value is at `pointer` (falls back to the value).
    pub fn key(&self, pointer: &str) -> Location {
        self.keys
            .get(pointer)
            .map(|s| s.start)
            .unwrap_or_else(|| self.value(pointer))
    }

    /// Where the node that a diagnostic at `start` about `pointer` points at ends: the key or
    /// value of `pointer` (or of an ancestor) that starts there.
    pub fn end_of(&self, pointer: &str, start: Location) -> Option<Location> {
        let mut p = pointer;
        loop {
            for map in [&self.keys, &self.values] {
                if let Some(span) = map.get(p)
                    && span.start == start
                {
                    return Some(span.end);
                }
            }
            p = &p[..p.rfind('/')?];
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub location: Location,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug)]
pub struct LocatedDocument {
    pub value: Value,
    pub map: SourceMap,
}

fn loc(m: Marker) -> Location {
    Location {
        line: m.line(),
        column: m.col() + 1,
    }
}

fn source_span(span: Span) -> SourceSpan {
    SourceSpan {
        start: loc(span.start),
        end: loc(span.end),
    }
}

enum Frame {
    Seq {
        items: Vec<Value>,
        pointer: String,
        anchor: usize,
        nodes_at_start: usize,
    },
    Map {
        map: Map<String, Value>,
        pointer: String,
        anchor: usize,
        nodes_at_start: usize,
        pending_key: Option<String>,
        seen: HashMap<String, Location>,
    },
}

struct Builder {
    limits: YamlLimits,
    stack: Vec<Frame>,
    root: Option<Value>,
    /// Anchored values and how many nodes each expands to.
    anchors: HashMap<usize, (Value, usize)>,
    nodes: usize,
    map: SourceMap,
    errors: Vec<YamlError>,
}

impl Builder {
    fn error(&mut self, span: Span, message: impl Into<String>, hint: Option<&str>) {
        self.errors.push(YamlError {
            location: loc(span.start),
            message: message.into(),
            hint: hint.map(str::to_string),
        });
    }

    /// Pointer for the next child of the top frame; `None` when the top is a map awaiting a key.
    fn child_pointer(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { items, pointer, .. }) => Some(format!("{pointer}/{}", items.len())),
            Some(Frame::Map {
                pending_key: Some(k),
                pointer,
                ..
            }) => Some(format!("{pointer}/{}", pointer_segment(k))),
            Some(Frame::Map { .. }) => None,
        }
    }

    fn count(&mut self, n: usize, span: Span) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.limits.max_nodes {
            self.error(
                span,
                format!(
                    "document expands to more than {} nodes",
                    self.limits.max_nodes
                ),
                Some("this usually means aliases (`*name`) expanding exponentially; inline the values or split the workflow"),
            );
            return false;
        }
        true
    }

    fn attach(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map {
                map, pending_key, ..
            }) => {
                if let Some(k) = pending_key.take() {
                    map.insert(k, value);
                }
            }
        }
    }

    /// Handle one event; returns false to stop parsing.
    fn on_event(&mut self, ev: Event<'_>, span: Span) -> bool {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                // A scalar in key position of a map is a key.
                if let Some(Frame::Map {
                    pending_key: pending @ None,
                    seen,
                    pointer,
                    ..
                }) = self.stack.last_mut()
                {
                    let key = text.into_owned();
                    let key_pointer = format!("{pointer}/{}", pointer_segment(&key));
                    if let Some(first) = seen.get(&key) {
                        let first = *first;
                        let msg = format!(
                            "duplicate key `{key}` (first defined at line {}, column {})",
                            first.line, first.column
                        );
                        *pending = Some(key);
                        self.error(span, msg, Some("YAML keys must be unique in a mapping; remove or rename one of them"));
                        return true;
                    }
                    seen.insert(key.clone(), loc(span.start));
                    *pending = Some(key);
                    self.map.keys.insert(key_pointer, source_span(span));
                    return true;
                }
                let Some(pointer) = self.child_pointer() else {
                    return true;
                };
                if !self.count(1, span) {
                    return false;
                }
                let value = match resolve_scalar(&text, style, tag.as_deref()) {
                    Ok(v) => v,
                    Err(msg) => {
                        self.error(span, msg, Some("write the value as a quoted string"));
                        Value::Null
                    }
                };
                self.map.values.insert(pointer, source_span(span));
                if anchor != 0 {
                    self.anchors.insert(anchor, (value.clone(), 1));
                }
                self.attach(value);
                true
            }
            Event::SequenceStart(anchor, tag) => {
                self.start_collection(false, anchor, tag.as_deref(), span)
            }
            Event::MappingStart(anchor, tag) => {
                self.start_collection(true, anchor, tag.as_deref(), span)
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.end_collection();
                true
            }
            Event::Alias(id) => {
                if matches!(
                    self.stack.last(),
                    Some(Frame::Map {
                        pending_key: None,
                        ..
                    })
                ) {
                    self.error(span, "aliases cannot be used as mapping keys", None);
                    return false;
                }
                let Some(pointer) = self.child_pointer() else {
                    return true;
                };
                let Some((value, size)) = self.anchors.get(&id).cloned() else {
                    self.error(span, "alias refers to an unknown anchor", None);
                    return false;
                };
                if !self.count(size, span) {
                    return false;
                }
                self.map.values.insert(pointer, source_span(span));
                self.attach(value);
                true
            }
            Event::DocumentStart(_) => {
                if self.root.is_some() {
                    self.error(
                        span,
                        "a workflow file must contain exactly one YAML document",
                        Some("remove the extra `---` document or split it into another file"),
                    );
                    return false;
                }
                true
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => true,
        }
    }
}

impl Builder {
    fn start_collection(
        &mut self,
        is_map: bool,
        anchor: usize,
        tag: Option<&Tag>,
        span: Span,
    ) -> bool {
        if let Some(tag) = tag {
            let expected = if is_map { "map" } else { "seq" };
            if !(tag.is_yaml_core_schema() && tag.suffix == expected) {
                self.error(
                    span,
                    format!("unsupported YAML tag `{}{}`", tag.handle, tag.suffix),
                    Some("workflow files use plain YAML; remove the tag"),
                );
            }
        }
        let Some(pointer) = self.child_pointer() else {
            self.error(
                span,
                "complex mapping keys (a list or mapping used as a key) are not supported",
                Some("use a plain string as the key"),
            );
            return false;
        };
        if self.stack.len() >= self.limits.max_depth {
            self.error(
                span,
                format!("nesting deeper than {} levels", self.limits.max_depth),
                Some("a workflow never needs this depth; flatten the structure"),
            );
            return false;
        }
        if !self.count(1, span) {
            return false;
        }
        self.map.values.insert(pointer.clone(), source_span(span));
        let nodes_at_start = self.nodes;
        self.stack.push(if is_map {
            Frame::Map {
                map: Map::new(),
                pointer,
                anchor,
                nodes_at_start,
                pending_key: None,
                seen: HashMap::new(),
            }
        } else {
            Frame::Seq {
                items: Vec::new(),
                pointer,
                anchor,
                nodes_at_start,
            }
        });
        true
    }

    fn end_collection(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let (value, anchor, nodes_at_start) = match frame {
            Frame::Seq {
                items,
                anchor,
                nodes_at_start,
                ..
            } => (Value::Array(items), anchor, nodes_at_start),
            Frame::Map {
                map,
                anchor,
                nodes_at_start,
                ..
            } => (Value::Object(map), anchor, nodes_at_start),
        };
        if anchor != 0 {
            // The collection node itself plus everything inside it.
            let size = self.nodes - nodes_at_start + 1;
            self.anchors.insert(anchor, (value.clone(), size));
        }
        self.attach(value);
    }
}

fn resolve_scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        if !tag.is_yaml_core_schema() {
            return Err(format!(
                "unsupported YAML tag `{}{}`",
                tag.handle, tag.suffix
            ));
        }
        return match tag.suffix.as_str() {
            "str" => Ok(Value::String(text.to_string())),
            "null" | "bool" | "int" | "float" => match plain_scalar(text) {
                v @ (Value::Null | Value::Bool(_) | Value::Number(_)) => Ok(v),
                _ => Err(format!("`{text}` is not a valid !!{}", tag.suffix)),
            },
            other => Err(format!("unsupported YAML tag `!!{other}`")),
        };
    }
    Ok(match style {
        ScalarStyle::Plain => plain_scalar(text),
        _ => Value::String(text.to_string()),
    })
}

/// YAML 1.2 core schema resolution of an untagged plain scalar (so `no` stays a string).
fn plain_scalar(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return Value::Number(i.into());
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Number(i.into());
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Number(i.into());
    }
    let looks_float = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if looks_float && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

/// Decode bytes as UTF-8, or say where the first invalid byte is.
pub fn decode_utf8(bytes: &[u8]) -> Result<&str, YamlError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
        YamlError {
            location: Location { line, column },
            message: format!(
                "file is not valid UTF-8 (invalid byte 0x{:02x})",
                bytes[e.valid_up_to()]
            ),
            hint: Some("save the file as UTF-8".into()),
        }
    })
}

/// Parse one YAML document into a JSON value and its source map.
pub fn parse(src: &str, limits: YamlLimits) -> Result<LocatedDocument, Vec<YamlError>> {
    if src.len() > limits.max_bytes {
        return Err(vec![YamlError {
            location: Location { line: 1, column: 1 },
            message: format!(
                "file is {} bytes; the limit is {} bytes",
                src.len(),
                limits.max_bytes
            ),
            hint: Some(
                "split the workflow, or read large data from files with a `read` step".into(),
            ),
        }]);
    }
    let mut builder = Builder {
        limits,
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        nodes: 0,
        map: SourceMap::default(),
        errors: Vec::new(),
    };
    let mut parser = Parser::new_from_str(src);
    while let Some(next) = parser.next_event() {
        match next {
            Ok((ev, span)) => {
                if !builder.on_event(ev, span) {
                    break;
                }
            }
            Err(e) => {
                builder.errors.push(YamlError {
                    location: loc(*e.marker()),
                    message: format!("YAML syntax error: {}", e.info()),
                    hint: Some(
                        "check indentation, quoting and that every `key:` is followed by a space"
                            .into(),
                    ),
                });
                break;
            }
        }
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    Ok(LocatedDocument {
        value: builder.root.unwrap_or(Value::Null),
        map: builder.map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> LocatedDocument {
        parse(src, YamlLimits::default()).unwrap()
    }

    #[test]
    fn scalars_follow_yaml_1_2_core_schema() {
        let d = ok("a: 1\nb: no\nc: true\nd: ~\ne: '1'\nf: 1.5\ng: 0x10\nh: 1.2.3\n");
        assert_eq!(
            d.value,
            serde_json::json!({"a":1,"b":"no","c":true,"d":null,"e":"1","f":1.5,"g":16,"h":"1.2.3"})
        );
    }

    #[test]
    fn locations_point_at_keys_and_values() {
        let d = ok("version: 1\nsteps:\n  - id: a\n    shell: echo\n");
        assert_eq!(
            d.map.value("/steps/0/shell"),
            Location {
                line: 4,
                column: 12
            }
        );
        assert_eq!(d.map.key("/steps/0/shell"), Location { line: 4, column: 5 });
        assert_eq!(d.map.value("/steps/0/nope/deeper"), d.map.value("/steps/0"));
    }

    #[test]
    fn duplicate_keys_are_errors_with_both_positions() {
        let e = parse("a: 1\nb: 2\na: 3\n", YamlLimits::default()).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].location, Location { line: 3, column: 1 });
        assert!(e[0].message.contains("line 1"), "{}", e[0].message);
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut src = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for c in 'b'..='j' {
            src.push_str(&format!("{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
            prev = c;
        }
        let e = parse(&src, YamlLimits::default()).unwrap_err();
        assert!(
            e[0].message.contains("expands to more than"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        // Past the parser's own recursion limit.
        let e = parse(&"[".repeat(100_000), YamlLimits::default()).unwrap_err();
        assert!(e[0].message.contains("recursion limit"), "{}", e[0].message);
        // Past ours, but within the parser's.
        let e = parse(&"[".repeat(70), YamlLimits::default()).unwrap_err();
        assert!(e[0].message.contains("nesting deeper"), "{}", e[0].message);
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = parse("a: [1, 2\nb: 3\n", YamlLimits::default()).unwrap_err();
        assert!(e[0].message.starts_with("YAML syntax error"));
        assert!(e[0].location.line >= 1);
    }

    #[test]
    fn invalid_utf8_is_located() {
        let e = decode_utf8(b"a: 1\nb: \xff\n").unwrap_err();
        assert_eq!(e.location, Location { line: 2, column: 4 });
    }

    #[test]
    fn multiple_documents_are_refused() {
        let e = parse("a: 1\n---\nb: 2\n", YamlLimits::default()).unwrap_err();
        assert!(e[0].message.contains("exactly one YAML document"));
    }

    #[test]
    fn aliases_expand_within_budget() {
        let d = ok("base: &b {x: 1}\nother: *b\n");
        assert_eq!(d.value["other"]["x"], 1);
    }
}
