//! The part of JSON Patch (RFC 6902) that Envoy Gateway's EnvoyPatchPolicy
//! applies to its xDS resources, as its `internal/utils/jsonpatch` does:
//! - `add`, `replace`, `remove` and `test` at a JSON Pointer (RFC 6901),
//!   `add` creating missing parent objects (evanphx/json-patch's
//!   `EnsurePathExistsOnAdd`, which Envoy Gateway turns on);
//! - `jsonPath` (Envoy Gateway v1.2 and later): each location the expression
//!   selects becomes a JSON Pointer, with `path`, if any, appended to it; an
//!   expression that selects nothing is an error.
//!
//! The jsonPath subset: an optional `$`, then `.key`, `..key` (at any depth),
//! `[N]`, `[*]` and `[?(@.key == 'text')]`. Anything else is refused rather
//! than guessed at.

use serde_json::Value;

/// The reference tokens of a JSON Pointer (`""` is the whole document).
pub fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("JSON Pointer `{pointer}` does not start with `/`"));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// A key as a JSON Pointer token.
pub fn encode(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// An array index token: digits without a leading zero.
fn index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    (digits && (token == "0" || !token.starts_with('0')))
        .then(|| token.parse().ok())
        .flatten()
}

/// The value a pointer's parent refers to, and the last token.
fn parent<'a>(
    doc: &'a mut Value,
    pointer: &str,
    create: bool,
) -> Result<(&'a mut Value, String), String> {
    let mut toks = tokens(pointer)?;
    let Some(last) = toks.pop() else {
        return Err("the whole document has no parent".into());
    };
    let mut node = doc;
    for t in toks {
        node = match node {
            Value::Object(m) => {
                if create && !m.contains_key(&t) {
                    m.insert(t.clone(), Value::Object(Default::default()));
                }
                m.get_mut(&t)
                    .ok_or_else(|| format!("{pointer}: no member `{t}`"))?
            }
            Value::Array(a) => {
                let i = index(&t).ok_or_else(|| format!("{pointer}: `{t}` is not an index"))?;
                let len = a.len();
                a.get_mut(i)
                    .ok_or_else(|| format!("{pointer}: index {i} out of {len}"))?
            }
            _ => return Err(format!("{pointer}: `{t}` is inside a scalar")),
        };
    }
    Ok((node, last))
}

/// RFC 6902 `add`: sets an object member, inserts into an array before the
/// index (`-`: at the end), or replaces the whole document.
pub fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    if pointer.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (target, last) = parent(doc, pointer, true)?;
    match target {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            Ok(())
        }
        Value::Array(a) => match index(&last) {
            Some(i) if i <= a.len() => {
                a.insert(i, value);
                Ok(())
            }
            _ => Err(format!(
                "{pointer}: cannot insert at `{last}` of {}",
                a.len()
            )),
        },
        _ => Err(format!("{pointer}: the parent is a scalar")),
    }
}

/// The value at a pointer, mutably.
fn target<'a>(doc: &'a mut Value, pointer: &str) -> Result<&'a mut Value, String> {
    if pointer.is_empty() {
        return Ok(doc);
    }
    let (node, last) = parent(doc, pointer, false)?;
    let found = match node {
        Value::Object(m) => m.get_mut(&last),
        Value::Array(a) => index(&last).and_then(|i| a.get_mut(i)),
        _ => None,
    };
    found.ok_or_else(|| format!("{pointer}: nothing there"))
}

/// RFC 6902 `replace`: the value must exist.
pub fn replace(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    *target(doc, pointer)? = value;
    Ok(())
}

/// RFC 6902 `remove`: the value must exist.
pub fn remove(doc: &mut Value, pointer: &str) -> Result<(), String> {
    target(doc, pointer)?;
    let (node, last) = parent(doc, pointer, false)?;
    match node {
        Value::Object(m) => {
            m.remove(&last);
        }
        Value::Array(a) => {
            if let Some(i) = index(&last) {
                a.remove(i);
            }
        }
        _ => {}
    }
    Ok(())
}

/// One step of a jsonPath expression.
#[derive(Debug, PartialEq)]
enum Step {
    Child(String),
    Descend(String),
    Index(usize),
    Every,
    Equals(String, String),
}

fn parse_path(expr: &str) -> Result<Vec<Step>, String> {
    let bad = |why: &str| format!("jsonPath `{expr}`: {why}");
    let dotted;
    let mut rest = match expr.strip_prefix('$') {
        Some(r) => r,
        // A bare key first, as in `filter_chains[0]`.
        None if !expr.starts_with(['.', '[']) => {
            dotted = format!(".{expr}");
            &dotted
        }
        None => expr,
    };
    let mut steps = Vec::new();
    let name = |s: &str| -> (String, usize) {
        let end = s.find(['.', '[']).unwrap_or(s.len());
        (s.get(..end).unwrap_or_default().to_owned(), end)
    };
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("..") {
            let (key, end) = name(r);
            if key.is_empty() {
                return Err(bad("`..` needs a key"));
            }
            steps.push(Step::Descend(key));
            rest = r.get(end..).unwrap_or_default();
        } else if let Some(r) = rest.strip_prefix('.') {
            let (key, end) = name(r);
            match key.as_str() {
                "" => return Err(bad("`.` needs a key")),
                "*" => steps.push(Step::Every),
                _ => steps.push(Step::Child(key)),
            }
            rest = r.get(end..).unwrap_or_default();
        } else if let Some(r) = rest.strip_prefix("[?(@.") {
            let close = r.find(")]").ok_or_else(|| bad("unclosed filter"))?;
            let cond = r.get(..close).unwrap_or_default();
            let (key, lit) = cond
                .split_once("==")
                .ok_or_else(|| bad("only `==` filters"))?;
            let lit = lit.trim();
            let text = lit
                .strip_prefix('\'')
                .and_then(|l| l.strip_suffix('\''))
                .filter(|t| !t.contains('\''))
                .ok_or_else(|| bad("a filter compares with a 'quoted' text"))?;
            steps.push(Step::Equals(key.trim().to_owned(), text.to_owned()));
            rest = r.get(close + 2..).unwrap_or_default();
        } else if let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']').ok_or_else(|| bad("unclosed `[`"))?;
            let inner = r.get(..close).unwrap_or_default();
            if inner == "*" {
                steps.push(Step::Every);
            } else if let Some(key) = inner.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')) {
                steps.push(Step::Child(key.to_owned()));
            } else {
                steps.push(Step::Index(index(inner).ok_or_else(|| bad("bad index"))?));
            }
            rest = r.get(close + 1..).unwrap_or_default();
        } else {
            return Err(bad("unsupported syntax"));
        }
    }
    if steps.is_empty() {
        return Err(bad("selects the whole document"));
    }
    Ok(steps)
}

/// Every (pointer tokens, value) at or below `node`, in document order.
fn descendants<'a>(path: &[String], node: &'a Value, out: &mut Vec<(Vec<String>, &'a Value)>) {
    out.push((path.to_vec(), node));
    let children: Vec<(String, &Value)> = match node {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => Vec::new(),
    };
    for (k, v) in children {
        let mut p = path.to_vec();
        p.push(k);
        descendants(&p, v, out);
    }
}

/// The JSON Pointers of the values a jsonPath expression selects.
pub fn select(doc: &Value, expr: &str) -> Result<Vec<String>, String> {
    let mut nodes: Vec<(Vec<String>, &Value)> = vec![(Vec::new(), doc)];
    for step in parse_path(expr)? {
        let mut next = Vec::new();
        for (path, node) in nodes {
            let mut push = |k: String, v| {
                let mut p = path.clone();
                p.push(k);
                next.push((p, v));
            };
            match (&step, node) {
                (Step::Child(k), Value::Object(m)) => {
                    if let Some(v) = m.get(k) {
                        push(k.clone(), v);
                    }
                }
                (Step::Index(i), Value::Array(a)) => {
                    if let Some(v) = a.get(*i) {
                        push(i.to_string(), v);
                    }
                }
                (Step::Every, Value::Array(a)) => {
                    a.iter()
                        .enumerate()
                        .for_each(|(i, v)| push(i.to_string(), v));
                }
                (Step::Every, Value::Object(m)) => {
                    m.iter().for_each(|(k, v)| push(k.clone(), v));
                }
                (Step::Equals(k, text), Value::Array(a)) => {
                    for (i, v) in a.iter().enumerate() {
                        if v.get(k).and_then(Value::as_str) == Some(text.as_str()) {
                            push(i.to_string(), v);
                        }
                    }
                }
                (Step::Descend(k), _) => {
                    let mut all = Vec::new();
                    descendants(&path, node, &mut all);
                    for (p, v) in all {
                        if let Some(child) = v.as_object().and_then(|m| m.get(k)) {
                            let mut p = p;
                            p.push(k.clone());
                            next.push((p, child));
                        }
                    }
                }
                _ => {}
            }
        }
        nodes = next;
    }
    Ok(nodes
        .into_iter()
        .map(|(p, _)| p.iter().map(|t| format!("/{}", encode(t))).collect())
        .collect())
}

/// One EnvoyPatchPolicy operation (`op`, `path`, `jsonPath`, `value`) on
/// one resource.
pub fn apply(doc: &mut Value, operation: &Value) -> Result<(), String> {
    let op = operation
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let path = operation.get("path").and_then(Value::as_str);
    let pointers = match operation.get("jsonPath").and_then(Value::as_str) {
        Some(expr) => {
            let found = select(doc, expr)?;
            if found.is_empty() {
                return Err(format!("jsonPath `{expr}` selects nothing"));
            }
            // As Envoy Gateway joins them: one `/` between the two.
            found
                .into_iter()
                .map(|p| match path {
                    None | Some("") => p,
                    Some(extra) => format!(
                        "{}/{}",
                        p.trim_end_matches('/'),
                        extra.trim_start_matches('/')
                    ),
                })
                .collect()
        }
        None => vec![path
            .ok_or("an operation needs `path` or `jsonPath`")?
            .to_owned()],
    };
    let value = || {
        operation
            .get("value")
            .cloned()
            .ok_or_else(|| format!("`{op}` needs a value"))
    };
    for pointer in pointers {
        match op {
            "add" => add(doc, &pointer, value()?)?,
            "replace" => replace(doc, &pointer, value()?)?,
            "remove" => remove(doc, &pointer)?,
            "test" => {
                let v = value()?;
                let found = target(doc, &pointer)?;
                if *found != v {
                    return Err(format!("test {pointer}: {found} is not {v}"));
                }
            }
            other => return Err(format!("unsupported op `{other}`")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_add_replace_remove_as_rfc_6902_says() {
        let mut doc = json!({"a": [1, 2], "o": {"x~/y": 1}});
        add(&mut doc, "/a/1", json!(9)).unwrap();
        add(&mut doc, "/a/-", json!(3)).unwrap();
        add(&mut doc, "/a/4", json!(4)).unwrap();
        assert!(add(&mut doc, "/a/6", json!(0)).is_err());
        assert!(add(&mut doc, "/a/01", json!(0)).is_err());
        add(&mut doc, "/n/m/k", json!(true)).unwrap();
        replace(&mut doc, "/o/x~0~1y", json!(2)).unwrap();
        assert!(replace(&mut doc, "/o/nope", json!(2)).is_err());
        remove(&mut doc, "/a/0").unwrap();
        assert!(remove(&mut doc, "/a/9").is_err());
        assert_eq!(
            doc,
            json!({"a": [9, 2, 3, 4], "o": {"x~/y": 2}, "n": {"m": {"k": true}}})
        );
        assert!(tokens("a/b").is_err());
    }

    #[test]
    fn json_paths_select_like_envoy_gateway() {
        let doc = json!({
            "default_filter_chain": {"filters": [{"typed_config": {"http_filters": [
                {"name": "a"}, {"name": "envoy.filters.http.router"}
            ]}}]},
            "filter_chains": [{"filters": [{"typed_config": {"http_filters": [
                {"name": "envoy.filters.http.router"}
            ]}}]}]
        });
        let router = "$..http_filters[?(@.name == 'envoy.filters.http.router')]";
        assert_eq!(
            select(&doc, router).unwrap(),
            [
                "/default_filter_chain/filters/0/typed_config/http_filters/1",
                "/filter_chains/0/filters/0/typed_config/http_filters/0"
            ]
        );
        assert_eq!(
            select(&doc, "filter_chains[0].filters[*].typed_config").unwrap(),
            ["/filter_chains/0/filters/0/typed_config"]
        );
        assert!(select(&doc, "$").is_err());
        assert!(select(&doc, "$..x[?(@.n != 'a')]").is_err());
        // add at a selected array element inserts before it; a `path` is
        // appended to each selection.
        let mut patched = doc.clone();
        apply(
            &mut patched,
            &json!({"op": "add", "jsonPath": router, "value": {"name": "b"}}),
        )
        .unwrap();
        let names: Vec<&str> = select(&patched, "$..http_filters[*].name")
            .unwrap()
            .iter()
            .map(|p| patched.pointer(p).unwrap().as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "a",
                "b",
                "envoy.filters.http.router",
                "b",
                "envoy.filters.http.router"
            ]
        );
        apply(
            &mut patched,
            &json!({"op": "add", "jsonPath": "$..http_filters[?(@.name == 'a')]", "path": "/x", "value": 1}),
        )
        .unwrap();
        assert_eq!(
            patched.pointer("/default_filter_chain/filters/0/typed_config/http_filters/0/x"),
            Some(&json!(1))
        );
        let none = json!({"op": "add", "jsonPath": "$..nothing", "value": 1});
        assert!(apply(&mut patched, &none).is_err());
    }
}
