//! The `status_checks` of the case format, evaluated against tidegate's admin `/status`
//! (`{"version", "objects": [{"apiVersion", "kind", "namespace", "name", "status"}]}`, where
//! `status` is exactly the Kubernetes status object).

use serde::Deserialize;
use serde_json::Value;

use super::case::{Condition, StatusCheck, split_ns_name};

pub const CONTROLLER_NAME: &str = "tidegate.dev/gateway-controller";
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatusDoc {
    #[allow(dead_code)] // part of the shape; not needed by the checks
    #[serde(default)]
    pub version: Value,
    #[serde(default)]
    pub objects: Vec<StatusObject>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatusObject {
    #[allow(dead_code)] // part of the shape; objects are found by kind/namespace/name
    #[serde(default, rename = "apiVersion")]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: Value,
}

impl StatusDoc {
    fn find(&self, kind_pred: impl Fn(&str) -> bool, ns_name: &str) -> Option<&StatusObject> {
        let (ns, name) = split_ns_name(ns_name, "default");
        self.objects
            .iter()
            .find(|o| kind_pred(&o.kind) && o.name == name && o.namespace.as_deref().unwrap_or("") == ns)
    }

    fn gateway(&self, ns_name: &str) -> Option<&StatusObject> {
        self.find(|k| k == "Gateway", ns_name)
    }

    fn route(&self, ns_name: &str) -> Option<&StatusObject> {
        self.find(|k| k.ends_with("Route"), ns_name)
    }
}

/// Names of the listeners a Gateway's spec declares (from the case manifests), if known.
pub type SpecListeners<'a> = &'a dyn Fn(&str) -> Option<Vec<String>>;

/// Evaluates one check; `Err` says what is missing.
pub fn evaluate(check: &StatusCheck, doc: &StatusDoc, spec_listeners: SpecListeners<'_>) -> Result<(), String> {
    match check.check.as_str() {
        "gateway_listeners_ready_and_routes_accepted" => {
            let gw = check.gateway.as_deref().ok_or("check has no gateway")?;
            gateway_ready(doc, gw, spec_listeners(gw))?;
            for route in &check.routes {
                route_accepted(doc, route, gw, &check.section_names)?;
            }
            Ok(())
        }
        "route_parent_condition" => {
            let route = check.route.as_deref().ok_or("check has no route")?;
            let parent = check.parent.as_deref().ok_or("check has no parent")?;
            let condition = check.condition.as_ref().ok_or("check has no condition")?;
            route_parent_condition(doc, route, parent, condition)
        }
        "route_has_no_accepted_parents" => {
            let route = check.route.as_deref().ok_or("check has no route")?;
            route_has_no_accepted_parents(doc, route)
        }
        "gateway_has_zero_attached_routes" => {
            let gw = check.gateway.as_deref().ok_or("check has no gateway")?;
            gateway_has_zero_attached_routes(doc, gw)
        }
        other => Err(format!("unknown status check kind {other:?}")),
    }
}

fn conditions(v: &Value) -> &[Value] {
    v.get("conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions(v)
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn str_field<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

fn describe_condition(c: Option<&Value>) -> String {
    match c {
        None => "absent".to_owned(),
        Some(c) => format!(
            "status={} reason={} message={:?}",
            str_field(c, "status"),
            str_field(c, "reason"),
            str_field(c, "message")
        ),
    }
}

/// Every listener has ResolvedRefs, Accepted and Programmed True; the Gateway has an address.
fn gateway_ready(doc: &StatusDoc, gw: &str, spec_listeners: Option<Vec<String>>) -> Result<(), String> {
    let object = doc
        .gateway(gw)
        .ok_or_else(|| format!("Gateway {gw} is not in /status"))?;
    let listeners = object
        .status
        .get("listeners")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let names: Vec<String> = match spec_listeners {
        Some(names) => names,
        None => listeners.iter().map(|l| str_field(l, "name").to_owned()).collect(),
    };
    if names.is_empty() {
        return Err(format!("Gateway {gw} has no listener status"));
    }
    for name in &names {
        let listener = listeners
            .iter()
            .find(|l| str_field(l, "name") == name)
            .ok_or_else(|| format!("Gateway {gw} has no status for listener {name:?}"))?;
        for type_ in ["ResolvedRefs", "Accepted", "Programmed"] {
            let c = condition(listener, type_);
            if c.and_then(|c| c.get("status")).and_then(Value::as_str) != Some("True") {
                return Err(format!(
                    "Gateway {gw} listener {name:?}: expected {type_}=True, got {}",
                    describe_condition(c)
                ));
            }
        }
    }
    let has_address = object
        .status
        .get("addresses")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|a| !str_field(a, "value").is_empty()));
    if !has_address {
        return Err(format!("Gateway {gw} has no status.addresses"));
    }
    Ok(())
}

/// Parent status entries of `route` that refer to Gateway `gw` (`ns/name`).
fn parents_for<'a>(route_obj: &'a StatusObject, gw: &str) -> Vec<&'a Value> {
    let route_ns = route_obj.namespace.as_deref().unwrap_or("");
    let (gw_ns, gw_name) = split_ns_name(gw, route_ns);
    route_obj
        .status
        .get("parents")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|p| {
            let r = p.get("parentRef").unwrap_or(&Value::Null);
            let group = r.get("group").and_then(Value::as_str).unwrap_or(GATEWAY_GROUP);
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or("Gateway");
            let ns = r.get("namespace").and_then(Value::as_str).unwrap_or(route_ns);
            (group == GATEWAY_GROUP || group.is_empty())
                && kind == "Gateway"
                && ns == gw_ns
                && str_field(r, "name") == gw_name
        })
        .collect()
}

fn parent_refs_summary(route_obj: &StatusObject) -> String {
    let parents = route_obj
        .status
        .get("parents")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if parents.is_empty() {
        return "no parents".to_owned();
    }
    parents
        .iter()
        .map(|p| {
            let r = p.get("parentRef").unwrap_or(&Value::Null);
            let conds: Vec<String> = conditions(p)
                .iter()
                .map(|c| {
                    format!(
                        "{}={}/{}",
                        str_field(c, "type"),
                        str_field(c, "status"),
                        str_field(c, "reason")
                    )
                })
                .collect();
            let ns = match str_field(r, "namespace") {
                "" => route_obj.namespace.as_deref().unwrap_or(""),
                ns => ns,
            };
            let section = match str_field(r, "sectionName") {
                "" => String::new(),
                s => format!("#{s}"),
            };
            format!(
                "{ns}/{}{section} by {:?} [{}]",
                str_field(r, "name"),
                str_field(p, "controllerName"),
                conds.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The route has a parent status for `gw` with Accepted=True reason Accepted, written by
/// tidegate's controller. Upstream (`parentsForRouteMatch`) builds one expected parent per listed
/// section name but does not compare `sectionName` (a route attached by `port` has none in its
/// status), so each listed section is satisfied by any such parent for the Gateway.
fn route_accepted(doc: &StatusDoc, route: &str, gw: &str, section_names: &[String]) -> Result<(), String> {
    let object = doc
        .route(route)
        .ok_or_else(|| format!("route {route} is not in /status"))?;
    let ok = parents_for(object, gw).iter().any(|p| {
        let c = condition(p, "Accepted");
        str_field(p, "controllerName") == CONTROLLER_NAME
            && c.is_some_and(|c| str_field(c, "status") == "True" && str_field(c, "reason") == "Accepted")
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "route {route}: expected a parent {gw}{} with Accepted=True/Accepted by {CONTROLLER_NAME}; parents: {}",
            if section_names.is_empty() {
                String::new()
            } else {
                format!(" (sections {})", section_names.join(","))
            },
            parent_refs_summary(object)
        ))
    }
}

fn route_parent_condition(doc: &StatusDoc, route: &str, parent: &str, want: &Condition) -> Result<(), String> {
    let object = doc
        .route(route)
        .ok_or_else(|| format!("route {route} is not in /status"))?;
    let parents = parents_for(object, parent);
    let ok = parents.iter().any(|p| {
        condition(p, &want.type_).is_some_and(|c| {
            str_field(c, "status") == want.status
                && want
                    .reason
                    .as_deref()
                    .is_none_or(|r| r.is_empty() || str_field(c, "reason") == r)
        })
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "route {route}: expected parent {parent} condition {}={} reason {}; parents: {}",
            want.type_,
            want.status,
            want.reason.as_deref().unwrap_or("(any)"),
            parent_refs_summary(object)
        ))
    }
}

/// `status.parents` is empty, or has exactly one parent whose Accepted condition is False.
/// The route must be in `/status` (upstream reads it from the API server and fails when absent).
fn route_has_no_accepted_parents(doc: &StatusDoc, route: &str) -> Result<(), String> {
    let Some(object) = doc.route(route) else {
        return Err(format!("route {route} is not in /status"));
    };
    let parents = object
        .status
        .get("parents")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    match parents {
        [] => Ok(()),
        [only] if condition(only, "Accepted").is_some_and(|c| str_field(c, "status") == "False") => Ok(()),
        _ => Err(format!(
            "route {route}: expected no parents or one parent with Accepted=False; parents: {}",
            parent_refs_summary(object)
        )),
    }
}

/// `status.listeners` is empty, or exactly one listener with attachedRoutes == 0.
/// The Gateway must be in `/status` (upstream fails when it is absent).
fn gateway_has_zero_attached_routes(doc: &StatusDoc, gw: &str) -> Result<(), String> {
    let Some(object) = doc.gateway(gw) else {
        return Err(format!("Gateway {gw} is not in /status"));
    };
    let listeners = object
        .status
        .get("listeners")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    match listeners {
        [] => Ok(()),
        [only] if only.get("attachedRoutes").and_then(Value::as_i64) == Some(0) => Ok(()),
        _ => Err(format!(
            "Gateway {gw}: expected no listener status or one listener with attachedRoutes 0; got {}",
            listeners
                .iter()
                .map(|l| format!(
                    "{}: attachedRoutes={}",
                    str_field(l, "name"),
                    l.get("attachedRoutes").unwrap_or(&Value::Null)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(objects: Value) -> StatusDoc {
        serde_json::from_value(json!({"version": 1, "objects": objects})).expect("doc")
    }

    fn cond(type_: &str, status: &str, reason: &str) -> Value {
        json!({"type": type_, "status": status, "reason": reason, "message": ""})
    }

    fn ready_gateway() -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "namespace": "infra", "name": "gw",
        "status": {
            "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
            "conditions": [cond("Accepted", "True", "Accepted"), cond("Programmed", "True", "Programmed")],
            "listeners": [{"name": "http", "attachedRoutes": 1, "supportedKinds": [],
                "conditions": [cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "True", "ResolvedRefs"), cond("Programmed", "True", "Programmed")]}]
        }})
    }

    fn route(parents: Value) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "namespace": "infra", "name": "r",
            "status": {"parents": parents}})
    }

    fn check(v: Value) -> StatusCheck {
        serde_json::from_value(v).expect("check")
    }

    fn no_spec(_: &str) -> Option<Vec<String>> {
        None
    }

    #[test]
    fn ready_and_accepted() {
        let accepted = json!([{"parentRef": {"name": "gw"}, "controllerName": CONTROLLER_NAME,
            "conditions": [cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "True", "ResolvedRefs")]}]);
        let d = doc(json!([ready_gateway(), route(accepted)]));
        let c = check(
            json!({"check": "gateway_listeners_ready_and_routes_accepted", "gateway": "infra/gw", "routes": ["infra/r"]}),
        );
        assert_eq!(evaluate(&c, &d, &no_spec), Ok(()));

        // A listener declared in the spec but missing from the status fails.
        let spec = |_: &str| Some(vec!["http".to_owned(), "https".to_owned()]);
        assert!(evaluate(&c, &d, &spec).is_err());

        // Section names are not compared (as upstream): a route attached by port has none.
        let c2 = check(
            json!({"check": "gateway_listeners_ready_and_routes_accepted", "gateway": "infra/gw",
            "routes": ["infra/r"], "section_names": ["http"]}),
        );
        assert_eq!(evaluate(&c2, &d, &no_spec), Ok(()));
        let with_section = json!([{"parentRef": {"name": "gw", "namespace": "infra", "sectionName": "http"},
            "controllerName": CONTROLLER_NAME, "conditions": [cond("Accepted", "True", "Accepted")]}]);
        let d2 = doc(json!([ready_gateway(), route(with_section)]));
        assert_eq!(evaluate(&c2, &d2, &no_spec), Ok(()));

        // Another controller's parent status does not count.
        let foreign = json!([{"parentRef": {"name": "gw"}, "controllerName": "other/controller",
            "conditions": [cond("Accepted", "True", "Accepted")]}]);
        let d3 = doc(json!([ready_gateway(), route(foreign)]));
        assert!(evaluate(&c, &d3, &no_spec).is_err());

        // No address fails.
        let mut gw = ready_gateway();
        gw["status"]["addresses"] = json!([]);
        let d4 = doc(json!([gw, route(json!([]))]));
        let only_gw =
            check(json!({"check": "gateway_listeners_ready_and_routes_accepted", "gateway": "infra/gw", "routes": []}));
        assert!(
            evaluate(&only_gw, &d4, &no_spec)
                .expect_err("address")
                .contains("addresses")
        );
    }

    #[test]
    fn parent_condition() {
        let parents = json!([{"parentRef": {"name": "gw"}, "controllerName": CONTROLLER_NAME,
            "conditions": [cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "False", "BackendNotFound")]}]);
        let d = doc(json!([route(parents)]));
        let c = check(
            json!({"check": "route_parent_condition", "route": "infra/r", "parent": "infra/gw",
            "condition": {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound"}}),
        );
        assert_eq!(evaluate(&c, &d, &no_spec), Ok(()));
        let wrong = check(
            json!({"check": "route_parent_condition", "route": "infra/r", "parent": "infra/gw",
            "condition": {"type": "ResolvedRefs", "status": "False", "reason": "RefNotPermitted"}}),
        );
        assert!(evaluate(&wrong, &d, &no_spec).is_err());
        let other_parent = check(
            json!({"check": "route_parent_condition", "route": "infra/r", "parent": "infra/other",
            "condition": {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound"}}),
        );
        assert!(evaluate(&other_parent, &d, &no_spec).is_err());
    }

    #[test]
    fn no_accepted_parents_and_zero_routes() {
        let c = check(json!({"check": "route_has_no_accepted_parents", "route": "infra/r"}));
        assert_eq!(evaluate(&c, &doc(json!([route(json!([]))])), &no_spec), Ok(()));
        let absent = evaluate(&c, &doc(json!([])), &no_spec).expect_err("a route missing from /status");
        assert!(absent.contains("not in /status"), "{absent}");
        let rejected =
            json!([{"parentRef": {"name": "gw"}, "conditions": [cond("Accepted", "False", "NoMatchingParent")]}]);
        assert_eq!(evaluate(&c, &doc(json!([route(rejected)])), &no_spec), Ok(()));
        let accepted = json!([{"parentRef": {"name": "gw"}, "conditions": [cond("Accepted", "True", "Accepted")]}]);
        assert!(evaluate(&c, &doc(json!([route(accepted)])), &no_spec).is_err());

        let z = check(json!({"check": "gateway_has_zero_attached_routes", "gateway": "infra/gw"}));
        assert!(evaluate(&z, &doc(json!([ready_gateway()])), &no_spec).is_err());
        let mut gw = ready_gateway();
        gw["status"]["listeners"][0]["attachedRoutes"] = json!(0);
        assert_eq!(evaluate(&z, &doc(json!([gw])), &no_spec), Ok(()));
        let absent = evaluate(&z, &doc(json!([])), &no_spec).expect_err("a Gateway missing from /status");
        assert!(absent.contains("not in /status"), "{absent}");
    }
}
