//! sledsim's OpenAPI documents against omicron's, schema by schema, for every
//! endpoint both have: what omicron sends, sledsim must take; what sledsim
//! answers, omicron's clients must be able to read. Drift on either side (a
//! regenerated `openapi/`, or omicron's documents copied in anew) fails here.

// A panic is how a test reports failure; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/../openapi/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// One side of a comparison: a document, to resolve `$ref`s in.
#[derive(Clone, Copy)]
struct Side<'a> {
    name: &'static str,
    doc: &'a Value,
}

impl Side<'_> {
    /// Follows `$ref`s and one-element `allOf` wrappers (how schemars and
    /// progenitor spell "this type, with a description"); keeps `nullable`.
    fn resolve(&self, s: &Value) -> (Value, bool) {
        let mut s = s.clone();
        let mut nullable = false;
        for _ in 0..16 {
            nullable |= s["nullable"] == Value::Bool(true);
            if let Some(r) = s["$ref"].as_str() {
                let name = r.trim_start_matches("#/components/schemas/");
                s = self.doc["components"]["schemas"][name].clone();
            } else if let Some([one]) = s["allOf"].as_array().map(Vec::as_slice) {
                s = one.clone();
            } else {
                break;
            }
        }
        (s, nullable)
    }

    /// A string enum's values, whether spelled `enum` or a `oneOf` of one-value
    /// enums (omicron's documented variants).
    fn strings(&self, s: &Value) -> Option<BTreeSet<String>> {
        let one = |s: &Value| -> Option<Vec<String>> {
            let values = s["enum"].as_array()?;
            values.iter().map(|v| v.as_str().map(String::from)).collect()
        };
        if let Some(v) = one(s) {
            return Some(v.into_iter().collect());
        }
        let variants = s["oneOf"].as_array()?;
        let mut all = BTreeSet::new();
        for v in variants {
            all.extend(one(&self.resolve(v).0)?);
        }
        Some(all)
    }

    /// A `oneOf` of objects told apart by a one-value `type` property: the
    /// variants by tag.
    fn tagged(&self, s: &Value) -> Option<BTreeMap<String, Value>> {
        let mut out = BTreeMap::new();
        for v in s["oneOf"].as_array()? {
            let v = self.resolve(v).0;
            let tag = v["properties"]["type"]["enum"].as_array()?.first()?.as_str()?.to_string();
            out.insert(tag, v);
        }
        Some(out)
    }
}

fn required(s: &Value) -> BTreeSet<String> {
    s["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

/// Whether every value `prod` may send is one `cons` takes; what does not fit
/// goes into `errs`, located by `at`.
fn check(prod: (Side, &Value), cons: (Side, &Value), at: &str, errs: &mut Vec<String>) {
    let ((p, ps), (c, cs)) = (prod, cons);
    let (ps, p_null) = p.resolve(ps);
    let (cs, c_null) = c.resolve(cs);
    let who = format!("({} sends, {} reads)", p.name, c.name);
    let fail = |errs: &mut Vec<String>, why: String| errs.push(format!("{at}: {why} {who}"));
    if p_null && !c_null {
        return fail(errs, "may be null, which the reader does not take".into());
    }
    if cs.is_null() {
        return fail(errs, "no schema on the reader's side".into());
    }
    if cs.as_object().is_some_and(|o| o.keys().all(|k| k == "description" || k == "title")) {
        return; // the reader takes anything
    }
    if let Some(theirs) = c.strings(&cs) {
        match p.strings(&ps) {
            Some(ours) if ours.is_subset(&theirs) => {}
            Some(ours) => fail(
                errs,
                format!(
                    "values {:?} unknown to the reader",
                    ours.difference(&theirs).collect::<Vec<_>>()
                ),
            ),
            None => fail(errs, "any string, where the reader takes only some".into()),
        }
        return;
    }
    if let Some(theirs) = c.tagged(&cs) {
        let Some(ours) = p.tagged(&ps) else { return fail(errs, "not a tagged union".into()) };
        for (tag, v) in &ours {
            match theirs.get(tag) {
                Some(t) => check((p, v), (c, t), &format!("{at}.{tag}"), errs),
                None => errs.push(format!("{at}: variant {tag} unknown to {}", c.name)),
            }
        }
        return;
    }
    let (pt, ct) = (ps["type"].as_str(), cs["type"].as_str());
    if ct.is_none() || pt.is_none() {
        // A oneOf, anyOf or allOf this checker does not model: say so rather
        // than pass it.
        return fail(errs, "a schema shape the checker does not compare".into());
    }
    if pt != ct {
        return fail(errs, format!("type {pt:?}, the reader wants {ct:?}"));
    }
    match ct {
        Some("object") => {
            let (preq, creq) = (required(&ps), required(&cs));
            for r in creq.difference(&preq) {
                fail(errs, format!("property {r} is required but may be left out"));
            }
            let empty = serde_json::Map::new();
            let pprops = ps["properties"].as_object().unwrap_or(&empty);
            let cprops = cs["properties"].as_object().unwrap_or(&empty);
            for (name, s) in pprops {
                match cprops.get(name) {
                    Some(t) => check((p, s), (c, t), &format!("{at}.{name}"), errs),
                    // Readers ignore what they do not know, unless they say not.
                    None if cs["additionalProperties"] == Value::Bool(false) => {
                        fail(errs, format!("property {name}, which the reader refuses"));
                    }
                    None => {}
                }
            }
            let (pm, cm) = (&ps["additionalProperties"], &cs["additionalProperties"]);
            if pm.is_object() && cm.is_object() {
                check((p, pm), (c, cm), &format!("{at}{{}}"), errs);
            }
        }
        Some("array") => check((p, &ps["items"]), (c, &cs["items"]), &format!("{at}[]"), errs),
        Some("string") => {
            let (pf, cf) = (ps["format"].as_str(), cs["format"].as_str());
            if cf.is_some() && pf != cf {
                fail(errs, format!("format {pf:?}, the reader wants {cf:?}"));
            }
        }
        // Integers: the format (its width) must fit. Bounds are not compared:
        // sledsim's generations start at 1 (`minimum: 1`) where omicron's schema
        // allows 0, and no generation omicron sends is 0 (`Generation::new()`).
        Some("integer") => {
            let (pf, cf) = (ps["format"].as_str(), cs["format"].as_str());
            if cf.is_some() && pf != cf {
                fail(errs, format!("format {pf:?}, the reader wants {cf:?}"));
            }
        }
        _ => {}
    }
}

/// An endpoint's request body schema and its responses, by status.
fn endpoint<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    &doc["paths"][path][method]
}

fn response_schema(side: Side, op: &Value, status: &str) -> Value {
    let r = &op["responses"][status];
    let r = match r["$ref"].as_str() {
        Some(name) => {
            &side.doc["components"]["responses"][name.trim_start_matches("#/components/responses/")]
        }
        None => r,
    };
    r["content"]["application/json"]["schema"].clone()
}

/// Every divergence between the two documents on the shared endpoints.
fn divergences(ours: Side, theirs: Side) -> Vec<String> {
    let mut errs = Vec::new();
    let mut shared = 0;
    let mut operations = BTreeSet::new();
    for (path, methods) in theirs.doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let (o, t) = (endpoint(ours.doc, path, method), endpoint(theirs.doc, path, method));
            if o.is_null() {
                continue;
            }
            shared += 1;
            operations.insert(t["operationId"].as_str().unwrap_or("?").to_string());
            let at = format!("{} {path}", method.to_uppercase());
            if o["operationId"] != t["operationId"] {
                errs.push(format!(
                    "{at}: operation {} here, {} in omicron",
                    o["operationId"], t["operationId"]
                ));
            }
            let codes = |op: &Value| {
                op["responses"].as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>()
            };
            if codes(o) != codes(t) {
                errs.push(format!("{at}: statuses {:?} here, {:?} in omicron", codes(o), codes(t)));
            }
            let body =
                |op: &Value| op["requestBody"]["content"]["application/json"]["schema"].clone();
            match (body(t).is_null(), body(o).is_null()) {
                (false, _) => {
                    check((theirs, &body(t)), (ours, &body(o)), &format!("{at} request"), &mut errs)
                }
                (true, false) => errs.push(format!("{at}: a request body omicron does not send")),
                (true, true) => {}
            }
            // Parameters: the same ones, each of a type the other side takes.
            let params = |op: &Value| -> BTreeMap<String, Value> {
                let name = |p: &Value| format!("{} {}", p["in"].as_str().unwrap_or("?"), p["name"]);
                op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| (name(p), p["schema"].clone()))
                    .collect()
            };
            let (mine, omicrons) = (params(o), params(t));
            if mine.keys().ne(omicrons.keys()) {
                let keys = |m: &BTreeMap<String, Value>| m.keys().cloned().collect::<Vec<_>>();
                errs.push(format!(
                    "{at}: parameters {:?} here, {:?} in omicron",
                    keys(&mine),
                    keys(&omicrons)
                ));
            }
            for (name, ts) in &omicrons {
                if let Some(os) = mine.get(name) {
                    check((theirs, ts), (ours, os), &format!("{at} {name}"), &mut errs);
                }
            }
            for status in codes(t) {
                let (os, ts) =
                    (response_schema(ours, o, &status), response_schema(theirs, t, &status));
                if !ts.is_null() {
                    check((ours, &os), (theirs, &ts), &format!("{at} {status}"), &mut errs);
                }
            }
        }
    }
    // Which endpoints were compared, so one that stops matching (a renamed path
    // or method) shows as a change here rather than silently dropping out.
    let ops: Vec<String> = operations.into_iter().collect();
    errs.push(format!("{shared} endpoints compared: {}", ops.join(", ")));
    errs
}

/// Checks the two documents and that the divergences are exactly the known ones,
/// so one fixed (or a new one) shows here.
fn check_compatible(ours: &str, theirs: &str, known: &[&str]) {
    let (o, t) = (load(ours), load(&format!("omicron/{theirs}")));
    let got = divergences(Side { name: "sledsim", doc: &o }, Side { name: "omicron", doc: &t });
    let want: Vec<String> = known.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want, "{ours} against omicron's {theirs}");
}

#[test]
fn the_sim_speaks_omicrons_sled_agent_api() {
    check_compatible(
        "sim-sled-agent.json",
        "sled-agent-48.0.0-808ec1.json",
        &["4 endpoints compared: vmm_get_state, vmm_put_state, vmm_register, vmm_unregister"],
    );
}

#[test]
fn the_nexus_stub_speaks_omicrons_nexus_internal_api() {
    check_compatible(
        "nexus-stub.json",
        "nexus-internal-1.0.0-6d8ade.json",
        &["1 endpoints compared: cpapi_instances_put"],
    );
}

/// What the checker says of a writer's schema against a reader's.
fn verdict(writer: Value, reader: Value) -> Vec<String> {
    let (w, r) = (serde_json::json!({"x": writer}), serde_json::json!({"x": reader}));
    let mut errs = Vec::new();
    let (ws, rs) = (Side { name: "w", doc: &w }, Side { name: "r", doc: &r });
    check((ws, &w["x"]), (rs, &r["x"]), "x", &mut errs);
    errs
}

fn check_drift(writer: Value, reader: Value, want: &str) {
    assert_eq!(verdict(writer, reader), [format!("{want} (w sends, r reads)")]);
}

#[test]
fn the_checker_sees_each_kind_of_drift() {
    use serde_json::json;
    let obj = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required});
    check_drift(
        obj(json!({}), &[]),
        obj(json!({"gen": {"type": "integer"}}), &["gen"]),
        "x: property gen is required but may be left out",
    );
    check_drift(
        json!({"type": "string", "enum": ["running", "vanished"]}),
        json!({"oneOf": [{"type": "string", "enum": ["running"]}]}),
        "x: values [\"vanished\"] unknown to the reader",
    );
    check_drift(
        json!({"type": "string"}),
        json!({"type": "string", "format": "uuid"}),
        "x: format None, the reader wants Some(\"uuid\")",
    );
    check_drift(
        json!({"type": "integer", "format": "uint64"}),
        json!({"type": "integer", "format": "uint32"}),
        "x: format Some(\"uint64\"), the reader wants Some(\"uint32\")",
    );
    check_drift(
        json!({"type": "string", "nullable": true}),
        json!({"type": "string"}),
        "x: may be null, which the reader does not take",
    );
    check_drift(
        obj(json!({"extra": {"type": "string"}}), &[]),
        json!({"type": "object", "properties": {}, "additionalProperties": false}),
        "x: property extra, which the reader refuses",
    );
    check_drift(
        json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
        json!({"anyOf": [{"type": "string"}]}),
        "x: a schema shape the checker does not compare",
    );
    check_drift(
        json!({"type": "integer"}),
        json!({"type": "string"}),
        "x: type Some(\"integer\"), the reader wants Some(\"string\")",
    );
    // A tagged union: a variant the reader lacks, by its tag.
    let variant = |tag: &str| obj(json!({"type": {"type": "string", "enum": [tag]}}), &["type"]);
    assert_eq!(
        verdict(json!({"oneOf": [variant("a"), variant("b")]}), json!({"oneOf": [variant("a")]})),
        ["x: variant b unknown to r"]
    );
    // And what fits, fits: extra writer properties, a wider reader enum.
    assert_eq!(
        verdict(obj(json!({"a": {"type": "string"}}), &[]), obj(json!({}), &[])),
        Vec::<String>::new()
    );
}
