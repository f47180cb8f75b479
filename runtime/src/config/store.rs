//! Parsing documents into typed objects, and the store every config source fills.
//!
//! Parsing is pure: text in, objects and errors out. A syntax error names the file, the
//! document, the line and the column; an invalid object names the object, the field path and
//! what was expected there. The caller decides what keeps serving (see [`super::dir`]).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::objects::{self, Object, ObjectKey};

/// Every object the sources currently provide, and every problem found reading them.
#[derive(Debug, Clone, Default)]
pub struct ObjectStore {
    pub objects: BTreeMap<ObjectKey, Object>,
    pub errors: Vec<ConfigError>,
}

impl ObjectStore {
    /// Objects of one kind, in key order.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects
            .range(ObjectKey::new(kind, "", "")..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, o)| o)
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<&Object> {
        self.objects.get(&ObjectKey::new(kind, namespace, name))
    }
}

/// A problem with the configuration. Every message says where, what, and what would fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {message}; check the file's permissions")]
    Read { file: String, message: String },
    #[error(
        "{file}: document {document}, line {line}, column {column}: {message}; fix the syntax \
         (the last good version of this file keeps serving)"
    )]
    Parse {
        file: String,
        document: usize,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: document {document}: {message}")]
    Malformed {
        file: String,
        document: usize,
        message: String,
    },
    #[error(
        "{object} ({file}, document {document}): field `{field}`: {message}; fix this field \
         (the last good version of this object, if any, keeps serving)"
    )]
    Invalid {
        object: String,
        file: String,
        document: usize,
        field: String,
        message: String,
    },
    #[error("{object} is defined twice: in {first} and in {second}; remove one (the first one is used)")]
    Duplicate {
        object: String,
        first: String,
        second: String,
    },
}

impl ConfigError {
    /// The object this error is about, when one could be identified.
    pub fn object_key(&self) -> Option<String> {
        match self {
            ConfigError::Invalid { object, .. } | ConfigError::Duplicate { object, .. } => Some(object.clone()),
            _ => None,
        }
    }

    /// A short machine-readable kind, used as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Parse { .. } => "parse",
            ConfigError::Malformed { .. } => "malformed",
            ConfigError::Invalid { .. } => "invalid",
            ConfigError::Duplicate { .. } => "duplicate",
        }
    }
}

/// The result of parsing one file.
#[derive(Debug, Clone, Default)]
pub struct ParsedFile {
    pub objects: Vec<Object>,
    /// Keys of objects that were present but invalid (their last good version may be kept).
    pub invalid: Vec<ObjectKey>,
    pub errors: Vec<ConfigError>,
    /// Documents of kinds tidegate does not act on (`apiVersion/kind name`).
    pub ignored: Vec<String>,
    /// True when the file as a whole could not be parsed (syntax error).
    pub syntax_error: bool,
}

/// The format of a file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// Parses every document of a file. `file` is only used in messages.
pub fn parse_file(file: &str, text: &str, format: Format) -> ParsedFile {
    let mut parsed = ParsedFile::default();
    // Pass 1: generic values, to learn each document's kind and catch syntax errors with positions.
    let values = match format {
        Format::Yaml => parse_yaml_values(file, text),
        Format::Json => parse_json_value(file, text),
    };
    let values = match values {
        Ok(values) => values,
        Err(e) => {
            parsed.errors.push(e);
            parsed.syntax_error = true;
            return parsed;
        }
    };
    for (index, value) in values.into_iter().enumerate() {
        let document = index + 1;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        // A `kind: List` holds objects in `items`, as `kubectl get -o yaml` writes them.
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            let items = value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            for item in items {
                parse_object(file, document, item, &mut parsed);
            }
            continue;
        }
        parse_object(file, document, value, &mut parsed);
    }
    parsed
}

fn parse_yaml_values(file: &str, text: &str) -> Result<Vec<serde_json::Value>, ConfigError> {
    let mut values = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_json::Value::deserialize(document) {
            Ok(v) => values.push(v),
            Err(e) => {
                let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
                return Err(ConfigError::Parse {
                    file: file.to_string(),
                    document: index + 1,
                    line,
                    column,
                    message: strip_location(&e.to_string()),
                });
            }
        }
    }
    Ok(values)
}

fn parse_json_value(file: &str, text: &str) -> Result<Vec<serde_json::Value>, ConfigError> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|v| vec![v])
        .map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            document: 1,
            line: e.line(),
            column: e.column(),
            message: strip_location(&e.to_string()),
        })
}

/// serde errors end with " at line L column C"; the position is reported in its own fields.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn parse_object(file: &str, document: usize, value: serde_json::Value, parsed: &mut ParsedFile) {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    if api_version.is_empty() || kind.is_empty() {
        parsed.errors.push(ConfigError::Malformed {
            file: file.to_string(),
            document,
            message: "not a Kubernetes object: `apiVersion` and `kind` are required (e.g. apiVersion: \
                      gateway.networking.k8s.io/v1, kind: HTTPRoute)"
                .to_string(),
        });
        return;
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let Some(typed_kind) = objects::known_kind(&api_version, &kind) else {
        parsed.ignored.push(format!("{api_version}/{kind} {name}"));
        return;
    };
    let namespace = if Object::is_namespaced(typed_kind) {
        value
            .pointer("/metadata/namespace")
            .and_then(|v| v.as_str())
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    let key = ObjectKey::new(typed_kind, &namespace, &name);
    let invalid = |field: String, message: String| ConfigError::Invalid {
        object: key.to_string(),
        file: file.to_string(),
        document,
        field,
        message,
    };
    if name.is_empty() {
        parsed.errors.push(invalid(
            "metadata.name".into(),
            "is required; give the object a name".into(),
        ));
        return;
    }
    let object = match typed_kind {
        "Namespace" => typed(value).map(Object::Namespace),
        "Service" => typed(value).map(Object::Service),
        "Secret" => typed(value).map(Object::Secret),
        "ConfigMap" => typed(value).map(Object::ConfigMap),
        "Pod" => typed(value).map(Object::Pod),
        "Node" => typed(value).map(Object::Node),
        "EndpointSlice" => typed(value).map(Object::EndpointSlice),
        "GatewayClass" => typed(value).map(Object::GatewayClass),
        "Gateway" => typed(value).map(Object::Gateway),
        "HTTPRoute" => typed(value).map(Object::HttpRoute),
        "ReferenceGrant" => typed(value).map(Object::ReferenceGrant),
        "WasmFilter" => typed(value).map(Object::WasmFilter),
        _ => unreachable!("known_kind only returns the kinds matched above"),
    };
    match object {
        Ok(object) => parsed.objects.push(object),
        Err((field, message)) => {
            parsed.errors.push(invalid(field, message));
            parsed.invalid.push(key);
        }
    }
}

/// Deserializes a typed object, reporting the path of the offending field.
fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(object)".to_string() } else { path };
        (field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: demo
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: echo, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
"#;

    #[test]
    fn parses_multi_document_yaml_and_ignores_unknown_kinds() {
        let parsed = parse_file("a.yaml", ROUTE, Format::Yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.objects.len(), 1);
        assert_eq!(parsed.objects[0].key(), ObjectKey::new("HTTPRoute", "demo", "web"));
        assert_eq!(parsed.ignored, vec!["apps/v1/Deployment ignored".to_string()]);
    }

    #[test]
    fn syntax_error_names_document_line_and_column() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n";
        let parsed = parse_file("bad.yaml", text, Format::Yaml);
        assert!(parsed.syntax_error);
        match &parsed.errors[0] {
            ConfigError::Parse { document, line, .. } => {
                assert_eq!(*document, 2);
                assert!(*line >= 5, "line {line}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn invalid_field_names_object_and_path() {
        let text = ROUTE.replace("port: 8080", "port: eighty");
        let parsed = parse_file("a.yaml", &text, Format::Yaml);
        assert!(parsed.objects.is_empty());
        assert_eq!(parsed.invalid, vec![ObjectKey::new("HTTPRoute", "demo", "web")]);
        let message = parsed.errors[0].to_string();
        assert!(message.contains("HTTPRoute demo/web"), "{message}");
        assert!(message.contains("spec.rules[0].backendRefs[0].port"), "{message}");
    }

    #[test]
    fn json_and_lists_are_accepted() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}]}"#;
        let parsed = parse_file("a.json", text, Format::Json);
        assert_eq!(parsed.objects.len(), 1);
        assert_eq!(parsed.objects[0].key(), ObjectKey::new("Namespace", "", "x"));
    }

    #[test]
    fn objects_without_kind_are_reported() {
        let parsed = parse_file("a.yaml", "metadata: {name: x}\n", Format::Yaml);
        assert!(matches!(parsed.errors[0], ConfigError::Malformed { .. }));
    }
}
