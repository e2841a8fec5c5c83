//! A small JSON-schema check for tests and reports: does a value satisfy the schema's common
//! keywords? Covers `type`, `enum`, `const`, `properties`, `required`, `additionalProperties`,
//! `items`, `minItems`/`maxItems`, `minimum`/`maximum` (and the exclusive forms),
//! `minLength`/`maxLength`, `anyOf`/`oneOf`/`allOf` and local `$ref`s (`#/$defs/..`,
//! `#/definitions/..`). Keywords it does not know are ignored, so it is no full validator; it
//! is an independent check of what the constrained decoder produced.

use serde_json::Value;

/// `Ok` when `value` satisfies `schema`; else the first violation, with its JSON path.
pub fn check_json(schema: &Value, value: &Value) -> Result<(), String> {
    Checker { root: schema }.check(schema, value, "$")
}

struct Checker<'a> {
    root: &'a Value,
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

impl Checker<'_> {
    fn resolve<'s>(&'s self, r: &str) -> Result<&'s Value, String> {
        let path = r
            .strip_prefix("#")
            .ok_or_else(|| format!("only local $refs are checked, got '{r}'"))?;
        self.root
            .pointer(path)
            .ok_or_else(|| format!("$ref '{r}' points nowhere"))
    }

    fn check(&self, schema: &Value, v: &Value, path: &str) -> Result<(), String> {
        let s = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return Err(format!("{path}: no value is allowed here")),
            Value::Object(s) => s,
            _ => return Err(format!("{path}: the schema is not an object")),
        };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            self.check(self.resolve(r)?, v, path)?;
        }
        match s.get("type") {
            Some(Value::String(t)) if !type_ok(t, v) => {
                return Err(format!("{path}: expected {t}, got {v}"))
            }
            Some(Value::Array(ts))
                if !ts.iter().any(|t| t.as_str().is_some_and(|t| type_ok(t, v))) =>
            {
                return Err(format!("{path}: expected one of {ts:?}, got {v}"))
            }
            _ => {}
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                return Err(format!(
                    "{path}: {v} is not one of {}",
                    Value::Array(e.clone())
                ));
            }
        }
        if let Some(c) = s.get("const") {
            if c != v {
                return Err(format!("{path}: expected {c}, got {v}"));
            }
        }
        if let Some(x) = v.as_f64() {
            let num = |k: &str| s.get(k).and_then(Value::as_f64);
            let bad = num("minimum").is_some_and(|m| x < m)
                || num("maximum").is_some_and(|m| x > m)
                || num("exclusiveMinimum").is_some_and(|m| x <= m)
                || num("exclusiveMaximum").is_some_and(|m| x >= m);
            if bad {
                return Err(format!("{path}: {x} is out of the schema's range"));
            }
        }
        if let Some(text) = v.as_str() {
            let n = text.chars().count() as u64;
            let len = |k: &str| s.get(k).and_then(Value::as_u64);
            if len("minLength").is_some_and(|m| n < m) || len("maxLength").is_some_and(|m| n > m) {
                return Err(format!(
                    "{path}: string of {n} characters is out of the schema's lengths"
                ));
            }
        }
        if let Some(items) = v.as_array() {
            let n = items.len() as u64;
            let len = |k: &str| s.get(k).and_then(Value::as_u64);
            if len("minItems").is_some_and(|m| n < m) || len("maxItems").is_some_and(|m| n > m) {
                return Err(format!("{path}: {n} items is out of the schema's counts"));
            }
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    self.check(item, x, &format!("{path}[{i}]"))?;
                }
            }
        }
        if let Some(obj) = v.as_object() {
            let props = s.get("properties").and_then(Value::as_object);
            for r in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(k) = r.as_str() {
                    if !obj.contains_key(k) {
                        return Err(format!("{path}: required property '{k}' is missing"));
                    }
                }
            }
            for (k, x) in obj {
                let sub = format!("{path}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(p) => self.check(p, x, &sub)?,
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            return Err(format!("{path}: property '{k}' is not allowed"))
                        }
                        Some(extra @ Value::Object(_)) => self.check(extra, x, &sub)?,
                        _ => {}
                    },
                }
            }
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for a in all {
                self.check(a, v, path)?;
            }
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(any) = s.get(key).and_then(Value::as_array) {
                let passing = any
                    .iter()
                    .filter(|a| self.check(a, v, path).is_ok())
                    .count();
                let ok = if key == "oneOf" {
                    passing == 1
                } else {
                    passing >= 1
                };
                if !ok {
                    return Err(format!("{path}: {passing} of the {key} branches match {v}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_json;
    use serde_json::json;

    #[test]
    fn checks_common_keywords() {
        let schema = json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": 0, "maximum": 9},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                "inner": {"$ref": "#/$defs/inner"}
            },
            "required": ["n"],
            "additionalProperties": false,
            "$defs": {"inner": {"type": "object", "properties": {"s": {"type": "string", "maxLength": 3}}}}
        });
        assert_eq!(
            check_json(
                &schema,
                &json!({"n": 3, "tags": ["a"], "inner": {"s": "xy"}})
            ),
            Ok(())
        );
        for bad in [
            json!({"tags": []}),
            json!({"n": 10}),
            json!({"n": 1.5}),
            json!({"n": 1, "tags": ["c"]}),
            json!({"n": 1, "tags": ["a", "a", "b"]}),
            json!({"n": 1, "other": 1}),
            json!({"n": 1, "inner": {"s": "long"}}),
            json!([1]),
        ] {
            assert!(check_json(&schema, &bad).is_err(), "{bad}");
        }
    }
}
